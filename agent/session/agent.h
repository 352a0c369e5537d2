// The agent's fault registry: applies faults through the drivers, holds each for its duration on
// the agent's own timer, and reverts on command, on expiry and on shutdown.
//
// Threading: every member function must be called on the io_context's thread (post to it from
// elsewhere); reports are delivered on that thread too. Driver calls block that thread for the
// kernel round trips (microseconds to milliseconds).
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
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
  // to be still in place (watch()); > 0.
  Agent(boost::asio::io_context& io, FaultDriver& driver, ReportSink sink, UndoJournal* journal = nullptr,
        Policy policy = {}, std::chrono::milliseconds watchInterval = kWatchInterval);
  ~Agent();  // reverts every fault still held
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Validates, checks the policy, applies and starts the duration timer. A fault id already held
  // is refused. Reports APPLIED, or FAILED with the reason (nothing is left changed then); a
  // policy refusal names the rule and never reaches the driver.
  void inject(const v1::Inject& inject);
  // Reverts one fault; reports REVERTED, or FAILED (the fault stays held and the revert is
  // retried every second). Idempotent: an id not held (already reverted or expired, or never
  // applied) is confirmed as REVERTED with nothing changed.
  void revert(const std::string& faultId);
  // Reverts every fault held; used on RevertAll, lease expiry and shutdown. endState: what the
  // reports say once reverted: REVERTED when the controller or the host asked for it, EXPIRED
  // when the agent ended the faults on its own (lease expiry), so the controller never records
  // an end it did not command as a command.
  void revertAll(std::string_view reason, v1::FaultState endState = v1::FAULT_STATE_REVERTED);
  // Checks every fault held (AppliedFault::lost(); one kernel read each, on this thread): a fault
  // no longer in place (someone replaced or deleted what it installed) is reported FAILED once,
  // error "<fault>: the fault is no longer in place: <what is there now>", detail describe(). The
  // fault stays held: its revert at its end (or on command) still runs and puts back what it can.
  // Faults whose revert is failing are not checked. Runs every watchInterval while any fault is
  // held; public so tests can run one check.
  void watch();
  // Reports of the faults held now (for Hello on reconnect): APPLIED (also one watch() found no
  // longer in place: it is still held), or FAILED with the reason for one whose revert keeps failing.
  [[nodiscard]] std::vector<v1::FaultReport> activeFaults() const;
  [[nodiscard]] size_t activeCount() const { return faults_.size(); }

 private:
  struct Held {
    std::unique_ptr<AppliedFault> applied;
    std::unique_ptr<boost::asio::steady_timer> timer;
    v1::FaultReport appliedReport;
    bool revertFailing = false;  // a revert failed and is being retried
    std::string revertError;     // the last failure's reason while revertFailing
    bool journalled = false;     // has an open entry in the journal
    std::string lostError;       // set once watch() found it no longer in place (reported once)
  };
  void finish(const std::string& faultId, v1::FaultState endState, std::string_view why);
  void report(const std::string& faultId, v1::FaultState state, std::string error, std::string detail);
  void journalDone(const std::string& faultId);
  void armWatch();

  // Expires with the agent: a watch handler that runs after the agent is gone does nothing.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

  boost::asio::io_context& io_;
  FaultDriver& driver_;
  ReportSink sink_;
  UndoJournal* journal_;
  Policy policy_;
  std::map<std::string, Held> faults_;
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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace faultline::agent
