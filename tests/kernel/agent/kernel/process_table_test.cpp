// The real ProcessTable and ProcessKillDriver against this kernel: children this test starts are
// found in /proc and killed through a pidfd.
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/faults/process/kill_driver.h"
#include "agent/kernel/process_table.h"
#include "tests/support/child.h"
#include "tests/support/specs.h"

extern char** environ;

namespace fs = std::filesystem;
using faultline::kernel::ProcessInfo;

using faultline::testing::Child;
using faultline::testing::killByName;
using faultline::testing::killByPid;
using faultline::testing::LongNamedSleep;

namespace {

const ProcessInfo* findPid(const std::vector<ProcessInfo>& processes, pid_t pid) {
  for (const auto& p : processes) {
    if (p.pid == pid) {
      return &p;
    }
  }
  return nullptr;
}

// A pid that no process holds: a child that has been reaped (pids are handed out in increasing
// order, so it is not reused within the test).
pid_t vanishedPid() {
  Child gone("/bin/true", {"true"});
  const pid_t pid = gone.pid();
  gone.wait();
  return pid;
}

}  // namespace

TEST_CASE("list() reads comm, exe, cmdline and ppid from /proc") {
  LongNamedSleep binary;
  Child child(binary.path(), {binary.path(), "60"});
  auto table = faultline::kernel::openProcessTable();
  const auto processes = table->list();

  const ProcessInfo* p = findPid(processes, child.pid());
  REQUIRE(p != nullptr);
  CHECK(p->ppid == ::getpid());
  CHECK(p->comm == binary.name().substr(0, 15));  // the kernel cuts comm at 15 bytes
  CHECK(p->exe == binary.path());
  CHECK(p->cmdline == binary.path() + " 60");
  CHECK_FALSE(p->kernelThread);

  const ProcessInfo* self = findPid(processes, ::getpid());
  REQUIRE(self != nullptr);
  CHECK_FALSE(self->kernelThread);
  CHECK_FALSE(self->exe.empty());

  for (size_t i = 1; i < processes.size(); ++i) {
    CHECK(processes[i - 1].pid < processes[i].pid);
  }
  // In the initial pid namespace kthreadd (pid 2) and its children are kernel threads.
  if (const ProcessInfo* kthreadd = findPid(processes, 2); kthreadd != nullptr && kthreadd->comm == "kthreadd") {
    CHECK(kthreadd->kernelThread);
    for (const auto& k : processes) {
      if (k.ppid == 2) {
        CAPTURE(k.comm);
        CHECK(k.kernelThread);
        CHECK(k.exe.empty());
      }
    }
  }
}

TEST_CASE("signal() delivers through a pidfd; a missing pid is ESRCH") {
  auto table = faultline::kernel::openProcessTable();
  Child child(LongNamedSleep::sleepBinary(), {"sleep", "60"});
  REQUIRE(table->signal(child.pid(), SIGTERM));
  const int status = child.wait();
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGTERM);

  const pid_t gone = vanishedPid();
  auto result = table->signal(gone, SIGKILL);
  REQUIRE_FALSE(result);
  CHECK(result.error() == std::errc::no_such_process);
}

TEST_CASE("process.kill by a 20-byte name kills the child whose comm was cut to 15 bytes") {
  LongNamedSleep binary;
  REQUIRE(binary.name().size() == 20);
  Child child(binary.path(), {binary.path(), "60"});
  auto table = faultline::kernel::openProcessTable();
  faultline::agent::ProcessKillDriver driver(*table);

  auto applied = driver.apply(killByName(binary.name()));
  if (!applied) {
    FAIL(applied.error().message);
  }
  CHECK((*applied)->describe().find("pid " + std::to_string(child.pid())) != std::string::npos);
  const int status = child.wait();
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);
  CHECK((*applied)->revert());
}

TEST_CASE("process.kill by argv[0] kills a child started under another name") {
  const std::string argv0 = "flt-argv0-" + std::to_string(::getpid()) + "-worker";
  Child child(LongNamedSleep::sleepBinary(), {argv0, "60"});
  auto table = faultline::kernel::openProcessTable();
  faultline::agent::ProcessKillDriver driver(*table);

  auto applied = driver.apply(killByName(argv0, "SIGINT"));
  if (!applied) {
    FAIL(applied.error().message);
  }
  const int status = child.wait();
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGINT);
}

TEST_CASE("process.kill by pid kills that child; a pid that does not exist is ESRCH") {
  auto table = faultline::kernel::openProcessTable();
  faultline::agent::ProcessKillDriver driver(*table);

  Child child(LongNamedSleep::sleepBinary(), {"sleep", "60"});
  auto applied = driver.apply(killByPid(child.pid()));
  if (!applied) {
    FAIL(applied.error().message);
  }
  const int status = child.wait();
  REQUIRE(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGKILL);

  auto missing = driver.apply(killByPid(vanishedPid()));
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == std::errc::no_such_process);

  auto self = driver.apply(killByPid(::getpid()));
  REQUIRE_FALSE(self);
  CHECK(self.error().code == std::errc::operation_not_permitted);
}

TEST_CASE("process.kill skips a child whose name the policy protects and kills the others") {
  LongNamedSleep binary;
  const std::string keep = "flt-keep-" + std::to_string(::getpid());
  Child victim(binary.path(), {binary.path(), "60"});
  Child kept(binary.path(), {keep, "60"});  // the same executable, started as argv[0] 'flt-keep-PID'
  auto table = faultline::kernel::openProcessTable();
  faultline::agent::ProcessKillDriver driver(
      *table, std::vector<faultline::agent::ProtectedName>{
                  faultline::agent::ProtectedName{keep, "policy test.yaml:2 (processes.protect: " + keep + ")"}});

  // The executable's name matches both; the protected one is skipped and listed.
  auto applied = driver.apply(killByName(binary.name()));
  if (!applied) {
    FAIL(applied.error().message);
  }
  const std::string text = (*applied)->describe();
  CHECK(text.find("sent to pid " + std::to_string(victim.pid())) != std::string::npos);
  CHECK(text.find("protected matches skipped: pid " + std::to_string(kept.pid())) != std::string::npos);
  const int status = victim.wait();
  REQUIRE(WIFSIGNALED(status));

  // By its own name, it matches only protected processes: refused, nothing sent.
  auto refused = driver.apply(killByName(keep));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message.find("is protected by policy test.yaml:2 (processes.protect: " + keep + ")") !=
        std::string::npos);
  auto byPid = driver.apply(killByPid(kept.pid()));
  REQUIRE_FALSE(byPid);
  CHECK(byPid.error().code == std::errc::operation_not_permitted);

  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK_FALSE(kept.exited());
}
