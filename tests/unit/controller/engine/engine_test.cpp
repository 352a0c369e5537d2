// The run state machine against a fake fleet and scripted probes, with the real SQLite store.
#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <fmt/format.h>

#include <doctest/doctest.h>

#include "agent/faults/spec.h"
#include "controller/engine/engine.h"
#include "tests/fakes/fake_fleet.h"
#include "tests/support/agent_ids.h"

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
      return Sample{false, 5ms, "status 503, expected 200", std::nullopt};
    }
    return Sample{true, 1ms, "200 in 1ms", std::nullopt};
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
  EngineOptions options = [] {
    EngineOptions o;
    o.applyTimeout = 500ms;
    o.revertTimeout = 300ms;
    return o;
  }();

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
  std::set<std::string> steps;
  for (const auto& s : rec->samples()) {
    phases.insert(s.phase());
    if (s.phase() == "during") {
      steps.insert(s.step());
    }
  }
  // The whole run is observed: before, during the fault, the wait step, after the rollback.
  CHECK(phases.count("before") == 1);
  CHECK(phases.count("during") == 1);
  CHECK(phases.count("after") == 1);
  CHECK(steps == std::set<std::string>{"1"});
}

TEST_CASE("engine: step.skew comes after the fault.applied events it measures, reports from other threads too") {
  Harness h;
  h.fleet.addAgent("a1", {}, true, testing::Behaviour::ApplyFromThread);
  h.fleet.addAgent("a2", {}, true, testing::Behaviour::ApplyFromThread);
  // A sink slow to pass fault.applied on: the engine must not run ahead of the event it acts on.
  RunEngine engine(
      h.fleet, h.probes, *h.store,
      [&h](const v1::RunEvent& ev) {
        if (ev.kind() == "fault.applied") {
          std::this_thread::sleep_for(50ms);
        }
        std::lock_guard lock(h.mutex);
        h.events.push_back(ev);
      },
      h.options);
  CHECK(engine.run(RunRequest{"run-1", "unit.yaml", std::string(64, 'a'), "cli", experiment(100ms)}, StopSignal{}) ==
        v1::VERDICT_HELD);
  INFO(h.store->getRun("run-1")->reason());
  std::vector<std::string> kinds;
  for (const auto& e : h.events) {
    if (e.kind() == "fault.applied" || e.kind() == "step.skew") {
      kinds.push_back(e.kind());
    }
  }
  CHECK(kinds == std::vector<std::string>{"fault.applied", "fault.applied", "step.skew"});
  kinds.clear();
  const auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  for (const auto& e : rec->events()) {
    if (e.kind() == "fault.applied" || e.kind() == "step.skew") {
      kinds.push_back(e.kind());
    }
  }
  CHECK(kinds == std::vector<std::string>{"fault.applied", "fault.applied", "step.skew"});
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

TEST_CASE("engine: a secret variable's value never reaches events, samples or the reason; ${NAME} does") {
  Harness h;
  h.fleet.addAgent("a1", {});
  h.probes.down = true;  // its detail, "status 503, expected 200", stands in for text that quotes a value
  RunEngine engine(
      h.fleet, h.probes, *h.store,
      [&h](const v1::RunEvent& ev) {
        std::lock_guard lock(h.mutex);
        h.events.push_back(ev);
      },
      h.options);
  RunRequest request{"run-1", "unit.yaml", std::string(64, 'a'), "cli", experiment(100ms)};
  request.secrets = {{"API_TOKEN", "503"}};
  CHECK(engine.run(request, StopSignal{}) == v1::VERDICT_NOT_STEADY);
  auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  bool sawReference = false;
  for (const auto& e : rec->events()) {
    CHECK_MESSAGE(e.message().find("503") == std::string::npos, e.message());
    sawReference = sawReference || e.message().find("status ${API_TOKEN}") != std::string::npos;
  }
  CHECK(sawReference);
  for (const auto& e : h.events) {
    CHECK_MESSAGE(e.message().find("503") == std::string::npos, e.message());
  }
  REQUIRE(rec->samples_size() > 0);
  for (const auto& sample : rec->samples()) {
    CHECK_MESSAGE(sample.detail().find("503") == std::string::npos, sample.detail());
  }
  CHECK_MESSAGE(rec->reason().find("503") == std::string::npos, rec->reason());
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
  CHECK(rec->reason().find("failed on agent a2 (host-a2): the kernel said no") != std::string::npos);
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
  e.targets.mode = TargetMode::kCount;
  e.targets.n = 2;
  CHECK(h.run(e) == v1::VERDICT_HELD);
  CHECK(h.fleet.injectedAgents() == std::vector<std::string>{"a1", "a2"});
}

namespace {

std::vector<std::string> idsOf(const ResolvedTargets& r) {
  return testing::agentIds(r.hosts);
}

}  // namespace

TEST_CASE("engine: random(n) targets are resolved once and recorded with the seed") {
  Harness h;
  for (const char* id : {"a1", "a2", "a3", "a4"}) {
    h.fleet.addAgent(id, {});
  }
  h.options.targetSeed = 42;
  auto e = experiment(50ms);
  e.method.push_back(e.method.front());  // two fault steps: both on the same hosts
  e.targets.mode = TargetMode::kRandom;
  e.targets.n = 2;
  CHECK(h.run(e) == v1::VERDICT_HELD);
  const auto expected = idsOf(*resolveTargets(e.targets, h.fleet.agents(), 42));
  auto injected = h.fleet.injectedAgents();
  CHECK(injected.size() == 4);
  CHECK(std::set<std::string>(injected.begin(), injected.end()) ==
        std::set<std::string>(expected.begin(), expected.end()));
  auto rec = h.store->getRun("run-1");
  int resolvedEvents = 0;
  for (const auto& ev : rec->events()) {
    if (ev.kind() == "targets.resolved") {
      ++resolvedEvents;
      CHECK(ev.message().find("mode random(2): 2 of 4 matching agent(s) (seed 42)") != std::string::npos);
    }
  }
  CHECK(resolvedEvents == 1);
}

TEST_CASE("engine: netem faults are refused before injecting on a host without sch_netem") {
  Harness h;
  h.fleet.addAgent("a1", {}, true);
  h.fleet.addAgent("a2", {}, false);
  CHECK(h.run(experiment(100ms, true)) == v1::VERDICT_ERROR);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 0);
  CHECK(h.store->getRun("run-1")->reason().find("agent a2 (host-a2) cannot run network.delay") != std::string::npos);
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

TEST_CASE("engine: a revert the agent gives up on (permanent) ends the run at once, naming why") {
  Harness h;
  h.options.revertTimeout = 30s;
  h.fleet.addAgent("a1", {}, true, testing::Behaviour::RevertRefused);
  const auto start = std::chrono::steady_clock::now();
  CHECK(h.run(experiment(50ms)) == v1::VERDICT_ERROR);
  CHECK(std::chrono::steady_clock::now() - start < 5s);  // not the 30 s revert timeout
  const auto reason = h.store->getRun("run-1")->reason();
  CHECK_MESSAGE(reason.find("not reverted (") != std::string::npos, reason);
  CHECK_MESSAGE(reason.find("the root qdisc is now someone else's") != std::string::npos, reason);
  CHECK_MESSAGE(reason.find("within") == std::string::npos, reason);
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

TEST_CASE("engine: a fault the agent finds no longer in place (FAILED, still held) ends the run at once, reverted") {
  Harness h;
  h.fleet.addAgent("a1", {});
  const std::string lostError =
      "network.bandwidth on veth0 in /var/run/netns/t: the fault is no longer in place: the root qdisc of veth0 is "
      "now tbf 5:, not faultline's tbf fa17: (someone replaced it)";
  auto lost = emitWhenApplied(h, v1::FAULT_STATE_FAILED, v1::FAULT_ERROR_UNSPECIFIED, lostError);
  const auto start = std::chrono::steady_clock::now();
  CHECK(h.run(experiment(30s)) == v1::VERDICT_ERROR);
  lost.join();
  CHECK(std::chrono::steady_clock::now() - start < 5s);  // not the 30 s duration
  const auto reason = h.store->getRun("run-1")->reason();
  CHECK_MESSAGE(reason.find("ended before its duration: " + lostError) != std::string::npos, reason);
  // The agent still holds it: the run asks for its revert at once.
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kRevert) == 1);
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

TEST_CASE("engine: an agent that disconnects holding two faults: each gets fault.failed saying it disconnected") {
  Harness h;
  h.fleet.addAgent("a1", {});
  auto e = experiment(30s);
  ParallelStep both;
  both.steps.emplace_back(std::get<FaultStep>(e.method[0]));
  both.steps.emplace_back(std::get<FaultStep>(e.method[0]));
  e.method.insert(e.method.begin(), Step{both});
  e.method.resize(1);
  // The gateway's report for the first fault arrives; the run ends before the second's does.
  std::thread gone([&h] {
    std::vector<std::string> ids;
    while ((ids = h.fleet.activeIds()).size() < 2) {
      std::this_thread::sleep_for(5ms);
    }
    h.fleet.removeAgent("a1");
    v1::FaultReport r;
    r.set_fault_id(ids.front());
    r.set_state(v1::FAULT_STATE_FAILED);
    r.set_error_code(v1::FAULT_ERROR_AGENT_GONE);
    r.set_error("agent a1 disconnected while holding the fault");
    h.fleet.emit("a1", r);
  });
  const auto start = std::chrono::steady_clock::now();
  CHECK(h.run(e) == v1::VERDICT_ERROR);
  gone.join();
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  const auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  const auto reason = rec->reason();
  CAPTURE(reason);
  CHECK(reason.find("disconnected") != std::string::npos);
  CHECK(reason.find("within") == std::string::npos);
  std::set<std::string> failed;  // the messages of the fault.failed events
  for (const auto& ev : rec->events()) {
    if (ev.kind() == "fault.failed") {
      CAPTURE(ev.message());
      CHECK(ev.message().find("disconnected") != std::string::npos);
      CHECK(ev.message().find("within") == std::string::npos);
      CHECK(ev.host() == "host-a1");
      failed.insert(ev.message());
    }
  }
  CHECK(failed.size() == 2);
}

namespace {

// Each probe answers through a function of (probe, calls so far, faults active).
class FunctionProbes final : public ProbeRunner {
 public:
  using Fn = std::function<Sample(const Probe&, int call, bool faultActive)>;
  FunctionProbes(const testing::FakeFleet& fleet, Fn fn) : fleet_(fleet), fn_(std::move(fn)) {}
  Sample run(const Probe& probe) override {
    int call = 0;
    {
      std::lock_guard lock(mutex_);
      call = ++calls_[probe.name];
    }
    return fn_(probe, call, fleet_.activeCount() > 0);
  }

 private:
  const testing::FakeFleet& fleet_;
  Fn fn_;
  std::mutex mutex_;
  std::map<std::string, int> calls_;
};

struct SloHarness {
  testing::FakeFleet fleet;
  std::unique_ptr<RecordStore> store = openSqliteStore(":memory:");
  std::vector<v1::RunEvent> events;
  std::mutex mutex;

  v1::Verdict run(const Experiment& e, FunctionProbes::Fn fn, const StopSignal& stop = StopSignal{}) {
    FunctionProbes probes(fleet, std::move(fn));
    RunEngine engine(
        fleet, probes, *store,
        [this](const v1::RunEvent& ev) {
          std::lock_guard lock(mutex);
          events.push_back(ev);
        },
        [] {
          EngineOptions o;
          o.applyTimeout = 500ms;
          o.revertTimeout = 300ms;
          return o;
        }());
    return engine.run(RunRequest{"run-1", "unit.yaml", std::string(64, 'a'), "cli", e}, stop);
  }
  std::optional<v1::RunEvent> event(const std::string& kind) {
    std::lock_guard lock(mutex);
    for (const auto& e : events) {
      if (e.kind() == kind) {
        return e;
      }
    }
    return std::nullopt;
  }
};

// Probe web (an SLO over it), a second fault step that must never start after a stop.
Experiment sloExperiment(const std::string& objective, std::optional<double> maxBurnRate = std::nullopt) {
  Experiment e = experiment(30s);
  Slo slo = *parseObjective(objective);
  slo.name = "web-slo";
  slo.probe = "web";
  slo.maxBurnRate = maxBurnRate;
  e.hypothesis.slos.push_back(slo);
  FaultStep second;
  second.name = "second";
  auto* b = second.spec.mutable_network_bandwidth();
  b->mutable_target()->set_interface("eth0");
  b->set_rate_bps(1'000'000);
  second.duration = 30s;
  e.method.emplace_back(std::move(second));
  return e;
}

Sample ok(std::chrono::milliseconds latency) {
  return Sample{true, latency, "200", std::nullopt};
}

Sample failed() {
  return Sample{false, 2ms, "status 503, expected 200", std::nullopt};
}

}  // namespace

TEST_CASE("engine: an SLO violated during the fault stops the run at once: faults reverted, no later step") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  const auto start = std::chrono::steady_clock::now();
  const auto verdict = h.run(sloExperiment("p99 < 100ms over 1s"),
                             [](const Probe&, int, bool active) { return ok(active ? 400ms : 5ms); });
  CHECK(verdict == v1::VERDICT_VIOLATED);
  CHECK(std::chrono::steady_clock::now() - start < 5s);  // the faults were 2 x 30s
  CHECK(h.fleet.activeCount() == 0);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 1);  // the second step never started
  auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  CHECK(rec->reason().find("SLO web-slo (p99 < 100ms over 1s) violated while the fault was active: p99 400ms") !=
        std::string::npos);
  REQUIRE(h.event("stop.condition").has_value());
  std::set<std::string> phases;
  for (const auto& c : rec->slo_checks()) {
    phases.insert(c.phase());
    CHECK(c.slo() == "web-slo");
    REQUIRE(c.measures_size() == 1);
  }
  CHECK(phases == std::set<std::string>{"before", "during", "after"});  // SLIs before, during and after
  CHECK(rec->slo_checks(0).ok());
}

