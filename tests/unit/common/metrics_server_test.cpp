#include "common/metrics_server.h"

#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>

namespace faultline::metrics {
namespace {

using tcp = boost::asio::ip::tcp;

// A blocking client on loopback: sends raw bytes, reads until the server closes.
struct Client {
  boost::asio::io_context io;
  tcp::socket socket{io};
  explicit Client(uint16_t port) { socket.connect(tcp::endpoint(boost::asio::ip::make_address("127.0.0.1"), port)); }
  void send(const std::string& bytes) { boost::asio::write(socket, boost::asio::buffer(bytes)); }
  std::string readAll() {
    std::string out;
    boost::system::error_code ec;
    boost::asio::read(socket, boost::asio::dynamic_buffer(out), ec);
    return out;
  }
};

std::string roundTrip(uint16_t port, const std::string& request) {
  Client c(port);
  c.send(request);
  return c.readAll();
}

}  // namespace

TEST_CASE("metrics listen address: PORT, :PORT, HOST:PORT, [V6]:PORT; no names resolved") {
  auto a = parseListenAddress("9464");
  REQUIRE(a);
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 9464);
  a = parseListenAddress(":0");
  REQUIRE(a);
  CHECK(a->host == "127.0.0.1");
  CHECK(a->port == 0);
  a = parseListenAddress("0.0.0.0:9465");
  REQUIRE(a);
  CHECK(a->host == "0.0.0.0");
  a = parseListenAddress("[::1]:9466");
  REQUIRE(a);
  CHECK(a->host == "::1");
  CHECK(a->port == 9466);
  a = parseListenAddress("localhost:1");
  REQUIRE(a);
  CHECK(a->host == "127.0.0.1");
  for (const char* bad :
       {"", "x", "65536", ":-1", "host.example:80", "::1:80", "[::1]", "[::1]80", "1.2.3.4:", "1.2.3.4:8x"}) {
    CAPTURE(bad);
    auto b = parseListenAddress(bad);
    REQUIRE_FALSE(b);
    CHECK(b.error().find("accepted: PORT or :PORT") != std::string::npos);
  }
  CHECK(parseListenAddress("host.example:80").error().find("not an IP address") != std::string::npos);
}

TEST_CASE("metrics server: GET /metrics serves the registry; other paths 404, other methods 405") {
  Registry r;
  r.counter("faultline_test_total", "t").with({}).inc(5);
  auto server = MetricsServer::start({"127.0.0.1", 0}, r);
  REQUIRE(server);
  const uint16_t port = (*server)->port();
  CHECK(port != 0);
  CHECK((*server)->address() == "127.0.0.1:" + std::to_string(port));

  auto ok = roundTrip(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(ok.starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(ok.find("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n") != std::string::npos);
  CHECK(ok.find("\r\n\r\n# HELP faultline_metrics_series_dropped_total") != std::string::npos);
  CHECK(ok.find("\nfaultline_test_total 5\n") != std::string::npos);

  CHECK(roundTrip(port, "GET /metrics?x=1 HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
  CHECK(roundTrip(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404 Not Found\r\n"));
  CHECK(roundTrip(port, "GET /metricsx HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404 Not Found\r\n"));
  auto post = roundTrip(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  CHECK(post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"));
  CHECK(post.find("Allow: GET\r\n") != std::string::npos);
  CHECK(roundTrip(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .starts_with("HTTP/1.1 413 Payload Too Large\r\n"));
}

TEST_CASE("metrics server: a header past the limit is refused, garbage is closed") {
  Registry r;
  auto server = MetricsServer::start({"127.0.0.1", 0}, r);
  REQUIRE(server);
  const uint16_t port = (*server)->port();
  std::string big = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
  for (int i = 0; i < 1000; ++i) {
    big += "X-Filler-" + std::to_string(i) + ": aaaaaaaaaaaaaaaa\r\n";
  }
  big += "\r\n";
  CHECK(roundTrip(port, big).starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
  CHECK(roundTrip(port, "\x01\x02 garbage\r\n\r\n").empty());
  // Still serving.
  CHECK(roundTrip(port, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
}

TEST_CASE("metrics server: silent clients are cut at the timeout and past the connection cap refused") {
  Registry r;
  auto server = MetricsServer::start({"127.0.0.1", 0}, r, ServerLimits{2, std::chrono::milliseconds(500)});
  REQUIRE(server);
  const uint16_t port = (*server)->port();
  Client slow1(port);
  Client slow2(port);
  slow1.send("GET /met");  // never finishes its request
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  {
    Client third(port);  // over the cap: closed without an answer
    third.send("GET /metrics HTTP/1.1\r\n\r\n");
    CHECK(third.readAll().empty());
  }
  const auto start = std::chrono::steady_clock::now();
  CHECK(slow1.readAll().empty());  // closed by the server at its timeout
  CHECK(slow2.readAll().empty());
  const auto waited = std::chrono::steady_clock::now() - start;
  CHECK(waited < std::chrono::seconds(2));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(roundTrip(port, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200 OK\r\n"));
}

TEST_CASE("metrics server: an address in use is a clear error") {
  Registry r;
  auto first = MetricsServer::start({"127.0.0.1", 0}, r);
  REQUIRE(first);
  const uint16_t port = (*first)->port();
  auto second = MetricsServer::start({"127.0.0.1", port}, r);
  REQUIRE_FALSE(second);
  CHECK(second.error() == "metrics: cannot listen on 127.0.0.1:" + std::to_string(port) + ": Address already in use");
}

}  // namespace faultline::metrics
