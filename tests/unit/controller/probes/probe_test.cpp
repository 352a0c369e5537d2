// The http probe's request options, and the tcp, command and prometheus probes, against servers
// and programs the test starts on this machine (127.0.0.1, port 0).
#include <signal.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "controller/probes/probe.h"
#include "demo/server.h"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace faultline::controller;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Answers every request with a fixed status and body, and keeps the requests it saw. One
// connection at a time, on its own thread; stops at destruction.
class ScriptedServer {
 public:
  ScriptedServer(unsigned status, std::string body) : status_(status), body_(std::move(body)) {
    acceptor_.open(tcp::v4());
    acceptor_.set_option(tcp::acceptor::reuse_address(true));
    acceptor_.bind(tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    acceptor_.listen();
    thread_ = std::thread([this] { serve(); });
  }
  ~ScriptedServer() {
    stopping_ = true;
    // Wake the blocking accept with one last connection.
    boost::system::error_code ignored;
    tcp::socket s(ioc_);
    s.connect(acceptor_.local_endpoint(), ignored);
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(acceptor_.local_endpoint().port()); }
  std::vector<http::request<http::string_body>> requests() {
    std::lock_guard lock(mutex_);
    return requests_;
  }

 private:
  void serve() {
    while (!stopping_) {
      tcp::socket socket(ioc_);
      boost::system::error_code ec;
      acceptor_.accept(socket, ec);
      if (ec || stopping_) {
        return;
      }
      beast::flat_buffer buffer;
      http::request<http::string_body> request;
      http::read(socket, buffer, request, ec);
      if (ec) {
        continue;
      }
      {
        std::lock_guard lock(mutex_);
        requests_.push_back(request);
      }
      http::response<http::string_body> response{static_cast<http::status>(status_), 11};
      response.set(http::field::content_type, "application/json");
      response.body() = body_;
      response.prepare_payload();
      http::write(socket, response, ec);
      socket.shutdown(tcp::socket::shutdown_both, ec);
    }
  }

  unsigned status_;
  std::string body_;
  asio::io_context ioc_;
  tcp::acceptor acceptor_{ioc_};
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  std::vector<http::request<http::string_body>> requests_;
  std::thread thread_;
};

Probe httpProbe(const std::string& url) {
  Probe p;
  p.name = "api";
  p.kind = ProbeKind::kHttp;
  p.http.url = url;
  return p;
}

uint16_t closedPort() {
  asio::io_context ioc;
  tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const auto port = acceptor.local_endpoint().port();
  acceptor.close();
  return port;
}

}  // namespace

TEST_CASE("http probe: method, headers and body are sent; the status set and bodyMatch decide") {
  ScriptedServer server(201, R"({"state":"created"})");
  auto runner = makeProbeRunner();
  Probe p = httpProbe(server.url() + "/orders?x=1");
  p.http.method = "POST";
  p.http.headers = {{"Authorization", "Bearer t0k"}, {"Content-Type", "application/json"}};
  p.http.body = R"({"item":42})";
  p.http.expectStatus = {200, 201, 204};
  p.http.bodyMatch = R"("state":\s*"created")";
  const Sample ok = runner->run(p);
  CHECK_MESSAGE(ok.ok, ok.detail);
  CHECK(ok.detail.rfind("201 in ", 0) == 0);
  const auto seen = server.requests();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].method_string() == "POST");
  CHECK(seen[0].target() == "/orders?x=1");
  CHECK(seen[0][http::field::authorization] == "Bearer t0k");
  CHECK(seen[0][http::field::content_type] == "application/json");
  CHECK(seen[0].body() == R"({"item":42})");

  p.http.bodyMatch = "deleted";
  const Sample noMatch = runner->run(p);
  CHECK_FALSE(noMatch.ok);
  CHECK(contains(noMatch.detail, "body does not match /deleted/"));

  p.http.bodyMatch.reset();
  p.http.expectStatus = {200, 202, 203, 204};
  const Sample wrong = runner->run(p);
  CHECK_FALSE(wrong.ok);
  CHECK(wrong.detail == "status 201, expected 200, 202-204");
}

TEST_CASE("http probe: a method Beast does not know is sent as written") {
  ScriptedServer server(200, "ok");
  auto runner = makeProbeRunner();
  Probe p = httpProbe(server.url());
  p.http.method = "PURGE";
  CHECK(runner->run(p).ok);
  REQUIRE(server.requests().size() == 1);
  CHECK(server.requests()[0].method_string() == "PURGE");
}

