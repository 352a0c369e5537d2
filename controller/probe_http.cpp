// HTTP probe: one GET per sample over plain TCP with Boost.Beast, bounded by one deadline.
#include <charconv>
#include <cstdio>
#include <optional>
#include <string_view>
#include <utility>  // boost/asio/awaitable.hpp (1.74) uses std::exchange without it
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <tl/expected.hpp>

#include "controller/probe.h"

namespace faultline::controller {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

struct Url {
  std::string host;  // name or address, without IPv6 brackets
  uint16_t port = 80;
  std::string target;  // path and query, at least "/"
  bool literal = false;
  asio::ip::address address;  // when literal
};

// http://HOST[:PORT][/PATH]; HOST is a name, an IPv4 address or an IPv6 address in brackets.
tl::expected<Url, std::string> parseUrl(std::string_view text) {
  const auto invalid = [&](std::string_view why) {
    return tl::unexpected("invalid URL '" + std::string(text) + "': " + std::string(why) +
                          "; accepted: http://HOST[:PORT]/PATH");
  };
  constexpr std::string_view kScheme = "http://";
  if (text.substr(0, kScheme.size()) != kScheme) {
    return invalid(text.substr(0, 8) == "https://" ? "TLS is not supported" : "not http://");
  }
  std::string_view rest = text.substr(kScheme.size());
  const auto slash = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, slash);
  Url url;
  url.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (!url.target.empty() && url.target.front() != '/') {
    url.target.insert(0, "/");
  }
  if (const auto hash = url.target.find('#'); hash != std::string::npos) {
    url.target.erase(hash);
  }
  if (authority.find('@') != std::string_view::npos) {
    return invalid("user information is not supported");
  }
  std::string_view host;
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    const auto close = authority.find(']');
    if (close == std::string_view::npos) {
      return invalid("unclosed '[' in the host");
    }
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        return invalid("unexpected text after the IPv6 address");
      }
      port = after.substr(1);
    }
  } else {
    const auto colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
    }
  }
  if (host.empty()) {
    return invalid("no host");
  }
  if (!port.empty() || authority.back() == ':') {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || value == 0 || value > 65535) {
      return invalid("the port is not a number from 1 to 65535");
    }
    url.port = static_cast<uint16_t>(value);
  }
  url.host = std::string(host);
  boost::system::error_code notLiteral;
  url.address = asio::ip::make_address(url.host, notLiteral);
  url.literal = !notLiteral;
  if (!url.literal && authority.front() == '[') {
    return invalid("'" + url.host + "' is not an IPv6 address");
  }
  return url;
}

std::string hostHeader(const Url& url) {
  std::string host = url.literal && url.address.is_v6() ? "[" + url.host + "]" : url.host;
  return url.port == 80 ? host : host + ":" + std::to_string(url.port);
}

// "0.4ms", "3.1ms", "612ms", "1.25s"
std::string formatLatency(std::chrono::microseconds d) {
  char text[32];
  const double ms = static_cast<double>(d.count()) / 1000.0;
  if (ms < 10) {
    std::snprintf(text, sizeof text, "%.1fms", ms);
  } else if (ms < 1000) {
    std::snprintf(text, sizeof text, "%.0fms", ms);
  } else {
    std::snprintf(text, sizeof text, "%.3gs", ms / 1000.0);
  }
  return text;
}

// "500ms", "2s", "1.5s"
std::string formatLimit(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0 && d.count() != 0) {
    return std::to_string(d.count() / 1000) + "s";
  }
  if (d.count() > 1000) {
    char text[32];
    std::snprintf(text, sizeof text, "%gs", static_cast<double>(d.count()) / 1000.0);
    return text;
  }
  return std::to_string(d.count()) + "ms";
}

struct Exchange {
  std::optional<unsigned> status;  // set when a whole answer arrived
  boost::system::error_code error;
  enum class Stage { resolve, connect, write, read } stage = Stage::resolve;
};

