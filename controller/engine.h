// The run engine: turns a parsed experiment into a run on the fleet.
//
// Order: resolve targets (once, recorded) → check the steady state (nothing is injected if it
// does not hold) → method steps in order (a fault step injects on every target, samples the
// probes every `every` while it is held, then reverts and waits for every agent to confirm) →
// check the steady state after rollback → verdict. Rollback always runs: on success, violation,
// abort and error. Every event and sample goes to the record store and to the event sink.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>

#include "controller/experiment.h"
#include "controller/fleet.h"
#include "controller/probe.h"
#include "controller/store.h"

namespace faultline::controller {

// Asks a run to stop; wakes its waits at once. Thread-safe.
class StopSignal {
 public:
  void request(std::string reason);
  [[nodiscard]] bool requested() const;
  [[nodiscard]] std::string reason() const;
  // Sleeps up to d; true when a stop was requested (before or during the wait).
  bool waitFor(std::chrono::steady_clock::duration d) const;

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  bool requested_ = false;
  std::string reason_;
};

struct RunRequest {
  std::string runId;
  std::string fileName;
  std::string fileSha256;
  std::string trigger;  // cli, schedule, ci
  Experiment experiment;
};

struct EngineOptions {
  std::chrono::milliseconds applyTimeout{10'000};   // every agent must report applied by then
  std::chrono::milliseconds revertTimeout{10'000};  // every agent must confirm the revert by then
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
