#include "agent/session/agent.h"

#include <algorithm>
#include <tuple>

#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/network/nfqueue_driver.h"
#include "agent/faults/network/packet_queue.h"
#include "agent/faults/process/kill_driver.h"
#include "agent/faults/process/pause_driver.h"
#include "agent/faults/resource/squeeze_driver.h"
#include "agent/faults/resource/stress_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/cgroup_tree.h"
#include "agent/kernel/process_table.h"
#include "agent/safety/queue_watchdog.h"

namespace faultline::agent {

namespace {

// The detail of a revert of a fault not held: reverting is idempotent.
constexpr const char* kNotHeld = "not held (already reverted, expired or never applied)";

// A fault id fit for a log line and a report: control characters as '?', cut to its bound.
std::string printableId(const std::string& id) {
  std::string out = id.substr(0, kMaxFaultIdBytes);
  std::replace_if(
      out.begin(), out.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }, '?');
  return out;
}

}  // namespace

Agent::Agent(boost::asio::io_context& io, FaultDriver& driver, ReportSink sink, UndoJournal* journal, Policy policy,
             std::chrono::milliseconds watchInterval, boost::asio::io_context* expiry, AgentMetrics* metrics)
    : io_(io),
      expiry_(expiry != nullptr ? *expiry : io),
      driver_(driver),
      sink_(std::move(sink)),
      journal_(journal),
      metrics_(metrics),
      policy_(std::move(policy)),
      watchInterval_(watchInterval),
      watchTimer_(io) {
  if (metrics_ != nullptr && journal_ != nullptr) {
    metrics_->journalOpen.with({}).set(static_cast<double>(journal_->openCount()));
  }
}

void Agent::journalDone(const std::string& faultId) {
  if (journal_ == nullptr) {
    return;
  }
  std::lock_guard lock(journalMutex_);
  if (auto done = journal_->done(faultId); !done) {
    // The entry stays open: the next start reverts it again, which finds nothing left to undo.
    spdlog::error("fault {}: cannot mark it done in the undo journal: {}", faultId, done.error().message);
  }
  if (metrics_ != nullptr) {
    metrics_->journalOpen.with({}).set(static_cast<double>(journal_->openCount()));
  }
}

Agent::~Agent() {
  revertAll("agent shutting down", v1::FAULT_STATE_REVERTED, v1::FAULT_END_CAUSE_SHUTDOWN);
}

void Agent::report(const std::string& faultId, v1::FaultState state, std::string error, std::string detail,
                   v1::FaultEndCause cause) {
  v1::FaultReport r;
  r.set_fault_id(faultId);
  r.set_state(state);
  r.set_end_cause(cause);
  r.set_error(std::move(error));
  r.set_detail(std::move(detail));
  *r.mutable_at() = nowTimestamp();
  if (sink_) {
    sink_(r);
  }
}

void Agent::armTimer(const std::string& faultId, uint64_t generation, std::chrono::steady_clock::time_point at,
                     v1::FaultState endState, std::string why, v1::FaultEndCause cause) {
  boost::asio::post(expiry_, [this, alive = std::weak_ptr<bool>(alive_), faultId, generation, at, endState,
                              why = std::move(why), cause]() {
    if (alive.expired()) {
      return;
    }
    {
      std::lock_guard lock(mutex_);
      auto held = faults_.find(faultId);
      if (held == faults_.end() || held->second.generation != generation) {
        return;  // ended before its timer was armed
      }
    }
    auto& slot = timers_[faultId];
    slot.generation = generation;
    slot.timer = std::make_unique<boost::asio::steady_timer>(expiry_, at);
    slot.timer->async_wait(
        [this, alive, faultId, generation, endState, why, cause](const boost::system::error_code& ec) {
          if (ec || alive.expired()) {
            return;
          }
          {
            std::lock_guard lock(mutex_);
            auto held = faults_.find(faultId);
            if (held == faults_.end() || held->second.generation != generation) {
              return;
            }
          }
          finish(faultId, endState, why, cause);
        });
  });
}

void Agent::dropTimer(const std::string& faultId, uint64_t generation) {
  boost::asio::post(expiry_, [this, alive = std::weak_ptr<bool>(alive_), faultId, generation]() {
    if (alive.expired()) {
      return;
    }
    if (auto it = timers_.find(faultId); it != timers_.end() && it->second.generation == generation) {
      timers_.erase(it);  // cancels it
    }
  });
}

