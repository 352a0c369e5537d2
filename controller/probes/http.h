// The HTTP exchange shared by the http and prometheus probes. Internal to controller/probe*.cpp.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <tl/expected.hpp>

#include "controller/probes/probe.h"

namespace faultline::controller {

struct HttpAnswer {
  unsigned status = 0;
  std::string body;  // at most kMaxProbeBody bytes are read; a longer body is an error
};

inline constexpr std::size_t kMaxProbeBody = 1024 * 1024;
// bodyMatch and stdoutMatch search the first this many bytes (RE2, multiline: common/regex.h).
inline constexpr std::size_t kMaxMatchedBytes = 64 * 1024;

// One HTTP/1.1 request (Connection: close) to url, with target replacing url.target when not
// empty; connect, write and read share one deadline of timeout. latency is set to the time from
// start to the answer or the failure. The error is a sample's detail: "timeout after 2s",
// "connection refused", "cannot resolve HOST: ...", "connection closed by HOST:PORT before a
// complete answer". Blocking; thread-safe (its own io_context).
[[nodiscard]] tl::expected<HttpAnswer, std::string> httpExchange(
    const HttpUrl& url, const std::string& method, const std::string& target,
    const std::vector<std::pair<std::string, std::string>>& headers, const std::string& body,
    std::chrono::milliseconds timeout, std::chrono::microseconds& latency);

// The same exchange started on ioc, ending by deadline (timeout: only for the error text); done is
// called once, on ioc's thread, when it ends. url's parts are copied; headers and body are
// referenced and must outlive the exchange. A host name is resolved for each exchange.
using HttpDone = std::function<void(tl::expected<HttpAnswer, std::string>)>;
void startHttpExchange(boost::asio::io_context& ioc, const HttpUrl& url, const std::string& method,
                       const std::string& target, const std::vector<std::pair<std::string, std::string>>& headers,
                       const std::string& body, std::chrono::steady_clock::time_point deadline,
                       std::chrono::milliseconds timeout, HttpDone done);

// The http probe's checks of one answer (status, bodyMatch, maxLatency against latency), as a
// sample: the answer's error is the detail of a failed sample.
[[nodiscard]] Sample checkHttpAnswer(const HttpProbe& spec, tl::expected<HttpAnswer, std::string> answer,
                                     std::chrono::microseconds latency);

}  // namespace faultline::controller
