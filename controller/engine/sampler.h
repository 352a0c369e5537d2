// The probes of a run, each sampling on a schedule of its own.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/timestamp.pb.h>

#include "controller/experiment/experiment.h"
#include "controller/probes/probe.h"

namespace faultline::controller {

// Each probe samples on a schedule of its own: a thread per probe starts a sample every `every`
// (the first at once), each on a thread of its own, whether or not the probe's earlier samples
// have ended: a slow or hanging server cannot thin out its own samples nor delay another probe's
// (open model). A sample still running at a later tick is counted when it ends (its probe's
// timeout bounds it, and a timeout is a failed sample). At most kMaxInFlight samples of one probe
// run at once; a tick that finds that many is skipped (counted by skipped()). A load probe's
// sample (http or tcp `load:`) is the probe's whole rate and concurrency: its next sample starts
// when it has ended, never beside it, so the load caps hold. Each sample carries
// the phase and step that were set when it started.
//
// Thread-safety: start(), stop() and the destructor from one thread (the run's); setPhase(),
// take(), waitUntil() and skipped() from any thread. stop() blocks until every sample in flight
// has ended (at most the longest probe timeout); the samples that ended are still in take().
class ProbeSampler {
 public:
  static constexpr size_t kMaxInFlight = 32;

  struct Taken {
    size_t probe = 0;  // index into the probes given to the constructor
    Sample sample;
    std::string phase;
    std::string step;
    google::protobuf::Timestamp at;                 // start, wall clock
    std::chrono::steady_clock::time_point started;  // start, steady clock
  };

  // probes and runner must outlive the sampler.
  ProbeSampler(const std::vector<Probe>& probes, ProbeRunner& runner, std::chrono::milliseconds every);
  ~ProbeSampler();
  ProbeSampler(const ProbeSampler&) = delete;
  ProbeSampler& operator=(const ProbeSampler&) = delete;

  void start();
  void stop();
  // The phase ("before", "during", ...) and method step ("" outside the method) of the samples
  // that start from now on.
  void setPhase(std::string phase, std::string step = "");
  // Every sample that ended since the last call, in the order they ended.
  [[nodiscard]] std::vector<Taken> take();
  // Blocks until a sample has ended (true) or until deadline (false).
  bool waitUntil(std::chrono::steady_clock::time_point deadline);
  // Ticks skipped because kMaxInFlight samples of the probe were running.
  [[nodiscard]] size_t skipped() const;

 private:
  void loop(size_t index);
  void sampleOnce(size_t index, Taken started);

  const std::vector<Probe>& probes_;
  ProbeRunner& runner_;
  const std::chrono::milliseconds every_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;   // the probe threads: stop
  std::condition_variable ended_;  // take()'s callers: a sample ended
  bool stopping_ = false;
  std::string phase_;
  std::string step_;
  std::deque<Taken> done_;
  std::vector<size_t> inFlight_;  // per probe
  size_t skipped_ = 0;
  std::vector<std::thread> threads_;  // the tickers, one per probe
  std::condition_variable idle_;      // a sample ended (stop() waits for none in flight)
};

}  // namespace faultline::controller
