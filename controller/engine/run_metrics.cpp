#include "controller/engine/run_metrics.h"

#include <utility>

namespace faultline::controller {
namespace {

bool isLatency(const std::string& sli) {
  return sli == "p50" || sli == "p90" || sli == "p95" || sli == "p99" || sli == "max";
}

}  // namespace

std::string_view verdictLabel(v1::Verdict verdict) {
  switch (verdict) {
    case v1::VERDICT_HELD:
      return "held";
    case v1::VERDICT_VIOLATED:
      return "violated";
    case v1::VERDICT_ABORTED:
      return "aborted";
    case v1::VERDICT_ERROR:
      return "error";
    case v1::VERDICT_NOT_STEADY:
      return "not_steady";
    default:
      return "unspecified";
  }
}

RunMetrics::RunMetrics(metrics::Registry& r)
    : started_(r.counter("faultline_runs_started_total", "Runs started, by trigger (cli, ci, schedule, gameday, ...)",
                         {"trigger"})),
      finished_(
          r.counter("faultline_runs_finished_total", "Runs finished, by verdict and trigger", {"verdict", "trigger"})),
      active_(r.gauge("faultline_runs_active", "Runs in progress")),
      faultActive_(r.gauge("faultline_fault_active",
                           "Hosts holding a fault of this kind in this active run (0 between faults; the series "
                           "goes when the run ends)",
                           {"run_id", "kind"})),
      revertFailures_(r.counter("faultline_revert_failures_total",
                                "Reverts an agent reported failed (it retries), or that can never succeed, by fault "
                                "kind",
                                {"kind"})),
      probeLatency_(r.histogram("faultline_probe_latency_seconds",
                                "Latency of the successful samples of each probe, in seconds",
                                metrics::latencyBuckets(), {"probe", "kind"})),
      probeSamples_(r.counter("faultline_probe_samples_total", "Samples taken of each probe", {"probe", "kind"})),
      probeFailures_(r.counter("faultline_probe_failures_total", "Failed samples of each probe", {"probe", "kind"})),
      sli_(r.gauge("faultline_slo_sli",
                   "Each SLI of an SLO at its last check in an active run: seconds for latencies (p50, p90, p95, "
                   "p99, max), percent for errors, the probe's value for value",
                   {"run_id", "slo", "sli"})),
      sliThreshold_(r.gauge("faultline_slo_threshold",
                            "The objective's threshold of each SLI, in the unit of faultline_slo_sli",
                            {"run_id", "slo", "sli"})),
      burn_(r.gauge("faultline_slo_burn_rate",
                    "Error budget burn rate of each SLO at its last check in an active run (errors / budget; 1 "
                    "spends the budget exactly over the window)",
                    {"run_id", "slo"})),
      sloOk_(r.gauge("faultline_slo_ok", "1 when the SLO held at its last check in an active run, else 0",
                     {"run_id", "slo"})) {
  active_.with({}).set(0);
}

bool RunMetrics::track(const std::string& runId, metrics::GaugeFamily& family, std::vector<std::string> labels) {
  std::lock_guard lock(mutex_);
  auto it = series_.find(runId);
  if (it == series_.end()) {
    return false;  // not started, or already finished: a late report creates no series
  }
  it->second.emplace(&family, std::move(labels));
  return true;
}

void RunMetrics::runStarted(const std::string& runId, const std::string& trigger) {
  started_.with({trigger}).inc();
  active_.with({}).add(1);
  std::lock_guard lock(mutex_);
  series_[runId];
}

void RunMetrics::runFinished(const std::string& runId, const std::string& trigger, v1::Verdict verdict) {
  finished_.with({std::string(verdictLabel(verdict)), trigger}).inc();
  std::set<std::pair<metrics::GaugeFamily*, std::vector<std::string>>> gone;
  bool known = false;
  {
    std::lock_guard lock(mutex_);
    if (auto it = series_.find(runId); it != series_.end()) {
      gone = std::move(it->second);
      series_.erase(it);
      known = true;
    }
  }
  if (known) {
    active_.with({}).add(-1);
  }
  for (const auto& [family, labels] : gone) {
    family->remove(labels);
  }
}

void RunMetrics::faultApplied(const std::string& runId, std::string_view kind) {
  std::vector<std::string> labels{runId, std::string(kind)};
  if (track(runId, faultActive_, labels)) {
    faultActive_.with(labels).add(1);
  }
}

void RunMetrics::faultEnded(const std::string& runId, std::string_view kind) {
  std::vector<std::string> labels{runId, std::string(kind)};
  if (track(runId, faultActive_, labels)) {
    faultActive_.with(labels).add(-1);
  }
}

void RunMetrics::revertFailed(std::string_view kind) {
  revertFailures_.with({std::string(kind)}).inc();
}

void RunMetrics::probeSampled(const v1::ProbeSample& sample) {
  const std::vector<std::string> labels{sample.probe(), sample.kind()};
  probeSamples_.with(labels).inc();
  if (sample.ok()) {
    probeLatency_.with(labels).observe(sample.latency_ms() / 1000.0);
  } else {
    probeFailures_.with(labels).inc();
  }
}

void RunMetrics::sloChecked(const std::string& runId, const v1::SloCheck& check) {
  if (check.not_enough_data()) {
    return;
  }
  for (const auto& m : check.measures()) {
    const double scale = isLatency(m.sli()) ? 0.001 : 1.0;
    std::vector<std::string> labels{runId, check.slo(), m.sli()};
    if (track(runId, sli_, labels) && track(runId, sliThreshold_, labels)) {
      sli_.with(labels).set(m.value() * scale);
      sliThreshold_.with(labels).set(m.threshold() * scale);
    }
  }
  std::vector<std::string> labels{runId, check.slo()};
  if (track(runId, burn_, labels) && track(runId, sloOk_, labels)) {
    burn_.with(labels).set(check.burn_rate());
    sloOk_.with(labels).set(check.ok() ? 1 : 0);
  }
}

}  // namespace faultline::controller
