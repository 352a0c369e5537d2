// Process selectors, process.kill and process.pause against this kernel, with children and cgroups
// the test creates and removes. Needs root (cgroups, ns_last_pid). On this build machine cgroup v2
// is the hybrid /sys/fs/cgroup/unified mount, which has cgroup.freeze and cgroup.kill but no
// cpu/memory/pids controllers; everything here uses only the former. The mount is discovered.
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/asio/io_context.hpp>

#include "agent/faults/process/kill_driver.h"
#include "agent/faults/process/pause_driver.h"
#include "agent/kernel/cgroup_tree.h"
#include "agent/kernel/process_table.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/safety/journal.h"
#include "agent/safety/policy.h"
#include "agent/safety/recovery.h"
#include "agent/session/agent.h"
#include "tests/support/child.h"
#include "tests/support/dying_agent.h"
#include "tests/support/test_cgroup.h"

namespace fs = std::filesystem;
using faultline::agent::ProcessKillDriver;
using faultline::agent::ProcessPauseDriver;
using faultline::testing::Child;
using faultline::testing::LongNamedSleep;
using faultline::testing::TestCgroup;
namespace v1 = faultline::v1;

namespace {

std::string sleepBin() {
  return LongNamedSleep::sleepBinary();
}

std::string unique(const std::string& what) {
  static int n = 0;
  return "flt-" + what + "-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
}

std::unique_ptr<faultline::kernel::CgroupTree> cgroups() {
  auto tree = faultline::kernel::openCgroupTree();
  REQUIRE_MESSAGE(tree, "no cgroup v2 mount on this host");
  return std::move(*tree);
}

v1::FaultSpec kill(const v1::ProcessSelector& s, const std::string& signal = "SIGKILL") {
  v1::FaultSpec spec;
  *spec.mutable_process_kill()->mutable_process() = s;
  spec.mutable_process_kill()->set_signal(signal);
  return spec;
}

v1::FaultSpec pause(const v1::ProcessSelector& s) {
  v1::FaultSpec spec;
  *spec.mutable_process_pause()->mutable_process() = s;
  return spec;
}

// /proc/PID/status "State:" letter; '?' when gone.
char stateOf(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("State:", 0) == 0) {
      const auto at = line.find_first_not_of(" \t", 6);
      return at == std::string::npos ? '?' : line[at];
    }
  }
  return '?';
}