asio::awaitable<void> fetch(const Url& url, Clock::time_point deadline, Exchange& out) {
  auto executor = co_await asio::this_coro::executor;
  auto& ec = out.error;
  std::vector<tcp::endpoint> endpoints;
  if (url.literal) {
    endpoints.emplace_back(url.address, url.port);
  } else {
    // getaddrinfo cannot be interrupted: a resolver that hangs delays this sample past its
    // deadline (the timeout is still reported).
    tcp::resolver resolver(executor);
    auto results = co_await resolver.async_resolve(url.host, std::to_string(url.port),
                                                   asio::redirect_error(asio::use_awaitable, ec));
    if (ec) {
      co_return;
    }
    for (const auto& r : results) {
      endpoints.push_back(r.endpoint());
    }
    if (Clock::now() >= deadline) {
      ec = beast::error::timeout;
      co_return;
    }
  }

  beast::tcp_stream stream(executor);
  // One deadline for connect, write and read together.
  stream.expires_at(deadline);
  out.stage = Exchange::Stage::connect;
  co_await stream.async_connect(endpoints, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return;
  }

  http::request<http::empty_body> request{http::verb::get, url.target, 11};
  request.set(http::field::host, hostHeader(url));
  request.set(http::field::user_agent, "faultline-probe");
  request.set(http::field::connection, "close");
  out.stage = Exchange::Stage::write;
  co_await http::async_write(stream, request, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return;
  }

  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  out.stage = Exchange::Stage::read;
  co_await http::async_read(stream, buffer, response, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return;
  }
  out.status = response.result_int();
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
}

std::string describeFailure(const Exchange& exchange, const Url& url, std::chrono::milliseconds timeout) {
  const auto& ec = exchange.error;
  if (ec == beast::error::timeout) {
    return "timeout after " + formatLimit(timeout);
  }
  const std::string where = hostHeader(url);
  switch (exchange.stage) {
    case Exchange::Stage::resolve:
      return "cannot resolve " + url.host + ": " + ec.message();
    case Exchange::Stage::connect:
      if (ec == asio::error::connection_refused) {
        return "connection refused";
      }
      return "cannot connect to " + where + ": " + ec.message();
    case Exchange::Stage::write:
      return "cannot send the request to " + where + ": " + ec.message();
    case Exchange::Stage::read:
      if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == http::error::partial_message) {
        return "connection closed by " + where + " before a complete answer";
      }
      if (ec == asio::error::connection_reset) {
        return "connection reset by " + where;
      }
      return "bad answer from " + where + ": " + ec.message();
  }
  return ec.message();
}

class HttpProbeRunner final : public ProbeRunner {
 public:
  Sample run(const Probe& probe) override {
    const HttpProbe& spec = probe.http;
    auto url = parseUrl(spec.url);
    if (!url) {
      return Sample{false, std::chrono::microseconds{0}, url.error()};
    }
    // Each sample has its own io_context, so concurrent calls share nothing.
    asio::io_context ioc;
    Exchange exchange;
    const auto start = Clock::now();
    asio::co_spawn(ioc, fetch(*url, start + spec.timeout, exchange), asio::detached);
    ioc.run();
    const auto latency = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);

    Sample sample;
    sample.latency = latency;
    if (!exchange.status) {
      sample.detail = describeFailure(exchange, *url, spec.timeout);
      return sample;
    }
    const unsigned status = *exchange.status;
    if (static_cast<int>(status) != spec.expectStatus) {
      sample.detail = "status " + std::to_string(status) + ", expected " + std::to_string(spec.expectStatus);
      return sample;
    }
    sample.detail = std::to_string(status) + " in " + formatLatency(latency);
    if (latency > spec.maxLatency) {
      sample.detail += ", above maxLatency " + formatLimit(spec.maxLatency);
      return sample;
    }
    sample.ok = true;
    return sample;
  }
};

}  // namespace

std::unique_ptr<ProbeRunner> makeHttpProbeRunner() {
  return std::make_unique<HttpProbeRunner>();
}

}  // namespace faultline::controller
