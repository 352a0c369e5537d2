// Process selectors, process.pause, cgroup.squeeze and the new specs above the kernel seams, with
// fake process tables and cgroup trees. The real kernel: tests/kernel/agent/faults/process/process_faults_test.cpp and
// tests/vm/agent/faults/resource/cgroup_test.cpp.
#include <algorithm>
#include <csignal>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include "agent/faults/process/kill_driver.h"
#include "agent/faults/process/pause_driver.h"
#include "agent/faults/process/process_selector.h"
#include "agent/faults/resource/squeeze_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/cgroup_tree.h"
#include "tests/fakes/fake_cgroup_tree.h"
#include "tests/fakes/fake_process_table.h"

using faultline::agent::ProcessPicker;
using faultline::testing::FakeCgroupTree;
using faultline::testing::FakeProcessTable;
namespace v1 = faultline::v1;

namespace {

struct Host {
  FakeProcessTable table;
  pid_t self = ::getpid();
  pid_t base = std::max(::getpid(), ::getppid()) + 1000;
  std::mt19937_64 rng{42};

  Host() {
    table.addUser(1, 0, "systemd");
    table.addKernelThread(2, "kthreadd");
    table.addUser(self, 1, "faultline-agent");
  }
  faultline::kernel::ProcessInfo& add(pid_t pid, const std::string& name, const std::string& cgroup,
                                      const std::string& args = "") {
    auto& p = table.addUser(pid, 1, name, args);
    p.cgroup = cgroup;
    p.startTime = static_cast<unsigned long long>(pid) * 10;
    return p;
  }
  std::set<pid_t> pick(const v1::ProcessSelector& s) {
    ProcessPicker picker(table, {}, rng, self);
    auto got = picker.select(s, "test");
    REQUIRE_MESSAGE(got, (got ? "" : got.error().message));
    std::set<pid_t> pids;
    for (const auto& p : got->chosen) {
      pids.insert(p.pid);
    }
    return pids;
  }
};

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("selectors: cmdline regex, cgroup subtree, systemd unit (v2 or name=systemd), pidfile") {
  Host h;
  h.add(h.base + 1, "java", "/system.slice/orders.service", "-jar orders.jar");
  h.add(h.base + 2, "java", "/system.slice/billing.service", "-jar billing.jar");
  h.add(h.base + 3, "sidecar", "/system.slice/orders.service/sidecar");
  h.add(h.base + 4, "orders-exporter", "/system.slice/orders.serviceX");
  h.table.addUser(h.base + 5, 1, "legacy").systemdCgroup = "/system.slice/orders.service";

  v1::ProcessSelector s;
  s.set_cmdline("-jar (orders|nothing)\\.jar$");
  CHECK(h.pick(s) == std::set<pid_t>{h.base + 1});
  s.set_cgroup("/system.slice/orders.service");
  CHECK(h.pick(s) == std::set<pid_t>{h.base + 1, h.base + 3});  // not orders.serviceX
  s.set_systemd_unit("orders");
  CHECK(h.pick(s) == std::set<pid_t>{h.base + 1, h.base + 3, h.base + 5});
  h.table.setPidfile("/run/billing.pid", h.base + 2);
  s.set_pidfile("/run/billing.pid");
  CHECK(h.pick(s) == std::set<pid_t>{h.base + 2});
}

TEST_CASE("count and percent choose that many at random; the generator decides which") {
  Host h;
  for (int i = 1; i <= 10; ++i) {
    h.add(h.base + i, "worker", "/w");
  }
  v1::ProcessSelector s;
  s.set_name("worker");
  s.set_count(3);
  const auto first = h.pick(s);
  CHECK(first.size() == 3);
  s.set_count(0);
  s.set_percent(25);  // 2.5 of 10, rounded up
  CHECK(h.pick(s).size() == 3);
  s.set_percent(100);
  CHECK(h.pick(s).size() == 10);
  std::mt19937_64 again{42};
  ProcessPicker picker(h.table, {}, again, h.self);
  s.set_percent(0);
  s.set_count(3);
  auto same = picker.select(s, "test");
  REQUIRE(same);
  std::set<pid_t> pids;
  for (const auto& p : same->chosen) {
    pids.insert(p.pid);
  }
  CHECK(pids == first);  // same seed, same choice
}

TEST_CASE("a selector that matches nothing says what was searched, and a cgroup never reaches pid 1 or the agent") {
  Host h;
  h.table.processes(1).cgroup = "/init.scope";
  v1::ProcessSelector s;
  s.set_cgroup("/");
  ProcessPicker picker(h.table, {}, h.rng, h.self);
  auto none = picker.select(s, "process.pause");
  REQUIRE_FALSE(none);
  CHECK(none.error().code == std::errc::no_such_process);
  CHECK(contains(none.error().message, "process.pause: no process matches cgroup / (searched cgroup v2"));
  CHECK(contains(none.error().message, "pid 1 (systemd) is pid 1"));
}

TEST_CASE("a zombie is never picked: it has exited, so there is nothing to signal or pause") {
  Host h;
  h.add(h.base + 1, "web", "/a").state = 'S';
  h.add(h.base + 2, "web", "/a").state = 'Z';
  h.add(h.base + 3, "web", "/a").state = 'X';
  v1::ProcessSelector s;
  s.set_name("web");
  CHECK(h.pick(s) == std::set<pid_t>{h.base + 1});
  h.table.processes(h.base + 1).state = 'Z';
  ProcessPicker picker(h.table, {}, h.rng, h.self);
  auto none = picker.select(s, "process.kill");
  REQUIRE_FALSE(none);
  CHECK(none.error().code == std::errc::no_such_process);
}

TEST_CASE("process.kill counts exits, and describes a kill loop's rounds") {
  Host h;
  h.add(h.base + 1, "job", "/j");
  h.table.exitOnSignal(true);
  faultline::agent::ProcessKillDriver driver(h.table);
  v1::FaultSpec spec;
  spec.mutable_process_kill()->mutable_process()->set_name("job");
  spec.mutable_process_kill()->set_signal("15");
  auto applied = driver.apply(spec);
  REQUIRE(applied);
  const auto hits = (*applied)->processHits();
  REQUIRE(hits.size() == 1);
  CHECK(hits[0].pid() == h.base + 1);
  CHECK(hits[0].exited());
  CHECK(hits[0].action() == "SIGTERM");
  CHECK(contains((*applied)->describe(), "SIGTERM sent to pid " + std::to_string(h.base + 1) + " (job) exited"));
  REQUIRE((*applied)->revert());
  const std::string ended = (*applied)->describeRevert("duration ended");
  CHECK(ended == "ended (duration ended): nothing to undo (a sent signal cannot be taken back)");
  CHECK_FALSE(contains(ended, "SIGTERM"));
}

TEST_CASE("process.pause freezes a cgroup only its targets hold, SIGSTOPs the rest, and resumes both") {
  Host h;
  FakeCgroupTree tree;
  tree.add("/app.service", {h.base + 1, h.base + 2});
  tree.add("/shared.service", {h.base + 3, h.base + 4});
  h.add(h.base + 1, "app", "/app.service");
  h.add(h.base + 2, "app", "/app.service");
  h.add(h.base + 3, "app", "/shared.service");
  h.add(h.base + 4, "other", "/shared.service");
  faultline::agent::ProcessPauseDriver driver(h.table, &tree);
  v1::FaultSpec spec;
  spec.mutable_process_pause()->mutable_process()->set_name("app");
  nlohmann::json record;
  std::vector<std::string> writesAtPersist;
  auto applied =
      driver.apply(spec, [&](const nlohmann::json& undo) -> tl::expected<void, faultline::agent::FaultError> {
        record = undo;
        writesAtPersist = tree.writes();
        return {};
      });
  REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
  CHECK(writesAtPersist.empty());  // journalled before any change
  CHECK(record["freeze"] == nlohmann::json::array({"/app.service"}));
  REQUIRE(record["stop"].size() == 1);
  CHECK(record["stop"][0]["pid"] == h.base + 3);
  CHECK(record["stop"][0]["start"] == (h.base + 3) * 10);
  CHECK(tree.file("/app.service", "cgroup.freeze") == "1");
  REQUIRE(h.table.sent().size() == 1);
  CHECK(h.table.sent()[0].sig == SIGSTOP);
  REQUIRE((*applied)->revert());
  CHECK(tree.file("/app.service", "cgroup.freeze") == "0");
  REQUIRE(h.table.sent().size() == 2);
  CHECK(h.table.sent()[1].pid == h.base + 3);
  CHECK(h.table.sent()[1].sig == SIGCONT);
  const std::string resumed = (*applied)->describeRevert("revert requested");
  CHECK(resumed == fmt::format("resumed 3 of 3 paused process(es) (revert requested): thawed cgroup /app.service, "
                               "SIGCONT to pid {}",
                               h.base + 3));
  CHECK(contains((*applied)->describe(), fmt::format("; mechanism: freeze for 2, SIGSTOP for 1 (pid {}: its cgroup "
                                                     "/shared.service also holds 1 process(es) not chosen)",
                                                     h.base + 3)));
  CHECK_FALSE(contains(resumed, "SIGSTOP"));
}

TEST_CASE("process.pause: a failure half-way resumes what it paused; recovery skips a reused pid") {
  Host h;
  FakeCgroupTree tree;
  tree.add("/a.service", {h.base + 1});
  h.add(h.base + 1, "app", "/a.service");
  h.add(h.base + 2, "app", "/");
  h.table.failSignal(h.base + 2, std::errc::operation_not_permitted);
  faultline::agent::ProcessPauseDriver driver(h.table, &tree);
  v1::FaultSpec spec;
  spec.mutable_process_pause()->mutable_process()->set_name("app");
  auto failed = driver.apply(spec);
  REQUIRE_FALSE(failed);
  CHECK(failed.error().code == std::errc::operation_not_permitted);
  CHECK_FALSE(failed.error().mayBeChanged);
  CHECK(tree.file("/a.service", "cgroup.freeze") == "0");  // thawed again

  nlohmann::json record = {{"mount", "/sys/fs/cgroup"},
                           {"freeze", nlohmann::json::array()},
                           {"stop", {{{"pid", h.base + 1}, {"start", 1}}}}};  // start time differs: reused
  auto resumed = faultline::agent::ProcessPauseDriver::revertRecord(record, h.table, &tree);
  REQUIRE(resumed);
  CHECK(contains(*resumed, "has exited"));
  CHECK(h.table.sent().empty());
}

TEST_CASE("process.pause: one pause per process; the second is refused with the pids the first holds") {
  Host h;
  FakeCgroupTree tree;
  tree.add("/app.service", {h.base + 1});
  h.add(h.base + 1, "app", "/app.service");
  h.add(h.base + 2, "app", "/");
  h.add(h.base + 3, "loner", "/");
  faultline::agent::ProcessPauseDriver driver(h.table, &tree);
  v1::FaultSpec both;
  both.mutable_process_pause()->mutable_process()->set_name("app");
  auto first = driver.apply(both);
  REQUIRE_MESSAGE(first, (first ? "" : first.error().message));
  const size_t writes = tree.writes().size();
  const size_t sent = h.table.sent().size();

  // The frozen one and the stopped one, each by pid: refused, nothing written or sent.
  for (pid_t pid : {h.base + 1, h.base + 2}) {
    CAPTURE(pid);
    v1::FaultSpec again;
    again.mutable_process_pause()->mutable_process()->set_pid(pid);
    auto refused = driver.apply(again);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == std::errc::device_or_resource_busy);
    CHECK(refused.error().heldPids == std::vector<int32_t>{pid});
    CHECK(contains(refused.error().message,
                   fmt::format("process.pause: pid {} (app) is already paused by another process.pause fault of this "
                               "agent; one pause per process at a time",
                               pid)));
    CHECK(contains(refused.error().message, "nothing was paused"));
  }
  CHECK(tree.writes().size() == writes);
  CHECK(h.table.sent().size() == sent);

