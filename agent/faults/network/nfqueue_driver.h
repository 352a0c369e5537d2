// The userspace network driver, for kernels without sch_netem (RHEL-family hosts without
// kernel-modules-extra, minimal cloud and microVM kernels): network.delay, network.loss,
// network.duplicate, network.corrupt, network.reorder and network.partition done with netfilter
// rules and an NFQUEUE the agent serves. See docs/experiments.md, "Network drivers".
//
// apply(): picks the rules' backend (kernel::chooseBackend(): nftables where it has nft_queue,
// else xtables with the NFQUEUE target; a drop-only fault prefers nftables) and a free slot in the
// namespace, journals the undo record, binds the slot's queue (agent/faults/network/packet_queue.h) when the
// fault needs one, then installs the rules (agent/kernel/packet_steering.h) that steer the
// interface's matched packets to it:
// Every fault goes through the queue, whose model does what netem would (packet_queue.h); a
// partition is its 100 % loss. No pure drop rule: one would keep dropping after the agent died.
// The rules bypass the queue when no program is bound to it: when the agent stops or dies,
// traffic flows unharmed. In the agent's own namespace the controller's channel is exempt.
// Refused before any change, with words naming what is accepted:
//   ENODEV   the interface does not exist in the namespace (checked when a target resolver is set).
//   EINVAL   a spec validateFaultSpec() refuses; a parameter the userspace path does not do
//            (netem's rate_bps); network.duplicate with direction ingress or both (a copy of a
//            received packet cannot be injected into the receive path from userspace).
//   EEXIST   the interface already carries a faultline fault of this driver in that direction: of
//            this agent, or of another (another state directory, a run --local) or a leftover of one
//            that died, read from the namespace's faultline tables/chains; the words name them and
//            whether their queue is served (a live agent) or not (a leftover: revert-all removes it).
//   ENOTSUP  network.bandwidth (the tc driver does it); the kernel lacks what the fault needs
//            (no nfnetlink_queue, no NFQUEUE target and no nft_queue, ...), naming it.
// The slot is one that no faultline table or chain uses in the namespace and whose queue no
// program has bound (another agent's): two agents never share one.
// A step that fails removes what was built (queue unbound, rules gone) before the error.
// lost() (checked by the agent about once a second): the fault is no longer in place when its
// table (nftables) or chains and jump rules (xtables, both families) are gone or hold other rules
// than were read back right after install (count, or a digest of their contents), when its
// queue is no longer bound, or when packets wait unread in the kernel's queue at two checks in a
// row while the queue's thread read none. Cost: one inspect() (packet_steering.h) and the queue's
// counters; measured in tests/kernel/agent/faults/network/nfqueue_driver_test.cpp (docs/performance.md).
// revert(): removes the rules (reads back that nothing of the slot is left), then releases every
// held packet and unbinds the queue; describe() then adds the queue's counters. Nothing to do
// when the namespace is gone. A rule faultline did not add that jumps to the slot's xtables chain
// is never deleted: the chain stays, emptied, and describe() names that rule
// (PacketSteering::remove()). Errors are transient (EPERM, EIO, EBUSY the xtables lock held by
// another program ...): revert() may be called again.
// Neither class is thread-safe; apply and revert block for a few netlink round trips.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "agent/faults/fault.h"
#include "agent/faults/network/net_target.h"
#include "agent/faults/network/packet_queue.h"
#include "agent/faults/network/traffic_match.h"
#include "agent/kernel/packet_steering.h"

namespace faultline::agent {

using SteeringOpener = std::function<tl::expected<std::unique_ptr<kernel::PacketSteering>, std::error_code>(
    kernel::SteeringBackend backend, const std::string& netns)>;
using QueueOpener = std::function<tl::expected<std::unique_ptr<PacketQueue>, std::pair<std::error_code, std::string>>(
    const std::string& netns, uint16_t queue, Impairment impairment, bool egress, uint64_t seed)>;

// The watchdog that removes a stopped agent's steering (agent/safety/queue_watchdog.h implements
// it; the safety folder sits above the drivers, so the driver knows only this interface). Told of
// every slot installed and removed; thread-safe.
class SteeringWatchdog {
 public:
  virtual ~SteeringWatchdog() = default;
  // slot's rules of backend in netns ("" = the agent's own namespace, else a namespace file that
  // stays valid while tracked); queueFd: the netlink socket bound to the slot's queue, -1 none.
  virtual void track(const std::string& netns, kernel::SteeringBackend backend, uint16_t slot, int queueFd) = 0;
  virtual void untrack(const std::string& netns, kernel::SteeringBackend backend, uint16_t slot) = 0;
};
// Starts a watchdog; errors: the errno and words of what failed.
using WatchdogStarter =
    std::function<tl::expected<std::shared_ptr<SteeringWatchdog>, std::pair<std::error_code, std::string>>()>;

class NfqueueFaultDriver final : public FaultDriver {
 public:
  // support: what the agent probed at start (kernel::probeSteeringSupport()); openSteering and
  // openQueue: kernel::openPacketSteering and PacketQueue::open, or fakes in unit tests.
  NfqueueFaultDriver(kernel::SteeringSupport support, SteeringOpener openSteering, QueueOpener openQueue);
  ~NfqueueFaultDriver() override;

