#include "agent/session/agent.h"

#include <spdlog/spdlog.h>

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

Agent::Agent(boost::asio::io_context& io, FaultDriver& driver, ReportSink sink, UndoJournal* journal, Policy policy,
             std::chrono::milliseconds watchInterval)
    : io_(io),
      driver_(driver),
      sink_(std::move(sink)),
      journal_(journal),
      policy_(std::move(policy)),
      watchInterval_(watchInterval),
      watchTimer_(io) {}

void Agent::journalDone(const std::string& faultId) {
  if (journal_ == nullptr) {
    return;
  }
  if (auto done = journal_->done(faultId); !done) {
    // The entry stays open: the next start reverts it again, which finds nothing left to undo.
    spdlog::error("fault {}: cannot mark it done in the undo journal: {}", faultId, done.error().message);
  }
}

Agent::~Agent() {
  if (!faults_.empty()) {
    revertAll("agent shutting down");
  }
}

void Agent::report(const std::string& faultId, v1::FaultState state, std::string error, std::string detail) {
  v1::FaultReport r;
  r.set_fault_id(faultId);
  r.set_state(state);
  r.set_error(std::move(error));
  r.set_detail(std::move(detail));
  *r.mutable_at() = nowTimestamp();
  if (sink_) {
    sink_(r);
  }
}

