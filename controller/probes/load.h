// Load probes: an http or tcp probe with `load: {rate, concurrency, duration}` (LoadSpec in
// experiment.h) drives load for each sample instead of sending one request.
//
// Open model, as wrk2 does it (https://github.com/giltene/wrk2, "Coordinated Omission" in its
// README; Gil Tene, "How NOT to Measure Latency"): request i is scheduled at start + i/rate
// whatever happened to the requests before it. When `concurrency` requests are in flight, the next
// waits for a free slot, and its latency still counts from its scheduled time: a server that
// slows down shows the whole delay its users would see, instead of slowing the prober down so
// that fewer, fast-looking requests are measured (coordinated omission). A request that has no
// answer at scheduled time + timeout (time waiting for a slot included) is a failed request
// ("timeout"); nothing is dropped silently.
//
// Which latencies count: a request that got an answer has one, whether it passed the probe's
// checks or not (a 500, an answer above maxLatency, a failed check): it enters the percentiles and
// is a failed request. A request that got none (refused, reset, unreachable, timeout) is a failed
// request with no latency: it never enters the percentiles, where its short time (a refused
// connection in 0.1 ms) would pass for a fast answer. docs/experiments.md states both rules.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "controller/experiment/experiment.h"

namespace faultline::controller {

// Latencies of many requests in logarithmic buckets 1% wide (from 1 µs to about 10^8 µs, longer
// ones in the last bucket), so a sample of thousands of requests keeps a few hundred bytes.
// percentile() is the nearest-rank percentile, given as the upper bound of its bucket (at most 1%
// above the true value) and never above the largest latency added. Not thread-safe.
class LatencyHistogram {
 public:
  void add(std::chrono::microseconds latency);
  void merge(const LatencyHistogram& other);
  [[nodiscard]] uint64_t count() const { return count_; }
  // p in (0, 100]; 0 when empty.
  [[nodiscard]] std::chrono::microseconds percentile(double p) const;
  [[nodiscard]] std::chrono::microseconds max() const { return max_; }

 private:
  std::vector<std::pair<uint16_t, uint32_t>> buckets_;  // (bucket, count), sorted by bucket
  uint64_t count_ = 0;
  std::chrono::microseconds max_{0};
};

// What one load sample did. requests == succeeded + failed.
struct LoadStats {
  uint64_t requests = 0;    // scheduled: floor(rate * duration), at least 1
  uint64_t succeeded = 0;   // answered and passed every check of the probe
  uint64_t failed = 0;      // every other: refused, wrong status, above maxLatency, timeout (waiting included)
  uint64_t unanswered = 0;  // of failed: no answer at all (refused, reset, timeout): no latency recorded
  uint64_t waited = 0;      // started late because `concurrency` requests were in flight
  std::chrono::milliseconds duration{0};     // the load's duration: throughput = succeeded / duration
  LatencyHistogram okLatencies;              // from the scheduled time, of the requests that succeeded
  LatencyHistogram failedLatencies;          // the same for the failed ones that answered (failed - unanswered)
  std::map<std::string, uint64_t> failures;  // why requests failed, at most 8 reasons (then "other")

  // Successful requests per second of duration.
  [[nodiscard]] double throughput() const;
  // "1000 requests in 5s: 990 ok (198/s), 10 failed (1%: 10 timeout after 2s), p50 1.2ms, p99 14ms,
  // max 2s over 990 answers, 31 waited for a free slot (concurrency 16)"; the percentiles are of
  // every answered request (okLatencies and failedLatencies), "no answer to time" without any.
  [[nodiscard]] std::string describe(unsigned concurrency) const;
};

// The open-model schedule of one load sample, without I/O or a clock of its own: the caller
// tells it the time. Tests drive it with a fake clock; runLoad() with the steady clock. Not
// thread-safe.
class OpenModelSchedule {
 public:
  using Clock = std::chrono::steady_clock;
  using TimePoint = Clock::time_point;

  // timeout: a request's deadline is its scheduled time + timeout.
  OpenModelSchedule(const LoadSpec& load, std::chrono::milliseconds timeout, TimePoint start);

  struct Start {
    uint64_t index = 0;
    TimePoint scheduled;  // latency counts from here
    TimePoint deadline;   // scheduled + timeout: the request must end by then
  };
  // Moves the schedule to now: every request scheduled at or before now joins the waiting line;
  // waiting requests past their deadline end as timeouts; then waiting requests start, oldest
  // first, while fewer than concurrency are in flight. Returns the ones to start now.
  [[nodiscard]] std::vector<Start> advance(TimePoint now);
  // A started request ended at `at`. ok: it passed the probe's checks; answered: the server answered
  // (ok implies it); detail: why it failed. An answered request's latency is recorded (okLatencies
  // or failedLatencies); an unanswered one (refused, reset, timeout) counts in failed and unanswered
  // only.
  void finish(const Start& request, bool ok, bool answered, TimePoint at, const std::string& detail);
  // When advance() must be called next: the next scheduled time, or the deadline of the oldest
  // waiting request; nullopt when every request has been scheduled and none waits (the rest end
  // through finish()).
  [[nodiscard]] std::optional<TimePoint> nextWake() const;
  // Every request scheduled and ended.
  [[nodiscard]] bool done() const;
  [[nodiscard]] unsigned inFlight() const { return inFlight_; }
  [[nodiscard]] const LoadStats& stats() const { return stats_; }

 private:
  [[nodiscard]] TimePoint scheduledAt(uint64_t index) const;
  // latency: the answer's, nullopt when there was none.
  void fail(const std::string& detail, std::optional<std::chrono::microseconds> latency);

  LoadSpec load_;
  std::chrono::milliseconds timeout_;
  TimePoint start_;
  uint64_t next_ = 0;          // the next index to schedule
  uint64_t blockedBelow_ = 0;  // requests below this index found every slot taken
  std::deque<Start> waiting_;
  unsigned inFlight_ = 0;
  LoadStats stats_;
};

// The probe kinds that can drive load. Both block for the whole sample: at most load.duration +
// the probe's timeout (plus a few ms; a host name is resolved with c-ares within each request's).
// Thread-safe (each call has its own io_context). The Sample: ok when every request succeeded;
// latency the p99 of the answered requests (0 when none answered); value the throughput (successful requests/s); detail
// LoadStats::describe(); load set.
struct Sample;
[[nodiscard]] Sample runHttpLoad(const HttpProbe& probe);
[[nodiscard]] Sample runTcpLoad(const TcpProbe& probe);

}  // namespace faultline::controller
