// End to end: a real controller and a real agent over loopback gRPC, a real demo service, real
// qdiscs in a throwaway network namespace, a real child process killed, and the SQLite record
// read back. Also the faultline binary itself (validate, run --local, show). Needs root.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "agent/kernel/qdisc_table.h"
#include "agent/session/runtime.h"
#include "controller/probes/probe.h"
#include "controller/server/controller.h"
#include "controller/store/store.h"
#include "demo/server.h"
#include "faultline/v1/agent_gateway.grpc.pb.h"
#include "faultline/v1/control.grpc.pb.h"
#include "tests/support/control_client.h"
#include "tests/support/eventually.h"
#include "tests/support/logged_process.h"
#include "tests/support/netns.h"
#include "tests/support/temp_dir.h"

using namespace faultline;
using namespace std::chrono_literals;

namespace {

using testing::TempDir;

// A child `sleep 600` the experiment kills; reaped (and killed if still alive) at the end.
struct Victim {
  Victim() {
    char arg0[] = "sleep";
    char arg1[] = "600";
    char* argv[] = {arg0, arg1, nullptr};
    REQUIRE(::posix_spawnp(&pid, "sleep", nullptr, nullptr, argv, environ) == 0);
  }
  ~Victim() {
    if (pid > 0 && !reaped) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  // The signal that ended it, 0 if it is still running after timeout.
  int waitSignal(std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      int status = 0;
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        reaped = true;
        return WIFSIGNALED(status) ? WTERMSIG(status) : -1;
      }
      std::this_thread::sleep_for(10ms);
    }
    return 0;
  }
  pid_t pid = -1;
  bool reaped = false;
};

// A controller's options for a test: no TCP address, the Control API and the AgentGateway on a
// Unix socket in dir (this test runs as root: admin there by SO_PEERCRED).
controller::ControllerOptions socketOnly(const std::string& dir, const std::string& db) {
  controller::ControllerOptions o{"", db, 15s};
  o.socket = dir + "/control.sock";
  return o;
}

struct Fleet : testing::NetnsFixture {
  TempDir dir;
  std::string db = dir.path + "/records.db";
  std::unique_ptr<controller::Controller> controller;
  std::unique_ptr<agent::AgentRuntime> agent;
  std::unique_ptr<demo::Server> service;
  std::string address;

  Fleet() : Fleet(std::string()) {}
  // The record file at dbPath ("" = in the fixture's own directory).
  explicit Fleet(const std::string& dbPath) {
    if (!dbPath.empty()) {
      db = dbPath;
    }
    auto s = demo::Server::start({});
    REQUIRE(s.has_value());
    service = std::move(*s);
    const auto options = socketOnly(dir.path, db);
    controller = std::make_unique<controller::Controller>(options);
    controller->start();
    address = "unix:" + options.socket;
    agent::SessionOptions so;
    so.controller = address;
    so.agentId = "e2e-agent";
    so.hostname = "e2e-host";
    so.labels = {{"role", "e2e"}};
    agent = std::make_unique<agent::AgentRuntime>(so);
    agent->start();
    REQUIRE(controller->gateway().waitForAgents(1, 10s));
  }

  ~Fleet() {
    agent.reset();
    controller.reset();
    service->stop();
  }

  std::string probeUrl() const { return fmt::format("http://127.0.0.1:{}/", service->endpoint().port()); }

  // Submits yaml and watches the run to its end; returns the run id and the events.
  std::pair<std::string, std::vector<v1::RunEvent>> run(const std::string& yaml) {
    auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    v1::SubmitRunRequest req;
    req.set_experiment(yaml);
    req.set_file_name("e2e.yaml");
    req.set_trigger("ci");
    auto watched = testing::submitAndWatch(*stub, req);
    REQUIRE_MESSAGE(watched.error.empty(), watched.error);
    return {watched.runId, std::move(watched.events)};
  }

  std::string rootKind() {
    auto table = kernel::openQdiscTable(netns());
    REQUIRE(table.has_value());
    auto root = (*table)->root("veth0");
    REQUIRE(root.has_value());
    return root->has_value() ? (*root)->kind : "";
  }
};

size_t countKind(const std::vector<v1::RunEvent>& events, const std::string& kind) {
  return static_cast<size_t>(
      std::count_if(events.begin(), events.end(), [&](const auto& e) { return e.kind() == kind; }));
}

}  // namespace

TEST_CASE_FIXTURE(Fleet,
                  "an experiment runs over loopback gRPC: tbf applied and reverted, a process killed, all recorded") {
  const std::string before = rootKind();
  Victim victim;
  const std::string yaml = fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: e2e-held
targets:
  selector: {{role: e2e}}
steadyState:
  every: 100ms
  probes:
    - name: demo
      http: {{url: "{}", maxLatency: 1s, timeout: 2s}}
method:
  - fault:
      name: slow-link
      type: network.bandwidth
      duration: 600ms
      target: {{interface: veth0, netns: {}}}
      rate: 1mbit
  - fault:
      name: kill-victim
      type: process.kill
      duration: 200ms
      process: {{pid: {}}}
      signal: SIGKILL
  - wait: 100ms
)",
                                       probeUrl(), netns(), victim.pid);
  auto [runId, events] = run(yaml);
  REQUIRE(!events.empty());
  CHECK(events.back().kind() == "run.finished");
  CHECK(events.back().verdict() == v1::VERDICT_HELD);
  CHECK(countKind(events, "fault.applied") == 2);
  CHECK(countKind(events, "fault.reverted") + countKind(events, "fault.expired") == 2);
  CHECK(victim.waitSignal(2s) == SIGKILL);
  CHECK(rootKind() == before);  // the interface's own root qdisc is back

  auto store = controller::openSqliteStore(db);
  auto rec = store->getRun(runId);
  REQUIRE(rec.has_value());
  CHECK(rec->experiment() == "e2e-held");
  CHECK(rec->trigger() == "ci");
  CHECK(rec->verdict() == v1::VERDICT_HELD);
  CHECK(rec->file_sha256().size() == 64);
  CHECK(rec->events_size() ==
        static_cast<int>(events.size() - countKind(events, "probe.ok") - countKind(events, "probe.failed")));
  std::set<std::string> phases;
  for (const auto& s : rec->samples()) {
    phases.insert(s.phase());
    CHECK(s.ok());
  }
  // The whole run observed: before, both fault steps (and what sampled in the wait), after the rollback.
  CHECK(phases.count("before") == 1);
  CHECK(phases.count("during") == 1);
  CHECK(phases.count("after") == 1);
  phases.erase("wait");
  CHECK(phases.size() == 3);
}

TEST_CASE_FIXTURE(Fleet, "variables, random(n) targets, a parallel group and probe steps; the start time is kept") {
  const std::string before = rootKind();
  Victim victim;
  const std::string yaml = R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: e2e-steps
targets:
  selector: {role: ${ROLE}}
  mode: random(1)
steadyState:
  every: 100ms
  probes:
    - name: demo
      http: {url: "${URL}", maxLatency: 1s, timeout: 2s}
method:
  - probe: demo
  - parallel:
      - fault: {name: slow-link, type: network.bandwidth, duration: 500ms, rate: 1mbit,
                target: {interface: veth0, netns: "${NETNS}"}}
      - fault: {name: kill-victim, type: process.kill, duration: 100ms, process: {pid: ${PID}}}
      - wait: 700ms
      - probe: demo
  - probe: demo
)";
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  v1::SubmitRunRequest req;
  req.set_experiment(yaml);
  req.set_file_name("steps.yaml");
  (*req.mutable_variables())["ROLE"] = "e2e";
  (*req.mutable_variables())["URL"] = probeUrl();
  (*req.mutable_variables())["NETNS"] = netns();
  (*req.mutable_variables())["PID"] = std::to_string(victim.pid);
  {
    // A dry run first: the plan names the host and both faults; nothing is injected.
    grpc::ClientContext ctx;
    v1::RunPlan plan;
    auto status = stub->PlanRun(&ctx, req, &plan);
    REQUIRE_MESSAGE(status.ok(), status.error_message());
    REQUIRE(plan.hosts_size() == 1);
    CHECK(plan.hosts(0).agent().agent_id() == "e2e-agent");
    REQUIRE(plan.hosts(0).faults_size() == 2);
    CHECK(plan.hosts(0).faults(0).step() == "2.1");
    CHECK(plan.hosts(0).faults(0).spec().network_bandwidth().rate_bps() == 1'000'000);
    CHECK(plan.hosts(0).faults(1).step() == "2.2");
    CHECK(plan.hosts(0).faults(1).spec().process_kill().process().pid() == victim.pid);
    CHECK(plan.targets().find("mode random(1): 1 of 1 matching agent(s)") != std::string::npos);
    CHECK(rootKind() == before);
    CHECK(victim.waitSignal(100ms) == 0);  // still alive
  }
  {
    // An undefined variable is refused with its place.
    auto bad = req;
    bad.mutable_variables()->erase("PID");
    grpc::ClientContext ctx;
    v1::SubmitRunResponse resp;
    auto status = stub->SubmitRun(&ctx, bad, &resp);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK(status.error_message().find("steps.yaml:18:") != std::string::npos);
    CHECK(status.error_message().find("undefined variable 'PID'") != std::string::npos);
  }
  const auto watched = testing::submitAndWatch(*stub, req);
  REQUIRE_MESSAGE(watched.error.empty(), watched.error);
  const auto& events = watched.events;
  REQUIRE(!events.empty());
  INFO(events.back().message());
  CHECK(events.back().verdict() == v1::VERDICT_HELD);
  CHECK(victim.waitSignal(2s) == SIGKILL);
  CHECK(rootKind() == before);
  CHECK(countKind(events, "step.parallel") == 1);
  CHECK(countKind(events, "step.probe") == 2);
  CHECK(countKind(events, "fault.applied") == 2);
  // Each fault of the group was applied at (not before) the start time the controller sent.
  REQUIRE(countKind(events, "step.skew") == 2);
  google::protobuf::Timestamp startAt;
  for (const auto& ev : events) {
    if (ev.kind() == "step.skew") {
      REQUIRE(ev.has_start_at());
      if (startAt.seconds() == 0) {
        startAt = ev.start_at();
      }
      CHECK(ev.start_at().seconds() == startAt.seconds());  // one start time for the group
      CHECK(ev.start_at().nanos() == startAt.nanos());
      CHECK(ev.skew().seconds() == 0);
      CHECK(ev.skew().nanos() == 0);  // one host
    }
  }
  const auto nanosOf = [](const google::protobuf::Timestamp& t) { return t.seconds() * 1'000'000'000 + t.nanos(); };
  for (const auto& ev : events) {
    if (ev.kind() == "fault.applied") {
      CHECK(nanosOf(ev.at()) >= nanosOf(startAt));
      CHECK(nanosOf(ev.at()) - nanosOf(startAt) < 200'000'000);  // and soon after it
    }
  }
  auto store = controller::openSqliteStore(db);
  auto rec = store->getRun(watched.runId);
  REQUIRE(rec.has_value());
  int stepSamples = 0;
  for (const auto& sample : rec->samples()) {
    stepSamples += sample.phase() == "step" ? 1 : 0;
  }
  CHECK(stepSamples == 3);
  bool resolvedRecorded = false;
  for (const auto& ev : rec->events()) {
    resolvedRecorded =
        resolvedRecorded || (ev.kind() == "targets.resolved" && ev.message().find("random(1)") != std::string::npos &&
                             ev.message().find("e2e-agent (e2e-host)") != std::string::npos);
  }
  CHECK(resolvedRecorded);
}

TEST_CASE_FIXTURE(Fleet, "targets that match no host fail the dry run and the run before anything is injected") {
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  v1::SubmitRunRequest req;
  req.set_experiment(fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata: {{name: e2e-nobody}}
targets: {{selector: {{role: e2e}}, mode: count(2)}}
method:
  - fault: {{type: network.bandwidth, duration: 1s, rate: 1mbit, target: {{interface: veth0, netns: {}}}}}
)",
                                 netns()));
  grpc::ClientContext ctx;
  v1::RunPlan plan;
  auto status = stub->PlanRun(&ctx, req, &plan);
  CHECK(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(status.error_message() ==
        "mode count(2) needs 2 host(s) but only 1 match the selector {role=e2e}: e2e-agent (e2e-host); nothing was "
        "injected");
  auto [runId, events] = run(req.experiment());
  CHECK(events.back().verdict() == v1::VERDICT_ERROR);
  CHECK(countKind(events, "fault.applied") == 0);
}

