// Agent policy: the file parser, check(), the agent refusing before the driver, and the process
// driver's protect list.
#include <chrono>
#include <csignal>
#include <set>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>
#include <boost/asio/io_context.hpp>

#include "agent/faults/process/kill_driver.h"
#include "agent/faults/process/pause_driver.h"
#include "agent/faults/spec.h"
#include "agent/safety/policy.h"
#include "agent/session/agent.h"
#include "tests/fakes/fake_process_table.h"
#include "tests/support/specs.h"

using namespace std::chrono_literals;
using faultline::formatDuration;
using faultline::toProto;
using faultline::agent::Agent;
using faultline::agent::AppliedFault;
using faultline::agent::FaultDriver;
using faultline::agent::FaultError;
using faultline::agent::format;
using faultline::agent::loadPolicy;
using faultline::agent::parsePolicy;
using faultline::agent::PersistUndo;
using faultline::agent::Policy;
using faultline::agent::PolicyDiagnostic;
using faultline::agent::ProcessKillDriver;
using faultline::agent::ProcessPauseDriver;
using faultline::agent::ProcessRules;
using faultline::agent::ProtectedName;
using faultline::testing::FakeProcessTable;
using faultline::testing::killByName;
using faultline::testing::killByPid;
namespace v1 = faultline::v1;

namespace {

const std::string kFile = "/etc/faultline/policy.yaml";

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

Policy parseGood(const std::string& yaml) {
  auto parsed = parsePolicy(yaml, kFile);
  if (!parsed) {
    for (const auto& d : parsed.error()) {
      MESSAGE(format(d));
    }
    FAIL("the policy does not parse");
  }
  return std::move(*parsed);
}

std::vector<PolicyDiagnostic> parseBad(const std::string& yaml) {
  auto parsed = parsePolicy(yaml, kFile);
  REQUIRE_FALSE(parsed);
  REQUIRE_FALSE(parsed.error().empty());
  return parsed.error();
}

v1::FaultSpec delay(const std::string& interface, std::chrono::microseconds d, std::chrono::microseconds jitter = 0us) {
  v1::FaultSpec spec;
  auto* nd = spec.mutable_network_delay();
  nd->mutable_target()->set_interface(interface);
  *nd->mutable_delay() = toProto(d);
  *nd->mutable_jitter() = toProto(jitter);
  return spec;
}

v1::FaultSpec lossIn(const std::string& netns, double percent) {
  v1::FaultSpec spec;
  spec.mutable_network_loss()->mutable_target()->set_interface("eth0");
  spec.mutable_network_loss()->mutable_target()->set_netns(netns);
  spec.mutable_network_loss()->set_percent(percent);
  return spec;
}

v1::FaultSpec loss(const std::string& interface, double percent) {
  v1::FaultSpec spec;
  spec.mutable_network_loss()->mutable_target()->set_interface(interface);
  spec.mutable_network_loss()->set_percent(percent);
  return spec;
}

}  // namespace

TEST_CASE("policy: a good file with every rule") {
  const Policy p = parseGood(R"(# policy
maxDuration: 10m
forbidKinds: [network.bandwidth]
interfaces:
  allow: [eth*, 'veth?', lo]
  deny:
    - eth9
processes:
  protect: [postgres, my-daemon]
maxPercent: 20
maxDelay: 500ms
)");
  CHECK(p.file() == kFile);
  REQUIRE(p.protectedProcesses().size() == 2);
  CHECK(p.protectedProcesses()[0].name == "postgres");
  CHECK(p.protectedProcesses()[0].rule == "policy " + kFile + ":9 (processes.protect: postgres)");
  CHECK(contains(p.summary(), "maxDuration 10m"));
  CHECK(contains(p.summary(), "protect sshd postgres my-daemon"));
}