void Agent::inject(const v1::Inject& inject) {
  const std::string& id = inject.fault_id();
  if (auto bad = checkInjectBounds(inject, std::chrono::system_clock::now())) {
    spdlog::warn("fault {} refused: {}", printableId(id), *bad);
    report(printableId(id), v1::FAULT_STATE_FAILED, *bad, "");
    return;
  }
  if (auto valid = validateFaultSpec(inject.spec()); !valid) {
    report(id, v1::FAULT_STATE_FAILED,
           fmt::format("invalid {} spec: {}: {}", faultKindName(inject.spec()), valid.error().field,
                       valid.error().message),
           "");
    return;
  }
  const auto duration = toMicros(inject.duration());
  if (duration <= std::chrono::microseconds{0} || duration > kMaxFaultDuration) {
    report(id, v1::FAULT_STATE_FAILED,
           fmt::format("duration {} is out of range; accepted: more than 0 and at most {}", formatDuration(duration),
                       formatDuration(kMaxFaultDuration)),
           "");
    return;
  }
  if (auto allowed = policy_.check(inject.spec(), duration); !allowed) {
    spdlog::warn("fault {} ({}) refused: {}", id, faultKindName(inject.spec()), allowed.error().message);
    report(id, v1::FAULT_STATE_FAILED, allowed.error().message, "");
    return;
  }
  uint64_t generation = 0;
  std::string refused;
  {
    std::lock_guard lock(mutex_);
    if (closed_) {
      refused = "the agent is shutting down";
    } else if (faults_.count(id) != 0) {
      refused = "fault id is already held by this agent";
    } else {
      generation = ++nextGeneration_;
      Held& held = faults_[id];
      held.generation = generation;
      held.claim = Claim::Applying;
      held.kind = std::string(faultKindName(inject.spec()));
    }
  }
  if (!refused.empty()) {
    report(id, v1::FAULT_STATE_FAILED, refused, "");
    return;
  }
  bool journalled = false;
  PersistUndo persist;
  if (journal_ != nullptr) {
    persist = [&](const nlohmann::json& undo) -> tl::expected<void, FaultError> {
      std::lock_guard lock(journalMutex_);
      if (auto begun = journal_->begin(id, std::string(faultKindName(inject.spec())), undo); !begun) {
        return tl::unexpected(FaultError{begun.error().code, begun.error().message});
      }
      journalled = true;
      if (metrics_ != nullptr) {
        metrics_->journalOpen.with({}).set(static_cast<double>(journal_->openCount()));
      }
      return {};
    };
  }
  // The driver lock is held for the kernel calls only: the spec's paths are opened without
  // blocking (kernel/spec_files.h), so a revert on the expiry thread waits at most for them.
  tl::expected<std::unique_ptr<AppliedFault>, FaultError> applied;
  std::string detail;
  std::vector<v1::ProcessHit> hits;
  {
    std::lock_guard driverLock(driverMutex_);
    const auto began = std::chrono::steady_clock::now();
    applied = driver_.apply(inject.spec(), persist);
    if (metrics_ != nullptr) {
      const std::vector<std::string> kind{std::string(faultKindName(inject.spec()))};
      metrics_->applySeconds.with(kind).observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
      if (applied) {
        metrics_->faultsHeld.with(kind).add(1);
      } else {
        metrics_->applyFailures.with(kind).inc();
      }
    }
    if (applied) {
      detail = (*applied)->describe();
      hits = (*applied)->processHits();
    }
  }
  if (!applied && !applied.error().heldPids.empty()) {
    applied.error().message += heldByText(id, applied.error().heldPids);
  }
  if (!applied) {
    spdlog::warn("fault {} ({}) failed: {}", id, faultKindName(inject.spec()), applied.error().message);
    bool confirm = false;  // a revert was asked for while it was being applied
    {
      std::lock_guard lock(mutex_);
      auto it = faults_.find(id);
      confirm = it->second.pendingEnd && it->second.pendingEnd->state == v1::FAULT_STATE_REVERTED;
      faults_.erase(it);
    }
    if (journalled && applied.error().mayBeChanged) {
      // The next start reverts it from the record (a no-op when the root turns out unchanged).
      spdlog::critical("fault {}: apply failed and may have left a change; its undo journal entry stays open", id);
    } else if (journalled) {
      journalDone(id);  // a failed apply rolled back whatever it changed
    }
    report(id, v1::FAULT_STATE_FAILED, applied.error().message, "");
    if (confirm) {
      report(id, v1::FAULT_STATE_REVERTED, "", kNotHeld, v1::FAULT_END_CAUSE_NOT_HELD);
    }
    return;
  }
  if (journalled) {
    std::lock_guard lock(journalMutex_);
    if (auto marked = journal_->applied(id); !marked) {
      // The begin entry alone already makes recovery revert it; carry on.
      spdlog::error("fault {}: cannot mark it applied in the undo journal: {}", id, marked.error().message);
    }
  }
  v1::FaultReport appliedReport;
  appliedReport.set_fault_id(id);
  appliedReport.set_state(v1::FAULT_STATE_APPLIED);
  appliedReport.set_detail(detail);
  for (auto& hit : hits) {
    *appliedReport.add_processes() = std::move(hit);
  }
  *appliedReport.mutable_at() = nowTimestamp();
  {
    std::lock_guard lock(mutex_);
    Held& held = faults_.at(id);
    held.journalled = journalled;
    held.applied = std::move(*applied);
    held.appliedReport = appliedReport;
  }
  // The duration counts from now, as the controller's does (from the start time, when the hosts
  // apply): its deadline fires on the expiry thread, whatever this thread does next.
  armTimer(id, generation, std::chrono::steady_clock::now() + duration, v1::FAULT_STATE_EXPIRED, "duration elapsed",
           v1::FAULT_END_CAUSE_DURATION);
  spdlog::info("fault {} applied for {}: {}", id, formatDuration(duration), detail);
  if (sink_) {
    sink_(appliedReport);
  }
  // Still claimed until APPLIED is reported: an end asked for meanwhile (its deadline passed
  // during the apply, a lease expiry, a revert) is reported after it, and done now.
  release(id);
  armWatch();
}

