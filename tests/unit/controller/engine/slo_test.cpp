// SLO evaluation (controller/engine/slo.h) against hand-computed values.
#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "controller/engine/slo.h"

using namespace faultline;
using namespace faultline::controller;
using namespace std::chrono_literals;

TEST_CASE("evaluateSlo: nearest-rank percentiles over the successful samples, error share, burn rate, value") {
  Slo slo = *parseObjective("p50 < 6ms and p90 <= 9ms and p99 < 10ms and errors < 5% and max < 20ms over 10s");
  slo.name = "api";
  slo.probe = "web";
  std::vector<SliSample> samples;
  for (int i = 1; i <= 10; ++i) {
    samples.push_back(SliSample{i != 7, static_cast<double>(i), std::nullopt});
  }
  const auto check = evaluateSlo(slo, samples);
  CHECK(check.samples() == 10);
  CHECK(check.min_samples() == kDefaultMinSamples);
  CHECK_FALSE(check.not_enough_data());
  REQUIRE(check.measures_size() == 5);
  // Latencies of the 9 successful samples: 1 2 3 4 5 6 8 9 10 (the failed 7th is not one).
  CHECK(check.measures(0).value() == 5);  // p50: rank ceil(0.5 * 9) = 5
  CHECK(check.measures(0).samples() == 9);
  CHECK(check.measures(0).ok());
  CHECK(check.measures(1).value() == 10);  // p90: rank ceil(0.9 * 9) = 9
  CHECK_FALSE(check.measures(1).ok());
  CHECK(check.measures(2).value() == 10);  // p99: rank 9
  CHECK_FALSE(check.measures(2).ok());     // 10 < 10 fails
  CHECK(check.measures(3).value() == doctest::Approx(10));
  CHECK(check.measures(3).samples() == 10);  // errors stand on every sample
  CHECK_FALSE(check.measures(3).ok());
  CHECK(check.measures(4).value() == 10);
  CHECK(check.measures(4).ok());
  CHECK(check.burn_rate() == doctest::Approx(2.0));
  CHECK_FALSE(check.ok());
  CHECK(describeSloCheck(check).find("p99 10ms (< 10ms, 9 successful sample(s)) FAILED") != std::string::npos);
  CHECK(describeSloCheck(check).find("over 10 sample(s)") != std::string::npos);

  Slo saturation = *parseObjective("saturation < 0.8");
  saturation.minSamples = 1;
  CHECK(evaluateSlo(saturation, {{true, 1, 0.5}, {true, 1, 0.7}}).ok());
  CHECK_FALSE(evaluateSlo(saturation, {{true, 1, 0.5}, {true, 1, 0.9}}).ok());  // the newest value counts
  CHECK_FALSE(evaluateSlo(saturation, {{false, 1, std::nullopt}}).ok());        // no value: not held
  CHECK(evaluateSlo(saturation, {{true, 1, 0.5}, {true, 1, std::nullopt}}).measures(0).samples() == 1);
}

TEST_CASE("evaluateSlo: percentiles of 20 latencies against hand-computed nearest ranks") {
  Slo slo = *parseObjective("p50 < 1s and p90 < 1s and p95 < 1s and p99 < 1s and max < 1s over 30s");
  std::vector<SliSample> samples;
  // 20 latencies given out of order: 5, 10, ..., 100 ms.
  for (int i : {7, 3, 20, 1, 15, 9, 11, 2, 19, 4, 18, 6, 13, 5, 17, 8, 16, 10, 14, 12}) {
    samples.push_back(SliSample{true, 5.0 * i, std::nullopt});
  }
  const auto check = evaluateSlo(slo, samples);
  REQUIRE(check.measures_size() == 5);
  CHECK(check.measures(0).value() == 50);   // p50: rank ceil(10) = 10 -> 50 ms
  CHECK(check.measures(1).value() == 90);   // p90: rank ceil(18) = 18 -> 90 ms
  CHECK(check.measures(2).value() == 95);   // p95: rank ceil(19) = 19 -> 95 ms
  CHECK(check.measures(3).value() == 100);  // p99: rank ceil(19.8) = 20 -> 100 ms
  CHECK(check.measures(4).value() == 100);
  for (const auto& m : check.measures()) {
    CHECK(m.samples() == 20);
  }
  CHECK(check.ok());
  // 11 samples: p95 is rank ceil(10.45) = 11, the maximum; the check says it stands on 11.
  samples.resize(11);
  const auto eleven = evaluateSlo(slo, samples);
  CHECK(eleven.measures(2).samples() == 11);
}