TEST_CASE("policy: forbidKinds accepts each kind faults.proto defines, from a list derived from the proto") {
  const auto& kinds = faultline::faultKindNames();
  const auto* oneof = v1::FaultSpec::descriptor()->FindOneofByName("kind");
  REQUIRE(oneof != nullptr);
  CHECK(kinds.size() == static_cast<size_t>(oneof->field_count()));
  CHECK(kinds.size() == 12);
  const std::set<std::string_view> unique(kinds.begin(), kinds.end());
  CHECK(unique.size() == kinds.size());
  CHECK(unique.count("") == 0);  // faultKindName() names every kind of the oneof
  for (const char* kind :
       {"network.delay", "network.loss", "network.bandwidth", "network.duplicate", "network.corrupt", "network.reorder",
        "network.partition", "process.kill", "process.pause", "stress.cpu", "stress.memory", "cgroup.squeeze"}) {
    CAPTURE(kind);
    CHECK(unique.count(kind) == 1);
  }
  std::string yaml = "forbidKinds:\n";
  for (const auto kind : kinds) {
    yaml += fmt::format("  - {}\n", kind);
  }
  const Policy p = parseGood(yaml);
  CHECK_FALSE(p.check(loss("eth0", 1), 1s));
  CHECK_FALSE(p.check(killByName("x"), 1s));
  v1::FaultSpec squeeze;
  squeeze.mutable_cgroup_squeeze()->set_cgroup("/a");
  auto refused = p.check(squeeze, 1s);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message == "policy " + kFile + ":13 (forbidKinds: cgroup.squeeze) refuses cgroup.squeeze");
  // The refusal of an unknown word lists all 12.
  const auto d = parseBad("forbidKinds: [network.jam]\n");
  CHECK(contains(d[0].message,
                 "accepted: network.delay, network.loss, network.bandwidth, process.kill, "
                 "network.duplicate, network.corrupt, network.reorder, network.partition, "
                 "process.pause, stress.cpu, stress.memory, cgroup.squeeze"));
}

TEST_CASE("policy: an empty file is the built-in policy") {
  const Policy p = parseGood("# nothing here\n");
  CHECK(p.protectedProcesses().empty());
  CHECK(p.check(loss("eth0", 100), 1h));
  CHECK_FALSE(p.check(loss("eth0", 100), 1h + 1s));
}

