// Crash soak and `faultline-agent revert-all`: an agent SIGKILLed at random points while it applies
// and reverts faults leaves nothing behind once revert-all has run. Every namespace here is a
// throwaway one of this test (revert-all's scan is confined to it, or runs inside its own network,
// pid and mount namespaces), so faults of other processes on this machine are never touched.
// Needs root.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/faults/network/net_driver.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/safety/revert_all.h"
#include "tests/support/crash_soak.h"
#include "tests/support/text.h"

using namespace faultline;
using namespace std::chrono_literals;
namespace soak = faultline::testing::soak;

namespace {

using testing::contains;

std::filesystem::path tempDir(const char* name) {
  std::string pattern = (std::filesystem::temp_directory_path() / fmt::format("{}-XXXXXX", name)).string();
  REQUIRE(::mkdtemp(pattern.data()) != nullptr);
  return pattern;
}

// FAULTLINE_SOAK_SEED reproduces a run; the default keeps the test deterministic.
uint64_t soakSeed() {
  const char* env = std::getenv("FAULTLINE_SOAK_SEED");
  return env != nullptr ? std::strtoull(env, nullptr, 10) : 20261129;
}

}  // namespace

TEST_CASE("crash soak: an agent SIGKILLed at a random point leaves the kernel as it found it after revert-all") {
  constexpr int kIterations = 40;
  const uint64_t seed = soakSeed();
  MESSAGE("crash soak seed ", seed, " (FAULTLINE_SOAK_SEED=", seed, " repeats this run)");
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> delayMicros(0, 30'000);
  const auto stateDir = tempDir("faultline-soak");
  const auto started = std::chrono::steady_clock::now();
  soak::Totals totals;
  for (int i = 0; i < kIterations; ++i) {
    const auto delay = std::chrono::microseconds{delayMicros(rng)};
    const bool preexisting = i % 2 == 1;
    CAPTURE(i);
    CAPTURE(delay.count());
    CAPTURE(preexisting);
    const auto it = soak::crashIteration(preexisting, delay, stateDir);
    REQUIRE_MESSAGE(it.error.empty(), it.error);
    for (const auto& line : it.leaked) {
      FAIL_CHECK("leaked: ", line);
    }
    // The journal reverted everything: the scan found no faultline root it did not know of.
    CHECK(it.leftoversRemoved == 0);
    totals.add(it);
  }
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started);
  MESSAGE(fmt::format(
      "crash soak: {} iterations, {} kills, {} with a faultline root in place, {} apply+revert cycles, {} journal "
      "entries reverted, {} leftovers removed by the scan, {} leaked objects, {} ms",
      kIterations, totals.kills, totals.inPlace, totals.cycles, totals.journalEntriesReverted, totals.leftoversRemoved,
      totals.leaked, took.count()));
  CHECK(totals.kills == kIterations);
  CHECK(totals.leaked == 0);
  // The random delays should hit some kills mid-fault; otherwise the soak tests nothing.
  CHECK(totals.inPlace > 0);
  std::error_code ec;
  std::filesystem::remove_all(stateDir, ec);
}

