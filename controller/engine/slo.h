// SLO evaluation: the SLIs of a window of probe samples against an SLO's objective, and the time
// a service took to recover after a fault. Pure; thread-safe.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "controller/experiment/experiment.h"
#include "controller/probes/load.h"
#include "faultline/v1/control.pb.h"

namespace faultline::controller {

// One probe sample as an SLI source. The per-sample interface every probe kind fills (http, tcp,
// command, prometheus and the kinds added later): ok or an error, a latency, an optional value.
struct SliSample {
  bool ok = false;
  double latencyMs = 0;                   // of a successful sample; a failed one's is never used
  std::optional<double> value;            // prometheus probes (and any kind that reads a number)
  std::shared_ptr<const LoadStats> load;  // a load sample: its requests are the SLIs' units
};

// Evaluates every term of slo over samples (the window's, oldest first).
//
// A window of fewer than slo.minSamples samples (of a load probe: requests) is not judged:
// not_enough_data is set, ok is false (and is no violation), the measures are still filled for
// the record. Otherwise:
// latency percentiles (p50, p90, p95, p99) by nearest rank (the value at rank ceil(p/100 * n) of
// the n sorted latencies) and max, over the successful samples only (a refused connection is no
// 0.2 ms answer; a timeout is a failure); with no successful sample a latency term has no value
// (NaN) and fails. errors: the percent of failed samples among all. value: the newest sample's
// value (a term fails when no sample has one). A window with load samples (load.h) counts
// requests instead: latency percentiles over every request's latency (from its scheduled time;
// 1% buckets), errors as the percent of failed requests, throughput as the successful requests
// per second of load (another probe's throughput is its value). Each measure's `samples` says how
// many samples its value stands on. burn_rate is errors divided by the threshold of the first
// 'errors <' term (0 without one). Sets slo, probe, objective, ok, samples, min_samples,
// not_enough_data, measures, burn_rate; not at or phase.
[[nodiscard]] v1::SloCheck evaluateSlo(const Slo& slo, const std::vector<SliSample>& samples);

// "p99 412ms (< 300ms, 11 samples), errors 0% (< 1%) over 12 samples";
// "not enough data: 3 of 5 samples (p99 ...)" when the window was too small.
[[nodiscard]] std::string describeSloCheck(const v1::SloCheck& check);

// A sample and the moment it started (steady clock).
struct TimedSample {
  std::chrono::steady_clock::time_point at;
  SliSample sample;
};

// Time to recover after a revert at revertAt, judged on the samples up to horizon (exclusive):
// the first moment t >= revertAt (a sample's start) from which every SLO holds over the samples of
// its window starting at t ([t, t + window), cut at horizon; at least its minSamples of them), and
// every probe in uncovered (probes no SLO covers) passes every sample from t to horizon (at least
// one). Returns t - revertAt, or nothing when no such t exists (not recovered within the span).
// byProbe: each probe's samples in time order. At most 1000 candidate moments are tried (evenly
// spread when there are more): the answer is exact to one sampling period. Pure.
[[nodiscard]] std::optional<std::chrono::steady_clock::duration> timeToRecover(
    const std::vector<Slo>& slos, const std::vector<std::string>& uncovered,
    const std::map<std::string, std::vector<TimedSample>>& byProbe, std::chrono::steady_clock::time_point revertAt,
    std::chrono::steady_clock::time_point horizon);

}  // namespace faultline::controller