TEST_CASE_FIXTURE(Fleet, "a fault the kernel refuses ends the run as an execution error with the agent's reason") {
  const std::string yaml = fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: e2e-error
method:
  - fault:
      type: network.bandwidth
      duration: 1s
      target: {{interface: nope0, netns: {}}}
      rate: 1mbit
)",
                                       netns());
  auto [runId, events] = run(yaml);
  REQUIRE(!events.empty());
  CHECK(events.back().verdict() == v1::VERDICT_ERROR);
  CHECK(events.back().message().find("nope0") != std::string::npos);
  CHECK(countKind(events, "fault.failed") == 1);
}

TEST_CASE_FIXTURE(Fleet, "a steady state that fails before the method injects nothing") {
  const std::string before = rootKind();
  const std::string yaml = fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: e2e-not-steady
steadyState:
  probes:
    - name: wrong-status
      http: {{url: "{}", expectStatus: 204}}
method:
  - fault:
      type: network.bandwidth
      duration: 1s
      target: {{interface: veth0, netns: {}}}
      rate: 1mbit
)",
                                       probeUrl(), netns());
  auto [runId, events] = run(yaml);
  CHECK(events.back().verdict() == v1::VERDICT_NOT_STEADY);
  CHECK(countKind(events, "fault.applied") == 0);
  CHECK(rootKind() == before);
}

namespace {

// Waits (up to 10 s) until veth0 in netns has a root qdisc of kind, without doctest macros (it
// runs on a helper thread). True when it did.
bool waitForRoot(const std::string& netns, const std::string& kind, std::atomic<bool>& cancel) {
  for (int i = 0; i < 1000 && !cancel; ++i) {
    auto table = kernel::openQdiscTable(netns);
    if (table) {
      auto root = (*table)->root("veth0");
      if (root && root->has_value() && (*root)->kind == kind) {
        return true;
      }
    }
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

// Runs action once veth0 in netns has a root qdisc of kind (a tbf the run applied); stopped and
// joined at the end of the scope, also when an assertion ends the test early.
class WhenRoot {
 public:
  WhenRoot(std::string netns, std::string kind, std::function<void()> action)
      : thread_([this, netns = std::move(netns), kind = std::move(kind), action = std::move(action)] {
          if (waitForRoot(netns, kind, cancel_)) {
            action();
          }
        }) {}
  ~WhenRoot() {
    cancel_ = true;
    thread_.join();
  }

 private:
  std::atomic<bool> cancel_{false};
  std::thread thread_;
};

int64_t atMicros(const v1::RunEvent& e) {
  return e.at().seconds() * 1'000'000 + e.at().nanos() / 1000;
}

}  // namespace

TEST_CASE_FIXTURE(Fleet, "an SLO violated during the fault stops the run: reverted at once, no later step, SLIs") {
  const std::string before = rootKind();
  // The service slows down once the tbf is in place, as if the fault hurt it.
  WhenRoot degrade(netns(), "tbf", [this] { service->setBehaviour(300ms, 0); });
  const std::string yaml = fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: e2e-slo
steadyState:
  every: 100ms
  probes:
    - name: demo
      http: {{url: "{}", maxLatency: 2s, timeout: 2s}}
    - name: port
      tcp: {{address: "127.0.0.1:{}"}}
    - name: always
      command: {{argv: ["true"]}}
  slos:
    - name: demo-latency
      probe: demo
      objective: p95 < 100ms and errors < 5% over 2s
method:
  - fault:
      name: first
      type: network.bandwidth
      duration: 30s
      target: {{interface: veth0, netns: {}}}
      rate: 1mbit
  - fault:
      name: never
      type: network.bandwidth
      duration: 30s
      target: {{interface: veth0, netns: {}}}
      rate: 1mbit
)",
                                       probeUrl(), service->endpoint().port(), netns(), netns());
  const auto start = std::chrono::steady_clock::now();
  auto [runId, events] = run(yaml);
  service->setBehaviour(0us, 0);
  CHECK(std::chrono::steady_clock::now() - start < 10s);
  REQUIRE(!events.empty());
  CHECK(events.back().verdict() == v1::VERDICT_VIOLATED);
  CHECK(events.back().message().find("SLO demo-latency (p95 < 100ms and errors < 5% over 2s) violated while the "
                                     "fault was active: p95 3") != std::string::npos);
  CHECK(countKind(events, "fault.applied") == 1);  // the second step never started
  CHECK(rootKind() == before);
  // The revert follows the stop condition at once.
  const v1::RunEvent* stopEvent = nullptr;
  const v1::RunEvent* reverted = nullptr;
  for (const auto& e : events) {
    stopEvent = stopEvent == nullptr && e.kind() == "stop.condition" ? &e : stopEvent;
    reverted = reverted == nullptr && (e.kind() == "fault.reverted" || e.kind() == "fault.expired") ? &e : reverted;
  }
  REQUIRE(stopEvent != nullptr);
  REQUIRE(reverted != nullptr);
  CHECK(reverted->kind() == "fault.reverted");
  CHECK(atMicros(*reverted) >= atMicros(*stopEvent));  // how soon after: bench/abort_latency
  MESSAGE("stop condition to fault reverted: ", (atMicros(*reverted) - atMicros(*stopEvent)) / 1000.0, " ms");

  auto store = controller::openSqliteStore(db);
  auto rec = store->getRun(runId);
  REQUIRE(rec.has_value());
  std::map<std::string, std::pair<int, int>> checks;  // phase -> (checks, failed on enough samples)
  for (const auto& c : rec->slo_checks()) {
    ++checks[c.phase()].first;
    checks[c.phase()].second += c.ok() || c.not_enough_data() ? 0 : 1;
  }
  CHECK(checks["before"] == std::pair{1, 0});
  // The one that stopped the run, and those of samples still in flight then (judged as they end).
  CHECK(checks["during"].second >= 1);
  CHECK(checks["after"].first == 1);  // recorded after rollback too
  std::set<std::string> kinds;
  for (const auto& s : rec->samples()) {
    kinds.insert(s.kind());
  }
  CHECK(kinds == std::set<std::string>{"http", "tcp", "command"});
}

TEST_CASE_FIXTURE(Fleet, "a guard probe that fails during the fault aborts the run and reverts the fault") {
  const std::string before = rootKind();
  // The guarded port refuses connections once the fault is in place.
  WhenRoot outage(netns(), "tbf", [this] { service->stop(); });
  const std::string yaml = fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: e2e-guard
steadyState:
  every: 100ms
  probes:
    - name: service-port
      guard: true
      tcp: {{address: "127.0.0.1:{}", maxLatency: 500ms, timeout: 500ms}}
method:
  - fault:
      type: network.bandwidth
      duration: 30s
      target: {{interface: veth0, netns: {}}}
      rate: 1mbit
)",
                                       service->endpoint().port(), netns());
  auto [runId, events] = run(yaml);
  REQUIRE(!events.empty());
  CHECK(events.back().verdict() == v1::VERDICT_ABORTED);
  CHECK(events.back().message().find(
            "stop condition: guard probe service-port failed while the fault was active: connection refused") !=
        std::string::npos);
  CHECK(rootKind() == before);
}

TEST_CASE_FIXTURE(testing::NetnsFixture, "the faultline binary: validate, run --local, show") {
  TempDir dir;
  const std::string bin = FAULTLINE_BIN;
  {
    std::ofstream bad(dir.path + "/bad.yaml");
    bad << "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: bad\nmethod:\n  - fault:\n"
           "      type: network.loss\n      duration: 1s\n      target: {interface: eth0}\n      percent: 130\n";
  }
  auto r = testing::sh(fmt::format("{} validate {}/bad.yaml", bin, dir.path));
  CHECK(r.status == 4);
  CHECK(r.output.find("bad.yaml:10:") != std::string::npos);
  CHECK(r.output.find("percent") != std::string::npos);

  {
    std::ofstream good(dir.path + "/good.yaml");
    good << fmt::format(
        "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: local\nmethod:\n"
        "  - fault:\n      type: network.bandwidth\n      duration: 300ms\n"
        "      target: {{interface: veth0, netns: {}}}\n      rate: 10mbit\n",
        netns());
  }
  r = testing::sh(fmt::format("cd {} && {} run --local good.yaml --db local.db --state-dir state", dir.path, bin));
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("fault.applied") != std::string::npos);
  CHECK(r.output.find("verdict: held") != std::string::npos);
  const auto at = r.output.find("faultline show ");
  REQUIRE(at != std::string::npos);
  const std::string runId = r.output.substr(at + 15, r.output.find(' ', at + 15) - at - 15);
  r = testing::sh(fmt::format("cd {} && {} show {} --db local.db", dir.path, bin, runId));
  CHECK(r.status == 0);
  CHECK(r.output.find(runId) != std::string::npos);
  // The agent's own timer and the controller's revert race; either ends the fault.
  CHECK((r.output.find("fault.reverted") != std::string::npos || r.output.find("fault.expired") != std::string::npos));
  // --dry-run prints the host and the fault it would receive, and changes nothing.
  r = testing::sh(fmt::format("cd {} && {} run --local --dry-run good.yaml --db dry.db", dir.path, bin));
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("dry run of experiment local: nothing is injected") != std::string::npos);
  CHECK(r.output.find("step 1: network.bandwidth for 300ms on 1 host(s)") != std::string::npos);
  CHECK(r.output.find("1 fault(s)") != std::string::npos);
  CHECK(r.output.find("rate_bps: 10000000") != std::string::npos);
  CHECK(r.output.find("fault.applied") == std::string::npos);
  // --dry-run records nothing: asking it for a journal or a JUnit file is a usage error, not silence.
  r = testing::sh(
      fmt::format("cd {} && {} run --local --dry-run good.yaml --db dry.db --journal j.json", dir.path, bin));
  CHECK(r.status == 4);
  CHECK(r.output.find("--dry-run records nothing") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.path + "/j.json"));
  // A command it does not know is named, with the ones it does (CLI11 alone said "A subcommand is
  // required").
  r = testing::sh(fmt::format("{} valdiate good.yaml", bin));
  CHECK(r.status == 4);
  CHECK_MESSAGE(r.output.find("faultline: unknown command 'valdiate'; accepted: run, validate,") != std::string::npos,
                r.output);
  // --var on validate: an undefined variable is an error at its place; given, the file is valid.
  {
    std::ofstream vars(dir.path + "/vars.yaml");
    vars << "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: vars\nmethod:\n  - wait: ${PAUSE}\n";
  }
  r = testing::sh(fmt::format("{} validate {}/vars.yaml", bin, dir.path));
  CHECK(r.status == 4);
  CHECK(r.output.find("vars.yaml:6:11: undefined variable 'PAUSE'") != std::string::npos);
  r = testing::sh(fmt::format("{} validate --var PAUSE=2s {}/vars.yaml", bin, dir.path));
  CHECK(r.status == 0);
  r = testing::sh(fmt::format("{} validate --var 9X=2s {}/vars.yaml", bin, dir.path));
  CHECK(r.status == 4);
  CHECK(r.output.find("'9X' is not a variable name") != std::string::npos);
  r = testing::sh(fmt::format("{} run {}/good.yaml --controller 127.0.0.1:1", bin, dir.path));
  CHECK(r.status == 3);
  CHECK(r.output.find("cannot reach the controller at 127.0.0.1:1") != std::string::npos);
  r = testing::sh(fmt::format("{} run --no-such-flag x.yaml", bin));
  CHECK(r.status == 4);
}