std::string Agent::heldByText(const std::string& faultId, const std::vector<int32_t>& pids) const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> holders;
  for (const auto& [id, held] : faults_) {
    if (id == faultId || !held.applied) {
      continue;
    }
    std::vector<std::string> mine;
    for (const auto& hit : held.appliedReport.processes()) {
      const bool missed = hit.action().rfind("missed", 0) == 0;
      if (!missed && std::find(pids.begin(), pids.end(), hit.pid()) != pids.end()) {
        mine.push_back(fmt::format("pid {}", hit.pid()));
      }
    }
    if (!mine.empty()) {
      holders.push_back(fmt::format("fault {} holds {}", id, fmt::join(mine, ", ")));
    }
  }
  return holders.empty() ? std::string() : fmt::format(" ({})", fmt::join(holders, "; "));
}

void Agent::release(const std::string& faultId) {
  std::optional<End> end;
  {
    std::lock_guard lock(mutex_);
    auto it = faults_.find(faultId);
    if (it == faults_.end()) {
      return;
    }
    end = std::exchange(it->second.pendingEnd, std::nullopt);
    it->second.claim = end ? Claim::Reverting : Claim::None;
  }
  if (end) {
    revertClaimed(faultId, end->state, end->why, end->cause);
  }
}

void Agent::armWatch() {
  {
    std::lock_guard lock(mutex_);
    if (faults_.empty()) {
      return;
    }
  }
  if (watching_) {
    return;
  }
  watching_ = true;
  watchTimer_.expires_after(watchInterval_);
  watchTimer_.async_wait([this, alive = std::weak_ptr<bool>(alive_)](const boost::system::error_code& ec) {
    if (ec || alive.expired()) {
      return;
    }
    watching_ = false;
    watch();
    armWatch();
  });
}

