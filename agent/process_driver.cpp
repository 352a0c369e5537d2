#include "agent/process_driver.h"

#include <cerrno>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <string.h>  // sigabbrev_np
#include <unistd.h>  // getpid

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "agent/spec.h"

namespace faultline::agent {
namespace {

using kernel::ProcessInfo;

constexpr std::string_view kDeletedSuffix = " (deleted)";

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

bool nameMatches(const ProcessInfo& p, std::string_view name) {
  if (p.comm == name) {
    return true;
  }
  if (!p.exe.empty() && exeName(p.exe) == name) {
    return true;
  }
  return !p.cmdline.empty() && argv0Name(p.cmdline) == name;
}

std::string signalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

std::string commandLine(const ProcessInfo& p) {
  return p.cmdline.empty() ? "[" + p.comm + "]" : p.cmdline;
}

std::string describeProcess(const ProcessInfo& p) {
  return fmt::format("pid {} ({})", p.pid, commandLine(p));
}

// Why a process may never be chosen; empty when it may.
std::string protectionReason(const ProcessInfo& p, pid_t self, const std::unordered_set<pid_t>& ancestors,
                             const std::vector<ProtectedName>& protect) {
  if (p.pid == 1) {
    return "pid 1";
  }
  if (p.kernelThread) {
    return "a kernel thread";
  }
  if (p.pid == self) {
    return "the agent itself";
  }
  if (ancestors.count(p.pid) != 0) {
    return "an ancestor of the agent";
  }
  for (const auto& name : protect) {
    if (nameMatches(p, name.name)) {
      return "protected by " + name.rule;
    }
  }
  return {};
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

FaultError failure(std::errc code, std::string message) {
  return FaultError{std::make_error_code(code), "process.kill: " + std::move(message)};
}

class KilledProcesses final : public AppliedFault {
 public:
  explicit KilledProcesses(std::string description) : description_(std::move(description)) {}

  tl::expected<void, FaultError> revert() override { return {}; }  // a signal cannot be taken back

  std::string describe() const override { return description_; }

 private:
  std::string description_;
};

}  // namespace

ProcessKillDriver::ProcessKillDriver(kernel::ProcessTable& processes, std::vector<ProtectedName> protect)
    : processes_(processes), protect_(std::move(protect)) {
  protect_.push_back(
      ProtectedName{kAlwaysProtectedName, fmt::format("the built-in protect list ({})", kAlwaysProtectedName)});
}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> ProcessKillDriver::apply(
    const v1::FaultSpec& spec, const PersistUndo& /*persist: a kill leaves nothing to undo*/) {
  if (auto valid = validateFaultSpec(spec); !valid) {
    return tl::unexpected(failure(std::errc::invalid_argument,
                                  fmt::format("invalid spec: {}: {}", valid.error().field, valid.error().message)));
  }
  if (spec.kind_case() != v1::FaultSpec::kProcessKill) {
    return tl::unexpected(
        failure(std::errc::invalid_argument, fmt::format("the process driver cannot apply {}", faultKindName(spec))));
  }
  const auto& kill = spec.process_kill();
  const int sig = parseSignal(kill.signal());

  const std::vector<ProcessInfo> processes = processes_.list();
  const pid_t self = ::getpid();
  const auto ancestors = ancestorsOf(self, processes);

  std::vector<const ProcessInfo*> chosen;
  std::vector<const ProcessInfo*> protectedMatches;  // matched the name but skipped
  if (kill.selector_case() == v1::ProcessKill::kPid) {
    const ProcessInfo* found = nullptr;
    for (const auto& p : processes) {
      if (p.pid == kill.pid()) {
        found = &p;
        break;
      }
    }
    if (found == nullptr) {
      return tl::unexpected(failure(std::errc::no_such_process, fmt::format("no process with pid {}", kill.pid())));
    }
    if (auto reason = protectionReason(*found, self, ancestors, protect_); !reason.empty()) {
      return tl::unexpected(failure(std::errc::operation_not_permitted,
                                    fmt::format("{} is {}; pid 1, kernel threads, the agent, sshd and the "
                                                "policy's protected processes are never chosen",
                                                describeProcess(*found), reason)));
    }
    chosen.push_back(found);
  } else {
    for (const auto& p : processes) {
      if (!nameMatches(p, kill.name())) {
        continue;
      }
      if (protectionReason(p, self, ancestors, protect_).empty()) {
        chosen.push_back(&p);
      } else {
        protectedMatches.push_back(&p);
      }
    }
    if (chosen.empty()) {
      std::string also;
      if (!protectedMatches.empty()) {
        also = "; protected matches skipped:";
        for (const auto* p : protectedMatches) {
          also += fmt::format(" {} is {};", describeProcess(*p), protectionReason(*p, self, ancestors, protect_));
        }
        also.pop_back();
      }
      return tl::unexpected(
          failure(std::errc::no_such_process,
                  fmt::format("no process named '{}' (searched comm, executable and argv[0] of {} processes; pid 1, "
                              "kernel threads, the agent, sshd and the policy's protected processes are never "
                              "chosen{})",
                              kill.name(), processes.size(), also)));
    }
  }

  // A signal cannot be taken back, so every chosen process is tried and the fault succeeds when
  // at least one was signalled; the others are listed in its description.
  std::vector<std::string> signalled;
  std::vector<std::string> missed;
  std::error_code firstError;
  for (const auto* p : chosen) {
    if (auto sent = processes_.signal(p->pid, sig); sent) {
      signalled.push_back(describeProcess(*p));
    } else {
      if (!firstError) {
        firstError = sent.error();
      }
      missed.push_back(sent.error() == std::errc::no_such_process
                           ? fmt::format("{} had exited", describeProcess(*p))
                           : fmt::format("{}: {}", describeProcess(*p), sent.error().message()));
    }
  }
  if (signalled.empty()) {
    return tl::unexpected(FaultError{
        firstError, fmt::format("process.kill: could not send {}: {}", signalName(sig), fmt::join(missed, "; "))});
  }
  std::string description = fmt::format("{} sent to {}", signalName(sig), fmt::join(signalled, ", "));
  if (!missed.empty()) {
    description += fmt::format("; not signalled: {}", fmt::join(missed, "; "));
  }
  if (!protectedMatches.empty()) {
    std::vector<std::string> skipped;
    for (const auto* p : protectedMatches) {
      skipped.push_back(fmt::format("{} is {}", describeProcess(*p), protectionReason(*p, self, ancestors, protect_)));
    }
    description += fmt::format("; protected matches skipped: {}", fmt::join(skipped, "; "));
  }
  return std::make_unique<KilledProcesses>(std::move(description));
}

}  // namespace faultline::agent
