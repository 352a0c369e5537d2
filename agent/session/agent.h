// The agent's fault registry: applies faults through the drivers, holds each for its duration on
// the agent's own timer, and reverts on command, on expiry and on shutdown.
//
// Threading. Two io_contexts, each run by one thread:
//   - the io thread (io) handles input: inject() (bounds, validation, policy, then the driver's
//     apply()), revert() and revertAll() from the controller, and the watch (AppliedFault::lost())
//     every watchInterval;
//   - the expiry thread (expiry) owns the deadlines: each fault's duration and the retry of a
//     failing revert fire there, and the reverts they trigger run there (the session's lease and
//     the agent's signals too, session.h, runtime.cpp). It never waits for the io thread (it only
//     posts to it), so a fault ends at its deadline whatever the io thread is busy with.
// Locks, and what each guards (taken in this order; none is held across a report to the sink):
//   - driverMutex_ serialises every call into the driver and the faults it applied (apply(),
//     revert(), lost(), describe(), describeRevert(), processHits(), their destructors): drivers,
//     CgroupTree and ProcessTable are not thread-safe. It is held for those calls only. Nothing
//     under it blocks on input: the spec's paths are opened non-blocking and read with a bound
//     (kernel/spec_files.h), the kernel calls are bounded; what else the io thread does (reading
//     the controller's messages, validation, the policy, reports) runs without it. A revert thus
//     waits at most for one driver call of another fault, never for an input;
//   - journalMutex_ guards the journal (taken inside driverMutex_ by apply()'s persist);
//   - mutex_ guards the registry (faults_, nextGeneration_, closed_): bookkeeping only.
// A thread that reverts, applies or watches a fault first claims it under mutex_, calls the
// driver, then gives the claim back. An end asked for while another thread holds the claim (an
// expiry, a lease expiry or close() while the fault is still being applied or watched) is done
// by that thread as soon as it gives the claim back: a fault closed during its apply is reverted
// as soon as the apply returns, on the io thread, and reported APPLIED then REVERTED. A fault is
// reverted once: a revert from the controller that arrives while an expiry is reverting it is
// confirmed after (REVERTED, "not held"), as if it had arrived after.
// inject(), revert(), revertAll(), close(), activeFaults() and activeCount() may be called from
// any thread; watch() on the io thread. The sink is called on whichever thread made the change,
// with no lock held, and may call back into the agent.
// With one io_context for both (expiry = nullptr; unit tests), everything runs on its thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "agent/faults/fault.h"
#include "agent/faults/network/traffic_match.h"
#include "agent/kernel/packet_steering.h"
#include "agent/safety/journal.h"
#include "agent/safety/policy.h"
#include "agent/session/agent_metrics.h"
#include "agent/session/inject_bounds.h"
#include "faultline/v1/agent_gateway.pb.h"

namespace faultline::agent {

// How often the agent checks that each fault it holds is still in place (AppliedFault::lost()).
inline constexpr std::chrono::milliseconds kWatchInterval{1000};

class Agent {
 public:
  using ReportSink = std::function<void(const v1::FaultReport&)>;

