// The run state machine against a fake fleet and scripted probes, with the real SQLite store.
#include <atomic>
#include <thread>

#include <doctest/doctest.h>

#include "agent/spec.h"
#include "controller/engine.h"
#include "tests/fakes/fake_fleet.h"

using namespace faultline;
using namespace faultline::controller;
using namespace std::chrono_literals;

namespace {

// Fails while the fleet holds a fault when fragile; fails always when down.
class ScriptedProbes final : public ProbeRunner {
 public:
  explicit ScriptedProbes(const testing::FakeFleet& fleet) : fleet_(fleet) {}
  Sample run(const Probe& /*probe*/) override {
    ++calls;
    if (down || (fragile && fleet_.activeCount() > 0)) {
      return Sample{false, 5ms, "status 503, expected 200"};
    }
    return Sample{true, 1ms, "200 in 1ms"};
  }
  std::atomic<bool> fragile{false};
  std::atomic<bool> down{false};
  std::atomic<int> calls{0};

 private:
  const testing::FakeFleet& fleet_;
};

Experiment experiment(std::chrono::milliseconds faultFor, bool withNetem = false) {
  Experiment e;
  e.name = "unit";
  e.hypothesis.every = 20ms;
  Probe p;
  p.name = "web";
  p.http.url = "http://127.0.0.1:1/";
  e.hypothesis.probes.push_back(p);
  FaultStep f;
  f.name = "slow";
  if (withNetem) {
    auto* d = f.spec.mutable_network_delay();
    d->mutable_target()->set_interface("eth0");
    *d->mutable_delay() = toProto(100ms);
  } else {
    auto* b = f.spec.mutable_network_bandwidth();
    b->mutable_target()->set_interface("eth0");
    b->set_rate_bps(1'000'000);
  }
  f.duration = faultFor;
  e.method.emplace_back(std::move(f));
  e.method.emplace_back(std::in_place_type<WaitStep>, WaitStep{10ms});
  return e;
}

struct Harness {
  testing::FakeFleet fleet;
  ScriptedProbes probes{fleet};
  std::unique_ptr<RecordStore> store = openSqliteStore(":memory:");
  std::vector<v1::RunEvent> events;
  std::mutex mutex;
  EngineOptions options{500ms, 300ms};

  v1::Verdict run(const Experiment& e, const StopSignal& stop = StopSignal{}) {
    RunEngine engine(
        fleet, probes, *store,
        [this](const v1::RunEvent& ev) {
          std::lock_guard lock(mutex);
          events.push_back(ev);
        },
        options);
    return engine.run(RunRequest{"run-1", "unit.yaml", std::string(64, 'a'), "cli", e}, stop);
  }

  bool hasEvent(const std::string& kind) {
    std::lock_guard lock(mutex);
    for (const auto& e : events) {
      if (e.kind() == kind) {
        return true;
      }
    }
    return false;
  }
};

}  // namespace

TEST_CASE("engine: a fault held and reverted with the steady state intact is 'held'") {
  Harness h;
  h.fleet.addAgent("a1", {{"role", "web"}});
  h.fleet.addAgent("a2", {{"role", "db"}});
  auto e = experiment(100ms);
  e.targets.selector = {{"role", "web"}};
  CHECK(h.run(e) == v1::VERDICT_HELD);
  CHECK(h.fleet.injectedAgents() == std::vector<std::string>{"a1"});
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kRevert) == 1);
  CHECK(h.fleet.activeCount() == 0);
  CHECK(h.hasEvent("targets.resolved"));
  CHECK(h.hasEvent("fault.applied"));
  CHECK(h.hasEvent("fault.reverted"));
  auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  CHECK(rec->verdict() == v1::VERDICT_HELD);
  std::set<std::string> phases;
  for (const auto& s : rec->samples()) {
    phases.insert(s.phase());
  }
  CHECK(phases == std::set<std::string>{"before", "during", "after"});
}

TEST_CASE("engine: a steady state failing before the method injects nothing") {
  Harness h;
  h.fleet.addAgent("a1", {});
  h.probes.down = true;
  CHECK(h.run(experiment(100ms)) == v1::VERDICT_NOT_STEADY);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 0);
  auto rec = h.store->getRun("run-1");
  CHECK(rec->reason().find("before the method") != std::string::npos);
  CHECK(exitCodeFor(rec->verdict()) == 1);
}

TEST_CASE("engine: a probe failing while the fault is active is a violation, and the fault is reverted") {
  Harness h;
  h.fleet.addAgent("a1", {});
  h.probes.fragile = true;
  CHECK(h.run(experiment(100ms)) == v1::VERDICT_VIOLATED);
  CHECK(h.fleet.activeCount() == 0);
  auto rec = h.store->getRun("run-1");
  CHECK(rec->reason().find("probe web failed while the fault was active") != std::string::npos);
}

