#include "agent/faults/process/pause_driver.h"

#include <chrono>
#include <csignal>
#include <map>
#include <set>
#include <thread>
#include <utility>

#include <unistd.h>  // getpid

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "agent/faults/spec.h"

namespace faultline::agent {
namespace {

using kernel::PinnedProcess;
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

// A process a pause holds: pinned (a pidfd) from its selection to its resume, so the resume
// reaches it and no process that took its pid, and its exit is seen for what it is.
struct Member {
  pid_t pid = 0;
  unsigned long long start = 0;
  std::string frozenIn;  // the cgroup frozen with it; empty: stopped with SIGSTOP
  std::unique_ptr<PinnedProcess> pin;
};

nlohmann::json recordOf(const Plan& plan, kernel::CgroupTree* cgroups) {
  nlohmann::json stops = nlohmann::json::array();
  for (const auto& s : plan.stop) {
    stops.push_back({{"pid", s.pid}, {"start", s.start}});
  }
  return {{"mount", cgroups != nullptr ? cgroups->mountPoint() : ""}, {"freeze", plan.freeze}, {"stop", stops}};
}

// What a resume did: how many processes it resumed, what it did, and which paused processes had
// exited meanwhile (they are not counted as resumed).
struct Resumed {
  size_t resumed = 0;
  std::vector<std::string> done;
  std::vector<std::string> exited;
};

std::string resumedText(const Resumed& r) {
  std::string text = fmt::format("{}", fmt::join(r.done, ", "));
  if (!r.exited.empty()) {
    text += fmt::format("{}not resumed: {}", text.empty() ? "" : "; ", fmt::join(r.exited, ", "));
  }
  return text;
}

// Thaws and continues; collects what failed. Every item is tried. members: the pause's pinned
// processes (null for an undo record: each stopped pid is pinned by its recorded start time).
tl::expected<Resumed, FaultError> resume(const Plan& plan, kernel::ProcessTable& processes, kernel::CgroupTree* cgroups,
                                         std::vector<Member>* members) {
  Resumed out;
  std::vector<std::string> failed;
  std::error_code firstError;
  for (const auto& cgroup : plan.freeze) {
    if (cgroups == nullptr) {
      failed.push_back(fmt::format("cgroup {}: no cgroup v2 hierarchy to thaw it in", cgroup));
      continue;
    }
    // Who it holds, counted before the thaw (an undo record has no members).
    size_t held = 0;
    if (members == nullptr) {
      if (auto procs = cgroups->procs(cgroup)) {
        held = procs->size();
      }
    }
    auto written = cgroups->write(cgroup, "cgroup.freeze", "0");
    if (!written && written.error() == std::errc::no_such_file_or_directory) {
      out.exited.push_back(fmt::format("cgroup {} is gone (its processes exited)", cgroup));
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
      continue;
    }
    if (thawed && !*thawed) {
      firstError = firstError ? firstError : std::make_error_code(std::errc::timed_out);
      failed.push_back(fmt::format("cgroup {} still says frozen 1 after {}", cgroup, formatDuration(kFreezeWait)));
      continue;
    }
    out.done.push_back(fmt::format("thawed cgroup {}", cgroup));
    if (members == nullptr) {
      out.resumed += held;
      continue;
    }
    for (auto& m : *members) {
      if (m.frozenIn != cgroup) {
        continue;
      }
      if (m.pin->exited(milliseconds{0})) {
        out.exited.push_back(fmt::format("pid {} exited while paused", m.pid));
      } else {
        ++out.resumed;
      }
    }
  }
  for (const auto& s : plan.stop) {
    PinnedProcess* pin = nullptr;
    std::unique_ptr<PinnedProcess> pinnedNow;
    if (members != nullptr) {
      for (auto& m : *members) {
        if (m.pid == s.pid && m.frozenIn.empty()) {
          pin = m.pin.get();
        }
      }
    } else {
      auto pinned = processes.pin(s.pid, s.start);
      if (!pinned && pinned.error() != std::errc::no_such_process) {
        firstError = firstError ? firstError : pinned.error();
        failed.push_back(fmt::format("cannot open pid {}: {}", s.pid, pinned.error().message()));
        continue;
      }
      if (pinned) {
        pinnedNow = std::move(*pinned);
        pin = pinnedNow.get();
      }
    }
    auto sent =
        pin != nullptr
            ? pin->signal(SIGCONT)
            : tl::expected<void, std::error_code>(tl::unexpected(std::make_error_code(std::errc::no_such_process)));
    if (!sent && sent.error() == std::errc::no_such_process) {
      out.exited.push_back(fmt::format("pid {} has exited", s.pid));
    } else if (!sent) {
      firstError = firstError ? firstError : sent.error();
      failed.push_back(fmt::format("cannot send SIGCONT to pid {}: {}", s.pid, sent.error().message()));
    } else {
      ++out.resumed;
      out.done.push_back(fmt::format("SIGCONT to pid {}", s.pid));
    }
  }
  if (!failed.empty()) {
    return tl::unexpected(failure(firstError, fmt::format("not resumed: {}", fmt::join(failed, "; "))));
  }
  return out;
}

}  // namespace

// What this driver's faults hold now, so a second pause of the same process is refused (see the
// header). Guarded by the driver's mutex_.
struct ProcessPauseDriver::Held {
  std::set<std::pair<pid_t, unsigned long long>> processes;  // pid and start time
  std::set<std::string> cgroups;                             // frozen by this driver
};

namespace {

class PausedProcesses final : public AppliedFault {
 public:
  PausedProcesses(Plan plan, std::vector<Member> members, std::vector<v1::ProcessHit> hits, std::string description,
                  kernel::ProcessTable& processes, kernel::CgroupTree* cgroups, std::mutex& mutex,
                  ProcessPauseDriver::Held& held)
      : plan_(std::move(plan)),
        members_(std::move(members)),
        hits_(std::move(hits)),
        description_(std::move(description)),
        processes_(processes),
        cgroups_(cgroups),
        mutex_(mutex),
        held_(held) {
    for (const auto& m : members_) {
      held_.processes.emplace(m.pid, m.start);
    }
    for (const auto& c : plan_.freeze) {
      held_.cgroups.insert(c);
    }
  }
  ~PausedProcesses() override {
    std::lock_guard lock(mutex_);
    letGo();
  }
  PausedProcesses(const PausedProcesses&) = delete;
  PausedProcesses& operator=(const PausedProcesses&) = delete;

