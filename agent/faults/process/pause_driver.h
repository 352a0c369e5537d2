// process.pause: stops the processes a selector picks (process_selector.h) for the fault's
// duration.
//
// A chosen process whose cgroup v2 holds only chosen processes and has no child cgroups (it "owns
// its cgroup"; never the root, nor the agent's own cgroup or one above it) is frozen with
// cgroup.freeze, and the driver waits (up to 1 s) for cgroup.events to say "frozen 1". Every
// other chosen process gets SIGSTOP through its pidfd. The undo record (journalled before the
// first freeze or stop) lists the cgroups and the pids with their start times:
//   {"mount": "/sys/fs/cgroup", "freeze": ["/a/b"], "stop": [{"pid": 42, "start": 123456}]}
// revert() thaws each cgroup (cgroup.freeze 0, waits for "frozen 0") and sends SIGCONT to each
// stopped process that is still the same one (same start time); a process that has exited
// meanwhile is fine. A pause that fails half-way is resumed before the error is returned.
#pragma once

#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/faults/fault.h"
#include "agent/faults/process/process_selector.h"
#include "agent/kernel/cgroup_tree.h"
#include "agent/kernel/process_table.h"

namespace faultline::agent {

class ProcessPauseDriver final : public FaultDriver {
 public:
  // processes (and cgroups, when not null) must outlive the driver and the faults it applied.
  // cgroups null: a host without cgroup v2; every process is stopped with SIGSTOP. rules: names
  // protected in addition to the always protected ones, and how many processes one fault may match
  // and pause (checkProcessLimits(): a selection that breaks them pauses nothing).
  ProcessPauseDriver(kernel::ProcessTable& processes, kernel::CgroupTree* cgroups, ProcessRules rules = {},
                     uint64_t seed = std::random_device{}());
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

  // Resumes what an undo record names (crash recovery, revert-all). Returns what it did. cgroups
  // may be null when the record freezes nothing. errors: a thaw or SIGCONT that failed (transient),
  // a record that cannot be read (permanent).
  [[nodiscard]] static tl::expected<std::string, FaultError> revertRecord(const nlohmann::json& undo,
                                                                          kernel::ProcessTable& processes,
                                                                          kernel::CgroupTree* cgroups);

 private:
  std::mutex mutex_;
  kernel::ProcessTable& processes_;
  kernel::CgroupTree* cgroups_;
  std::mt19937_64 rng_;
  ProcessPicker picker_;
  ProcessLimits limits_;
};

}  // namespace faultline::agent
