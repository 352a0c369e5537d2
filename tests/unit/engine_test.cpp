// The run state machine against a fake fleet and scripted probes, with the real SQLite store.
#include <algorithm>
#include <atomic>
#include <set>
#include <thread>

#include <fmt/format.h>

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
  e.targets.mode = TargetMode::kCount;
  e.targets.n = 2;
  CHECK(h.run(e) == v1::VERDICT_HELD);
  CHECK(h.fleet.injectedAgents() == std::vector<std::string>{"a1", "a2"});
}

namespace {

std::vector<v1::AgentInfo> agentsNamed(std::initializer_list<const char*> ids, const char* role = "web") {
  std::vector<v1::AgentInfo> out;
  for (const char* id : ids) {
    v1::AgentInfo a;
    a.set_agent_id(id);
    a.set_hostname(std::string("host-") + id);
    (*a.mutable_labels())["role"] = role;
    out.push_back(a);
  }
  return out;
}

std::vector<std::string> idsOf(const ResolvedTargets& r) {
  std::vector<std::string> out;
  for (const auto& a : r.hosts) {
    out.push_back(a.agent_id());
  }
  return out;
}

}  // namespace

TEST_CASE("targets: all, count(n), random(n), percent(p) over the agents that match the selector") {
  auto agents = agentsNamed({"c", "a", "e", "b", "d"});
  auto db = agentsNamed({"z"}, "db");
  agents.insert(agents.end(), db.begin(), db.end());
  Targets t;
  t.selector = {{"role", "web"}};

  auto all = resolveTargets(t, agents, 1);
  REQUIRE(all.has_value());
  CHECK(idsOf(*all) == std::vector<std::string>{"a", "b", "c", "d", "e"});
  CHECK(all->matched == 5);

  t.mode = TargetMode::kCount;
  t.n = 2;
  auto count = resolveTargets(t, agents, 1);
  REQUIRE(count.has_value());
  CHECK(idsOf(*count) == std::vector<std::string>{"a", "b"});  // the first n in agent-id order
  CHECK(count->summary == "selector {role=web}, mode count(2): 2 of 5 matching agent(s): host-a (a), host-b (b)");

  t.mode = TargetMode::kRandom;
  t.n = 3;
  std::set<std::vector<std::string>> choices;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    auto r = resolveTargets(t, agents, seed);
    REQUIRE(r.has_value());
    const auto ids = idsOf(*r);
    CHECK(ids.size() == 3);
    CHECK(std::is_sorted(ids.begin(), ids.end()));
    CHECK(std::find(ids.begin(), ids.end(), "z") == ids.end());  // never a non-match
    CHECK(ids == idsOf(*resolveTargets(t, agents, seed)));       // a function of the seed
    CHECK(r->summary.find(fmt::format("(seed {})", seed)) != std::string::npos);
    choices.insert(ids);
  }
  CHECK(choices.size() >= 5);  // 10 possible choices of 3 out of 5: random, not always the same

  t.mode = TargetMode::kPercent;
  for (const auto& [percent, hosts] :
       std::vector<std::pair<double, size_t>>{{100, 5}, {50, 3}, {40, 2}, {20, 1}, {1, 1}, {0.5, 1}, {60.0001, 4}}) {
    t.percent = percent;
    auto r = resolveTargets(t, agents, 7);
    REQUIRE(r.has_value());
    CHECK_MESSAGE(r->hosts.size() == hosts, "percent(" << percent << ")");
  }
}

TEST_CASE("targets: no match, or fewer matches than count(n)/random(n), is an error naming what matched") {
  const auto agents = agentsNamed({"a", "b"});
  Targets t;
  t.selector = {{"role", "db"}};
  auto none = resolveTargets(t, agents, 1);
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error() ==
        "no connected agent matches the selector {role=db} (2 agent(s) connected); nothing was injected");
  t.selector = {{"role", "web"}};
  t.mode = TargetMode::kRandom;
  t.n = 3;
  auto few = resolveTargets(t, agents, 1);
  REQUIRE_FALSE(few.has_value());
  CHECK(few.error() ==
        "mode random(3) needs 3 host(s) but only 2 match the selector {role=web}: host-a (a), host-b (b); nothing was "
        "injected");
}

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
