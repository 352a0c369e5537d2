#include "agent/faults/process/process_selector.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/regex.h"

namespace faultline::agent {
namespace {

using kernel::ProcessInfo;

constexpr std::string_view kDeletedSuffix = " (deleted)";
constexpr std::string_view kNeverChosen =
    "pid 1, kernel threads, the agent, sshd and the policy's protected processes are never chosen";

std::string_view baseName(std::string_view path) {
  const auto slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// The executable's base name; /proc shows a replaced binary as "/usr/bin/x (deleted)".
std::string_view exeName(std::string_view exe) {
  if (exe.size() > kDeletedSuffix.size() && exe.substr(exe.size() - kDeletedSuffix.size()) == kDeletedSuffix) {
    exe.remove_suffix(kDeletedSuffix.size());
  }
  return baseName(exe);
}

// argv[0] is the cmdline up to its first separator (NULs were turned into spaces).
std::string_view argv0Name(std::string_view cmdline) {
  return baseName(cmdline.substr(0, cmdline.find(' ')));
}

std::string unitName(const std::string& unit) {
  return unit.find('.') == std::string::npos ? unit + ".service" : unit;
}

bool pathHasComponent(std::string_view path, std::string_view component) {
  while (!path.empty()) {
    const auto slash = path.find('/');
    if (path.substr(0, slash) == component) {
      return true;
    }
    if (slash == std::string_view::npos) {
      break;
    }
    path.remove_prefix(slash + 1);
  }
  return false;
}

bool underCgroup(std::string_view processCgroup, std::string_view cgroup) {
  while (cgroup.size() > 1 && cgroup.back() == '/') {
    cgroup.remove_suffix(1);
  }
  if (cgroup == "/") {
    return !processCgroup.empty();
  }
  return processCgroup == cgroup ||
         (processCgroup.size() > cgroup.size() && processCgroup.substr(0, cgroup.size()) == cgroup &&
          processCgroup[cgroup.size()] == '/');
}

std::unordered_set<pid_t> ancestorsOf(pid_t self, const std::vector<ProcessInfo>& processes) {
  std::unordered_map<pid_t, pid_t> parentOf;
  for (const auto& p : processes) {
    parentOf.emplace(p.pid, p.ppid);
  }
  std::unordered_set<pid_t> ancestors;
  pid_t at = self;
  // Bounded: a table read while processes come and go could in theory hold a cycle.
  for (size_t steps = 0; steps <= processes.size(); ++steps) {
    auto parent = parentOf.find(at);
    if (parent == parentOf.end() || parent->second <= 0 || !ancestors.insert(parent->second).second) {
      break;
    }
    at = parent->second;
  }
  return ancestors;
}

FaultError failure(std::string_view kind, std::errc code, std::string message) {
  return FaultError{std::make_error_code(code), fmt::format("{}: {}", kind, message)};
}

}  // namespace

bool processNameMatches(const ProcessInfo& p, std::string_view name) {
  if (p.comm == name) {
    return true;
  }
  if (!p.exe.empty() && exeName(p.exe) == name) {
    return true;
  }
  return !p.cmdline.empty() && argv0Name(p.cmdline) == name;
}

std::string commandLineOf(const ProcessInfo& p) {
  return p.cmdline.empty() ? "[" + p.comm + "]" : p.cmdline;
}

std::string describeProcess(const ProcessInfo& p) {
  return fmt::format("pid {} ({})", p.pid, commandLineOf(p));
}

v1::ProcessSelector selectorOf(const v1::ProcessKill& kill) {
  if (kill.has_process()) {
    return kill.process();
  }
  v1::ProcessSelector s;
  if (kill.selector_case() == v1::ProcessKill::kPid) {
    s.set_pid(kill.pid());
  } else if (kill.selector_case() == v1::ProcessKill::kName) {
    s.set_name(kill.name());
  }
  return s;
}

std::string describeSelector(const v1::ProcessSelector& s) {
  std::string out;
  switch (s.by_case()) {
    case v1::ProcessSelector::kPid:
      out = fmt::format("pid {}", s.pid());
      break;
    case v1::ProcessSelector::kName:
      out = fmt::format("name '{}'", s.name());
      break;
    case v1::ProcessSelector::kCmdline:
      out = fmt::format("cmdline /{}/", s.cmdline());
      break;
    case v1::ProcessSelector::kCgroup:
      out = fmt::format("cgroup {}", s.cgroup());
      break;
    case v1::ProcessSelector::kSystemdUnit:
      out = fmt::format("systemd unit {}", unitName(s.systemd_unit()));
      break;
    case v1::ProcessSelector::kPidfile:
      out = fmt::format("pidfile {}", s.pidfile());
      break;
    case v1::ProcessSelector::BY_NOT_SET:
      out = "no selector";
      break;
  }
  if (s.count() > 0) {
    out += fmt::format(", count {}", s.count());
  } else if (s.percent() > 0) {
    out += fmt::format(", percent {:g}", s.percent());
  }
  return out;
}

tl::expected<void, FaultError> checkProcessLimits(const ProcessSelection& selection,
                                                  const v1::ProcessSelector& selector, const ProcessLimits& limits,
                                                  std::string_view faultKind) {
  const std::string_view untouched = faultKind == "process.pause" ? "nothing was paused" : "nothing was signalled";
  if (selection.matched > limits.maxMatches) {
    return tl::unexpected(failure(
        faultKind, std::errc::operation_not_permitted,
        fmt::format("{} matches {} processes, more than the {} {} allows one selector to match (count and percent "
                    "do not lift it: narrow the selector); {}",
                    describeSelector(selector), selection.matched, limits.maxMatches, limits.maxMatchesRule,
                    untouched)));
  }
  if (selection.chosen.size() > limits.maxProcesses) {
    return tl::unexpected(
        failure(faultKind, std::errc::operation_not_permitted,
                fmt::format("{} chooses {} processes ({} matched), more than the {} {} allows one fault to touch "
                            "(set count to at most {} or narrow the selector); {}",
                            describeSelector(selector), selection.chosen.size(), selection.matched, limits.maxProcesses,
                            limits.maxProcessesRule, limits.maxProcesses, untouched)));
  }
  return {};
}

ProcessPicker::ProcessPicker(kernel::ProcessTable& processes, std::vector<ProtectedName> protect, std::mt19937_64& rng,
                             pid_t self)
    : processes_(processes), protect_(std::move(protect)), rng_(rng), self_(self) {
  protect_.push_back(
      ProtectedName{kAlwaysProtectedName, fmt::format("the built-in protect list ({})", kAlwaysProtectedName)});
}

tl::expected<ProcessSelection, FaultError> ProcessPicker::select(const v1::ProcessSelector& selector,
                                                                 std::string_view faultKind) {
  pid_t wantPid = 0;
  if (selector.by_case() == v1::ProcessSelector::kPid) {
    wantPid = selector.pid();
  } else if (selector.by_case() == v1::ProcessSelector::kPidfile) {
    auto pid = processes_.readPidfile(selector.pidfile());
    if (!pid) {
      return tl::unexpected(FaultError{pid.error().code, fmt::format("{}: cannot read a pid from pidfile {}: it {}",
                                                                     faultKind, selector.pidfile(), pid.error().why)});
    }
    wantPid = *pid;
  }
  std::optional<Regex> pattern;
  if (selector.by_case() == v1::ProcessSelector::kCmdline) {
    auto compiled = Regex::compile(selector.cmdline(), RegexAnchors::kTextEnds);
    if (!compiled) {
      return tl::unexpected(failure(faultKind, std::errc::invalid_argument,
                                    fmt::format("cmdline: {}; accepted: {}", compiled.error(), kRegexAccepted)));
    }
    pattern = std::move(*compiled);
  }
  const std::string unit = unitName(selector.systemd_unit());

  const std::vector<ProcessInfo> processes = processes_.list();
  const auto ancestors = ancestorsOf(self_, processes);
  const auto protection = [&](const ProcessInfo& p) -> std::string {
    if (p.pid == 1) {
      return "pid 1";
    }
    if (p.kernelThread) {
      return "a kernel thread";
    }
    if (p.pid == self_) {
      return "the agent itself";
    }
    if (ancestors.count(p.pid) != 0) {
      return "an ancestor of the agent";
    }
    for (const auto& name : protect_) {
      if (processNameMatches(p, name.name)) {
        return "protected by " + name.rule;
      }
    }
    return {};
  };
  const auto matches = [&](const ProcessInfo& p) {
    switch (selector.by_case()) {
      case v1::ProcessSelector::kPid:
      case v1::ProcessSelector::kPidfile:
        return p.pid == wantPid;
      case v1::ProcessSelector::kName:
        return processNameMatches(p, selector.name());
      case v1::ProcessSelector::kCmdline:
        return !p.cmdline.empty() && pattern->search(p.cmdline);
      case v1::ProcessSelector::kCgroup:
        return underCgroup(p.cgroup, selector.cgroup());
      case v1::ProcessSelector::kSystemdUnit:
        return pathHasComponent(p.cgroup, unit) || pathHasComponent(p.systemdCgroup, unit);
      case v1::ProcessSelector::BY_NOT_SET:
        break;
    }
    return false;
  };

  ProcessSelection out;
  out.searched = processes.size();
  for (const auto& p : processes) {
    // A zombie (Z) or dead (X) process has exited: it can be neither signalled nor paused, and its
    // network namespace is gone. Never picked, whatever the selector says.
    if (!matches(p) || p.state == 'Z' || p.state == 'X') {
      continue;
    }
    if (auto reason = protection(p); !reason.empty()) {
      out.skipped.push_back(fmt::format("{} is {}", describeProcess(p), reason));
    } else {
      out.chosen.push_back(p);
    }
  }
  out.matched = out.chosen.size();
  if (out.chosen.empty()) {
    if (wantPid != 0 && !out.skipped.empty()) {
      return tl::unexpected(failure(faultKind, std::errc::operation_not_permitted,
                                    fmt::format("{} ({}): {}; {}", describeSelector(selector), out.skipped.front(),
                                                "it may not be chosen", kNeverChosen)));
    }
    std::string also;
    if (!out.skipped.empty()) {
      also = fmt::format("; protected matches skipped: {}", fmt::join(out.skipped, "; "));
    }
    if (selector.by_case() == v1::ProcessSelector::kPid) {
      return tl::unexpected(
          failure(faultKind, std::errc::no_such_process, fmt::format("no process with pid {}", selector.pid())));
    }
    std::string searchedWhat = "pids";
    std::string what = "no process matches " + describeSelector(selector);
    switch (selector.by_case()) {
      case v1::ProcessSelector::kName:
        searchedWhat = "comm, executable and argv[0]";
        what = fmt::format("no process named '{}'", selector.name());
        break;
      case v1::ProcessSelector::kCmdline:
        searchedWhat = "command lines";
        break;
      case v1::ProcessSelector::kCgroup:
      case v1::ProcessSelector::kSystemdUnit:
        searchedWhat = "cgroup v2 (and name=systemd) paths";
        break;
      case v1::ProcessSelector::kPidfile:
        what = fmt::format("no process with pid {} (from pidfile {})", wantPid, selector.pidfile());
        break;
      default:
        break;
    }
    return tl::unexpected(failure(faultKind, std::errc::no_such_process,
                                  fmt::format("{} (searched {} of {} processes; {}{})", what, searchedWhat,
                                              processes.size(), kNeverChosen, also)));
  }
  size_t keep = out.chosen.size();
  if (selector.count() > 0) {
    keep = std::min<size_t>(keep, selector.count());
  } else if (selector.percent() > 0) {
    keep = std::min(keep, static_cast<size_t>(std::ceil(static_cast<double>(keep) * selector.percent() / 100.0)));
  }
  if (keep < out.chosen.size()) {
    std::shuffle(out.chosen.begin(), out.chosen.end(), rng_);
    out.chosen.resize(keep);
    std::sort(out.chosen.begin(), out.chosen.end(),
              [](const ProcessInfo& a, const ProcessInfo& b) { return a.pid < b.pid; });
  }
  return out;
}

}  // namespace faultline::agent
