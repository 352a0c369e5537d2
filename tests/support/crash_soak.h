// The crash soak, shared by tests/kernel/agent/safety/crash_soak_test.cpp and bench/crash_soak.cpp: in a
// throwaway network namespace, a child process runs an Agent with an undo journal that applies
// and reverts network.bandwidth faults on veth0 (egress) and veth1 (ingress: an ifb, an ingress
// qdisc and a mirred redirect) in a loop; it is SIGKILLed after a
// given delay, then revertAllFaults() (what `faultline-agent revert-all` runs) recovers, confined
// to that namespace, and the root qdiscs are compared with a snapshot taken before the child ran.
// No doctest here, so the benchmark can use it too. Needs root.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/resource/stress_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/cgroup_tree.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/safety/journal.h"
#include "agent/safety/revert_all.h"
#include "agent/session/agent.h"
#include "tests/support/netns_holder.h"

namespace faultline::testing::soak {

// Runs command with /bin/sh; true when it exits 0. output: stdout and stderr.
inline bool run(const std::string& command, std::string* output = nullptr) {
  auto r = sh(command);
  if (output != nullptr) {
    *output = std::move(r.output);
  }
  return r.status == 0;
}

using Netns = NetnsHolder;

// Root qdisc of every interface, by name, and its ingress qdisc, by "NAME ingress" (an ifb
// faultline left shows as a new interface, an ingress qdisc as a new entry).
using Snapshot = std::map<std::string, kernel::QdiscInfo>;

inline tl::expected<Snapshot, std::string> snapshot(const std::string& netns) {
  auto table = kernel::openQdiscTable(netns);
  if (!table) {
    return tl::unexpected(fmt::format("cannot open {}: {}", netns, table.error().message()));
  }
  auto roots = (*table)->roots();
  if (!roots) {
    return tl::unexpected(fmt::format("cannot list roots in {}: {}", netns, roots.error().message()));
  }
  Snapshot out;
  for (auto& [interface, root] : *roots) {
    auto ingress = (*table)->ingressQdisc(interface);
    if (!ingress && ingress.error() != std::errc::no_such_device) {
      return tl::unexpected(
          fmt::format("cannot read the ingress qdisc of {} in {}: {}", interface, netns, ingress.error().message()));
    }
    if (ingress && *ingress) {
      out.emplace(interface + " ingress", **ingress);
    }
    out.emplace(interface, std::move(root));
  }
  return out;
}

inline std::string text(const kernel::QdiscInfo& q) {
  return fmt::format("{} {:x}: parent {:x} options {} bytes", q.kind, q.handle >> 16, q.parent, q.options.size());
}

// What differs between before and after, one line per interface.
inline std::vector<std::string> differences(const Snapshot& before, const Snapshot& after) {
  std::vector<std::string> out;
  for (const auto& [name, root] : before) {
    auto it = after.find(name);
    if (it == after.end()) {
      out.push_back(fmt::format("{}: was {}, now no root", name, text(root)));
    } else if (it->second.kind != root.kind || it->second.handle != root.handle || it->second.parent != root.parent ||
               it->second.options != root.options) {
      out.push_back(fmt::format("{}: was {}, now {}", name, text(root), text(it->second)));
    }
  }
  for (const auto& [name, root] : after) {
    if (!before.contains(name)) {
      out.push_back(fmt::format("{}: new root {}", name, text(root)));
    }
  }
  return out;
}

struct Iteration {
  bool preexistingRoot = false;  // veth0 had tbf 8001: before the agent started
  uint64_t cycles = 0;           // apply+revert cycles the child finished before the kill
  bool faultInPlace = false;     // a faultline root was there when the child died
  size_t journalEntriesReverted = 0;
  size_t leftoversRemoved = 0;      // faultline roots the scan deleted
  std::vector<std::string> leaked;  // what differs from the snapshot afterwards, and open entries
  std::string error;                // the iteration could not run (setup), empty when it ran
};

// What the iterations of a soak that ran (error empty) add up to: the test checks these, the bench
// prints them.
struct Totals {
  size_t kills = 0;    // iterations that ran: each ended with a SIGKILL
  size_t inPlace = 0;  // ... with a faultline root in place
  uint64_t cycles = 0;
  size_t journalEntriesReverted = 0;
  size_t leftoversRemoved = 0;
  size_t leaked = 0;

