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
// thread of its own: each packet gets the model's decision; held packets are released with
// NF_ACCEPT by an Asio timer wheel at their release time, in release order; a dropped one gets
// NF_DROP; a corrupted one is accepted with its modified payload; a duplicate is sent again
// through a raw socket in the namespace marked kInjectedMark (so steering skips it; egress only).
// The queue is bound with NFQA_CFG_F_FAIL_OPEN (a full queue accepts rather than drops) and the
// steering rules use bypass, so traffic flows unharmed when the agent stops or dies.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
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
  uint32_t limitPackets = 1000;  // packets held at once; more are dropped, as netem's limit does
};

// The impairment of a validated network.delay, network.loss, network.duplicate, network.corrupt
// or network.reorder spec (spec.h validateFaultSpec()), with netem's defaults (limit 1000, or the
// spec's limit_packets). errors: words naming a parameter the userspace path does not do (netem's
// rate_bps: "rate_bps needs sch_netem ..."), or a kind that is not one of those five.
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
  uint64_t held = 0;  // held right now
};

class PacketQueue {
 public:
  // Binds queue in netns ("" = the caller's own namespace, else a namespace file) and starts
  // serving it with a model seeded by seed. duplicates: send copies (egress steering only; a copy
  // of a received packet cannot be injected back into the receive path).
  // errors (code, words): ENOENT/EINVAL netns; EPERM; EBUSY the queue is bound by another program;
  // EPROTONOSUPPORT/ENOENT the kernel has no nfnetlink_queue.
  [[nodiscard]] static tl::expected<std::unique_ptr<PacketQueue>, std::pair<std::error_code, std::string>> open(
      const std::string& netns, uint16_t queue, Impairment impairment, bool duplicates, uint64_t seed);

  virtual ~PacketQueue() = default;
  // Releases every held packet at once (NF_ACCEPT), unbinds the queue and joins the thread; the
  // kernel then passes the queue's packets (bypass). Idempotent.
  virtual void stop() = 0;
  // Thread-safe.
  [[nodiscard]] virtual QueueStats stats() const = 0;
};

}  // namespace faultline::agent
