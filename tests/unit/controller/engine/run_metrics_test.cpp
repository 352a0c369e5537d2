#include "controller/engine/run_metrics.h"

#include <doctest/doctest.h>

#include <string>

namespace faultline::controller {
namespace {

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("run metrics: a fault window, the run's gauges gone at its end, counters kept") {
  metrics::Registry registry;
  RunMetrics m(registry);
  m.runStarted("r1", "cli");
  CHECK(has(registry.render(), "faultline_runs_active 1\n"));
  m.faultApplied("r1", "network.delay");
  m.faultApplied("r1", "network.delay");  // a second host
  CHECK(has(registry.render(), "faultline_fault_active{run_id=\"r1\",kind=\"network.delay\"} 2\n"));
  m.faultEnded("r1", "network.delay");
  m.faultEnded("r1", "network.delay");
  CHECK(has(registry.render(), "faultline_fault_active{run_id=\"r1\",kind=\"network.delay\"} 0\n"));
  m.revertFailed("network.delay");

  v1::ProbeSample ok;
  ok.set_probe("web");
  ok.set_kind("http");
  ok.set_ok(true);
  ok.set_latency_ms(30);
  v1::ProbeSample failed = ok;
  failed.set_ok(false);
  m.probeSampled(ok);
  m.probeSampled(failed);

  v1::SloCheck check;
  check.set_slo("web-latency");
  check.set_ok(false);
  check.set_burn_rate(2.5);
  auto* p99 = check.add_measures();
  p99->set_sli("p99");
  p99->set_value(250);  // ms
  p99->set_threshold(200);
  auto* errors = check.add_measures();
  errors->set_sli("errors");
  errors->set_value(4);  // percent
  errors->set_threshold(1);
  m.sloChecked("r1", check);
  auto text = registry.render();
  CHECK(has(text, "faultline_slo_sli{run_id=\"r1\",slo=\"web-latency\",sli=\"p99\"} 0.25\n"));
  CHECK(has(text, "faultline_slo_threshold{run_id=\"r1\",slo=\"web-latency\",sli=\"p99\"} 0.2\n"));
  CHECK(has(text, "faultline_slo_sli{run_id=\"r1\",slo=\"web-latency\",sli=\"errors\"} 4\n"));
  CHECK(has(text, "faultline_slo_burn_rate{run_id=\"r1\",slo=\"web-latency\"} 2.5\n"));
  CHECK(has(text, "faultline_slo_ok{run_id=\"r1\",slo=\"web-latency\"} 0\n"));
  CHECK(has(text, "faultline_probe_samples_total{probe=\"web\",kind=\"http\"} 2\n"));
  CHECK(has(text, "faultline_probe_failures_total{probe=\"web\",kind=\"http\"} 1\n"));
  CHECK(has(text, "faultline_probe_latency_seconds_bucket{probe=\"web\",kind=\"http\",le=\"0.05\"} 1\n"));

  m.runFinished("r1", "cli", v1::VERDICT_VIOLATED);
  text = registry.render();
  CHECK_FALSE(has(text, "run_id=\"r1\""));  // no series of the run is left
  CHECK(has(text, "faultline_runs_active 0\n"));
  CHECK(has(text, "faultline_runs_started_total{trigger=\"cli\"} 1\n"));
  CHECK(has(text, "faultline_runs_finished_total{verdict=\"violated\",trigger=\"cli\"} 1\n"));
  CHECK(has(text, "faultline_revert_failures_total{kind=\"network.delay\"} 1\n"));
  CHECK(has(text, "faultline_probe_samples_total{probe=\"web\",kind=\"http\"} 2\n"));

  // A report that arrives after the end creates no series again.
  m.faultEnded("r1", "network.delay");
  m.sloChecked("r1", check);
  CHECK_FALSE(has(registry.render(), "run_id=\"r1\""));
}

TEST_CASE("run metrics: verdict labels") {
  CHECK(verdictLabel(v1::VERDICT_HELD) == "held");
  CHECK(verdictLabel(v1::VERDICT_NOT_STEADY) == "not_steady");
  CHECK(verdictLabel(v1::VERDICT_ERROR) == "error");
  CHECK(verdictLabel(v1::VERDICT_ABORTED) == "aborted");
}

}  // namespace faultline::controller