TEST_CASE("policy: bad input is reported with file, line and column") {
  SUBCASE("unknown key at the top") {
    const auto d = parseBad("maxDuration: 10m\nmaxDuraton: 5m\n");
    REQUIRE(d.size() == 1);
    CHECK(format(d[0]) ==
          kFile +
              ":2:1: maxDuraton: unknown key 'maxDuraton'; accepted here: maxDuration, forbidKinds, interfaces, "
              "netns, processes, maxPercent, maxDelay");
  }
  SUBCASE("unknown key below interfaces") {
    const auto d = parseBad("interfaces:\n  allow: [eth0]\n  refuse: [eth1]\n");
    REQUIRE(d.size() == 1);
    CHECK(d[0].line == 3);
    CHECK(d[0].column == 3);
    CHECK(d[0].field == "interfaces.refuse");
    CHECK(contains(d[0].message, "accepted here: allow, deny"));
  }
  SUBCASE("unknown key below processes") {
    const auto d = parseBad("processes:\n  protected: [x]\n");
    REQUIRE(d.size() == 1);
    CHECK(d[0].line == 2);
    CHECK(d[0].field == "processes.protected");
  }
  SUBCASE("duplicate key") {
    const auto d = parseBad("maxPercent: 5\nmaxPercent: 6\n");
    REQUIRE(d.size() == 1);
    CHECK(d[0].line == 2);
    CHECK(contains(d[0].message, "duplicate key 'maxPercent' (first at line 1)"));
  }
  SUBCASE("durations: not a duration, over the cap, zero") {
    const auto d = parseBad("maxDuration: soon\nmaxDelay: 2h\n");
    REQUIRE(d.size() == 2);
    CHECK(d[0].line == 1);
    CHECK(d[0].column == 14);
    CHECK(contains(d[0].message, "'soon' is not a duration"));
    CHECK(d[1].line == 2);
    CHECK(contains(d[1].message, "2h is out of range; accepted: a duration more than 0 and at most 1h"));
    CHECK(parseBad("maxDuration: 25h\n")[0].message.find("at most 24h") != std::string::npos);
    CHECK(parseBad("maxDuration: 0s\n")[0].line == 1);
  }
  SUBCASE("percent out of range") {
    const auto d = parseBad("\nmaxPercent: 120\n");
    REQUIRE(d.size() == 1);
    CHECK(d[0].line == 2);
    CHECK(contains(d[0].message, "'120' is not a percentage from 0 to 100"));
  }
  SUBCASE("unknown fault kind, at its item") {
    const auto d = parseBad("forbidKinds:\n  - process.kill\n  - network.jam\n");
    REQUIRE(d.size() == 1);
    CHECK(d[0].line == 3);
    CHECK(d[0].column == 5);
    CHECK(d[0].field == "forbidKinds[1]");
    CHECK(contains(d[0].message, "'network.jam' is not a fault kind"));
  }
  SUBCASE("wrong types") {
    const auto d = parseBad("forbidKinds: process.kill\ninterfaces: [eth0]\nprocesses:\n  protect:\n");
    REQUIRE(d.size() == 3);
    CHECK(d[0].line == 1);
    CHECK(contains(d[0].message, "wrong type: got the value 'process.kill'; accepted: a list of fault kinds"));
    CHECK(d[1].line == 2);
    CHECK(contains(d[1].message, "wrong type: got a list; accepted: a map with the keys allow, deny"));
    CHECK(d[2].line == 4);
    CHECK(d[2].field == "processes.protect");
    CHECK(contains(d[2].message, "has no value"));
  }
  SUBCASE("bad interface patterns and an empty allow list") {
    const auto d = parseBad("interfaces:\n  allow: []\n  deny: [eth0, 'a/b', '']\n");
    REQUIRE(d.size() == 3);
    CHECK(d[0].line == 2);
    CHECK(contains(d[0].message, "would refuse every interface"));
    CHECK(d[1].field == "interfaces.deny[1]");
    CHECK(contains(d[1].message, "'a/b' is not an interface pattern"));
    CHECK(d[2].field == "interfaces.deny[2]");
  }
  SUBCASE("bad process name") {
    const auto d = parseBad("processes:\n  protect: [ok, /usr/sbin/x]\n");
    REQUIRE(d.size() == 1);
    CHECK(d[0].field == "processes.protect[1]");
    CHECK(contains(d[0].message, "'/usr/sbin/x' is not a process name"));
  }
  SUBCASE("not a map, syntax error, two documents") {
    CHECK(contains(parseBad("- a\n- b\n")[0].message, "the file is not a map"));
    const auto syntax = parseBad("maxDuration: 10m\ninterfaces: {allow: [eth0\n");
    REQUIRE(syntax.size() == 1);
    CHECK(syntax[0].line > 0);
    CHECK(contains(syntax[0].message, "YAML syntax error"));
    CHECK(contains(parseBad("maxDuration: 1m\n---\nmaxDuration: 2m\n")[0].message, "2 YAML documents"));
  }
  SUBCASE("too large") {
    const auto d = parseBad(std::string(faultline::agent::kMaxPolicyBytes + 1, '#'));
    CHECK(contains(d[0].message, "policy files are limited to"));
  }
}

TEST_CASE("policy: a missing file is one error naming it") {
  auto loaded = loadPolicy("/nonexistent/faultline-policy.yaml");
  REQUIRE_FALSE(loaded);
  CHECK(contains(format(loaded.error()[0]), "/nonexistent/faultline-policy.yaml: cannot read the policy file"));
}

TEST_CASE("policy: docs/policy.example.yaml parses") {
  auto loaded = loadPolicy(std::string(FAULTLINE_SOURCE_DIR) + "/docs/policy.example.yaml");
  if (!loaded) {
    for (const auto& d : loaded.error()) {
      MESSAGE(format(d));
    }
  }
  REQUIRE(loaded);
  CHECK_FALSE(loaded->protectedProcesses().empty());
}