TEST_CASE_FIXTURE(testing::NetnsFixture, "faultline run --journal --junit writes both reports; show has the windows") {
  TempDir dir;
  auto demo = demo::Server::start({});
  REQUIRE(demo.has_value());
  {
    std::ofstream f(dir.path + "/reports.yaml");
    f << fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: reports
steadyState:
  every: 100ms
  probes:
    - name: demo
      http: {{url: "http://127.0.0.1:{}/", bodyMatch: "^ok"}}
    - name: check
      command: {{shell: "echo ready"}}
  slos:
    - name: demo-slo
      probe: demo
      objective: p99 < 1s and errors < 10% over 5s
method:
  - fault:
      type: network.bandwidth
      duration: 400ms
      target: {{interface: veth0, netns: {}}}
      rate: 10mbit
  - wait: 100ms
)",
                     (*demo)->endpoint().port(), netns());
  }
  auto r = testing::sh(fmt::format("cd {} && {} run --local reports.yaml --db r.db --journal out/j.json --junit j.xml",
                                   dir.path, FAULTLINE_BIN));
  // out/ does not exist: the run's verdict stands, the failed report makes it exit 3, and j.xml is written.
  INFO(r.output);
  CHECK(r.status == 3);
  CHECK(r.output.find("verdict: held") != std::string::npos);
  CHECK(r.output.find("--journal: cannot write") != std::string::npos);
  std::filesystem::create_directory(dir.path + "/out");
  r = testing::sh(fmt::format("cd {} && {} run --local reports.yaml --db r.db --journal out/j.json --junit j.xml",
                              dir.path, FAULTLINE_BIN));
  INFO(r.output);
  REQUIRE(r.status == 0);
  const auto xsd = std::string(FAULTLINE_SOURCE_DIR) + "/tests/junit/junit.xsd";
  auto lint = testing::sh(fmt::format("xmllint --noout --schema {} {}/j.xml", xsd, dir.path));
  CHECK_MESSAGE(lint.status == 0, lint.output);
  std::ifstream xmlIn(dir.path + "/j.xml");
  const std::string xml((std::istreambuf_iterator<char>(xmlIn)), {});
  CHECK(xml.find(R"x(tests="8" failures="0" errors="0" skipped="0")x") != std::string::npos);  // 3 x 2 checks + 2 steps
  std::ifstream jsonIn(dir.path + "/out/j.json");
  const std::string json((std::istreambuf_iterator<char>(jsonIn)), {});
  CHECK(json.find(R"("format": "faultline-journal/v1")") != std::string::npos);
  CHECK(json.find(R"("verdict": "held")") != std::string::npos);
  CHECK(json.find(R"("kind": "command")") != std::string::npos);
  CHECK(json.find(R"("slo": "demo-slo")") != std::string::npos);
  const auto at = r.output.find("faultline show ");
  REQUIRE(at != std::string::npos);
  const std::string runId = r.output.substr(at + 15, r.output.find(' ', at + 15) - at - 15);
  r = testing::sh(fmt::format("cd {} && {} show {} --db r.db", dir.path, FAULTLINE_BIN, runId));
  CHECK(r.status == 0);
  CHECK(r.output.find("\nfaults\nAGENT") != std::string::npos);
  CHECK(r.output.find("step 1") != std::string::npos);
  CHECK(r.output.find("\nslos\nSLO") != std::string::npos);
  CHECK(r.output.find("demo-slo  during") != std::string::npos);
  (*demo)->stop();
}

namespace {

// dir/long.yaml: a 10-minute network.bandwidth fault on veth0 of netns, for run --local.
void writeLongLocal(const std::string& dir, const std::string& netns) {
  std::ofstream f(dir + "/long.yaml");
  f << fmt::format(
      "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: long\nmethod:\n"
      "  - fault:\n      type: network.bandwidth\n      duration: 10m\n"
      "      target: {{interface: veth0, netns: {}}}\n      rate: 1mbit\n",
      netns);
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Starts `faultline run --local dir/long.yaml` (records and state in dir, output to out) and
// returns its pid once the fault is applied. TMPDIR=dir: a run killed with SIGKILL cannot remove
// its private socket directory; it then goes with dir.
pid_t startLocalRun(const std::string& dir, const std::string& out, const std::string& file = "long.yaml",
                    const std::string& options = "") {
  const std::string cmd =
      fmt::format("exec env TMPDIR={} {} run --local {}/{} --db {}/long.db --state-dir {}/state {} > {} 2>&1", dir,
                  FAULTLINE_BIN, dir, file, dir, dir, options, out);
  pid_t pid = 0;
  const char* argv[] = {"sh", "-c", cmd.c_str(), nullptr};
  REQUIRE(::posix_spawn(&pid, "/bin/sh", nullptr, nullptr, const_cast<char**>(argv), environ) == 0);
  std::string text;
  for (int i = 0; i < 200 && text.find("fault.applied") == std::string::npos; ++i) {
    std::this_thread::sleep_for(50ms);
    text = slurp(out);
  }
  REQUIRE_MESSAGE(text.find("fault.applied") != std::string::npos, text);
  return pid;
}

}  // namespace

TEST_CASE_FIXTURE(
    testing::NetnsFixture,
    "SIGTERM, Ctrl-C, SIGHUP or SIGQUIT during faultline run reverts the fault, records 'aborted', exits 2") {
  TempDir dir;
  writeLongLocal(dir.path, netns());
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGQUIT}) {
    CAPTURE(sig);
    const std::string out = dir.path + "/out.txt";
    const pid_t pid = startLocalRun(dir.path, out);
    CHECK(testing::sh(fmt::format("nsenter --net={} tc qdisc show dev veth0", netns())).output.find("tbf") !=
          std::string::npos);
    const auto sent = std::chrono::steady_clock::now();
    ::kill(pid, sig);
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    const auto took = std::chrono::steady_clock::now() - sent;
    const std::string text = slurp(out);
    INFO(text);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 2);
    CHECK(took < 5s);
    CHECK(text.find("verdict: aborted") != std::string::npos);
    CHECK(testing::sh(fmt::format("nsenter --net={} tc qdisc show dev veth0", netns())).output.find("tbf") ==
          std::string::npos);
  }
}

TEST_CASE_FIXTURE(testing::NetnsFixture,
                  "the userspace driver: rules deleted mid-fault end the run at once: exit 3, the reason names them") {
  TempDir dir;
  {
    std::ofstream f(dir.path + "/delay.yaml");
    f << fmt::format(
        "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: long-delay\nmethod:\n"
        "  - fault:\n      type: network.delay\n      duration: 10m\n"
        "      target: {{interface: veth0, netns: {}}}\n      delay: 50ms\n",
        netns());
  }
  const std::string out = dir.path + "/out.txt";
  const pid_t pid = startLocalRun(dir.path, out, "delay.yaml", "--network-driver nfqueue");
  REQUIRE_MESSAGE(
      inNetns("iptables-legacy -t mangle -S").find("-A OUTPUT -o veth0 -j FAULTLINE-0") != std::string::npos,
      slurp(out));
  inNetns("iptables-legacy -t mangle -D OUTPUT -o veth0 -j FAULTLINE-0");
  const auto deleted = std::chrono::steady_clock::now();
  int status = 0;
  pid_t done = 0;
  while ((done = ::waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() - deleted < 10s) {
    std::this_thread::sleep_for(20ms);
  }
  if (done == 0) {
    ::kill(pid, SIGTERM);
    ::waitpid(pid, &status, 0);
  }
  REQUIRE_MESSAGE(done == pid, slurp(out));
  const auto took = std::chrono::steady_clock::now() - deleted;
  const std::string text = slurp(out);
  INFO(text);
  MESSAGE(fmt::format("the run ended {:.0f} ms after the jump rule was deleted",
                      std::chrono::duration<double, std::milli>(took).count()));
  CHECK(took < 3s);  // the fault lasts 10 minutes: the watch ended it, about a second after
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 3);
  CHECK(text.find("verdict: error") != std::string::npos);
  CHECK(text.find("the fault is no longer in place: the IPv4 jump rule OUTPUT -o veth0 -> FAULTLINE-0 is gone "
                  "(someone deleted it): packets no longer reach the chain\n") != std::string::npos);
  CHECK(text.find("not those installed") == std::string::npos);  // the chains iptables rewrote are unchanged
  // The revert removed the rest: nothing of faultline's is left.
  CHECK(inNetns("iptables-legacy -t mangle -S").find("FAULTLINE") == std::string::npos);
  CHECK(inNetns("ip6tables-legacy -t mangle -S").find("FAULTLINE") == std::string::npos);
}

TEST_CASE_FIXTURE(testing::NetnsFixture,
                  "a root replaced with tc mid-fault ends the run at once: exit 3, the reason names what is there") {
  TempDir dir;
  writeLongLocal(dir.path, netns());
  const std::string out = dir.path + "/out.txt";
  const pid_t pid = startLocalRun(dir.path, out);
  inNetns("tc qdisc replace dev veth0 root handle 5: tbf rate 8mbit burst 10kb latency 50ms");
  const auto replaced = std::chrono::steady_clock::now();
  int status = 0;
  pid_t done = 0;
  while ((done = ::waitpid(pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() - replaced < 10s) {
    std::this_thread::sleep_for(20ms);
  }
  if (done == 0) {
    ::kill(pid, SIGTERM);
    ::waitpid(pid, &status, 0);
  }
  REQUIRE_MESSAGE(done == pid, slurp(out));
  const auto took = std::chrono::steady_clock::now() - replaced;
  const std::string text = slurp(out);
  INFO(text);
  MESSAGE(fmt::format("the run ended {:.0f} ms after the tc replace",
                      std::chrono::duration<double, std::milli>(took).count()));
  CHECK(took < 5s);  // the fault lasts 10 minutes: the watch ended it, not its duration
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 3);
  CHECK(text.find("verdict: error") != std::string::npos);
  CHECK(text.find("ended before its duration") != std::string::npos);
  CHECK(text.find("the fault is no longer in place: the root qdisc of veth0 is now tbf 5:, not faultline's tbf "
                  "fa17: (someone replaced it)") != std::string::npos);
  // The revert leaves the root someone put there alone.
  CHECK(inNetns("tc qdisc show dev veth0").find("qdisc tbf 5: root") != std::string::npos);
}

TEST_CASE_FIXTURE(testing::NetnsFixture,
                  "run --local killed with SIGKILL mid-fault: the next run --local on its state directory reverts it") {
  TempDir dir;
  writeLongLocal(dir.path, netns());
  const std::string out = dir.path + "/out.txt";
  const pid_t pid = startLocalRun(dir.path, out);
  const std::string text = slurp(out);
  // While it runs, a second run --local on the same state directory is refused, and changes nothing.
  auto r = testing::sh(fmt::format("{} run --local {}/long.yaml --db {}/other.db --state-dir {}/state", FAULTLINE_BIN,
                                   dir.path, dir.path, dir.path));
  CHECK(r.status == 3);
  CHECK_MESSAGE(r.output.find("in use by another running faultline agent") != std::string::npos, r.output);
  ::kill(pid, SIGKILL);
  REQUIRE(::waitpid(pid, nullptr, 0) == pid);
  const auto root = [&] {
    return testing::sh(fmt::format("nsenter --net={} tc qdisc show dev veth0", netns())).output;
  };
  CHECK(root().find("tbf fa17:") != std::string::npos);  // nothing reverted it

  {
    std::ofstream f(dir.path + "/short.yaml");
    f << "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: short\nmethod:\n  - wait: 10ms\n";
  }
  r = testing::sh(fmt::format("{} run --local {}/short.yaml --db {}/long.db --state-dir {}/state", FAULTLINE_BIN,
                              dir.path, dir.path, dir.path));
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.find("recovered fault") != std::string::npos);
  CHECK(root().find("tbf") == std::string::npos);
  // The killed run's record: interrupted, and its fault expired by the recovery.
  REQUIRE(text.rfind("run ", 0) == 0);
  const std::string killedRun = text.substr(4, text.find(':') - 4);
  r = testing::sh(fmt::format("{} show {} --db {}/long.db", FAULTLINE_BIN, killedRun, dir.path));
  CHECK(r.output.find("interrupted") != std::string::npos);
  CHECK(r.output.find("crash recovery") != std::string::npos);
  // The verdict's reason says what reverted the faults: the crash recovery, not leases.
  CHECK(r.output.find("interrupted: the run --local process stopped during the run; the crash recovery of its "
                      "agent's undo journal") != std::string::npos);
  CHECK(r.output.find("leases") == std::string::npos);
}

namespace {

using Child = testing::LoggedProcess;

// A fake agent speaking AgentGateway to a real controller (no kernel): the test decides what it
// holds, reports and when it disconnects.
class FakeAgentStream {
 public:
  // holding: the fault ids its Hello lists; revertError: when set, each is listed as FAILED with
  // it (held, its revert failing and retried).
  FakeAgentStream(v1::AgentGateway::Stub& stub, const std::vector<std::string>& holding,
                  const std::string& revertError = "") {
    stream_ = stub.Connect(&ctx_);
    v1::AgentMessage hello;
    hello.mutable_hello()->set_agent_id("fake-agent");
    hello.mutable_hello()->set_hostname("fake-host");
    (*hello.mutable_hello()->mutable_labels())["role"] = "e2e";
    hello.mutable_hello()->mutable_capabilities()->set_tbf(true);  // can take the network.bandwidth it is sent
    for (const auto& id : holding) {
      auto* r = hello.mutable_hello()->add_active_faults();
      r->set_fault_id(id);
      r->set_state(revertError.empty() ? v1::FAULT_STATE_APPLIED : v1::FAULT_STATE_FAILED);
      r->set_error(revertError);
    }
    REQUIRE(stream_->Write(hello));
    REQUIRE(next().has_welcome());
  }
  ~FakeAgentStream() { disconnect(); }

