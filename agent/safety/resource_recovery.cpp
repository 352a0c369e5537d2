// Crash recovery and revert-all for the process and cgroup faults: the host's ResourceReverter.
#include <fmt/format.h>

#include "agent/faults/process/pause_driver.h"
#include "agent/faults/resource/squeeze_driver.h"
#include "agent/faults/resource/stress_driver.h"
#include "agent/kernel/cgroup_tree.h"
#include "agent/kernel/process_table.h"
#include "agent/safety/recovery.h"
#include "agent/safety/revert_all.h"

namespace faultline::agent {
namespace {

// The hierarchy the record was written against (its "mount", when it is a cgroup2 mount now), else
// the host's.
std::unique_ptr<kernel::CgroupTree> cgroupsFor(const nlohmann::json& undo) {
  if (undo.is_object() && undo.contains("mount") && undo["mount"].is_string()) {
    return kernel::openCgroupTreeFor(undo["mount"].get<std::string>());
  }
  return kernel::openCgroupTreeFor("");
}

}  // namespace

tl::expected<std::string, FaultError> revertResourceRecord(const JournalEntry& entry) {
  if (entry.kind == "process.pause") {
    auto processes = kernel::openProcessTable();
    auto cgroups = cgroupsFor(entry.undo);
    return ProcessPauseDriver::revertRecord(entry.undo, *processes, cgroups.get());
  }
  if (entry.kind == "stress.cpu" || entry.kind == "stress.memory") {
    auto cgroups = cgroupsFor(entry.undo);
    return StressDriver::revertRecord(entry.undo, cgroups.get());
  }
  if (entry.kind == "cgroup.squeeze") {
    auto cgroups = cgroupsFor(entry.undo);
    return CgroupSqueezeDriver::revertRecord(entry.undo, cgroups.get());
  }
  FaultError error{std::make_error_code(std::errc::not_supported),
                   fmt::format("this agent cannot revert a '{}' record: {}", entry.kind, entry.undo.dump())};
  error.permanent = true;
  return tl::unexpected(error);
}

void removeStressCgroups(kernel::CgroupTree& cgroups, RevertAllReport& report) {
  for (const auto& cgroup : StressDriver::findStressCgroups(cgroups)) {
    auto removed = StressDriver::removeStressCgroup(cgroups, cgroup);
    if (removed) {
      report.removed.push_back(fmt::format("stress cgroup {} (its workers killed)", cgroup));
    } else {
      report.failed.push_back(removed.error().message);
    }
  }
}

}  // namespace faultline::agent