  void add(const Iteration& it) {
    ++kills;
    inPlace += it.faultInPlace ? 1 : 0;
    cycles += it.cycles;
    journalEntriesReverted += it.journalEntriesReverted;
    leftoversRemoved += it.leftoversRemoved;
    leaked += it.leaked.size();
  }
};

namespace detail {

inline v1::FaultSpec bandwidth(const std::string& netns, const std::string& interface, uint64_t rate) {
  v1::FaultSpec spec;
  auto* b = spec.mutable_network_bandwidth();
  b->mutable_target()->set_interface(interface);
  b->mutable_target()->set_netns(netns);
  b->mutable_target()->set_direction(interface == "veth1" ? v1::DIRECTION_INGRESS : v1::DIRECTION_EGRESS);
  b->set_rate_bps(rate);
  return spec;
}

// The child: never returns. cycles is shared memory; ready is written once the journal is open.
[[noreturn]] inline void agentLoop(const std::string& netns, const std::filesystem::path& stateDir,
                                   std::atomic<uint64_t>* cycles, int ready) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  spdlog::set_level(spdlog::level::off);
  auto opened = agent::UndoJournal::open(stateDir);
  if (!opened) {
    ::_exit(2);
  }
  agent::NetworkFaultDriver driver{kernel::openQdiscTable};
  boost::asio::io_context io;
  agent::Agent agent(io, driver, nullptr, opened->journal.get());
  const char ok = 1;
  if (::write(ready, &ok, 1) != 1) {
    ::_exit(2);
  }
  for (uint64_t i = 0;; ++i) {
    for (const char* interface : {"veth0", "veth1"}) {
      v1::Inject inject;
      inject.set_fault_id(fmt::format("soak-{}-{}", i, interface));
      *inject.mutable_spec() = bandwidth(netns, interface, 1'000'000 + 8 * (i % 1000));
      *inject.mutable_duration() = faultline::toProto(std::chrono::seconds{60});
      agent.inject(inject);
    }
    if (agent.activeCount() != 2) {
      ::_exit(3);  // an apply failed: the parent sees a child that exited by itself
    }
    agent.revert(fmt::format("soak-{}-veth0", i));
    agent.revert(fmt::format("soak-{}-veth1", i));
    cycles->fetch_add(1);
  }
}

}  // namespace detail

