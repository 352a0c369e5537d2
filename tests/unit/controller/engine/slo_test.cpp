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