TEST_CASE("policy check: the built-in maxDuration is 1h when there is no file") {
  const Policy p;
  CHECK(p.check(loss("eth0", 50), 1h));
  auto refused = p.check(loss("eth0", 50), 2h);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().rule == "policy built-in default (maxDuration: 1h)");
  CHECK(contains(refused.error().message, "policy built-in default (maxDuration: 1h) refuses duration 2h"));
  // Nothing else is limited by the built-in policy.
  CHECK(p.check(killByName("nginx"), 10s));
  CHECK(p.check(delay("anything0", 1h, 0us), 1s));
}

TEST_CASE("policy check: maxDuration from the file names its line") {
  const Policy p = parseGood("# the owner's limits\n\n\n\n\n\nmaxDuration: 10m\n");
  CHECK(p.check(loss("eth0", 50), 10min));
  auto refused = p.check(loss("eth0", 50), 1h);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message == "policy /etc/faultline/policy.yaml:7 (maxDuration: 10m) refuses duration 1h");
  // A file without maxDuration keeps the built-in 1h.
  CHECK_FALSE(parseGood("maxPercent: 50\n").check(loss("eth0", 1), 61min));
}

TEST_CASE("policy check: forbidKinds") {
  const Policy p = parseGood("forbidKinds:\n  - network.bandwidth\n  - process.kill\n");
  auto refused = p.check(killByPid(1234), 1s);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message == "policy " + kFile + ":3 (forbidKinds: process.kill) refuses process.kill");
  CHECK(refused.error().rule == "policy " + kFile + ":3 (forbidKinds: process.kill)");
  CHECK(p.check(loss("eth0", 1), 1s));
}

TEST_CASE("policy check: interfaces allow and deny, with globs") {
  const Policy p = parseGood("interfaces:\n  allow: [eth*, 'veth?']\n  deny:\n    - eth0\n    - 'eth1*'\n");
  CHECK(p.check(loss("eth2", 1), 1s));
  CHECK(p.check(loss("veth1", 1), 1s));

  auto denied = p.check(loss("eth12", 1), 1s);
  REQUIRE_FALSE(denied);
  CHECK(denied.error().message == "policy " + kFile + ":5 (interfaces.deny: eth1*) refuses interface eth12");

  auto notAllowed = p.check(delay("wlan0", 10ms), 1s);
  REQUIRE_FALSE(notAllowed);
  CHECK(notAllowed.error().message ==
        "policy " + kFile + ":2 (interfaces.allow: [eth*, veth?]) refuses interface wlan0: it matches no allowed name");
  CHECK_FALSE(p.check(loss("veth10", 1), 1s));  // ? is one character

  // A deny-only policy allows everything else; process faults have no interface.
  const Policy denyOnly = parseGood("interfaces: {deny: [lo]}\n");
  CHECK(denyOnly.check(loss("eth0", 1), 1s));
  CHECK_FALSE(denyOnly.check(loss("lo", 1), 1s));
  CHECK(denyOnly.check(killByName("x"), 1s));
}

TEST_CASE("policy check: netns.allow refuses a namespace outside the list") {
  const Policy p = parseGood("netns:\n  allow:\n    - /run/netns/chaos-*\n    - /var/run/netns/lab\n");
  CHECK(p.check(lossIn("/run/netns/chaos-a", 1), 1s));
  CHECK(p.check(lossIn("/var/run/netns/lab", 1), 1s));
  CHECK(contains(p.summary(), "netns allowed /run/netns/chaos-* /var/run/netns/lab"));

  auto outside = p.check(lossIn("/run/netns/prod", 1), 1s);
  REQUIRE_FALSE(outside);
  CHECK(outside.error().rule == "policy " + kFile + ":2 (netns.allow: [/run/netns/chaos-*, /var/run/netns/lab])");
  CHECK(outside.error().message == outside.error().rule + " refuses netns /run/netns/prod: it matches no allowed path");
  // A glob's * does not cross '/'.
  CHECK_FALSE(p.check(lossIn("/run/netns/chaos-a/../../../proc/1/ns/net", 1), 1s));
  CHECK_FALSE(p.check(lossIn("/run/netns/chaos-x/y", 1), 1s));
  // The agent's own namespace needs the word host.
  auto own = p.check(loss("eth0", 1), 1s);
  REQUIRE_FALSE(own);
  CHECK(contains(own.error().message, "refuses the agent's own network namespace (list 'host' to allow it)"));
  CHECK(parseGood("netns:\n  allow: [host]\n").check(loss("eth0", 1), 1s));
  CHECK_FALSE(parseGood("netns:\n  allow: [host]\n").check(lossIn("/run/netns/a", 1), 1s));
  // A namespace chosen by process has no path to check: refused while netns.allow is set.
  v1::FaultSpec byProcess = loss("eth0", 1);
  byProcess.mutable_network_loss()->mutable_target()->mutable_netns_process()->set_name("nginx");
  auto chosen = p.check(byProcess, 1s);
  REQUIRE_FALSE(chosen);
  CHECK(contains(chosen.error().message, "refuses a namespace chosen by process (name 'nginx')"));
  // Every network kind is checked, process faults are not.
  v1::FaultSpec partition;
  partition.mutable_network_partition()->mutable_target()->set_interface("eth0");
  partition.mutable_network_partition()->mutable_target()->set_netns("/run/netns/prod");
  CHECK_FALSE(p.check(partition, 1s));
  CHECK(p.check(killByName("x"), 1s));
  // Without netns.allow, any namespace.
  CHECK(Policy().check(lossIn("/run/netns/prod", 1), 1s));
}

