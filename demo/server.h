// faultline-demo: a small HTTP/1.1 service whose latency and error rate are set at start, for the
// quickstart and the end-to-end tests.
//
//   GET /         200 "ok\n" (padded to bodyBytes) after the configured latency, or 500 "error\n" with probability
//                 errorRatePercent (the latency applies to both)
//   GET /healthz  200 "ok\n" at once, always
//   POST /admin?latency=250ms&errorRate=50   sets the latency and/or error rate of GET / from now
//                 on (200 with the new values; 400 naming a bad parameter). For tests and demos:
//                 anyone who can reach the port can change the service's behaviour.
//   other paths   404; other methods 405
//
// Connections are kept alive (HTTP/1.1 rules); any number are served concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include <boost/asio/ip/tcp.hpp>
#include <tl/expected.hpp>

namespace faultline::demo {

struct ServerOptions {
  boost::asio::ip::tcp::endpoint listen{boost::asio::ip::make_address("127.0.0.1"), 0};  // port 0: any free port
  std::chrono::microseconds latency{0};  // added before every answer to GET /
  double errorRatePercent = 0;           // 0-100: share of GET / answered with 500
  size_t bodyBytes = 0;                  // GET / 200 body padded with '.' to this many bytes (≥ 3)
  unsigned threads = 1;                  // threads running the server's io_context (at least 1)
  std::optional<uint64_t> seed;          // seeds the error draw; unset: random
};

class Server {
 public:
  // Binds and listens, then serves on its own threads until stop() or destruction.
  // errors: from bind/listen (EADDRINUSE, EACCES, EADDRNOTAVAIL), EINVAL for an error rate
  // outside 0-100.
  [[nodiscard]] static tl::expected<std::unique_ptr<Server>, std::error_code> start(const ServerOptions& options);

  virtual ~Server() = default;
  // The bound address, with the port the kernel chose when the options said 0.
  [[nodiscard]] virtual boost::asio::ip::tcp::endpoint endpoint() const = 0;
  // Closes the listener and every connection, then joins the threads; blocks until they have
  // ended. Idempotent. Must not be called from a server thread.
  virtual void stop() = 0;
  // Sets the latency and error rate of GET / from the next request on, as POST /admin does.
  // Thread-safe. errorRatePercent must be 0-100.
  virtual void setBehaviour(std::chrono::microseconds latency, double errorRatePercent) = 0;
};

// "127.0.0.1:8080", "[::1]:8080", "0.0.0.0:0", "localhost:8080" (resolved; the first address wins).
[[nodiscard]] tl::expected<boost::asio::ip::tcp::endpoint, std::string> parseListenAddress(std::string_view text);

// "250ms", "1.5s", "100us", "2m", "0"; the error text says what is accepted.
[[nodiscard]] tl::expected<std::chrono::microseconds, std::string> parseLatency(std::string_view text);

}  // namespace faultline::demo
