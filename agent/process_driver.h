// process.kill: a signal to the processes a selector picks (pid, or exact process name).
// Never targets pid 1, kernel threads, the agent itself or its ancestors, sshd, or a process whose
// name is in the policy's processes.protect list. A selector that matches nothing (or only
// protected processes) is an error that says what was searched and what was skipped. Reverting a kill changes nothing
// (a signal cannot be taken back); the fault's report lists the pids signalled.
#pragma once

#include <string>
#include <vector>

#include "agent/fault.h"
#include "agent/kernel/process_table.h"

namespace faultline::agent {

// A process name that is never signalled, and the rule that protects it (for reports), e.g.
// {"nginx", "policy /etc/faultline/policy.yaml:9 (processes.protect: nginx)"}. The name matches
// like a kill selector's: comm, the executable's base name, or argv[0]'s base name.
struct ProtectedName {
  std::string name;
  std::string rule;
};

// Protected on every agent, whatever the policy says.
inline constexpr const char* kAlwaysProtectedName = "sshd";

class ProcessKillDriver final : public FaultDriver {
 public:
  // processes must outlive the driver. protect: names protected in addition to the always
  // protected ones (pid 1, kernel threads, the agent and its ancestors, sshd).
  explicit ProcessKillDriver(kernel::ProcessTable& processes, std::vector<ProtectedName> protect = {});
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

 private:
  kernel::ProcessTable& processes_;
  std::vector<ProtectedName> protect_;
};

}  // namespace faultline::agent
