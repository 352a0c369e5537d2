// stress.cpu and stress.memory: worker processes the agent forks into a cgroup v2 it creates for
// the fault, bounded by cgroup limits so a stress fault can never take the host down.
//
// The cgroup is PARENT/faultline-stress-KIND-AGENTPID-N, PARENT being the parent of the agent's
// own cgroup (the root when the agent runs in the root), so every stress fault has its own cgroup
// and reverting one leaves the others. The driver enables the cpu (or memory) controller in
// PARENT's cgroup.subtree_control when it is not yet enabled (and leaves it enabled).
//   stress.cpu: cpu.max = workers x load% of one 100 ms period ("quota 100000"); each worker
//     spins, so the cgroup's usage is the requested load (measured from cpu.stat usage_usec).
//   stress.memory: one worker mmaps BYTES, writes every page (resident: memory.current reaches
//     BYTES) and sleeps; memory.max = BYTES + 32 MiB, memory.swap.max = 0 where it exists. apply()
//     waits up to 10 s for memory.current to reach BYTES.
// Workers die with the agent (PR_SET_PDEATHSIG SIGKILL) and are named faultline-cpu / faultline-mem.
// Undo record: {"mount": "/sys/fs/cgroup", "cgroup": "/system.slice/faultline-stress-cpu-42-1"}.
// Revert: cgroup.kill (SIGKILL to each pid on kernels without it), wait for "populated 0", rmdir,
// and check that the cgroup is gone.
// errors: EOPNOTSUPP without cgroup v2 (cgroupV2MissingMessage) or without the controller in the
// v2 hierarchy (e.g. hybrid hosts whose cpu/memory are bound to v1), naming what is there.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "agent/faults/fault.h"
#include "agent/kernel/cgroup_tree.h"

namespace faultline::agent {

// The prefix of every cgroup a stress fault creates; revert-all removes any cgroup named so.
inline constexpr std::string_view kStressCgroupPrefix = "faultline-stress-";

class StressDriver final : public FaultDriver {
 public:
  // cgroups (null: no cgroup v2 on this host) must outlive the driver and its faults.
  explicit StressDriver(kernel::CgroupTree* cgroups);
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

  // Kills what is in the cgroup and removes it (revert, crash recovery). Reaps children of the
  // caller among reap. Returns what it did. errors: transient (EBUSY after the wait), permanent
  // for an unreadable record.
  [[nodiscard]] static tl::expected<std::string, FaultError> removeStressCgroup(kernel::CgroupTree& cgroups,
                                                                                const std::string& cgroup,
                                                                                const std::vector<pid_t>& reap = {});
  [[nodiscard]] static tl::expected<std::string, FaultError> revertRecord(const nlohmann::json& undo,
                                                                          kernel::CgroupTree* cgroups);
  // Every cgroup below the root whose name starts with kStressCgroupPrefix (revert-all).
  [[nodiscard]] static std::vector<std::string> findStressCgroups(kernel::CgroupTree& cgroups);

 private:
  kernel::CgroupTree* cgroups_;
  unsigned counter_ = 0;
};

}  // namespace faultline::agent