// One iteration in a fresh namespace; stateDir must exist and be empty of a journal.
inline Iteration crashIteration(bool preexistingRoot, std::chrono::microseconds killAfter,
                                const std::filesystem::path& stateDir) {
  Iteration it;
  it.preexistingRoot = preexistingRoot;
  Netns ns;
  if (!ns.error().empty()) {
    it.error = ns.error();
    return it;
  }
  if (preexistingRoot &&
      !ns.inNetns("tc qdisc add dev veth0 root handle 8001: tbf rate 2mbit burst 10kb latency 50ms")) {
    it.error = ns.error();
    return it;
  }
  auto before = snapshot(ns.path());
  if (!before) {
    it.error = before.error();
    return it;
  }

  auto* cycles = static_cast<std::atomic<uint64_t>*>(
      ::mmap(nullptr, sizeof(std::atomic<uint64_t>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (cycles == MAP_FAILED) {
    it.error = "mmap failed";
    return it;
  }
  new (cycles) std::atomic<uint64_t>(0);
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) {
    ::munmap(cycles, sizeof(*cycles));
    it.error = "pipe2 failed";
    return it;
  }
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(ready[0]);
    detail::agentLoop(ns.path(), stateDir, cycles, ready[1]);
  }
  ::close(ready[1]);
  char ok = 0;
  const bool started = child > 0 && ::read(ready[0], &ok, 1) == 1;
  ::close(ready[0]);
  if (started) {
    std::this_thread::sleep_for(killAfter);
  }
  if (child > 0) {
    ::kill(child, SIGKILL);
  }
  int status = 0;
  if (child > 0) {
    ::waitpid(child, &status, 0);
  }
  it.cycles = cycles->load();
  ::munmap(cycles, sizeof(*cycles));
  if (!started || !WIFSIGNALED(status)) {
    it.error = fmt::format("the agent child did not run until killed (status {:#x})", status);
    return it;
  }

  if (auto during = snapshot(ns.path())) {
    for (const auto& [name, root] : *during) {
      it.faultInPlace = it.faultInPlace || (root.handle >> 16) == agent::kFaultlineQdiscMajor ||
                        name.starts_with(agent::kIfbPrefix) || name.ends_with(" ingress");
    }
  }
  // Recovery, confined to this namespace: other namespaces on the machine are not ours to touch.
  const auto report = agent::revertAllFaults(stateDir, {ns.path()}, kernel::openQdiscTable);
  it.journalEntriesReverted = report.reverted.size();
  it.leftoversRemoved = report.removed.size();
  for (const auto& line : report.failed) {
    it.leaked.push_back("recovery failed: " + line);
  }
  auto after = snapshot(ns.path());
  if (!after) {
    it.leaked.push_back(after.error());
  } else {
    for (auto& line : differences(*before, *after)) {
      it.leaked.push_back(std::move(line));
    }
  }
  auto journal = agent::UndoJournal::open(stateDir);
  if (!journal) {
    it.leaked.push_back("journal: " + journal.error().message);
  } else {
    for (const auto& entry : journal->open) {
      it.leaked.push_back("journal entry still open: " + entry.faultId);
    }
  }
  return it;
}

// The resource crash soak: a child Agent (SystemDrivers: the real process, cgroup and stress
// drivers) with an undo journal loops over process.pause of a child alone in its own cgroup
// (cgroup.freeze), process.pause of a child in a shared cgroup (SIGSTOP), and, where the cgroup v2
// hierarchy has the controllers, cgroup.squeeze of that cgroup's pids.max/cpu.max and stress.cpu,
// applying and reverting each; it is SIGKILLed after a given delay. Then revertAllFaults() plus
// removeStressCgroups() recover, and the test compares: the cgroup is thawed (cgroup.events
// frozen 0), the stopped child is not in state T, the squeezed values equal those read before, no
// faultline-stress-* cgroup is left, every journal entry is closed.
struct ResourceIteration {
  uint64_t cycles = 0;
  bool frozenAtKill = false;   // the freeze was in place when the child died
  bool stoppedAtKill = false;  // the SIGSTOP was in place when the child died
  bool squeezed = false;       // the hierarchy has cpu and pids: squeeze and stress were in the loop
  size_t journalEntriesReverted = 0;
  std::vector<std::string> leaked;
  std::string error;
};

// What the iterations of a resource soak that ran add up to.
struct ResourceTotals {
  size_t frozen = 0;   // kills with the cgroup frozen
  size_t stopped = 0;  // kills with the process stopped
  uint64_t cycles = 0;
  size_t journalEntriesReverted = 0;
  size_t leaked = 0;
  bool squeezed = false;  // squeeze and stress were in the loop (the last iteration's word)

  void add(const ResourceIteration& it) {
    frozen += it.frozenAtKill ? 1 : 0;
    stopped += it.stoppedAtKill ? 1 : 0;
    cycles += it.cycles;
    journalEntriesReverted += it.journalEntriesReverted;
    leaked += it.leaked.size();
    squeezed = it.squeezed;
  }
};

namespace detail {

inline pid_t spawnSleep() {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::execl("/bin/sleep", "sleep", "600", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  return pid;
}

inline char procState(pid_t pid) {
  std::FILE* f = std::fopen(fmt::format("/proc/{}/stat", pid).c_str(), "r");
  if (f == nullptr) {
    return '?';
  }
  char buf[512] = {};
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  const std::string text(buf, n);
  const auto close = text.rfind(')');
  return close != std::string::npos && close + 2 < text.size() ? text[close + 2] : '?';
}

[[noreturn]] inline void resourceLoop(const std::filesystem::path& stateDir, pid_t frozen, pid_t stopped,
                                      const std::string& squeezeCgroup, std::atomic<uint64_t>* cycles, int ready) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  spdlog::set_level(spdlog::level::off);
  auto opened = agent::UndoJournal::open(stateDir);
  if (!opened) {
    ::_exit(2);
  }
  agent::SystemDrivers drivers;
  boost::asio::io_context io;
  agent::Agent agent(io, drivers.router(), nullptr, opened->journal.get());
  const char ok = 1;
  if (::write(ready, &ok, 1) != 1) {
    ::_exit(2);
  }
  for (uint64_t i = 0;; ++i) {
    std::vector<v1::Inject> injects;
    for (pid_t pid : {frozen, stopped}) {
      v1::Inject inject;
      inject.set_fault_id(fmt::format("pause-{}-{}", i, pid));
      inject.mutable_spec()->mutable_process_pause()->mutable_process()->set_pid(pid);
      injects.push_back(inject);
    }
    if (!squeezeCgroup.empty()) {
      v1::Inject squeeze;
      squeeze.set_fault_id(fmt::format("squeeze-{}", i));
      auto* q = squeeze.mutable_spec()->mutable_cgroup_squeeze();
      q->set_cgroup(squeezeCgroup);
      q->set_pids_max(3 + i % 5);
      q->set_cpus(0.1 + 0.01 * static_cast<double>(i % 10));
      injects.push_back(squeeze);
      v1::Inject stress;
      stress.set_fault_id(fmt::format("stress-{}", i));
      stress.mutable_spec()->mutable_stress_cpu()->set_workers(1);
      stress.mutable_spec()->mutable_stress_cpu()->set_load_percent(5);
      injects.push_back(stress);
    }
    for (auto& inject : injects) {
      *inject.mutable_duration() = faultline::toProto(std::chrono::seconds{60});
      agent.inject(inject);
    }
    if (agent.activeCount() != injects.size()) {
      ::_exit(3);
    }
    for (const auto& inject : injects) {
      agent.revert(inject.fault_id());
    }
    cycles->fetch_add(1);
  }
}

}  // namespace detail

// One iteration; stateDir must exist without an open journal; cgroupName: a fresh name for this
// iteration's cgroup below the v2 root (created and removed here).
inline ResourceIteration resourceCrashIteration(std::chrono::microseconds killAfter,
                                                const std::filesystem::path& stateDir, const std::string& cgroupName) {
  ResourceIteration it;
  auto opened = kernel::openCgroupTree();
  if (!opened) {
    it.error = kernel::cgroupV2MissingMessage("the resource crash soak");
    return it;
  }
  auto& tree = **opened;
  const std::string group = "/" + cgroupName;
  if (auto created = tree.create(group); !created) {
    it.error = fmt::format("cannot create cgroup {}: {}", group, created.error().message());
    return it;
  }
  const pid_t frozen = detail::spawnSleep();
  const pid_t stopped = detail::spawnSleep();
  const auto cleanup = [&] {
    ::kill(frozen, SIGKILL);
    ::kill(stopped, SIGKILL);
    ::waitpid(frozen, nullptr, 0);
    ::waitpid(stopped, nullptr, 0);
    (void)tree.write(group, "cgroup.freeze", "0");
    (void)tree.write(group, "cgroup.kill", "1");
    for (int i = 0; i < 500 && !tree.remove(group); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  if (!tree.write(group, "cgroup.procs", std::to_string(frozen))) {
    it.error = "cannot move the child into " + group;
    cleanup();
    return it;
  }
  auto controllers = tree.read("/", "cgroup.controllers");
  it.squeezed =
      controllers && controllers->find("cpu") != std::string::npos && controllers->find("pids") != std::string::npos;
  std::string squeezeCgroup;
  std::map<std::string, std::string> before;
  if (it.squeezed) {
    (void)tree.write("/", "cgroup.subtree_control", "+cpu");
    (void)tree.write("/", "cgroup.subtree_control", "+pids");
    squeezeCgroup = group;
    for (const char* file : {"cpu.max", "pids.max"}) {
      auto v = tree.read(group, file);
      if (!v) {
        it.error = fmt::format("cannot read {} of {}", file, group);
        cleanup();
        return it;
      }
      before[file] = *v;
    }
  }

  auto* cycles = static_cast<std::atomic<uint64_t>*>(
      ::mmap(nullptr, sizeof(std::atomic<uint64_t>), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  new (cycles) std::atomic<uint64_t>(0);
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) != 0) {
    it.error = "pipe2 failed";
    cleanup();
    return it;
  }
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(ready[0]);
    detail::resourceLoop(stateDir, frozen, stopped, squeezeCgroup, cycles, ready[1]);
  }
  ::close(ready[1]);
  char ok = 0;
  const bool started = child > 0 && ::read(ready[0], &ok, 1) == 1;
  ::close(ready[0]);
  if (started) {
    std::this_thread::sleep_for(killAfter);
  }
  int status = 0;
  if (child > 0) {
    ::kill(child, SIGKILL);
    ::waitpid(child, &status, 0);
  }
  it.cycles = cycles->load();
  ::munmap(cycles, sizeof(*cycles));
  if (!started || !WIFSIGNALED(status)) {
    it.error = fmt::format("the agent child did not run until killed (status {:#x})", status);
    cleanup();
    return it;
  }
  auto events = tree.read(group, "cgroup.events");
  it.frozenAtKill = events && events->find("frozen 1") != std::string::npos;
  it.stoppedAtKill = detail::procState(stopped) == 'T';

  auto report = agent::revertAllFaults(stateDir, {}, kernel::openQdiscTable);
  agent::removeStressCgroups(tree, report);
  it.journalEntriesReverted = report.reverted.size();
  for (const auto& line : report.failed) {
    it.leaked.push_back("recovery failed: " + line);
  }
  events = tree.read(group, "cgroup.events");
  if (!events || events->find("frozen 0") == std::string::npos) {
    it.leaked.push_back(fmt::format("cgroup {} still frozen: {}", group, events ? *events : "unreadable"));
  }
  for (int i = 0; i < 200 && detail::procState(stopped) == 'T'; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (const char state = detail::procState(stopped); state == 'T' || state == '?') {
    it.leaked.push_back(fmt::format("pid {} is in state {} (stopped or gone)", stopped, state));
  }
  for (const auto& [file, value] : before) {
    auto now = tree.read(group, file);
    if (!now || *now != value) {
      it.leaked.push_back(fmt::format("{} of {} reads '{}', was '{}'", file, group, now ? *now : "?", value));
    }
  }
  for (const auto& left : agent::StressDriver::findStressCgroups(tree)) {
    it.leaked.push_back("stress cgroup left: " + left);
  }
  auto journal = agent::UndoJournal::open(stateDir);
  if (!journal) {
    it.leaked.push_back("journal: " + journal.error().message);
  } else {
    for (const auto& entry : journal->open) {
      it.leaked.push_back("journal entry still open: " + entry.faultId);
    }
  }
  cleanup();
  return it;
}

}  // namespace faultline::testing::soak
