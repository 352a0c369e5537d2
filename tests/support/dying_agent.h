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

#include <doctest/doctest.h>

#include <boost/asio/io_context.hpp>

#include "agent/faults/spec.h"
#include "agent/safety/journal.h"
#include "agent/session/agent.h"

namespace faultline::testing {

// In a forked child: opens the undo journal in stateDir, makes the driver (driver() runs in the
// child only, so what it builds lives and dies there), injects spec as faultId for 60 s through an
// Agent, and exits with the fault applied, its journal entry open, without reverting (_exit: no
// destructor runs). The parent REQUIREs that the child got that far (exit status 0; 2: the journal
// did not open, 3: the fault was not applied).
inline void agentDiesHoldingFault(const std::filesystem::path& stateDir,
                                  const std::function<agent::FaultDriver&()>& driver, const std::string& faultId,
                                  const v1::FaultSpec& spec) {
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    auto opened = agent::UndoJournal::open(stateDir);
    if (!opened) {
      ::_exit(2);
    }
    boost::asio::io_context io;
    agent::Agent agent(io, driver(), nullptr, opened->journal.get());
    v1::Inject inject;
    inject.set_fault_id(faultId);
    *inject.mutable_spec() = spec;
    *inject.mutable_duration() = toProto(std::chrono::seconds{60});
    agent.inject(inject);
    ::_exit(agent.activeCount() == 1 ? 0 : 3);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE_MESSAGE(WEXITSTATUS(status) == 0, "the agent child exited ", WEXITSTATUS(status),
                  " (2: no journal, 3: the fault was not applied)");
}

}  // namespace faultline::testing