TEST_CASE("engine: failures within an SLO's error budget do not violate it") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  auto e = sloExperiment("errors < 50% over 10s");
  e.method.pop_back();
  std::get<FaultStep>(e.method[0]).duration = 300ms;
  // Every 4th sample fails: 25% of the window at most.
  CHECK(h.run(e, [](const Probe&, int call, bool active) { return active && call % 4 == 0 ? failed() : ok(1ms); }) ==
        v1::VERDICT_HELD);
  auto rec = h.store->getRun("run-1");
  bool sawFailure = false;
  for (const auto& s : rec->samples()) {
    sawFailure = sawFailure || !s.ok();
  }
  CHECK(sawFailure);
}

TEST_CASE("engine: an error budget burning above maxBurnRate aborts the run") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  const auto verdict = h.run(sloExperiment("errors < 10% over 5s", 3),
                             [](const Probe&, int, bool active) { return active ? failed() : ok(1ms); });
  CHECK(verdict == v1::VERDICT_ABORTED);
  CHECK(exitCodeFor(verdict) == 2);
  CHECK(h.fleet.activeCount() == 0);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 1);
  const auto reason = h.store->getRun("run-1")->reason();
  CHECK(reason.find("stop condition: SLO web-slo burns its error budget at 10.0x, above maxBurnRate 3") !=
        std::string::npos);
}

