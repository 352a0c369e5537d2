#include "common/metrics_server.h"

#include <atomic>
#include <charconv>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace faultline::metrics {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

constexpr std::string_view kAccepted =
    "accepted: PORT or :PORT (loopback), HOST:PORT or [V6]:PORT with HOST an IP address or localhost, PORT 0-65535";

}  // namespace

tl::expected<ListenAddress, std::string> parseListenAddress(std::string_view text) {
  const auto bad = [&](std::string_view why) {
    return tl::unexpected(fmt::format("'{}' {}; {}", text.substr(0, 128), why, kAccepted));
  };
  if (text.empty() || text.size() > 64) {
    return bad("is not a listen address");
  }
  std::string_view host;
  std::string_view port;
  if (text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return bad("has no ]:PORT after its IPv6 address");
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
  } else if (const auto colon = text.rfind(':'); colon != std::string_view::npos) {
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return bad("is an IPv6 address without brackets");
    }
  } else {
    port = text;
  }
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || value > 65535) {
    return bad("has no port number 0-65535");
  }
  ListenAddress out;
  out.port = static_cast<uint16_t>(value);
  if (host.empty() || host == "localhost") {
    out.host = "127.0.0.1";
    return out;
  }
  boost::system::error_code addrEc;
  const auto addr = asio::ip::make_address(std::string(host), addrEc);
  if (addrEc) {
    return bad(fmt::format("names host '{}', which is not an IP address", host));
  }
  out.host = addr.to_string();
  return out;
}

struct MetricsServer::Impl {
  const Registry& registry;
  ServerLimits limits;
  std::atomic<size_t> open{0};  // before io: sessions dropped with io count down here
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  std::thread thread;

  Impl(const Registry& r, ServerLimits l) : registry(r), limits(l) {}

  // One connection: one request, one answer, close.
  class Session : public std::enable_shared_from_this<Session> {
   public:
    Session(Impl& server, tcp::socket socket) : server_(server), stream_(std::move(socket)) {
      parser_.header_limit(static_cast<std::uint32_t>(kMaxHeaderBytes));
      parser_.body_limit(0);
    }
    ~Session() { server_.open.fetch_sub(1); }

    void start() {
      stream_.expires_after(server_.limits.timeout);  // the whole exchange, not each read
      http::async_read(stream_, buffer_, parser_,
                       [self = shared_from_this()](beast::error_code ec, size_t) { self->onRead(ec); });
    }

   private:
    void onRead(beast::error_code ec) {
      if (ec == http::error::header_limit) {
        return answer(http::status::request_header_fields_too_large, "request header too large\n");
      }
      if (ec == http::error::body_limit) {
        return answer(http::status::payload_too_large, "no request body is accepted\n");
      }
      if (ec) {
        return;  // timeout, reset, garbage: close
      }
      const auto& req = parser_.get();
      const auto raw = req.target();
      std::string_view target(raw.data(), raw.size());
      target = target.substr(0, target.find('?'));
      if (target != "/metrics") {
        return answer(http::status::not_found, "not found; the metrics are at GET /metrics\n");
      }
      if (req.method() != http::verb::get) {
        return answer(http::status::method_not_allowed, "only GET is allowed\n");
      }
      answer(http::status::ok, server_.registry.render(), "text/plain; version=0.0.4; charset=utf-8");
    }

    void answer(http::status status, std::string body, std::string_view type = "text/plain; charset=utf-8") {
      response_.version(11);
      response_.result(status);
      response_.set(http::field::content_type, beast::string_view(type.data(), type.size()));
      response_.set(http::field::connection, "close");
      if (status == http::status::method_not_allowed) {
        response_.set(http::field::allow, "GET");
      }
      response_.body() = std::move(body);
      response_.prepare_payload();
      http::async_write(stream_, response_, [self = shared_from_this()](beast::error_code, size_t) {
        beast::error_code ignored;
        self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
      });
    }

    Impl& server_;
    beast::tcp_stream stream_;
    beast::flat_buffer buffer_{kMaxHeaderBytes};
    http::request_parser<http::empty_body> parser_;
    http::response<http::string_body> response_;
  };

  void accept() {
    acceptor.async_accept([this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted || !acceptor.is_open()) {
        return;
      }
      if (!ec) {
        if (open.fetch_add(1) >= limits.maxConnections) {
          open.fetch_sub(1);
          beast::error_code ignored;
          socket.close(ignored);  // over the cap: closed at once
        } else {
          std::make_shared<Session>(*this, std::move(socket))->start();
        }
      }
      accept();
    });
  }
};

tl::expected<std::unique_ptr<MetricsServer>, std::string> MetricsServer::start(const ListenAddress& address,
                                                                               const Registry& registry,
                                                                               ServerLimits limits) {
  auto impl = std::make_unique<Impl>(registry, limits);
  boost::system::error_code ec;
  const auto addr = asio::ip::make_address(address.host, ec);
  if (ec) {
    return tl::unexpected(fmt::format("metrics: '{}' is not an IP address", address.host));
  }
  const tcp::endpoint endpoint(addr, address.port);
  const auto fail = [&](std::string_view what) {
    return tl::unexpected(fmt::format("metrics: cannot {} {}: {}", what,
                                      addr.is_v6() ? fmt::format("[{}]:{}", address.host, address.port)
                                                   : fmt::format("{}:{}", address.host, address.port),
                                      ec.message()));
  };
  if (impl->acceptor.open(endpoint.protocol(), ec); ec) {
    return fail("open a socket for");
  }
  if (impl->acceptor.set_option(tcp::acceptor::reuse_address(true), ec); ec) {
    return fail("set SO_REUSEADDR on");
  }
  if (impl->acceptor.bind(endpoint, ec); ec) {
    return fail("listen on");
  }
  if (impl->acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) {
    return fail("listen on");
  }
  impl->accept();
  impl->thread = std::thread([io = &impl->io] { io->run(); });
  return std::unique_ptr<MetricsServer>(new MetricsServer(std::move(impl)));
}

MetricsServer::MetricsServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

MetricsServer::~MetricsServer() {
  impl_->io.stop();  // the sessions' handlers (and sockets) are dropped with the io_context
  if (impl_->thread.joinable()) {
    impl_->thread.join();
  }
  beast::error_code ignored;
  impl_->acceptor.close(ignored);  // no thread runs the io_context now
}

uint16_t MetricsServer::port() const {
  boost::system::error_code ec;
  return impl_->acceptor.local_endpoint(ec).port();
}

std::string MetricsServer::address() const {
  boost::system::error_code ec;
  const auto ep = impl_->acceptor.local_endpoint(ec);
  return ep.address().is_v6() ? fmt::format("[{}]:{}", ep.address().to_string(), ep.port())
                              : fmt::format("{}:{}", ep.address().to_string(), ep.port());
}

}  // namespace faultline::metrics