  // A process stopped by someone else (state T) is refused too, with no holder to name.
  h.table.processes(h.base + 3).state = 'T';
  v1::FaultSpec loner;
  loner.mutable_process_pause()->mutable_process()->set_name("loner");
  auto stopped = driver.apply(loner);
  REQUIRE_FALSE(stopped);
  CHECK(stopped.error().heldPids.empty());
  CHECK(contains(stopped.error().message, "is already stopped (state T) by something else"));
  h.table.processes(h.base + 3).state = 'S';

  // Once the first is reverted, both are free again.
  REQUIRE((*first)->revert());
  auto later = driver.apply(both);
  REQUIRE_MESSAGE(later, (later ? "" : later.error().message));
  REQUIRE((*later)->revert());
}

TEST_CASE("process.pause: a process that exits while paused is reported, never counted as resumed") {
  Host h;
  FakeCgroupTree tree;
  h.add(h.base + 1, "app", "/");
  h.add(h.base + 2, "app", "/");
  faultline::agent::ProcessPauseDriver driver(h.table, &tree);
  v1::FaultSpec spec;
  spec.mutable_process_pause()->mutable_process()->set_name("app");
  auto applied = driver.apply(spec);
  REQUIRE(applied);
  h.table.remove(h.base + 2);  // it exited and was reaped
  REQUIRE((*applied)->revert());
  CHECK((*applied)->describeRevert("duration elapsed") ==
        fmt::format("resumed 1 of 2 paused process(es) (duration elapsed): SIGCONT to pid {}; not resumed: pid {} has "
                    "exited",
                    h.base + 1, h.base + 2));
  REQUIRE(h.table.sent().size() == 3);  // two SIGSTOPs, one SIGCONT
  CHECK(h.table.sent()[2].pid == h.base + 1);
}