  // driver must outlive the agent; sink receives every state change (applied, failed, reverted,
  // expired). journal (optional, must outlive the agent) gets begin before the kernel is
  // touched, applied after, and done after a verified revert, a permanent revert failure, or a
  // failed apply that rolled back cleanly (one that may have left a change stays open for the
  // next start's recovery); faults whose driver records no undo (process.kill) are not journalled.
  // policy: checked on every inject before the driver is called (the default is the built-in
  // policy: maxDuration 1h). watchInterval: how often, while any fault is held, each is checked
  // to be still in place (watch()); > 0. expiry: the io_context of the deadlines and the reverts
  // they trigger (see Threading above), run by a thread that never handles input; nullptr: io.
  // Calls into the driver never overlap (driverMutex_, see Threading above). metrics (optional,
  // must outlive the agent): faults held, apply and revert durations and failures, journal entries open.
  Agent(boost::asio::io_context& io, FaultDriver& driver, ReportSink sink, UndoJournal* journal = nullptr,
        Policy policy = {}, std::chrono::milliseconds watchInterval = kWatchInterval,
        boost::asio::io_context* expiry = nullptr, AgentMetrics* metrics = nullptr);
  // Reverts every fault still held, on the calling thread. Destroy the agent once neither
  // io_context runs (their threads joined).
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Checks the bounds (checkInjectBounds()), validates, checks the policy and applies. A fault id
  // already held (or still being applied) is refused, and so is every inject after close().
  // The duration counts from the moment the apply returns (its deadline is then armed on the
  // expiry thread); an end asked for during the apply is done as soon as it returns. Reports
  // APPLIED, or FAILED with the reason (nothing is left changed then); a policy refusal names the
  // rule and never reaches the driver. Blocks for the driver's apply().
  void inject(const v1::Inject& inject);
  // Reverts one fault; reports REVERTED, or FAILED (the fault stays held and the revert is
  // retried every second). Idempotent: an id not held (already reverted or expired, or never
  // applied) is confirmed as REVERTED with nothing changed.
  void revert(const std::string& faultId);
  // Reverts every fault held; used on RevertAll, lease expiry and shutdown. endState: what the
  // reports say once reverted: REVERTED when the controller or the host asked for it, EXPIRED
  // when the agent ended the faults on its own (lease expiry), so the controller never records
  // an end it did not command as a command. cause: the reports' end_cause (RevertAll, lease,
  // shutdown).
  // Blocks for the reverts it does itself; a fault another thread holds a claim on is reverted by
  // that thread when it lets go (e.g. one still being applied).
  void revertAll(std::string_view reason, v1::FaultState endState = v1::FAULT_STATE_REVERTED,
                 v1::FaultEndCause cause = v1::FAULT_END_CAUSE_REVERT_ALL);
  // Shutdown: refuses every later inject, then revertAll(reason).
  void close(std::string_view reason);
  // Checks every fault held (AppliedFault::lost(); one kernel read each, on this thread; a fault
  // being checked is claimed, so an expiry meanwhile reverts it right after its check): a fault
  // no longer in place (someone replaced or deleted what it installed) is reported FAILED once,
  // error "<fault>: the fault is no longer in place: <what is there now>", detail describe(). The
  // fault stays held: its revert at its end (or on command) still runs and puts back what it can.
  // Faults whose revert is failing are not checked. Runs every watchInterval while any fault is
  // held; public so tests can run one check.
  void watch();
  // Reports of the faults held now (for Hello on reconnect): APPLIED (also one watch() found no
  // longer in place: it is still held), or FAILED with the reason for one whose revert keeps failing.
  // Faults still being applied are not listed (their APPLIED report follows).
  [[nodiscard]] std::vector<v1::FaultReport> activeFaults() const;
  // Faults held, including those still being applied.
  [[nodiscard]] size_t activeCount() const;