TEST_CASE("engine: a guard probe's failure aborts the run; the other probes keep their own judgement") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = experiment(30s);
  Probe guard;
  guard.name = "db";
  guard.kind = ProbeKind::kTcp;
  guard.guard = true;
  e.hypothesis.probes.push_back(guard);
  const auto verdict = h.run(e, [](const Probe& p, int call, bool active) {
    return p.name == "db" && active && call >= 3 ? Sample{false, 1s, "timeout after 1s", std::nullopt} : ok(1ms);
  });
  CHECK(verdict == v1::VERDICT_ABORTED);
  CHECK(h.fleet.activeCount() == 0);
  CHECK(h.store->getRun("run-1")->reason() ==
        "stop condition: guard probe db failed while the fault was active: timeout after 1s");
}

TEST_CASE("engine: an SLO already failing before the method is 'not steady', nothing injected") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  const auto verdict = h.run(sloExperiment("p95 < 50ms"), [](const Probe&, int, bool) { return ok(80ms); });
  CHECK(verdict == v1::VERDICT_NOT_STEADY);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 0);
  const auto reason = h.store->getRun("run-1")->reason();
  // Judged on the SLO's minSamples (5), never on one sample.
  CHECK(reason.find("SLO web-slo (p95 < 50ms): p95 80ms (< 50ms) FAILED over ") != std::string::npos);
  const auto rec = h.store->getRun("run-1");
  REQUIRE(rec->slo_checks_size() >= 1);
  CHECK(rec->slo_checks(0).phase() == "before");
  CHECK(rec->slo_checks(0).samples() >= 5);
  CHECK_FALSE(rec->slo_checks(0).not_enough_data());
}