  tl::expected<void, FaultError> revert() override {
    std::lock_guard lock(mutex_);
    if (resumed_) {
      return {};
    }
    auto resumed = resume(plan_, processes_, cgroups_, &members_);
    if (!resumed) {
      return tl::unexpected(resumed.error());
    }
    resumed_ = true;
    result_ = std::move(*resumed);
    letGo();
    return {};
  }

  std::string describeRevert(std::string_view why) const override {
    std::lock_guard lock(mutex_);
    return fmt::format("resumed {} of {} paused process(es) ({}): {}", result_.resumed, members_.size(), why,
                       resumedText(result_));
  }

  std::string describe() const override { return description_; }
  std::vector<v1::ProcessHit> processHits() const override { return hits_; }

 private:
  void letGo() {
    for (const auto& m : members_) {
      held_.processes.erase({m.pid, m.start});
    }
    for (const auto& c : plan_.freeze) {
      held_.cgroups.erase(c);
    }
  }

  Plan plan_;
  std::vector<Member> members_;
  std::vector<v1::ProcessHit> hits_;
  std::string description_;
  kernel::ProcessTable& processes_;
  kernel::CgroupTree* cgroups_;
  std::mutex& mutex_;
  ProcessPauseDriver::Held& held_;
  bool resumed_ = false;
  Resumed result_;  // what revert() did
};

// Why a chosen process cannot be frozen alone (then it gets SIGSTOP); empty when it can.
struct FreezeCheck {
  bool owned = false;
  std::string whyNot;
};

}  // namespace

ProcessPauseDriver::ProcessPauseDriver(kernel::ProcessTable& processes, kernel::CgroupTree* cgroups, ProcessRules rules,
                                       uint64_t seed, std::string noCgroupsWhy)
    : processes_(processes),
      cgroups_(cgroups),
      noCgroupsWhy_(std::move(noCgroupsWhy)),
      rng_(seed),
      picker_(processes, std::move(rules.protect), rng_, ::getpid()),
      limits_(std::move(rules.limits)),
      held_(std::make_unique<Held>()) {}

ProcessPauseDriver::~ProcessPauseDriver() = default;

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
  const bool freezeOnly = spec.process_pause().mechanism() == v1::PAUSE_MECHANISM_FREEZE;
  std::lock_guard lock(mutex_);
  if (freezeOnly && cgroups_ == nullptr) {
    return tl::unexpected(failure(
        std::make_error_code(std::errc::operation_not_supported),
        fmt::format("mechanism: freeze needs a cgroup v2 hierarchy with cgroup.freeze, and this agent has none ({}); "
                    "drop mechanism: freeze to stop the processes with SIGSTOP; nothing was paused",
                    noCgroupsWhy_.empty() ? "no cgroup2 mount found" : noCgroupsWhy_)));
  }
  const auto& selector = spec.process_pause().process();
  auto selection = picker_.select(selector, kKind);
  if (!selection) {
    return tl::unexpected(selection.error());
  }
  if (auto allowed = checkProcessLimits(*selection, selector, limits_, kKind); !allowed) {
    return tl::unexpected(allowed.error());
  }

