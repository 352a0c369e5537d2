// Crash recovery: on start, before the session connects, the agent reverts every fault its undo
// journal still holds open (begun and not done), marks each reverted one done, and logs what it
// reverted and what failed. A failed revert stays open for the next start, except a permanent
// one (the root is no longer faultline's, or a record that cannot be read), which is marked done
// after an error log: retrying can never succeed.
#pragma once

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <tl/expected.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/safety/journal.h"
#include "faultline/v1/agent_gateway.pb.h"

namespace faultline::agent {

struct RecoveryReport {
  std::vector<std::string> reverted;  // "fault f1 (network.bandwidth): ..."
  // The same faults as (fault id, what was restored), for the controller: the agent sends each as
  // an EXPIRED report once it has registered, so a run's record learns how its fault ended.
  std::vector<std::pair<std::string, std::string>> revertedFaults;
  std::vector<std::string> failed;    // still open (transient) or given up (permanent)
  std::vector<std::string> problems;  // journal lines that did not parse
};

// Reverts the undo record of a fault that is not a network fault (process.pause, stress.*,
// cgroup.squeeze); returns what it did. errors: FaultError (permanent when it can never succeed).
using ResourceReverter = std::function<tl::expected<std::string, FaultError>(const JournalEntry&)>;

// The host's ResourceReverter: /proc, pidfds and the cgroup v2 hierarchy the record names
// (agent/safety/resource_recovery.cpp).
[[nodiscard]] tl::expected<std::string, FaultError> revertResourceRecord(const JournalEntry& entry);

// Reverts open (as UndoJournal::open() returned them): network faults through revertRecord with
// open tables from openTable, the others through revertResource; marks them done in journal.
// Blocks for the kernel calls and disk syncs.
[[nodiscard]] RecoveryReport recoverOpenFaults(UndoJournal& journal, const std::vector<JournalEntry>& open,
                                               const QdiscTableOpener& openTable,
                                               const ResourceReverter& revertResource = revertResourceRecord);

// Opens stateDir's journal, recovers as above (logging every line of the report) and returns the
// journal for the Agent. When recovered is given, each fault reverted is appended to it as an
// EXPIRED report ("reverted by crash recovery when the agent started: ..."), for the agent to
// send once it has registered (SessionOptions::initialReports).
// errors: the journal's (e.g. a read-only state directory).
[[nodiscard]] tl::expected<std::unique_ptr<UndoJournal>, JournalError> openJournalAndRecover(
    const std::filesystem::path& stateDir, const QdiscTableOpener& openTable,
    std::vector<v1::FaultReport>* recovered = nullptr);

}  // namespace faultline::agent
