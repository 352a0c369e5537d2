// Load probes (controller/probes/load.h): the open-model schedule against a fake clock and a
// simulated server, the latency histogram against hand-computed values, and http and tcp load
// against the demo service on 127.0.0.1 (port 0).
#include <chrono>
#include <map>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "controller/probes/load.h"
#include "controller/probes/probe.h"
#include "demo/server.h"

using namespace faultline::controller;
using namespace std::chrono_literals;
using std::chrono::microseconds;
using std::chrono::milliseconds;

namespace {

using TimePoint = OpenModelSchedule::TimePoint;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

struct Simulated {
  LoadStats stats;
  std::map<uint64_t, milliseconds> latencies;  // by request index, from its scheduled time
  unsigned maxInFlight = 0;
};

// Runs one load on a fake clock against a server that answers every request `service` after it
// starts (a request still running at its deadline ends there, as a timeout). Every event happens
// exactly on time: the clock jumps from one to the next.
Simulated simulate(const LoadSpec& load, milliseconds timeout, milliseconds service) {
  const TimePoint t0{};  // the fake clock's epoch
  OpenModelSchedule schedule(load, timeout, t0);
  struct Running {
    OpenModelSchedule::Start request;
    TimePoint end;
    bool ok = false;
  };
  std::vector<Running> running;
  Simulated out;
  TimePoint now = t0;
  for (int steps = 0; !schedule.done() && steps < 100000; ++steps) {
    for (auto it = running.begin(); it != running.end();) {
      if (it->end <= now) {
        schedule.finish(it->request, it->ok, it->ok, it->end, it->ok ? "" : "timeout after " + formatLimit(timeout));
        out.latencies[it->request.index] = std::chrono::duration_cast<milliseconds>(it->end - it->request.scheduled);
        it = running.erase(it);
      } else {
        ++it;
      }
    }
    for (const auto& s : schedule.advance(now)) {
      const TimePoint answered = now + service;
      running.push_back(Running{s, std::min(answered, s.deadline), answered <= s.deadline});
    }
    out.maxInFlight = std::max<unsigned>(out.maxInFlight, static_cast<unsigned>(running.size()));
    REQUIRE(schedule.inFlight() == running.size());
    std::optional<TimePoint> next = schedule.nextWake();
    for (const auto& r : running) {
      next = next ? std::min(*next, r.end) : r.end;
    }
    if (!next) {
      break;
    }
    REQUIRE(*next >= now);
    now = *next;
  }
  CHECK(schedule.done());
  out.stats = schedule.stats();
  return out;
}

}  // namespace