TEST_CASE("evaluateSlo: a window below minSamples is 'not enough data': neither held nor violated") {
  Slo slo = *parseObjective("errors < 20% over 10s");
  slo.name = "errors";
  // The first sample fails: 100% errors, yet one sample judges nothing.
  const auto one = evaluateSlo(slo, {{false, 0, std::nullopt}});
  CHECK(one.not_enough_data());
  CHECK_FALSE(one.ok());
  CHECK(one.samples() == 1);
  CHECK(one.min_samples() == 5);
  CHECK(describeSloCheck(one).rfind("not enough data: 1 of the 5 samples needed", 0) == 0);
  CHECK(describeSloCheck(one).find("FAILED") == std::string::npos);
  // Four good samples: not held either.
  const std::vector<SliSample> four(4, SliSample{true, 1, std::nullopt});
  CHECK(evaluateSlo(slo, four).not_enough_data());
  CHECK_FALSE(evaluateSlo(slo, four).ok());
  // The fifth makes a judgement: 1 failure in 5 is 20%, not below 20%.
  auto five = four;
  five.push_back(SliSample{false, 0, std::nullopt});
  const auto judged = evaluateSlo(slo, five);
  CHECK_FALSE(judged.not_enough_data());
  CHECK(judged.measures(0).value() == doctest::Approx(20));
  CHECK_FALSE(judged.ok());
  slo.minSamples = 2;
  CHECK_FALSE(evaluateSlo(slo, {{true, 1, std::nullopt}}).ok());
  CHECK(evaluateSlo(slo, {{true, 1, std::nullopt}, {true, 1, std::nullopt}}).ok());
  CHECK(evaluateSlo(slo, {}).not_enough_data());
}

TEST_CASE("evaluateSlo: failed samples and timeouts are errors, never latencies") {
  Slo slo = *parseObjective("p99 < 100ms and errors < 50% over 10s");
  slo.minSamples = 1;
  // Refused connections answer in 0.17 ms; a timeout after 2 s is a failure too. Neither is a latency.
  const std::vector<SliSample> samples{
      {true, 40, std::nullopt}, {false, 0.17, std::nullopt}, {true, 60, std::nullopt}, {false, 2000, std::nullopt}};
  const auto check = evaluateSlo(slo, samples);
  CHECK(check.measures(0).value() == 60);  // p99 of {40, 60}: rank 2
  CHECK(check.measures(0).samples() == 2);
  CHECK(check.measures(0).ok());
  CHECK(check.measures(1).value() == doctest::Approx(50));
  CHECK_FALSE(check.measures(1).ok());
  // Nothing but failures: no latency at all, and a latency term cannot hold.
  Slo latencyOnly = *parseObjective("p99 < 100ms");
  latencyOnly.minSamples = 1;
  const auto none = evaluateSlo(latencyOnly, {{false, 0.17, std::nullopt}, {false, 0.2, std::nullopt}});
  CHECK(std::isnan(none.measures(0).value()));
  CHECK(none.measures(0).samples() == 0);
  CHECK_FALSE(none.ok());
  CHECK(describeSloCheck(none).find("p99 none") != std::string::npos);
}

TEST_CASE("timeToRecover: from the revert to the first moment every SLO holds again, or nothing") {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point revert{std::chrono::seconds{1000}};
  Slo slo = *parseObjective("errors < 10% over 2s");
  slo.name = "web-errors";
  slo.probe = "web";
  slo.minSamples = 5;
  // Every 200 ms from the revert: failing for the first 2.1 s (a supervisor restarts the service
  // after 2 s), then answering.
  std::map<std::string, std::vector<TimedSample>> byProbe;
  for (int i = 0; i < 40; ++i) {
    const auto at = revert + std::chrono::milliseconds{200 * i};
    byProbe["web"].push_back(TimedSample{at, SliSample{at - revert >= 2100ms, 1, std::nullopt}});
  }
  const auto ttr = timeToRecover({slo}, {}, byProbe, revert, revert + 8s);
  REQUIRE(ttr.has_value());
  CHECK(*ttr == 2200ms);  // the first sample at or after 2.1 s
  // Observed only until 2.8 s: the window from 2.2 s holds 3 samples, fewer than 5.
  CHECK_FALSE(timeToRecover({slo}, {}, byProbe, revert, revert + 2800ms).has_value());
  // Never recovering.
  for (auto& s : byProbe["web"]) {
    s.sample.ok = false;
  }
  CHECK_FALSE(timeToRecover({slo}, {}, byProbe, revert, revert + 8s).has_value());
  // A probe no SLO covers must pass every sample from that moment on.
  std::map<std::string, std::vector<TimedSample>> plain;
  for (int i = 0; i < 10; ++i) {
    const auto at = revert + std::chrono::milliseconds{100 + 500 * i};
    plain["db"].push_back(TimedSample{at, SliSample{i != 0 && i != 3, 1, std::nullopt}});
  }
  const auto plainTtr = timeToRecover({}, {"db"}, plain, revert, revert + 10s);
  REQUIRE(plainTtr.has_value());
  CHECK(*plainTtr == 2100ms);  // the sample after the last failure (i = 4)
}

