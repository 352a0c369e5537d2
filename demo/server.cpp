#include "demo/server.h"

#include <atomic>
#include <charconv>
#include <cmath>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace faultline::demo {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// A connection that sends nothing for this long is closed.
constexpr std::chrono::seconds kIdleTimeout{60};
// A client that does not take its answer within this long is dropped.
constexpr std::chrono::seconds kWriteTimeout{30};

std::error_code toStd(const boost::system::error_code& ec) {
  // Boost's system and generic categories carry errno values.
  return {ec.value(), std::generic_category()};
}

class BeastServer final : public Server {
 public:
  explicit BeastServer(const ServerOptions& options)
      : options_(options),
        ioc_(std::in_place),
        acceptor_(std::in_place, *ioc_),
        seeds_(options.seed ? *options.seed : std::random_device{}()) {}

  ~BeastServer() override { stop(); }

  BeastServer(const BeastServer&) = delete;
  BeastServer& operator=(const BeastServer&) = delete;

  std::error_code listen() {
    boost::system::error_code ec;
    acceptor_->open(options_.listen.protocol(), ec);
    if (!ec) {
      acceptor_->set_option(asio::socket_base::reuse_address(true), ec);
    }
    if (!ec) {
      acceptor_->bind(options_.listen, ec);
    }
    if (!ec) {
      acceptor_->listen(asio::socket_base::max_listen_connections, ec);
    }
    if (!ec) {
      endpoint_ = acceptor_->local_endpoint(ec);
    }
    return ec ? toStd(ec) : std::error_code{};
  }

  void run() {
    asio::co_spawn(*ioc_, acceptLoop(), asio::detached);
    const unsigned count = options_.threads == 0 ? 1 : options_.threads;
    for (unsigned i = 0; i < count; ++i) {
      threads_.emplace_back([this] { ioc_->run(); });
    }
  }

  tcp::endpoint endpoint() const override { return endpoint_; }

  void stop() override {
    std::lock_guard lock(stopMutex_);
    if (!ioc_) {
      return;
    }
    ioc_->stop();
    for (auto& t : threads_) {
      t.join();
    }
    threads_.clear();
    // No thread runs handlers any more. Destroying the io_context destroys every pending
    // handler, and with them the sessions' coroutine frames, which close their sockets.
    acceptor_.reset();
    ioc_.reset();
  }

 private:
  asio::awaitable<void> acceptLoop() {
    for (;;) {
      boost::system::error_code ec;
      // Each connection runs on its own strand, so a session never runs on two threads at once.
      tcp::socket socket =
          co_await acceptor_->async_accept(asio::make_strand(*ioc_), asio::redirect_error(asio::use_awaitable, ec));
      if (ec == asio::error::operation_aborted || !acceptor_->is_open()) {
        co_return;
      }
      if (ec) {
        // Out of descriptors or a connection reset while queued: pause briefly, keep serving.
        asio::steady_timer pause(*ioc_, std::chrono::milliseconds(10));
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        continue;
      }
      auto executor = socket.get_executor();
      asio::co_spawn(executor, session(std::move(socket), nextSeed()), asio::detached);
    }
  }

