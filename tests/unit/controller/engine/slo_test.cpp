// SLO evaluation (controller/engine/slo.h) against hand-computed values.
#include <optional>
#include <vector>

#include <doctest/doctest.h>

#include "controller/engine/slo.h"

using namespace faultline;
using namespace faultline::controller;

TEST_CASE("evaluateSlo: nearest-rank percentiles, error share, burn rate, value") {
  Slo slo = *parseObjective("p50 < 6ms and p90 <= 9ms and p99 < 10ms and errors < 5% and max < 20ms over 10s");
  slo.name = "api";
  slo.probe = "web";
  std::vector<SliSample> samples;
  for (int i = 1; i <= 10; ++i) {
    samples.push_back(SliSample{i != 7, static_cast<double>(i), std::nullopt});
  }
  const auto check = evaluateSlo(slo, samples);
  CHECK(check.samples() == 10);
  REQUIRE(check.measures_size() == 5);
  CHECK(check.measures(0).value() == 5);  // p50 of 1..10: rank 5
  CHECK(check.measures(0).ok());
  CHECK(check.measures(1).value() == 9);
  CHECK(check.measures(1).ok());
  CHECK(check.measures(2).value() == 10);
  CHECK_FALSE(check.measures(2).ok());  // 10 < 10 fails
  CHECK(check.measures(3).value() == doctest::Approx(10));
  CHECK_FALSE(check.measures(3).ok());
  CHECK(check.measures(4).ok());
  CHECK(check.burn_rate() == doctest::Approx(2.0));
  CHECK_FALSE(check.ok());
  CHECK(describeSloCheck(check).find("p99 10ms (< 10ms) FAILED") != std::string::npos);

  Slo saturation = *parseObjective("saturation < 0.8");
  CHECK(evaluateSlo(saturation, {{true, 1, 0.5}, {true, 1, 0.7}}).ok());
  CHECK_FALSE(evaluateSlo(saturation, {{true, 1, 0.5}, {true, 1, 0.9}}).ok());  // the newest value counts
  CHECK_FALSE(evaluateSlo(saturation, {{false, 1, std::nullopt}}).ok());        // no value: not held
}

TEST_CASE("evaluateSlo: a window of load samples counts requests: error share, throughput, request latencies") {
  using namespace std::chrono_literals;
  // Two samples of 1 s each: 100 requests of 1..100 ms, all ok; then 100 requests, 90 ok at 10 ms
  // and 10 timeouts at 2 s.
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
  CHECK(check.measures(4).value() == doctest::Approx(2000));  // rank 198: a timeout
  CHECK_FALSE(check.measures(4).ok());
  CHECK_FALSE(check.ok());
  CHECK(describeSloCheck(check).find("throughput 95/s (>= 95/s)") != std::string::npos);
  // A probe without load: throughput is its value, as before.
  Slo value = *parseObjective("throughput > 100");
  CHECK(evaluateSlo(value, {{true, 1, 150.0, nullptr}}).ok());
  CHECK_FALSE(evaluateSlo(value, {{true, 1, 50.0, nullptr}}).ok());
}