TEST_CASE("policy: bad netns and processes values") {
  SUBCASE("netns.allow entries") {
    const auto d = parseBad("netns:\n  allow: [relative/x, /a/../b, /, /ok, hosts]\n");
    REQUIRE(d.size() == 4);
    CHECK(d[0].field == "netns.allow[0]");
    CHECK(contains(d[0].message, "'relative/x' is not a namespace path; accepted: an absolute path"));
    CHECK(d[1].field == "netns.allow[1]");
    CHECK(d[2].field == "netns.allow[2]");
    CHECK(d[3].field == "netns.allow[4]");
    CHECK(contains(parseBad("netns:\n  allow: []\n")[0].message, "would refuse every network fault"));
    CHECK(contains(parseBad("netns:\n  deny: [/a]\n")[0].message, "accepted here: allow"));
    CHECK(contains(parseBad("netns: /run/netns/a\n")[0].message, "a map with the key allow"));
  }
  SUBCASE("process counts and protectOwn") {
    const auto d = parseBad("processes:\n  maxProcesses: 0\n  maxMatches: many\n  protectOwn: maybe\n");
    REQUIRE(d.size() == 3);
    CHECK(d[0].field == "processes.maxProcesses");
    CHECK(d[0].line == 2);
    CHECK(contains(d[0].message, "'0' is not a process count; accepted: a whole number from 1 to 100000"));
    CHECK(d[1].field == "processes.maxMatches");
    CHECK(d[2].field == "processes.protectOwn");
    CHECK(contains(d[2].message, "'maybe' is not true or false"));
    CHECK(contains(parseBad("processes:\n  maxProcesses: 100001\n")[0].message, "not a process count"));
    CHECK(contains(parseBad("processes:\n  maxProcesses: -1\n")[0].message, "not a process count"));
    CHECK(contains(parseBad("processes:\n  maxProcesses: 1e3\n")[0].message, "not a process count"));
  }
}

TEST_CASE("policy: process rules: limits and faultline's own processes, by default and from the file") {
  SUBCASE("built-in") {
    const ProcessRules rules = Policy().processRules();
    CHECK(rules.limits.maxProcesses == 10);
    CHECK(rules.limits.maxProcessesRule == "policy built-in default (processes.maxProcesses: 10)");
    CHECK(rules.limits.maxMatches == 100);
    CHECK(rules.limits.maxMatchesRule == "policy built-in default (processes.maxMatches: 100)");
    REQUIRE(rules.protect.size() == 2);
    CHECK(rules.protect[0].name == "faultline-agent");
    CHECK(rules.protect[0].rule == "policy built-in default (processes.protectOwn: true): faultline's own processes");
    CHECK(rules.protect[1].name == "faultline");
    CHECK(contains(Policy().summary(), "maxProcesses 10 (default), maxMatches 100 (default)"));
  }
  SUBCASE("from the file") {
    const Policy p =
        parseGood("processes:\n  protect: [db]\n  maxProcesses: 3\n  maxMatches: 40\n  protectOwn: false\n");
    const ProcessRules rules = p.processRules();
    CHECK(rules.limits.maxProcesses == 3);
    CHECK(rules.limits.maxProcessesRule == "policy " + kFile + ":3 (processes.maxProcesses: 3)");
    CHECK(rules.limits.maxMatches == 40);
    CHECK(rules.limits.maxMatchesRule == "policy " + kFile + ":4 (processes.maxMatches: 40)");
    REQUIRE(rules.protect.size() == 1);
    CHECK(rules.protect[0].name == "db");
    CHECK(contains(p.summary(), "maxProcesses 3, maxMatches 40"));
    CHECK(contains(p.summary(), "faultline's own processes not protected"));
  }
}