void Agent::watch() {
  std::vector<std::pair<std::string, AppliedFault*>> checking;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, held] : faults_) {
      if (held.claim != Claim::None || held.revertFailing || !held.lostError.empty()) {
        continue;  // busy elsewhere, or already reported
      }
      held.claim = Claim::Watching;  // held.applied stays ours until release()
      checking.emplace_back(id, held.applied.get());
    }
  }
  std::vector<std::tuple<std::string, std::string, std::string>> lost;  // fault id, error, detail
  for (const auto& [id, applied] : checking) {
    // One fault at a time: a revert on the expiry thread waits for one kernel read at most.
    std::lock_guard driverLock(driverMutex_);
    if (auto gone = applied->lost()) {
      lost.emplace_back(id, std::move(*gone), applied->describe());
    }
  }
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, error, detail] : lost) {
      faults_.at(id).lostError = error;
    }
  }
  // Reported before the claims go: a sink that reverts (or an expiry meanwhile) then ends the
  // fault after its loss is reported, never before.
  for (auto& [id, error, detail] : lost) {
    spdlog::error("fault {}: {}; held until its revert", id, error);
    report(id, v1::FAULT_STATE_FAILED, std::move(error), std::move(detail));
  }
  for (const auto& [id, applied] : checking) {
    release(id);
  }
}

void Agent::finish(const std::string& faultId, v1::FaultState endState, std::string_view why, v1::FaultEndCause cause) {
  {
    std::unique_lock lock(mutex_);
    auto it = faults_.find(faultId);
    if (it == faults_.end()) {
      lock.unlock();
      if (endState == v1::FAULT_STATE_REVERTED) {
        // Reverting is idempotent: confirm, so the controller never waits on a fault gone already.
        report(faultId, v1::FAULT_STATE_REVERTED, "", kNotHeld, v1::FAULT_END_CAUSE_NOT_HELD);
      }
      return;
    }
    Held& held = it->second;
    switch (held.claim) {
      case Claim::None:
        held.claim = Claim::Reverting;
        break;
      case Claim::Reverting:
        // Being reverted by another thread: its report ends the fault; a revert asked for now is
        // confirmed after, as if it had come after.
        held.confirmRevert = held.confirmRevert || endState == v1::FAULT_STATE_REVERTED;
        return;
      case Claim::Applying:
      case Claim::Watching:
        // The claim's holder reverts it as soon as it lets go. The first end asked for decides
        // the report; a later revert is confirmed after it.
        if (!held.pendingEnd) {
          held.pendingEnd = End{endState, std::string(why), cause};
        } else if (endState == v1::FAULT_STATE_REVERTED && held.pendingEnd->state != endState) {
          held.confirmRevert = true;
        }
        return;
    }
  }
  revertClaimed(faultId, endState, std::string(why), cause);
}

