// The run engine: turns a parsed experiment into a run on the fleet.
//
// Order: resolve targets (once, recorded) → verify the steady state (before: each probe samples
// until every SLO has its minSamples and every other probe one sample; nothing is injected if it
// does not hold: verdict not steady) → method steps in order (a fault step injects on every
// target, holds, then reverts and waits for every agent to confirm) → after the rollback, settle,
// then judge the after window (steadyState.after) → time to recover of every fault step
// (step.recovered, step.not_recovered events) → verdict. Rollback always runs: on success,
// violation, abort and error. Every event, sample and SLO check goes to the record store and to
// the event sink.
//
// The probes sample the whole run, each on its own schedule (ProbeSampler, sampler.h): before,
// during faults, wait and probe steps, between steps, settle and after. Each sample is recorded
// with its phase and step.
//
// Stop conditions, judged as each sample arrives: a failed sample of a guard probe at any point
// after the before phase (during a fault, a wait step, a probe step, between steps), or an SLO
// whose error budget burns above its maxBurnRate while faults are held, aborts the run (verdict
// aborted); while faults are held, a failed sample of a probe no SLO covers, or an SLO violated
// over a window of at least its minSamples samples, stops it as violated. Either way the held
// faults are reverted at once, no later step starts, the probes go on after the rollback for the
// record, and the event stop.condition names the reason.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <tl/expected.hpp>

#include "controller/engine/fleet.h"
#include "controller/engine/run_metrics.h"
#include "controller/engine/slo.h"
#include "controller/engine/targets.h"
#include "controller/experiment/experiment.h"
#include "controller/probes/probe.h"
#include "controller/store/store.h"

namespace faultline::controller {

// Who asked a run to stop: its faults' fault.ended events say aborted or halted.
enum class StopCause {
  kAbort,  // faultline abort (AbortRun), Ctrl-C of faultline run, the controller stopping, a schedule's replace
  kHalt,   // faultline halt (Halt): every run and every fault
};

// Asks a run to stop; wakes its waits at once. The first request wins. Thread-safe.
class StopSignal {
 public:
  void request(std::string reason, StopCause cause = StopCause::kAbort);
  [[nodiscard]] bool requested() const;
  [[nodiscard]] std::string reason() const;
  [[nodiscard]] StopCause cause() const;
  // Sleeps up to d; true when a stop was requested (before or during the wait).
  bool waitFor(std::chrono::steady_clock::duration d) const;

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  bool requested_ = false;
  std::string reason_;
  StopCause cause_ = StopCause::kAbort;
};

struct RunRequest {
  std::string runId;
  std::string fileName;
  std::string fileSha256;
  std::string trigger;  // cli, schedule, ci
  Experiment experiment;
  // (name, value) of the secret variables (--secret-var, `secret: true` in the file's variables,
  // or names isSecretVariableName() says are secrets): every occurrence of a value in the run's events, probe samples
  // and verdict reason is recorded (and sent to the event sink) as ${NAME} instead.
  std::vector<std::pair<std::string, std::string>> secrets{};
  // A scheduled run (trigger "schedule"): its schedule's name and its fire's time, recorded.
  std::string schedule{};
  std::optional<google::protobuf::Timestamp> fireAt{};
};

struct EngineOptions {
  std::chrono::milliseconds applyTimeout{10'000};   // every agent must report applied by then
  std::chrono::milliseconds revertTimeout{10'000};  // every agent must confirm the revert by then
  // Seed of the random choice of random(n) and percent(p) targets; unset: a fresh one per run
  // (std::random_device). The seed used is recorded in the targets.resolved event.
  std::optional<uint64_t> targetSeed;
  // A fault step's start time is this far ahead of the moment the controller sends its Injects,
  // so that every host receives them before it and all start at the same instant. Agents refuse a
  // start_at more than 30 s from their own clock (agent/session/agent.h, kMaxStartAhead and
  // kMaxStartBehind): keep it well under that.
  std::chrono::milliseconds startLead{250};
  // The controller's metrics (--metrics-listen); null: none. Must outlive the engine's runs.
  RunMetrics* metrics = nullptr;
};

class RunEngine {
 public:
  using EventSink = std::function<void(const v1::RunEvent&)>;
  // All references must outlive the engine. sink may be empty.
  RunEngine(Fleet& fleet, ProbeRunner& probes, RecordStore& store, EventSink sink, EngineOptions options = {});

  // Runs to the end on the calling thread (blocks for the experiment's length) and returns the
  // verdict. stop: abort (faults are reverted at once, the run is recorded as aborted).
  v1::Verdict run(const RunRequest& request, const StopSignal& stop);

 private:
  Fleet& fleet_;
  ProbeRunner& probes_;
  RecordStore& store_;
  EventSink sink_;
  EngineOptions options_;
};

// The exit code of `faultline run` for a verdict: held 0, violated or not steady 1, aborted 2,
// error 3.
[[nodiscard]] int exitCodeFor(v1::Verdict verdict);

}  // namespace faultline::controller
