// TCP probe: one connect per sample (Boost.Asio), bounded by one deadline.
#include <optional>
#include <utility>  // boost/asio/awaitable.hpp (1.74) uses std::exchange without it
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include "controller/probes/load.h"
#include "controller/probes/probe.h"
#include "controller/probes/protocol.h"
#include "controller/probes/tcp.h"

namespace faultline::controller {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

struct Connect {
  bool resolved = false;
  boost::system::error_code error;
  std::string resolveError;  // resolveName()'s text when the host name could not be resolved
};

asio::awaitable<void> connect(const TcpProbe& spec, Clock::time_point deadline, Connect& out) {
  auto executor = co_await asio::this_coro::executor;
  auto& ec = out.error;
  std::vector<tcp::endpoint> endpoints;
  boost::system::error_code notLiteral;
  if (const auto address = asio::ip::make_address(spec.host, notLiteral); !notLiteral) {
    endpoints.emplace_back(address, spec.port);
  } else {
    // c-ares, bounded by the deadline (getaddrinfo has no timeout). It blocks this event loop
    // while it runs: a load probe's other connects wait for it (give an address for high rates).
    auto addresses = resolveName(spec.host, AF_UNSPEC, "", 0, deadline);
    if (!addresses) {
      if (addresses.error().rfind("timeout", 0) == 0) {
        ec = beast::error::timeout;
      } else {
        out.resolveError = addresses.error();
        ec = asio::error::host_not_found;
      }
      co_return;
    }
    for (const auto& ip : *addresses) {
      boost::system::error_code bad;
      const auto address = asio::ip::make_address(ip, bad);
      if (!bad) {
        endpoints.emplace_back(address, spec.port);
      }
    }
    if (endpoints.empty()) {
      out.resolveError = "cannot resolve " + spec.host + ": no address";
      ec = asio::error::host_not_found;
      co_return;
    }
  }
  out.resolved = true;
  beast::tcp_stream stream(executor);
  stream.expires_at(deadline);
  co_await stream.async_connect(endpoints, asio::redirect_error(asio::use_awaitable, ec));
  if (!ec) {
    boost::system::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  }
}

std::string describeConnect(const TcpProbe& spec, const Connect& result) {
  const auto& ec = result.error;
  if (ec == beast::error::timeout) {
    return "timeout after " + formatLimit(spec.timeout);
  }
  if (!ec) {
    return "";
  }
  if (!result.resolved) {
    return !result.resolveError.empty() ? result.resolveError : "cannot resolve " + spec.host + ": " + ec.message();
  }
  if (ec == asio::error::connection_refused) {
    return "connection refused";
  }
  return "cannot connect to " + spec.host + ":" + std::to_string(spec.port) + ": " + ec.message();
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
asio::awaitable<void> connectAndReport(const TcpProbe& spec, Clock::time_point deadline, TcpDone done) {
  Connect result;
  co_await connect(spec, deadline, result);
  done(describeConnect(spec, result));
}
#pragma GCC diagnostic pop

}  // namespace

void startTcpConnect(asio::io_context& ioc, const TcpProbe& spec, Clock::time_point deadline, TcpDone done) {
  asio::co_spawn(ioc, connectAndReport(spec, deadline, std::move(done)), asio::detached);
}

Sample runTcpProbe(const TcpProbe& spec) {
  if (spec.load) {
    return runTcpLoad(spec);
  }
  asio::io_context ioc;
  std::string failure;
  const auto start = Clock::now();
  startTcpConnect(ioc, spec, start + spec.timeout, [&](const std::string& why) { failure = why; });
  ioc.run();
  return checkTcpConnect(spec, failure, std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start));
}

Sample checkTcpConnect(const TcpProbe& spec, const std::string& failure, std::chrono::microseconds latency) {
  Sample sample;
  sample.latency = latency;
  if (!failure.empty()) {
    sample.detail = failure;
    return sample;
  }
  sample.detail = "connected in " + formatLatency(sample.latency);
  if (sample.latency > spec.maxLatency) {
    sample.detail += ", above maxLatency " + formatLimit(spec.maxLatency);
    return sample;
  }
  sample.ok = true;
  return sample;
}

}  // namespace faultline::controller
