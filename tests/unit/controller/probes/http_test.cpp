// The HTTP probe against the demo server started in-process on 127.0.0.1:0, and against sockets
// that refuse or never answer.
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "controller/probes/probe.h"
#include "demo/server.h"

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using faultline::controller::makeProbeRunner;
using faultline::controller::parseHttpUrl;
using faultline::controller::Probe;
using faultline::controller::Sample;
using faultline::demo::Server;
using faultline::demo::ServerOptions;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<Server> startDemo(ServerOptions options = {}) {
  options.seed = 1;
  auto server = Server::start(options);
  if (!server) {
    FAIL("demo server: ", server.error().message());
  }
  return std::move(*server);
}

std::string urlOf(const Server& server, const std::string& path = "/") {
  const auto e = server.endpoint();
  const std::string host = e.address().is_v6() ? "[" + e.address().to_string() + "]" : e.address().to_string();
  return "http://" + host + ":" + std::to_string(e.port()) + path;
}

Probe probeOf(std::string url, std::chrono::milliseconds maxLatency = 1000ms,
              std::chrono::milliseconds timeout = 2000ms, int expectStatus = 200) {
  Probe probe;
  probe.name = "demo";
  probe.http.url = std::move(url);
  probe.http.maxLatency = maxLatency;
  probe.http.timeout = timeout;
  probe.http.expectStatus = {expectStatus};
  return probe;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("a fast 200 is an ok sample with its latency") {
  auto server = startDemo();
  auto runner = makeProbeRunner();
  const Sample sample = runner->run(probeOf(urlOf(*server)));
  CHECK_MESSAGE(sample.ok, sample.detail);
  CHECK(sample.latency > 0us);
  CHECK(sample.latency < 1s);
  CHECK(sample.detail.rfind("200 in ", 0) == 0);
  CHECK(contains(sample.detail, "ms"));
}

TEST_CASE("a URL without a path or port still works; the path reaches the server") {
  auto server = startDemo();
  auto runner = makeProbeRunner();
  const auto e = server->endpoint();
  CHECK(runner->run(probeOf("http://127.0.0.1:" + std::to_string(e.port()))).ok);
  // The scheme in any case (RFC 3986): what the validator accepts, the prober uses.
  CHECK(runner->run(probeOf("HTTP://127.0.0.1:" + std::to_string(e.port()) + "/healthz")).ok);
  CHECK(runner->run(probeOf(urlOf(*server, "/healthz?verbose=1"))).ok);
  const Sample missing = runner->run(probeOf(urlOf(*server, "/nope")));
  CHECK_FALSE(missing.ok);
  CHECK(missing.detail == "status 404, expected 200");
  CHECK(runner->run(probeOf(urlOf(*server, "/nope"), 1000ms, 2000ms, 404)).ok);
}

TEST_CASE("an answer slower than maxLatency is a failed sample that says so") {
  ServerOptions options;
  options.latency = 150ms;
  auto server = startDemo(options);
  auto runner = makeProbeRunner();
  const Sample sample = runner->run(probeOf(urlOf(*server), 50ms));
  CHECK_FALSE(sample.ok);
  CHECK(sample.latency >= 150ms);
  CHECK(sample.detail.rfind("200 in ", 0) == 0);
  CHECK(contains(sample.detail, ", above maxLatency 50ms"));
}

TEST_CASE("a 500 is a failed sample naming the status") {
  ServerOptions options;
  options.errorRatePercent = 100;
  auto server = startDemo(options);
  auto runner = makeProbeRunner();
  const Sample sample = runner->run(probeOf(urlOf(*server)));
  CHECK_FALSE(sample.ok);
  CHECK(sample.detail == "status 500, expected 200");
  // /healthz ignores the error rate.
  CHECK(runner->run(probeOf(urlOf(*server, "/healthz"))).ok);
}

TEST_CASE("a closed port is a failed sample: connection refused") {
  asio::io_context ioc;
  tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const auto port = acceptor.local_endpoint().port();
  acceptor.close();
  auto runner = makeProbeRunner();
  const Sample sample = runner->run(probeOf("http://127.0.0.1:" + std::to_string(port) + "/"));
  CHECK_FALSE(sample.ok);
  CHECK(sample.detail == "connection refused");
  CHECK(sample.latency < 1s);
}

TEST_CASE("a server that accepts but never answers is a timeout within timeout + 100ms") {
  // A listening socket nobody accepts from: the kernel completes the handshake, no answer comes.
  asio::io_context ioc;
  tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const auto port = acceptor.local_endpoint().port();
  auto runner = makeProbeRunner();
  const auto start = std::chrono::steady_clock::now();
  const Sample sample = runner->run(probeOf("http://127.0.0.1:" + std::to_string(port) + "/", 1000ms, 300ms));
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK_FALSE(sample.ok);
  CHECK(sample.detail == "timeout after 300ms");
  CHECK(took >= 300ms);
  CHECK(took < 400ms);
  CHECK(sample.latency >= 300ms);
}

TEST_CASE("a server slower than the timeout is a timeout, not a late 200") {
  ServerOptions options;
  options.latency = 1s;
  auto server = startDemo(options);
  auto runner = makeProbeRunner();
  const auto start = std::chrono::steady_clock::now();
  const Sample sample = runner->run(probeOf(urlOf(*server), 2000ms, 200ms));
  CHECK(std::chrono::steady_clock::now() - start < 300ms);
  CHECK_FALSE(sample.ok);
  CHECK(sample.detail == "timeout after 200ms");
}

TEST_CASE("host names and IPv6 literals") {
  auto runner = makeProbeRunner();
  SUBCASE("localhost") {
    auto server = startDemo();
    CHECK(runner->run(probeOf("http://localhost:" + std::to_string(server->endpoint().port()) + "/")).ok);
  }
  SUBCASE("a name that does not resolve: a failed sample within the timeout (c-ares, not getaddrinfo)") {
    // Resolved with c-ares within the probe's timeout: NXDOMAIN from the system's resolver (c-ares' text), or,
    // where it does not answer, a timeout; never a wait past the timeout as getaddrinfo's.
    const auto start = std::chrono::steady_clock::now();
    const Sample sample = runner->run(probeOf("http://no-such-host.invalid/", 300ms, 300ms));
    const auto took = std::chrono::steady_clock::now() - start;
    INFO(sample.detail);
    CHECK_FALSE(sample.ok);
    CHECK((contains(sample.detail, "cannot resolve no-such-host.invalid: Domain name not found") ||
           sample.detail == "timeout after 300ms"));
    CHECK(took < 300ms + 500ms);
  }
  SUBCASE("[::1]") {
    ServerOptions options;
    options.listen = tcp::endpoint(asio::ip::make_address("::1"), 0);
    auto server = Server::start(options);
    if (!server) {
      MESSAGE("no IPv6 loopback here: ", server.error().message());
      return;
    }
    const Sample sample = runner->run(probeOf(urlOf(**server)));
    CHECK_MESSAGE(sample.ok, sample.detail);
  }
}

TEST_CASE("bad URLs are failed samples that say what is accepted") {
  auto runner = makeProbeRunner();
  for (const std::string url :
       {"https://127.0.0.1/", "127.0.0.1:80/", "http://", "http://host:0/", "http://host:99999/", "http://[::1/",
        "http://[nothost]:80/", "http://user@host/", "http://10.88.0.1:8080:9/", "http://[zz]/", "http://a b/"}) {
    CAPTURE(url);
    const Sample sample = runner->run(probeOf(url));
    CHECK_FALSE(sample.ok);
    CHECK(contains(sample.detail, "invalid URL"));
    CHECK(contains(sample.detail, "accepted: http://HOST[:PORT][/PATH]"));
    // The detail is parseHttpUrl's error, the text the experiment validator reports too.
    auto parsed = parseHttpUrl(url);
    REQUIRE_FALSE(parsed.has_value());
    CHECK(sample.detail == parsed.error());
  }
}

TEST_CASE("parseHttpUrl: host, port and target of accepted URLs") {
  struct Row {
    std::string url;
    std::string host;
    uint16_t port;
    std::string target;
  };
  const std::vector<Row> rows = {
      {"http://10.77.0.1:8080/", "10.77.0.1", 8080, "/"},
      {"HTTP://Example.COM", "Example.COM", 80, "/"},
      {"hTtP://h:1/a/b", "h", 1, "/a/b"},
      {"http://[::1]:9000/healthz?verbose=1#frag", "::1", 9000, "/healthz?verbose=1"},
      {"http://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1", 80, "/"},
      {"http://svc_1.internal.:65535?x=1", "svc_1.internal.", 65535, "/?x=1"},
      {"http://h#top", "h", 80, "/"},
      {"http://h/%20encoded", "h", 80, "/%20encoded"},
  };
  for (const Row& row : rows) {
    CAPTURE(row.url);
    auto url = parseHttpUrl(row.url);
    REQUIRE_MESSAGE(url.has_value(), (url ? "" : url.error()));
    CHECK(url->host == row.host);
    CHECK(url->port == row.port);
    CHECK(url->target == row.target);
  }
}

TEST_CASE("one runner serves concurrent samples") {
  ServerOptions options;
  options.latency = 50ms;
  auto server = startDemo(options);
  auto runner = makeProbeRunner();
  std::vector<Sample> samples(8);
  std::vector<std::thread> threads;
  const auto start = std::chrono::steady_clock::now();
  for (auto& s : samples) {
    threads.emplace_back([&] { s = runner->run(probeOf(urlOf(*server))); });
  }
  for (auto& t : threads) {
    t.join();
  }
  for (const auto& s : samples) {
    CHECK_MESSAGE(s.ok, s.detail);
  }
  // The demo answers them at the same time, not one after another.
  CHECK(std::chrono::steady_clock::now() - start < 350ms);
}
