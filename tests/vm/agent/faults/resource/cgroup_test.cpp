// stress.cpu, stress.memory and cgroup.squeeze against a pure cgroup v2 hierarchy with every
// controller: the QEMU guest (scripts/vm-run mounts cgroup2 on /sys/fs/cgroup). The build machines
// mount cgroup v2 on /sys/fs/cgroup/unified with their cpu, memory and pids controllers bound to
// v1, so there these faults fail with a clear error (checked here too, when run on such a host).
// Every cgroup is the test's own or the driver's, and is removed even when a check fails.
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/asio/io_context.hpp>

#include "agent/faults/resource/squeeze_driver.h"
#include "agent/faults/resource/stress_driver.h"
#include "agent/kernel/cgroup_tree.h"
#include "agent/safety/journal.h"
#include "agent/safety/recovery.h"
#include "agent/safety/revert_all.h"
#include "agent/session/agent.h"
#include "tests/support/test_cgroup.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<kernel::CgroupTree> tree() {
  auto t = kernel::openCgroupTree();
  REQUIRE_MESSAGE(t, "no cgroup v2 on this host");
  return std::move(*t);
}

bool hasController(kernel::CgroupTree& t, const std::string& controller) {
  auto text = t.read("/", "cgroup.controllers");
  return text && (" " + *text + " ").find(" " + controller + " ") != std::string::npos;
}

uint64_t usageUsec(kernel::CgroupTree& t, const std::string& cgroup) {
  auto stat = t.read(cgroup, "cpu.stat");
  REQUIRE(stat);
  const auto at = stat->find("usage_usec ");
  REQUIRE(at != std::string::npos);
  return std::stoull(stat->substr(at + 11));
}

// The cgroup a stress fault created: the one faultline-stress-* cgroup that is new.
std::string onlyStressCgroup(kernel::CgroupTree& t) {
  auto found = StressDriver::findStressCgroups(t);
  REQUIRE(found.size() == 1);
  return found.front();
}

v1::FaultSpec cpuSpec(uint32_t workers, double load) {
  v1::FaultSpec spec;
  spec.mutable_stress_cpu()->set_workers(workers);
  spec.mutable_stress_cpu()->set_load_percent(load);
  return spec;
}

v1::FaultSpec memorySpec(uint64_t bytes) {
  v1::FaultSpec spec;
  spec.mutable_stress_memory()->set_bytes(bytes);
  return spec;
}

// Removes stress cgroups a failed check left.
struct StressCleanup {
  kernel::CgroupTree& t;
  ~StressCleanup() {
    for (const auto& c : StressDriver::findStressCgroups(t)) {
      (void)StressDriver::removeStressCgroup(t, c);
    }
  }
};

}  // namespace

TEST_CASE("stress.cpu: cpu.stat usage of the fault's cgroup is the requested load within 15%") {
  auto t = tree();
  if (!hasController(*t, "cpu")) {
    StressDriver driver(t.get());
    auto refused = driver.apply(cpuSpec(1, 50));
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == std::errc::not_supported);
    CHECK(refused.error().message.find("the cpu controller is not available in cgroup v2 at " + t->mountPoint()) !=
          std::string::npos);
    CHECK(StressDriver::findStressCgroups(*t).empty());
    MESSAGE("this host's cgroup v2 has no cpu controller: checked the error; the measurement runs in the QEMU guest");
    return;
  }
  StressCleanup cleanup{*t};
  StressDriver driver(t.get());
  const double cpus = static_cast<double>(std::thread::hardware_concurrency());
  for (const auto& [workers, load] : {std::pair<uint32_t, double>{1, 50}, {2, 25}, {1, 80}}) {
    CAPTURE(workers);
    CAPTURE(load);
    if (workers * load / 100 > cpus) {
      continue;
    }
    auto applied = driver.apply(cpuSpec(workers, load));
    REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
    const std::string cgroup = onlyStressCgroup(*t);
    std::this_thread::sleep_for(300ms);  // past the first period
    const auto u0 = usageUsec(*t, cgroup);
    const auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(3s);
    const auto u1 = usageUsec(*t, cgroup);
    const auto wall = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
    const double measured = (u1 - u0) / wall * 100.0 / workers;  // percent of one CPU per worker
    MESSAGE(fmt::format("stress.cpu workers {} load {:g}%: measured {:.1f}% per worker from cpu.stat usage_usec",
                        workers, load, measured));
    CHECK(measured >= load * 0.85);
    CHECK(measured <= load * 1.15);
    REQUIRE((*applied)->revert());
    CHECK_FALSE(t->children(cgroup));  // removed
  }
}

TEST_CASE("stress.memory: memory.current of the fault's cgroup holds the bytes; memory.max bounds it") {
  auto t = tree();
  if (!hasController(*t, "memory")) {
    StressDriver driver(t.get());
    auto refused = driver.apply(memorySpec(64 << 20));
    REQUIRE_FALSE(refused);
    CHECK(refused.error().message.find("the memory controller is not available") != std::string::npos);
    MESSAGE(
        "this host's cgroup v2 has no memory controller: checked the error; the measurement runs in the QEMU guest");
    return;
  }
  StressCleanup cleanup{*t};
  StressDriver driver(t.get());
  const uint64_t bytes = 96 << 20;
  auto applied = driver.apply(memorySpec(bytes));
  REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
  const std::string cgroup = onlyStressCgroup(*t);
  const uint64_t current = std::stoull(*t->read(cgroup, "memory.current"));
  MESSAGE(fmt::format("stress.memory {} bytes: memory.current {} ({:+.1f}%)", bytes, current,
                      (static_cast<double>(current) / bytes - 1) * 100));
  CHECK(current >= bytes);
  CHECK(current <= bytes * 115 / 100);
  CHECK(*t->read(cgroup, "memory.max") == std::to_string(bytes + (32 << 20)));
  REQUIRE((*applied)->revert());
  CHECK_FALSE(t->children(cgroup));
}