TEST_CASE("policy check: maxPercent caps loss") {
  const Policy p = parseGood("maxPercent: 20\n");
  CHECK(p.check(loss("eth0", 20), 1s));
  auto refused = p.check(loss("eth0", 30), 1s);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message == "policy " + kFile + ":1 (maxPercent: 20) refuses loss 30%");
  CHECK(p.check(delay("eth0", 10ms), 1s));
}

TEST_CASE("policy check: maxDelay caps delay + jitter") {
  const Policy p = parseGood("maxDelay: 500ms\n");
  CHECK(p.check(delay("eth0", 400ms, 100ms), 1s));
  auto refused = p.check(delay("eth0", 400ms, 200ms), 1s);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message ==
        "policy " + kFile + ":1 (maxDelay: 500ms) refuses delay 400ms + jitter 200ms = 600ms");
  auto plain = p.check(delay("eth0", 1s), 1s);
  REQUIRE_FALSE(plain);
  CHECK(plain.error().message == "policy " + kFile + ":1 (maxDelay: 500ms) refuses delay 1s");
  CHECK(p.check(loss("eth0", 100), 1s));
}

namespace {

// Counts apply() calls; applies nothing.
class CountingDriver final : public FaultDriver {
 public:
  using FaultDriver::apply;
  tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& /*spec*/,
                                                                const PersistUndo& /*persist*/) override {
    ++calls;
    return tl::unexpected(FaultError{std::make_error_code(std::errc::invalid_argument), "fake driver"});
  }
  int calls = 0;
};

}  // namespace

TEST_CASE("agent: an inject the policy refuses is FAILED naming the rule, and never reaches the driver") {
  CountingDriver driver;
  boost::asio::io_context io;
  std::vector<v1::FaultReport> reports;
  SUBCASE("a rule from the file") {
    Agent agent(
        io, driver, [&](const v1::FaultReport& r) { reports.push_back(r); }, nullptr, parseGood("maxPercent: 10\n"));
    v1::Inject inject;
    inject.set_fault_id("f1");
    *inject.mutable_spec() = loss("eth0", 50);
    *inject.mutable_duration() = toProto(30s);
    agent.inject(inject);
    REQUIRE(reports.size() == 1);
    CHECK(reports[0].fault_id() == "f1");
    CHECK(reports[0].state() == v1::FAULT_STATE_FAILED);
    CHECK(reports[0].error() == "policy " + kFile + ":1 (maxPercent: 10) refuses loss 50%");
    CHECK(agent.activeCount() == 0);
  }
  SUBCASE("the built-in maxDuration") {
    Agent agent(io, driver, [&](const v1::FaultReport& r) { reports.push_back(r); });
    v1::Inject inject;
    inject.set_fault_id("f2");
    *inject.mutable_spec() = loss("eth0", 50);
    *inject.mutable_duration() = toProto(2h);
    agent.inject(inject);
    REQUIRE(reports.size() == 1);
    CHECK(reports[0].state() == v1::FAULT_STATE_FAILED);
    CHECK(contains(reports[0].error(), "policy built-in default (maxDuration: 1h) refuses duration 2h"));
  }
  CHECK(driver.calls == 0);
}

