#include <algorithm>
#include <csignal>
#include <set>
#include <string>

#include <doctest/doctest.h>
#include <unistd.h>

#include "agent/faults/process/kill_driver.h"
#include "tests/fakes/fake_process_table.h"
#include "tests/support/specs.h"

using faultline::agent::ProcessKillDriver;
using faultline::testing::FakeProcessTable;

using faultline::testing::killByName;
using faultline::testing::killByPid;

namespace {

// A host as the driver sees it: init, kthreadd, a kernel thread, the test process itself (the
// "agent") under its real parent, and fake user processes with pids far from the real ones.
struct Host {
  FakeProcessTable table;
  pid_t self = ::getpid();
  pid_t parent = ::getppid();
  pid_t base = std::max(::getpid(), ::getppid()) + 1000;

  Host() {
    table.addUser(1, 0, "systemd");
    table.addKernelThread(2, "kthreadd");
    table.addKernelThread(base + 1, "kworker/0:1");
    if (parent > 1) {
      table.addUser(parent, 1, "agent-supervisor");
    }
    table.addUser(self, parent, "faultline-agent");
  }
};

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("process.kill by name signals every process whose comm matches, SIGKILL by default") {
  Host host;
  host.table.addUser(host.base + 10, 1, "nginx", "-g daemon off;");
  host.table.addUser(host.base + 11, host.base + 10, "nginx", "worker");
  host.table.addUser(host.base + 12, 1, "postgres");
  ProcessKillDriver driver(host.table);

  auto applied = driver.apply(killByName("nginx"));
  REQUIRE(applied);
  CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 10, host.base + 11});
  for (const auto& s : host.table.sent()) {
    CHECK(s.sig == SIGKILL);
  }
  const std::string text = (*applied)->describe();
  CHECK(contains(text, "SIGKILL"));
  CHECK(contains(text, "pid " + std::to_string(host.base + 10) + " (nginx -g daemon off;)"));
  CHECK(contains(text, "pid " + std::to_string(host.base + 11) + " (nginx worker)"));
  CHECK_FALSE(contains(text, "postgres"));
}

TEST_CASE("process.kill uses the requested signal") {
  Host host;
  host.table.addUser(host.base + 10, 1, "redis-server");
  ProcessKillDriver driver(host.table);
  REQUIRE(driver.apply(killByName("redis-server", "term")));
  REQUIRE(host.table.sent().size() == 1);
  CHECK(host.table.sent()[0].sig == SIGTERM);
}

TEST_CASE("process.kill names longer than comm match the executable or argv[0]") {
  Host host;
  // comm is cut at 15 bytes by the kernel; the executable keeps the whole name.
  host.table.add(
      {host.base + 10, 1, "payments-reconc", "/opt/pay/bin/payments-reconciler", "payments-reconciler", false});
  // A script: the executable is the interpreter, argv[0] is the script's path.
  host.table.add({host.base + 11, 1, "inventory-sync-", "/usr/bin/python3.11",
                  "/srv/inventory/inventory-sync-worker --queue a", false});
  // A binary replaced on disk.
  host.table.add({host.base + 12, 1, "billing", "/usr/local/bin/billing-daemon (deleted)", "billing", false});
  ProcessKillDriver driver(host.table);

  SUBCASE("executable base name") {
    REQUIRE(driver.apply(killByName("payments-reconciler")));
    CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 10});
  }
  SUBCASE("argv[0] base name") {
    REQUIRE(driver.apply(killByName("inventory-sync-worker")));
    CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 11});
  }
  SUBCASE("deleted executable") {
    REQUIRE(driver.apply(killByName("billing-daemon")));
    CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 12});
  }
  SUBCASE("the truncated comm itself still matches") {
    REQUIRE(driver.apply(killByName("payments-reconc")));
    CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 10});
  }
}

TEST_CASE("process.kill names match exactly, never by prefix or substring") {
  Host host;
  host.table.addUser(host.base + 10, 1, "nginx");
  host.table.addUser(host.base + 11, 1, "nginx-exporter");
  ProcessKillDriver driver(host.table);
  auto none = driver.apply(killByName("ngin"));
  REQUIRE_FALSE(none);
  CHECK(none.error().code == std::errc::no_such_process);
  REQUIRE(driver.apply(killByName("nginx")));
  CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 10});
}

TEST_CASE("process.kill never chooses pid 1, kernel threads, the agent or its ancestors") {
  Host host;
  // Everything protected is called "app"; nothing else is.
  host.table.add({1, 0, "app", "/usr/bin/app", "app", false});
  host.table.addKernelThread(host.base + 20, "app");
  host.table.add({host.self, host.parent, "app", "/usr/bin/app", "app --agent", false});
  if (host.parent > 1) {
    host.table.add({host.parent, 1, "app", "/usr/bin/app", "app --supervise", false});
  }
  ProcessKillDriver driver(host.table);

  auto result = driver.apply(killByName("app"));
  REQUIRE_FALSE(result);
  CHECK(result.error().code == std::errc::no_such_process);
  CHECK(host.table.sent().empty());
  const auto& message = result.error().message;
  CHECK(contains(message, "no process named 'app'"));
  CHECK(contains(
      message, "searched comm, executable and argv[0] of " + std::to_string(host.table.list().size()) + " processes"));
  CHECK(contains(message,
                 "pid 1, kernel threads, the agent, sshd and the policy's protected processes are never chosen"));
  CHECK(contains(message, "pid 1 (app) is pid 1"));
  CHECK(contains(message, "is a kernel thread"));
  CHECK(contains(message, "is the agent itself"));
  if (host.parent > 1) {
    CHECK(contains(message, "is an ancestor of the agent"));
  }
}

