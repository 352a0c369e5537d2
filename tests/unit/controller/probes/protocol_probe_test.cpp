// The redis, postgres, grpc and dns probes against real servers the test starts in a folder of
// its own on loopback and Unix sockets: redis-server and PostgreSQL from Debian's packages
// (scripts/deps installs them), a gRPC server with gRPC's own health service, and a small UDP
// DNS responder. Servers are stopped and folders removed when a case ends, passed or failed.
// A server that is not installed fails the case on CI (CI=true) and skips it elsewhere.
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "controller/probes/probe.h"
#include "faultline/v1/agent_gateway.grpc.pb.h"
#include "tests/support/eventually.h"

using namespace faultline::controller;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

extern char** environ;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// A server program that is not installed: a failure on CI, a skip (with the reason) elsewhere.
bool missing(const std::string& what) {
  const char* ci = std::getenv("CI");
  if (ci != nullptr && std::string(ci) == "true") {
    FAIL(what, " is not installed; scripts/deps installs it");
  }
  MESSAGE("skipped: ", what, " is not installed (scripts/deps installs it)");
  return true;
}

// A folder of the test's own, removed with everything in it at destruction.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "faultline-probe-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

// A process the test starts (posix_spawn, its own process group); SIGKILLed with its group and
// reaped at destruction.
class Server {
 public:
  explicit Server(std::vector<std::string> argv, const std::string& log) {
    std::vector<char*> args;
    for (auto& a : argv) {
      args.push_back(a.data());
    }
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    const int rc = ::posix_spawnp(&pid_, args[0], &actions, &attr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    REQUIRE_MESSAGE(rc == 0, "cannot start ", argv[0], ": ", std::strerror(rc));
  }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;
  ~Server() {
    ::kill(-pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  // Waits for the process to exit; its exit status.
  int wait() {
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  }

 private:
  pid_t pid_ = -1;
};

uint16_t freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  ::close(fd);
  return ntohs(sa.sin_port);
}

std::string readFile(const fs::path& p) {
  std::ifstream in(p);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::optional<std::string> findProgram(const std::vector<std::string>& candidates) {
  for (const auto& c : candidates) {
    if (::access(c.c_str(), X_OK) == 0) {
      return c;
    }
  }
  return std::nullopt;
}

Probe probeOf(ProbeKind kind) {
  Probe p;
  p.name = "p";
  p.kind = kind;
  return p;
}

}  // namespace

TEST_CASE("redis probe against redis-server: PING, AUTH, a command's reply checked, refused and closed") {
  auto redis = findProgram({"/usr/bin/redis-server", "/usr/local/bin/redis-server"});
  if (!redis && missing("redis-server")) {
    return;
  }
  TempDir dir;
  const uint16_t port = freePort();
  const std::string socket = (dir.path / "redis.sock").string();
  Server server(
      {*redis, "--port", std::to_string(port), "--bind", "127.0.0.1", "--unixsocket", socket, "--unixsocketperm", "700",
       "--save", "", "--appendonly", "no", "--dir", dir.path.string(), "--requirepass", "s3cret-pw"},
      (dir.path / "redis.log").string());
  auto runner = makeProbeRunner();
  Probe p = probeOf(ProbeKind::kRedis);
  p.redis.address.unixSocket = socket;
  p.redis.password = "s3cret-pw";
  REQUIRE_MESSAGE(faultline::testing::eventually([&] { return runner->run(p).ok; }), readFile(dir.path / "redis.log"));

  SUBCASE("PING over the Unix socket and over TCP; latency is the exchange alone") {
    const Sample s = runner->run(p);
    CHECK_MESSAGE(s.ok, s.detail);
    CHECK(s.detail.rfind("'PONG' in ", 0) == 0);
    CHECK(s.latency > 0us);
    CHECK(s.latency < 500ms);
    p.redis.address = ProbeAddress{"127.0.0.1", port, ""};
    const Sample tcp = runner->run(p);
    CHECK_MESSAGE(tcp.ok, tcp.detail);
    p.redis.address = ProbeAddress{"localhost", port, ""};  // a name, resolved with c-ares from /etc/hosts
    const Sample named = runner->run(p);
    CHECK_MESSAGE(named.ok, named.detail);
  }
  SUBCASE("without the password the server's error is the detail; a wrong one is refused") {
    p.redis.password.reset();
    const Sample s = runner->run(p);
    CHECK_FALSE(s.ok);
    CHECK(contains(s.detail, "error reply: 'NOAUTH"));
    p.redis.password = "wrong";
    const Sample wrong = runner->run(p);
    CHECK_FALSE(wrong.ok);
    CHECK(contains(wrong.detail, "AUTH refused: 'WRONGPASS"));
    CHECK_FALSE(contains(wrong.detail, "wrong"));  // the password itself is never in a detail
  }
  SUBCASE("a command's reply: number, equals, match; error replies and nil fail") {
    p.redis.command = {"SET", "queue:depth", "17"};
    p.redis.expect = ValueCheck{ValueCheck::Kind::kEquals, "OK", {}};
    REQUIRE_MESSAGE(runner->run(p).ok, runner->run(p).detail);
    p.redis.command = {"GET", "queue:depth"};
    p.redis.expect = ValueCheck{ValueCheck::Kind::kNumber, "", NumberCheck{Comparison::kLess, 100}};
    const Sample n = runner->run(p);
    CHECK_MESSAGE(n.ok, n.detail);
    CHECK(n.value == std::optional<double>(17));
    p.redis.expect.number = NumberCheck{Comparison::kLess, 10};
    const Sample over = runner->run(p);
    CHECK_FALSE(over.ok);
    CHECK(over.detail == "value 17, expected < 10");
    p.redis.command = {"DBSIZE"};  // an integer reply
    p.redis.expect = ValueCheck{ValueCheck::Kind::kMatch, "^[0-9]+$", {}};
    CHECK_MESSAGE(runner->run(p).ok, runner->run(p).detail);
    p.redis.command = {"GET", "no-such-key"};
    p.redis.expect = ValueCheck{};
    CHECK(runner->run(p).detail == "a nil reply");
    p.redis.command = {"NOSUCHCOMMAND"};
    CHECK(contains(runner->run(p).detail, "error reply: 'ERR unknown command"));
    p.redis.command = {"KEYS", "*"};
    CHECK(contains(runner->run(p).detail, "an array reply of 1 elements"));
  }
  SUBCASE("a reply over 1 MiB is refused, not read whole") {
    p.redis.command = {"SET", "big", std::string(2 * 1024 * 1024, 'x')};
    p.redis.expect = ValueCheck{};
    REQUIRE_MESSAGE(runner->run(p).ok, runner->run(p).detail);
    p.redis.command = {"GET", "big"};
    const Sample s = runner->run(p);
    CHECK_FALSE(s.ok);
    CHECK(contains(s.detail, "the reply is larger than 1048576 bytes"));
  }
  SUBCASE("a closed port, a missing socket and a non-socket path are failed samples at once") {
    p.redis.address = ProbeAddress{"127.0.0.1", freePort(), ""};
    CHECK(runner->run(p).detail == "connection refused");
    p.redis.address = ProbeAddress{"", 0, (dir.path / "none.sock").string()};
    CHECK(contains(runner->run(p).detail, "No such file or directory"));
    const std::string fifo = (dir.path / "fifo").string();
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    p.redis.address = ProbeAddress{"", 0, fifo};
    const auto start = std::chrono::steady_clock::now();
    const Sample s = runner->run(p);
    CHECK_FALSE(s.ok);
    CHECK(std::chrono::steady_clock::now() - start < 1s);  // a FIFO never holds the probe
  }
}

TEST_CASE("addressText: HOST:PORT, [V6]:PORT, unix:/PATH") {
  CHECK(addressText(ProbeAddress{"10.0.0.1", 6379, ""}) == "10.0.0.1:6379");
  CHECK(addressText(ProbeAddress{"::1", 6379, ""}) == "[::1]:6379");
  CHECK(addressText(ProbeAddress{"", 0, "/run/redis/redis.sock"}) == "unix:/run/redis/redis.sock");
}

TEST_CASE("redis probe: a server that accepts and never answers is a timeout within the timeout") {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  REQUIRE(::listen(fd, 8) == 0);
  socklen_t len = sizeof sa;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  Probe p = probeOf(ProbeKind::kRedis);
  p.redis.address = ProbeAddress{"127.0.0.1", ntohs(sa.sin_port), ""};
  p.redis.timeout = 300ms;
  const auto start = std::chrono::steady_clock::now();
  const Sample s = makeProbeRunner()->run(p);
  const auto took = std::chrono::steady_clock::now() - start;
  ::close(fd);
  CHECK_FALSE(s.ok);
  CHECK(s.detail == "timeout after 300ms");
  CHECK(took >= 300ms);
  CHECK(took < 1s);  // the deadline, plus slack for a loaded build machine
}

namespace {

// A PostgreSQL cluster in a folder of the test's own: initdb, then postgres listening on a Unix
// socket in the folder and on 127.0.0.1. Run as the `postgres` user (or nobody) when the test runs
// as root, since PostgreSQL refuses root.
struct Postgres {
  TempDir dir;
  uint16_t port = 0;
  std::unique_ptr<Server> server;
  std::string skipped;

  Postgres() {
    std::optional<std::string> bin;
    for (const char* v : {"17", "16", "15", "14", "13"}) {
      if (auto b = findProgram({std::string("/usr/lib/postgresql/") + v + "/bin/postgres"})) {
        bin = fs::path(*b).parent_path().string();
        break;
      }
    }
    if (!bin) {
      skipped = "postgresql";
      return;
    }
    std::vector<std::string> as;
    if (::geteuid() == 0) {
      const passwd* pw = ::getpwnam("postgres");
      if (pw == nullptr) {
        pw = ::getpwnam("nobody");
      }
      REQUIRE(pw != nullptr);
      REQUIRE(::chown(dir.path.c_str(), pw->pw_uid, pw->pw_gid) == 0);
      as = {"setpriv", "--reuid=" + std::to_string(pw->pw_uid), "--regid=" + std::to_string(pw->pw_gid),
            "--clear-groups", "--"};
    }
    const std::string data = (dir.path / "data").string();
    const std::string log = (dir.path / "postgres.log").string();
    std::vector<std::string> initdb = as;
    for (const std::string& a : {*bin + "/initdb", std::string("-D"), data, std::string("-U"), std::string("probe"),
                                 std::string("--auth-local=trust"), std::string("--auth-host=scram-sha-256"),
                                 std::string("--no-sync"), std::string("--no-instructions")}) {
      initdb.push_back(a);
    }
    {
      Server init(initdb, (dir.path / "initdb.log").string());
      REQUIRE_MESSAGE(init.wait() == 0, readFile(dir.path / "initdb.log"));
    }
    port = freePort();
    std::vector<std::string> run = as;
    for (const std::string& a :
         {*bin + "/postgres", std::string("-D"), data, std::string("-k"), dir.path.string(), std::string("-p"),
          std::to_string(port), std::string("-c"), std::string("listen_addresses=127.0.0.1"), std::string("-c"),
          std::string("fsync=off")}) {
      run.push_back(a);
    }
    server = std::make_unique<Server>(run, log);
  }
};

}  // namespace

TEST_CASE("postgres probe against PostgreSQL: a query's first value checked, password, errors, timeouts") {
  Postgres pg;
  if (!pg.skipped.empty() && missing(pg.skipped)) {
    return;
  }
  auto runner = makeProbeRunner();
  Probe p = probeOf(ProbeKind::kPostgres);
  p.postgres.host = pg.dir.path.string();  // the Unix socket's directory: trust
  p.postgres.port = pg.port;
  p.postgres.user = "probe";
  p.postgres.database = "postgres";
  p.postgres.timeout = 5s;
  p.postgres.maxLatency = 5s;
  REQUIRE_MESSAGE(faultline::testing::eventually([&] { return runner->run(p).ok; }, 30s), runner->run(p).detail, "\n",
                  readFile(pg.dir.path / "postgres.log"));

  SUBCASE("SELECT 1 over the socket; a number, a text and a pattern") {
    const Sample s = runner->run(p);
    CHECK_MESSAGE(s.ok, s.detail);
    CHECK(s.detail.rfind("'1' in ", 0) == 0);
    CHECK(s.latency < 1s);
    p.postgres.query = "SELECT count(*) FROM generate_series(1, 42)";
    p.postgres.expect = ValueCheck{ValueCheck::Kind::kNumber, "", NumberCheck{Comparison::kLessEqual, 42}};
    const Sample n = runner->run(p);
    CHECK_MESSAGE(n.ok, n.detail);
    CHECK(n.value == std::optional<double>(42));
    p.postgres.expect.number = NumberCheck{Comparison::kLess, 10};
    CHECK(runner->run(p).detail == "value 42, expected < 10");
    p.postgres.query = "SHOW server_version";
    p.postgres.expect = ValueCheck{ValueCheck::Kind::kMatch, "^1[0-9]", {}};
    CHECK_MESSAGE(runner->run(p).ok, runner->run(p).detail);
    p.postgres.query = "SELECT 'on'";
    p.postgres.expect = ValueCheck{ValueCheck::Kind::kEquals, "off", {}};
    CHECK(runner->run(p).detail == "'on', expected 'off'");
  }
  SUBCASE("only the first row is read; no row, NULL and SQL errors fail") {
    p.postgres.query = "SELECT g FROM generate_series(1, 1000000) g";
    p.postgres.expect = ValueCheck{ValueCheck::Kind::kEquals, "1", {}};
    const Sample first = runner->run(p);
    CHECK_MESSAGE(first.ok, first.detail);
    p.postgres.query = "SELECT 1 WHERE false";
    CHECK(runner->run(p).detail == "the query returned no row");
    p.postgres.query = "SELECT NULL";
    CHECK(runner->run(p).detail == "the first value is NULL");
    p.postgres.query = "SELECT * FROM no_such_table";
    CHECK(contains(runner->run(p).detail, "query failed: ERROR:  relation \"no_such_table\" does not exist"));
  }
  SUBCASE("over TCP with a password (scram-sha-256); a wrong one is refused without being shown") {
    p.postgres.query = "ALTER ROLE probe PASSWORD 'pg-s3cret'";
    REQUIRE_MESSAGE(runner->run(p).ok, runner->run(p).detail);
    p.postgres.query = "SELECT 1";
    p.postgres.host = "127.0.0.1";
    p.postgres.sslmode = "disable";
    p.postgres.password = "pg-s3cret";
    const Sample s = runner->run(p);
    CHECK_MESSAGE(s.ok, s.detail);
    p.postgres.host = "localhost";  // resolved by the probe, handed to libpq as hostaddr
    CHECK_MESSAGE(runner->run(p).ok, runner->run(p).detail);
    p.postgres.password = "wrong-pw";
    const Sample bad = runner->run(p);
    CHECK_FALSE(bad.ok);
    CHECK(contains(bad.detail, "password authentication failed for user \"probe\""));
    CHECK_FALSE(contains(bad.detail, "wrong-pw"));
  }
  SUBCASE("a query slower than the timeout is a timeout; a closed port is refused") {
    p.postgres.query = "SELECT pg_sleep(5)";
    p.postgres.timeout = 300ms;
    p.postgres.maxLatency = 300ms;
    const auto start = std::chrono::steady_clock::now();
    const Sample s = runner->run(p);
    CHECK(s.detail == "timeout after 300ms (waiting for the answer)");
    CHECK(std::chrono::steady_clock::now() - start < 1s);  // not the 5 s of the sleep
    p.postgres.host = "127.0.0.1";
    p.postgres.port = freePort();
    p.postgres.timeout = 2s;
    CHECK(contains(runner->run(p).detail, "Connection refused"));
  }
}

TEST_CASE("grpc probe against a gRPC server with gRPC's health service") {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // gRPC's health service is served by the sync server's threads, which need one sync service.
  faultline::v1::AgentGateway::Service gateway;
  builder.RegisterService(&gateway);
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  TempDir dir;
  const std::string socket = (dir.path / "grpc.sock").string();
  builder.AddListeningPort("unix:" + socket, grpc::InsecureServerCredentials());
  auto server = builder.BuildAndStart();
  REQUIRE(server != nullptr);
  REQUIRE(port > 0);
  server->GetHealthCheckService()->SetServingStatus("shop.v1.Orders", true);
  server->GetHealthCheckService()->SetServingStatus("shop.v1.Billing", false);
  auto runner = makeProbeRunner();
  Probe p = probeOf(ProbeKind::kGrpc);
  p.grpc.address = ProbeAddress{"127.0.0.1", static_cast<uint16_t>(port), ""};

  const Sample whole = runner->run(p);
  CHECK_MESSAGE(whole.ok, whole.detail);
  CHECK(whole.detail.rfind("server SERVING in ", 0) == 0);
  p.grpc.service = "shop.v1.Orders";
  const Sample orders = runner->run(p);
  CHECK_MESSAGE(orders.ok, orders.detail);
  CHECK(orders.detail.rfind("service 'shop.v1.Orders' SERVING in ", 0) == 0);
  p.grpc.service = "shop.v1.Billing";
  CHECK(runner->run(p).detail == "service 'shop.v1.Billing' is NOT_SERVING");
  p.grpc.service = "shop.v1.Nothing";
  CHECK(runner->run(p).detail == "service 'shop.v1.Nothing' unknown to the health service (NOT_FOUND)");
  p.grpc.service = "shop.v1.Orders";
  p.grpc.address = ProbeAddress{"", 0, socket};
  CHECK_MESSAGE(runner->run(p).ok, runner->run(p).detail);
  p.grpc.address = ProbeAddress{"localhost", static_cast<uint16_t>(port), ""};
  CHECK_MESSAGE(runner->run(p).ok, runner->run(p).detail);

  server->Shutdown();
  p.grpc.address = ProbeAddress{"127.0.0.1", static_cast<uint16_t>(port), ""};
  p.grpc.timeout = 300ms;
  const auto start = std::chrono::steady_clock::now();
  const Sample gone = runner->run(p);
  CHECK_FALSE(gone.ok);
  CHECK(gone.detail.rfind("unavailable: ", 0) == 0);  // fails fast, does not wait for the timeout
  CHECK(std::chrono::steady_clock::now() - start < 1s);
}

namespace {

// A DNS server of the test's own on 127.0.0.1 (UDP): answers A queries for names it holds, an
// empty NOERROR for other types of a name it holds, NXDOMAIN otherwise; or never answers (silent).
class DnsResponder {
 public:
  DnsResponder(std::vector<std::pair<std::string, std::string>> records, bool silent)
      : records_(std::move(records)), silent_(silent) {
    fd_ = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    socklen_t len = sizeof sa;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~DnsResponder() {
    stop_ = true;
    thread_.join();
    ::close(fd_);
  }
  uint16_t port() const { return port_; }
  int queries() const { return queries_; }

 private:
  void serve() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) {
        continue;
      }
      unsigned char q[512];
      sockaddr_in from{};
      socklen_t fromLen = sizeof from;
      const ssize_t n = ::recvfrom(fd_, q, sizeof q, 0, reinterpret_cast<sockaddr*>(&from), &fromLen);
      if (n < 17) {
        continue;
      }
      ++queries_;
      if (silent_) {
        continue;
      }
      // The question: labels from byte 12, then QTYPE and QCLASS.
      size_t at = 12;
      std::string name;
      while (at < static_cast<size_t>(n) && q[at] != 0) {
        const size_t l = q[at];
        name += (name.empty() ? "" : ".") + std::string(reinterpret_cast<char*>(q + at + 1), l);
        at += l + 1;
      }
      const size_t questionEnd = at + 5;
      if (questionEnd > static_cast<size_t>(n)) {
        continue;
      }
      const unsigned qtype = (q[at + 1] << 8) | q[at + 2];
      std::vector<unsigned char> r(q, q + questionEnd);
      r[2] = 0x81;  // QR, RD
      r[3] = 0x80;  // RA, NOERROR
      r[6] = r[7] = r[8] = r[9] = r[10] = r[11] = 0;
      bool known = false;
      unsigned answers = 0;
      for (const auto& [n2, ip] : records_) {
        if (n2 != name) {
          continue;
        }
        known = true;
        if (qtype != 1) {
          continue;
        }
        in_addr a{};
        ::inet_pton(AF_INET, ip.c_str(), &a);
        const unsigned char* b = reinterpret_cast<unsigned char*>(&a);
        const unsigned char rr[] = {0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, b[0], b[1], b[2], b[3]};
        r.insert(r.end(), rr, rr + sizeof rr);
        ++answers;
      }
      if (!known) {
        r[3] = 0x83;  // NXDOMAIN
      }
      r[7] = static_cast<unsigned char>(answers);
      ::sendto(fd_, r.data(), r.size(), 0, reinterpret_cast<sockaddr*>(&from), fromLen);
    }
  }

  std::vector<std::pair<std::string, std::string>> records_;
  bool silent_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> queries_{0};
  std::thread thread_;
};

}  // namespace

