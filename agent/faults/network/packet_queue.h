// Userspace netem: the impairments of tc-netem(8) done in userspace on the packets netfilter
// steers to one NFQUEUE (agent/kernel/packet_steering.h), for kernels without sch_netem.
//
// ImpairmentModel decides, per packet and in arrival order, what netem would do: drop it (random
// loss with correlation, or the Gilbert-Elliott model), corrupt one random bit of it, send a copy
// of it too, and how long to hold it (delay + jitter drawn from the distribution table, with
// correlation; reorder: percent of packets, after gap held ones, go at once). It is pure and
// seeded, so its ratios can be tested exactly; the same algorithms as net/sched/sch_netem.c
// (get_crandom, loss_4state/gilbert_elliott, tabledist), rewritten from their description.
//
// PacketQueue binds the queue with libnetfilter_queue in a network namespace and serves it on a
// thread of its own (an Asio io_context; SCHED_FIFO priority 1 where allowed, else a normal
// thread): each packet gets the model's decision; held packets are released with NF_ACCEPT by one
// Asio steady_timer armed for the earliest release time of a heap of held packets (netem's tfifo),
// in release order (arrival order for equal times); a dropped one gets NF_DROP; a corrupted one is
// accepted with its modified payload; a duplicate is sent again, when the original is released,
// through a raw socket in the namespace marked kInjectedMark (so steering skips it; egress only).
// A held egress packet is orphaned, as netem orphans it from its socket (skb_orphan_partial()):
// the queue copies it, frees the original at once (NF_DROP), and at its release time sends the
// copy through the raw socket, out of the interface the original was leaving by. Held against its
// socket instead, TCP small queues would let about two packets a round trip through (measured:
// 0.3 Mbit/s through 100 ms). The copy passes the output hook again (steering skips it by its
// mark; other rules see it a second time, as the agent's): its skb mark is kInjectedMark, not the
// sender's, and it is routed by destination and interface alone.
// The queue is bound with NFQA_CFG_F_FAIL_OPEN (a full queue accepts rather than drops) and the
// steering rules use bypass, so traffic flows unharmed when the agent stops or dies (when it dies,
// the kernel unbinds the queue and drops the packets held at that moment; stop() releases them).
// limitPackets is applied by the queue with netem's tail drop (overLimit); the kernel's queue
// length is limitPackets + 4096 so packets not yet read are not passed early.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <unordered_map>
#include <utility>

#include <tl/expected.hpp>

#include "faultline/v1/faults.pb.h"

namespace faultline::agent {

// Percentages are in [0, 100]; durations in nanoseconds. Validated by impairmentFromSpec().
struct Impairment {
  std::chrono::nanoseconds delay{0};
  std::chrono::nanoseconds jitter{0};  // <= delay
  double delayCorrelation = 0;
  v1::DelayDistribution distribution = v1::DELAY_DISTRIBUTION_UNSPECIFIED;  // unspecified: uniform
  double lossPercent = 0;
  double lossCorrelation = 0;
  std::optional<v1::GilbertElliott> gilbertElliott;  // instead of lossPercent
  double duplicatePercent = 0;
  double duplicateCorrelation = 0;
  double corruptPercent = 0;
  double corruptCorrelation = 0;
  double reorderPercent = 0;  // needs delay > 0
  double reorderCorrelation = 0;
  uint32_t gap = 0;
  uint32_t limitPackets = 1000;  // packets held at once; more are dropped (overLimit), as netem's limit does
  // network.delay's keepOrder: a packet is held at least until the one before it on its flow
  // (flowKey()) is released, so the jitter does not reorder a flow (netem's does).
  bool keepOrder = false;
};

// The flow of an IPv4 or IPv6 packet, for keepOrder: a hash of its version, source and destination
// addresses, protocol (IPv6: the first next header) and, for TCP and UDP (not a later fragment),
// its ports. Anything shorter than the headers it reads (or not IP) is one flow of its own (0).
[[nodiscard]] uint64_t flowKey(const uint8_t* packet, size_t length);

// keepOrder's bookkeeping: the release time of the last held packet of each flow. Not
// thread-safe (the queue's thread owns it); at most about twice the held packets' flows are kept
// (flows whose last release has passed are forgotten).
class FlowOrder {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  // When a packet of flow that would be released at wanted may go: no earlier than the last
  // packet of its flow (ties go in arrival order).
  [[nodiscard]] TimePoint earliest(uint64_t flow, TimePoint wanted) const;
  // Records that a packet of flow is released at release (from earliest()); now: the time, to
  // forget the flows whose last packet has gone when there are many.
  void held(uint64_t flow, TimePoint release, TimePoint now);
  [[nodiscard]] size_t flows() const { return last_.size(); }

