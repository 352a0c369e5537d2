// Load probes: the open-model schedule (load.h) and its driver on one Boost.Asio event loop.
#include "controller/probes/load.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include <fmt/format.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "controller/probes/http.h"
#include "controller/probes/probe.h"
#include "controller/probes/tcp.h"

namespace faultline::controller {
namespace {

namespace asio = boost::asio;
using std::chrono::microseconds;

constexpr double kBucketGrowth = 1.01;
constexpr uint16_t kLastBucket = 1900;  // 1.01^1900 µs: about 1.6e8 µs (160 s)
constexpr size_t kMaxFailureReasons = 8;

uint16_t bucketOf(microseconds latency) {
  if (latency.count() <= 1) {
    return 0;
  }
  const double b = std::ceil(std::log(static_cast<double>(latency.count())) / std::log(kBucketGrowth));
  return static_cast<uint16_t>(std::min<double>(b, kLastBucket));
}

microseconds upperBound(uint16_t bucket) {
  return microseconds(static_cast<int64_t>(std::ceil(std::pow(kBucketGrowth, bucket))));
}

}  // namespace

void LatencyHistogram::add(microseconds latency) {
  latency = std::max(latency, microseconds{0});
  const uint16_t b = bucketOf(latency);
  auto it =
      std::lower_bound(buckets_.begin(), buckets_.end(), b, [](const auto& e, uint16_t v) { return e.first < v; });
  if (it != buckets_.end() && it->first == b) {
    ++it->second;
  } else {
    buckets_.insert(it, {b, 1});
  }
  ++count_;
  max_ = std::max(max_, latency);
}

void LatencyHistogram::merge(const LatencyHistogram& other) {
  std::vector<std::pair<uint16_t, uint32_t>> merged;
  merged.reserve(buckets_.size() + other.buckets_.size());
  auto a = buckets_.begin();
  auto b = other.buckets_.begin();
  while (a != buckets_.end() || b != other.buckets_.end()) {
    if (b == other.buckets_.end() || (a != buckets_.end() && a->first < b->first)) {
      merged.push_back(*a++);
    } else if (a == buckets_.end() || b->first < a->first) {
      merged.push_back(*b++);
    } else {
      merged.emplace_back(a->first, a->second + b->second);
      ++a;
      ++b;
    }
  }
  buckets_ = std::move(merged);
  count_ += other.count_;
  max_ = std::max(max_, other.max_);
}

microseconds LatencyHistogram::percentile(double p) const {
  if (count_ == 0) {
    return microseconds{0};
  }
  const auto rank = std::clamp<uint64_t>(
      static_cast<uint64_t>(std::ceil(std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(count_))), 1, count_);
  uint64_t seen = 0;
  for (const auto& [bucket, n] : buckets_) {
    seen += n;
    if (seen >= rank) {
      return std::min(upperBound(bucket), max_);
    }
  }
  return max_;
}

double LoadStats::throughput() const {
  const double seconds = std::chrono::duration<double>(duration).count();
  return seconds > 0 ? static_cast<double>(succeeded) / seconds : 0;
}

std::string LoadStats::describe(unsigned concurrency) const {
  LatencyHistogram all = okLatencies;
  all.merge(failedLatencies);
  std::string out = fmt::format("{} requests in {}: {} ok ({:.4g}/s), {} failed", requests, formatLimit(duration),
                                succeeded, throughput(), failed);
  if (failed > 0) {
    out += fmt::format(" ({:.3g}%:", 100.0 * static_cast<double>(failed) / static_cast<double>(requests));
    bool first = true;
    for (const auto& [why, n] : failures) {
      out += fmt::format("{} {} {}", first ? "" : ",", n, why);
      first = false;
    }
    out += ")";
  }
  if (all.count() == 0) {
    out += ", no answer to time";
  } else {
    out += fmt::format(", p50 {}, p99 {}, max {} over {} answer{}", formatLatency(all.percentile(50)),
                       formatLatency(all.percentile(99)), formatLatency(all.max()), all.count(),
                       all.count() == 1 ? "" : "s");
  }
  if (waited > 0) {
    out += fmt::format(", {} waited for a free slot (concurrency {})", waited, concurrency);
  }
  return out;
}

OpenModelSchedule::OpenModelSchedule(const LoadSpec& load, std::chrono::milliseconds timeout, TimePoint start)
    : load_(load), timeout_(timeout), start_(start) {
  const double n = std::floor(load.rate * std::chrono::duration<double>(load.duration).count());
  stats_.requests = std::max<uint64_t>(1, static_cast<uint64_t>(std::max(n, 0.0)));
  stats_.duration = load.duration;
}

OpenModelSchedule::TimePoint OpenModelSchedule::scheduledAt(uint64_t index) const {
  return start_ + std::chrono::nanoseconds(static_cast<int64_t>(static_cast<double>(index) * 1e9 / load_.rate));
}

void OpenModelSchedule::fail(const std::string& detail, std::optional<microseconds> latency) {
  ++stats_.failed;
  if (latency) {
    stats_.failedLatencies.add(*latency);
  } else {
    ++stats_.unanswered;
  }
  auto it = stats_.failures.find(detail);
  if (it != stats_.failures.end()) {
    ++it->second;
  } else if (stats_.failures.size() < kMaxFailureReasons) {
    stats_.failures.emplace(detail, 1);
  } else {
    ++stats_.failures["other"];
  }
}

std::vector<OpenModelSchedule::Start> OpenModelSchedule::advance(TimePoint now) {
  while (next_ < stats_.requests && scheduledAt(next_) <= now) {
    const TimePoint at = scheduledAt(next_);
    waiting_.push_back(Start{next_, at, at + timeout_});
    ++next_;
  }
  while (!waiting_.empty() && waiting_.front().deadline <= now) {
    fail(fmt::format("timeout after {} (waiting for a free slot)", formatLimit(timeout_)), std::nullopt);
    waiting_.pop_front();
  }
  std::vector<Start> starts;
  while (!waiting_.empty() && inFlight_ < load_.concurrency) {
    if (waiting_.front().index < blockedBelow_) {
      ++stats_.waited;  // it found every slot taken at an earlier advance()
    }
    starts.push_back(waiting_.front());
    waiting_.pop_front();
    ++inFlight_;
  }
  if (!waiting_.empty()) {
    blockedBelow_ = waiting_.back().index + 1;
  }
  return starts;
}

void OpenModelSchedule::finish(const Start& request, bool ok, bool answered, TimePoint at, const std::string& detail) {
  if (inFlight_ > 0) {
    --inFlight_;
  }
  const auto latency =
      std::chrono::duration_cast<microseconds>(std::max(at - request.scheduled, TimePoint::duration{0}));
  if (ok) {
    ++stats_.succeeded;
    stats_.okLatencies.add(latency);
  } else if (answered) {
    fail(detail, latency);
  } else {
    fail(detail, std::nullopt);
  }
}

std::optional<OpenModelSchedule::TimePoint> OpenModelSchedule::nextWake() const {
  std::optional<TimePoint> wake;
  if (next_ < stats_.requests) {
    wake = scheduledAt(next_);
  }
  if (!waiting_.empty()) {
    wake = wake ? std::min(*wake, waiting_.front().deadline) : waiting_.front().deadline;
  }
  return wake;
}

bool OpenModelSchedule::done() const {
  return next_ >= stats_.requests && waiting_.empty() && inFlight_ == 0;
}

namespace {

// A failed request's detail without its own latency ("200 in 3.1ms, above maxLatency 1s" ->
// "above maxLatency 1s"), so that failures of one kind are counted together.
std::string failureReason(const std::string& detail) {
  const size_t comma = detail.find(", ");
  const size_t in = detail.find(" in ");
  return comma != std::string::npos && in != std::string::npos && in < comma ? detail.substr(comma + 2) : detail;
}

// Runs one load sample on its own event loop: the schedule's starts go to start, its wakes to a
// timer. Returns when every request has ended.
Sample driveLoad(const LoadSpec& load, std::chrono::milliseconds timeout, asio::io_context& ioc,
                 const std::function<void(const OpenModelSchedule::Start&,
                                          std::function<void(bool ok, bool answered, std::string)>)>& start) {
  using Clock = OpenModelSchedule::Clock;
  OpenModelSchedule schedule(load, timeout, Clock::now());
  asio::steady_timer timer(ioc);
  std::optional<Clock::time_point> armed;
  std::function<void()> pump = [&] {
    for (const auto& s : schedule.advance(Clock::now())) {
      start(s, [&schedule, &pump, s](bool ok, bool answered, const std::string& detail) {
        schedule.finish(s, ok, answered, Clock::now(), detail);
        pump();
      });
    }
    const auto wake = schedule.nextWake();
    if (!wake && armed) {
      timer.cancel();  // nothing left to wake for: the loop ends with the last request
      armed.reset();
    } else if (wake && wake != armed) {
      armed = wake;
      timer.expires_at(*wake);
      timer.async_wait([&](const boost::system::error_code& ec) {
        if (!ec) {
          armed.reset();
          pump();
        }
      });
    }
  };
  boost::asio::post(ioc, [&] { pump(); });
  ioc.run();
  const auto stats = std::make_shared<LoadStats>(schedule.stats());
  Sample sample;
  sample.ok = stats->failed == 0;
  LatencyHistogram all = stats->okLatencies;
  all.merge(stats->failedLatencies);
  sample.latency = all.percentile(99);
  sample.detail = stats->describe(load.concurrency);
  sample.value = stats->throughput();  // recorded with the sample
  sample.load = stats;
  return sample;
}

}  // namespace

Sample runHttpLoad(const HttpProbe& spec) {
  auto parts = parseHttpUrl(spec.url);
  if (!parts || !spec.load) {
    return Sample{false, microseconds{0}, parts ? "not a load probe" : parts.error(), std::nullopt, nullptr};
  }
  asio::io_context ioc;
  return driveLoad(*spec.load, spec.timeout, ioc, [&](const OpenModelSchedule::Start& s, auto done) {
    startHttpExchange(ioc, *parts, spec.method, "", spec.headers, spec.body, s.deadline, spec.timeout,
                      [&spec, s, done = std::move(done)](tl::expected<HttpAnswer, std::string> answer) {
                        const auto latency =
                            std::chrono::duration_cast<microseconds>(OpenModelSchedule::Clock::now() - s.scheduled);
                        const bool answered = answer.has_value();
                        const Sample one = checkHttpAnswer(spec, std::move(answer), latency);
                        done(one.ok, answered, failureReason(one.detail));
                      });
  });
}

Sample runTcpLoad(const TcpProbe& spec) {
  if (!spec.load) {
    return Sample{false, microseconds{0}, "not a load probe", std::nullopt, nullptr};
  }
  asio::io_context ioc;
  return driveLoad(*spec.load, spec.timeout, ioc, [&](const OpenModelSchedule::Start& s, auto done) {
    startTcpConnect(ioc, spec, s.deadline, [&spec, s, done = std::move(done)](const std::string& failure) {
      const auto latency = std::chrono::duration_cast<microseconds>(OpenModelSchedule::Clock::now() - s.scheduled);
      const Sample one = checkTcpConnect(spec, failure, latency);
      done(one.ok, failure.empty(), failureReason(one.detail));
    });
  });
}

}  // namespace faultline::controller