TEST_CASE("dns probe: a name resolves (from /etc/hosts, or the given server), optionally to an expected address") {
  auto runner = makeProbeRunner();
  Probe p = probeOf(ProbeKind::kDns);
  SUBCASE("localhost from /etc/hosts") {
    p.dns.name = "localhost";
    p.dns.family = DnsProbe::Family::kIpv4;
    p.dns.expect = {"127.0.0.1"};
    const Sample s = runner->run(p);
    CHECK_MESSAGE(s.ok, s.detail);
    CHECK(s.detail.rfind("localhost is 127.0.0.1 in ", 0) == 0);
  }
  SUBCASE("a server of the test's own: the answers, an unexpected address, NXDOMAIN") {
    DnsResponder dns({{"api.test", "10.1.2.3"}, {"api.test", "10.1.2.4"}}, false);
    p.dns.name = "api.test";
    p.dns.server = "127.0.0.1";
    p.dns.serverPort = dns.port();
    p.dns.family = DnsProbe::Family::kIpv4;
    const Sample s = runner->run(p);
    CHECK_MESSAGE(s.ok, s.detail);
    CHECK(contains(s.detail, "api.test is 10.1.2.3, 10.1.2.4 in "));
    p.dns.expect = {"10.1.2.4"};
    CHECK_MESSAGE(runner->run(p).ok, runner->run(p).detail);
    p.dns.expect = {"10.9.9.9"};
    CHECK(runner->run(p).detail == "api.test is 10.1.2.3, 10.1.2.4, expected one of 10.9.9.9");
    p.dns.expect.clear();
    p.dns.family = DnsProbe::Family::kAny;
    CHECK_MESSAGE(runner->run(p).ok, runner->run(p).detail);  // the AAAA query's empty answer is fine
    p.dns.name = "nothing.test";
    const Sample nx = runner->run(p);
    CHECK_FALSE(nx.ok);
    CHECK(contains(nx.detail, "cannot resolve nothing.test: "));
    CHECK(dns.queries() > 0);
  }
  SUBCASE("a server that never answers is a timeout within the timeout") {
    DnsResponder dns({}, true);
    p.dns.name = "api.test";
    p.dns.server = "127.0.0.1";
    p.dns.serverPort = dns.port();
    p.dns.timeout = 300ms;
    const auto start = std::chrono::steady_clock::now();
    const Sample s = runner->run(p);
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK(s.detail == "timeout after 300ms");
    CHECK(took >= 290ms);
    CHECK(took < 1s);
    CHECK(dns.queries() >= 1);
  }
}