TEST_CASE("process.kill by name skips protected processes but signals the others") {
  Host host;
  host.table.add({host.self, host.parent, "worker", "/usr/bin/worker", "worker", false});
  host.table.addUser(host.base + 10, 1, "worker");
  ProcessKillDriver driver(host.table);
  REQUIRE(driver.apply(killByName("worker")));
  CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 10});
}

TEST_CASE("process.kill with a name that matches nothing says what was searched") {
  Host host;
  ProcessKillDriver driver(host.table);
  auto result = driver.apply(killByName("nosuchd"));
  REQUIRE_FALSE(result);
  CHECK(result.error().code == std::errc::no_such_process);
  CHECK(contains(
      result.error().message,
      "no process named 'nosuchd' (searched comm, executable and argv[0] of " +
          std::to_string(host.table.list().size()) +
          " processes; pid 1, kernel threads, the agent, sshd and the policy's protected processes are never chosen)"));
}

TEST_CASE("process.kill by pid") {
  Host host;
  host.table.addUser(host.base + 10, 1, "sleep", "60");
  ProcessKillDriver driver(host.table);

  SUBCASE("a listed user process is signalled") {
    auto applied = driver.apply(killByPid(host.base + 10, "SIGINT"));
    REQUIRE(applied);
    REQUIRE(host.table.sent().size() == 1);
    CHECK(host.table.sent()[0].pid == host.base + 10);
    CHECK(host.table.sent()[0].sig == SIGINT);
    CHECK(contains((*applied)->describe(), "SIGINT sent to pid " + std::to_string(host.base + 10) + " (sleep 60)"));
  }
  SUBCASE("a pid that does not exist is ESRCH") {
    auto result = driver.apply(killByPid(host.base + 99));
    REQUIRE_FALSE(result);
    CHECK(result.error().code == std::errc::no_such_process);
    CHECK(contains(result.error().message, "no process with pid " + std::to_string(host.base + 99)));
  }
  SUBCASE("the agent, its parent and kernel threads are refused") {
    for (pid_t pid : {host.self, host.parent, host.base + 1, pid_t{2}}) {
      if (pid <= 1) {
        continue;
      }
      CAPTURE(pid);
      auto result = driver.apply(killByPid(pid));
      REQUIRE_FALSE(result);
      CHECK(result.error().code == std::errc::operation_not_permitted);
      CHECK(contains(result.error().message, "never chosen"));
    }
    CHECK(host.table.sent().empty());
  }
}

TEST_CASE("process.kill re-validates the spec before reading the process table") {
  Host host;
  ProcessKillDriver driver(host.table);
  for (const auto& spec : {killByPid(1), killByName(""), killByName("nginx", "SIGNOPE"), faultline::v1::FaultSpec{}}) {
    auto result = driver.apply(spec);
    REQUIRE_FALSE(result);
    CHECK(result.error().code == std::errc::invalid_argument);
  }
  CHECK(host.table.listCalls() == 0);
  CHECK(host.table.sent().empty());
}

TEST_CASE("process.kill reports processes it could not signal") {
  Host host;
  host.table.addUser(host.base + 10, 1, "job");
  host.table.addUser(host.base + 11, 1, "job");
  ProcessKillDriver driver(host.table);

  SUBCASE("some signalled: success, the rest listed") {
    host.table.failSignal(host.base + 11, std::errc::no_such_process);
    auto applied = driver.apply(killByName("job"));
    REQUIRE(applied);
    CHECK(host.table.signalledPids() == std::set<pid_t>{host.base + 10});
    CHECK(
        contains((*applied)->describe(), "not signalled: pid " + std::to_string(host.base + 11) + " (job) had exited"));
  }
  SUBCASE("none signalled: the error of the kernel") {
    host.table.failSignal(host.base + 10, std::errc::operation_not_permitted);
    host.table.failSignal(host.base + 11, std::errc::operation_not_permitted);
    auto result = driver.apply(killByName("job"));
    REQUIRE_FALSE(result);
    CHECK(result.error().code == std::errc::operation_not_permitted);
    CHECK(contains(result.error().message, "could not send SIGKILL"));
  }
}

TEST_CASE("reverting a kill is a no-op that succeeds, twice") {
  Host host;
  host.table.addUser(host.base + 10, 1, "job");
  ProcessKillDriver driver(host.table);
  auto applied = driver.apply(killByName("job"));
  REQUIRE(applied);
  CHECK((*applied)->revert());
  CHECK((*applied)->revert());
  CHECK(host.table.sent().size() == 1);
}