  // The next message that is not a heartbeat.
  v1::ControllerMessage next() {
    v1::ControllerMessage m;
    do {
      REQUIRE(stream_->Read(&m));
    } while (m.has_heartbeat());
    return m;
  }
  void report(const std::string& id, v1::FaultState state, const std::string& detail = "") {
    v1::AgentMessage m;
    m.mutable_report()->set_fault_id(id);
    m.mutable_report()->set_state(state);
    m.mutable_report()->set_detail(detail);
    REQUIRE(stream_->Write(m));
  }
  void heartbeat() {
    v1::AgentMessage m;
    m.mutable_heartbeat();
    REQUIRE(stream_->Write(m));
  }
  void disconnect() {
    if (!gone_) {
      gone_ = true;
      ctx_.TryCancel();
      v1::ControllerMessage m;
      while (stream_->Read(&m)) {
      }
      (void)stream_->Finish();
    }
  }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::ControllerMessage>> stream_;
  bool gone_ = false;
};

// The events of a run's record whose kind is kind and whose message contains text.
size_t countRecorded(const std::string& address, const std::string& runId, const std::string& kind,
                     const std::string& text) {
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::GetRunRequest req;
  req.set_run_id(runId);
  v1::Run run;
  if (!stub->GetRun(&ctx, req, &run).ok()) {
    return 0;
  }
  size_t n = 0;
  for (const auto& e : run.events()) {
    if (e.kind() == kind && e.message().find(text) != std::string::npos) {
      ++n;
    }
  }
  return n;
}

}  // namespace

TEST_CASE_FIXTURE(testing::NetnsFixture,
                  "separate processes: an agent stopped mid-fault ends the run as an error at once; ids are unique") {
  TempDir dir;
  const std::string address = "unix:" + dir.path + "/controller.sock";
  const std::string log = dir.path + "/processes.log";
  Child controller(
      {FAULTLINE_BIN, "controller", "--listen", "", "--socket", address.substr(5), "--db", dir.path + "/c.db"}, log);
  Child agent({FAULTLINE_AGENT_BIN, "--controller", address, "--id", "e2e-1", "--label", "role=e2e", "--state-dir",
               dir.path + "/agent"},
              log);
  REQUIRE_MESSAGE(
      testing::eventually(
          [&] {
            return testing::sh(fmt::format("{} agents --controller {}", FAULTLINE_BIN, address)).output.find("e2e-1") !=
                   std::string::npos;
          },
          10s),
      slurp(log));

  // A second agent with the same id is refused, and says why.
  Child twin({FAULTLINE_AGENT_BIN, "--controller", address, "--id", "e2e-1", "--state-dir", dir.path + "/twin"},
             dir.path + "/twin.log");
  CHECK(testing::eventually(
      [&] { return slurp(dir.path + "/twin.log").find("already connected") != std::string::npos; }, 10s));
  twin.stop(SIGTERM);

  {
    std::ofstream f(dir.path + "/long.yaml");
    f << fmt::format(
        "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: long\ntargets:\n  selector: {{role: e2e}}\n"
        "method:\n  - fault:\n      type: network.bandwidth\n      duration: 10m\n"
        "      target: {{interface: veth0, netns: {}}}\n      rate: 1mbit\n",
        netns());
  }
  const std::string out = dir.path + "/run.txt";
  Child run({FAULTLINE_BIN, "run", dir.path + "/long.yaml", "--controller", address}, out);
  REQUIRE_MESSAGE(testing::eventually([&] { return slurp(out).find("fault.applied") != std::string::npos; }, 10s),
                  slurp(out));
  const auto stopped = std::chrono::steady_clock::now();
  const int agentStatus = agent.stop(SIGTERM);
  CHECK(WIFEXITED(agentStatus));
  CHECK(WEXITSTATUS(agentStatus) == 0);
  // The agent reverted on SIGTERM before it exited.
  CHECK(testing::sh(fmt::format("nsenter --net={} tc qdisc show dev veth0", netns())).output.find("tbf") ==
        std::string::npos);
  int status = 0;
  REQUIRE(testing::eventually([&] { return ::waitpid(run.pid, &status, WNOHANG) == run.pid; }, 10s));
  run.pid = -1;
  CHECK(std::chrono::steady_clock::now() - stopped < 5s);
  INFO(slurp(out));
  CHECK(WEXITSTATUS(status) == 3);
  CHECK(slurp(out).find("ended before its duration") != std::string::npos);
  CHECK(slurp(out).find("agent stopped (SIGTERM)") != std::string::npos);
}

namespace {

// The State line of /proc/PID/status, e.g. "T (stopped)"; "" when the process is gone.
std::string processState(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("State:", 0) == 0) {
      const auto value = line.find_first_not_of(" \t", 6);
      return value == std::string::npos ? "" : line.substr(value);
    }
  }
  return "";
}

}  // namespace

TEST_CASE("separate processes: SIGTERM to an agent holding a process.pause resumes the paused process") {
  TempDir dir;
  const std::string address = "unix:" + dir.path + "/controller.sock";
  const std::string log = dir.path + "/processes.log";
  Child controller(
      {FAULTLINE_BIN, "controller", "--listen", "", "--socket", address.substr(5), "--db", dir.path + "/c.db"}, log);
  Child agent({FAULTLINE_AGENT_BIN, "--controller", address, "--id", "e2e-pause", "--label", "role=e2e", "--state-dir",
               dir.path + "/agent"},
              log);
  // The victim shares the test's cgroup with other processes, so the agent stops it with SIGSTOP
  // (a cgroup freeze needs a cgroup only the targets hold).
  Child victim({"/bin/sleep", "600"}, dir.path + "/victim.log");
  REQUIRE(testing::eventually([&] { return processState(victim.pid).rfind('S', 0) == 0; }, 5s));
  REQUIRE_MESSAGE(testing::eventually(
                      [&] {
                        return testing::sh(fmt::format("{} agents --controller {}", FAULTLINE_BIN, address))
                                   .output.find("e2e-pause") != std::string::npos;
                      },
                      10s),
                  slurp(log));
  {
    std::ofstream f(dir.path + "/pause.yaml");
    f << fmt::format(
        "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: pause\ntargets:\n  selector: {{role: e2e}}\n"
        "method:\n  - fault:\n      type: process.pause\n      duration: 10m\n      process: {{pid: {}}}\n",
        victim.pid);
  }
  const std::string out = dir.path + "/run.txt";
  Child run({FAULTLINE_BIN, "run", dir.path + "/pause.yaml", "--controller", address}, out);
  REQUIRE_MESSAGE(testing::eventually([&] { return slurp(out).find("fault.applied") != std::string::npos; }, 10s),
                  slurp(out));
  CHECK(processState(victim.pid).rfind('T', 0) == 0);  // stopped by the fault
  CHECK(slurp(out).find("SIGSTOP") != std::string::npos);

  const int agentStatus = agent.stop(SIGTERM);
  CHECK(WIFEXITED(agentStatus));
  CHECK(WEXITSTATUS(agentStatus) == 0);
  // Resumed by the agent before it exited: no longer stopped (state T), and still alive.
  const std::string state = processState(victim.pid);
  INFO("victim state: ", state);
  CHECK(!state.empty());
  CHECK(state.rfind('T', 0) != 0);
  int status = 0;
  REQUIRE(testing::eventually([&] { return ::waitpid(run.pid, &status, WNOHANG) == run.pid; }, 10s));
  run.pid = -1;
  INFO(slurp(out));
  CHECK(WEXITSTATUS(status) == 3);
  // The fault's end event says what the revert did.
  CHECK(slurp(out).find(fmt::format("resumed 1 of 1 paused process(es) (agent stopped (SIGTERM)): SIGCONT to pid {}",
                                    victim.pid)) != std::string::npos);
}

TEST_CASE("separate processes: three agents, one fault step: the skew of their start is recorded and small") {
  TempDir dir;
  const std::string address = "unix:" + dir.path + "/controller.sock";
  const std::string log = dir.path + "/processes.log";
  Child controller(
      {FAULTLINE_BIN, "controller", "--listen", "", "--socket", address.substr(5), "--db", dir.path + "/c.db"}, log);
  // Each agent runs in a network namespace of its own (with veth0 and veth1), so one spec (tbf on
  // veth0 of the agent's own namespace) is a separate fault on each host.
  constexpr int kAgents = 3;
  std::vector<std::unique_ptr<testing::NetnsHolder>> namespaces;
  std::vector<std::unique_ptr<Child>> agents;
  for (int i = 0; i < kAgents; ++i) {
    namespaces.push_back(std::make_unique<testing::NetnsHolder>());
    REQUIRE_MESSAGE(namespaces.back()->error().empty(), namespaces.back()->error());
    agents.push_back(std::make_unique<Child>(
        std::vector<std::string>{"/usr/bin/nsenter", "--net=" + namespaces.back()->path(), FAULTLINE_AGENT_BIN,
                                 "--controller", address, "--id", fmt::format("skew-{}", i), "--label", "role=skew",
                                 "--state-dir", fmt::format("{}/agent-{}", dir.path, i)},
        log));
  }
  REQUIRE_MESSAGE(testing::eventually(
                      [&] {
                        const auto listed =
                            testing::sh(fmt::format("{} agents --controller {}", FAULTLINE_BIN, address));
                        for (int i = 0; i < kAgents; ++i) {
                          if (listed.output.find(fmt::format("skew-{}", i)) == std::string::npos) {
                            return false;
                          }
                        }
                        return true;
                      },
                      10s),
                  slurp(log));
  {
    std::ofstream f(dir.path + "/skew.yaml");
    f << "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: skew\ntargets:\n  selector: {role: skew}\n"
         "method:\n  - fault:\n      type: network.bandwidth\n      duration: 300ms\n"
         "      target: {interface: veth0}\n      rate: 1mbit\n";
  }
  const auto r = testing::sh(fmt::format("{} run {}/skew.yaml --controller {}", FAULTLINE_BIN, dir.path, address));
  INFO(r.output);
  REQUIRE(r.status == 0);
  REQUIRE(r.output.rfind("run ", 0) == 0);
  const std::string runId = r.output.substr(4, r.output.find(':') - 4);
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::GetRunRequest req;
  req.set_run_id(runId);
  v1::Run run;
  REQUIRE(stub->GetRun(&ctx, req, &run).ok());
  int applied = 0;
  std::vector<v1::RunEvent> skews;
  for (const auto& e : run.events()) {
    applied += e.kind() == "fault.applied" ? 1 : 0;
    if (e.kind() == "step.skew") {
      skews.push_back(e);
    }
  }
  CHECK(applied == kAgents);
  REQUIRE(skews.size() == 1);
  CAPTURE(skews[0].message());
  CHECK(skews[0].message().find(fmt::format("{} host(s) applied within", kAgents)) != std::string::npos);
  REQUIRE(skews[0].has_skew());
  const int64_t skewNs = int64_t{skews[0].skew().seconds()} * 1'000'000'000 + skews[0].skew().nanos();
  MESSAGE("step.skew over ", kAgents, " agents: ", static_cast<double>(skewNs) / 1e6, " ms");
  CHECK(skewNs >= 0);
  CHECK(skewNs < 1'000'000'000);  // a generous bound: the agents wait for one absolute start time
  for (int i = 0; i < kAgents; ++i) {
    CHECK(testing::sh(fmt::format("nsenter --net={} tc qdisc show dev veth0", namespaces[i]->path()))
              .output.find("tbf") == std::string::npos);
  }
  for (auto& a : agents) {
    CHECK(WEXITSTATUS(a->stop(SIGTERM)) == 0);
  }
}

TEST_CASE_FIXTURE(testing::NetnsFixture,
                  "separate processes: an agent killed with SIGKILL mid-fault reverts it at its "
                  "next start, from its undo journal") {
  TempDir dir;
  const std::string address = "unix:" + dir.path + "/controller.sock";
  const std::string log = dir.path + "/processes.log";
  const std::string stateDir = dir.path + "/agent";
  Child controller(
      {FAULTLINE_BIN, "controller", "--listen", "", "--socket", address.substr(5), "--db", dir.path + "/c.db"}, log);
  auto agent =
      std::make_unique<Child>(std::vector<std::string>{FAULTLINE_AGENT_BIN, "--controller", address, "--id", "e2e-k",
                                                       "--label", "role=e2e", "--state-dir", stateDir},
                              log);
  REQUIRE_MESSAGE(
      testing::eventually(
          [&] {
            return testing::sh(fmt::format("{} agents --controller {}", FAULTLINE_BIN, address)).output.find("e2e-k") !=
                   std::string::npos;
          },
          10s),
      slurp(log));
  {
    std::ofstream f(dir.path + "/long.yaml");
    f << fmt::format(
        "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: long\ntargets:\n  selector: {{role: e2e}}\n"
        "method:\n  - fault:\n      type: network.bandwidth\n      duration: 10m\n"
        "      target: {{interface: veth0, netns: {}}}\n      rate: 1mbit\n",
        netns());
  }
  const std::string out = dir.path + "/run.txt";
  Child run({FAULTLINE_BIN, "run", dir.path + "/long.yaml", "--controller", address}, out);
  REQUIRE_MESSAGE(testing::eventually([&] { return slurp(out).find("fault.applied") != std::string::npos; }, 10s),
                  slurp(out));
  agent->stop(SIGKILL);
  const auto show = [&] {
    return testing::sh(fmt::format("nsenter --net={} tc qdisc show dev veth0", netns())).output;
  };
  // Nothing reverted it: the tbf is still there, and so is its journal entry.
  CHECK(show().find("tbf fa17:") != std::string::npos);
  CHECK(std::filesystem::file_size(stateDir + "/journal.jsonl") > 0);

  agent = std::make_unique<Child>(
      std::vector<std::string>{FAULTLINE_AGENT_BIN, "--controller", address, "--id", "e2e-k", "--state-dir", stateDir},
      log);
  CHECK_MESSAGE(testing::eventually([&] { return show().find("tbf") == std::string::npos; }, 10s), slurp(log));
  // The log line follows the revert and the journal's sync: wait for it too.
  CHECK(testing::eventually([&] { return slurp(log).find("recovery: fault") != std::string::npos; }, 10s));
  CHECK(testing::eventually([&] { return std::filesystem::file_size(stateDir + "/journal.jsonl") == 0; }, 10s));
  // The restarted agent tells the controller what its recovery reverted: the run's record says
  // the fault expired by crash recovery after the run ended.
  {
    auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    v1::ListRunsResponse runs;
    REQUIRE(stub->ListRuns(&ctx, {}, &runs).ok());
    REQUIRE(runs.runs_size() == 1);
    const std::string runId = runs.runs(0).run_id();
    CHECK_MESSAGE(
        testing::eventually([&] { return countRecorded(address, runId, "fault.expired", "crash recovery") == 1; }, 10s),
        slurp(log));
  }
  agent->stop(SIGTERM);
}

namespace {

std::string longBandwidth(const std::string& netns) {
  return fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: e2e-long
targets:
  selector: {{role: e2e}}
method:
  - fault:
      name: slow-link
      type: network.bandwidth
      duration: 10m
      target: {{interface: veth0, netns: {}}}
      rate: 1mbit
)",
                     netns);
}