TEST_CASE("redis probe: an array header announcing more elements than the reply bound could carry is refused") {
  // A hostile server: reads the command, answers with payload, and keeps the connection open.
  const auto answer = [](const std::string& payload) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
    REQUIRE(::listen(fd, 8) == 0);
    socklen_t len = sizeof sa;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    std::thread server([fd, payload] {
      const int c = ::accept4(fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) {
        return;
      }
      char buf[256];
      (void)::recv(c, buf, sizeof buf, 0);
      (void)::send(c, payload.data(), payload.size(), MSG_NOSIGNAL);
      std::this_thread::sleep_for(1500ms);
      ::close(c);
    });
    Probe p = probeOf(ProbeKind::kRedis);
    p.redis.address = ProbeAddress{"127.0.0.1", ntohs(sa.sin_port), ""};
    p.redis.timeout = 1s;
    const auto start = std::chrono::steady_clock::now();
    const Sample s = makeProbeRunner()->run(p);
    const auto took = std::chrono::steady_clock::now() - start;
    server.join();
    ::close(fd);
    CHECK(took < 1s);  // refused on the header, not after the timeout
    return s;
  };
  const Sample huge = answer("*2147483647\r\n");
  CHECK_FALSE(huge.ok);
  CHECK_MESSAGE(
      huge.detail.find("announces an array of 2147483647 elements, more than the 349525") != std::string::npos,
      huge.detail);
  // The bound is over the whole reply: nested headers add up.
  const Sample nested = answer("*300000\r\n*300000\r\n");
  CHECK_FALSE(nested.ok);
  CHECK_MESSAGE(nested.detail.find("announces an array of 300000 elements") != std::string::npos, nested.detail);
}
