#include "controller/engine/sampler.h"

#include <algorithm>

#include "agent/faults/fault.h"

namespace faultline::controller {

ProbeSampler::ProbeSampler(const std::vector<Probe>& probes, ProbeRunner& runner, std::chrono::milliseconds every)
    : probes_(probes), runner_(runner), every_(every) {}

ProbeSampler::~ProbeSampler() {
  stop();
}

void ProbeSampler::start() {
  if (!threads_.empty()) {
    return;
  }
  inFlight_.assign(probes_.size(), 0);
  for (size_t i = 0; i < probes_.size(); ++i) {
    threads_.emplace_back([this, i] { loop(i); });
  }
}

void ProbeSampler::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : threads_) {
    if (t.joinable()) {
      t.join();
    }
  }
  threads_.clear();
  // The samples in flight run on detached threads: wait until each has ended and been queued.
  std::unique_lock lock(mutex_);
  idle_.wait(lock, [&] {
    for (const auto n : inFlight_) {
      if (n > 0) {
        return false;
      }
    }
    return true;
  });
}

size_t ProbeSampler::skipped() const {
  std::lock_guard lock(mutex_);
  return skipped_;
}

void ProbeSampler::setPhase(std::string phase, std::string step) {
  std::lock_guard lock(mutex_);
  phase_ = std::move(phase);
  step_ = std::move(step);
}

std::vector<ProbeSampler::Taken> ProbeSampler::take() {
  std::lock_guard lock(mutex_);
  std::vector<Taken> out(std::make_move_iterator(done_.begin()), std::make_move_iterator(done_.end()));
  done_.clear();
  return out;
}

bool ProbeSampler::waitUntil(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  return ended_.wait_until(lock, deadline, [&] { return !done_.empty(); });
}

void ProbeSampler::loop(size_t index) {
  using Clock = std::chrono::steady_clock;
  auto next = Clock::now();
  while (true) {
    Taken t;
    {
      std::unique_lock lock(mutex_);
      if (wake_.wait_until(lock, next, [&] { return stopping_; })) {
        return;
      }
      next += every_;
      const Probe& probe = probes_[index];
      if (probe.http.load || probe.tcp.load) {
        // A load sample is the probe's whole rate and concurrency (the caps): the next starts
        // after it has ended, never beside it.
        idle_.wait(lock, [&] { return stopping_ || inFlight_[index] == 0; });
        if (stopping_) {
          return;
        }
      } else if (inFlight_[index] >= kMaxInFlight) {
        ++skipped_;
        continue;
      }
      ++inFlight_[index];
      t.phase = phase_;
      t.step = step_;
    }
    t.probe = index;
    t.at = agent::nowTimestamp();
    t.started = Clock::now();
    // Detached: stop() waits for inFlight_ to drain, and the thread touches only this sampler's
    // members and the runner, which outlive it.
    std::thread([this, index, t = std::move(t)]() mutable { sampleOnce(index, std::move(t)); }).detach();
    // A ticker that fell behind (a busy machine) starts the next sample now, never a burst.
    next = std::max(next, Clock::now());
  }
}

void ProbeSampler::sampleOnce(size_t index, Taken t) {
  t.sample = runner_.run(probes_[index]);
  // Notified under the lock: once it is released this thread touches nothing of the sampler, which
  // stop() may then let its owner destroy.
  std::lock_guard lock(mutex_);
  done_.push_back(std::move(t));
  --inFlight_[index];
  ended_.notify_all();
  idle_.notify_all();
}

}  // namespace faultline::controller