  // Pin every chosen process now: from here to its resume each is the process selected, whatever
  // it does to its command line; one that has gone since the selection was read has exited.
  std::vector<v1::ProcessHit> hits;
  std::vector<Member> members;
  std::vector<const ProcessInfo*> chosen;  // parallel to members
  for (const auto& p : selection->chosen) {
    auto pinned = processes_.pin(p.pid, p.startTime);
    if (!pinned && pinned.error() == std::errc::no_such_process) {
      v1::ProcessHit hit;
      hit.set_pid(p.pid);
      hit.set_cmdline(commandLineOf(p));
      hit.set_exited(true);
      hit.set_action("missed: it had exited");
      hits.push_back(std::move(hit));
      continue;
    }
    if (!pinned) {
      return tl::unexpected(failure(pinned.error(), fmt::format("cannot open {} (pidfd_open): {}; nothing was paused",
                                                                describeProcess(p), pinned.error().message())));
    }
    members.push_back(Member{p.pid, p.startTime, "", std::move(*pinned)});
    chosen.push_back(&p);
  }
  if (members.empty()) {
    return tl::unexpected(failure(std::make_error_code(std::errc::no_such_process),
                                  "every chosen process exited before it could be paused"));
  }

  // One pause per process: a process this driver holds paused, or one already stopped or frozen
  // by someone else, is refused (resuming it at the end of this fault would end the other's pause).
  std::vector<std::string> busy;
  std::vector<int32_t> heldPids;
  for (const auto* p : chosen) {
    bool ours = held_->processes.count({p->pid, p->startTime}) != 0;
    for (const auto& c : held_->cgroups) {
      ours = ours || (!p->cgroup.empty() && isAncestorOrSelf(c, p->cgroup) && c != "/");
    }
    if (ours) {
      heldPids.push_back(p->pid);
      busy.push_back(
          fmt::format("{} is already paused by another process.pause fault of this agent", describeProcess(*p)));
    } else if (p->state == 'T' || p->state == 't') {
      busy.push_back(
          fmt::format("{} is already stopped (state {}) by something else: another faultline agent, a "
                      "debugger or a shell's job control",
                      describeProcess(*p), p->state));
    } else if (cgroups_ != nullptr && !p->cgroup.empty() && p->cgroup != "/") {
      auto events = cgroups_->read(p->cgroup, "cgroup.events");
      if (events && ("\n" + *events + "\n").find("\nfrozen 1\n") != std::string::npos) {
        busy.push_back(
            fmt::format("{} is in cgroup {}, which is already frozen (cgroup.events: frozen 1) by "
                        "something else, e.g. another faultline agent",
                        describeProcess(*p), p->cgroup));
      }
    }
  }
  if (!busy.empty()) {
    FaultError error = failure(std::make_error_code(std::errc::device_or_resource_busy),
                               fmt::format("{}; one pause per process at a time (the first pause to end would resume "
                                           "it under the other): end that pause first or narrow the selector; "
                                           "nothing was paused",
                                           fmt::join(busy, "; ")));
    error.heldPids = std::move(heldPids);
    return tl::unexpected(std::move(error));
  }

