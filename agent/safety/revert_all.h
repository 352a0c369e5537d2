// faultline-agent revert-all: puts a host back without a controller and, if need be, without a
// journal. First it reverts every entry its undo journal still holds open (as crash recovery at
// start does), then it looks in every network namespace it is given for faultline's netfilter
// tables and chains (the userspace driver's: nftables inet faultline-N, xtables mangle
// FAULTLINE-N) and removes them, for interfaces whose root qdisc
// carries faultline's handle (major 0xFA17) and deletes those roots, and for faultline's ifb
// devices (kind ifb, named flt-ifb<index in hex>) deletes the filters redirecting to that ifb on
// the interface of that index (with its ingress qdisc when they are all it carries; someone else's
// filters stay, with the qdisc), then the ifb; nothing else is touched.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/network/nfqueue_driver.h"
#include "agent/kernel/cgroup_tree.h"

namespace faultline::agent {

struct RevertAllReport {
  std::vector<std::string> reverted;  // journal entries reverted ("fault f1 (network.bandwidth): ...")
  std::vector<std::string> removed;   // leftover roots deleted ("tbf fa17: on veth0 in ...")
  std::vector<std::string> failed;    // what is still there, or could not be looked at, and why
  std::vector<std::string> notes;     // no journal, skipped journal lines, namespaces gone meanwhile
  // Live faults of other running agents (their userspace-driver queue is served), left alone.
  std::vector<std::string> kept;
  size_t namespaces = 0;  // namespaces scanned
  size_t interfaces = 0;  // interfaces with a root qdisc seen in them
  // A running agent holds stateDir's journal: nothing was touched (the sweep would remove that
  // agent's live faults and lose the roots they saved); stop the agent, which reverts on SIGTERM.
  bool agentRunning = false;
  // Nothing failed: every faultline root found is gone and every journal entry is closed.
  [[nodiscard]] bool clean() const { return failed.empty(); }
};

// stateDir: the agent's state directory; its journal is skipped (with a note) when
// stateDir/journal.jsonl does not exist, and never created. namespaces: paths for open, "" being
// the caller's own (kernel::listNetworkNamespaces() lists them all). A namespace that vanishes
// before it is scanned is noted, not failed. Do not run it beside a running agent on the same
// state directory: both would write the journal. Blocks for the kernel calls and disk syncs.
// steering (optional): also removes faultline's netfilter tables and chains (the userspace
// driver's, nfqueue_driver.h removeAllSteering()) in each namespace.
[[nodiscard]] RevertAllReport revertAllFaults(const std::filesystem::path& stateDir,
                                              const std::vector<std::string>& namespaces, const QdiscTableOpener& open,
                                              const SteeringOpener& steering = nullptr);

// Then (faultline-agent revert-all, after revertAllFaults): removes every cgroup named
// faultline-stress-* in the cgroup v2 hierarchy, killing what runs in it (a stress fault's
// workers), journal or not. Adds to report.removed / report.failed. Defined in
// resource_recovery.cpp.
void removeStressCgroups(kernel::CgroupTree& cgroups, RevertAllReport& report);

}  // namespace faultline::agent
