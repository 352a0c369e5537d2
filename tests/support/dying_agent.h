// Test support: an agent that dies holding a fault, as one killed with SIGKILL would leave the
// host, for the tests of the recovery at the next start. Needs what the fault needs (root for
// network faults).
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>

#include "agent/faults/spec.h"
#include "agent/safety/journal.h"
#include "agent/session/agent.h"

namespace faultline::testing {

// A fault for agentDiesHoldingFaults(): its id and what it is.
struct HeldFault {
  std::string id;
  v1::FaultSpec spec;
};

// In a forked child: opens the undo journal in stateDir, makes the driver (driver() runs in the
// child only, so what it builds lives and dies there), injects each of faults for 60 s through an
// Agent, and exits with them applied, their journal entries open, without reverting (_exit: no
// destructor runs). The parent REQUIREs that the child got that far (exit status 0; 2: the journal
// did not open, 3: not every fault was applied).
inline void agentDiesHoldingFaults(const std::filesystem::path& stateDir,
                                   const std::function<agent::FaultDriver&()>& driver,
                                   const std::vector<HeldFault>& faults) {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto opened = agent::UndoJournal::open(stateDir);
    if (!opened) {
      ::_exit(2);
    }
    boost::asio::io_context io;
    agent::Agent agent(io, driver(), nullptr, opened->journal.get());
    for (const auto& fault : faults) {
      v1::Inject inject;
      inject.set_fault_id(fault.id);
      *inject.mutable_spec() = fault.spec;
      *inject.mutable_duration() = toProto(std::chrono::seconds{60});
      agent.inject(inject);
    }
    ::_exit(agent.activeCount() == faults.size() ? 0 : 3);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE_MESSAGE(WEXITSTATUS(status) == 0, "the agent child exited ", WEXITSTATUS(status),
                  " (2: no journal, 3: not every fault was applied)");
}

// agentDiesHoldingFaults() with the one fault spec as faultId.
inline void agentDiesHoldingFault(const std::filesystem::path& stateDir,
                                  const std::function<agent::FaultDriver&()>& driver, const std::string& faultId,
                                  const v1::FaultSpec& spec) {
  agentDiesHoldingFaults(stateDir, driver, {HeldFault{faultId, spec}});
}

}  // namespace faultline::testing
