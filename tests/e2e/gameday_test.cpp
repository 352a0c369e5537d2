// End to end: `faultline gameday` (the binary) against a real controller and agent on a Unix
// socket, with a real demo service (faultline-demo, a process of its own that the second
// experiment pauses). Needs root (the agent pauses a process; the socket's admin by SO_PEERCRED).
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/session/runtime.h"
#include "controller/server/controller.h"
#include "controller/store/store.h"
#include "tests/support/child.h"
#include "tests/support/netns_holder.h"

using namespace faultline;
using namespace std::chrono_literals;

namespace {

struct Dir {
  Dir() {
    char tmpl[] = "/tmp/faultline-gameday-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~Dir() { std::filesystem::remove_all(path); }
  std::string path;
};

int freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

bool accepts(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

size_t count(const std::string& text, const std::string& part) {
  size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) {
    ++n;
  }
  return n;
}

// A controller and an agent on a Unix socket in a directory of their own, the demo service as a
// process, and three experiment files: exp-1 holds, exp-2 is violated (the demo is paused for 3 s
// and its SLO fails), exp-3 holds.
struct Gameday {
  Dir dir;
  std::string db = dir.path + "/records.db";
  int port = freePort();
  testing::Child demo{FAULTLINE_DEMO_BIN, {"faultline-demo", "--listen", fmt::format("127.0.0.1:{}", port)}};
  std::unique_ptr<controller::Controller> controller;
  std::unique_ptr<agent::AgentRuntime> agent;
  std::string address;