TEST_CASE("engine: each probe samples on its own schedule: a hanging probe never delays another's samples") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = experiment(1s);
  Probe slow;
  slow.name = "slow";
  e.hypothesis.probes.push_back(slow);
  e.hypothesis.every = 50ms;
  const auto verdict = h.run(e, [](const Probe& p, int, bool) {
    if (p.name == "slow") {
      std::this_thread::sleep_for(700ms);  // a server that hangs 700 ms per answer
      return ok(700ms);
    }
    return ok(1ms);
  });
  CHECK(verdict == v1::VERDICT_HELD);
  auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  int webDuring = 0;
  int slowDuring = 0;
  for (const auto& s : rec->samples()) {
    if (s.phase() == "during") {
      (s.probe() == "web" ? webDuring : slowDuring) += 1;
    }
  }
  // The slow probe's first sample ends 700 ms in; by then web sampled every 50 ms.
  CHECK(slowDuring >= 1);
  CHECK(webDuring >= 5);
}

TEST_CASE("engine: a probe step samples any kind of probe; a failure violates even an SLO-covered probe, run goes on") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = experiment(100ms);
  Probe cmd;
  cmd.name = "cmd";
  cmd.kind = ProbeKind::kCommand;
  e.hypothesis.probes.push_back(cmd);
  Slo slo = *parseObjective("errors < 50% over 10s");
  slo.name = "cmd-slo";
  slo.probe = "cmd";
  slo.minSamples = 1;  // judged on every sample during the 100 ms fault
  e.hypothesis.slos.push_back(slo);
  // fault 100ms, probe cmd (fails once: the first sample after the fault), wait 10ms.
  e.method.insert(e.method.begin() + 1, Step{ProbeStep{"cmd"}});
  std::atomic<bool> sawActive{false};
  std::atomic<bool> failedOnce{false};
  const auto verdict = h.run(e, [&](const Probe& p, int, bool active) {
    if (p.name != "cmd") {
      return ok(1ms);
    }
    if (active) {
      sawActive = true;
    } else if (sawActive) {
      failedOnce = true;
      return Sample{false, 3ms, "exit 1, expected 0", std::nullopt};
    }
    return ok(1ms);
  });
  CHECK(verdict == v1::VERDICT_VIOLATED);
  auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  CHECK(rec->reason() == "steady state violated: probe cmd failed at a probe step of the method: exit 1, expected 0");
  CHECK_FALSE(h.event("stop.condition").has_value());  // no fault was held: the run went on
  CHECK(h.event("step.wait").has_value());
  int stepSamples = 0;
  for (const auto& s : rec->samples()) {
    if (s.phase() == "step") {
      ++stepSamples;
      CHECK(s.probe() == "cmd");
      CHECK(s.kind() == "command");
      CHECK_FALSE(s.ok());
    }
  }
  CHECK(stepSamples == 1);
}

TEST_CASE("engine: a guard failing at a probe step of a parallel group aborts: faults reverted, no later step") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = sloExperiment("p99 < 1s");  // fault 30s, wait, fault 30s
  Probe guard;
  guard.name = "db";
  guard.kind = ProbeKind::kTcp;
  guard.guard = true;
  e.hypothesis.probes.push_back(guard);
  e.hypothesis.every = 1s;  // no periodic sample of db before the group's probe step
  e.hypothesis.slos[0].minSamples = 1;
  ParallelStep group;
  group.steps.emplace_back(std::get<FaultStep>(e.method[0]));
  group.steps.emplace_back(ProbeStep{"db"});
  e.method[0] = Step{std::move(group)};
  const auto start = std::chrono::steady_clock::now();
  const auto verdict = h.run(e, [](const Probe& p, int, bool active) {
    return p.name == "db" && active ? Sample{false, 1s, "timeout after 1s", std::nullopt} : ok(1ms);
  });
  CHECK(verdict == v1::VERDICT_ABORTED);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  CHECK(h.fleet.activeCount() == 0);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 1);  // the later fault step never started
  auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  CHECK(rec->reason() == "stop condition: guard probe db failed while the fault was active: timeout after 1s");
  bool stepFailed = false;
  for (const auto& s : rec->samples()) {
    stepFailed = stepFailed || (s.phase() == "step" && s.probe() == "db" && !s.ok());
  }
  CHECK(stepFailed);
}