TEST_CASE("two stress faults are independent: reverting one leaves the other") {
  auto t = tree();
  if (!hasController(*t, "cpu")) {
    MESSAGE("no cpu controller in this host's cgroup v2; runs in the QEMU guest");
    return;
  }
  StressCleanup cleanup{*t};
  StressDriver driver(t.get());
  auto a = driver.apply(cpuSpec(1, 10));
  auto b = driver.apply(cpuSpec(1, 10));
  REQUIRE(a);
  REQUIRE(b);
  auto both = StressDriver::findStressCgroups(*t);
  REQUIRE(both.size() == 2);
  REQUIRE((*a)->revert());
  auto left = StressDriver::findStressCgroups(*t);
  REQUIRE(left.size() == 1);
  auto procs = t->procs(left.front());
  REQUIRE(procs);
  CHECK(procs->size() == 1);
  REQUIRE((*b)->revert());
  CHECK(StressDriver::findStressCgroups(*t).empty());
}

TEST_CASE("revert-all removes stress cgroups without a journal, and recovery with one") {
  auto t = tree();
  if (!hasController(*t, "cpu")) {
    MESSAGE("no cpu controller in this host's cgroup v2; runs in the QEMU guest");
    return;
  }
  StressCleanup cleanup{*t};
  StressDriver driver(t.get());
  {
    auto orphan = driver.apply(cpuSpec(1, 10));
    REQUIRE(orphan);
    // Leak it, as a crashed agent would: the AppliedFault is released without revert().
    (void)orphan->release();
  }
  REQUIRE(StressDriver::findStressCgroups(*t).size() == 1);
  RevertAllReport report;
  removeStressCgroups(*t, report);
  CHECK(report.clean());
  REQUIRE(report.removed.size() == 1);
  CHECK(report.removed[0].find("faultline-stress-cpu-") != std::string::npos);
  CHECK(StressDriver::findStressCgroups(*t).empty());

  // With a journal: the record's revert removes the cgroup.
  nlohmann::json record;
  auto journalled =
      driver.apply(memorySpec(8 << 20), [&](const nlohmann::json& undo) -> tl::expected<void, FaultError> {
        record = undo;
        return {};
      });
  REQUIRE(journalled);
  (void)journalled->release();
  JournalEntry entry;
  entry.faultId = "m";
  entry.kind = "stress.memory";
  entry.undo = record;
  auto reverted = revertResourceRecord(entry);
  REQUIRE_MESSAGE(reverted, (reverted ? "" : reverted.error().message));
  CHECK(StressDriver::findStressCgroups(*t).empty());
}

TEST_CASE("cgroup.squeeze lowers cpu.max, memory.high and pids.max and restores the exact values") {
  auto t = tree();
  testing::TestCgroup target(*t, fmt::format("/faultline-test-squeeze-{}", ::getpid()));
  CgroupSqueezeDriver driver(t.get());
  v1::FaultSpec spec;
  auto* q = spec.mutable_cgroup_squeeze();
  q->set_cgroup(target.path());
  q->set_pids_max(5);
  if (!hasController(*t, "pids")) {
    auto refused = driver.apply(spec);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == std::errc::no_such_file_or_directory);
    CHECK(refused.error().message.find("has no pids.max: the pids controller is not enabled for it") !=
          std::string::npos);
    MESSAGE("no pids controller in this host's cgroup v2: checked the error; the squeeze runs in the QEMU guest");
    return;
  }
  for (const char* c : {"+cpu", "+memory", "+pids"}) {
    REQUIRE(t->write("/", "cgroup.subtree_control", c));
  }
  // Values set beforehand, so that "restored exactly" is more than "back to max".
  REQUIRE(t->write(target.path(), "cpu.max", "70000 100000"));
  REQUIRE(t->write(target.path(), "memory.high", "536870912"));
  const auto before = [&](const char* file) { return *t->read(target.path(), file); };
  const std::string cpuBefore = before("cpu.max");
  const std::string memBefore = before("memory.high");
  const std::string pidsBefore = before("pids.max");
  q->set_cpus(0.25);
  q->set_memory_high_bytes(64 << 20);
  nlohmann::json record;
  auto applied = driver.apply(spec, [&](const nlohmann::json& undo) -> tl::expected<void, FaultError> {
    record = undo;
    return {};
  });
  REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
  CHECK(before("cpu.max") == "25000 100000");
  CHECK(before("memory.high") == std::to_string(64 << 20));
  CHECK(before("pids.max") == "5");
  CHECK(record["previous"]["cpu.max"] == cpuBefore);
  REQUIRE((*applied)->revert());
  CHECK(before("cpu.max") == cpuBefore);
  CHECK(before("memory.high") == memBefore);
  CHECK(before("pids.max") == pidsBefore);

  // From the journal record (crash recovery): squeeze again, leak it, recover.
  auto again = driver.apply(spec);
  REQUIRE(again);
  (void)again->release();
  CHECK(before("pids.max") == "5");
  auto restored = CgroupSqueezeDriver::revertRecord(record, t.get());
  REQUIRE_MESSAGE(restored, (restored ? "" : restored.error().message));
  CHECK(before("cpu.max") == cpuBefore);
  CHECK(before("memory.high") == memBefore);
  CHECK(before("pids.max") == pidsBefore);
}