TEST_CASE("agent: a netns outside netns.allow is FAILED before the driver (no kernel change)") {
  CountingDriver driver;
  boost::asio::io_context io;
  std::vector<v1::FaultReport> reports;
  Agent agent(
      io, driver, [&](const v1::FaultReport& r) { reports.push_back(r); }, nullptr,
      parseGood("netns:\n  allow: [/run/netns/chaos-*]\n"));
  v1::Inject inject;
  inject.set_fault_id("f1");
  *inject.mutable_spec() = lossIn("/run/netns/prod", 5);
  *inject.mutable_duration() = toProto(30s);
  agent.inject(inject);
  REQUIRE(reports.size() == 1);
  CHECK(reports[0].state() == v1::FAULT_STATE_FAILED);
  CHECK(reports[0].error() == "policy " + kFile +
                                  ":2 (netns.allow: [/run/netns/chaos-*]) refuses netns /run/netns/prod: it matches no "
                                  "allowed path");
  CHECK(driver.calls == 0);
  inject.set_fault_id("f2");
  *inject.mutable_spec() = lossIn("/run/netns/chaos-1", 5);
  agent.inject(inject);
  CHECK(driver.calls == 1);
}

TEST_CASE("agent: an inject the policy allows reaches the driver") {
  CountingDriver driver;
  boost::asio::io_context io;
  Agent agent(io, driver, nullptr, nullptr, parseGood("maxPercent: 10\n"));
  v1::Inject inject;
  inject.set_fault_id("f1");
  *inject.mutable_spec() = loss("eth0", 5);
  *inject.mutable_duration() = toProto(30s);
  agent.inject(inject);
  CHECK(driver.calls == 1);
}

namespace {

struct Host {
  FakeProcessTable table;
  pid_t self = ::getpid();
  pid_t parent = ::getppid();
  pid_t base = std::max(::getpid(), ::getppid()) + 1000;

  Host() {
    table.addUser(1, 0, "systemd");
    if (parent > 1) {
      table.addUser(parent, 1, "agent-supervisor");
    }
    table.addUser(self, parent, "faultline-agent");
  }
};

}  // namespace

TEST_CASE("process driver: protected names are skipped and listed; only protected matches fail") {
  Host host;
  host.table.addUser(host.base + 10, 1, "postgres");
  host.table.addUser(host.base + 11, 1, "postgres", "worker");
  host.table.addUser(host.base + 12, 1, "sshd");
  host.table.addUser(host.base + 13, 1, "app");
  // A process whose comm differs but whose argv[0] is protected.
  host.table.add({host.base + 14, 1, "app", "/usr/bin/app", "/opt/db/postgres -D /data", false});
  const Policy policy = parseGood("processes:\n  protect: [postgres]\n");
  ProcessKillDriver driver(host.table, policy.protectedProcesses());

  SUBCASE("a name matching only protected processes fails with the rule") {
    auto result = driver.apply(killByName("postgres"));
    REQUIRE_FALSE(result);
    CHECK(host.table.sent().empty());
    CHECK(contains(result.error().message, "pid " + std::to_string(host.base + 10) +
                                               " (postgres) is protected by policy " + kFile +
                                               ":2 (processes.protect: postgres)"));
  }
  SUBCASE("sshd is protected by default") {
    auto result = driver.apply(killByName("sshd"));
    REQUIRE_FALSE(result);
    CHECK(contains(result.error().message, "is protected by the built-in protect list (sshd)"));
    CHECK(host.table.sent().empty());
    ProcessKillDriver plain(host.table);
    CHECK_FALSE(plain.apply(killByName("sshd")));
  }
  SUBCASE("a protected pid is refused") {
    auto result = driver.apply(killByPid(host.base + 11));
    REQUIRE_FALSE(result);
    CHECK(result.error().code == std::errc::operation_not_permitted);
    CHECK(contains(result.error().message, "processes.protect: postgres"));
  }
  SUBCASE("unprotected matches are signalled; protected ones are listed as skipped") {
    auto applied = driver.apply(killByName("app"));
    REQUIRE(applied);
    CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 13});
    CHECK(contains((*applied)->describe(), "protected matches skipped: pid " + std::to_string(host.base + 14)));
  }
}

