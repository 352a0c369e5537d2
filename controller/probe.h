// Probes of the steady-state hypothesis. One sample = one request.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "controller/experiment.h"

namespace faultline::controller {

struct Sample {
  bool ok = false;
  std::chrono::microseconds latency{0};  // request start to full answer (or to the failure)
  std::string detail;                    // "200 in 3.1ms", "timeout after 2s", "connection refused"
};

class ProbeRunner {
 public:
  virtual ~ProbeRunner() = default;
  // Runs one sample; blocks at most probe.http.timeout (plus a few ms). Thread-safe.
  // A timeout, refused connection, wrong status or latency above maxLatency is a failed sample.
  [[nodiscard]] virtual Sample run(const Probe& probe) = 0;
};

// HTTP/1.1 over plain TCP (Boost.Beast).
[[nodiscard]] std::unique_ptr<ProbeRunner> makeHttpProbeRunner();

}  // namespace faultline::controller
