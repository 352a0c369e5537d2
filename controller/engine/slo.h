// SLO evaluation: the SLIs of a window of probe samples against an SLO's objective. Pure;
// thread-safe.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "controller/experiment/experiment.h"
#include "controller/probes/load.h"
#include "faultline/v1/control.pb.h"

namespace faultline::controller {

// One probe sample as an SLI source.
struct SliSample {
  bool ok = false;
  double latencyMs = 0;                   // failed samples too: a timeout counts as its timeout
  std::optional<double> value;            // prometheus probes
  std::shared_ptr<const LoadStats> load;  // a load sample: its requests are the SLIs' units
};

// Evaluates every term of slo over samples (non-empty; the window's, oldest first): latency
// percentiles by nearest rank over all samples, errors as the percent of failed samples, value
// as the newest sample's value (a term fails when no sample has one). burn_rate is errors divided
// by the threshold of the first 'errors <' term (0 without one). A window with load samples
// (load.h) counts requests instead: latency percentiles over every request's latency (from its
// scheduled time; 1% buckets), errors as the percent of failed requests, throughput as the
// successful requests per second of load (another probe's throughput is its value). Sets slo,
// probe, objective, ok, samples, measures, burn_rate; not at or phase. Pure.
[[nodiscard]] v1::SloCheck evaluateSlo(const Slo& slo, const std::vector<SliSample>& samples);

// "p99 412ms (< 300ms), errors 0% (< 1%) over 12 samples"
[[nodiscard]] std::string describeSloCheck(const v1::SloCheck& check);

}  // namespace faultline::controller
