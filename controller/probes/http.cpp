// HTTP probe: one GET per sample over plain TCP with Boost.Beast, bounded by one deadline.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <optional>
#include <string_view>
#include <utility>  // boost/asio/awaitable.hpp (1.74) uses std::exchange without it
#include <vector>

#include <fmt/format.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <tl/expected.hpp>

#include "common/regex.h"
#include "controller/probes/http.h"
#include "controller/probes/load.h"
#include "controller/probes/protocol.h"

namespace faultline::controller {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

}  // namespace

namespace {

// A parsed URL with its address when the host is an IP literal (nothing to resolve).
struct Url {
  HttpUrl parts;
  std::optional<asio::ip::address> literal;
};

std::string hostHeader(const Url& url) {
  std::string host = url.literal && url.literal->is_v6() ? "[" + url.parts.host + "]" : url.parts.host;
  return url.parts.port == 80 ? host : host + ":" + std::to_string(url.parts.port);
}

struct Exchange {
  std::optional<unsigned> status;  // set when a whole answer arrived
  std::string body;
  boost::system::error_code error;
  std::string resolveError;  // resolveName()'s text when the host name could not be resolved
  enum class Stage { resolve, connect, write, read } stage = Stage::resolve;
};

struct Request {
  http::verb verb = http::verb::get;
  std::string method;
  std::string target;
  const std::vector<std::pair<std::string, std::string>>* headers = nullptr;
  const std::string* body = nullptr;
};

// GCC 12 warns that Boost.Asio 1.74's coroutine frame is freed by a mismatched operator delete;
// the frame's own operator new and delete do match (a known false positive of the inliner).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
asio::awaitable<void> fetch(const Url& url, const Request& req, Clock::time_point deadline, Exchange& out) {
  auto executor = co_await asio::this_coro::executor;
  auto& ec = out.error;
  std::vector<tcp::endpoint> endpoints;
  if (url.literal) {
    endpoints.emplace_back(*url.literal, url.parts.port);
  } else {
    // c-ares, bounded by the deadline (getaddrinfo has no timeout). It blocks this event loop
    // while it runs: a load probe's other requests wait for it (give an address for high rates).
    auto addresses = resolveName(url.parts.host, AF_UNSPEC, "", 0, deadline);
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
        endpoints.emplace_back(address, url.parts.port);
      }
    }
    if (endpoints.empty()) {
      out.resolveError = "cannot resolve " + url.parts.host + ": no address";
      ec = asio::error::host_not_found;
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

  http::request<http::string_body> request{req.verb, req.target, 11};
  if (req.verb == http::verb::unknown) {
    request.method_string(req.method);
  }
  request.set(http::field::host, hostHeader(url));
  request.set(http::field::user_agent, "faultline-probe");
  for (const auto& [name, value] : *req.headers) {
    request.set(name, value);
  }
  request.set(http::field::connection, "close");
  if (!req.body->empty()) {
    request.body() = *req.body;
    request.prepare_payload();
  }
  out.stage = Exchange::Stage::write;
  co_await http::async_write(stream, request, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return;
  }

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxProbeBody);
  if (req.verb == http::verb::head) {
    parser.skip(true);
  }
  out.stage = Exchange::Stage::read;
  co_await http::async_read(stream, buffer, parser, asio::redirect_error(asio::use_awaitable, ec));
  if (ec) {
    co_return;
  }
  out.status = parser.get().result_int();
  out.body = std::move(parser.get().body());
  boost::system::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
}
#pragma GCC diagnostic pop

std::string describeFailure(const Exchange& exchange, const Url& url, std::chrono::milliseconds timeout) {
  const auto& ec = exchange.error;
  if (ec == beast::error::timeout) {
    return "timeout after " + formatLimit(timeout);
  }
  const std::string where = hostHeader(url);
  switch (exchange.stage) {
    case Exchange::Stage::resolve:
      return !exchange.resolveError.empty() ? exchange.resolveError
                                            : "cannot resolve " + url.parts.host + ": " + ec.message();
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
      if (ec == http::error::body_limit) {
        return "answer body from " + where + " is larger than " + std::to_string(kMaxProbeBody) + " bytes";
      }
      return "bad answer from " + where + ": " + ec.message();
  }
  return ec.message();
}

std::string statusList(const std::vector<int>& statuses) {
  std::string out;
  for (size_t i = 0; i < statuses.size(); ++i) {
    // Runs of 3+ consecutive codes are shown as a range: 200-299.
    size_t j = i;
    while (j + 1 < statuses.size() && statuses[j + 1] == statuses[j] + 1) {
      ++j;
    }
    out += out.empty() ? "" : ", ";
    if (j >= i + 2) {
      out += std::to_string(statuses[i]) + "-" + std::to_string(statuses[j]);
      i = j;
    } else {
      out += std::to_string(statuses[i]);
    }
  }
  return out;
}

}  // namespace

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

namespace {

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
// Holds the URL and request in its own frame for the whole exchange.
asio::awaitable<void> exchangeAndReport(Url url, Request req, Clock::time_point deadline,
                                        std::chrono::milliseconds timeout, HttpDone done) {
  Exchange exchange;
  co_await fetch(url, req, deadline, exchange);
  if (!exchange.status) {
    done(tl::unexpected(describeFailure(exchange, url, timeout)));
  } else {
    done(HttpAnswer{*exchange.status, std::move(exchange.body)});
  }
}
#pragma GCC diagnostic pop

}  // namespace

