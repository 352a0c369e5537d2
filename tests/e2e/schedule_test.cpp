// Schedules end to end: a real controller (its scheduler on the system clock) and a real agent on
// a Unix socket, a real SQLite file, the demo service as the probe's target, and the faultline
// binary (apply, schedule show, runs --schedule). Needs root only for the suite's main.
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "agent/session/runtime.h"
#include "controller/server/controller.h"
#include "demo/server.h"
#include "faultline/v1/control.grpc.pb.h"
#include "tests/support/netns_holder.h"

using namespace faultline;
using namespace std::chrono_literals;

namespace {

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/faultline-sched-e2e-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string path;
};

struct ScheduledFleet {
  TempDir dir;
  std::unique_ptr<demo::Server> service;
  std::unique_ptr<controller::Controller> controller;
  std::unique_ptr<agent::AgentRuntime> agent;
  std::string address;

  ScheduledFleet() {
    auto s = demo::Server::start({});
    REQUIRE(s.has_value());
    service = std::move(*s);
    controller::ControllerOptions o{"", dir.path + "/records.db", 15s};
    o.socket = dir.path + "/control.sock";
    o.scheduleStartDelay = 0ms;
    controller = std::make_unique<controller::Controller>(o);
    controller->start();
    address = "unix:" + o.socket;
    agent::SessionOptions so;
    so.controller = address;
    so.agentId = "sched-agent";
    so.hostname = "sched-host";
    so.labels = {{"role", "sched"}};
    agent = std::make_unique<agent::AgentRuntime>(so);
    agent->start();
    REQUIRE(controller->gateway().waitForAgents(1, 10s));
  }
  ~ScheduledFleet() {
    controller->shutdown();  // the scheduler first: no run starts after this
    agent.reset();
    controller.reset();
    service->stop();
  }
  std::string cli(const std::string& args) const {
    auto r = testing::sh(fmt::format("{} {} --controller {}", FAULTLINE_BIN, args, address));
    INFO(args, "\n", r.output);
    CHECK(r.status == 0);
    return r.output;
  }
};

// The lines of text that hold part.
int countLines(const std::string& text, const std::string& part) {
  int n = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) {
      end = text.size();
    }
    if (text.substr(start, end - start).find(part) != std::string::npos) {
      ++n;
    }
    start = end + 1;
  }
  return n;
}

}  // namespace

TEST_CASE("a schedule on a seconds field runs at least twice; runs --schedule lists them; apply is idempotent") {
  ScheduledFleet f;
  {
    std::ofstream(f.dir.path + "/probe-only.yaml") << fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: scheduled-check
targets:
  selector: {{role: sched}}
steadyState:
  probes:
    - name: demo
      http:
        url: http://127.0.0.1:{}/
method:
  - wait: 200ms
)",
                                                                  f.service->endpoint().port());
    std::ofstream(f.dir.path + "/every2s.yaml") << R"(apiVersion: faultline/v1
kind: Schedule
metadata:
  name: every2s
spec:
  cron: "*/2 * * * * *"
  concurrency: forbid
  onlyIf: [demo]
  experimentFile: probe-only.yaml
)";
  }
  CHECK(f.cli("apply " + f.dir.path + "/every2s.yaml") == "schedule every2s created\n");
  CHECK(f.cli("apply " + f.dir.path + "/every2s.yaml") == "schedule every2s unchanged\n");
  // At least two fires that started runs, and both runs finished as held.
  const auto until = std::chrono::steady_clock::now() + 20s;
  std::string runs;
  while (std::chrono::steady_clock::now() < until) {
    runs = f.cli("runs --schedule every2s");
    if (countLines(runs, "held") >= 2) {
      break;
    }
    std::this_thread::sleep_for(500ms);
  }
  INFO(runs);
  CHECK(countLines(runs, "held") >= 2);
  CHECK(countLines(runs, "schedule") >= 2);  // the trigger column
  const std::string show = f.cli("schedule show every2s");
  CHECK(show.find("next fires:") != std::string::npos);
  CHECK(countLines(show, "started run ") >= 2);
  // A scheduled run's timeline names its schedule and fire time.
  const auto id = runs.substr(runs.find('\n') + 1, runs.find(' ', runs.find('\n') + 1) - runs.find('\n') - 1);
  const std::string timeline = f.cli("show " + id);
  CHECK(timeline.find("every2s") != std::string::npos);
  CHECK(timeline.find("fired") != std::string::npos);
  CHECK(f.cli("schedule pause every2s") == "schedule every2s paused\n");
  CHECK(f.cli("schedule rm every2s") == "schedule every2s deleted\n");
}
