// The controller and the agent as systemd services (issue 16), with the real binaries: sd_notify
// to a real datagram socket standing in for systemd (READY once the listeners answer, WATCHDOG
// pings, STOPPING on SIGTERM), --config files (keys, flags overriding them, errors at
// file:line:column, a FIFO refused), and the controller as a user without root, as its unit runs
// it. The SIGTERM-mid-run test is in run_test.cpp, next to the other controller SIGTERM test.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "tests/support/eventually.h"
#include "tests/support/logged_process.h"
#include "tests/support/netns_holder.h"
#include "tests/support/notify_socket.h"

using namespace std::chrono_literals;
using faultline::testing::eventually;
using faultline::testing::NotifySocket;

namespace {

struct Dir {
  Dir() {
    char tmpl[] = "/tmp/faultline-service-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~Dir() { std::filesystem::remove_all(path); }
  std::string path;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
}

using Process = faultline::testing::LoggedProcess;

bool connectsUnix(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

bool connectsTcp(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

TEST_CASE("the controller as a service: READY=1 once its socket and port answer, WATCHDOG=1, STOPPING=1, exit 0") {
  Dir dir;
  NotifySocket notify;
  const std::string sock = dir.path + "/c.sock";
  const std::string log = dir.path + "/controller.log";
  Process controller(
      {FAULTLINE_BIN, "controller", "--listen", "127.0.0.1:0", "--socket", sock, "--db", dir.path + "/c.db"}, log,
      notify.env("1000000"));  // WatchdogSec=1s: a ping every 500 ms
  // The first message is READY=1, and both listeners answer the moment it arrives.
  const std::string ready = notify.next(10s);
  INFO(slurp(log));
  REQUIRE(ready.rfind("READY=1\nSTATUS=listening on 127.0.0.1:0 (port ", 0) == 0);
  CHECK(connectsUnix(sock));
  const auto portAt = ready.find("(port ") + 6;
  const int port = std::stoi(ready.substr(portAt));
  CHECK(port > 0);
  CHECK(connectsTcp(port));
  CHECK(ready.find(") and " + sock) != std::string::npos);
  // A STATUS line with the fleet follows, then pings at half of WATCHDOG_USEC.
  CHECK(notify.nextStarting("STATUS=", 5s) ==
        fmt::format("STATUS=listening on 127.0.0.1:0 (port {}) and {}; 0 agent(s), 0 active run(s)", port, sock));
  const int pings = notify.count("WATCHDOG=1", 2100ms);
  CHECK(pings >= 3);
  CHECK(pings <= 5);
  const auto sent = std::chrono::steady_clock::now();
  ::kill(controller.pid, SIGTERM);
  CHECK(notify.nextStarting("STOPPING=1", 5s) ==
        "STOPPING=1\nSTATUS=SIGTERM: aborting 0 active run(s) and reverting "
        "their faults");
  const int status = controller.stop(0);  // already on its way out: wait for it
  CHECK(std::chrono::steady_clock::now() - sent < 5s);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  // After STOPPING, no more pings.
  CHECK(notify.count("WATCHDOG=1", 600ms) == 0);
}

TEST_CASE("the controller raises its open-file limit to the hard limit at start, and says so") {
  rlimit mine{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &mine) == 0);
  if (mine.rlim_max <= 256) {
    MESSAGE("skipped: this process's hard limit of open files is ", mine.rlim_max, ": nothing to raise to");
    return;
  }
  // The controller inherits a soft limit of 256 under a higher hard limit (as a shell's 1024
  // under systemd's 524288).
  const rlimit low{256, mine.rlim_max};
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
  Dir dir;
  const std::string sock = dir.path + "/c.sock";
  const std::string log = dir.path + "/controller.log";
  Process controller({FAULTLINE_BIN, "controller", "--listen", "unix:" + dir.path + "/agents.sock", "--socket", sock,
                      "--db", dir.path + "/c.db"},
                     log);
  REQUIRE(::setrlimit(RLIMIT_NOFILE, &mine) == 0);
  REQUIRE_MESSAGE(eventually([&] { return connectsUnix(sock); }), slurp(log));
  const std::string hard = mine.rlim_max == RLIM_INFINITY ? "unlimited" : std::to_string(mine.rlim_max);
  CHECK(slurp(fmt::format("/proc/{}/limits", controller.pid)).find("Max open files            " + hard + " ") !=
        std::string::npos);
  CHECK_MESSAGE(
      slurp(log).find(fmt::format("open files: limit {} (was 256; the hard limit)", hard)) != std::string::npos,
      slurp(log));
}

TEST_CASE("the agent as a service: READY=1 after its crash recovery, WATCHDOG=1 pings, STOPPING=1 on SIGTERM") {
  Dir dir;
  NotifySocket notify;
  const std::string sock = dir.path + "/c.sock";
  const std::string log = dir.path + "/processes.log";
  Process controller({FAULTLINE_BIN, "controller", "--listen", "", "--socket", sock, "--db", dir.path + "/c.db"}, log);
  REQUIRE_MESSAGE(eventually([&] { return connectsUnix(sock); }), slurp(log));
  Process agent(
      {FAULTLINE_AGENT_BIN, "--controller", "unix:" + sock, "--id", "svc-1", "--state-dir", dir.path + "/agent"}, log,
      notify.env("1000000"));
  const std::string ready = notify.next(10s);
  INFO(slurp(log));
  CHECK(ready == fmt::format("READY=1\nSTATUS=crash recovery done; agent svc-1 serving controller unix:{}", sock));
  // The journal recovery ran before: its file is there.
  CHECK(std::filesystem::exists(dir.path + "/agent/journal.jsonl"));
  const int pings = notify.count("WATCHDOG=1", 2100ms);
  CHECK(pings >= 3);
  CHECK(pings <= 5);
  const int status = agent.stop(SIGTERM);
  CHECK(notify.nextStarting("STOPPING=1", 2s) == "STOPPING=1\nSTATUS=SIGTERM: reverting every fault");
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("without NOTIFY_SOCKET, WATCHDOG_USEC alone sends nothing and changes nothing") {
  Dir dir;
  const std::string sock = dir.path + "/c.sock";
  const std::string log = dir.path + "/controller.log";
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::string(*e).rfind("NOTIFY_SOCKET=", 0) != 0) {
      env.emplace_back(*e);
    }
  }
  env.emplace_back("WATCHDOG_USEC=100000");
  Process controller({FAULTLINE_BIN, "controller", "--listen", "", "--socket", sock, "--db", dir.path + "/c.db"}, log,
                     env);
  REQUIRE_MESSAGE(eventually([&] { return connectsUnix(sock); }), slurp(log));
  std::this_thread::sleep_for(300ms);  // three timeouts: a watchdog would have killed nothing, but let it show
  CHECK(slurp(log).find("watchdog") == std::string::npos);
  const int status = controller.stop(SIGTERM);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("faultline controller --config: the file's keys apply, a flag on the command line overrides one") {
  Dir dir;
  const std::string config = dir.path + "/controller.yaml";
  write(config, fmt::format("# as deploy/config/controller.yaml\nlisten: ''\nsocket: {0}/file.sock\ndb: {0}/file.db\n"
                            "local-role: viewer\nno-command-probes: true\nlease: 20s\n",
                            dir.path));
  const std::string log = dir.path + "/controller.log";
  Process controller({FAULTLINE_BIN, "controller", "--config", config, "--db", dir.path + "/flag.db"}, log);
  REQUIRE_MESSAGE(eventually([&] { return connectsUnix(dir.path + "/file.sock"); }), slurp(log));
  // The socket is bound before the record file is opened: wait for the line that follows both.
  CHECK(eventually([&] { return slurp(log).find("controller listening on no TCP address") != std::string::npos; }));
  CHECK(std::filesystem::exists(dir.path + "/flag.db"));
  CHECK_FALSE(std::filesystem::exists(dir.path + "/file.db"));
  CHECK(WEXITSTATUS(controller.stop(SIGTERM)) == 0);
}

TEST_CASE("--config errors name FILE:LINE:COLUMN and the key; a missing --config is an error; a FIFO is refused") {
  Dir dir;
  const std::string config = dir.path + "/bad.yaml";
  SUBCASE("controller: an unknown key, with the keys accepted") {
    write(config, "db: x.db\nlisten-address: 1.2.3.4:5\n");
    auto r = faultline::testing::sh(fmt::format("timeout 10 {} controller --config {} 2>&1", FAULTLINE_BIN, config));
    CHECK(r.status == 4);
    CHECK_MESSAGE(r.output.find(fmt::format("faultline controller: --config: {}:2:1: unknown key 'listen-address'; "
                                            "accepted here: db, insecure, lease, listen, local-role, ",
                                            config)) != std::string::npos,
                  r.output);
  }
  SUBCASE("controller: a list for a one-value key, a value --local-role refuses") {
    write(config, "listen: [a, b]\nlocal-role: root\n");
    auto r = faultline::testing::sh(fmt::format("timeout 10 {} controller --config {} 2>&1", FAULTLINE_BIN, config));
    CHECK(r.status == 4);
    CHECK_MESSAGE(r.output.find(fmt::format("{}:1:9: key 'listen': wrong type: got a list; accepted: one value",
                                            config)) != std::string::npos,
                  r.output);
    CHECK_MESSAGE(
        r.output.find(fmt::format("{}:2:13: key 'local-role': 'root' refused: ", config)) != std::string::npos,
        r.output);
  }
  SUBCASE("agent: YAML that does not parse, a flag that is not true or false") {
    write(config, "insecure: sometimes\n");
    auto r = faultline::testing::sh(fmt::format("timeout 10 {} --config {} 2>&1", FAULTLINE_AGENT_BIN, config));
    CHECK(r.status == 4);
    CHECK_MESSAGE(r.output.find(fmt::format("faultline-agent: --config: {}:1:11: key 'insecure': wrong type: got the "
                                            "value 'sometimes'; accepted: true or false",
                                            config)) != std::string::npos,
                  r.output);
    write(config, "label: [a=1\n");
    r = faultline::testing::sh(fmt::format("timeout 10 {} --config {} 2>&1", FAULTLINE_AGENT_BIN, config));
    CHECK(r.status == 4);
    CHECK_MESSAGE(r.output.find(fmt::format("{}:2:1: not YAML: ", config)) != std::string::npos, r.output);
  }
  SUBCASE("a --config that does not exist") {
    auto r = faultline::testing::sh(
        fmt::format("timeout 10 {} controller --config {}/none.yaml 2>&1", FAULTLINE_BIN, dir.path));
    CHECK(r.status == 4);
    CHECK_MESSAGE(r.output.find(fmt::format("{}/none.yaml cannot be opened: No such file or directory", dir.path)) !=
                      std::string::npos,
                  r.output);
    r = faultline::testing::sh(fmt::format("timeout 10 {} --config {}/none.yaml 2>&1", FAULTLINE_AGENT_BIN, dir.path));
    CHECK(r.status == 4);
  }
  SUBCASE("a FIFO, at once, by both binaries") {
    const std::string fifo = dir.path + "/fifo.yaml";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    const auto start = std::chrono::steady_clock::now();
    auto r = faultline::testing::sh(fmt::format("timeout 5 {} controller --config {} 2>&1", FAULTLINE_BIN, fifo));
    CHECK(r.status == 4);
    CHECK_MESSAGE(r.output.find(fmt::format("{} is a FIFO; accepted: a regular file of at most 262144 bytes", fifo)) !=
                      std::string::npos,
                  r.output);
    r = faultline::testing::sh(fmt::format("timeout 5 {} --config {} 2>&1", FAULTLINE_AGENT_BIN, fifo));
    CHECK(r.status == 4);
    CHECK_MESSAGE(r.output.find("is a FIFO") != std::string::npos, r.output);
    CHECK(std::chrono::steady_clock::now() - start < 3s);
  }
}

TEST_CASE("faultline-agent --config: keys apply, a repeatable flag's list, the command line overrides") {
  Dir dir;
  const std::string sock = dir.path + "/c.sock";
  const std::string log = dir.path + "/processes.log";
  Process controller({FAULTLINE_BIN, "controller", "--listen", "", "--socket", sock, "--db", dir.path + "/c.db"}, log);
  REQUIRE_MESSAGE(eventually([&] { return connectsUnix(sock); }), slurp(log));
  const std::string config = dir.path + "/agent.yaml";
  write(config,
        fmt::format("controller: unix:{}\nid: from-file\nlabel:\n  - role=web\n  - zone=a\nstate-dir: {}/agent\n", sock,
                    dir.path));
  Process agent({FAULTLINE_AGENT_BIN, "--config", config, "--id", "from-flag"}, log);
  std::string agents;
  REQUIRE_MESSAGE(
      eventually([&] {
        agents = faultline::testing::sh(fmt::format("{} agents --controller unix:{}", FAULTLINE_BIN, sock)).output;
        return agents.find("from-flag") != std::string::npos;
      }),
      slurp(log));
  CHECK(agents.find("role=web") != std::string::npos);
  CHECK(agents.find("zone=a") != std::string::npos);
  CHECK(agents.find("from-file") == std::string::npos);
  CHECK(std::filesystem::exists(dir.path + "/agent/journal.jsonl"));
  CHECK(WEXITSTATUS(agent.stop(SIGTERM)) == 0);
}

// The unit runs `faultline controller --config /etc/faultline/controller.yaml` as User=faultline
// with StateDirectory= and RuntimeDirectory=: no root, a directory of its own for each. A
// --socket-group it is not in must not stop it (it cannot chown to it): mode 0600 then.
TEST_CASE("the controller as a user without root: its own state and runtime directories, a group it is not in") {
  Dir dir;
  ::chmod(dir.path.c_str(), 0755);
  const std::string state = dir.path + "/lib";
  const std::string runtime = dir.path + "/run";
  for (const auto& d : {state, runtime}) {
    std::filesystem::create_directory(d);
    REQUIRE(::chown(d.c_str(), 65534, 65534) == 0);
  }
  const std::string config = dir.path + "/controller.yaml";
  write(config,
        fmt::format("listen: 127.0.0.1:0\nsocket: {}/controller.sock\nsocket-group: root\ndb: {}/controller.db\n",
                    runtime, state));
  const std::string log = dir.path + "/controller.log";
  Process controller({"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", FAULTLINE_BIN,
                      "controller", "--config", config},
                     log);
  const std::string sock = runtime + "/controller.sock";
  REQUIRE_MESSAGE(eventually([&] { return connectsUnix(sock); }), slurp(log));
  struct stat st {};
  REQUIRE(::stat(sock.c_str(), &st) == 0);
  CHECK(st.st_uid == 65534);
  CHECK((st.st_mode & 0777) == 0600);
  CHECK(slurp(log).find("is not in group 'root' (--socket-group)") != std::string::npos);
  REQUIRE(eventually([&] { return slurp(log).find("controller listening on") != std::string::npos; }));
  REQUIRE(::stat((state + "/controller.db").c_str(), &st) == 0);
  CHECK(st.st_uid == 65534);
  // Root may connect (admin), and the Control API answers.
  auto r = faultline::testing::sh(fmt::format("{} agents --controller unix:{} 2>&1", FAULTLINE_BIN, sock));
  CHECK_MESSAGE(r.status == 0, r.output);
  const int status = controller.stop(SIGTERM);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_FALSE(std::filesystem::exists(sock));
}

// The example files H4's packages install to /etc/faultline/ hold only keys the binaries know,
// with values they accept (the paths the units use are overridden here by flags).
TEST_CASE("deploy/config/controller.yaml and agent.yaml are accepted by the binaries") {
  Dir dir;
  const std::string log = dir.path + "/processes.log";
  const std::string sock = dir.path + "/c.sock";
  Process controller({FAULTLINE_BIN, "controller", "--config", FAULTLINE_SOURCE_DIR "/deploy/config/controller.yaml",
                      "--listen", "127.0.0.1:0", "--socket", sock, "--db", dir.path + "/c.db"},
                     log);
  REQUIRE_MESSAGE(eventually([&] { return connectsUnix(sock); }), slurp(log));
  Process agent({FAULTLINE_AGENT_BIN, "--config", FAULTLINE_SOURCE_DIR "/deploy/config/agent.yaml", "--controller",
                 "unix:" + sock, "--id", "example", "--state-dir", dir.path + "/agent"},
                log);
  std::string agents;
  CHECK_MESSAGE(eventually([&] {
                  agents =
                      faultline::testing::sh(fmt::format("{} agents --controller unix:{}", FAULTLINE_BIN, sock)).output;
                  return agents.find("example") != std::string::npos;
                }),
                slurp(log));
  CHECK(agents.find("role=web") != std::string::npos);
  CHECK(slurp(log).find("--config") == std::string::npos);
  CHECK(WEXITSTATUS(agent.stop(SIGTERM)) == 0);
  CHECK(WEXITSTATUS(controller.stop(SIGTERM)) == 0);
}