// Submits yaml without waiting; the run id.
std::string submit(const std::string& address, const std::string& yaml) {
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::SubmitRunRequest req;
  req.set_experiment(yaml);
  req.set_file_name("e2e.yaml");
  v1::SubmitRunResponse resp;
  auto status = stub->SubmitRun(&ctx, req, &resp);
  REQUIRE_MESSAGE(status.ok(), status.error_message());
  return resp.run_id();
}

v1::HaltResponse halt(const std::string& address, std::chrono::seconds timeout) {
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::HaltRequest req;
  req.set_reason("e2e");
  req.mutable_timeout()->set_seconds(timeout.count());
  v1::HaltResponse resp;
  auto status = stub->Halt(&ctx, req, &resp);
  REQUIRE_MESSAGE(status.ok(), status.error_message());
  return resp;
}

// Every event of a run, to run.finished (replayed from the record when it has ended).
std::vector<v1::RunEvent> watch(const std::string& address, const std::string& runId) {
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  auto watched = testing::watchRun(*stub, runId, 30s);
  REQUIRE_MESSAGE(watched.error.empty(), watched.error);
  return std::move(watched.events);
}

v1::AgentInfo onlyAgent(const std::string& address) {
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::ListAgentsResponse resp;
  REQUIRE(stub->ListAgents(&ctx, {}, &resp).ok());
  REQUIRE(resp.agents_size() == 1);
  return resp.agents(0);
}

}  // namespace

TEST_CASE_FIXTURE(Fleet, "halt during a long bandwidth fault reverts it and aborts the run") {
  const std::string before = rootKind();
  const std::string runId = submit(address, longBandwidth(netns()));
  REQUIRE(testing::eventually([&] { return rootKind() == "tbf"; }));
  // The qdisc is in place before the agent's report reaches the controller.
  REQUIRE(testing::eventually([&] { return onlyAgent(address).active_faults() == 1; }));

  const auto t0 = std::chrono::steady_clock::now();
  auto resp = halt(address, 10s);
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(resp.runs_aborted() == 1);
  CHECK(resp.agents_told() == 1);
  CHECK(resp.unconfirmed_size() == 0);
  CHECK(resp.runs_unfinished() == 0);
  CHECK(took < 5s);
  CHECK(rootKind() == before);
  CHECK(onlyAgent(address).active_faults() == 0);

  const auto events = watch(address, runId);
  REQUIRE(!events.empty());
  CHECK(events.back().kind() == "run.finished");
  CHECK(events.back().verdict() == v1::VERDICT_ABORTED);
  CHECK(countKind(events, "fault.reverted") >= 1);

  // Nothing active: halt confirms at once.
  resp = halt(address, 10s);
  CHECK(resp.runs_aborted() == 0);
  CHECK(resp.agents_told() == 1);
  CHECK(resp.unconfirmed_size() == 0);
}

TEST_CASE_FIXTURE(Fleet, "a revert the kernel refuses shows in ListAgents until the agent reconnects") {
  const std::string runId = submit(address, longBandwidth(netns()));
  REQUIRE(testing::eventually([&] { return rootKind() == "tbf"; }));
  REQUIRE(testing::eventually([&] { return onlyAgent(address).active_faults() == 1; }));
  // Someone else takes the root: faultline must not delete it, so the revert fails for good.
  inNetns("tc qdisc replace dev veth0 root pfifo");

  // The agent's watch (once a second) may find the foreign root before the halt arrives: the run
  // then ends by itself as an execution error, and its revert fails the same way.
  auto resp = halt(address, 3s);
  if (resp.runs_aborted() == 0) {
    const auto events = watch(address, runId);
    CHECK_MESSAGE(events.back().message().find("no longer in place") != std::string::npos, events.back().message());
  }
  CHECK(resp.runs_aborted() <= 1);
  CHECK(resp.agents_told() == 1);
  REQUIRE(resp.unconfirmed_size() == 1);
  CHECK(resp.unconfirmed(0).agent_id() == "e2e-agent");
  CHECK(resp.unconfirmed(0).reason().find("permanently") != std::string::npos);
  CHECK(rootKind() == "pfifo");  // the foreign root is left alone

  auto info = onlyAgent(address);
  REQUIRE(info.failed_reverts_size() == 1);
  CHECK(info.failed_reverts(0).permanent());
  CHECK(!info.failed_reverts(0).error().empty());
  CHECK(info.active_faults() == 0);

  // The CLI shows it, and halt exits 3.
  auto r = testing::sh(fmt::format("{} agents --controller {}", FAULTLINE_BIN, address));
  CHECK(r.status == 0);
  CHECK(r.output.find("REVERT FAILED") != std::string::npos);
  CHECK(r.output.find("permanent") != std::string::npos);
  r = testing::sh(fmt::format("{} halt --controller {} --reason test", FAULTLINE_BIN, address));
  CHECK(r.status == 3);
  CHECK(r.output.find("NOT CONFIRMED  agent e2e-agent") != std::string::npos);
  CHECK(watch(address, runId).back().kind() == "run.finished");

  // A reconnect clears it.
  agent.reset();
  REQUIRE(testing::eventually([&] { return controller->gateway().agents().empty(); }));
  agent::SessionOptions so;
  so.controller = address;
  so.agentId = "e2e-agent";
  so.hostname = "e2e-host";
  so.labels = {{"role", "e2e"}};
  agent = std::make_unique<agent::AgentRuntime>(so);
  agent->start();
  REQUIRE(controller->gateway().waitForAgents(1, 10s));
  CHECK(onlyAgent(address).failed_reverts_size() == 0);
  r = testing::sh(fmt::format("{} agents --controller {}", FAULTLINE_BIN, address));
  CHECK(r.output.find("REVERT FAILED") == std::string::npos);
  r = testing::sh(fmt::format("{} halt --controller {}", FAULTLINE_BIN, address));
  CHECK(r.status == 0);
  r = testing::sh(fmt::format("{} halt --help", FAULTLINE_BIN));
  CHECK(r.status == 0);
  CHECK(r.output.find("--reason") != std::string::npos);
}

TEST_CASE("ListAgents tracks failed reverts: a retried one until REVERTED, a permanent one until reconnect") {
  TempDir dir;
  controller::Controller controller(socketOnly(dir.path, dir.path + "/r.db"));
  controller.start();
  const std::string address = "unix:" + dir.path + "/control.sock";
  auto gw = v1::AgentGateway::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  const auto failedOf = [&] {
    std::map<std::string, bool> out;  // fault id -> permanent
    const auto info = onlyAgent(address);
    for (const auto& f : info.failed_reverts()) {
      out[f.fault_id()] = f.permanent();
    }
    return out;
  };
  const auto report = [](const std::string& id, v1::FaultState state, v1::FaultErrorCode code) {
    v1::AgentMessage m;
    m.mutable_report()->set_fault_id(id);
    m.mutable_report()->set_state(state);
    m.mutable_report()->set_error_code(code);
    m.mutable_report()->set_error(state == v1::FAULT_STATE_FAILED ? "revert failed: EIO" : "");
    return m;
  };
  for (int connection = 0; connection < 2; ++connection) {
    CAPTURE(connection);
    grpc::ClientContext ctx;
    auto stream = gw->Connect(&ctx);
    v1::AgentMessage hello;
    hello.mutable_hello()->set_agent_id("fake-agent");
    REQUIRE(stream->Write(hello));
    v1::ControllerMessage welcome;
    REQUIRE(stream->Read(&welcome));
    REQUIRE(welcome.has_welcome());
    if (connection == 1) {
      CHECK(failedOf().empty());  // a reconnect clears the permanent one
      stream->WritesDone();
      ctx.TryCancel();
      break;
    }
    // The gateway takes reports only on faults it sent to that agent.
    for (const char* id : {"retried", "permanent", "apply-failed"}) {
      v1::ControllerMessage inject;
      inject.mutable_inject()->set_fault_id(id);
      REQUIRE(controller.gateway().send("fake-agent", inject));
    }
    REQUIRE(stream->Write(report("retried", v1::FAULT_STATE_APPLIED, v1::FAULT_ERROR_UNSPECIFIED)));
    REQUIRE(stream->Write(report("permanent", v1::FAULT_STATE_APPLIED, v1::FAULT_ERROR_UNSPECIFIED)));
    REQUIRE(stream->Write(report("apply-failed", v1::FAULT_STATE_FAILED, v1::FAULT_ERROR_UNSPECIFIED)));
    REQUIRE(stream->Write(report("retried", v1::FAULT_STATE_FAILED, v1::FAULT_ERROR_UNSPECIFIED)));
    REQUIRE(stream->Write(report("permanent", v1::FAULT_STATE_FAILED, v1::FAULT_ERROR_PERMANENT)));
    REQUIRE(testing::eventually([&] { return failedOf().size() == 2; }));
    CHECK(failedOf() == std::map<std::string, bool>{{"permanent", true}, {"retried", false}});
    CHECK(onlyAgent(address).active_faults() == 1);  // the retried one is still held
    const auto info = onlyAgent(address);
    REQUIRE(info.failed_reverts_size() == 2);
    CHECK(info.failed_reverts(0).error() == "revert failed: EIO");
    // The retry succeeds; a late "not held" REVERTED for the permanent one changes nothing.
    REQUIRE(stream->Write(report("retried", v1::FAULT_STATE_REVERTED, v1::FAULT_ERROR_UNSPECIFIED)));
    REQUIRE(stream->Write(report("permanent", v1::FAULT_STATE_REVERTED, v1::FAULT_ERROR_UNSPECIFIED)));
    REQUIRE(testing::eventually([&] { return failedOf().size() == 1; }));
    CHECK(failedOf() == std::map<std::string, bool>{{"permanent", true}});
    CHECK(onlyAgent(address).active_faults() == 0);
    stream->WritesDone();
    ctx.TryCancel();
    REQUIRE(testing::eventually([&] { return controller.gateway().agents().empty(); }));
  }
}