TEST_CASE("open model: a server taking 100ms, rate 100/s, concurrency 1: the latencies grow, as users see them") {
  // A closed-model prober (send, wait, send) would measure 100 ms a hundred times. Here request k
  // is scheduled at 10k ms, starts when request k-1 ends at 100k ms, and ends at 100(k+1) ms:
  // its latency is 100 + 90k ms, until the 2 s timeout.
  const auto sim = simulate(LoadSpec{100, 1, 1000ms}, 2000ms, 100ms);
  CHECK(sim.stats.requests == 100);
  CHECK(sim.maxInFlight == 1);
  for (uint64_t k = 0; k <= 21; ++k) {
    CHECK_MESSAGE(sim.latencies.at(k) == milliseconds(100 + 90 * k), "request ", k);
  }
  CHECK(sim.latencies.at(22) == 2000ms);  // 100 + 90 * 22 = 2080 ms: ends at its deadline, a timeout
  CHECK(sim.stats.succeeded == 22);
  CHECK(sim.stats.failed == 78);
  CHECK(sim.stats.waited == 99);  // every request but the first found the one slot taken
  CHECK(sim.stats.throughput() == doctest::Approx(22.0));
  CHECK(sim.stats.failures.at("timeout after 2s") == 78);
  // Percentiles of the successful ones stand on the growing latencies (1% buckets).
  CHECK(sim.stats.okLatencies.max() == 1990ms);
  CHECK(sim.stats.okLatencies.percentile(50).count() == doctest::Approx(1000'000).epsilon(0.01));  // k = 10
  const std::string text = sim.stats.describe(1);
  CHECK_MESSAGE(contains(text, "100 requests in 1s: 22 ok (22/s), 78 failed (78%: 78 timeout after 2s)"), text);
  CHECK_MESSAGE(contains(text, "99 waited for a free slot (concurrency 1)"), text);
}

TEST_CASE("open model: with enough concurrency every request starts on time and shows the server's 100ms") {
  const auto sim = simulate(LoadSpec{100, 16, 1000ms}, 2000ms, 100ms);
  CHECK(sim.stats.requests == 100);
  CHECK(sim.stats.succeeded == 100);
  CHECK(sim.stats.failed == 0);
  CHECK(sim.stats.waited == 0);
  CHECK(sim.maxInFlight == 10);  // 100 ms at 100/s
  for (const auto& [k, latency] : sim.latencies) {
    CHECK_MESSAGE(latency == 100ms, "request ", k);
  }
  CHECK(sim.stats.throughput() == doctest::Approx(100.0));
}

TEST_CASE("open model: the request count is floor(rate x duration), at least 1, at even intervals") {
  CHECK(simulate(LoadSpec{2.5, 4, 1000ms}, 1000ms, 1ms).stats.requests == 2);
  CHECK(simulate(LoadSpec{0.5, 4, 1000ms}, 1000ms, 1ms).stats.requests == 1);
  CHECK(simulate(LoadSpec{5000, 256, 2000ms}, 1000ms, 1ms).stats.requests == 10000);
  OpenModelSchedule schedule(LoadSpec{4, 1, 1000ms}, 1000ms, TimePoint{});
  auto first = schedule.advance(TimePoint{});
  REQUIRE(first.size() == 1);
  CHECK(first[0].scheduled == TimePoint{});
  CHECK(first[0].deadline == TimePoint{} + 1000ms);
  CHECK(schedule.nextWake() == TimePoint{} + 250ms);
  CHECK(schedule.advance(TimePoint{} + 249ms).empty());
  // The slot is taken: the requests scheduled at 250, 500 and 750 ms wait; every request is
  // scheduled (floor(4/s x 1s) = 4), so the next wake is the deadline of the oldest waiting one.
  CHECK(schedule.advance(TimePoint{} + 800ms).empty());
  CHECK(schedule.nextWake() == TimePoint{} + 1250ms);
  schedule.finish(first[0], true, true, TimePoint{} + 900ms, "");
  auto second = schedule.advance(TimePoint{} + 900ms);
  REQUIRE(second.size() == 1);
  CHECK(second[0].scheduled == TimePoint{} + 250ms);
  // At 1250 ms the second has passed its deadline while running; the third (500 ms) waited past
  // its own deadline of 1500 ms: a timeout counted without ever starting.
  schedule.finish(second[0], false, false, TimePoint{} + 1250ms, "timeout after 1s");
  CHECK(schedule.advance(TimePoint{} + 1600ms).size() == 1);  // the 4th (750 ms, deadline 1750 ms)
  CHECK(schedule.stats().failures.at("timeout after 1s (waiting for a free slot)") == 1);
  CHECK(schedule.stats().failed == 2);
  CHECK(schedule.stats().unanswered == 2);  // two timeouts: no latency of theirs is recorded
  CHECK(schedule.stats().failedLatencies.count() == 0);
  CHECK(schedule.stats().okLatencies.count() == 1);
}

TEST_CASE("open model: a request answered badly counts its latency; one never answered counts none") {
  // Four requests at 10/s: ok in 5 ms, a 500 in 40 ms, answered above maxLatency in 300 ms, and a
  // refused connection after 0.2 ms. Three answers enter the percentiles; the refusal is an error
  // only: its 0.2 ms would otherwise be the fastest "answer" of the four.
  OpenModelSchedule schedule(LoadSpec{10, 8, 400ms}, 1000ms, TimePoint{});
  std::vector<OpenModelSchedule::Start> started;
  for (int ms = 0; ms <= 300; ms += 100) {
    for (const auto& s : schedule.advance(TimePoint{} + milliseconds(ms))) {
      started.push_back(s);
    }
  }
  REQUIRE(started.size() == 4);
  schedule.finish(started[0], true, true, started[0].scheduled + 5ms, "");
  schedule.finish(started[1], false, true, started[1].scheduled + 40ms, "status 500, expected 200");
  schedule.finish(started[2], false, true, started[2].scheduled + 300ms, "above maxLatency 200ms");
  schedule.finish(started[3], false, false, started[3].scheduled + 200us, "connection refused");
  REQUIRE(schedule.done());
  const LoadStats& stats = schedule.stats();
  CHECK(stats.succeeded == 1);
  CHECK(stats.failed == 3);
  CHECK(stats.unanswered == 1);
  CHECK(stats.okLatencies.count() == 1);
  CHECK(stats.failedLatencies.count() == 2);
  CHECK(stats.failedLatencies.max() == 300ms);
  LatencyHistogram all = stats.okLatencies;
  all.merge(stats.failedLatencies);
  // Nearest rank over 5, 40 and 300 ms: p50 = 40 ms (rank 2), p99 = 300 ms; never 0.2 ms.
  CHECK(all.percentile(1).count() == doctest::Approx(5'000).epsilon(0.01));
  CHECK(all.percentile(50).count() == doctest::Approx(40'000).epsilon(0.01));
  CHECK(all.percentile(99) == 300ms);
  const std::string text = stats.describe(8);
  CHECK_MESSAGE(contains(text, "4 requests in 400ms: 1 ok (2.5/s), 3 failed (75%:"), text);
  CHECK_MESSAGE(contains(text, "1 connection refused"), text);
  CHECK_MESSAGE(contains(text, "max 300ms over 3 answers"), text);
}

TEST_CASE("latency histogram: nearest-rank percentiles within 1%, never above the largest latency") {
  LatencyHistogram h;
  for (int ms = 1; ms <= 100; ++ms) {
    h.add(milliseconds(ms));
  }
  CHECK(h.count() == 100);
  // Nearest rank of 1..100 ms: p50 = 50 ms, p90 = 90 ms, p99 = 99 ms, p100 = 100 ms.
  CHECK(h.percentile(50).count() == doctest::Approx(50'000).epsilon(0.01));
  CHECK(h.percentile(50) >= 50ms);
  CHECK(h.percentile(90).count() == doctest::Approx(90'000).epsilon(0.01));
  CHECK(h.percentile(99).count() == doctest::Approx(99'000).epsilon(0.01));
  CHECK(h.percentile(100) == 100ms);
  CHECK(h.max() == 100ms);
  LatencyHistogram other;
  other.add(5s);
  h.merge(other);
  CHECK(h.count() == 101);
  CHECK(h.max() == 5s);
  CHECK(h.percentile(100) == 5s);
  CHECK(LatencyHistogram{}.percentile(99) == 0us);
}

TEST_CASE("http load against the demo service: rate x duration requests, throughput, and a slow server's queue") {
  faultline::demo::ServerOptions options;
  options.threads = 2;
  auto server = faultline::demo::Server::start(options);
  REQUIRE(server.has_value());
  const auto port = (*server)->endpoint().port();
  HttpProbe probe;
  probe.url = "http://127.0.0.1:" + std::to_string(port) + "/";
  probe.load = LoadSpec{200, 16, 1000ms};
  auto sample = runHttpProbe(probe);
  INFO(sample.detail);
  REQUIRE(sample.load != nullptr);
  CHECK(sample.ok);
  CHECK(sample.load->requests == 200);
  CHECK(sample.load->succeeded == 200);
  CHECK(sample.value == std::optional<double>(200));
  CHECK(contains(sample.detail, "200 requests in 1s: 200 ok (200/s), 0 failed"));

  // 100 ms per answer, one request at a time, 50/s for 400 ms: 20 requests, the k-th waits for the
  // k before it and its latency from its scheduled time is about 100 + 80k ms.
  (*server)->setBehaviour(100ms, 0);
  probe.load = LoadSpec{50, 1, 400ms};
  probe.maxLatency = 5s;
  probe.timeout = 5s;
  sample = runHttpProbe(probe);
  INFO(sample.detail);
  REQUIRE(sample.load != nullptr);
  CHECK(sample.ok);
  CHECK(sample.load->succeeded == 20);
  CHECK(sample.load->waited == 19);
  CHECK(sample.load->okLatencies.percentile(5) >= 100ms);
  CHECK(sample.load->okLatencies.max() >= 100ms + 19 * 80ms);
  CHECK(sample.load->okLatencies.max() < 100ms + 19 * 80ms + 500ms);
  CHECK(sample.latency >= 1600ms);  // the sample's latency is the p99

  // Every 500 answer is a failed request, counted by its reason.
  (*server)->setBehaviour(0us, 100);
  probe.load = LoadSpec{100, 8, 200ms};
  sample = runHttpProbe(probe);
  INFO(sample.detail);
  REQUIRE(sample.load != nullptr);
  CHECK_FALSE(sample.ok);
  CHECK(sample.load->failed == 20);
  CHECK(sample.load->failures.at("status 500, expected 200") == 20);
  CHECK(sample.value == std::optional<double>(0));
  // A 500 is an answer: its latency counts, as an error.
  CHECK(sample.load->unanswered == 0);
  CHECK(sample.load->failedLatencies.count() == 20);
  CHECK(contains(sample.detail, "over 20 answers"));
}

TEST_CASE("tcp load: connects at the rate; a closed port fails every request as refused") {
  auto server = faultline::demo::Server::start({});
  REQUIRE(server.has_value());
  TcpProbe probe;
  probe.host = "127.0.0.1";
  probe.port = (*server)->endpoint().port();
  probe.load = LoadSpec{500, 32, 500ms};
  auto sample = runTcpProbe(probe);
  INFO(sample.detail);
  REQUIRE(sample.load != nullptr);
  CHECK(sample.ok);
  CHECK(sample.load->succeeded == 250);
  CHECK(sample.load->throughput() == doctest::Approx(500));
  (*server)->stop();
  sample = runTcpProbe(probe);
  INFO(sample.detail);
  REQUIRE(sample.load != nullptr);
  CHECK_FALSE(sample.ok);
  CHECK(sample.load->failed == 250);
  CHECK(sample.load->failures.at("connection refused") == 250);
  CHECK(contains(sample.detail, "250 requests in 500ms: 0 ok (0/s), 250 failed (100%: 250 connection refused)"));
  // No refusal enters the latencies: there is no answer to time.
  CHECK(sample.load->unanswered == 250);
  CHECK(sample.load->okLatencies.count() == 0);
  CHECK(sample.load->failedLatencies.count() == 0);
  CHECK(sample.latency == 0us);
  CHECK(contains(sample.detail, "no answer to time"));
}

TEST_CASE("http load against a port that refuses: every request failed, none in the latency percentiles") {
  // A port of the demo service, closed again: connections to it are refused (loopback answers RST).
  auto server = faultline::demo::Server::start({});
  REQUIRE(server.has_value());
  const auto port = (*server)->endpoint().port();
  (*server)->stop();
  HttpProbe probe;
  probe.url = "http://127.0.0.1:" + std::to_string(port) + "/";
  probe.load = LoadSpec{200, 16, 500ms};
  const auto sample = runHttpProbe(probe);
  INFO(sample.detail);
  REQUIRE(sample.load != nullptr);
  CHECK_FALSE(sample.ok);
  CHECK(sample.load->requests == 100);
  CHECK(sample.load->failed == 100);
  CHECK(sample.load->unanswered == 100);
  CHECK(sample.load->okLatencies.count() == 0);
  CHECK(sample.load->failedLatencies.count() == 0);
  CHECK(sample.value == std::optional<double>(0));
  CHECK(contains(sample.detail, "no answer to time"));
}