TEST_CASE("process.pause mechanism freeze: refused before anything is paused where a process cannot be frozen alone") {
  Host h;
  FakeCgroupTree tree;
  tree.add("/app.service", {h.base + 1, h.base + 2});
  h.add(h.base + 1, "app", "/app.service");
  h.add(h.base + 2, "sidecar", "/app.service");
  faultline::agent::ProcessPauseDriver driver(h.table, &tree);
  v1::FaultSpec spec;
  spec.mutable_process_pause()->mutable_process()->set_name("app");
  spec.mutable_process_pause()->set_mechanism(v1::PAUSE_MECHANISM_FREEZE);
  bool persisted = false;
  auto refused = driver.apply(spec, [&](const nlohmann::json&) -> tl::expected<void, faultline::agent::FaultError> {
    persisted = true;
    return {};
  });
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == std::errc::operation_not_supported);
  CHECK(contains(refused.error().message,
                 fmt::format("process.pause: mechanism: freeze: cannot freeze without freezing processes not chosen "
                             "or the agent: pid {} (app): its cgroup /app.service also holds 1 process(es) not chosen",
                             h.base + 1)));
  CHECK_FALSE(persisted);
  CHECK(tree.writes().empty());
  CHECK(h.table.sent().empty());
  // The whole cgroup can be frozen.
  spec.mutable_process_pause()->mutable_process()->set_cgroup("/app.service");
  auto applied = driver.apply(spec);
  REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
  CHECK(contains((*applied)->describe(), "; mechanism: freeze (cgroup.freeze)"));
  REQUIRE((*applied)->revert());

  // Without a cgroup v2 hierarchy: refused with the agent's reason; auto falls back to SIGSTOP and says why.
  faultline::agent::ProcessPauseDriver bare(h.table, nullptr, {}, 1, "no cgroup2 mount (test)");
  auto none = bare.apply(spec);
  REQUIRE_FALSE(none);
  CHECK(contains(none.error().message,
                 "mechanism: freeze needs a cgroup v2 hierarchy with cgroup.freeze, and this "
                 "agent has none (no cgroup2 mount (test))"));
  spec.mutable_process_pause()->clear_mechanism();
  auto stopped = bare.apply(spec);
  REQUIRE_MESSAGE(stopped, (stopped ? "" : stopped.error().message));
  CHECK(contains(
      (*stopped)->describe(),
      fmt::format("; mechanism: SIGSTOP (pid {}: no cgroup v2 hierarchy (no cgroup2 mount (test))", h.base + 1)));
  REQUIRE((*stopped)->revert());
}

