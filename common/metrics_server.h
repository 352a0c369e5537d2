// The HTTP endpoint Prometheus scrapes: GET /metrics serves a Registry's render() (text format
// 0.0.4), on a thread and io_context of its own (Boost.Beast over Boost.Asio), so that a slow or
// hostile client never delays anything else of the process (the agent's faults and reverts run on
// other threads and never wait for it).
//
// What it answers: GET /metrics (a query string is ignored) 200 with the metrics; any other path
// 404; any other method on /metrics 405 (Allow: GET). Bounds: a request's header at most
// kMaxHeaderBytes (431 past it), no body (413 for one), one request per connection (then it
// closes), each connection at most Limits::timeout from accept to the last byte sent, at most
// Limits::maxConnections at once (past that a new connection is closed at once). No
// authentication and no TLS: what it serves must carry no secret (docs/security.md).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <tl/expected.hpp>

#include "common/metrics.h"

namespace faultline::metrics {

inline constexpr size_t kMaxHeaderBytes = 8 * 1024;

// Where to listen: an IP literal (v4, or v6 in brackets) and a port.
struct ListenAddress {
  std::string host;  // "127.0.0.1", "::1", "0.0.0.0", ...
  uint16_t port = 0;
};

// Parses --metrics-listen: "PORT" or ":PORT" (loopback: 127.0.0.1), "HOST:PORT", "[V6]:PORT";
// HOST an IP address or "localhost" (127.0.0.1); no name is resolved. PORT 0-65535 (0: the kernel
// picks one). The error names the value and what is accepted.
[[nodiscard]] tl::expected<ListenAddress, std::string> parseListenAddress(std::string_view text);

struct ServerLimits {
  size_t maxConnections = 16;
  std::chrono::milliseconds timeout{10'000};
};

class MetricsServer {
 public:
  // Binds and starts the thread. registry must outlive the server. The error says what failed
  // (address in use, permission, ...) with the address.
  [[nodiscard]] static tl::expected<std::unique_ptr<MetricsServer>, std::string> start(const ListenAddress& address,
                                                                                       const Registry& registry,
                                                                                       ServerLimits limits = {});
  // Stops accepting, closes every connection and joins the thread.
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // The port bound (the kernel's pick for port 0).
  [[nodiscard]] uint16_t port() const;
  // "HOST:PORT" as bound ("[::1]:9464" for v6).
  [[nodiscard]] std::string address() const;

  struct Impl;

 private:
  explicit MetricsServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace faultline::metrics