void startHttpExchange(asio::io_context& ioc, const HttpUrl& parts, const std::string& method,
                       const std::string& target, const std::vector<std::pair<std::string, std::string>>& headers,
                       const std::string& body, std::chrono::steady_clock::time_point deadline,
                       std::chrono::milliseconds timeout, HttpDone done) {
  Url url{parts, std::nullopt};
  boost::system::error_code notLiteral;
  if (const auto address = asio::ip::make_address(url.parts.host, notLiteral); !notLiteral) {
    url.literal = address;
  }
  Request req;
  req.verb = http::string_to_verb(method);
  req.method = method;
  req.target = target.empty() ? url.parts.target : target;
  req.headers = &headers;
  req.body = &body;
  asio::co_spawn(ioc, exchangeAndReport(std::move(url), std::move(req), deadline, timeout, std::move(done)),
                 asio::detached);
}

tl::expected<HttpAnswer, std::string> httpExchange(const HttpUrl& parts, const std::string& method,
                                                   const std::string& target,
                                                   const std::vector<std::pair<std::string, std::string>>& headers,
                                                   const std::string& body, std::chrono::milliseconds timeout,
                                                   std::chrono::microseconds& latency) {
  // Each sample has its own io_context, so concurrent calls share nothing.
  asio::io_context ioc;
  tl::expected<HttpAnswer, std::string> result = tl::unexpected(std::string("no answer"));
  const auto start = Clock::now();
  startHttpExchange(ioc, parts, method, target, headers, body, start + timeout, timeout,
                    [&](tl::expected<HttpAnswer, std::string> answer) { result = std::move(answer); });
  ioc.run();
  latency = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
  return result;
}

Sample runHttpProbe(const HttpProbe& spec) {
  if (spec.load) {
    return runHttpLoad(spec);
  }
  auto parts = parseHttpUrl(spec.url);
  if (!parts) {
    return Sample{false, std::chrono::microseconds{0}, parts.error(), std::nullopt, nullptr};
  }
  std::chrono::microseconds latency{0};
  auto answer = httpExchange(*parts, spec.method, "", spec.headers, spec.body, spec.timeout, latency);
  return checkHttpAnswer(spec, std::move(answer), latency);
}

Sample checkHttpAnswer(const HttpProbe& spec, tl::expected<HttpAnswer, std::string> answer,
                       std::chrono::microseconds latency) {
  Sample sample;
  sample.latency = latency;
  if (!answer) {
    sample.detail = std::move(answer.error());
    return sample;
  }
  const int status = static_cast<int>(answer->status);
  if (!std::binary_search(spec.expectStatus.begin(), spec.expectStatus.end(), status)) {
    sample.detail = "status " + std::to_string(status) + ", expected " + statusList(spec.expectStatus);
    return sample;
  }
  sample.detail = std::to_string(status) + " in " + formatLatency(sample.latency);
  if (spec.bodyMatch) {
    auto re = Regex::compile(*spec.bodyMatch, RegexAnchors::kLineEnds);
    if (!re) {  // the parser compiled it already
      sample.detail += ", bodyMatch: " + re.error();
      return sample;
    }
    if (!re->search(std::string_view(answer->body.data(), std::min(answer->body.size(), kMaxMatchedBytes)))) {
      sample.detail += ", body does not match /" + *spec.bodyMatch + "/";
      return sample;
    }
  }
  if (spec.jsonPointer && spec.jsonNumber) {
    // The body is at most kMaxProbeBody bytes; nlohmann's parser is iterative (no recursion on depth).
    const auto doc = nlohmann::json::parse(answer->body, nullptr, false);
    if (doc.is_discarded()) {
      sample.detail += ", the body is not JSON";
      return sample;
    }
    const nlohmann::json* at = nullptr;
    try {
      const nlohmann::json::json_pointer pointer(*spec.jsonPointer);
      if (doc.contains(pointer)) {
        at = &doc.at(pointer);
      }
    } catch (const nlohmann::json::exception&) {
      at = nullptr;  // e.g. an array index that is not a number: names nothing in this body
    }
    if (at == nullptr) {
      sample.detail += ", the body has nothing at " + *spec.jsonPointer;
      return sample;
    }
    if (!at->is_number()) {
      sample.detail += fmt::format(", {} is a {}, not a number", *spec.jsonPointer, at->type_name());
      return sample;
    }
    const double n = at->get<double>();
    sample.value = n;
    if (!compare(n, spec.jsonNumber->comparison, spec.jsonNumber->threshold)) {
      sample.detail +=
          fmt::format(", {} is {}, expected {} {}", *spec.jsonPointer, formatNumber(n),
                      comparisonText(spec.jsonNumber->comparison), formatNumber(spec.jsonNumber->threshold));
      return sample;
    }
    sample.detail += fmt::format(", {} is {}", *spec.jsonPointer, formatNumber(n));
  }
  if (sample.latency > spec.maxLatency) {
    sample.detail += ", above maxLatency " + formatLimit(spec.maxLatency);
    return sample;
  }
  sample.ok = true;
  return sample;
}

}  // namespace faultline::controller