TEST_CASE("cgroup.squeeze journals the exact previous values, writes, and restores them") {
  FakeCgroupTree tree;
  auto& c = tree.add("/db.service");
  c.files["cpu.max"] = "max 100000";
  c.files["pids.max"] = "max";
  faultline::agent::CgroupSqueezeDriver driver(&tree);
  v1::FaultSpec spec;
  spec.mutable_cgroup_squeeze()->set_cgroup("/db.service");
  spec.mutable_cgroup_squeeze()->set_cpus(0.5);
  spec.mutable_cgroup_squeeze()->set_pids_max(10);
  nlohmann::json record;
  auto applied =
      driver.apply(spec, [&](const nlohmann::json& undo) -> tl::expected<void, faultline::agent::FaultError> {
        record = undo;
        return {};
      });
  REQUIRE(applied);
  CHECK(record["previous"] == nlohmann::json({{"cpu.max", "max 100000"}, {"pids.max", "max"}}));
  CHECK(tree.file("/db.service", "cpu.max") == "50000 100000");
  CHECK(tree.file("/db.service", "pids.max") == "10");
  REQUIRE((*applied)->revert());
  CHECK(tree.file("/db.service", "cpu.max") == "max 100000");
  CHECK(tree.file("/db.service", "pids.max") == "max");

  SUBCASE("memory.high missing: the controller is named, nothing written") {
    spec.mutable_cgroup_squeeze()->set_memory_high_bytes(64 << 20);
    const auto writes = tree.writes().size();
    auto refused = driver.apply(spec);
    REQUIRE_FALSE(refused);
    CHECK(contains(refused.error().message, "has no memory.high: the memory controller is not enabled"));
    CHECK(tree.writes().size() == writes);
  }
  SUBCASE("a write that fails rolls back the ones before it") {
    tree.failWrite("/db.service", "pids.max", std::errc::invalid_argument);
    auto failed = driver.apply(spec);
    REQUIRE_FALSE(failed);
    CHECK(tree.file("/db.service", "cpu.max") == "max 100000");
  }
}