namespace {

// The real SQLite store behind a switch that makes every write fail as a full disk does (the
// store throws std::system_error): what the run engine sees when the disk fills. Reads still work.
class FillingStore final : public RecordStore {
 public:
  explicit FillingStore(std::unique_ptr<RecordStore> real) : real_(std::move(real)) {}
  void createRun(const v1::Run& run) override {
    fail("createRun");
    real_->createRun(run);
  }
  void addEvent(const v1::RunEvent& event) override {
    fail("addEvent");
    real_->addEvent(event);
  }
  void addSample(const std::string& runId, const v1::ProbeSample& sample) override {
    fail("addSample");
    real_->addSample(runId, sample);
  }
  void addSloCheck(const std::string& runId, const v1::SloCheck& check) override {
    fail("addSloCheck");
    real_->addSloCheck(runId, check);
  }
  void finishRun(const std::string& runId, v1::Verdict verdict, const std::string& reason,
                 const google::protobuf::Timestamp& endedAt) override {
    fail("finishRun");
    real_->finishRun(runId, verdict, reason, endedAt);
  }
  tl::expected<v1::Run, std::error_code> getRun(const std::string& runId) override { return real_->getRun(runId); }
  std::vector<v1::Run> listRuns(const RunFilter& filter) override { return real_->listRuns(filter); }
  std::uint64_t pruneRuns(const Retention& retention, const google::protobuf::Timestamp& now) override {
    return real_->pruneRuns(retention, now);
  }
  std::vector<std::string> finishInterruptedRuns(const std::string& reason,
                                                 const google::protobuf::Timestamp& endedAt) override {
    return real_->finishInterruptedRuns(reason, endedAt);
  }
  std::atomic<bool> full{false};
  std::atomic<int> refused{0};

 private:
  void fail(const char* what) {
    if (full) {
      ++refused;
      throw std::system_error(std::make_error_code(std::errc::no_space_on_device),
                              fmt::format("record store /var/lib/faultline/records.db: {} of run run-1", what));
    }
  }
  std::unique_ptr<RecordStore> real_;
};

}  // namespace

TEST_CASE("engine: a full disk at createRun aborts the run before anything is injected; nothing escapes") {
  Harness h;
  auto filling = std::make_unique<FillingStore>(openSqliteStore(":memory:"));
  filling->full = true;
  auto* disk = filling.get();
  h.store = std::move(filling);
  h.fleet.addAgent("a1", {});
  CHECK(h.run(experiment(100ms)) == v1::VERDICT_ABORTED);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 0);
  CHECK(h.probes.calls == 0);
  REQUIRE(h.events.size() == 1);
  CHECK(h.events[0].kind() == "run.finished");
  CHECK(h.events[0].verdict() == v1::VERDICT_ABORTED);
  CHECK(h.events[0].message() ==
        "verdict: aborted: the record store failed (record store /var/lib/faultline/records.db: createRun of run "
        "run-1: No space left on device): run aborted; nothing was injected");
  CHECK(disk->refused == 1);
  CHECK(h.store->getRun("run-1").error() == std::make_error_code(std::errc::no_such_file_or_directory));
}

TEST_CASE("engine: a disk that fills while a fault is held aborts the run, reverts it, and names what was lost") {
  Harness h;
  auto filling = std::make_unique<FillingStore>(openSqliteStore(":memory:"));
  auto* disk = filling.get();
  h.store = std::move(filling);
  h.fleet.addAgent("a1", {});
  std::thread filler([&] {
    while (!h.hasEvent("fault.applied")) {  // the sink hears of it after the store has it
      std::this_thread::sleep_for(5ms);
    }
    disk->full = true;
  });
  const auto start = std::chrono::steady_clock::now();
  const auto verdict = h.run(experiment(30s));
  filler.join();
  CHECK(verdict == v1::VERDICT_ABORTED);
  CHECK(std::chrono::steady_clock::now() - start < 5s);  // not the fault's 30 s
  CHECK(h.fleet.activeCount() == 0);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kRevert) == 1);
  // The watchers saw the revert the record could not keep, and the verdict says what is missing.
  CHECK(h.hasEvent("fault.reverted"));
  REQUIRE(!h.events.empty());
  const auto& done = h.events.back();
  CHECK(done.kind() == "run.finished");
  CHECK(done.verdict() == v1::VERDICT_ABORTED);
  CHECK(done.message().find(
            "verdict: aborted: the record store failed (record store /var/lib/faultline/records.db: ") == 0);
  CHECK(done.message().find("not recorded: ") != std::string::npos);
  CHECK(done.message().find("fault.reverted") != std::string::npos);
  // The record holds what was written before the disk filled, and nothing after.
  disk->full = false;
  auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  CHECK(rec->verdict() == v1::VERDICT_UNSPECIFIED);
  bool applied = false;
  for (const auto& e : rec->events()) {
    CHECK(e.kind() != "fault.reverted");
    applied = applied || e.kind() == "fault.applied";
  }
  CHECK(applied);
}

