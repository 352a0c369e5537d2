// faultline-demo's server, started in-process on 127.0.0.1:0.
#include <chrono>
#include <string>

#include <doctest/doctest.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "demo/server.h"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using faultline::demo::Server;
using faultline::demo::ServerOptions;
using namespace std::chrono_literals;

namespace {

// A blocking HTTP/1.1 client on one kept-alive connection.
class Client {
 public:
  explicit Client(const tcp::endpoint& server) : socket_(ioc_) { socket_.connect(server); }

  http::response<http::string_body> get(const std::string& target, bool keepAlive = true) {
    http::request<http::empty_body> request{http::verb::get, target, 11};
    request.set(http::field::host, "demo");
    request.keep_alive(keepAlive);
    http::write(socket_, request);
    http::response<http::string_body> response;
    http::read(socket_, buffer_, response);
    return response;
  }

  tcp::socket& socket() { return socket_; }

 private:
  asio::io_context ioc_;
  tcp::socket socket_;
  beast::flat_buffer buffer_;
};

std::unique_ptr<Server> startDemo(ServerOptions options = {}) {
  auto server = Server::start(options);
  if (!server) {
    FAIL("demo server: ", server.error().message());
  }
  return std::move(*server);
}

}  // namespace

TEST_CASE("demo: / and /healthz answer ok on one kept-alive connection") {
  auto server = startDemo();
  CHECK(server->endpoint().port() != 0);
  Client client(server->endpoint());
  for (int i = 0; i < 3; ++i) {
    auto root = client.get("/");
    CHECK(root.result_int() == 200);
    CHECK(root.body() == "ok\n");
    CHECK(root.keep_alive());
    auto health = client.get("/healthz");
    CHECK(health.result_int() == 200);
    CHECK(health.body() == "ok\n");
  }
  CHECK(client.get("/missing").result_int() == 404);
  auto last = client.get("/", false);
  CHECK_FALSE(last.keep_alive());
}

TEST_CASE("demo: latency applies to / only, and connections are served concurrently") {
  ServerOptions options;
  options.latency = 200ms;
  options.threads = 1;
  auto server = startDemo(options);
  Client a(server->endpoint());
  Client b(server->endpoint());

  auto start = std::chrono::steady_clock::now();
  CHECK(a.get("/healthz").result_int() == 200);
  CHECK(std::chrono::steady_clock::now() - start < 150ms);

  // Two slow requests on two connections overlap even on one thread.
  http::request<http::empty_body> request{http::verb::get, "/", 11};
  request.set(http::field::host, "demo");
  start = std::chrono::steady_clock::now();
  http::write(a.socket(), request);
  http::write(b.socket(), request);
  beast::flat_buffer bufferA;
  beast::flat_buffer bufferB;
  http::response<http::string_body> ra;
  http::response<http::string_body> rb;
  http::read(a.socket(), bufferA, ra);
  http::read(b.socket(), bufferB, rb);
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(ra.result_int() == 200);
  CHECK(rb.result_int() == 200);
  CHECK(took >= 200ms);
  CHECK(took < 380ms);
}

TEST_CASE("demo: error rate 100 always fails /, 0 never; /healthz is always 200") {
  ServerOptions failing;
  failing.errorRatePercent = 100;
  auto bad = startDemo(failing);
  Client badClient(bad->endpoint());
  for (int i = 0; i < 5; ++i) {
    CHECK(badClient.get("/").result_int() == 500);
  }
  CHECK(badClient.get("/healthz").result_int() == 200);

  ServerOptions half;
  half.errorRatePercent = 50;
  half.seed = 7;
  auto mixed = startDemo(half);
  Client mixedClient(mixed->endpoint());
  int errors = 0;
  for (int i = 0; i < 200; ++i) {
    errors += mixedClient.get("/").result_int() == 500 ? 1 : 0;
  }
  CHECK(errors > 60);
  CHECK(errors < 140);
}

TEST_CASE("demo: stop() returns promptly with open and busy connections, and frees the port") {
  ServerOptions options;
  options.latency = 10s;
  auto server = startDemo(options);
  const auto endpoint = server->endpoint();
  Client idle(endpoint);
  Client busy(endpoint);
  http::request<http::empty_body> request{http::verb::get, "/", 11};
  request.set(http::field::host, "demo");
  http::write(busy.socket(), request);

  const auto start = std::chrono::steady_clock::now();
  server->stop();
  server->stop();  // idempotent
  CHECK(std::chrono::steady_clock::now() - start < 1s);

  // The busy connection is closed without an answer.
  beast::flat_buffer buffer;
  http::response<http::string_body> response;
  boost::system::error_code ec;
  http::read(busy.socket(), buffer, response, ec);
  CHECK(ec);
  server.reset();

  // Nothing listens any more.
  asio::io_context ioc;
  tcp::socket probe(ioc);
  probe.connect(endpoint, ec);
  CHECK(ec == asio::error::connection_refused);
}

TEST_CASE("demo: bad options and a taken port are errors") {
  ServerOptions badRate;
  badRate.errorRatePercent = 101;
  auto rejected = Server::start(badRate);
  REQUIRE_FALSE(rejected);
  CHECK(rejected.error() == std::errc::invalid_argument);

  auto first = startDemo();
  ServerOptions same;
  same.listen = first->endpoint();
  auto second = Server::start(same);
  REQUIRE_FALSE(second);
  CHECK(second.error() == std::errc::address_in_use);
}

TEST_CASE("demo: --listen and --latency parsing") {
  using faultline::demo::parseLatency;
  using faultline::demo::parseListenAddress;
  auto v4 = parseListenAddress("127.0.0.1:8080");
  REQUIRE(v4);
  CHECK(v4->port() == 8080);
  CHECK(v4->address().to_string() == "127.0.0.1");
  auto v6 = parseListenAddress("[::1]:0");
  REQUIRE(v6);
  CHECK(v6->address().is_v6());
  CHECK(parseListenAddress("localhost:80"));
  CHECK_FALSE(parseListenAddress("127.0.0.1"));
  CHECK_FALSE(parseListenAddress("127.0.0.1:70000"));
  CHECK_FALSE(parseListenAddress(":80"));

  CHECK(parseLatency("0") == 0us);
  CHECK(parseLatency("250ms") == 250ms);
  CHECK(parseLatency("1.5s") == 1500ms);
  CHECK(parseLatency("100us") == 100us);
  CHECK_FALSE(parseLatency("250"));
  CHECK_FALSE(parseLatency("fast"));
  CHECK_FALSE(parseLatency("2h"));
}

TEST_CASE("demo: --body-bytes pads the answer to / and leaves /healthz alone") {
  ServerOptions options;
  options.bodyBytes = 16384;
  auto server = startDemo(options);
  Client client(server->endpoint());
  auto root = client.get("/");
  CHECK(root.result_int() == 200);
  CHECK(root.body().size() == 16384);
  CHECK(root.body().rfind("ok\n", 0) == 0);
  CHECK(client.get("/healthz").body() == "ok\n");
}
