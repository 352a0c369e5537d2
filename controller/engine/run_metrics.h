// The controller's metrics of runs (docs/operations.md, "Metrics"): what the run engine reports
// as a run goes, kept in a metrics::Registry that `faultline controller --metrics-listen` serves.
// Labels are bounded: trigger, verdict, fault kind, probe kind; probe and SLO names (bounded by
// the experiment format's caps); the run id only on gauges of active runs, whose series are
// removed when the run ends. Nothing carries a secret: probe and SLO names are the experiment's
// names, never its URLs, commands or variables.
// Thread-safe: the engine calls it from each run's thread and from the fleet's report thread.
#pragma once

#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/metrics.h"
#include "faultline/v1/control.pb.h"

namespace faultline::controller {

class RunMetrics {
 public:
  // Registers the families in registry, which must outlive this.
  explicit RunMetrics(metrics::Registry& registry);

  void runStarted(const std::string& runId, const std::string& trigger);
  // Also removes every series of the run's gauges (faults active, SLIs, burn).
  void runFinished(const std::string& runId, const std::string& trigger, v1::Verdict verdict);
  // A fault (one host) reported applied / no longer held (reverted, expired, dropped).
  void faultApplied(const std::string& runId, std::string_view kind);
  void faultEnded(const std::string& runId, std::string_view kind);
  // An agent reported a failed revert of a fault of this kind.
  void revertFailed(std::string_view kind);
  // One probe sample: latency observed when ok, failures counted.
  void probeSampled(const v1::ProbeSample& sample);
  // One SLO check: each SLI's value and threshold, the burn rate (skipped when not enough data).
  void sloChecked(const std::string& runId, const v1::SloCheck& check);

 private:
  // Notes a gauge series of an active run, to remove when it ends; false (nothing noted) when the
  // run is not active.
  bool track(const std::string& runId, metrics::GaugeFamily& family, std::vector<std::string> labels);

  metrics::CounterFamily& started_;
  metrics::CounterFamily& finished_;
  metrics::GaugeFamily& active_;
  metrics::GaugeFamily& faultActive_;
  metrics::CounterFamily& revertFailures_;
  metrics::HistogramFamily& probeLatency_;
  metrics::CounterFamily& probeSamples_;
  metrics::CounterFamily& probeFailures_;
  metrics::GaugeFamily& sli_;
  metrics::GaugeFamily& sliThreshold_;
  metrics::GaugeFamily& burn_;
  metrics::GaugeFamily& sloOk_;

  std::mutex mutex_;  // guards series_
  // Per active run: the gauge series to remove when it ends.
  std::map<std::string, std::set<std::pair<metrics::GaugeFamily*, std::vector<std::string>>>> series_;
};

// The verdict as a label value: held, violated, not_steady, aborted, error, unspecified.
[[nodiscard]] std::string_view verdictLabel(v1::Verdict verdict);

}  // namespace faultline::controller