  asio::awaitable<void> session(tcp::socket socket, uint64_t seed) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    std::mt19937_64 rng(seed);
    asio::steady_timer latency(stream.get_executor());
    boost::system::error_code ec;
    for (;;) {
      http::request<http::string_body> request;
      stream.expires_after(kIdleTimeout);
      co_await http::async_read(stream, buffer, request, asio::redirect_error(asio::use_awaitable, ec));
      if (ec) {
        break;  // closed by the peer, idle too long, or not HTTP
      }
      stream.expires_never();
      http::response<http::string_body> response = co_await answer(request, rng, latency);
      response.keep_alive(request.keep_alive());
      response.prepare_payload();
      stream.expires_after(kWriteTimeout);
      co_await http::async_write(stream, response, asio::redirect_error(asio::use_awaitable, ec));
      if (ec || !request.keep_alive()) {
        break;
      }
    }
    stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  asio::awaitable<http::response<http::string_body>> answer(const http::request<http::string_body>& request,
                                                            std::mt19937_64& rng, asio::steady_timer& latency) {
    http::response<http::string_body> response{http::status::ok, request.version()};
    response.set(http::field::server, "faultline-demo");
    response.set(http::field::content_type, "text/plain");
    std::string_view path(request.target().data(), request.target().size());
    path = path.substr(0, path.find('?'));

    if (path == "/admin") {
      co_return admin(request, std::move(response));
    }
    if (path != "/" && path != "/healthz") {
      response.result(http::status::not_found);
      response.body() = "not found\n";
      co_return response;
    }
    if (request.method() != http::verb::get) {
      response.result(http::status::method_not_allowed);
      response.set(http::field::allow, "GET");
      response.body() = "only GET\n";
      co_return response;
    }
    if (path == "/healthz") {
      response.body() = "ok\n";
      co_return response;
    }
    const std::chrono::microseconds delay{latencyUs_.load()};
    const double errorRate = errorRate_.load();
    if (delay > std::chrono::microseconds{0}) {
      latency.expires_after(delay);
      boost::system::error_code ec;
      co_await latency.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (errorRate > 0 && std::uniform_real_distribution<double>(0, 100)(rng) < errorRate) {
      response.result(http::status::internal_server_error);
      response.body() = "error\n";
      co_return response;
    }
    response.body() = "ok\n";
    if (options_.bodyBytes > response.body().size()) {
      response.body().append(options_.bodyBytes - response.body().size(), '.');
    }
    co_return response;
  }

  // POST /admin?latency=250ms&errorRate=50: sets either or both for GET / from now on.
  http::response<http::string_body> admin(const http::request<http::string_body>& request,
                                          http::response<http::string_body> response) {
    if (request.method() != http::verb::post) {
      response.result(http::status::method_not_allowed);
      response.set(http::field::allow, "POST");
      response.body() = "only POST\n";
      return response;
    }
    std::string_view target(request.target().data(), request.target().size());
    const size_t q = target.find('?');
    std::string_view query = q == std::string_view::npos ? std::string_view{} : target.substr(q + 1);
    std::optional<std::chrono::microseconds> newLatency;
    std::optional<double> newRate;
    while (!query.empty()) {
      const size_t amp = query.find('&');
      const std::string_view pair = query.substr(0, amp);
      query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
      const size_t eq = pair.find('=');
      const std::string_view key = pair.substr(0, eq);
      const std::string_view value = eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
      if (key == "latency") {
        auto d = parseLatency(value);
        if (!d) {
          response.result(http::status::bad_request);
          response.body() = "latency: " + d.error() + "\n";
          return response;
        }
        newLatency = *d;
      } else if (key == "errorRate") {
        double v = -1;
        auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
        if (value.empty() || ec != std::errc{} || end != value.data() + value.size() || !(v >= 0 && v <= 100)) {
          response.result(http::status::bad_request);
          response.body() = "errorRate: '" + std::string(value) + "' is not a percentage from 0 to 100\n";
          return response;
        }
        newRate = v;
      } else {
        response.result(http::status::bad_request);
        response.body() = "unknown parameter '" + std::string(key) + "'; accepted: latency, errorRate\n";
        return response;
      }
    }
    if (newLatency) {
      latencyUs_ = newLatency->count();
    }
    if (newRate) {
      errorRate_ = *newRate;
    }
    response.body() =
        "latency " + std::to_string(latencyUs_.load()) + "us, errorRate " + std::to_string(errorRate_.load()) + "%\n";
    return response;
  }

  void setBehaviour(std::chrono::microseconds latency, double errorRatePercent) override {
    latencyUs_ = latency.count();
    errorRate_ = errorRatePercent;
  }

  uint64_t nextSeed() {
    std::lock_guard lock(seedMutex_);
    return seeds_();
  }

  const ServerOptions options_;
  std::atomic<int64_t> latencyUs_{options_.latency.count()};
  std::atomic<double> errorRate_{options_.errorRatePercent};
  // Reset by stop(), the acceptor first. Declared before every I/O object so it is destroyed after them.
  std::optional<asio::io_context> ioc_;
  std::optional<tcp::acceptor> acceptor_;
  tcp::endpoint endpoint_;
  std::mutex seedMutex_;
  std::mt19937_64 seeds_;
  std::mutex stopMutex_;
  std::vector<std::thread> threads_;
};

}  // namespace

