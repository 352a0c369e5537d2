#include "agent/faults/process/pause_driver.h"

#include <chrono>
#include <csignal>
#include <map>
#include <set>
#include <thread>

#include <unistd.h>  // getpid

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "agent/faults/spec.h"

namespace faultline::agent {
namespace {

using kernel::ProcessInfo;
using std::chrono::milliseconds;

constexpr milliseconds kFreezeWait{1000};
constexpr milliseconds kStopWait{1000};
constexpr std::string_view kKind = "process.pause";

FaultError failure(std::error_code code, std::string message) {
  return FaultError{code, fmt::format("{}: {}", kKind, message)};
}

bool isAncestorOrSelf(std::string_view maybeAncestor, std::string_view cgroup) {
  if (maybeAncestor == "/" || maybeAncestor == cgroup) {
    return true;
  }
  return cgroup.size() > maybeAncestor.size() && cgroup.substr(0, maybeAncestor.size()) == maybeAncestor &&
         cgroup[maybeAncestor.size()] == '/';
}

struct Stopped {
  pid_t pid = 0;
  unsigned long long start = 0;
};

struct Plan {
  std::vector<std::string> freeze;
  std::vector<Stopped> stop;
};

nlohmann::json recordOf(const Plan& plan, kernel::CgroupTree* cgroups) {
  nlohmann::json stops = nlohmann::json::array();
  for (const auto& s : plan.stop) {
    stops.push_back({{"pid", s.pid}, {"start", s.start}});
  }
  return {{"mount", cgroups != nullptr ? cgroups->mountPoint() : ""}, {"freeze", plan.freeze}, {"stop", stops}};
}

// Thaws and continues; collects what failed. Every item is tried.
tl::expected<std::string, FaultError> resume(const Plan& plan, kernel::ProcessTable& processes,
                                             kernel::CgroupTree* cgroups) {
  std::vector<std::string> done;
  std::vector<std::string> failed;
  std::error_code firstError;
  for (const auto& cgroup : plan.freeze) {
    if (cgroups == nullptr) {
      failed.push_back(fmt::format("cgroup {}: no cgroup v2 hierarchy to thaw it in", cgroup));
      continue;
    }
    auto written = cgroups->write(cgroup, "cgroup.freeze", "0");
    if (!written && written.error() == std::errc::no_such_file_or_directory) {
      done.push_back(fmt::format("cgroup {} is gone", cgroup));
      continue;
    }
    if (!written) {
      firstError = firstError ? firstError : written.error();
      failed.push_back(fmt::format("cannot thaw cgroup {}: {}", cgroup, written.error().message()));
      continue;
    }
    auto thawed = cgroups->waitEvent(cgroup, "frozen", "0", kFreezeWait);
    if (!thawed && thawed.error() != std::errc::no_such_file_or_directory) {
      firstError = firstError ? firstError : thawed.error();
      failed.push_back(fmt::format("cannot read cgroup {}'s cgroup.events: {}", cgroup, thawed.error().message()));
    } else if (thawed && !*thawed) {
      firstError = firstError ? firstError : std::make_error_code(std::errc::timed_out);
      failed.push_back(fmt::format("cgroup {} still says frozen 1 after {}", cgroup, formatDuration(kFreezeWait)));
    } else {
      done.push_back(fmt::format("thawed cgroup {}", cgroup));
    }
  }
  if (!plan.stop.empty()) {
    std::map<pid_t, unsigned long long> starts;
    for (const auto& p : processes.list()) {
      starts[p.pid] = p.startTime;
    }
    for (const auto& s : plan.stop) {
      auto it = starts.find(s.pid);
      if (it == starts.end() || (s.start != 0 && it->second != s.start)) {
        done.push_back(fmt::format("pid {} has exited", s.pid));
        continue;
      }
      auto sent = processes.signal(s.pid, SIGCONT);
      if (!sent && sent.error() != std::errc::no_such_process) {
        firstError = firstError ? firstError : sent.error();
        failed.push_back(fmt::format("cannot send SIGCONT to pid {}: {}", s.pid, sent.error().message()));
      } else {
        done.push_back(fmt::format("SIGCONT to pid {}", s.pid));
      }
    }
  }
  if (!failed.empty()) {
    return tl::unexpected(failure(firstError, fmt::format("not resumed: {}", fmt::join(failed, "; "))));
  }
  return fmt::format("{}", fmt::join(done, ", "));
}

class PausedProcesses final : public AppliedFault {
 public:
  PausedProcesses(Plan plan, std::vector<v1::ProcessHit> hits, std::string description, kernel::ProcessTable& processes,
                  kernel::CgroupTree* cgroups, std::mutex& mutex)
      : plan_(std::move(plan)),
        hits_(std::move(hits)),
        description_(std::move(description)),
        processes_(processes),
        cgroups_(cgroups),
        mutex_(mutex) {}

