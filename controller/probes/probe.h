// Probes of the steady-state hypothesis. One sample = one request.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <tl/expected.hpp>

#include "controller/experiment/experiment.h"
#include "controller/experiment/url.h"

namespace faultline::controller {

struct Sample {
  bool ok = false;
  std::chrono::microseconds latency{0};  // request start to full answer (or to the failure)
  std::string detail;                    // "200 in 3.1ms", "timeout after 2s", "connection refused"
  std::optional<double> value;           // prometheus: the query's value, when one was read
};

class ProbeRunner {
 public:
  virtual ~ProbeRunner() = default;
  // Runs one sample of any kind; blocks at most the probe's timeout (plus a few ms; a host name
  // whose resolution hangs can delay an http, tcp or prometheus sample further). Thread-safe.
  // Never throws for what the probed system does: a timeout, refused connection, wrong status,
  // body or exit code, latency above maxLatency, an unparsable Prometheus answer, a program
  // that cannot be started, or a URL parseHttpUrl() refuses is a failed sample (detail says why;
  // nothing is sent for a bad URL).
  [[nodiscard]] virtual Sample run(const Probe& probe) = 0;
};

// The runner of every probe kind: http and prometheus over HTTP/1.1 on plain TCP (Boost.Beast),
// tcp connects (Boost.Asio), command with fork/exec (probe_command.cpp).
[[nodiscard]] std::unique_ptr<ProbeRunner> makeProbeRunner();

// One sample of each kind; what makeProbeRunner() dispatches to. Thread-safe, blocking.
[[nodiscard]] Sample runHttpProbe(const HttpProbe& probe);
[[nodiscard]] Sample runTcpProbe(const TcpProbe& probe);
[[nodiscard]] Sample runCommandProbe(const CommandProbe& probe);
[[nodiscard]] Sample runPrometheusProbe(const PrometheusProbe& probe);

// "0.4ms", "3.1ms", "612ms", "1.25s"
[[nodiscard]] std::string formatLatency(std::chrono::microseconds d);
// "500ms", "2s", "1.5s"
[[nodiscard]] std::string formatLimit(std::chrono::milliseconds d);

}  // namespace faultline::controller