TEST_CASE("tcp probe: connect time; refused and unanswered connects are failed samples") {
  auto runner = makeProbeRunner();
  Probe p;
  p.name = "db";
  p.kind = ProbeKind::kTcp;
  p.tcp.host = "127.0.0.1";
  SUBCASE("a listener") {
    asio::io_context ioc;
    tcp::acceptor acceptor(ioc, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    p.tcp.port = acceptor.local_endpoint().port();
    const Sample s = runner->run(p);
    CHECK_MESSAGE(s.ok, s.detail);
    CHECK(s.detail.rfind("connected in ", 0) == 0);
    CHECK(s.latency < 1s);
    p.tcp.host = "localhost";
    CHECK(runner->run(p).ok);
  }
  SUBCASE("a closed port") {
    p.tcp.port = closedPort();
    const Sample s = runner->run(p);
    CHECK_FALSE(s.ok);
    CHECK(s.detail == "connection refused");
  }
  SUBCASE("a name that does not resolve: c-ares within the timeout") {
    p.tcp.host = "no-such-host.invalid";
    p.tcp.port = 80;
    p.tcp.timeout = 300ms;
    const auto start = std::chrono::steady_clock::now();
    const Sample s = runner->run(p);
    const auto took = std::chrono::steady_clock::now() - start;
    INFO(s.detail);
    CHECK_FALSE(s.ok);
    // NXDOMAIN from the system's resolver, or a timeout where it does not answer; never later.
    CHECK((contains(s.detail, "cannot resolve no-such-host.invalid: Domain name not found") ||
           s.detail == "timeout after 300ms"));
    CHECK(took < 300ms + 500ms);
  }
}

TEST_CASE("command probe: exit code, stdout match, no shell unless asked") {
  auto runner = makeProbeRunner();
  Probe p;
  p.name = "check";
  p.kind = ProbeKind::kCommand;
  SUBCASE("exit 0 and a matching stdout") {
    p.command.argv = {"echo", "replicas ready: 3"};
    p.command.stdoutMatch = "ready: [1-9]";
    const Sample s = runner->run(p);
    CHECK_MESSAGE(s.ok, s.detail);
    CHECK(s.detail.rfind("exit 0 in ", 0) == 0);
    p.command.stdoutMatch = "ready: 0";
    const Sample bad = runner->run(p);
    CHECK_FALSE(bad.ok);
    CHECK(contains(bad.detail, "stdout does not match /ready: 0/ (last line: 'replicas ready: 3')"));
  }
  SUBCASE("arguments are not interpreted by a shell") {
    p.command.argv = {"echo", "$HOME; exit 3"};
    p.command.stdoutMatch = R"(^\$HOME; exit 3$)";
    const Sample s = runner->run(p);
    CHECK_MESSAGE(s.ok, s.detail);
  }
  SUBCASE("a wrong exit code, with the last line of stderr") {
    p.command.shell = "echo 'disk full' >&2; exit 3";
    const Sample s = runner->run(p);
    CHECK_FALSE(s.ok);
    CHECK(s.detail == "exit code 3, expected 0 (stderr: disk full)");
    p.command.expectExit = 3;
    CHECK(runner->run(p).ok);
  }
  SUBCASE("a program that does not exist") {
    p.command.argv = {"faultline-no-such-program"};
    const Sample s = runner->run(p);
    CHECK_FALSE(s.ok);
    CHECK(s.detail == "cannot start 'faultline-no-such-program': No such file or directory");
  }
  SUBCASE("a timeout kills the whole process group") {
    // The shell starts a background sleep that writes its pid; both must be gone after the sample.
    const auto pidFile = std::filesystem::temp_directory_path() / ("faultline-probe-" + std::to_string(getpid()));
    std::filesystem::remove(pidFile);
    p.command.shell = "sleep 30 & echo $! > " + pidFile.string() + "; wait";
    p.command.timeout = 300ms;
    const auto start = std::chrono::steady_clock::now();
    const Sample s = runner->run(p);
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK_FALSE(s.ok);
    CHECK(contains(s.detail, "timeout after 300ms"));
    CHECK(took >= 300ms);
    CHECK(took < 800ms);
    std::ifstream in(pidFile);
    pid_t child = 0;
    in >> child;
    std::filesystem::remove(pidFile);
    REQUIRE(child > 0);
    // The sleep was in the killed group: it is gone (or a zombie of init for a moment).
    bool gone = false;
    for (int i = 0; i < 100 && !gone; ++i) {
      std::ifstream stat("/proc/" + std::to_string(child) + "/stat");
      std::string pid, comm, state;
      gone = !(stat >> pid >> comm >> state) || state == "Z";
      if (!gone) {
        std::this_thread::sleep_for(10ms);
      }
    }
    CHECK(gone);
  }
}

TEST_CASE("prometheus probe: an instant query compared with a threshold") {
  auto runner = makeProbeRunner();
  Probe p;
  p.name = "saturation";
  p.kind = ProbeKind::kPrometheus;
  p.prometheus.query = R"(max(rate(cpu_seconds{job="api"}[1m])))";
  p.prometheus.comparison = Comparison::kLess;
  p.prometheus.threshold = 0.8;
  SUBCASE("a vector of one series under the threshold; the query is URL-encoded") {
    ScriptedServer server(200, R"({"status":"success","data":{"resultType":"vector","result":[)"
                               R"({"metric":{},"value":[1700000000.1,"0.25"]}]}})");
    p.prometheus.url = server.url() + "/prom/";
    const Sample s = runner->run(p);
    CHECK_MESSAGE(s.ok, s.detail);
    REQUIRE(s.value.has_value());
    CHECK(*s.value == doctest::Approx(0.25));
    CHECK(s.detail.rfind("0.25 < 0.8 in ", 0) == 0);
    REQUIRE(server.requests().size() == 1);
    CHECK(std::string(server.requests()[0].target()) ==
          "/prom/api/v1/query?query=max%28rate%28cpu_seconds%7Bjob%3D%22api%22%7D%5B1m%5D%29%29");
    p.prometheus.comparison = Comparison::kGreater;
    const Sample over = runner->run(p);
    CHECK_FALSE(over.ok);
    CHECK(over.detail == "value 0.25, expected > 0.8");
    CHECK(over.value.has_value());
  }
  SUBCASE("a scalar") {
    ScriptedServer server(200, R"({"status":"success","data":{"resultType":"scalar","result":[1,"0.9"]}})");
    p.prometheus.url = server.url();
    const Sample s = runner->run(p);
    CHECK_FALSE(s.ok);
    CHECK(s.detail == "value 0.9, expected < 0.8");
  }
  SUBCASE("NaN meets no threshold") {
    ScriptedServer server(200, R"({"status":"success","data":{"resultType":"scalar","result":[1,"NaN"]}})");
    p.prometheus.url = server.url();
    CHECK_FALSE(runner->run(p).ok);
  }
  SUBCASE("an empty vector, several series, an error, not JSON") {
    struct Row {
      unsigned status;
      std::string body;
      std::string detail;
    };
    const std::vector<Row> rows = {
        {200, R"({"status":"success","data":{"resultType":"vector","result":[]}})", "the query returned no series"},
        {200, R"({"status":"success","data":{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}})",
         "the query returned 2 series; accepted: one"},
        {400, R"({"status":"error","errorType":"bad_data","error":"parse error at char 4"})",
         "query failed (status 400): parse error at char 4"},
        {200, "<html>proxy</html>", "the answer is not Prometheus JSON"},
        {200, R"({"status":"success","data":{"resultType":"matrix","result":[]}})", "the query returned a matrix"},
    };
    for (const auto& row : rows) {
      CAPTURE(row.body);
      ScriptedServer server(row.status, row.body);
      p.prometheus.url = server.url();
      const Sample s = runner->run(p);
      CHECK_FALSE(s.ok);
      CHECK(contains(s.detail, row.detail));
    }
  }
  SUBCASE("a server that is down") {
    p.prometheus.url = "http://127.0.0.1:" + std::to_string(closedPort());
    const Sample s = runner->run(p);
    CHECK_FALSE(s.ok);
    CHECK(s.detail == "connection refused");
    CHECK_FALSE(s.value.has_value());
  }
}

TEST_CASE("demo service: tests set its latency and error rate while it runs (POST /admin, setBehaviour)") {
  auto server = faultline::demo::Server::start({});
  REQUIRE(server.has_value());
  const std::string base = "http://127.0.0.1:" + std::to_string((*server)->endpoint().port());
  HttpProbe get;
  get.url = base + "/";
  CHECK(runHttpProbe(get).ok);

  HttpProbe admin;
  admin.url = base + "/admin?latency=120ms&errorRate=100";
  admin.method = "POST";
  const Sample set = runHttpProbe(admin);
  CHECK_MESSAGE(set.ok, set.detail);
  const Sample slowError = runHttpProbe(get);
  CHECK(slowError.detail == "status 500, expected 200");
  CHECK(slowError.latency >= 120ms);

  admin.url = base + "/admin?errorRate=101";
  admin.expectStatus = {400};
  CHECK(runHttpProbe(admin).ok);
  admin.url = base + "/admin?colour=red";
  CHECK(runHttpProbe(admin).ok);
  admin.url = base + "/admin?latency=0";
  admin.method = "GET";
  admin.expectStatus = {405};
  CHECK(runHttpProbe(admin).ok);

  (*server)->setBehaviour(0us, 0);
  const Sample fast = runHttpProbe(get);
  CHECK_MESSAGE(fast.ok, fast.detail);
  CHECK(fast.latency < 100ms);
  (*server)->stop();
}

TEST_CASE("command probe: env reaches the program; stdout's number is compared and recorded") {
  auto runner = makeProbeRunner();
  Probe p;
  p.name = "lag";
  p.kind = ProbeKind::kCommand;
  p.command.shell = "printf 'replication lag\\n%s\\n\\n' \"$LAG\"";
  p.command.env = {{"LAG", "42.5"}, {"PATH", "/usr/bin:/bin"}};
  p.command.stdoutNumber = NumberCheck{Comparison::kLess, 100};
  const Sample s = runner->run(p);
  CHECK_MESSAGE(s.ok, s.detail);
  REQUIRE(s.value.has_value());
  CHECK(*s.value == 42.5);
  CHECK(contains(s.detail, ", stdout 42.5"));
  p.command.stdoutNumber = NumberCheck{Comparison::kLess, 10};
  const Sample over = runner->run(p);
  CHECK_FALSE(over.ok);
  CHECK(contains(over.detail, "stdout 42.5, expected < 10"));
  CHECK(over.value == std::optional<double>(42.5));
  p.command.env = {{"LAG", "n/a"}};
  const Sample text = runner->run(p);
  CHECK_FALSE(text.ok);
  CHECK(contains(text.detail, "stdout's last line 'n/a' is not a number"));
  // The exit code comes first: a wrong one fails the sample whatever stdout holds.
  p.command.shell = "echo 1; exit 2";
  const Sample exit2 = runner->run(p);
  CHECK_FALSE(exit2.ok);
  CHECK(contains(exit2.detail, "exit code 2, expected 0"));
  CHECK_FALSE(exit2.value.has_value());
}

TEST_CASE("http probe: a number at a JSON Pointer of the body is compared and recorded") {
  auto runner = makeProbeRunner();
  ScriptedServer server(200, R"({"series":[{"metric":"errors","pointlist":[[1700000000, 0.031]]}],"a/b":{"x~y":7}})");
  Probe p = httpProbe(server.url() + "/api/v1/query");
  p.http.jsonPointer = "/series/0/pointlist/0/1";
  p.http.jsonNumber = NumberCheck{Comparison::kLess, 0.05};
  const Sample s = runner->run(p);
  CHECK_MESSAGE(s.ok, s.detail);
  CHECK(s.value == std::optional<double>(0.031));
  CHECK(contains(s.detail, "/series/0/pointlist/0/1 is 0.031"));
  p.http.jsonNumber = NumberCheck{Comparison::kLess, 0.01};
  const Sample over = runner->run(p);
  CHECK_FALSE(over.ok);
  CHECK(contains(over.detail, "/series/0/pointlist/0/1 is 0.031, expected < 0.01"));
  p.http.jsonPointer = "/a~1b/x~0y";  // escaped '/' and '~'
  p.http.jsonNumber = NumberCheck{Comparison::kEqual, 7};
  CHECK_MESSAGE(runner->run(p).ok, runner->run(p).detail);
  p.http.jsonPointer = "/series/9/value";
  CHECK(contains(runner->run(p).detail, "the body has nothing at /series/9/value"));
  p.http.jsonPointer = "/series/x";
  CHECK(contains(runner->run(p).detail, "the body has nothing at /series/x"));
  p.http.jsonPointer = "/series/0/metric";
  CHECK(contains(runner->run(p).detail, "/series/0/metric is a string, not a number"));
  ScriptedServer notJson(200, "<html>");
  Probe q = httpProbe(notJson.url());
  q.http.jsonPointer = "/a";
  q.http.jsonNumber = NumberCheck{};
  const Sample bad = runner->run(q);
  CHECK_FALSE(bad.ok);
  CHECK(contains(bad.detail, "the body is not JSON"));
}