tl::expected<std::unique_ptr<Server>, std::error_code> Server::start(const ServerOptions& options) {
  if (!std::isfinite(options.errorRatePercent) || options.errorRatePercent < 0 || options.errorRatePercent > 100 ||
      options.latency < std::chrono::microseconds{0}) {
    return tl::unexpected(std::make_error_code(std::errc::invalid_argument));
  }
  auto server = std::make_unique<BeastServer>(options);
  if (auto ec = server->listen()) {
    return tl::unexpected(ec);
  }
  server->run();
  return server;
}

tl::expected<tcp::endpoint, std::string> parseListenAddress(std::string_view text) {
  const std::string accepted = "accepted: ADDR:PORT such as 127.0.0.1:8080, [::1]:8080, 0.0.0.0:0 or localhost:8080";
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return tl::unexpected("'" + std::string(text) + "' has no address and port; " + accepted);
  }
  std::string_view host = text.substr(0, colon);
  const std::string_view portText = text.substr(colon + 1);
  unsigned port = 0;
  auto [end, ec] = std::from_chars(portText.data(), portText.data() + portText.size(), port);
  if (portText.empty() || ec != std::errc{} || end != portText.data() + portText.size() || port > 65535) {
    return tl::unexpected("'" + std::string(portText) + "' is not a port (0-65535); " + accepted);
  }
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  boost::system::error_code parseError;
  const auto address = asio::ip::make_address(std::string(host), parseError);
  if (!parseError) {
    return tcp::endpoint(address, static_cast<uint16_t>(port));
  }
  asio::io_context ioc;
  tcp::resolver resolver(ioc);
  boost::system::error_code resolveError;
  auto results = resolver.resolve(std::string(host), std::string(portText), tcp::resolver::passive, resolveError);
  if (resolveError || results.empty()) {
    return tl::unexpected("cannot resolve '" + std::string(host) + "': " + resolveError.message() + "; " + accepted);
  }
  return results.begin()->endpoint();
}

tl::expected<std::chrono::microseconds, std::string> parseLatency(std::string_view text) {
  const std::string accepted = "accepted: 0 or a number with a unit us, ms, s or m (e.g. 250ms, 1.5s)";
  if (text == "0") {
    return std::chrono::microseconds{0};
  }
  size_t unitAt = 0;
  while (unitAt < text.size() && ((text[unitAt] >= '0' && text[unitAt] <= '9') || text[unitAt] == '.')) {
    ++unitAt;
  }
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + unitAt, value);
  if (unitAt == 0 || ec != std::errc{} || end != text.data() + unitAt) {
    return tl::unexpected("'" + std::string(text) + "' is not a duration; " + accepted);
  }
  const std::string_view unit = text.substr(unitAt);
  double micros = 0;
  if (unit == "us") {
    micros = value;
  } else if (unit == "ms") {
    micros = value * 1e3;
  } else if (unit == "s") {
    micros = value * 1e6;
  } else if (unit == "m") {
    micros = value * 60e6;
  } else {
    return tl::unexpected("'" + std::string(text) + "' has no known unit; " + accepted);
  }
  if (micros > 3600e6) {
    return tl::unexpected("'" + std::string(text) + "' is longer than 1h; " + accepted);
  }
  return std::chrono::microseconds{std::llround(micros)};
}

}  // namespace faultline::demo