namespace {

// Starts a run with one long fault on the fake agent, reads its Inject and confirms it applied.
std::pair<std::string, std::string> startHeldFault(const std::string& address, FakeAgentStream& agent) {
  const std::string runId = submit(address, longBandwidth("/var/run/netns/none"));
  const auto inject = agent.next();
  REQUIRE(inject.has_inject());
  CHECK(inject.inject().run_id() == runId);
  agent.report(inject.inject().fault_id(), v1::FAULT_STATE_APPLIED, "tbf on veth0");
  return {runId, inject.inject().fault_id()};
}

}  // namespace

TEST_CASE("reconnect: the controller reconciles the faults an agent reports holding with its records") {
  TempDir dir;
  controller::Controller controller(socketOnly(dir.path, dir.path + "/r.db"));
  controller.start();
  const std::string address = "unix:" + dir.path + "/control.sock";
  auto gw = v1::AgentGateway::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));

  SUBCASE("a fault still held after its run ended is reverted, and the revert recorded after the run") {
    std::string runId, faultId;
    {
      FakeAgentStream agent(*gw, {});
      std::tie(runId, faultId) = startHeldFault(address, agent);
      REQUIRE(testing::eventually([&] { return onlyAgent(address).active_faults() == 1; }));
    }  // disconnects holding it: the run ends as an error
    CHECK(watch(address, runId).back().verdict() == v1::VERDICT_ERROR);
    FakeAgentStream agent(*gw, {faultId});
    const auto revert = agent.next();
    REQUIRE(revert.has_revert());
    CHECK(revert.revert().fault_id() == faultId);
    agent.report(faultId, v1::FAULT_STATE_REVERTED, "reverted (revert requested): tbf on veth0");
    CHECK(testing::eventually(
        [&] { return countRecorded(address, runId, "fault.reverted", "after the run ended") == 1; }));
    CHECK(testing::eventually([&] { return onlyAgent(address).active_faults() == 0; }));
  }

  SUBCASE("a fault the agent ended while disconnected is recorded as expired, never as reverted") {
    std::string runId, faultId;
    {
      FakeAgentStream agent(*gw, {});
      std::tie(runId, faultId) = startHeldFault(address, agent);
      REQUIRE(testing::eventually([&] { return onlyAgent(address).active_faults() == 1; }));
    }
    CHECK(watch(address, runId).back().verdict() == v1::VERDICT_ERROR);
    FakeAgentStream agent(*gw, {});  // holds nothing now, and says nothing about it
    agent.heartbeat();
    CHECK(testing::eventually([&] { return countRecorded(address, runId, "fault.expired", "no longer held") == 1; }));
    CHECK(countRecorded(address, runId, "fault.reverted", "after the run ended") == 0);
  }

  SUBCASE("a revert still failing on the agent shows in ListAgents after it reconnects") {
    FakeAgentStream agent(*gw, {"r-gone/1/fake-agent"},
                          "revert failed (retrying every second): Operation not permitted");
    REQUIRE(testing::eventually([&] { return onlyAgent(address).failed_reverts_size() == 1; }));
    const auto info = onlyAgent(address);
    CHECK(info.failed_reverts(0).fault_id() == "r-gone/1/fake-agent");
    CHECK(info.failed_reverts(0).error().find("not permitted") != std::string::npos);
    CHECK(!info.failed_reverts(0).permanent());
    CHECK(info.active_faults() == 1);
    // Its run is unknown here: the controller asks for the revert (which keeps failing).
    const auto revert = agent.next();
    REQUIRE(revert.has_revert());
    CHECK(revert.revert().fault_id() == "r-gone/1/fake-agent");
  }

  SUBCASE("the agent's own queued report (lease expired) is recorded, with no second one made up") {
    std::string runId, faultId;
    {
      FakeAgentStream agent(*gw, {});
      std::tie(runId, faultId) = startHeldFault(address, agent);
      REQUIRE(testing::eventually([&] { return onlyAgent(address).active_faults() == 1; }));
    }
    CHECK(watch(address, runId).back().verdict() == v1::VERDICT_ERROR);
    FakeAgentStream agent(*gw, {});
    agent.report(faultId, v1::FAULT_STATE_EXPIRED, "reverted (lease expired: nothing heard for 15s)");
    agent.heartbeat();
    CHECK(testing::eventually([&] { return countRecorded(address, runId, "fault.expired", "lease expired") == 1; }));
    std::this_thread::sleep_for(200ms);
    CHECK(countRecorded(address, runId, "fault.expired", "") == 1);
  }
}

TEST_CASE("a controller killed mid-run: its successor on the same record file ends the run as interrupted") {
  TempDir dir;
  const std::string address = "unix:" + dir.path + "/controller.sock";
  const std::string log = dir.path + "/controller.log";
  const std::vector<std::string> args{FAULTLINE_BIN, "controller",      "--listen", "",
                                      "--socket",    address.substr(5), "--db",     dir.path + "/c.db"};
  auto first = std::make_unique<Child>(args, log);
  auto gw = v1::AgentGateway::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  REQUIRE_MESSAGE(testing::eventually([&] { return std::filesystem::exists(dir.path + "/controller.sock"); }, 10s),
                  slurp(log));
  std::string runId;
  {
    FakeAgentStream agent(*gw, {});
    runId = startHeldFault(address, agent).first;
    REQUIRE(testing::eventually([&] { return countRecorded(address, runId, "step.fault", "") == 1; }));
    first->stop(SIGKILL);  // no abort, no record of an end
  }
  Child second(args, log);
  std::vector<v1::RunEvent> events;
  REQUIRE_MESSAGE(
      testing::eventually([&] { return countRecorded(address, runId, "run.finished", "interrupted") == 1; }),
      slurp(log));
  events = watch(address, runId);
  REQUIRE(!events.empty());
  CHECK(events.back().verdict() == v1::VERDICT_ERROR);
  const auto shown = testing::sh(fmt::format("{} show {} --controller {}", FAULTLINE_BIN, runId, address));
  CHECK(shown.output.find("interrupted") != std::string::npos);
}

// controller/server/limits.h: over-large messages are refused with INVALID_ARGUMENT naming the
// field, its size and the limit, before the controller keeps or logs them.
TEST_CASE("separate processes: over-large requests and agent messages are refused, naming field, size and limit") {
  TempDir dir;
  const std::string address = "unix:" + dir.path + "/controller.sock";
  const std::string log = dir.path + "/processes.log";
  Child controller(
      {FAULTLINE_BIN, "controller", "--listen", "", "--socket", address.substr(5), "--db", dir.path + "/c.db"}, log);
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  REQUIRE(channel->WaitForConnected(std::chrono::system_clock::now() + 10s));
  auto control = v1::Control::NewStub(channel);
  {
    grpc::ClientContext ctx;
    v1::SubmitRunRequest req;
    req.set_experiment("apiVersion: faultline/v1\n");
    for (int i = 0; i < 300; ++i) {
      (*req.mutable_variables())[fmt::format("V{}", i)] = "x";
    }
    v1::SubmitRunResponse resp;
    const auto status = control->SubmitRun(&ctx, req, &resp);
    CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
    CHECK_MESSAGE(status.error_message() == "variables: 300 entries, more than the 256 accepted",
                  status.error_message());
  }
  const auto refusedAgent = [&](const v1::AgentMessage& first, const v1::AgentMessage* second) {
    auto gateway = v1::AgentGateway::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);  // an accepted message would keep the stream open
    auto stream = gateway->Connect(&ctx);
    REQUIRE(stream->Write(first));
    if (second != nullptr) {
      v1::ControllerMessage welcome;
      REQUIRE(stream->Read(&welcome));
      REQUIRE(welcome.has_welcome());
      REQUIRE(stream->Write(*second));
    }
    v1::ControllerMessage m;
    while (stream->Read(&m)) {
    }
    return stream->Finish();
  };
  v1::AgentMessage hello;
  hello.mutable_hello()->set_agent_id("e2e-limits");
  for (int i = 0; i < 70; ++i) {
    (*hello.mutable_hello()->mutable_labels())[fmt::format("k{}", i)] = "v";
  }
  auto status = refusedAgent(hello, nullptr);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK_MESSAGE(status.error_message() == "Hello.labels: 70 entries, more than the 64 accepted",
                status.error_message());

  hello.mutable_hello()->clear_labels();
  (*hello.mutable_hello()->mutable_labels())["role"] = std::string(20000, 'x');
  status = refusedAgent(hello, nullptr);
  CHECK_MESSAGE(status.error_message() == "Hello.labels: 20004 bytes of keys and values, more than the 16384 accepted",
                status.error_message());

  hello.mutable_hello()->clear_labels();
  v1::AgentMessage report;
  report.mutable_report()->set_fault_id("f-1");
  report.mutable_report()->set_detail(std::string(100 * 1024, 'd'));
  status = refusedAgent(hello, &report);
  CHECK(status.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK_MESSAGE(status.error_message() == "FaultReport.detail: 102400 bytes, more than the 65536 accepted",
                status.error_message());
}

// Without TLS, neither binary talks plaintext to or from an address that is not local
// (agent/session/tls.h): both refuse at start, naming the TLS options and --insecure.
TEST_CASE("separate processes: plaintext on a non-local address is refused at start by controller and agent") {
  TempDir dir;
  auto controller =
      testing::sh(fmt::format("{} controller --listen 0.0.0.0:0 --db {}/c.db 2>&1", FAULTLINE_BIN, dir.path));
  CHECK(controller.status == 4);
  CHECK_MESSAGE(
      controller.output.find("--listen 0.0.0.0:0 is neither a loopback address nor unix:PATH") != std::string::npos,
      controller.output);
  CHECK(controller.output.find("--insecure") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.path + "/c.db"));
  auto agent = testing::sh(
      fmt::format("{} --controller 192.0.2.7:7443 --state-dir {}/state 2>&1", FAULTLINE_AGENT_BIN, dir.path));
  CHECK(agent.status == 4);
  CHECK_MESSAGE(
      agent.output.find("--controller 192.0.2.7:7443 is neither a loopback address nor unix:PATH") != std::string::npos,
      agent.output);
  CHECK(agent.output.find("--ca, --cert and --key") != std::string::npos);
  CHECK_FALSE(std::filesystem::exists(dir.path + "/state"));
}