  // As NetworkFaultDriver's: the controller's endpoints, exempt in the agent's own namespace.
  void setExempt(std::vector<Endpoint> endpoints) { exempt_ = std::move(endpoints); }
  // As NetworkFaultDriver's: interface "default" and netns_process; without one they are ENOTSUP.
  void setTargetResolver(NetworkTargetResolver* resolver) { resolver_ = resolver; }
  // Start the watchdog (start: QueueWatchdog's, agent/safety/queue_watchdog.h) with the first fault
  // applied, and tell it every slot installed and removed: a stopped agent's rules are then
  // removed after its grace. The agent and run --local turn it on; without it (unit tests)
  // nothing is started. A watchdog that cannot start is logged; faults are applied without it.
  void enableWatchdog(WatchdogStarter start) { startWatchdog_ = std::move(start); }
  // The packets of every queue this driver's faults served, live and ended (the agent's metrics).
  [[nodiscard]] std::shared_ptr<const QueueTally> queueTally() const { return tally_; }

  // Undo record, persisted before the first kernel change:
  //   {"fault":"network.delay","driver":"nfqueue","netns":"" or a path,"interface":"veth0",
  //    "direction":"egress"|"ingress"|"both","backend":"nftables"|"xtables","slot":0,
  //    "queue":64000 (absent for a pure rule)} and the resolved target's fields (net_target.h).
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

  // Whether an undo record is this driver's ("driver": "nfqueue").
  [[nodiscard]] static bool isNfqueueRecord(const nlohmann::json& undo);
  // Crash recovery: removes the record's rules (the queue died with the agent's socket). Nothing
  // to do when they or the namespace are gone; a slot whose queue a running program serves is
  // another agent's now and is left alone. Returns what it did, in words.
  // errors: EINVAL (permanent) a record it cannot read; the steering's, transient.
  [[nodiscard]] static tl::expected<std::string, FaultError> revertRecord(const nlohmann::json& undo,
                                                                          const SteeringOpener& open);

  // Where this driver's faults are held: namespace path, interface and direction bits (1 egress,
  // 2 ingress), shared with the applied faults, which remove themselves on revert.
  struct Holding {
    std::mutex mutex;
    std::set<std::tuple<std::string, std::string, int>> held;
  };

 private:
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> applyResolved(const v1::FaultSpec& spec,
                                                                                      const PersistUndo& persist);
  kernel::SteeringSupport support_;
  SteeringOpener openSteering_;
  QueueOpener openQueue_;
  std::vector<Endpoint> exempt_;
  NetworkTargetResolver* resolver_ = nullptr;
  std::shared_ptr<Holding> holding_ = std::make_shared<Holding>();
  std::shared_ptr<QueueTally> tally_ = std::make_shared<QueueTally>();
  WatchdogStarter startWatchdog_;
  std::shared_ptr<SteeringWatchdog> watchdog_;  // started with the first fault; shared with the faults
  bool watchdogFailed_ = false;
};

// Removes every faultline table and chain (any slot, both backends) in one namespace, for
// faultline-agent revert-all; returns what it removed and what failed, in words. A backend the
// kernel lacks is skipped.
// A slot whose queue a running program serves is a live agent's fault: it is left alone and
// named in kept.
struct SteeringSweep {
  std::vector<std::string> removed;
  std::vector<std::string> failed;
  std::vector<std::string> kept;
};
[[nodiscard]] SteeringSweep removeAllSteering(const std::string& netns, const SteeringOpener& open);

}  // namespace faultline::agent
