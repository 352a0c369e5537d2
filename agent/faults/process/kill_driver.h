// process.kill: a signal to the processes a selector picks (see process_selector.h for matching
// and for what is never chosen). A selector that matches nothing (or only protected processes) is
// an error that says what was searched and what was skipped.
//
// Each chosen process is pinned as soon as it is selected (kernel::PinnedProcess: a pidfd checked
// against the start time the selection saw) and signalled through it: a pid reused meanwhile is
// never hit, and a process that rewrote its command line since (PostgreSQL, nginx workers) is
// still the one chosen. A process is reported exited only when it has (pidfd readable, or its pid
// gone or holding another start time). After the signal, the driver waits up to 200 ms in all for
// the signalled processes to exit and reports, per process, its pid, command line (as selected)
// and whether it exited (AppliedFault::processHits()). With `every`, a thread of the applied
// fault selects and signals again at that interval until revert() (the agent calls it at the
// fault's end); a round that matches nothing is noted, not an error (the service may be down).
// Reverting a kill stops the repetition and changes nothing else (a signal cannot be taken back).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "agent/faults/fault.h"
#include "agent/faults/process/process_selector.h"
#include "agent/kernel/process_table.h"

namespace faultline::agent {

class ProcessKillDriver final : public FaultDriver {
 public:
  // processes must outlive the driver and every fault it applied; the driver serialises its own
  // (and its repeating faults') use of it. rules: names protected in addition to the always
  // protected ones, and how many processes one fault may match and signal (checkProcessLimits(): a
  // round that breaks them signals nothing). seed: the random choice of count/percent.
  explicit ProcessKillDriver(kernel::ProcessTable& processes, ProcessRules rules = {},
                             uint64_t seed = std::random_device{}());
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

  // One round: select and signal. Used by apply() and by the repetition thread. Locks the table.
  struct Round {
    std::vector<v1::ProcessHit> hits;
    std::vector<std::string> skipped;  // protected matches
  };
  [[nodiscard]] tl::expected<Round, FaultError> killOnce(const v1::ProcessSelector& selector, int sig);

 private:
  std::mutex mutex_;  // guards processes_, rng_ and picker_
  kernel::ProcessTable& processes_;
  std::mt19937_64 rng_;
  ProcessPicker picker_;
  ProcessLimits limits_;
};

// "SIGKILL", or "signal 40" for one without an abbreviation.
[[nodiscard]] std::string signalName(int sig);

}  // namespace faultline::agent