TEST_CASE("engine: a guard failing during a wait step stops the method before the next step starts") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = sloExperiment("p99 < 1s over 1s");  // fault, wait, fault "second"
  e.hypothesis.slos[0].minSamples = 1;
  std::get<FaultStep>(e.method[0]).duration = 100ms;
  std::get<WaitStep>(e.method[1]).duration = 3s;
  Probe guard;
  guard.name = "db";
  guard.kind = ProbeKind::kTcp;
  guard.guard = true;
  e.hypothesis.probes.push_back(guard);
  // The database goes down after the first fault is reverted: during the wait, no fault held.
  std::atomic<bool> sawActive{false};
  const auto start = std::chrono::steady_clock::now();
  const auto verdict = h.run(e, [&](const Probe& p, int, bool active) {
    if (active) {
      sawActive = true;
    }
    if (p.name == "db" && sawActive && !active) {
      return Sample{false, 0ms, "connection refused", std::nullopt};
    }
    return ok(1ms);
  });
  CHECK(verdict == v1::VERDICT_ABORTED);
  CHECK(std::chrono::steady_clock::now() - start < 3s);           // stopped within the wait, not after it
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 1);  // the second fault never started
  CHECK(h.fleet.activeCount() == 0);
  auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  // "during step 2" (or, for a sample that started while the revert was being confirmed, "while
  // the fault was active").
  CHECK_MESSAGE(rec->reason().rfind("stop condition: guard probe db failed ", 0) == 0, rec->reason());
  CHECK(rec->reason().find("connection refused") != std::string::npos);
  REQUIRE(h.event("stop.condition").has_value());
}

TEST_CASE("engine: a guard failing at a probe step stops the method before the next step starts") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = sloExperiment("p99 < 1s over 1s");
  e.hypothesis.slos[0].minSamples = 1;
  e.hypothesis.every = 1s;
  std::get<FaultStep>(e.method[0]).duration = 100ms;
  Probe guard;
  guard.name = "db";
  guard.kind = ProbeKind::kTcp;
  guard.guard = true;
  e.hypothesis.probes.push_back(guard);
  // fault 100ms, probe db, wait, fault "second"
  e.method.insert(e.method.begin() + 1, Step{ProbeStep{"db"}});
  // The database is down once the first fault was sent and no fault is held.
  const auto verdict = h.run(e, [&](const Probe& p, int, bool active) {
    const bool injected = h.fleet.sentCount(v1::ControllerMessage::kInject) > 0;
    return p.name == "db" && injected && !active ? Sample{false, 0ms, "connection refused", std::nullopt} : ok(1ms);
  });
  CHECK(verdict == v1::VERDICT_ABORTED);
  CHECK(h.fleet.sentCount(v1::ControllerMessage::kInject) == 1);
  CHECK(h.store->getRun("run-1")->reason() ==
        "stop condition: guard probe db failed at the probe step, step 2 of the method: connection refused");
  CHECK_FALSE(h.event("step.wait").has_value());  // step 3 never started
}

TEST_CASE("engine: an SLO whose window never held minSamples during the fault is 'not enough data', said so") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = sloExperiment("errors < 20% over 10s");
  e.method.pop_back();
  e.hypothesis.every = 50ms;
  e.hypothesis.slos[0].minSamples = 20;
  std::get<FaultStep>(e.method[0]).duration = 300ms;  // about 6 samples
  // Every sample fails while the fault is held: on 6 samples that judges nothing.
  const auto verdict = h.run(e, [](const Probe&, int, bool active) { return active ? failed() : ok(1ms); });
  CHECK(verdict == v1::VERDICT_HELD);
  auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  CHECK(rec->reason().find("not judged: SLO web-slo while the faults were held: not enough data: ") !=
        std::string::npos);
  bool sawNotEnough = false;
  for (const auto& c : rec->slo_checks()) {
    if (c.phase() == "during") {
      CHECK(c.not_enough_data());
      CHECK(c.min_samples() == 20);
      sawNotEnough = true;
    }
  }
  CHECK(sawNotEnough);
  CHECK_FALSE(h.event("slo.violated").has_value());
}

TEST_CASE("engine: time to recover runs from a fault step's revert until every SLO holds again") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = sloExperiment("errors < 10% over 1s");
  e.method.resize(1);
  e.hypothesis.every = 20ms;
  e.hypothesis.slos[0].maxBurnRate.reset();
  std::get<FaultStep>(e.method[0]).duration = 200ms;
  e.hypothesis.afterSettle = 0ms;
  e.hypothesis.afterWindow = 2s;
  // The service fails from the fault's start until 500 ms after it ends.
  std::mutex m;
  std::optional<std::chrono::steady_clock::time_point> lastActive;
  const auto verdict = h.run(e, [&](const Probe&, int, bool active) {
    std::lock_guard lock(m);
    const auto now = std::chrono::steady_clock::now();
    if (active) {
      lastActive = now;
    }
    return lastActive && now - *lastActive < 500ms ? failed() : ok(1ms);
  });
  CHECK(verdict == v1::VERDICT_VIOLATED);  // the errors while the fault was held
  const auto recovered = h.event("step.recovered");
  REQUIRE(recovered.has_value());
  const auto ttr =
      std::chrono::nanoseconds{recovered->recovery().seconds() * 1'000'000'000LL + recovered->recovery().nanos()};
  // 500 ms after the last sample that saw the fault, less the time the revert took to confirm.
  CHECK(ttr >= 350ms);
  CHECK(ttr < 700ms);
  CHECK(recovered->message().rfind("step 1: recovered ", 0) == 0);
  auto rec = h.store->getRun("run-1");
  bool stored = false;
  for (const auto& ev : rec->events()) {
    stored = stored || (ev.kind() == "step.recovered" && ev.has_recovery());
  }
  CHECK(stored);
}