TEST_CASE("cgroup2 mount discovery from mountinfo text") {
  using faultline::kernel::findCgroup2Mount;
  const std::string hybrid =
      "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
      "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n"
      "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n";
  CHECK(findCgroup2Mount(hybrid) == "/sys/fs/cgroup/unified");
  CHECK(findCgroup2Mount("30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n") ==
        "/sys/fs/cgroup");
  CHECK(findCgroup2Mount("30 23 0:27 / /mnt/my\\040cgroups rw - cgroup2 none rw\n") == "/mnt/my cgroups");
  CHECK_FALSE(findCgroup2Mount("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"));
  CHECK(faultline::kernel::cgroup2PathOf("1:name=systemd:/x\n0::/user.slice/a.scope\n") == "/user.slice/a.scope");
  CHECK(faultline::kernel::parentCgroup("/a/b") == "/a");
  CHECK(faultline::kernel::parentCgroup("/a") == "/");
  CHECK(contains(faultline::kernel::cgroupV2MissingMessage("stress.cpu"), "stress.cpu: this host has no cgroup v2"));
}

TEST_CASE("validation of the process, stress and cgroup specs") {
  const auto field = [](const v1::FaultSpec& spec) {
    auto r = faultline::validateFaultSpec(spec);
    return r ? std::string("ok") : r.error().field + ": " + r.error().message;
  };
  v1::FaultSpec pause;
  auto* s = pause.mutable_process_pause()->mutable_process();
  CHECK(contains(field(pause), "process.pid: no process selector"));
  s->set_cmdline("([");
  CHECK(contains(field(pause), "process.cmdline: '([' is not a valid regular expression"));
  s->set_cgroup("/a/../b");
  CHECK(contains(field(pause), "process.cgroup:"));
  s->set_pidfile("run/x.pid");
  CHECK(contains(field(pause), "process.pidfile: 'run/x.pid' is not an absolute path"));
  s->set_name("x");
  s->set_count(2);
  s->set_percent(10);
  CHECK(contains(field(pause), "process.count: count and percent are both set"));
  s->set_count(0);
  s->set_percent(150);
  CHECK(contains(field(pause), "process.percent: 150 is out of range"));
  s->set_percent(50);
  CHECK(field(pause) == "ok");

  v1::FaultSpec kill;
  kill.mutable_process_kill()->mutable_process()->set_name("x");
  kill.mutable_process_kill()->mutable_every()->set_nanos(10'000'000);
  CHECK(contains(field(kill), "every: 10ms is out of range; accepted: from 100ms to 1h"));
  kill.mutable_process_kill()->set_name("y");
  CHECK(contains(field(kill), "process: has both"));

  v1::FaultSpec cpu;
  cpu.mutable_stress_cpu()->set_workers(0);
  CHECK(contains(field(cpu), "workers: 0 is out of range"));
  cpu.mutable_stress_cpu()->set_workers(2);
  CHECK(contains(field(cpu), "load:"));
  cpu.mutable_stress_cpu()->set_load_percent(50);
  CHECK(field(cpu) == "ok");

  v1::FaultSpec memory;
  memory.mutable_stress_memory()->set_bytes(4096);
  CHECK(contains(field(memory), "bytes: 4096 bytes is out of range; accepted: 1MiB to 1TiB"));

  v1::FaultSpec squeeze;
  squeeze.mutable_cgroup_squeeze()->set_cgroup("/");
  CHECK(contains(field(squeeze), "cgroup: '/' is not a cgroup path below the root"));
  squeeze.mutable_cgroup_squeeze()->set_cgroup("/a");
  CHECK(contains(field(squeeze), "cpus: no limit to squeeze"));
  squeeze.mutable_cgroup_squeeze()->set_pids_max(0);
  CHECK(contains(field(squeeze), "pidsMax: 0 is out of range"));
  squeeze.mutable_cgroup_squeeze()->set_pids_max(5);
  CHECK(field(squeeze) == "ok");
}
