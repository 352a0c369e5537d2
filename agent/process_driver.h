// process.kill: a signal to the processes a selector picks (pid, or exact process name).
// Never targets pid 1, kernel threads, or the agent itself. A selector that matches nothing is
// an error that says what was searched. Reverting a kill changes nothing (a signal cannot be
// taken back); the fault's report lists the pids signalled.
#pragma once

#include "agent/fault.h"
#include "agent/kernel/process_table.h"

namespace faultline::agent {

class ProcessKillDriver final : public FaultDriver {
 public:
  // processes must outlive the driver.
  explicit ProcessKillDriver(kernel::ProcessTable& processes);
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

 private:
  kernel::ProcessTable& processes_;
};

}  // namespace faultline::agent