TEST_CASE("engine: a service that never comes back is 'not recovered within' the span observed") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = sloExperiment("errors < 10% over 1s");
  e.method.resize(1);
  e.hypothesis.every = 20ms;
  e.hypothesis.slos[0].maxBurnRate.reset();
  std::get<FaultStep>(e.method[0]).duration = 100ms;
  e.hypothesis.afterSettle = 200ms;
  e.hypothesis.afterWindow = 1s;
  std::atomic<bool> broken{false};
  const auto verdict = h.run(e, [&](const Probe&, int, bool active) {
    broken = broken || active;
    return broken ? failed() : ok(1ms);
  });
  CHECK(verdict == v1::VERDICT_VIOLATED);
  const auto notRecovered = h.event("step.not_recovered");
  REQUIRE(notRecovered.has_value());
  CHECK(notRecovered->message().rfind("step 1: not recovered within the ", 0) == 0);
  CHECK_FALSE(h.event("step.recovered").has_value());
  auto rec = h.store->getRun("run-1");
  std::set<std::string> phases;
  for (const auto& s : rec->samples()) {
    phases.insert(s.phase());
  }
  CHECK(phases.count("settle") == 1);
  CHECK(phases.count("after") == 1);
}

namespace {

// The fault.ended events of the recorded run, by fault id; fails the test when a fault has more
// than one, or one without the fields every fault.ended carries.
std::map<std::string, v1::RunEvent> endsOf(Harness& h) {
  std::map<std::string, v1::RunEvent> ends;
  const auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  for (const auto& e : rec->events()) {
    if (e.kind() != "fault.ended") {
      continue;
    }
    CHECK_MESSAGE(ends.count(e.fault_id()) == 0, "a second fault.ended for ", e.fault_id());
    CHECK(!e.fault_id().empty());
    CHECK(!e.agent_id().empty());
    CHECK(e.host() == "host-" + e.agent_id());
    CHECK(!e.fault_kind().empty());
    CHECK(!e.end_reason().empty());
    CHECK(e.has_at());
    ends[e.fault_id()] = e;
  }
  return ends;
}

}  // namespace

TEST_CASE("engine: every fault has exactly one fault.ended, with the same fields whatever ended it") {
  SUBCASE("its duration: expired, whether the agent's timer or the run's revert came first") {
    for (const bool agentFirst : {false, true}) {
      Harness h;
      h.options.startLead = 0ms;  // the fake applies on receipt: the duration counts from then
      h.fleet.addAgent("a1", {});
      h.fleet.addAgent("a2", {});
      std::thread expiry;
      if (agentFirst) {
        // Each agent's own timer reports EXPIRED, as process.pause's agent does, just before the run's revert.
        expiry = std::thread([&h] {
          std::vector<std::string> ids;
          while ((ids = h.fleet.activeIds()).size() < 2) {
            std::this_thread::sleep_for(2ms);
          }
          std::this_thread::sleep_for(150ms);
          for (const auto& id : ids) {
            v1::FaultReport r;
            r.set_fault_id(id);
            r.set_state(v1::FAULT_STATE_EXPIRED);
            r.set_end_cause(v1::FAULT_END_CAUSE_DURATION);
            r.set_detail("reverted (duration elapsed)");
            h.fleet.emit(id.substr(id.rfind('/') + 1), r);
          }
        });
      }
      CHECK(h.run(experiment(200ms)) == v1::VERDICT_HELD);
      if (expiry.joinable()) {
        expiry.join();
      }
      const auto ends = endsOf(h);
      REQUIRE(ends.size() == 2);
      for (const auto& [id, e] : ends) {
        CHECK(e.end_reason() == "expired");
        CHECK(e.fault_kind() == "network.bandwidth");
        CHECK(e.has_applied_at());
        CHECK(e.fault_id() == "run-1/1/" + e.agent_id());
      }
    }
  }
  SUBCASE("a failed apply: failed, never applied") {
    Harness h;
    h.fleet.addAgent("a1", {}, true, testing::Behaviour::FailApply);
    CHECK(h.run(experiment(200ms)) == v1::VERDICT_ERROR);
    const auto ends = endsOf(h);
    REQUIRE(ends.size() == 1);
    CHECK(ends.begin()->second.end_reason() == "failed");
    CHECK_FALSE(ends.begin()->second.has_applied_at());
  }
  SUBCASE("an abort: aborted; a halt: halted") {
    for (const auto cause : {StopCause::kAbort, StopCause::kHalt}) {
      Harness h;
      h.fleet.addAgent("a1", {});
      StopSignal stop;
      std::thread aborter([&] {
        while (h.fleet.activeCount() == 0) {
          std::this_thread::sleep_for(5ms);
        }
        stop.request("stopped by the test", cause);
      });
      CHECK(h.run(experiment(30s), stop) == v1::VERDICT_ABORTED);
      aborter.join();
      const auto ends = endsOf(h);
      REQUIRE(ends.size() == 1);
      CHECK(ends.begin()->second.end_reason() == (cause == StopCause::kHalt ? "halted" : "aborted"));
    }
  }
  SUBCASE("a stop condition: reverted") {
    Harness h;
    h.fleet.addAgent("a1", {});
    h.probes.fragile = true;
    CHECK(h.run(experiment(30s)) == v1::VERDICT_VIOLATED);
    const auto ends = endsOf(h);
    REQUIRE(ends.size() == 1);
    CHECK(ends.begin()->second.end_reason() == "reverted");
  }
  SUBCASE("changed behind faultline's back: lost; its agent gone: lost; a lease: lease") {
    Harness h;
    h.fleet.addAgent("a1", {});
    auto lost = emitWhenApplied(h, v1::FAULT_STATE_FAILED, v1::FAULT_ERROR_UNSPECIFIED, "no longer in place");
    CHECK(h.run(experiment(30s)) == v1::VERDICT_ERROR);
    lost.join();
    auto ends = endsOf(h);
    REQUIRE(ends.size() == 1);
    CHECK(ends.begin()->second.end_reason() == "lost");

    Harness g;
    g.fleet.addAgent("a1", {}, true, testing::Behaviour::SilentOnRevert);
    auto gone = emitWhenApplied(g, v1::FAULT_STATE_FAILED, v1::FAULT_ERROR_AGENT_GONE, "agent a1 disconnected");
    CHECK(g.run(experiment(30s)) == v1::VERDICT_ERROR);
    gone.join();
    ends = endsOf(g);
    REQUIRE(ends.size() == 1);
    CHECK(ends.begin()->second.end_reason() == "lost");

    Harness l;
    l.fleet.addAgent("a1", {});
    std::thread lease([&l] {
      std::vector<std::string> ids;
      while (!l.hasEvent("fault.applied") || (ids = l.fleet.activeIds()).empty()) {
        std::this_thread::sleep_for(5ms);
      }
      v1::FaultReport r;
      r.set_fault_id(ids.front());
      r.set_state(v1::FAULT_STATE_EXPIRED);
      r.set_end_cause(v1::FAULT_END_CAUSE_LEASE);
      l.fleet.emit("a1", r);
    });
    CHECK(l.run(experiment(30s)) == v1::VERDICT_ERROR);
    lease.join();
    ends = endsOf(l);
    REQUIRE(ends.size() == 1);
    CHECK(ends.begin()->second.end_reason() == "lease");
  }
  SUBCASE("a revert the agent refuses: failed") {
    Harness h;
    h.fleet.addAgent("a1", {}, true, testing::Behaviour::RevertRefused);
    CHECK(h.run(experiment(50ms)) == v1::VERDICT_ERROR);
    const auto ends = endsOf(h);
    REQUIRE(ends.size() == 1);
    CHECK(ends.begin()->second.end_reason() == "failed");
    CHECK(ends.begin()->second.has_applied_at());
  }
}