 private:
  std::unordered_map<uint64_t, TimePoint> last_;
  size_t forgetAbove_ = 1024;
};

// The impairment of a validated network.delay, network.loss, network.duplicate, network.corrupt
// or network.reorder spec (spec.h validateFaultSpec(), run again here), with netem's defaults:
// limit the spec's limit_packets, else for delay netemLimitPackets() as the netem driver sizes it
// (so a long delay does not tail-drop), else 1000; reorder without gap is gap 1 (tc(8)).
// errors: "FIELD: words" of validateFaultSpec(); words naming a parameter the userspace path does
// not do (rate_bps: "rate_bps N needs sch_netem ..."), or a kind that is not one of those five.
[[nodiscard]] tl::expected<Impairment, std::string> impairmentFromSpec(const v1::FaultSpec& spec);

class ImpairmentModel {
 public:
  struct Decision {
    bool drop = false;
    bool duplicate = false;
    std::optional<size_t> corruptBit;  // the bit (from the start of the packet) to flip
    std::chrono::nanoseconds hold{0};  // 0: release at once
    bool reordered = false;            // sent ahead of packets held before it
  };
  ImpairmentModel(Impairment impairment, uint64_t seed);
  // The decision for the next packet of length bytes (> 0).
  [[nodiscard]] Decision next(size_t length);

 private:
  struct State;
  std::shared_ptr<State> state_;
};

struct QueueStats {
  uint64_t received = 0;
  uint64_t accepted = 0;   // verdicts NF_ACCEPT, held or not
  uint64_t dropped = 0;    // by the model
  uint64_t overLimit = 0;  // dropped because limitPackets were held
  uint64_t duplicated = 0;
  uint64_t corrupted = 0;
  uint64_t reordered = 0;
  uint64_t keptInOrder = 0;  // keepOrder: held longer than their own delay, behind an earlier packet of their flow
  uint64_t held = 0;         // held right now
  uint64_t orphaned = 0;     // held egress packets taken from the kernel, to be sent by the queue
  uint64_t sendFailed = 0;   // of those, not sent at release (the raw socket refused; lost)
};

class PacketQueue {
 public:
  // Binds queue in netns ("" = the caller's own namespace, else a namespace file) and starts
  // serving it with a model seeded by seed. egress: the rules steer egress packets (output hook)
  // to this queue too, so it may send packets itself: it sends duplicates and orphans held egress
  // packets (it tells egress from ingress per packet by its output interface). Without it no copy
  // is sent (a copy of a received packet cannot be injected back into the receive path) and held
  // packets stay in the kernel until their verdict.
  // errors (code, words): ENOENT/EINVAL netns; EPERM without CAP_NET_ADMIN; EBUSY the queue is
  // bound by another socket (the kernel says EPERM; with CAP_NET_ADMIN in effect it is reported as
  // EBUSY); EPROTONOSUPPORT/ENOENT the kernel has no nfnetlink_queue; the raw sockets' errors when
  // egress and the impairment duplicates or delays. Blocks for a few netlink round trips and a thread start.
  [[nodiscard]] static tl::expected<std::unique_ptr<PacketQueue>, std::pair<std::error_code, std::string>> open(
      const std::string& netns, uint16_t queue, Impairment impairment, bool egress, uint64_t seed);

  virtual ~PacketQueue() = default;
  // Releases every held packet at once (NF_ACCEPT), unbinds the queue and joins the thread; the
  // kernel then passes the queue's packets (bypass). Before unbinding (when the kernel drops what is
  // still queued) the queue's length is set to 0, so with fail open new packets pass without being
  // queued, and every packet already queued is read and accepted: none is lost. Idempotent; the
  // destructor calls it.
  virtual void stop() = 0;
  // Thread-safe.
  [[nodiscard]] virtual QueueStats stats() const = 0;
  // The netlink socket bound to the queue, for the watchdog (agent/safety/queue_watchdog.h), which takes
  // it to release the queue's packets when the agent is stopped; -1 when there is none (fakes).
  [[nodiscard]] virtual int netlinkFd() const { return -1; }
};

// The userspace queues' packet counts across faults, for the agent's metrics
// (agent/session/agent_metrics.h): the queues alive now are read at each total(), those that ended
// are summed as they end, so every count but held only grows. Thread-safe; add() and remove() take
// a mutex only total() also takes (never held across anything else).
class QueueTally {
 public:
  // queue must stay alive until remove(queue).
  void add(const PacketQueue* queue) {
    std::lock_guard lock(mutex_);
    live_.insert(queue);
  }
  // Call after queue->stop() (its final counts) and before it is destroyed.
  void remove(const PacketQueue* queue) {
    const QueueStats s = queue->stats();
    std::lock_guard lock(mutex_);
    if (live_.erase(queue) != 0) {
      sum(ended_, s);
    }
  }
  // Ended queues' counts plus the live ones'; held: the live queues' only.
  [[nodiscard]] QueueStats total() const {
    std::lock_guard lock(mutex_);
    QueueStats t = ended_;
    t.held = 0;
    for (const auto* q : live_) {
      sum(t, q->stats());
    }
    return t;
  }

 private:
  static void sum(QueueStats& into, const QueueStats& s) {
    into.received += s.received;
    into.accepted += s.accepted;
    into.dropped += s.dropped;
    into.overLimit += s.overLimit;
    into.duplicated += s.duplicated;
    into.corrupted += s.corrupted;
    into.reordered += s.reordered;
    into.keptInOrder += s.keptInOrder;
    into.held += s.held;
    into.orphaned += s.orphaned;
    into.sendFailed += s.sendFailed;
  }
  mutable std::mutex mutex_;
  std::set<const PacketQueue*> live_;
  QueueStats ended_;
};

}  // namespace faultline::agent