  Gameday() {
    for (int i = 0; i < 500 && !accepts(port); ++i) {
      std::this_thread::sleep_for(10ms);
    }
    REQUIRE(accepts(port));
    controller::ControllerOptions o{"", db, 15s};
    o.socket = dir.path + "/control.sock";
    controller = std::make_unique<controller::Controller>(o);
    controller->start();
    address = "unix:" + o.socket;
    agent::SessionOptions so;
    so.controller = address;
    so.agentId = "gameday-agent";
    so.hostname = "gameday-host";
    agent = std::make_unique<agent::AgentRuntime>(so);
    agent->start();
    REQUIRE(controller->gateway().waitForAgents(1, 10s));
    const std::string probe =
        fmt::format(R"(http: {{url: "http://127.0.0.1:{}/", maxLatency: 300ms, timeout: 300ms}})", port);
    for (const char* name : {"exp-1", "exp-3"}) {
      std::ofstream(fmt::format("{}/{}.yaml", dir.path, name)) << fmt::format(
          "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: {}\nsteadyState:\n  every: 100ms\n"
          "  probes:\n    - name: demo\n      {}\nmethod:\n  - wait: 300ms\n",
          name, probe);
    }
    std::ofstream(dir.path + "/exp-2.yaml") << fmt::format(
        "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: exp-2\nsteadyState:\n  every: 100ms\n"
        "  probes:\n    - name: demo\n      {}\n  slos:\n    - name: demo-errors\n      probe: demo\n"
        "      objective: errors < 1% over 1s\nmethod:\n  - fault:\n      name: freeze-demo\n"
        "      type: process.pause\n      duration: 3s\n      process: {{pid: {}}}\n  - wait: 3s\n",
        probe, demo.pid());
  }
  ~Gameday() {
    agent.reset();
    controller.reset();
  }

  testing::CommandResult gameday(const std::string& options) {
    return testing::sh(fmt::format("cd {} && {} gameday exp-1.yaml exp-2.yaml exp-3.yaml --controller {} {}", dir.path,
                                   FAULTLINE_BIN, address, options));
  }

  // The runs the controller recorded with trigger gameday, newest first.
  std::vector<v1::Run> recorded() {
    auto store = controller::openSqliteStore(db, controller::StoreMode::ReadOnly);
    controller::RunFilter filter;
    filter.limit = 100;
    filter.trigger = "gameday";
    return store->listRuns(filter);
  }
};

}  // namespace

TEST_CASE_FIXTURE(Gameday, "faultline gameday stops at the violated second experiment: the third is not run") {
  auto r = gameday("--junit out.xml --summary out.md");
  INFO(r.output);
  CHECK(r.status == 1);  // the worst verdict: violated
  CHECK(r.output.find("== 2/3: exp-2: violated (exit 1)") != std::string::npos);
  CHECK(r.output.find("== 3/3") == std::string::npos);
  CHECK(r.output.find("3  exp-3       not run") != std::string::npos);
  CHECK(r.output.find("game day: violated (exit 1)") != std::string::npos);
  const auto runs = recorded();
  REQUIRE(runs.size() == 2);
  CHECK(runs[0].experiment() == "exp-2");
  CHECK(runs[0].verdict() == v1::VERDICT_VIOLATED);
  CHECK(runs[1].experiment() == "exp-1");
  CHECK(runs[1].verdict() == v1::VERDICT_HELD);
  CHECK(!demo.exited());
  CHECK(slurp(fmt::format("/proc/{}/stat", demo.pid())).find(") S ") != std::string::npos);  // resumed

  const auto xsd = std::string(FAULTLINE_SOURCE_DIR) + "/tests/junit/junit.xsd";
  auto lint = testing::sh(fmt::format("xmllint --noout --schema {} {}/out.xml", xsd, dir.path));
  CHECK_MESSAGE(lint.status == 0, lint.output);
  const std::string xml = slurp(dir.path + "/out.xml");
  CHECK(count(xml, "<testsuite ") == 3);
  CHECK(xml.find(R"(id="1" name="exp-2")") != std::string::npos);
  CHECK(xml.find(R"x(<skipped message="not run: experiment 2 (exp-2) was violated (no --keep-going)"/>)x") !=
        std::string::npos);
  const std::string md = slurp(dir.path + "/out.md");
  CHECK(md.find("| 1 | exp-1 | held | ") != std::string::npos);
  CHECK(md.find("| 2 | exp-2 | violated | ") != std::string::npos);
  CHECK(md.find("errors") != std::string::npos);  // the worst SLI of exp-2: its errors term
  CHECK(md.find("| 3 | exp-3 | not run | - | - | - |") != std::string::npos);
  CHECK(md.find("- result: **violated (exit 1)**") != std::string::npos);
}

TEST_CASE_FIXTURE(Gameday, "faultline gameday --keep-going runs all three; a bad file stops it before any run") {
  auto r = gameday("--keep-going --junit out.xml --summary out.md");
  INFO(r.output);
  CHECK(r.status == 1);
  CHECK(r.output.find("== 3/3: exp-3: held (exit 0)") != std::string::npos);
  const auto runs = recorded();
  REQUIRE(runs.size() == 3);
  CHECK(runs[0].experiment() == "exp-3");
  CHECK(runs[0].verdict() == v1::VERDICT_HELD);
  CHECK(runs[1].verdict() == v1::VERDICT_VIOLATED);
  const auto xsd = std::string(FAULTLINE_SOURCE_DIR) + "/tests/junit/junit.xsd";
  auto lint = testing::sh(fmt::format("xmllint --noout --schema {} {}/out.xml", xsd, dir.path));
  CHECK_MESSAGE(lint.status == 0, lint.output);
  const std::string xml = slurp(dir.path + "/out.xml");
  CHECK(count(xml, "<testsuite ") == 3);
  CHECK(xml.find("<skipped message=\"not run") == std::string::npos);
  const std::string md = slurp(dir.path + "/out.md");
  CHECK(md.find("| 3 | exp-3 | held | ") != std::string::npos);
  CHECK(md.find("- experiments: 3 of 3 run") != std::string::npos);
  CHECK(md.find("`faultline show " + runs[0].run_id()) != std::string::npos);
  // `faultline runs --trigger gameday --verdict held` finds exactly the two held ones.
  auto listed = testing::sh(
      fmt::format("{} runs --controller {} --trigger gameday --verdict held --since 1h", FAULTLINE_BIN, address));
  CHECK(listed.status == 0);
  CHECK(count(listed.output, "gameday  held") == 2);

  // A missing or invalid file: exit 4, nothing run.
  std::ofstream(dir.path + "/bad.yaml") << "apiVersion: faultline/v1\nkind: Experiment\nmetadata: {name: bad}\n";
  r = testing::sh(fmt::format("cd {} && {} gameday exp-1.yaml bad.yaml missing.yaml --controller {}", dir.path,
                              FAULTLINE_BIN, address));
  CHECK(r.status == 4);
  CHECK(r.output.find("bad.yaml:") != std::string::npos);
  CHECK(r.output.find("missing.yaml") != std::string::npos);
  CHECK(r.output.find("nothing was run") != std::string::npos);
  CHECK(recorded().size() == 3);
}