void Agent::revertClaimed(const std::string& faultId, v1::FaultState endState, const std::string& why,
                          v1::FaultEndCause cause) {
  AppliedFault* applied = nullptr;
  std::string kind;
  {
    std::lock_guard lock(mutex_);
    const Held& held = faults_.at(faultId);
    applied = held.applied.get();  // the claim keeps it in place
    kind = held.kind;
  }
  tl::expected<void, FaultError> reverted;
  std::string detail;
  std::vector<v1::ProcessHit> hits;
  {
    std::lock_guard driverLock(driverMutex_);
    const auto began = std::chrono::steady_clock::now();
    reverted = applied->revert();
    if (metrics_ != nullptr) {
      metrics_->revertSeconds.with({kind}).observe(
          std::chrono::duration<double>(std::chrono::steady_clock::now() - began).count());
      if (!reverted) {
        metrics_->revertFailures.with({kind}).inc();
      }
      if (reverted || reverted.error().permanent) {
        metrics_->faultsHeld.with({kind}).add(-1);  // dropped: held no more
      }
    }
    detail = reverted ? applied->describeRevert(why) : applied->describe();
    hits = applied->processHits();
  }

  std::unique_lock lock(mutex_);
  auto it = faults_.find(faultId);
  Held& held = it->second;
  if (!reverted && !reverted.error().permanent) {
    spdlog::error("fault {}: revert ({}) failed, retrying every second: {}", faultId, why, reverted.error().message);
    // Report the first failure of a series only; the fault stays held and is retried.
    held.revertError = "revert failed (retrying every second): " + reverted.error().message;
    const bool first = !held.revertFailing;
    held.revertFailing = true;
    held.claim = Claim::None;
    held.pendingEnd.reset();
    held.confirmRevert = false;
    const std::string error = held.revertError;
    const uint64_t generation = held.generation;
    lock.unlock();
    if (first) {
      report(faultId, v1::FAULT_STATE_FAILED, error, detail);
    }
    // Keep it held, and retry in a second: a fault is never dropped while it may still be active.
    armTimer(faultId, generation, std::chrono::steady_clock::now() + std::chrono::seconds{1}, endState, why, cause);
    return;
  }
  const bool journalled = held.journalled;
  lock.unlock();

  if (journalled) {
    journalDone(faultId);  // done, or (permanent failure) retrying can never succeed, at start either
  }
  v1::FaultReport r;
  r.set_fault_id(faultId);
  if (!reverted) {
    spdlog::error("fault {}: revert ({}) cannot succeed, not retried: {}", faultId, why, reverted.error().message);
    r.set_state(v1::FAULT_STATE_FAILED);
    r.set_error_code(v1::FAULT_ERROR_PERMANENT);
    r.set_error("not reverted: " + reverted.error().message);
    r.set_detail(detail);
  } else {
    spdlog::info("fault {} reverted ({})", faultId, why);
    r.set_state(endState);
    r.set_end_cause(cause);
    r.set_detail(detail);
    for (auto& hit : hits) {
      *r.add_processes() = std::move(hit);
    }
  }
  *r.mutable_at() = nowTimestamp();
  // Reported while still claimed: a revert asked for meanwhile is confirmed after this report,
  // never before it.
  if (sink_) {
    sink_(r);
  }
  lock.lock();
  it = faults_.find(faultId);
  const bool confirm = it->second.confirmRevert && !(reverted && endState == v1::FAULT_STATE_REVERTED);
  const uint64_t generation = it->second.generation;
  std::unique_ptr<AppliedFault> gone = std::move(it->second.applied);
  faults_.erase(it);
  const bool empty = faults_.empty();
  lock.unlock();
  {
    std::lock_guard driverLock(driverMutex_);  // a fault's destructor is a driver call too
    gone.reset();
  }
  dropTimer(faultId, generation);
  if (empty) {
    // Nothing left to watch; io_context::run() may return.
    boost::asio::post(io_, [this, alive = std::weak_ptr<bool>(alive_)]() {
      if (alive.expired() || activeCount() > 0) {
        return;
      }
      watchTimer_.cancel();
      watching_ = false;
    });
  }
  if (confirm) {
    report(faultId, v1::FAULT_STATE_REVERTED, "", kNotHeld, v1::FAULT_END_CAUSE_NOT_HELD);
  }
}

void Agent::revert(const std::string& faultId) {
  finish(faultId, v1::FAULT_STATE_REVERTED, "revert requested", v1::FAULT_END_CAUSE_REVERT);
}

void Agent::revertAll(std::string_view reason, v1::FaultState endState, v1::FaultEndCause cause) {
  std::vector<std::string> ids;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [id, held] : faults_) {
      ids.push_back(id);
    }
  }
  for (const auto& id : ids) {
    finish(id, endState, reason, cause);
  }
}

void Agent::close(std::string_view reason) {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  revertAll(reason, v1::FAULT_STATE_REVERTED, v1::FAULT_END_CAUSE_SHUTDOWN);
}

size_t Agent::activeCount() const {
  std::lock_guard lock(mutex_);
  return faults_.size();
}

std::vector<v1::FaultReport> Agent::activeFaults() const {
  std::lock_guard lock(mutex_);
  std::vector<v1::FaultReport> out;
  for (const auto& [id, held] : faults_) {
    if (!held.applied) {
      continue;  // still being applied
    }
    out.push_back(held.appliedReport);
    if (held.revertFailing) {
      // Still held because its revert keeps failing: say so, so a controller that learns of the
      // fault from a Hello lists it as a failed revert, not as a healthy fault.
      out.back().set_state(v1::FAULT_STATE_FAILED);
      out.back().set_error(held.revertError);
    }
  }
  return out;
}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> FaultRouter::apply(const v1::FaultSpec& spec,
                                                                           const PersistUndo& persist) {
  auto it = drivers_.find(spec.kind_case());
  if (it == drivers_.end()) {
    return tl::unexpected(FaultError{std::make_error_code(std::errc::function_not_supported),
                                     fmt::format("this agent has no driver for '{}'", faultKindName(spec))});
  }
  return it->second->apply(spec, persist);
}