namespace {

v1::FaultSpec killByCmdline(const std::string& pattern, uint32_t count = 0) {
  v1::FaultSpec spec;
  spec.mutable_process_kill()->mutable_process()->set_cmdline(pattern);
  spec.mutable_process_kill()->mutable_process()->set_count(count);
  return spec;
}

}  // namespace

TEST_CASE("process drivers: maxProcesses and maxMatches refuse a broad selector before any signal") {
  Host host;
  for (int i = 0; i < 20; ++i) {
    host.table.addUser(host.base + 100 + i, 1, "worker", fmt::format("--id {}", i));
  }
  SUBCASE("20 matches, the built-in maxProcesses 10: refused, nothing signalled") {
    ProcessKillDriver driver(host.table);
    auto refused = driver.apply(killByCmdline("^worker "));
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == std::errc::operation_not_permitted);
    CHECK(refused.error().message ==
          "process.kill: cmdline /^worker / chooses 20 processes (20 matched), more than the 10 policy built-in "
          "default (processes.maxProcesses: 10) allows one fault to touch (set count to at most 10 or narrow the "
          "selector); nothing was signalled");
    CHECK(host.table.sent().empty());
    // count narrows what is chosen to within the limit.
    auto applied = driver.apply(killByCmdline("^worker ", 10));
    REQUIRE(applied);
    CHECK(host.table.signalledPids().size() == 10);
  }
  SUBCASE("maxMatches from the file: count does not lift it") {
    const Policy p = parseGood("processes:\n  maxMatches: 15\n  maxProcesses: 50\n");
    ProcessKillDriver driver(host.table, p.processRules());
    auto refused = driver.apply(killByCmdline(".", 1));
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == std::errc::operation_not_permitted);
    CHECK(contains(refused.error().message,
                   "process.kill: cmdline /./, count 1 matches 20 processes, more than the 15 "
                   "policy " +
                       kFile + ":2 (processes.maxMatches: 15) allows one selector to match"));
    CHECK(host.table.sent().empty());
    CHECK(driver.apply(killByCmdline("^worker --id 1", 3)));  // 11 matches (1, 10-19), 3 chosen
  }
  SUBCASE("process.pause is limited alike") {
    ProcessPauseDriver driver(host.table, nullptr, parseGood("processes:\n  maxProcesses: 5\n").processRules());
    v1::FaultSpec spec;
    spec.mutable_process_pause()->mutable_process()->set_name("worker");
    auto refused = driver.apply(spec);
    REQUIRE_FALSE(refused);
    CHECK(contains(refused.error().message, "process.pause: name 'worker' chooses 20 processes"));
    CHECK(contains(refused.error().message, "processes.maxProcesses: 5"));
    CHECK(contains(refused.error().message, "nothing was paused"));
    CHECK(host.table.sent().empty());
  }
}

TEST_CASE("process drivers: faultline's own processes are protected unless protectOwn is false") {
  Host host;
  host.table.addUser(host.base + 20, host.self, "faultline-agent", "--watchdog");  // the watchdog
  host.table.addUser(host.base + 21, 1, "faultline", "controller");
  host.table.addUser(host.base + 22, 1, "app");
  SUBCASE("by default") {
    ProcessKillDriver driver(host.table, Policy().processRules());
    auto refused = driver.apply(killByName("faultline-agent"));
    REQUIRE_FALSE(refused);
    CHECK(contains(refused.error().message, "pid " + std::to_string(host.base + 20) +
                                                " (faultline-agent --watchdog) is protected by policy built-in default "
                                                "(processes.protectOwn: true): faultline's own processes"));
    auto applied = driver.apply(killByCmdline("."));
    REQUIRE(applied);
    CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 22});
  }
  SUBCASE("protectOwn: false lets them be chosen, never the agent itself") {
    ProcessKillDriver driver(host.table, parseGood("processes:\n  protectOwn: false\n").processRules());
    auto applied = driver.apply(killByCmdline("."));
    REQUIRE(applied);
    CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 20, host.base + 21, host.base + 22});
  }
}