  tl::expected<void, FaultError> revert() override {
    if (resumed_) {
      return {};
    }
    std::lock_guard lock(mutex_);
    auto resumed = resume(plan_, processes_, cgroups_);
    if (!resumed) {
      return tl::unexpected(resumed.error());
    }
    resumed_ = true;
    resumeText_ = std::move(*resumed);
    return {};
  }

  std::string describeRevert(std::string_view why) const override {
    std::lock_guard lock(mutex_);
    return fmt::format("resumed {} paused process(es) ({}): {}", hits_.size(), why, resumeText_);
  }

  std::string describe() const override { return description_; }
  std::vector<v1::ProcessHit> processHits() const override { return hits_; }

 private:
  Plan plan_;
  std::vector<v1::ProcessHit> hits_;
  std::string description_;
  kernel::ProcessTable& processes_;
  kernel::CgroupTree* cgroups_;
  std::mutex& mutex_;
  bool resumed_ = false;
  std::string resumeText_;  // what revert() did: "SIGCONT to pid 12, thawed cgroup /x"
};

}  // namespace

ProcessPauseDriver::ProcessPauseDriver(kernel::ProcessTable& processes, kernel::CgroupTree* cgroups, ProcessRules rules,
                                       uint64_t seed)
    : processes_(processes),
      cgroups_(cgroups),
      rng_(seed),
      picker_(processes, std::move(rules.protect), rng_, ::getpid()),
      limits_(std::move(rules.limits)) {}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> ProcessPauseDriver::apply(const v1::FaultSpec& spec,
                                                                                  const PersistUndo& persist) {
  if (auto valid = validateFaultSpec(spec); !valid) {
    return tl::unexpected(failure(std::make_error_code(std::errc::invalid_argument),
                                  fmt::format("invalid spec: {}: {}", valid.error().field, valid.error().message)));
  }
  if (spec.kind_case() != v1::FaultSpec::kProcessPause) {
    return tl::unexpected(failure(std::make_error_code(std::errc::invalid_argument),
                                  fmt::format("the pause driver cannot apply {}", faultKindName(spec))));
  }
  std::lock_guard lock(mutex_);
  auto selection = picker_.select(spec.process_pause().process(), kKind);
  if (!selection) {
    return tl::unexpected(selection.error());
  }
  if (auto allowed = checkProcessLimits(*selection, spec.process_pause().process(), limits_, kKind); !allowed) {
    return tl::unexpected(allowed.error());
  }

  // Which cgroups the chosen processes own whole.
  std::map<std::string, std::vector<const ProcessInfo*>> byCgroup;
  std::set<pid_t> chosenPids;
  for (const auto& p : selection->chosen) {
    byCgroup[p.cgroup].push_back(&p);
    chosenPids.insert(p.pid);
  }
  std::string self;
  if (cgroups_ != nullptr) {
    if (auto s = cgroups_->selfCgroup()) {
      self = *s;
    }
  }
  Plan plan;
  std::vector<v1::ProcessHit> hits;
  for (const auto& [cgroup, members] : byCgroup) {
    bool owned = cgroups_ != nullptr && !self.empty() && !cgroup.empty() && !isAncestorOrSelf(cgroup, self);
    if (owned) {
      auto kids = cgroups_->children(cgroup);
      auto procs = cgroups_->procs(cgroup);
      auto freezeFile = cgroups_->read(cgroup, "cgroup.freeze");
      owned = kids && kids->empty() && procs && !procs->empty() && freezeFile;
      if (owned) {
        for (pid_t pid : *procs) {
          owned = owned && chosenPids.count(pid) != 0;
        }
      }
    }
    if (owned) {
      plan.freeze.push_back(cgroup);
    }
    for (const auto* p : members) {
      v1::ProcessHit hit;
      hit.set_pid(p->pid);
      hit.set_cmdline(commandLineOf(*p));
      if (owned) {
        hit.set_action(fmt::format("frozen (cgroup {})", cgroup));
      } else {
        hit.set_action("SIGSTOP");
        plan.stop.push_back(Stopped{p->pid, p->startTime});
      }
      hits.push_back(std::move(hit));
    }
  }
  if (persist) {
    if (auto persisted = persist(recordOf(plan, cgroups_)); !persisted) {
      return tl::unexpected(persisted.error());
    }
  }

  // Applies; on any failure, resumes whatever was paused so far and reports the failure.
  Plan done;
  const auto rollBack = [&](FaultError error) -> tl::unexpected<FaultError> {
    if (auto resumed = resume(done, processes_, cgroups_); !resumed) {
      error.mayBeChanged = true;
      error.message += "; rolling back failed too: " + resumed.error().message;
    }
    return tl::unexpected(std::move(error));
  };
  for (const auto& cgroup : plan.freeze) {
    done.freeze.push_back(cgroup);
    if (auto written = cgroups_->write(cgroup, "cgroup.freeze", "1"); !written) {
      return rollBack(
          failure(written.error(), fmt::format("cannot freeze cgroup {}: {}", cgroup, written.error().message())));
    }
    auto frozen = cgroups_->waitEvent(cgroup, "frozen", "1", kFreezeWait);
    if (!frozen || !*frozen) {
      return rollBack(
          failure(frozen ? std::make_error_code(std::errc::timed_out) : frozen.error(),
                  fmt::format("cgroup {} did not report frozen 1 within {}", cgroup, formatDuration(kFreezeWait))));
    }
  }
  size_t exited = 0;
  for (const auto& s : plan.stop) {
    auto sent = processes_.signal(s.pid, SIGSTOP);
    if (!sent && sent.error() == std::errc::no_such_process) {
      ++exited;
      for (auto& h : hits) {
        if (h.pid() == s.pid) {
          h.set_exited(true);
          h.set_action("missed: it had exited");
        }
      }
      continue;
    }
    if (!sent) {
      return rollBack(
          failure(sent.error(), fmt::format("cannot send SIGSTOP to pid {}: {}", s.pid, sent.error().message())));
    }
    done.stop.push_back(s);
  }
  if (plan.freeze.empty() && exited == plan.stop.size()) {
    return tl::unexpected(failure(std::make_error_code(std::errc::no_such_process),
                                  "every chosen process exited before it could be stopped"));
  }
  // SIGSTOP is delivered asynchronously: wait until each stopped process shows state T.
  if (!done.stop.empty()) {
    const auto deadline = std::chrono::steady_clock::now() + kStopWait;
    for (;;) {
      std::set<pid_t> stopping;
      for (const auto& s : done.stop) {
        stopping.insert(s.pid);
      }
      std::set<pid_t> pending;  // listed and not stopped yet; gone ones have exited
      for (const auto& p : processes_.list()) {
        if (stopping.count(p.pid) != 0 && p.state != 'T' && p.state != 't' && p.state != 'Z') {
          pending.insert(p.pid);
        }
      }
      if (pending.empty() || std::chrono::steady_clock::now() >= deadline) {
        break;
      }
      std::this_thread::sleep_for(milliseconds{2});
    }
  }
  std::vector<std::string> parts;
  for (const auto& h : hits) {
    parts.push_back(fmt::format("pid {} ({}): {}", h.pid(), h.cmdline(), h.action()));
  }
  std::string description = fmt::format("paused {}", fmt::join(parts, ", "));
  if (!selection->skipped.empty()) {
    description += fmt::format("; protected matches skipped: {}", fmt::join(selection->skipped, "; "));
  }
  return std::make_unique<PausedProcesses>(std::move(plan), std::move(hits), std::move(description), processes_,
                                           cgroups_, mutex_);
}

tl::expected<std::string, FaultError> ProcessPauseDriver::revertRecord(const nlohmann::json& undo,
                                                                       kernel::ProcessTable& processes,
                                                                       kernel::CgroupTree* cgroups) {
  Plan plan;
  try {
    for (const auto& c : undo.at("freeze")) {
      plan.freeze.push_back(c.get<std::string>());
    }
    for (const auto& s : undo.at("stop")) {
      plan.stop.push_back(Stopped{s.at("pid").get<pid_t>(), s.at("start").get<unsigned long long>()});
    }
  } catch (const nlohmann::json::exception& e) {
    FaultError error = failure(std::make_error_code(std::errc::invalid_argument),
                               fmt::format("unreadable undo record {}: {}", undo.dump(), e.what()));
    error.permanent = true;
    return tl::unexpected(error);
  }
  auto resumed = resume(plan, processes, cgroups);
  if (!resumed) {
    return tl::unexpected(resumed.error());
  }
  return "resumed: " + *resumed;
}

}  // namespace faultline::agent
