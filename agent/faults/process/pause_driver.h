// process.pause: stops the processes a selector picks (process_selector.h) for the fault's
// duration.
//
// Each chosen process is pinned (kernel::PinnedProcess: a pidfd checked against the start time
// the selection saw) from its selection to its resume: a process that rewrites its command line
// meanwhile (PostgreSQL, nginx workers) is still the one paused, and one that exits is reported as
// exited, never as resumed.
//
// Mechanism. A chosen process whose cgroup v2 holds only chosen processes and has no child cgroups
// (it "owns its cgroup"; never the root, nor the agent's own cgroup or one above it) is frozen with
// cgroup.freeze, and the driver waits (up to 1 s) for cgroup.events to say "frozen 1". Every
// other chosen process gets SIGSTOP through its pidfd; describe() says which mechanism each got
// and why a process was not frozen ("mechanism: SIGSTOP (pid 42: its cgroup /a also holds 3
// process(es) not chosen)"). With mechanism PAUSE_MECHANISM_FREEZE a pause that would need a
// SIGSTOP (or an agent without a cgroup v2 hierarchy) is refused (EOPNOTSUPP) before anything is
// paused.
//
// One pause per process. A chosen process that a fault of this driver holds paused (itself or in
// a cgroup it froze), that is already stopped (state T or t: another agent, a debugger, job
// control) or whose cgroup is already frozen is refused (EBUSY, FaultError::heldPids listing the
// ones this driver holds, so the agent can name the fault holding them) before anything is paused:
// the first pause to end would otherwise resume it under the other.
//
// The undo record (journalled before the first freeze or stop) lists the cgroups and the pids with
// their start times:
//   {"mount": "/sys/fs/cgroup", "freeze": ["/a/b"], "stop": [{"pid": 42, "start": 123456}]}
// revert() thaws each cgroup (cgroup.freeze 0, waits for "frozen 0") and sends SIGCONT to each
// stopped process through its pidfd; a process that has exited meanwhile is fine and is listed as
// "not resumed" in describeRevert(). A pause that fails half-way is resumed before the error is
// returned.
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
  // processes (and cgroups, when not null) must outlive the driver, and the driver the faults it
  // applied. cgroups null: no cgroup v2 hierarchy found; every process is stopped with SIGSTOP and
  // noCgroupsWhy says why in reports and in mechanism: freeze's refusal. rules: names protected in
  // addition to the always protected ones, and how many processes one fault may match and pause
  // (checkProcessLimits(): a selection that breaks them pauses nothing).
  ProcessPauseDriver(kernel::ProcessTable& processes, kernel::CgroupTree* cgroups, ProcessRules rules = {},
                     uint64_t seed = std::random_device{}(), std::string noCgroupsWhy = {});
  ~ProcessPauseDriver() override;
  ProcessPauseDriver(const ProcessPauseDriver&) = delete;
  ProcessPauseDriver& operator=(const ProcessPauseDriver&) = delete;
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

  // Resumes what an undo record names (crash recovery, revert-all); each stopped pid is pinned by
  // its recorded start time, so a pid reused since is left alone. Returns what it did. cgroups
  // may be null when the record freezes nothing. errors: a thaw or SIGCONT that failed (transient),
  // a record that cannot be read (permanent).
  [[nodiscard]] static tl::expected<std::string, FaultError> revertRecord(const nlohmann::json& undo,
                                                                          kernel::ProcessTable& processes,
                                                                          kernel::CgroupTree* cgroups);

  // The processes and cgroups this driver's faults hold paused now (pause_driver.cpp).
  struct Held;

 private:
  std::mutex mutex_;  // guards everything below and the faults' resumes
  kernel::ProcessTable& processes_;
  kernel::CgroupTree* cgroups_;
  std::string noCgroupsWhy_;
  std::mt19937_64 rng_;
  ProcessPicker picker_;
  ProcessLimits limits_;
  std::unique_ptr<Held> held_;
};

}  // namespace faultline::agent