bool waitState(pid_t pid, char want, std::chrono::milliseconds timeout = std::chrono::milliseconds(2000)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (stateOf(pid) != want) {
    if (std::chrono::steady_clock::now() > deadline) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

std::string eventsOf(faultline::kernel::CgroupTree& tree, const std::string& cgroup) {
  auto text = tree.read(cgroup, "cgroup.events");
  return text ? *text : "";
}

bool killedBy(Child& child, int sig) {
  const int status = child.wait();
  return WIFSIGNALED(status) && WTERMSIG(status) == sig;
}

// A child that rewrites its command line all the time, as PostgreSQL's backends do (set_ps_display
// overwrites argv[0]'s memory; comm follows with PR_SET_NAME): perl's $0 does both. After 200 ms
// (Child sees its first argv) it shows "TAG: idle" and "TAG: SELECT 1" in turn, a thousand times a
// second each; it lives through SIGUSR1, and SIGTERM ends it.
std::unique_ptr<Child> psDisplayChild(const std::string& tag) {
  const std::string script = "$SIG{USR1} = sub {}; select(undef, undef, undef, 0.2); while (1) { $0 = '" + tag +
                             ": idle'; select(undef, undef, undef, 0.0005); $0 = '" + tag +
                             ": SELECT 1'; select(undef, undef, undef, 0.0005); }";
  auto child = std::make_unique<Child>("/usr/bin/perl", std::vector<std::string>{"perl", "-e", script});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (child->readCmdline().rfind(tag + ":", 0) != 0) {
    REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "perl never rewrote its command line");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return child;
}

v1::FaultSpec pauseByFreeze(const v1::ProcessSelector& s) {
  auto spec = pause(s);
  spec.mutable_process_pause()->set_mechanism(v1::PAUSE_MECHANISM_FREEZE);
  return spec;
}

}  // namespace

TEST_CASE("a cgroup2 mount is discovered from /proc/self/mountinfo and its cgroups read back") {
  auto tree = cgroups();
  std::ifstream in("/proc/self/mountinfo");
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(text.find(" " + tree->mountPoint() + " ") != std::string::npos);
  CHECK(fs::exists(fs::path(tree->mountPoint()) / "cgroup.procs"));
  auto self = tree->selfCgroup();
  REQUIRE(self);
  CHECK(self->front() == '/');
  auto procs = tree->procs(*self);
  REQUIRE(procs);
  CHECK(std::set<pid_t>(procs->begin(), procs->end()).count(::getpid()) == 1);
}

TEST_CASE("selectors on real processes: 20-byte name, cmdline regex, cgroup, systemd unit, pidfile") {
  auto tree = cgroups();
  auto table = faultline::kernel::openProcessTable();
  ProcessKillDriver driver(*table, {}, 7);

  SUBCASE("a 20-byte name (comm holds 15)") {
    LongNamedSleep binary;
    REQUIRE(binary.name().size() == 20);
    Child child(binary.path(), {binary.path(), "60"});
    v1::ProcessSelector s;
    s.set_name(binary.name());
    auto applied = driver.apply(kill(s));
    REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
    CHECK(killedBy(child, SIGKILL));
  }
  SUBCASE("cmdline regex picks only matching command lines") {
    const std::string tag = unique("cmd");
    Child a(sleepBin(), {tag + "-a", "60"});
    Child b(sleepBin(), {tag + "-b", "60"});
    Child c(sleepBin(), {tag + "-c", "60"});
    v1::ProcessSelector s;
    s.set_cmdline(tag + "-[ab] 60$");
    auto applied = driver.apply(kill(s, "TERM"));
    REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
    CHECK(killedBy(a, SIGTERM));
    CHECK(killedBy(b, SIGTERM));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CHECK_FALSE(c.exited());
    const auto hits = (*applied)->processHits();
    REQUIRE(hits.size() == 2);
    for (const auto& h : hits) {
      CHECK(h.cmdline().find(tag) == 0);
      CHECK(h.exited());
      CHECK(h.action() == "SIGTERM");
    }
  }
  SUBCASE("cgroup path: the processes in it and below it, no others") {
    TestCgroup group(*tree, "/" + unique("cg"));
    const std::string below = group.child("inner");
    Child in(sleepBin(), {"sleep", "60"});
    Child deeper(sleepBin(), {"sleep", "61"});
    Child out(sleepBin(), {"sleep", "62"});
    group.add(in.pid());
    REQUIRE(tree->write(below, "cgroup.procs", std::to_string(deeper.pid())));
    v1::ProcessSelector s;
    s.set_cgroup(group.path());
    auto applied = driver.apply(kill(s, "9"));
    REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
    CHECK(killedBy(in, SIGKILL));
    CHECK(killedBy(deeper, SIGKILL));
    CHECK_FALSE(out.exited());
  }
  SUBCASE("systemd unit: the unit's cgroup, named UNIT.service, anywhere in the path") {
    const std::string unit = unique("unit");
    TestCgroup slice(*tree, "/" + unique("slice"));
    const std::string unitCgroup = slice.child(unit + ".service");
    Child child(sleepBin(), {"sleep", "60"});
    REQUIRE(tree->write(unitCgroup, "cgroup.procs", std::to_string(child.pid())));
    v1::ProcessSelector s;
    s.set_systemd_unit(unit);  // ".service" implied
    auto applied = driver.apply(kill(s));
    REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
    CHECK(killedBy(child, SIGKILL));
  }
  SUBCASE("pidfile: the pid it holds; a missing pidfile is ENOENT and names the file") {
    Child child(sleepBin(), {"sleep", "60"});
    const fs::path file = fs::temp_directory_path() / (unique("pid") + ".pid");
    std::ofstream(file) << child.pid() << "\n";
    v1::ProcessSelector s;
    s.set_pidfile(file.string());
    auto applied = driver.apply(kill(s));
    fs::remove(file);
    REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
    CHECK(killedBy(child, SIGKILL));
    auto missing = driver.apply(kill(s));
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code == std::errc::no_such_file_or_directory);
    CHECK(missing.error().message.find(file.string()) != std::string::npos);
  }
  SUBCASE("count(1) and percent(50) pick that many of the matches at random") {
    const std::string tag = unique("many");
    std::vector<std::unique_ptr<Child>> children;
    for (int i = 0; i < 4; ++i) {
      children.push_back(std::make_unique<Child>(sleepBin(), std::vector<std::string>{tag, "60"}));
    }
    v1::ProcessSelector s;
    s.set_name(tag);
    s.set_count(1);
    REQUIRE(driver.apply(kill(s)));
    s.set_count(0);
    s.set_percent(50);  // of the 3 left: 1.5, rounded up to 2
    REQUIRE(driver.apply(kill(s)));
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    int exited = 0;
    for (auto& c : children) {
      exited += c->exited() ? 1 : 0;
    }
    CHECK(exited == 3);
  }
}

