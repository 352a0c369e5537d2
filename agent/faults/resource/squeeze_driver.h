// cgroup.squeeze: lowers limits of an existing cgroup v2 for the fault's duration: cpu.max (from
// cpus: "QUOTA 100000" with QUOTA = cpus x 100000 us), memory.high (bytes), pids.max. The
// previous values are read first and journalled as the kernel printed them:
//   {"mount": "/sys/fs/cgroup", "cgroup": "/a/b", "previous": {"cpu.max": "max 100000", "pids.max": "max"}}
// then each file is written. revert() writes each previous value back and reads it again: the
// fault is reverted only when every file reads exactly as before. A squeeze that fails half-way
// restores what it changed before returning the error.
// errors: ENOENT (no such cgroup, or the controller is not enabled for it: its file is missing,
// named in the message), EOPNOTSUPP without cgroup v2, the kernel's write errors (EINVAL, EBUSY).
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "agent/faults/fault.h"
#include "agent/kernel/cgroup_tree.h"

namespace faultline::agent {

class CgroupSqueezeDriver final : public FaultDriver {
 public:
  // cgroups (null: no cgroup v2 on this host) must outlive the driver and its faults.
  explicit CgroupSqueezeDriver(kernel::CgroupTree* cgroups);
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

  // Restores the previous values a record holds (crash recovery, revert-all). A cgroup that is
  // gone is reported as such, not as a failure.
  [[nodiscard]] static tl::expected<std::string, FaultError> revertRecord(const nlohmann::json& undo,
                                                                          kernel::CgroupTree* cgroups);

 private:
  kernel::CgroupTree* cgroups_;
};

}  // namespace faultline::agent
