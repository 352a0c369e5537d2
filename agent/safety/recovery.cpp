#include "agent/safety/recovery.h"

#include "agent/faults/network/net_target.h"
#include "agent/faults/network/nfqueue_driver.h"
#include "agent/kernel/packet_steering.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

namespace faultline::agent {

namespace {

// NetworkFaultDriver::revertRecord, with the namespace found again by its identity when its path
// no longer names it, and the namespace's pin released once the fault is reverted.
tl::expected<std::string, FaultError> revertNetworkRecord(nlohmann::json undo, const QdiscTableOpener& openTable) {
  const auto relocation = relocateNetns(undo);
  std::string note;
  tl::expected<std::string, FaultError> reverted;
  if (relocation.state == NetnsRelocation::State::kGone) {
    reverted = relocation.note + "; nothing to revert";
  } else {
    if (relocation.state == NetnsRelocation::State::kMoved) {
      note = " (" + relocation.note + ")";
    }
    reverted = NfqueueFaultDriver::isNfqueueRecord(undo)
                   ? NfqueueFaultDriver::revertRecord(undo, kernel::openPacketSteering)
                   : NetworkFaultDriver::revertRecord(undo, openTable);
  }
  if (!reverted) {
    return reverted;
  }
  if (undo.is_object() && undo.contains("pin") && undo["pin"].is_string()) {
    if (auto released = releaseNetnsPin(undo["pin"].get<std::string>()); !released) {
      note += "; " + released.error();
    }
  }
  return *reverted + note;
}

}  // namespace

RecoveryReport recoverOpenFaults(UndoJournal& journal, const std::vector<JournalEntry>& open,
                                 const QdiscTableOpener& openTable, const ResourceReverter& revertResource) {
  RecoveryReport report;
  for (const auto& entry : open) {
    const std::string name = fmt::format("fault {} ({})", entry.faultId, entry.kind);
    bool closeIt = false;
    if (entry.undo.is_null()) {
      report.reverted.push_back(fmt::format("{}: nothing to undo", name));
      report.revertedFaults.emplace_back(entry.faultId, "nothing to undo");
      closeIt = true;
    } else {
      const bool network = entry.kind.rfind("network.", 0) == 0 || entry.kind.empty();
      auto reverted = network ? revertNetworkRecord(entry.undo, openTable) : revertResource(entry);
      if (reverted) {
        report.reverted.push_back(fmt::format("{}: reverted: {}", name, *reverted));
        report.revertedFaults.emplace_back(entry.faultId, *reverted);
        closeIt = true;
      } else if (reverted.error().permanent) {
        report.failed.push_back(fmt::format("{}: cannot be reverted, given up: {}", name, reverted.error().message));
        closeIt = true;
      } else {
        report.failed.push_back(
            fmt::format("{}: revert failed, left open for the next start: {}", name, reverted.error().message));
      }
    }
    if (closeIt) {
      if (auto done = journal.done(entry.faultId); !done) {
        report.failed.push_back(fmt::format("{}: cannot mark it done: {}", name, done.error().message));
      }
    }
  }
  return report;
}

tl::expected<std::unique_ptr<UndoJournal>, JournalError> openJournalAndRecover(
    const std::filesystem::path& stateDir, const QdiscTableOpener& openTable, std::vector<v1::FaultReport>* recovered) {
  auto opened = UndoJournal::open(stateDir);
  if (!opened) {
    return tl::unexpected(opened.error());
  }
  for (const auto& problem : opened->problems) {
    spdlog::warn("undo journal {}: skipped {}", opened->journal->path().string(), problem);
  }
  if (!opened->open.empty()) {
    spdlog::warn("undo journal {}: {} fault(s) left by an earlier run; reverting them",
                 opened->journal->path().string(), opened->open.size());
  }
  const auto report = recoverOpenFaults(*opened->journal, opened->open, openTable);
  for (const auto& line : report.reverted) {
    spdlog::info("recovery: {}", line);
  }
  for (const auto& line : report.failed) {
    spdlog::critical("recovery: {} (the host may still carry this fault)", line);
  }
  if (recovered != nullptr) {
    for (const auto& [faultId, detail] : report.revertedFaults) {
      v1::FaultReport r;
      r.set_fault_id(faultId);
      r.set_state(v1::FAULT_STATE_EXPIRED);
      r.set_detail("reverted by crash recovery when the agent started: " + detail);
      *r.mutable_at() = nowTimestamp();
      recovered->push_back(std::move(r));
    }
  }
  return std::move(opened->journal);
}

}  // namespace faultline::agent