TEST_CASE("never chosen: pid 1, kernel threads, the agent, its parent, sshd; nothing matched is an error") {
  auto table = faultline::kernel::openProcessTable();
  ProcessKillDriver driver(*table);
  v1::ProcessSelector s;
  for (pid_t pid : {pid_t{2}, ::getpid(), ::getppid()}) {
    if (pid <= 1) {
      continue;
    }
    CAPTURE(pid);
    s.set_pid(pid);
    auto refused = driver.apply(kill(s, "SIGCONT"));  // harmless, were it sent
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code == std::errc::operation_not_permitted);
  }
  // A child started as "sshd" matches only a protected name.
  Child sshd(sleepBin(), {"sshd", "60"});
  s.set_pid(sshd.pid());
  auto refused = driver.apply(kill(s));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().message.find("the built-in protect list (sshd)") != std::string::npos);
  s.set_cmdline("^sshd 60$");
  auto none = driver.apply(kill(s));
  REQUIRE_FALSE(none);
  CHECK(none.error().code == std::errc::no_such_process);
  CHECK(none.error().message.find("no process matches cmdline /^sshd 60$/") != std::string::npos);
  CHECK(none.error().message.find("protected matches skipped: pid " + std::to_string(sshd.pid())) != std::string::npos);
  CHECK_FALSE(sshd.exited());
}

TEST_CASE("policy limits on real processes: 20 matches with maxProcesses 10 signal none; own processes skipped") {
  auto table = faultline::kernel::openProcessTable();
  auto policy = faultline::agent::parsePolicy("processes:\n  maxProcesses: 10\n", "policy.yaml");
  REQUIRE(policy);
  ProcessKillDriver driver(*table, policy->processRules());
  const std::string name = unique("many");
  std::vector<std::unique_ptr<Child>> children;
  for (int i = 0; i < 20; ++i) {
    children.push_back(std::make_unique<Child>(sleepBin(), std::vector<std::string>{name, "60"}));
  }
  v1::ProcessSelector s;
  s.set_cmdline("^" + name + " 60$");
  auto refused = driver.apply(kill(s));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == std::errc::operation_not_permitted);
  CHECK(refused.error().message == "process.kill: cmdline /^" + name +
                                       " 60$/ chooses 20 processes (20 matched), more than the 10 policy "
                                       "policy.yaml:2 (processes.maxProcesses: 10) allows one fault to touch (set "
                                       "count to at most 10 or narrow the selector); nothing was signalled");
  for (auto& child : children) {
    CHECK_FALSE(child->exited());
  }
  // The same with count 10 signals exactly 10.
  s.set_count(10);
  auto applied = driver.apply(kill(s));
  REQUIRE(applied);
  int killed = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  do {
    killed = 0;
    for (auto& child : children) {
      killed += child->exited() ? 1 : 0;
    }
  } while (killed < 10 && std::chrono::steady_clock::now() < deadline);
  CHECK(killed == 10);

  // A child running as faultline-agent (the watchdog's name) matches only protected processes;
  // the agent itself (this process) is never signalled, whatever the selector.
  Child own(sleepBin(), {"faultline-agent", "61"});
  v1::ProcessSelector ownSelector;
  ownSelector.set_cmdline("^faultline-agent 61$");
  auto protectedOwn = driver.apply(kill(ownSelector));
  REQUIRE_FALSE(protectedOwn);
  CHECK(protectedOwn.error().message.find("(processes.protectOwn: true): faultline's own processes") !=
        std::string::npos);
  CHECK_FALSE(own.exited());
  ownSelector.set_pid(::getpid());
  auto self = driver.apply(kill(ownSelector, "SIGCONT"));
  REQUIRE_FALSE(self);
  CHECK(self.error().message.find("the agent itself") != std::string::npos);
}

TEST_CASE("a pid reused after list() is never signalled (pidfd and start time)") {
  // ns_last_pid makes the next child get the pid the first one had.
  auto table = faultline::kernel::openProcessTable();
  bool reused = false;
  for (int attempt = 0; attempt < 20 && !reused; ++attempt) {
    auto first = std::make_unique<Child>(sleepBin(), std::vector<std::string>{"sleep", "60"});
    const pid_t pid = first->pid();
    (void)table->list();
    ::kill(pid, SIGKILL);
    first->wait();
    first.reset();
    // A start time counts clock ticks (10 ms at 100 Hz): a process started in the same tick as
    // the one it replaces is indistinguishable by pid and start time, so let a tick or two pass.
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
    {
      std::ofstream last("/proc/sys/kernel/ns_last_pid");
      last << pid - 1;
    }
    Child second(sleepBin(), {"sleep", "61"});
    if (second.pid() != pid) {
      continue;  // another process took it first; try again
    }
    reused = true;
    auto sent = table->signal(pid, SIGKILL);
    REQUIRE_FALSE(sent);
    CHECK(sent.error() == std::errc::no_such_process);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    CHECK_FALSE(second.exited());
    CHECK(table->exited(pid, std::chrono::milliseconds(0)));  // the listed process is gone
  }
  CHECK_MESSAGE(reused, "could not get the same pid twice in 20 attempts");
}