  // Which cgroups the chosen processes own whole.
  std::map<std::string, std::vector<size_t>> byCgroup;  // cgroup -> indexes into members
  std::set<pid_t> chosenPids;
  for (size_t i = 0; i < members.size(); ++i) {
    byCgroup[chosen[i]->cgroup].push_back(i);
    chosenPids.insert(members[i].pid);
  }
  std::string self;
  if (cgroups_ != nullptr) {
    if (auto s = cgroups_->selfCgroup()) {
      self = *s;
    }
  }
  const auto canFreeze = [&](const std::string& cgroup) -> FreezeCheck {
    if (cgroups_ == nullptr) {
      return {false, fmt::format("no cgroup v2 hierarchy ({})",
                                 noCgroupsWhy_.empty() ? "no cgroup2 mount found" : noCgroupsWhy_)};
    }
    if (cgroup.empty()) {
      return {false, "its cgroup v2 path is unknown"};
    }
    if (cgroup == "/") {
      return {false, "it is in the root cgroup, which cannot be frozen"};
    }
    if (self.empty()) {
      return {false, "the agent's own cgroup is unknown"};
    }
    if (isAncestorOrSelf(cgroup, self)) {
      return {false, fmt::format("its cgroup {} holds the agent", cgroup)};
    }
    auto kids = cgroups_->children(cgroup);
    if (!kids) {
      return {false, fmt::format("cannot read cgroup {}: {}", cgroup, kids.error().message())};
    }
    if (!kids->empty()) {
      return {false, fmt::format("its cgroup {} has child cgroups", cgroup)};
    }
    if (!cgroups_->read(cgroup, "cgroup.freeze")) {
      return {false, fmt::format("its cgroup {} has no cgroup.freeze (a kernel before 5.2)", cgroup)};
    }
    auto procs = cgroups_->procs(cgroup);
    if (!procs) {
      return {false, fmt::format("cannot read cgroup {}'s cgroup.procs: {}", cgroup, procs.error().message())};
    }
    size_t others = 0;
    for (pid_t pid : *procs) {
      others += chosenPids.count(pid) == 0 ? 1 : 0;
    }
    if (others > 0) {
      return {false, fmt::format("its cgroup {} also holds {} process(es) not chosen", cgroup, others)};
    }
    return {true, ""};
  };
  Plan plan;
  std::vector<std::string> whyStopped;  // why each SIGSTOP is not a freeze
  std::vector<std::string> cannotFreeze;
  for (const auto& [cgroup, indexes] : byCgroup) {
    const FreezeCheck check = canFreeze(cgroup);
    if (check.owned) {
      plan.freeze.push_back(cgroup);
    }
    for (size_t i : indexes) {
      const ProcessInfo& p = *chosen[i];
      v1::ProcessHit hit;
      hit.set_pid(p.pid);
      hit.set_cmdline(commandLineOf(p));
      if (check.owned) {
        hit.set_action(fmt::format("frozen (cgroup {})", cgroup));
        members[i].frozenIn = cgroup;
      } else {
        hit.set_action("SIGSTOP");
        plan.stop.push_back(Stopped{p.pid, p.startTime});
        whyStopped.push_back(fmt::format("pid {}: {}", p.pid, check.whyNot));
        cannotFreeze.push_back(fmt::format("{}: {}", describeProcess(p), check.whyNot));
      }
      hits.push_back(std::move(hit));
    }
  }
  if (freezeOnly && !cannotFreeze.empty()) {
    return tl::unexpected(failure(
        std::make_error_code(std::errc::operation_not_supported),
        fmt::format("mechanism: freeze: cannot freeze without freezing processes not chosen or the agent: {}; freeze "
                    "needs each chosen process's cgroup to hold only chosen processes and no child cgroups: select the "
                    "whole cgroup (cgroup: or systemdUnit:), or drop mechanism: freeze to stop these with SIGSTOP; "
                    "nothing was paused",
                    fmt::join(cannotFreeze, "; "))));
  }
  if (persist) {
    if (auto persisted = persist(recordOf(plan, cgroups_)); !persisted) {
      return tl::unexpected(persisted.error());
    }
  }