TEST_CASE("engine: a fault failing on one host is rolled back on the others; execution error") {
  Harness h;
  h.fleet.addAgent("a1", {});
  h.fleet.addAgent("a2", {}, true, testing::Behaviour::FailApply);
  CHECK(h.run(experiment(5s)) == v1::VERDICT_ERROR);
  CHECK(h.fleet.activeCount() == 0);
  auto rec = h.store->getRun("run-1");
  CHECK(rec->reason().find("failed on host host-a2: the kernel said no") != std::string::npos);
}

TEST_CASE("engine: no matching agent fails before anything is injected") {
  Harness h;
  h.fleet.addAgent("a1", {{"role", "db"}});
  auto e = experiment(100ms);
  e.targets.selector = {{"role", "web"}};
  CHECK(h.run(e) == v1::VERDICT_ERROR);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 0);
  CHECK(h.store->getRun("run-1")->reason().find("no connected agent matches the selector {role=web}") !=
        std::string::npos);
}

TEST_CASE("engine: count(n) picks n hosts") {
  Harness h;
  h.fleet.addAgent("a1", {});
  h.fleet.addAgent("a2", {});
  h.fleet.addAgent("a3", {});
  auto e = experiment(50ms);
  e.targets.count = 2;
  CHECK(h.run(e) == v1::VERDICT_HELD);
  CHECK(h.fleet.injectedAgents().size() == 2);
}

TEST_CASE("engine: netem faults are refused before injecting on a host without sch_netem") {
  Harness h;
  h.fleet.addAgent("a1", {}, true);
  h.fleet.addAgent("a2", {}, false);
  CHECK(h.run(experiment(100ms, true)) == v1::VERDICT_ERROR);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 0);
  CHECK(h.store->getRun("run-1")->reason().find("host host-a2 (a2) cannot run network.delay") != std::string::npos);
}

TEST_CASE("engine: abort reverts the active fault at once and records 'aborted'") {
  Harness h;
  h.fleet.addAgent("a1", {});
  StopSignal stop;
  std::thread aborter([&] {
    while (h.fleet.activeCount() == 0) {
      std::this_thread::sleep_for(5ms);
    }
    stop.request("interrupted by the test");
  });
  const auto start = std::chrono::steady_clock::now();
  CHECK(h.run(experiment(30s), stop) == v1::VERDICT_ABORTED);
  aborter.join();
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK(h.fleet.activeCount() == 0);
  CHECK(h.store->getRun("run-1")->reason() == "interrupted by the test");
}

TEST_CASE("engine: a revert no agent confirms is an execution error, never 'held'") {
  Harness h;
  h.fleet.addAgent("a1", {}, true, testing::Behaviour::SilentOnRevert);
  CHECK(h.run(experiment(50ms)) == v1::VERDICT_ERROR);
  CHECK(h.store->getRun("run-1")->reason().find("not confirmed reverted") != std::string::npos);
}

namespace {

// Waits until the run has recorded the fault as applied, then emits report for it from agent a1.
std::thread emitWhenApplied(Harness& h, v1::FaultState state, v1::FaultErrorCode code, const std::string& error) {
  return std::thread([&h, state, code, error] {
    std::vector<std::string> ids;
    while (!h.hasEvent("fault.applied") || (ids = h.fleet.activeIds()).empty()) {
      std::this_thread::sleep_for(5ms);
    }
    v1::FaultReport r;
    r.set_fault_id(ids.front());
    r.set_state(state);
    r.set_error_code(code);
    r.set_error(error);
    h.fleet.emit("a1", r);
  });
}

}  // namespace

TEST_CASE("engine: a fault that ends before its duration fails the run at once, never 'held'") {
  Harness h;
  h.fleet.addAgent("a1", {});
  auto early = emitWhenApplied(h, v1::FAULT_STATE_REVERTED, v1::FAULT_ERROR_UNSPECIFIED, "");
  const auto start = std::chrono::steady_clock::now();
  CHECK(h.run(experiment(30s)) == v1::VERDICT_ERROR);
  early.join();
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK(h.store->getRun("run-1")->reason().find("ended before its duration") != std::string::npos);
}

TEST_CASE("engine: an agent that disconnects while holding a fault ends the run as an error without waiting") {
  Harness h;
  h.fleet.addAgent("a1", {}, true, testing::Behaviour::SilentOnRevert);
  auto gone = emitWhenApplied(h, v1::FAULT_STATE_FAILED, v1::FAULT_ERROR_AGENT_GONE, "agent a1 disconnected");
  const auto start = std::chrono::steady_clock::now();
  CHECK(h.run(experiment(30s)) == v1::VERDICT_ERROR);
  gone.join();
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  const auto reason = h.store->getRun("run-1")->reason();
  CHECK(reason.find("agent a1 disconnected") != std::string::npos);
}