TEST_CASE("process.kill every: a kill loop hits each restarted process and reports them") {
  auto table = faultline::kernel::openProcessTable();
  ProcessKillDriver driver(*table);
  const std::string name = unique("loop");
  // bash restarts the sleep under argv[0] NAME each time it dies.
  Child supervisor("/bin/bash", {"bash", "-c", "while :; do (exec -a " + name + " " + sleepBin() + " 60); done"});
  const auto named = [&] {
    for (const auto& p : table->list()) {
      if (p.cmdline == name + " 60") {
        return true;
      }
    }
    return false;
  };
  for (int i = 0; i < 500 && !named(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  v1::ProcessSelector s;
  s.set_name(name);
  auto spec = kill(s);
  spec.mutable_process_kill()->mutable_every()->set_nanos(100'000'000);
  auto applied = driver.apply(spec);
  REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
  std::this_thread::sleep_for(std::chrono::milliseconds(750));
  REQUIRE((*applied)->revert());
  const auto hits = (*applied)->processHits();
  std::set<pid_t> pids;
  for (const auto& h : hits) {
    pids.insert(h.pid());
    CHECK(h.cmdline() == name + " 60");
    CHECK(h.exited());
  }
  MESSAGE("kill loop every 100ms for 750ms hit ", pids.size(), " distinct pids");
  CHECK(pids.size() >= 3);
  CHECK(pids.count(supervisor.pid()) == 0);
  const size_t after = (*applied)->processHits().size();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK((*applied)->processHits().size() == after);  // the loop ended with revert()
  CHECK_FALSE(supervisor.exited());
  // No orphan left: the supervisor first (no more restarts), then its last sleep.
  ::kill(supervisor.pid(), SIGKILL);
  supervisor.wait();
  (void)driver.apply(kill(s));
}

TEST_CASE("process.pause freezes a cgroup the targets own and resumes it on revert") {
  auto tree = cgroups();
  auto table = faultline::kernel::openProcessTable();
  ProcessPauseDriver driver(*table, tree.get());
  TestCgroup group(*tree, "/" + unique("pause"));
  Child a(sleepBin(), {"sleep", "60"});
  Child b(sleepBin(), {"sleep", "61"});
  group.add(a.pid());
  group.add(b.pid());
  v1::ProcessSelector s;
  s.set_cgroup(group.path());
  nlohmann::json record;
  auto applied =
      driver.apply(pause(s), [&](const nlohmann::json& undo) -> tl::expected<void, faultline::agent::FaultError> {
        // Journalled before the kernel is touched: nothing is frozen yet.
        CHECK(eventsOf(*tree, group.path()).find("frozen 0") != std::string::npos);
        record = undo;
        return {};
      });
  REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
  CHECK(record["freeze"] == nlohmann::json::array({group.path()}));
  CHECK(record["stop"].empty());
  CHECK(eventsOf(*tree, group.path()).find("frozen 1") != std::string::npos);
  REQUIRE((*applied)->processHits().size() == 2);
  CHECK((*applied)->processHits()[0].action() == "frozen (cgroup " + group.path() + ")");
  // A frozen task cannot be stopped: SIGSTOP stays pending until the thaw.
  REQUIRE((*applied)->revert());
  CHECK(eventsOf(*tree, group.path()).find("frozen 0") != std::string::npos);
  CHECK(waitState(a.pid(), 'S'));
  CHECK_FALSE(a.exited());
}

TEST_CASE("process.pause sends SIGSTOP when the target shares its cgroup, SIGCONT on revert") {
  auto tree = cgroups();
  auto table = faultline::kernel::openProcessTable();
  ProcessPauseDriver driver(*table, tree.get());
  TestCgroup group(*tree, "/" + unique("shared"));
  Child target(sleepBin(), {"sleep", "60"});
  Child neighbour(sleepBin(), {"sleep", "61"});
  group.add(target.pid());
  group.add(neighbour.pid());
  v1::ProcessSelector s;
  s.set_pid(target.pid());
  auto applied = driver.apply(pause(s));
  REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
  CHECK(stateOf(target.pid()) == 'T');
  CHECK(stateOf(neighbour.pid()) != 'T');  // running or sleeping, never stopped
  CHECK(eventsOf(*tree, group.path()).find("frozen 0") != std::string::npos);
  CHECK((*applied)->processHits()[0].action() == "SIGSTOP");
  REQUIRE((*applied)->revert());
  CHECK(waitState(target.pid(), 'S'));
  REQUIRE((*applied)->revert());  // idempotent
}

TEST_CASE("process.pause through the agent: resumed when the duration ends") {
  auto tree = cgroups();
  TestCgroup group(*tree, "/" + unique("expiry"));
  Child child(sleepBin(), {"sleep", "60"});
  group.add(child.pid());
  Child loner(sleepBin(), {"sleep", "61"});  // not in a cgroup of its own: SIGSTOP

  boost::asio::io_context io;
  faultline::agent::SystemDrivers drivers;
  std::vector<v1::FaultReport> reports;
  faultline::agent::Agent agent(io, drivers.router(), [&](const v1::FaultReport& r) { reports.push_back(r); });
  for (const auto& [id, pid] : {std::pair<std::string, pid_t>{"frozen", child.pid()}, {"stopped", loner.pid()}}) {
    v1::Inject inject;
    inject.set_fault_id(id);
    inject.mutable_spec()->mutable_process_pause()->mutable_process()->set_pid(pid);
    inject.mutable_duration()->set_nanos(300'000'000);
    agent.inject(inject);
  }
  REQUIRE(reports.size() == 2);
  CHECK(reports[0].state() == v1::FAULT_STATE_APPLIED);
  CHECK(reports[1].state() == v1::FAULT_STATE_APPLIED);
  REQUIRE(reports[0].processes_size() == 1);
  CHECK(reports[0].processes(0).action() == "frozen (cgroup " + group.path() + ")");
  CHECK(reports[1].processes(0).action() == "SIGSTOP");
  CHECK(eventsOf(*tree, group.path()).find("frozen 1") != std::string::npos);
  CHECK(stateOf(loner.pid()) == 'T');
  io.run_for(std::chrono::milliseconds(800));
  REQUIRE(reports.size() == 4);
  CHECK(reports[2].state() == v1::FAULT_STATE_EXPIRED);
  CHECK(reports[3].state() == v1::FAULT_STATE_EXPIRED);
  CHECK(eventsOf(*tree, group.path()).find("frozen 0") != std::string::npos);
  CHECK(waitState(loner.pid(), 'S'));
}

TEST_CASE("process.pause: an agent SIGKILLed mid-pause leaves a journal entry; the next start resumes") {
  auto tree = cgroups();
  TestCgroup group(*tree, "/" + unique("crash"));
  Child frozen(sleepBin(), {"sleep", "60"});
  group.add(frozen.pid());
  Child stopped(sleepBin(), {"sleep", "61"});
  char dirTemplate[] = "/tmp/faultline-pause-state-XXXXXX";
  REQUIRE(::mkdtemp(dirTemplate) != nullptr);
  const fs::path stateDir = dirTemplate;
  struct RemoveDir {
    fs::path dir;
    ~RemoveDir() {
      std::error_code ignored;
      fs::remove_all(dir, ignored);
    }
  } removeDir{stateDir};

  // The "agent": applies both pauses with a journal and dies without resuming anything.
  const auto pause = [](pid_t pid) {
    v1::FaultSpec spec;
    spec.mutable_process_pause()->mutable_process()->set_pid(pid);
    return spec;
  };
  std::optional<faultline::agent::SystemDrivers> drivers;  // made in the agent's child only
  faultline::testing::agentDiesHoldingFaults(stateDir,
                                             [&]() -> faultline::agent::FaultDriver& {
                                               drivers.emplace();
                                               return drivers->router();
                                             },
                                             {{"f", pause(frozen.pid())}, {"s", pause(stopped.pid())}});

  // Dead agent: still paused.
  CHECK(eventsOf(*tree, group.path()).find("frozen 1") != std::string::npos);
  CHECK(stateOf(stopped.pid()) == 'T');

  // The next start: recovery from the journal.
  auto journal = faultline::agent::openJournalAndRecover(
      stateDir, [](const std::string& netns) { return faultline::kernel::openQdiscTable(netns); });
  REQUIRE(journal);
  CHECK((*journal)->openCount() == 0);
  CHECK(eventsOf(*tree, group.path()).find("frozen 0") != std::string::npos);
  CHECK(waitState(stopped.pid(), 'S'));
  CHECK_FALSE(frozen.exited());
  CHECK_FALSE(stopped.exited());
}

TEST_CASE("processes that rewrite their command line (PostgreSQL's set_ps_display) are all hit, none called exited") {
  auto table = faultline::kernel::openProcessTable();
  const std::string tag = unique("pg");
  std::vector<std::unique_ptr<Child>> backends;
  for (int i = 0; i < 4; ++i) {
    backends.push_back(psDisplayChild(tag));
  }
  v1::ProcessSelector s;
  s.set_cmdline("^" + tag + ": ");

  SUBCASE("process.kill SIGUSR1, which they live through: every round hits all four, none exited") {
    ProcessKillDriver driver(*table);
    for (int round = 0; round < 5; ++round) {
      CAPTURE(round);
      auto applied = driver.apply(kill(s, "SIGUSR1"));
      REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
      const auto hits = (*applied)->processHits();
      REQUIRE(hits.size() == 4);
      for (const auto& h : hits) {
        CAPTURE(h.cmdline());
        CHECK(h.action() == "SIGUSR1");
        CHECK_FALSE(h.exited());
      }
      CHECK((*applied)->describe().find("had exited") == std::string::npos);
    }
    for (auto& b : backends) {
      CHECK_FALSE(b->exited());
    }
  }
  SUBCASE("process.kill SIGTERM: all four hit, and each is reported exited because it has") {
    ProcessKillDriver driver(*table);
    auto applied = driver.apply(kill(s, "SIGTERM"));
    REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
    const auto hits = (*applied)->processHits();
    REQUIRE(hits.size() == 4);
    for (const auto& h : hits) {
      CHECK(h.action() == "SIGTERM");
      CHECK(h.exited());
    }
    for (auto& b : backends) {
      CHECK(killedBy(*b, SIGTERM));
    }
  }
  SUBCASE("process.pause: all four stopped and resumed; one killed during the pause is reported, not resumed") {
    auto tree = cgroups();
    ProcessPauseDriver driver(*table, tree.get());  // they share the test's cgroup: SIGSTOP
    auto applied = driver.apply(pause(s));
    REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
    const auto hits = (*applied)->processHits();
    REQUIRE(hits.size() == 4);
    for (const auto& h : hits) {
      CHECK(h.action() == "SIGSTOP");
      CHECK_FALSE(h.exited());
    }
    for (auto& b : backends) {
      CHECK(waitState(b->pid(), 'T'));
    }
    CHECK((*applied)->describe().find("; mechanism: SIGSTOP (pid ") != std::string::npos);
    const pid_t gone = backends[0]->pid();
    ::kill(gone, SIGKILL);
    CHECK(killedBy(*backends[0], SIGKILL));
    REQUIRE((*applied)->revert());
    for (size_t i = 1; i < backends.size(); ++i) {
      CHECK(stateOf(backends[i]->pid()) != 'T');
      CHECK_FALSE(backends[i]->exited());
    }
    const std::string ended = (*applied)->describeRevert("duration elapsed");
    CHECK(ended.rfind("resumed 3 of 4 paused process(es) (duration elapsed): ", 0) == 0);
    CHECK(ended.find("not resumed: pid " + std::to_string(gone) + " has exited") != std::string::npos);
  }
}

TEST_CASE("two pauses of one process through one agent: the second is refused naming the first; the first resumes") {
  auto tree = cgroups();
  TestCgroup group(*tree, "/" + unique("twice"));
  Child frozen(sleepBin(), {"sleep", "60"});
  group.add(frozen.pid());
  Child stopped(sleepBin(), {"sleep", "61"});  // in the test's cgroup: SIGSTOP

  boost::asio::io_context io;
  faultline::agent::SystemDrivers drivers;
  std::vector<v1::FaultReport> reports;
  faultline::agent::Agent agent(io, drivers.router(), [&](const v1::FaultReport& r) { reports.push_back(r); });
  const auto inject = [&](const std::string& id, pid_t pid, int millis) {
    v1::Inject in;
    in.set_fault_id(id);
    in.mutable_spec()->mutable_process_pause()->mutable_process()->set_pid(pid);
    in.mutable_duration()->set_nanos(millis * 1'000'000);
    agent.inject(in);
  };
  inject("run-a/1/h", frozen.pid(), 400);
  inject("run-a/2/h", stopped.pid(), 400);
  inject("run-b/1/h", frozen.pid(), 900);
  inject("run-b/2/h", stopped.pid(), 900);
  REQUIRE(reports.size() == 4);
  CHECK(reports[0].state() == v1::FAULT_STATE_APPLIED);
  CHECK(reports[1].state() == v1::FAULT_STATE_APPLIED);
  for (const auto& [report, holder, pid] :
       {std::tuple{reports[2], "run-a/1/h", frozen.pid()}, std::tuple{reports[3], "run-a/2/h", stopped.pid()}}) {
    CAPTURE(report.error());
    CHECK(report.state() == v1::FAULT_STATE_FAILED);
    CHECK(report.error().find(fmt::format("pid {} (sleep 6", pid)) != std::string::npos);
    CHECK(report.error().find("is already paused by another process.pause fault of this agent") != std::string::npos);
    CHECK(report.error().find("nothing was paused") != std::string::npos);
    CHECK(report.error().find(fmt::format("(fault {} holds pid {})", holder, pid)) != std::string::npos);
  }
  CHECK(eventsOf(*tree, group.path()).find("frozen 1") != std::string::npos);
  CHECK(stateOf(stopped.pid()) == 'T');
  // The first pauses end on their duration and resume both; nothing else held them.
  io.run_for(std::chrono::milliseconds(1000));
  REQUIRE(reports.size() == 6);
  CHECK(reports[4].state() == v1::FAULT_STATE_EXPIRED);
  CHECK(reports[5].state() == v1::FAULT_STATE_EXPIRED);
  CHECK(eventsOf(*tree, group.path()).find("frozen 0") != std::string::npos);
  CHECK(waitState(stopped.pid(), 'S'));
  // Free again: the same process can be paused by a later fault.
  inject("run-b/3/h", stopped.pid(), 200);
  REQUIRE(reports.size() == 7);
  CHECK(reports[6].state() == v1::FAULT_STATE_APPLIED);
  io.restart();  // it ran out of work when the first pauses ended
  io.run_for(std::chrono::milliseconds(600));
  REQUIRE(reports.size() == 8);
  CHECK(reports[7].state() == v1::FAULT_STATE_EXPIRED);
  CHECK(waitState(stopped.pid(), 'S'));
}

TEST_CASE("a process another agent paused (stopped, or in a frozen cgroup) is refused, not paused twice") {
  auto tree = cgroups();
  auto tableA = faultline::kernel::openProcessTable();
  auto tableB = faultline::kernel::openProcessTable();
  ProcessPauseDriver agentA(*tableA, tree.get());
  ProcessPauseDriver agentB(*tableB, tree.get());
  TestCgroup group(*tree, "/" + unique("other-agent"));
  Child frozen(sleepBin(), {"sleep", "60"});
  group.add(frozen.pid());
  Child stopped(sleepBin(), {"sleep", "61"});
  v1::ProcessSelector byFrozen;
  byFrozen.set_pid(frozen.pid());
  v1::ProcessSelector byStopped;
  byStopped.set_pid(stopped.pid());

  auto a1 = agentA.apply(pause(byFrozen));
  REQUIRE_MESSAGE(a1, (a1 ? "" : a1.error().message));
  auto a2 = agentA.apply(pause(byStopped));
  REQUIRE_MESSAGE(a2, (a2 ? "" : a2.error().message));
  REQUIRE(waitState(stopped.pid(), 'T'));

  auto b1 = agentB.apply(pause(byFrozen));
  REQUIRE_FALSE(b1);
  CHECK(b1.error().code == std::errc::device_or_resource_busy);
  CHECK(b1.error().heldPids.empty());  // not this driver's: no fault of its agent to name
  CHECK(b1.error().message.find("is in cgroup " + group.path() +
                                ", which is already frozen (cgroup.events: frozen 1) by something else") !=
        std::string::npos);
  auto b2 = agentB.apply(pause(byStopped));
  REQUIRE_FALSE(b2);
  CHECK(b2.error().message.find("is already stopped (state T) by something else") != std::string::npos);

  REQUIRE((*a1)->revert());
  REQUIRE((*a2)->revert());
  CHECK(waitState(stopped.pid(), 'S'));
  auto b3 = agentB.apply(pause(byStopped));  // free now
  REQUIRE_MESSAGE(b3, (b3 ? "" : b3.error().message));
  REQUIRE((*b3)->revert());
  CHECK(waitState(stopped.pid(), 'S'));
}

TEST_CASE("mechanism: freeze freezes a cgroup the targets own and refuses, pausing nothing, where it cannot") {
  auto tree = cgroups();
  auto table = faultline::kernel::openProcessTable();
  ProcessPauseDriver driver(*table, tree.get());
  TestCgroup group(*tree, "/" + unique("freeze-only"));
  Child target(sleepBin(), {"sleep", "60"});
  Child neighbour(sleepBin(), {"sleep", "61"});
  group.add(target.pid());
  group.add(neighbour.pid());
  v1::ProcessSelector one;
  one.set_pid(target.pid());
  auto refused = driver.apply(pauseByFreeze(one));
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == std::errc::operation_not_supported);
  CHECK(refused.error().message.find(fmt::format("mechanism: freeze: cannot freeze without freezing processes not "
                                                 "chosen or the agent: pid {} (sleep 60): its cgroup {} also holds "
                                                 "1 process(es) not chosen",
                                                 target.pid(), group.path())) != std::string::npos);
  CHECK(refused.error().message.find("nothing was paused") != std::string::npos);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(stateOf(target.pid()) != 'T');
  CHECK(eventsOf(*tree, group.path()).find("frozen 0") != std::string::npos);

  v1::ProcessSelector whole;
  whole.set_cgroup(group.path());
  auto applied = driver.apply(pauseByFreeze(whole));
  REQUIRE_MESSAGE(applied, (applied ? "" : applied.error().message));
  CHECK(eventsOf(*tree, group.path()).find("frozen 1") != std::string::npos);
  for (const auto& h : (*applied)->processHits()) {
    CHECK(h.action() == "frozen (cgroup " + group.path() + ")");
  }
  CHECK((*applied)->describe().find("; mechanism: freeze (cgroup.freeze)") != std::string::npos);
  REQUIRE((*applied)->revert());
  CHECK(eventsOf(*tree, group.path()).find("frozen 0") != std::string::npos);
  CHECK((*applied)->describeRevert("revert requested") ==
        "resumed 2 of 2 paused process(es) (revert requested): thawed cgroup " + group.path());
}

TEST_CASE(
    "under an `ip netns exec`-style mount namespace (a fresh sysfs on /sys) cgroup v2 is still found and frozen") {
  auto tree = cgroups();
  TestCgroup group(*tree, "/" + unique("netns-exec"));
  Child target(sleepBin(), {"sleep", "60"});
  group.add(target.pid());
  int pipeFds[2];
  REQUIRE(::pipe2(pipeFds, O_CLOEXEC) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // What `ip netns exec` does to the mount table (iproute2's netns_switch): a mount namespace of
    // its own, / made a slave, /sys detached and a new sysfs mounted there. No doctest here: the
    // child writes what it saw, one line each, and exits.
    ::close(pipeFds[0]);
    std::string out;
    const auto say = [&](const std::string& line) { out += line + "\n"; };
    const auto done = [&](int code) {
      (void)!::write(pipeFds[1], out.data(), out.size());
      ::_exit(code);
    };
    if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_SLAVE | MS_REC, nullptr) != 0 ||
        ::umount2("/sys", MNT_DETACH) != 0 || ::mount("sysfs", "/sys", "sysfs", 0, nullptr) != 0) {
      say(std::string("setup failed: ") + std::strerror(errno));
      done(1);
    }
    std::ifstream in("/proc/self/mountinfo");
    const std::string mountinfo((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    say(faultline::kernel::findCgroup2Mount(mountinfo) ? "cgroup2 visible here" : "cgroup2 hidden here");
    auto found = faultline::kernel::openCgroupTree();
    if (!found) {
      say("not found: " + faultline::kernel::cgroupTreeMissingWhy(found.error()));
      done(1);
    }
    say("found at: " + (*found)->foundAt());
    auto table = faultline::kernel::openProcessTable();
    ProcessPauseDriver driver(*table, found->get());
    v1::ProcessSelector s;
    s.set_pid(target.pid());
    auto applied = driver.apply(pauseByFreeze(s));
    if (!applied) {
      say("refused: " + applied.error().message);
      done(1);
    }
    say("action: " + (*applied)->processHits().at(0).action());
    auto events = (*found)->read(group.path(), "cgroup.events");
    const auto frozenAt = events ? events->find("frozen") : std::string::npos;
    say("events: " + (frozenAt != std::string::npos ? events->substr(frozenAt) : std::string("unreadable")));
    say(std::string("reverted: ") + ((*applied)->revert() ? "yes" : "no"));
    done(0);
  }
  ::close(pipeFds[1]);
  std::string out;
  char buffer[4096];
  ssize_t n = 0;
  while ((n = ::read(pipeFds[0], buffer, sizeof buffer)) > 0) {
    out.append(buffer, static_cast<size_t>(n));
  }
  ::close(pipeFds[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  INFO(out);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(out.find("cgroup2 hidden here\n") != std::string::npos);  // what made pauses fall back to SIGSTOP
  CHECK(out.find("found at: ") != std::string::npos);
  CHECK(out.find("(pid 1's mount namespace") != std::string::npos);
  CHECK(out.find("action: frozen (cgroup " + group.path() + ")\n") != std::string::npos);
  CHECK(out.find("events: frozen 1\n") != std::string::npos);
  CHECK(out.find("reverted: yes\n") != std::string::npos);
  CHECK(eventsOf(*tree, group.path()).find("frozen 0") != std::string::npos);
  CHECK_FALSE(target.exited());
}