TEST_CASE("evaluateSlo: a window of load samples counts requests: error share, throughput, request latencies") {
  using namespace std::chrono_literals;
  // Two samples of 1 s each: 100 requests of 1..100 ms, all ok; then 100 requests, 90 ok at 10 ms
  // and 10 answered after 2 s, above the probe's maxLatency (failed, and their latency counts).
  auto first = std::make_shared<LoadStats>();
  first->requests = 100;
  first->succeeded = 100;
  first->duration = 1s;
  for (int ms = 1; ms <= 100; ++ms) {
    first->okLatencies.add(std::chrono::milliseconds(ms));
  }
  auto second = std::make_shared<LoadStats>();
  second->requests = 100;
  second->succeeded = 90;
  second->failed = 10;
  second->duration = 1s;
  for (int i = 0; i < 90; ++i) {
    second->okLatencies.add(10ms);
  }
  for (int i = 0; i < 10; ++i) {
    second->failedLatencies.add(2s);
  }
  const std::vector<SliSample> window{{true, 99, 100.0, first}, {false, 2000, 90.0, second}};
  Slo slo = *parseObjective("errors < 10% and throughput >= 95/s and p90 < 100ms and max < 3s and p99 < 1s");
  const auto check = evaluateSlo(slo, window);
  REQUIRE(check.measures_size() == 5);
  CHECK(check.measures(0).value() == doctest::Approx(5));  // 10 failed of 200 requests, not 1 of 2 samples
  CHECK(check.measures(0).ok());
  CHECK(check.burn_rate() == doctest::Approx(0.5));
  CHECK(check.measures(1).value() == doctest::Approx(95));  // 190 ok in 2 s of load
  CHECK(check.measures(1).ok());
  // 200 latencies: 1..100 ms, 90 x 10 ms, 10 x 2 s. Nearest rank 180 (p90) is 90 ms (1%).
  CHECK(check.measures(2).value() == doctest::Approx(90).epsilon(0.01));
  CHECK(check.measures(3).value() == doctest::Approx(2000));
  CHECK(check.measures(4).value() == doctest::Approx(2000));  // rank 198: a slow answer
  CHECK_FALSE(check.measures(4).ok());
  CHECK_FALSE(check.ok());
  CHECK(describeSloCheck(check).find("throughput 95/s (>= 95/s)") != std::string::npos);
  // A probe without load: throughput is its value, as before.
  Slo value = *parseObjective("throughput > 100");
  value.minSamples = 1;  // one sample judged (the default of 5 would say "not enough data")
  CHECK(evaluateSlo(value, {{true, 1, 150.0, nullptr}}).ok());
  CHECK_FALSE(evaluateSlo(value, {{true, 1, 50.0, nullptr}}).ok());
}

TEST_CASE("evaluateSlo: a load window's refused or timed-out requests are errors with no latency") {
  // 100 requests in 1 s: 50 ok at 20 ms, 10 answered 500 in 400 ms, 40 refused (no answer).
  auto stats = std::make_shared<LoadStats>();
  stats->requests = 100;
  stats->succeeded = 50;
  stats->failed = 50;
  stats->unanswered = 40;
  stats->duration = 1s;
  for (int i = 0; i < 50; ++i) {
    stats->okLatencies.add(20ms);
  }
  for (int i = 0; i < 10; ++i) {
    stats->failedLatencies.add(400ms);
  }
  Slo slo = *parseObjective("errors < 10% and p50 < 100ms and p90 < 100ms and max < 1s");
  auto check = evaluateSlo(slo, {{false, 400, 50.0, stats}});
  REQUIRE(check.measures_size() == 4);
  CHECK(check.measures(0).value() == doctest::Approx(50));  // 50 failed of 100, refusals included
  // The percentiles stand on the 60 answers: rank 30 (p50) is 20 ms, rank 54 (p90) a 400 ms 500.
  CHECK(check.measures(1).samples() == 60);
  CHECK(check.measures(1).value() == doctest::Approx(20).epsilon(0.01));
  CHECK(check.measures(2).value() == doctest::Approx(400).epsilon(0.01));
  CHECK_FALSE(check.measures(2).ok());
  CHECK(check.measures(3).value() == doctest::Approx(400));
  CHECK_FALSE(check.ok());
  CHECK(describeSloCheck(check).find("p90 400ms (< 100ms, 60 answered request(s)) FAILED") != std::string::npos);

  // Every request refused: the latencies are none (never 0 ms), and no latency term holds.
  auto refused = std::make_shared<LoadStats>();
  refused->requests = 100;
  refused->failed = 100;
  refused->unanswered = 100;
  refused->duration = 1s;
  Slo latencyOnly = *parseObjective("p99 < 500ms and max < 1s");
  check = evaluateSlo(latencyOnly, {{false, 0, 0.0, refused}});
  REQUIRE(check.measures_size() == 2);
  CHECK(std::isnan(check.measures(0).value()));
  CHECK(check.measures(0).samples() == 0);
  CHECK_FALSE(check.measures(0).ok());
  CHECK(std::isnan(check.measures(1).value()));
  CHECK_FALSE(check.ok());
  CHECK_FALSE(check.not_enough_data());  // 100 requests judged: violated, not "not enough data"
  CHECK(describeSloCheck(check).find("p99 none") != std::string::npos);
}