TEST_CASE("engine: an abort while settling after the rollback is 'aborted', not a violation") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = sloExperiment("errors < 10% over 1s");
  e.method.resize(1);
  e.hypothesis.every = 50ms;
  e.hypothesis.slos[0].minSamples = 1;
  std::get<FaultStep>(e.method[0]).duration = 100ms;
  e.hypothesis.afterSettle = 1h;
  e.hypothesis.afterWindow = 1h;
  StopSignal stop;
  std::thread aborter([&] {
    while (!h.event("fault.ended").has_value()) {
      std::this_thread::sleep_for(5ms);
    }
    std::this_thread::sleep_for(200ms);  // settling
    stop.request("interrupted by the test", StopCause::kAbort);
  });
  const auto started = std::chrono::steady_clock::now();
  const auto verdict = h.run(
      e, [](const Probe&, int, bool) { return ok(1ms); }, stop);
  aborter.join();
  CHECK(verdict == v1::VERDICT_ABORTED);
  CHECK(std::chrono::steady_clock::now() - started < 10s);
  const auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  CHECK_MESSAGE(rec->reason().find("violated") == std::string::npos, rec->reason());
}

TEST_CASE("engine: a run whose SLO had too few samples while the faults were held does not claim it held 'during'") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = sloExperiment("errors < 20% over 10s");
  e.method.pop_back();
  e.hypothesis.every = 50ms;
  e.hypothesis.slos[0].minSamples = 20;
  std::get<FaultStep>(e.method[0]).duration = 300ms;
  CHECK(h.run(e, [](const Probe&, int, bool active) { return active ? failed() : ok(1ms); }) == v1::VERDICT_HELD);
  const auto rec = h.store->getRun("run-1");
  REQUIRE(rec.has_value());
  CHECK_MESSAGE(rec->reason().rfind("steady state held wherever it was judged; not judged: SLO web-slo while the "
                                    "faults were held: not enough data",
                                    0) == 0,
                rec->reason());
}

TEST_CASE("engine: a span after the revert too short for an SLO's minSamples says recovery was not judged") {
  SloHarness h;
  h.fleet.addAgent("a1", {});
  Experiment e = sloExperiment("errors < 10% over 1s");
  e.method.resize(1);
  e.hypothesis.every = 100ms;
  e.hypothesis.slos[0].maxBurnRate.reset();
  e.hypothesis.slos[0].minSamples = 5;
  std::get<FaultStep>(e.method[0]).duration = 100ms;
  e.hypothesis.afterSettle = 0ms;
  e.hypothesis.afterWindow = 250ms;  // about 3 samples
  h.run(e, [](const Probe&, int, bool) { return ok(1ms); });
  const auto notJudged = h.event("step.not_recovered");
  REQUIRE(notJudged.has_value());
  CHECK_MESSAGE(notJudged->message().rfind("step 1: recovery not judged: ", 0) == 0, notJudged->message());
  CHECK_MESSAGE(notJudged->message().find("fewer than SLO web-slo's minSamples 5") != std::string::npos,
                notJudged->message());
  CHECK_FALSE(notJudged->has_recovery());
  CHECK_FALSE(h.event("step.recovered").has_value());
}
