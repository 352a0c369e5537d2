// Probes of the steady-state hypothesis. One sample = one request.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <tl/expected.hpp>

#include "controller/experiment.h"

namespace faultline::controller {

// A probe URL, as the prober uses it.
struct HttpUrl {
  std::string host;  // a host name, an IPv4 address, or an IPv6 address without its brackets
  uint16_t port = 80;
  std::string target;  // path and query as sent in the request line, at least "/"; no fragment
};

// The one parser of probe URLs: the experiment validator and the prober both call it, so a URL
// that validates is one the prober can use. Accepted: http://HOST[:PORT][/PATH][?QUERY][#FRAGMENT]
// - the scheme in any letter case (HTTP:// too, RFC 3986); https:// is refused (no TLS in v1);
// - HOST a name of letters, digits, '-', '_' and '.' (labels of 1-63 characters, 253 in all),
//   a dotted-quad IPv4 address, or an IPv6 address in brackets (no zone id);
// - at most one PORT, from 1 to 65535 (default 80); no user information (user@host);
// - only printable ASCII: no whitespace, control characters or raw non-ASCII bytes;
// - the fragment is dropped; an empty path is "/".
// The error names the URL, what is wrong and the accepted form: "invalid URL 'X': WHY; accepted: ...".
// Pure function: no name resolution, no I/O; thread-safe.
[[nodiscard]] tl::expected<HttpUrl, std::string> parseHttpUrl(std::string_view text);

struct Sample {
  bool ok = false;
  std::chrono::microseconds latency{0};  // request start to full answer (or to the failure)
  std::string detail;                    // "200 in 3.1ms", "timeout after 2s", "connection refused"
};

class ProbeRunner {
 public:
  virtual ~ProbeRunner() = default;
  // Runs one sample; blocks at most probe.http.timeout (plus a few ms). Thread-safe.
  // A timeout, refused connection, wrong status or latency above maxLatency is a failed sample;
  // so is a URL parseHttpUrl() refuses (detail: its error text; nothing is sent).
  [[nodiscard]] virtual Sample run(const Probe& probe) = 0;
};

// HTTP/1.1 over plain TCP (Boost.Beast).
[[nodiscard]] std::unique_ptr<ProbeRunner> makeHttpProbeRunner();

}  // namespace faultline::controller