 private:
  // Which thread has claimed a fault (see Threading above).
  enum class Claim { None, Applying, Watching, Reverting };
  struct End {
    v1::FaultState state;
    std::string why;
    v1::FaultEndCause cause;
  };
  struct Held {
    std::unique_ptr<AppliedFault> applied;  // null while Applying
    uint64_t generation = 0;                // tells this fault's timers from a later one's of the same id
    Claim claim = Claim::None;
    std::optional<End> pendingEnd;  // asked for while another claim was held; done when it is released
    bool confirmRevert = false;     // a revert asked for while Reverting: confirmed after
    v1::FaultReport appliedReport;
    bool revertFailing = false;  // a revert failed and is being retried
    std::string revertError;     // the last failure's reason while revertFailing
    bool journalled = false;     // has an open entry in the journal
    std::string lostError;       // set once watch() found it no longer in place (reported once)
    std::string kind;            // faultKindName() of its spec (the metrics' label)
  };
  void finish(const std::string& faultId, v1::FaultState endState, std::string_view why, v1::FaultEndCause cause);
  // " (fault ID holds pid 42; ...)": the faults other than faultId whose applied report lists one
  // of pids as acted on; empty when none. Takes mutex_.
  [[nodiscard]] std::string heldByText(const std::string& faultId, const std::vector<int32_t>& pids) const;
  // Reverts a fault this thread has claimed (Claim::Reverting), then reports. Called without mutex_.
  void revertClaimed(const std::string& faultId, v1::FaultState endState, const std::string& why,
                     v1::FaultEndCause cause);
  // Gives back this thread's claim; reverts at once when an end was asked for meanwhile.
  void release(const std::string& faultId);
  void report(const std::string& faultId, v1::FaultState state, std::string error, std::string detail,
              v1::FaultEndCause cause = v1::FAULT_END_CAUSE_UNSPECIFIED);
  void journalDone(const std::string& faultId);
  void armWatch();
  // On the expiry thread (posted): (re)arms the fault's timer to call finish() at `at`, or drops it.
  void armTimer(const std::string& faultId, uint64_t generation, std::chrono::steady_clock::time_point at,
                v1::FaultState endState, std::string why, v1::FaultEndCause cause);
  void dropTimer(const std::string& faultId, uint64_t generation);

  // Expires with the agent: a handler that runs after the agent is gone does nothing.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  boost::asio::io_context& io_;
  boost::asio::io_context& expiry_;
  FaultDriver& driver_;
  ReportSink sink_;
  UndoJournal* journal_;
  AgentMetrics* metrics_;  // may be null
  // Serialises every call into driver_ and its AppliedFaults (see Threading above).
  std::mutex driverMutex_;
  std::mutex journalMutex_;  // journal_ is not thread-safe
  Policy policy_;
  mutable std::mutex mutex_;  // guards faults_, nextGeneration_, closed_
  std::map<std::string, Held> faults_;
  uint64_t nextGeneration_ = 0;
  bool closed_ = false;
  // Expiry thread only: each fault's timer (its deadline, then its revert retries).
  struct Timer {
    uint64_t generation;
    std::unique_ptr<boost::asio::steady_timer> timer;
  };
  std::map<std::string, Timer> timers_;
  // Io thread only.
  std::chrono::milliseconds watchInterval_;
  boost::asio::steady_timer watchTimer_;
  bool watching_ = false;  // watchTimer_ is armed
};

// A FaultDriver that hands each spec to the driver registered for its kind.
class FaultRouter final : public FaultDriver {
 public:
  // driver must outlive the router.
  void route(v1::FaultSpec::KindCase kind, FaultDriver& driver) { drivers_[kind] = &driver; }
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

 private:
  std::map<v1::FaultSpec::KindCase, FaultDriver*> drivers_;
};

// Which driver does netem's kinds (network.delay, loss, duplicate, corrupt, reorder, partition).
struct NetworkDriverChoice {
  bool userspace = false;            // the nfqueue driver (nfqueue_driver.h); else tc's netem
  kernel::SteeringSupport steering;  // what the nfqueue driver may use (probeSteeringSupport())
};

// The drivers of this host's kernel: rtnetlink qdiscs, netfilter rules and queues, /proc and
// pidfd signals.
class SystemDrivers {
 public:
  // protect: the policy's process rules (Policy::processRules(): protected names, limits).
  // exempt: the controller's addresses and port, whose traffic network faults in the agent's own
  // namespace never touch.
  // network: tc (default) or the userspace driver for netem's kinds; network.bandwidth is tc's.
  explicit SystemDrivers(ProcessRules protect = {}, std::vector<Endpoint> exempt = {},
                         NetworkDriverChoice network = {});
  ~SystemDrivers();
  [[nodiscard]] FaultDriver& router();
  // The userspace driver's queue counts; null when netem's kinds go to tc.
  [[nodiscard]] std::shared_ptr<const QueueTally> queueTally() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace faultline::agent