TEST_CASE("revert-all without a journal deletes faultline's roots and nothing else") {
  soak::Netns ns;
  REQUIRE_MESSAGE(ns.error().empty(), ns.error());
  REQUIRE(ns.inNetns("tc qdisc add dev veth0 root handle fa17: tbf rate 1mbit burst 10kb latency 50ms"));
  REQUIRE(ns.inNetns("tc qdisc add dev veth1 root handle 8001: tbf rate 2mbit burst 10kb latency 50ms"));
  const auto before = soak::snapshot(ns.path());
  REQUIRE(before.has_value());
  // roots() (one dump for all interfaces) agrees with root() (one interface).
  auto table = kernel::openQdiscTable(ns.path());
  REQUIRE(table.has_value());
  CHECK(before->size() == 2);  // veth0 and veth1; lo is down, with no qdisc
  for (const auto& [name, root] : *before) {
    CAPTURE(name);
    const auto one = (*table)->root(name);
    REQUIRE(one.has_value());
    REQUIRE(one->has_value());
    CHECK((*one)->kind == root.kind);
    CHECK((*one)->handle == root.handle);
    CHECK((*one)->options == root.options);
  }

  const auto stateDir = std::filesystem::temp_directory_path() / "faultline-no-such-state-dir";
  const auto report = agent::revertAllFaults(stateDir, {ns.path()}, kernel::openQdiscTable);
  CHECK(report.clean());
  CHECK(report.reverted.empty());
  REQUIRE(report.removed.size() == 1);
  CHECK(report.removed[0] == fmt::format("tbf fa17: on veth0 in {}", ns.path()));
  CHECK(report.namespaces == 1);
  REQUIRE(!report.notes.empty());
  CHECK(contains(report.notes[0], "no undo journal at " + (stateDir / "journal.jsonl").string()));
  CHECK_FALSE(std::filesystem::exists(stateDir));  // never created

  const auto after = soak::snapshot(ns.path());
  REQUIRE(after.has_value());
  CHECK(after->at("veth0").handle == 0);  // the kernel's default again
  CHECK(after->at("veth1").kind == "tbf");
  CHECK(after->at("veth1").handle == 0x80010000);
  CHECK(after->at("veth1").options == before->at("veth1").options);

  // A namespace that is gone is a note, not a failure.
  const auto gone = agent::revertAllFaults(stateDir, {"/nonexistent/netns"}, kernel::openQdiscTable);
  CHECK(gone.clean());
  CHECK(gone.namespaces == 0);
}

#ifdef FAULTLINE_AGENT_BIN
TEST_CASE("faultline-agent revert-all, run in its own network, pid and mount namespaces") {
  const auto stateDir = tempDir("faultline-revert-all");
  // The private tmpfs needs a mount point: /run/netns exists once any `ip netns add` ran on this
  // machine, not on a fresh one. Made here if missing (an empty directory, as iproute2 makes it)
  // and removed again after, whatever the checks say.
  const bool madeRunNetns = ::mkdir("/run/netns", 0755) == 0;
  struct RemoveRunNetns {
    bool made;
    ~RemoveRunNetns() {
      if (made) {
        ::rmdir("/run/netns");
      }
    }
  } removeRunNetns{madeRunNetns};
  // Inside: a private /run/netns and /proc, so the scan sees only what this script creates: the
  // namespace unshare made (veth0 with faultline's root, veth1 with someone's) and one named
  // namespace with a faultline root on its lo.
  const std::string script = fmt::format(
      "set -e; mount -t tmpfs none /run/netns; "
      "ip link add veth0 type veth peer name veth1; ip link set veth0 up; ip link set veth1 up; "
      "tc qdisc add dev veth0 root handle fa17: tbf rate 1mbit burst 10kb latency 50ms; "
      "tc qdisc add dev veth1 root handle 8001: tbf rate 2mbit burst 10kb latency 50ms; "
      "ip netns add soak; ip -n soak link set lo up; "
      "ip netns exec soak tc qdisc add dev lo root handle fa17: tbf rate 1mbit burst 70kb latency 50ms; "
      "set +e; {bin} revert-all --state-dir {dir}; echo \"status=$?\"; "
      "{bin} revert-all --state-dir {dir}; echo \"again=$?\"; "
      "echo \"show: $(tc qdisc show dev veth0) $(tc qdisc show dev veth1) $(ip netns exec soak tc qdisc show dev "
      "lo)\"; "
      "touch {dir}/journal.jsonl; mount --bind {dir} {dir}; mount -o remount,bind,ro {dir}; "
      "{bin} revert-all --state-dir {dir}; echo \"readonly=$?\"",
      fmt::arg("bin", FAULTLINE_AGENT_BIN), fmt::arg("dir", stateDir.string()));
  std::string output;
  soak::run(fmt::format("unshare --net --pid --fork --mount --mount-proc sh -c '{}'", script), &output);
  MESSAGE(output);
  CHECK(contains(output, "note: no undo journal at " + (stateDir / "journal.jsonl").string()));
  CHECK(contains(output, "removed: tbf fa17: on veth0 in this process's network namespace\n"));
  CHECK(contains(output, "removed: tbf fa17: on lo in /run/netns/soak\n"));
  CHECK(contains(output,
                 "revert-all: 0 journal entries reverted, 2 leftover faultline qdisc(s), netfilter rule set(s) and "
                 "stress cgroup(s) removed, 0 "
                 "failure(s)"));
  CHECK(contains(output, "no faultline fault is left\nstatus=0\n"));
  CHECK(contains(output,
                 "revert-all: 0 journal entries reverted, 0 leftover faultline qdisc(s), netfilter rule set(s) and "
                 "stress cgroup(s) removed"));
  CHECK(contains(output, "again=0\n"));
  CHECK(contains(output, "qdisc tbf 8001: root"));
  CHECK_FALSE(contains(output.substr(output.find("show:")), "fa17:"));
  CHECK(contains(output, "FAILED: the undo journal's open entries were not reverted: cannot open the undo journal "));
  CHECK(contains(output, "the host may still carry faultline faults\nreadonly=1\n"));
  std::error_code ec;
  std::filesystem::remove_all(stateDir, ec);
}
#endif