struct SystemDrivers::Impl {
  Impl(ProcessRules protect, std::vector<Endpoint> exempt, const NetworkDriverChoice& choice)
      : cgroups(openCgroups()),
        kill(*killTable, protect),
        pause(*pauseTable, cgroups.get(), protect, std::random_device{}(), cgroupsMissing),
        stress(cgroups.get()),
        squeeze(cgroups.get()) {
    if (choice.userspace) {
      userspace = std::make_unique<NfqueueFaultDriver>(choice.steering, kernel::openPacketSteering, PacketQueue::open);
      userspace->setExempt(exempt);
      userspace->setTargetResolver(&targets);
      // a stopped agent must not blackhole what its queues steer
      userspace->enableWatchdog(queueWatchdogStarter());
    }
    network.setExempt(std::move(exempt));
    network.setTargetResolver(&targets);
  }
  // Without a cgroup v2 hierarchy: nullptr, and no warning here (the runtime's kernel probe logs it
  // once, with the other capabilities).
  std::unique_ptr<kernel::CgroupTree> openCgroups() {
    auto tree = kernel::openCgroupTree();
    if (!tree) {
      cgroupsMissing = kernel::cgroupTreeMissingWhy(tree.error());
      return nullptr;
    }
    return std::move(*tree);
  }
  std::string cgroupsMissing;  // why there is no cgroup tree (set by openCgroups())
  // One table per driver: a kill loop's thread reads its own while the io thread pauses.
  std::unique_ptr<kernel::ProcessTable> killTable = kernel::openProcessTable();
  std::unique_ptr<kernel::ProcessTable> pauseTable = kernel::openProcessTable();
  std::unique_ptr<kernel::CgroupTree> cgroups;
  // Its own table too: a network fault's netns_process selector is read on the io thread.
  std::unique_ptr<kernel::ProcessTable> netnsTable = kernel::openProcessTable();
  NetworkTargetResolver targets{netnsTable.get()};
  NetworkFaultDriver network{[](const std::string& netns) { return kernel::openQdiscTable(netns); }};
  std::unique_ptr<NfqueueFaultDriver> userspace;  // netem's kinds, when chosen
  ProcessKillDriver kill;
  ProcessPauseDriver pause;
  StressDriver stress;
  CgroupSqueezeDriver squeeze;
  FaultRouter router;
};

SystemDrivers::SystemDrivers(ProcessRules protect, std::vector<Endpoint> exempt, NetworkDriverChoice network)
    : impl_(std::make_unique<Impl>(std::move(protect), std::move(exempt), network)) {
  FaultDriver& netem = impl_->userspace ? static_cast<FaultDriver&>(*impl_->userspace) : impl_->network;
  impl_->router.route(v1::FaultSpec::kNetworkDelay, netem);
  impl_->router.route(v1::FaultSpec::kNetworkLoss, netem);
  impl_->router.route(v1::FaultSpec::kNetworkBandwidth, impl_->network);
  impl_->router.route(v1::FaultSpec::kNetworkDuplicate, netem);
  impl_->router.route(v1::FaultSpec::kNetworkCorrupt, netem);
  impl_->router.route(v1::FaultSpec::kNetworkReorder, netem);
  impl_->router.route(v1::FaultSpec::kNetworkPartition, netem);
  impl_->router.route(v1::FaultSpec::kProcessKill, impl_->kill);
  impl_->router.route(v1::FaultSpec::kProcessPause, impl_->pause);
  impl_->router.route(v1::FaultSpec::kStressCpu, impl_->stress);
  impl_->router.route(v1::FaultSpec::kStressMemory, impl_->stress);
  impl_->router.route(v1::FaultSpec::kCgroupSqueeze, impl_->squeeze);
}

SystemDrivers::~SystemDrivers() = default;

FaultDriver& SystemDrivers::router() {
  return impl_->router;
}

std::shared_ptr<const QueueTally> SystemDrivers::queueTally() const {
  return impl_->userspace ? impl_->userspace->queueTally() : nullptr;
}

}  // namespace faultline::agent