  // Applies; on any failure, resumes whatever was paused so far and reports the failure.
  Plan done;
  const auto rollBack = [&](FaultError error) -> tl::unexpected<FaultError> {
    if (auto resumed = resume(done, processes_, cgroups_, &members); !resumed) {
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
  std::vector<size_t> stoppedMembers;
  std::set<pid_t> exitedBeforeStop;
  for (size_t i = 0; i < members.size(); ++i) {
    if (!members[i].frozenIn.empty()) {
      continue;
    }
    auto sent = members[i].pin->signal(SIGSTOP);
    if (!sent && sent.error() == std::errc::no_such_process) {
      exitedBeforeStop.insert(members[i].pid);
      for (auto& h : hits) {
        if (h.pid() == members[i].pid) {
          h.set_exited(true);
          h.set_action("missed: it had exited");
        }
      }
      continue;
    }
    if (!sent) {
      return rollBack(failure(
          sent.error(), fmt::format("cannot send SIGSTOP to pid {}: {}", members[i].pid, sent.error().message())));
    }
    done.stop.push_back(Stopped{members[i].pid, members[i].start});
    stoppedMembers.push_back(i);
  }
  if (plan.freeze.empty() && stoppedMembers.empty()) {
    return tl::unexpected(failure(std::make_error_code(std::errc::no_such_process),
                                  "every chosen process exited before it could be stopped"));
  }
  // A process missed is not held: it is neither resumed nor counted as paused.
  if (!exitedBeforeStop.empty()) {
    std::vector<Member> kept;
    for (auto& m : members) {
      if (exitedBeforeStop.count(m.pid) == 0) {
        kept.push_back(std::move(m));
      }
    }
    members = std::move(kept);
    plan.stop = done.stop;
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
  const size_t frozenCount = members.size() - done.stop.size();
  if (done.stop.empty()) {
    description += "; mechanism: freeze (cgroup.freeze)";
  } else if (frozenCount == 0) {
    description += fmt::format("; mechanism: SIGSTOP ({})", fmt::join(whyStopped, "; "));
  } else {
    description += fmt::format("; mechanism: freeze for {}, SIGSTOP for {} ({})", frozenCount, done.stop.size(),
                               fmt::join(whyStopped, "; "));
  }
  if (!selection->skipped.empty()) {
    description += fmt::format("; protected matches skipped: {}", fmt::join(selection->skipped, "; "));
  }
  return std::make_unique<PausedProcesses>(std::move(plan), std::move(members), std::move(hits), std::move(description),
                                           processes_, cgroups_, mutex_, *held_);
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
  auto resumed = resume(plan, processes, cgroups, nullptr);
  if (!resumed) {
    return tl::unexpected(resumed.error());
  }
  return "resumed: " + resumedText(*resumed);
}

}  // namespace faultline::agent