TEST_CASE("faultline-agent revert-all --help") {
#ifdef FAULTLINE_AGENT_BIN
  std::string output;
  CHECK(soak::run(fmt::format("{} revert-all --help", FAULTLINE_AGENT_BIN), &output));
  CHECK(contains(output, "--state-dir"));
  CHECK(contains(output, "fa17:"));
#endif
}

TEST_CASE("resource crash soak: paused processes, squeezed cgroups and stress cgroups are put back after a SIGKILL") {
  // On this build machine cgroup v2 (hybrid, /sys/fs/cgroup/unified) has freeze but no cpu or pids
  // controller, so only the pauses are in the loop here; the QEMU guest (vm-crash-soak) runs
  // squeeze and stress too.
  constexpr int kIterations = 20;
  const uint64_t seed = soakSeed();
  std::mt19937_64 rng(seed + 1);
  // FAULTLINE_RESOURCE_SOAK_MAX_US: the kill window (default 200 ms; the QEMU guest, emulated,
  // needs about ten times that to get through a few cycles).
  const char* window = std::getenv("FAULTLINE_RESOURCE_SOAK_MAX_US");
  std::uniform_int_distribution<int> delayMicros(0, window != nullptr ? std::atoi(window) : 200'000);
  const auto stateDir = tempDir("faultline-resource-soak");
  soak::ResourceTotals totals;
  for (int i = 0; i < kIterations; ++i) {
    const auto delay = std::chrono::microseconds{delayMicros(rng)};
    CAPTURE(i);
    CAPTURE(delay.count());
    const auto it =
        soak::resourceCrashIteration(delay, stateDir, fmt::format("faultline-test-soak-{}-{}", ::getpid(), i));
    REQUIRE_MESSAGE(it.error.empty(), it.error);
    for (const auto& line : it.leaked) {
      FAIL_CHECK("leaked: ", line);
    }
    totals.add(it);
  }
  MESSAGE(
      fmt::format("resource soak: {} kills, {} with a cgroup frozen, {} with a process stopped, {} apply+revert "
                  "cycles, {} journal entries reverted, squeeze and stress in the loop: {}",
                  kIterations, totals.frozen, totals.stopped, totals.cycles, totals.journalEntriesReverted,
                  totals.squeezed ? "yes" : "no"));
  CHECK(totals.frozen + totals.stopped > 0);  // some kills landed mid-fault
  std::error_code ec;
  std::filesystem::remove_all(stateDir, ec);
}