namespace {

// A 4 MiB tmpfs of the test's own (mounted on a temporary directory, unmounted at the end however
// the test ends) that fill() fills to the last byte: the controller's disk running full.
struct SmallDisk {
  SmallDisk() { REQUIRE(::mount("tmpfs", dir.path.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0700") == 0); }
  ~SmallDisk() { ::umount2(dir.path.c_str(), MNT_DETACH); }
  // Writes a file until the disk has no byte left; returns how many bytes it took.
  size_t fill() {
    const int fd = ::open((dir.path + "/filler").c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
      return 0;
    }
    const std::string chunk(4096, 'x');
    size_t total = 0;
    for (;;) {
      const ssize_t n = ::write(fd, chunk.data(), chunk.size());
      if (n <= 0) {
        break;
      }
      total += static_cast<size_t>(n);
    }
    ::close(fd);
    return total;
  }
  void makeRoom() { ::unlink((dir.path + "/filler").c_str()); }
  TempDir dir;
};

struct FullDiskFleet : SmallDisk, Fleet {
  FullDiskFleet() : Fleet(SmallDisk::dir.path + "/records.db") {}

  std::string yaml(const std::string& duration) const {
    return fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: e2e-disk
targets:
  selector: {{role: e2e}}
steadyState:
  every: 100ms
  probes:
    - name: demo
      http: {{url: "{}", maxLatency: 1s, timeout: 2s}}
method:
  - fault:
      name: slow-link
      type: network.bandwidth
      duration: {}
      target: {{interface: veth0, netns: {}}}
      rate: 1mbit
)",
                       probeUrl(), duration, netns());
  }
};

}  // namespace

TEST_CASE_FIXTURE(FullDiskFleet,
                  "a full disk when a run starts aborts it before anything is injected; the "
                  "controller stays up and runs the next one once there is room") {
  const std::string before = rootKind();
  REQUIRE(fill() > 0);
  auto [runId, events] = run(yaml("300ms"));
  REQUIRE(!events.empty());
  CHECK(events.back().kind() == "run.finished");
  CHECK(events.back().verdict() == v1::VERDICT_ABORTED);
  const std::string message = events.back().message();
  CHECK_MESSAGE(message.find("verdict: aborted: the record store failed (record store " + db + ": createRun of run " +
                             runId) == 0,
                message);
  CHECK_MESSAGE(message.find("database or disk is full") != std::string::npos, message);
  CHECK_MESSAGE(message.find("nothing was injected") != std::string::npos, message);
  CHECK(countKind(events, "fault.applied") == 0);
  CHECK(rootKind() == before);
  // The controller still answers, and records again once the disk has room.
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  {
    grpc::ClientContext ctx;
    v1::ListRunsResponse runs;
    CHECK(stub->ListRuns(&ctx, {}, &runs).ok());
  }
  makeRoom();
  auto [nextId, next] = run(yaml("200ms"));
  REQUIRE(!next.empty());
  CHECK(next.back().verdict() == v1::VERDICT_HELD);
  auto rec = controller::openSqliteStore(db, controller::StoreMode::ReadOnly)->getRun(nextId);
  REQUIRE(rec.has_value());
  CHECK(rec->verdict() == v1::VERDICT_HELD);
}

TEST_CASE_FIXTURE(FullDiskFleet,
                  "a disk that fills while a fault is held aborts the run: the fault is reverted and "
                  "confirmed, and the verdict says what could not be recorded") {
  const std::string before = rootKind();
  std::atomic<size_t> filled{0};
  std::thread filler([&] {
    const auto until = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < until) {
      const auto agents = controller->gateway().agents();
      if (!agents.empty() && agents[0].active_faults() > 0) {
        filled = fill();
        return;
      }
      std::this_thread::sleep_for(10ms);
    }
  });
  const auto start = std::chrono::steady_clock::now();
  auto [runId, events] = run(yaml("20s"));
  filler.join();
  REQUIRE(filled > 0);
  CHECK(std::chrono::steady_clock::now() - start < 10s);  // not the fault's 20 s
  CHECK(rootKind() == before);                            // reverted
  CHECK(countKind(events, "fault.applied") == 1);
  CHECK(countKind(events, "fault.reverted") == 1);  // confirmed, seen by the watcher
  REQUIRE(!events.empty());
  CHECK(events.back().verdict() == v1::VERDICT_ABORTED);
  const std::string message = events.back().message();
  CHECK_MESSAGE(message.find("the record store failed") != std::string::npos, message);
  CHECK_MESSAGE(message.find("database or disk is full") != std::string::npos, message);
  CHECK_MESSAGE(message.find("not recorded: ") != std::string::npos, message);
  CHECK_MESSAGE(message.find("fault.reverted on e2e-host") != std::string::npos, message);
  // Still serving: the agent list, and the record of what was written before the disk filled.
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::ListAgentsResponse agents;
  REQUIRE(stub->ListAgents(&ctx, {}, &agents).ok());
  REQUIRE(agents.agents_size() == 1);
  CHECK(agents.agents(0).active_faults() == 0);
  grpc::ClientContext getCtx;
  v1::GetRunRequest get;
  get.set_run_id(runId);
  v1::Run rec;
  REQUIRE(stub->GetRun(&getCtx, get, &rec).ok());
  CHECK(rec.experiment() == "e2e-disk");
}

TEST_CASE_FIXTURE(Fleet, "the controller's record file is 0600; a --secret-var value is stored nowhere in it") {
  CHECK((std::filesystem::status(db).permissions() & std::filesystem::perms::all) ==
        (std::filesystem::perms::owner_read | std::filesystem::perms::owner_write));
  auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  v1::SubmitRunRequest req;
  req.set_file_name("secret.yaml");
  // A secret whose name does not say so; the step's name quotes it in the run's events.
  const std::string secret = "acme-contract-7f3a9c01";
  req.set_experiment(fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: e2e-secret
targets:
  selector: {{role: e2e}}
method:
  - fault:
      name: "slow-${{CUSTOMER}}"
      type: network.bandwidth
      duration: 200ms
      target: {{interface: veth0, netns: {}}}
      rate: 1mbit
)",
                                 netns()));
  (*req.mutable_variables())["CUSTOMER"] = secret;
  req.add_secret_variables("CUSTOMER");
  auto watched = testing::submitAndWatch(*stub, req);
  REQUIRE_MESSAGE(watched.error.empty(), watched.error);
  REQUIRE(!watched.events.empty());
  CHECK(watched.events.back().verdict() == v1::VERDICT_HELD);
  bool quoted = false;
  for (const auto& e : watched.events) {
    CHECK(e.message().find(secret) == std::string::npos);
    quoted = quoted || e.message().find("'slow-${CUSTOMER}'") != std::string::npos;
  }
  CHECK(quoted);
  agent.reset();
  controller.reset();  // closes the file (its WAL checkpointed into it)
  for (const std::string& file : {db, db + "-wal"}) {
    std::ifstream in(file, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK_MESSAGE(bytes.find(secret) == std::string::npos, file);
  }
}

TEST_CASE(
    "the faultline binary: a damaged record file stops the controller at start and `show --db` with a clear "
    "message") {
  TempDir dir;
  const std::string db = dir.path + "/records.db";
  {
    auto store = controller::openSqliteStore(db);
    for (int r = 0; r < 40; ++r) {
      const std::string id = fmt::format("r-{:04}", r);
      v1::Run run;
      run.set_run_id(id);
      run.set_experiment("x");
      run.set_file_sha256(std::string(64, 'a'));
      run.set_trigger("cli");
      store->createRun(run);
      for (int e = 0; e < 30; ++e) {
        v1::RunEvent ev;
        ev.set_run_id(id);
        ev.set_kind("probe.ok");
        ev.set_message(std::string(100, static_cast<char>('a' + e % 26)));
        store->addEvent(ev);
      }
    }
  }
  const auto size = std::filesystem::file_size(db);
  REQUIRE(size > 64 * 1024);
  {
    std::fstream f(db, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size / 2 / 4096 * 4096));
    const std::string garbage(16 * 1024, '\x5a');
    f.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
  }
  auto r = testing::sh(fmt::format("timeout 20 {} controller --listen 127.0.0.1:0 --db {} 2>&1", FAULTLINE_BIN, db));
  CHECK(r.status == 3);
  CHECK_MESSAGE(
      r.output.find(fmt::format("faultline controller: record file {} is damaged: SQLite's quick_check found: ", db)) !=
          std::string::npos,
      r.output);
  CHECK_MESSAGE(r.output.find("sqlite3 " + db + " .recover") != std::string::npos, r.output);
  r = testing::sh(fmt::format("{} show r-0001 --db {} 2>&1", FAULTLINE_BIN, db));
  CHECK(r.status == 3);
  CHECK_MESSAGE(r.output.find("is damaged") != std::string::npos, r.output);
}

// SIGTERM runs the controller's shutdown() on the signal thread while main() leaves wait() and
// runs it again in ~Controller; before the two were serialised, the controller with its Unix
// socket hung in a join or aborted (std::system_error) on most stops.
TEST_CASE("separate processes: SIGTERM stops a controller with its Unix socket and TCP port at once, every time") {
  TempDir dir;
  for (int i = 0; i < 5; ++i) {
    const std::string sock = fmt::format("{}/c{}.sock", dir.path, i);
    Child controller(
        {FAULTLINE_BIN, "controller", "--listen", "127.0.0.1:0", "--socket", sock, "--db", dir.path + "/c.db"},
        dir.path + "/controller.log");
    REQUIRE_MESSAGE(
        testing::eventually(
            [&] { return testing::sh(fmt::format("{} agents --controller unix:{}", FAULTLINE_BIN, sock)).status == 0; },
            10s),
        slurp(dir.path + "/controller.log"));
    const auto start = std::chrono::steady_clock::now();
    ::kill(controller.pid, SIGTERM);
    int status = -1;
    while (::waitpid(controller.pid, &status, WNOHANG) == 0 && std::chrono::steady_clock::now() - start < 10s) {
      std::this_thread::sleep_for(10ms);
    }
    const auto took = std::chrono::steady_clock::now() - start;
    REQUIRE_MESSAGE(took < 5s, "stop ", i, " took more than 5 s: ", slurp(dir.path + "/controller.log"));
    controller.pid = -1;
    CHECK_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0), "stop ", i, ": status ", status, "\n",
                  slurp(dir.path + "/controller.log"));
    CHECK_FALSE(std::filesystem::exists(sock));
  }
}

// SIGTERM is how systemd stops the controller's unit: the runs going on are aborted with the
// reason "controller shutdown (SIGTERM)", their faults reverted and the agents' confirmation
// awaited before the process exits 0, so nothing of faultline's is left on a host afterwards.
TEST_CASE_FIXTURE(testing::NetnsFixture,
                  "separate processes: SIGTERM to a controller mid-run aborts the run as 'controller shutdown', "
                  "reverts its fault, exits 0") {
  TempDir dir;
  const std::string sock = dir.path + "/controller.sock";
  const std::string address = "unix:" + sock;
  const std::string db = dir.path + "/c.db";
  const std::string log = dir.path + "/processes.log";
  Child controller({FAULTLINE_BIN, "controller", "--listen", "", "--socket", sock, "--db", db}, log);
  Child agent({FAULTLINE_AGENT_BIN, "--controller", address, "--id", "e2e-s", "--label", "role=e2e", "--state-dir",
               dir.path + "/agent"},
              log);
  REQUIRE_MESSAGE(
      testing::eventually(
          [&] {
            return testing::sh(fmt::format("{} agents --controller {}", FAULTLINE_BIN, address)).output.find("e2e-s") !=
                   std::string::npos;
          },
          10s),
      slurp(log));
  const auto qdiscs = [&] {
    return testing::sh(fmt::format("nsenter --net={} tc qdisc show dev veth0", netns())).output;
  };
  const std::string runId = submit(address, longBandwidth(netns()));
  REQUIRE_MESSAGE(testing::eventually([&] { return countRecorded(address, runId, "fault.applied", "") == 1; }, 10s),
                  slurp(log));
  REQUIRE(qdiscs().find("tbf fa17:") != std::string::npos);

  const auto sent = std::chrono::steady_clock::now();
  ::kill(controller.pid, SIGTERM);
  int status = -1;
  REQUIRE_MESSAGE(
      testing::eventually([&] { return ::waitpid(controller.pid, &status, WNOHANG) == controller.pid; }, 15s),
      slurp(log));
  controller.pid = -1;
  INFO(slurp(log));
  CHECK(std::chrono::steady_clock::now() - sent < 10s);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  // Reverted and confirmed before the controller exited: gone the moment it is.
  CHECK(qdiscs().find("tbf") == std::string::npos);
  // The record, read from the file the controller left: aborted by the shutdown, the fault reverted.
  const auto shown = testing::sh(fmt::format("{} show {} --db {}", FAULTLINE_BIN, runId, db));
  INFO(shown.output);
  CHECK(shown.output.find("verdict: aborted") != std::string::npos);
  CHECK(shown.output.find("controller shutdown (SIGTERM)") != std::string::npos);
  CHECK(shown.output.find("interrupted") == std::string::npos);
  {
    auto store = controller::openSqliteStore(db);
    auto run = store->getRun(runId);
    REQUIRE(run.has_value());
    CHECK(run->verdict() == v1::VERDICT_ABORTED);
    size_t reverted = 0;
    for (const auto& e : run->events()) {
      reverted += e.kind() == "fault.reverted" ? 1 : 0;
    }
    CHECK(reverted == 1);
  }
  CHECK(WEXITSTATUS(agent.stop(SIGTERM)) == 0);
}

// A diagnostic quotes the value it found; a secret variable's value must not reach the terminal.
TEST_CASE("the faultline binary: an invalid experiment's diagnostics name a --secret-var as ${NAME}, never its value") {
  TempDir dir;
  {
    std::ofstream f(dir.path + "/s.yaml");
    f << "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: 'x ${MYSECRET}'\ntargets:\n"
         "  selector: {role: e2e}\nmethod:\n  - wait: 1s\n";
  }
  auto r = testing::sh(
      fmt::format("{} run --dry-run {}/s.yaml --secret-var MYSECRET=S3cr3tValueXYZ 2>&1", FAULTLINE_BIN, dir.path));
  CHECK(r.status == 4);
  CHECK_MESSAGE(r.output.find("metadata.name") != std::string::npos, r.output);
  CHECK_MESSAGE(r.output.find("${MYSECRET}") != std::string::npos, r.output);
  CHECK_MESSAGE(r.output.find("S3cr3tValueXYZ") == std::string::npos, r.output);
}