void Agent::inject(const v1::Inject& inject) {
  const std::string& id = inject.fault_id();
  if (faults_.count(id) != 0) {
    report(id, v1::FAULT_STATE_FAILED, "fault id is already held by this agent", "");
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
  bool journalled = false;
  PersistUndo persist;
  if (journal_ != nullptr) {
    persist = [&](const nlohmann::json& undo) -> tl::expected<void, FaultError> {
      if (auto begun = journal_->begin(id, std::string(faultKindName(inject.spec())), undo); !begun) {
        return tl::unexpected(FaultError{begun.error().code, begun.error().message});
      }
      journalled = true;
      return {};
    };
  }
  auto applied = driver_.apply(inject.spec(), persist);
  if (!applied) {
    spdlog::warn("fault {} ({}) failed: {}", id, faultKindName(inject.spec()), applied.error().message);
    if (journalled && applied.error().mayBeChanged) {
      // The next start reverts it from the record (a no-op when the root turns out unchanged).
      spdlog::critical("fault {}: apply failed and may have left a change; its undo journal entry stays open", id);
    } else if (journalled) {
      journalDone(id);  // a failed apply rolled back whatever it changed
    }
    report(id, v1::FAULT_STATE_FAILED, applied.error().message, "");
    return;
  }
  if (journalled) {
    if (auto marked = journal_->applied(id); !marked) {
      // The begin entry alone already makes recovery revert it; carry on.
      spdlog::error("fault {}: cannot mark it applied in the undo journal: {}", id, marked.error().message);
    }
  }
  Held held;
  held.journalled = journalled;
  held.applied = std::move(*applied);
  held.timer = std::make_unique<boost::asio::steady_timer>(io_, duration);
  held.timer->async_wait([this, id](const boost::system::error_code& ec) {
    if (!ec) {
      finish(id, v1::FAULT_STATE_EXPIRED, "duration elapsed");
    }
  });
  const std::string detail = held.applied->describe();
  held.appliedReport.set_fault_id(id);
  held.appliedReport.set_state(v1::FAULT_STATE_APPLIED);
  held.appliedReport.set_detail(detail);
  for (auto& hit : held.applied->processHits()) {
    *held.appliedReport.add_processes() = std::move(hit);
  }
  *held.appliedReport.mutable_at() = nowTimestamp();
  faults_.emplace(id, std::move(held));
  spdlog::info("fault {} applied for {}: {}", id, formatDuration(duration), detail);
  if (sink_) {
    sink_(faults_.at(id).appliedReport);
  }
  armWatch();
}

void Agent::armWatch() {
  if (watching_ || faults_.empty()) {
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
  std::vector<std::pair<std::string, std::string>> lost;  // fault id, error
  for (auto& [id, held] : faults_) {
    if (held.revertFailing || !held.lostError.empty()) {
      continue;  // already reported
    }
    if (auto gone = held.applied->lost()) {
      held.lostError = *gone;
      lost.emplace_back(id, std::move(*gone));
    }
  }
  // Reported after the loop: a sink may act on the agent (revert) before it returns.
  for (auto& [id, error] : lost) {
    auto it = faults_.find(id);
    if (it == faults_.end()) {
      continue;
    }
    spdlog::error("fault {}: {}; held until its revert", id, error);
    report(id, v1::FAULT_STATE_FAILED, std::move(error), it->second.applied->describe());
  }
}

void Agent::finish(const std::string& faultId, v1::FaultState endState, std::string_view why) {
  auto it = faults_.find(faultId);
  if (it == faults_.end()) {
    if (endState == v1::FAULT_STATE_REVERTED) {
      // Reverting is idempotent: confirm, so the controller never waits on a fault gone already.
      report(faultId, v1::FAULT_STATE_REVERTED, "", "not held (already reverted, expired or never applied)");
    }
    return;
  }
  auto reverted = it->second.applied->revert();
  if (!reverted && reverted.error().permanent) {
    spdlog::error("fault {}: revert ({}) cannot succeed, not retried: {}", faultId, why, reverted.error().message);
    it->second.timer->cancel();
    const std::string detail = it->second.applied->describe();
    const bool journalled = it->second.journalled;
    faults_.erase(it);
    if (faults_.empty() && watching_) {
      watchTimer_.cancel();
      watching_ = false;
    }
    if (journalled) {
      journalDone(faultId);  // retrying can never succeed, at start either
    }
    v1::FaultReport r;
    r.set_fault_id(faultId);
    r.set_state(v1::FAULT_STATE_FAILED);
    r.set_error_code(v1::FAULT_ERROR_PERMANENT);
    r.set_error("not reverted: " + reverted.error().message);
    r.set_detail(detail);
    *r.mutable_at() = nowTimestamp();
    if (sink_) {
      sink_(r);
    }
    return;
  }
  if (!reverted) {
    spdlog::error("fault {}: revert ({}) failed, retrying every second: {}", faultId, why, reverted.error().message);
    // Report the first failure of a series only; the fault stays held and is retried.
    it->second.revertError = "revert failed (retrying every second): " + reverted.error().message;
    if (!it->second.revertFailing) {
      report(faultId, v1::FAULT_STATE_FAILED, it->second.revertError, it->second.applied->describe());
    }
    it->second.revertFailing = true;
    // Keep it held, and retry in a second: a fault is never dropped while it may still be active.
    it->second.timer->expires_after(std::chrono::seconds{1});
    it->second.timer->async_wait([this, faultId, endState, w = std::string(why)](const boost::system::error_code& ec) {
      if (!ec) {
        finish(faultId, endState, w);
      }
    });
    return;
  }
  it->second.timer->cancel();
  const std::string detail = it->second.applied->describeRevert(why);
  auto hits = it->second.applied->processHits();
  const bool journalled = it->second.journalled;
  faults_.erase(it);
  if (faults_.empty() && watching_) {
    watchTimer_.cancel();  // nothing left to watch; io_context::run() may return
    watching_ = false;
  }
  if (journalled) {
    journalDone(faultId);
  }
  spdlog::info("fault {} reverted ({})", faultId, why);
  v1::FaultReport r;
  r.set_fault_id(faultId);
  r.set_state(endState);
  r.set_detail(detail);
  for (auto& hit : hits) {
    *r.add_processes() = std::move(hit);
  }
  *r.mutable_at() = nowTimestamp();
  if (sink_) {
    sink_(r);
  }
}

void Agent::revert(const std::string& faultId) {
  finish(faultId, v1::FAULT_STATE_REVERTED, "revert requested");
}

void Agent::revertAll(std::string_view reason, v1::FaultState endState) {
  std::vector<std::string> ids;
  for (const auto& [id, held] : faults_) {
    ids.push_back(id);
  }
  for (const auto& id : ids) {
    finish(id, endState, reason);
  }
}

std::vector<v1::FaultReport> Agent::activeFaults() const {
  std::vector<v1::FaultReport> out;
  for (const auto& [id, held] : faults_) {
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
        pause(*pauseTable, cgroups.get(), protect),
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
  static std::unique_ptr<kernel::CgroupTree> openCgroups() {
    auto tree = kernel::openCgroupTree();
    return tree ? std::move(*tree) : nullptr;
  }
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

}  // namespace faultline::agent