// `runs --since d` (no number) aborted the CLI in std::stoll (attacker trial, issue 16); a FIFO given
// as an experiment file held validate until a writer came.
TEST_CASE("the faultline binary: runs --since without a number and validate of a FIFO are refused at once") {
  TempDir dir;
  for (const std::string since : {"d", "-d", "99999999d", "1e3d"}) {
    CAPTURE(since);
    auto r = testing::sh(fmt::format("{} runs --db {}/r.db --since '{}' 2>&1", FAULTLINE_BIN, dir.path, since));
    CHECK_MESSAGE(r.status == 4, r.output);
    CHECK_MESSAGE(r.output.find("is not a time") != std::string::npos, r.output);
  }
  const std::string fifo = dir.path + "/e.yaml";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const auto start = std::chrono::steady_clock::now();
  auto r = testing::sh(fmt::format("timeout 10 {} validate {} 2>&1", FAULTLINE_BIN, fifo));
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK_MESSAGE(r.status == 4, r.output);
  CHECK_MESSAGE(r.output.find("FIFO") != std::string::npos, r.output);
}

// `secret: true` in the file's variables makes a --var a secret: validate and run --dry-run
// quote it as ${NAME} (issue 15: secrets were only guessed from their names or --secret-var).
TEST_CASE("the faultline binary: a variable the file marks secret: true is never printed, given with --var") {
  TempDir dir;
  {
    std::ofstream f(dir.path + "/s.yaml");
    f << "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: 'x ${CUSTOMER}'\nvariables:\n"
         "  CUSTOMER: {description: the customer under test, secret: true}\ntargets:\n"
         "  selector: {role: e2e}\nmethod:\n  - wait: 1s\n";
  }
  for (const std::string command : {"validate", "run --dry-run"}) {
    CAPTURE(command);
    auto r =
        testing::sh(fmt::format("{} {} {}/s.yaml --var CUSTOMER=AcmeCorpXYZ 2>&1", FAULTLINE_BIN, command, dir.path));
    CHECK(r.status == 4);
    CHECK_MESSAGE(r.output.find("metadata.name") != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find("${CUSTOMER}") != std::string::npos, r.output);
    CHECK_MESSAGE(r.output.find("AcmeCorpXYZ") == std::string::npos, r.output);
  }
}

// Without TLS an agent cannot tell its controller from whoever binds the port: a local user who
// took the controller's loopback port while it was down received the root agents, and they obeyed
// (issue 15). The agent now dials a plaintext loopback listener only when root or its own user owns it.
TEST_CASE("separate processes: an agent does not dial a plaintext loopback port that another user listens on") {
  TempDir dir;
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t squatter = ::fork();
  REQUIRE(squatter >= 0);
  if (squatter == 0) {
    // The socket's owner is the uid that created it.
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) {
      ::_exit(1);
    }
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 8) != 0 ||
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ::_exit(1);
    }
    const uint16_t port = ntohs(a.sin_port);
    [[maybe_unused]] auto n = ::write(ready[1], &port, sizeof port);
    ::pause();
    ::_exit(0);
  }
  ::close(ready[1]);
  uint16_t port = 0;
  const bool gotPort = ::read(ready[0], &port, sizeof port) == sizeof port;
  ::close(ready[0]);
  struct Reap {
    pid_t pid;
    ~Reap() {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  } reap{squatter};
  REQUIRE(gotPort);

  const std::string log = dir.path + "/agent.log";
  Child agent({FAULTLINE_AGENT_BIN, "--controller", fmt::format("127.0.0.1:{}", port), "--id", "squatted",
               "--state-dir", dir.path + "/agent"},
              log);
  CHECK_MESSAGE(testing::eventually([&] { return slurp(log).find("belongs to uid 65534") != std::string::npos; }, 10s),
                slurp(log));
  CHECK_MESSAGE(slurp(log).find(fmt::format("port {} belongs to uid 65534, neither root nor this agent's user",
                                            port)) != std::string::npos,
                slurp(log));
  agent.stop(SIGTERM);
}

// Without TLS an agent is known by nothing but its connection: a local user's fake agent took a
// real agent's id and received the next run's faults, with its secrets (attacker trial, issue 15).
// The controller now admits a plaintext agent only from root or its own user: by SO_PEERCRED on
// its Unix socket, by the owner of the connecting socket (/proc/net/tcp6) on loopback TCP.
TEST_CASE("separate processes: without TLS an agent of uid 65534 is refused, on loopback TCP and on the socket") {
  if (testing::sh(fmt::format("runuser -u nobody -- test -x {}", FAULTLINE_AGENT_BIN)).status != 0) {
    MESSAGE("skipped: user nobody cannot run ", FAULTLINE_AGENT_BIN, " (a directory on its path is not searchable)");
    return;
  }
  TempDir dir;
  ::chmod(dir.path.c_str(), 0755);
  const std::string sock = dir.path + "/c.sock";
  const std::string clog = dir.path + "/controller.log";
  Child controller({FAULTLINE_BIN, "controller", "--listen", "127.0.0.1:0", "--socket", sock, "--socket-group",
                    "nogroup", "--db", dir.path + "/c.db"},
                   clog);
  std::string port;
  REQUIRE_MESSAGE(testing::eventually(
                      [&] {
                        const auto text = slurp(clog);
                        const auto at = text.find("(port ");
                        if (at == std::string::npos) {
                          return false;
                        }
                        port = text.substr(at + 6, text.find(',', at) - at - 6);
                        return true;
                      },
                      10s),
                  slurp(clog));
  const std::string agentDir = dir.path + "/nobody";
  std::filesystem::create_directories(agentDir);
  ::chown(agentDir.c_str(), 65534, 65534);
  for (const std::string& address : {"127.0.0.1:" + port, "unix:" + sock}) {
    CAPTURE(address);
    const std::string log = fmt::format("{}/fake-{}.log", dir.path, address[0]);
    Child fake({"/usr/sbin/runuser", "-u", "nobody", "--", FAULTLINE_AGENT_BIN, "--controller", address, "--id",
                "real1", "--state-dir", agentDir + "/" + address.substr(0, 1)},
               log);
    CHECK_MESSAGE(
        testing::eventually([&] { return slurp(log).find("may not register as an agent") != std::string::npos; }, 10s),
        slurp(log), slurp(clog));
    CHECK_MESSAGE(slurp(log).find("uid 65534") != std::string::npos, slurp(log));
    fake.stop(SIGTERM);
  }
  CHECK_MESSAGE(slurp(clog).find("refused an agent stream") != std::string::npos, slurp(clog));
  // Root's agent, on the same TCP port, is admitted.
  const std::string rlog = dir.path + "/root-agent.log";
  Child root(
      {FAULTLINE_AGENT_BIN, "--controller", "127.0.0.1:" + port, "--id", "real1", "--state-dir", dir.path + "/root"},
      rlog);
  CHECK_MESSAGE(testing::eventually(
                    [&] {
                      return testing::sh(fmt::format("{} agents --controller unix:{}", FAULTLINE_BIN, sock))
                                 .output.find("real1") != std::string::npos;
                    },
                    10s),
                slurp(rlog), slurp(clog));
  root.stop(SIGTERM);
  controller.stop(SIGTERM);
}

// The token file is opened as a spec's files are: a FIFO or a device is refused at once, never read.
TEST_CASE("the faultline binary: a --token-file that is a FIFO or /dev/zero is refused at once, naming what it is") {
  TempDir dir;
  const std::string fifo = dir.path + "/token";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const auto start = std::chrono::steady_clock::now();
  auto r = testing::sh(
      fmt::format("timeout 5 {} agents --controller 127.0.0.1:1 --token-file {} 2>&1", FAULTLINE_BIN, fifo));
  CHECK(std::chrono::steady_clock::now() - start < 3s);
  CHECK(r.status == 4);
  CHECK_MESSAGE(r.output.find("is a FIFO; accepted: a regular file of at most 4096 bytes") != std::string::npos,
                r.output);
  r = testing::sh(
      fmt::format("timeout 5 {} agents --controller 127.0.0.1:1 --token-file /dev/zero 2>&1", FAULTLINE_BIN));
  CHECK(r.status == 4);
  CHECK_MESSAGE(r.output.find("/dev/zero is a character device") != std::string::npos, r.output);
}

namespace {

// A shell loop that runs the demo service on port and, each time it dies, starts it again after
// delay (a supervisor with a restart delay). The loop and the service are in a process group of
// their own, killed at the end whatever happened.
struct Supervised {
  Supervised(uint16_t port, const std::string& pidfile, std::chrono::milliseconds delay) {
    const std::string script =
        fmt::format("while :; do \"{}\" --listen 127.0.0.1:{} & echo $! > {}; wait $!; sleep {}; done",
                    FAULTLINE_DEMO_BIN, port, pidfile, static_cast<double>(delay.count()) / 1000.0);
    posix_spawnattr_t attr;
    REQUIRE(::posix_spawnattr_init(&attr) == 0);
    REQUIRE(::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP) == 0);
    REQUIRE(::posix_spawnattr_setpgroup(&attr, 0) == 0);
    char arg0[] = "sh";
    char arg1[] = "-c";
    std::string body = script;
    char* argv[] = {arg0, arg1, body.data(), nullptr};
    const int rc = ::posix_spawn(&pid, "/bin/sh", nullptr, &attr, argv, environ);
    ::posix_spawnattr_destroy(&attr);
    REQUIRE(rc == 0);
  }
  ~Supervised() {
    if (pid > 0) {
      ::kill(-pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  pid_t pid = -1;
};

// A loopback port nothing listens on now (bound to 0 and released).
uint16_t freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
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

}  // namespace

TEST_CASE_FIXTURE(Fleet,
                  "time to recover: a service killed and restarted by its supervisor after 2 s recovers in ~2 s") {
  const uint16_t port = freePort();
  const std::string pidfile = dir.path + "/demo.pid";
  Supervised supervisor(port, pidfile, 2s);
  const auto up = [&] {
    auto runner = controller::makeProbeRunner();
    controller::Probe p;
    p.name = "up";
    p.http.url = fmt::format("http://127.0.0.1:{}/", port);
    p.http.timeout = 500ms;
    return runner->run(p).ok;
  };
  REQUIRE(testing::eventually(up, 10s));
  const std::string yaml = fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: e2e-recovery
steadyState:
  every: 100ms
  probes:
    - name: demo
      http: {{url: "http://127.0.0.1:{}/", maxLatency: 500ms, timeout: 500ms}}
  slos:
    - name: demo-errors
      probe: demo
      objective: errors < 10% over 1s
  after: {{settle: 3s, window: 2s}}
method:
  - fault:
      name: kill-demo
      type: process.kill
      duration: 100ms
      process: {{pidfile: {}}}
      signal: SIGKILL
)",
                                       port, pidfile);
  auto [runId, events] = run(yaml);
  REQUIRE(!events.empty());
  // Judged after settle, over the window: the service is back by then.
  CHECK_MESSAGE(events.back().verdict() == v1::VERDICT_HELD, events.back().message());
  auto store = controller::openSqliteStore(db);
  auto rec = store->getRun(runId);
  REQUIRE(rec.has_value());
  const v1::RunEvent* recovered = nullptr;
  for (const auto& e : rec->events()) {
    recovered = e.kind() == "step.recovered" ? &e : recovered;
  }
  REQUIRE(recovered != nullptr);
  REQUIRE(recovered->has_recovery());
  const double seconds = static_cast<double>(recovered->recovery().seconds()) + recovered->recovery().nanos() / 1e9;
  MESSAGE("time to recover: ", seconds, " s (", recovered->message(), ")");
  // Killed at the step's start, reverted 100 ms later, restarted 2 s after the kill: about 1.9 s,
  // within a sampling period and the service's start.
  CHECK(seconds > 1.5);
  CHECK(seconds < 2.6);
  CHECK(recovered->message().rfind("step 1: recovered ", 0) == 0);
  // The samples while it was down are errors, not short latencies.
  int failedAfterKill = 0;
  for (const auto& s : rec->samples()) {
    failedAfterKill += s.phase() != "before" && !s.ok() ? 1 : 0;
  }
  CHECK(failedAfterKill >= 10);
}
