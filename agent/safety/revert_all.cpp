#include "agent/safety/revert_all.h"

#include <cstdlib>

#include <fmt/format.h>

#include "agent/safety/journal.h"
#include "agent/safety/recovery.h"

namespace faultline::agent {
namespace {

std::string whereText(const std::string& netns) {
  return netns.empty() ? "this process's network namespace" : netns;
}

std::string handleText(uint32_t handle) {
  const uint32_t minor = handle & 0xFFFF;
  return minor != 0 ? fmt::format("{:x}:{:x}", handle >> 16, minor) : fmt::format("{:x}:", handle >> 16);
}

bool isFaultline(uint32_t handle) {
  return (handle >> 16) == kFaultlineQdiscMajor;
}

void revertJournal(const std::filesystem::path& stateDir, const QdiscTableOpener& open, RevertAllReport& report) {
  const auto file = stateDir / UndoJournal::kFileName;
  std::error_code ec;
  if (!std::filesystem::exists(file, ec)) {
    report.notes.push_back(fmt::format("no undo journal at {}", file.string()));
    return;
  }
  auto opened = UndoJournal::open(stateDir);
  if (!opened && opened.error().code == std::errc::device_or_resource_busy) {
    report.agentRunning = true;
    report.failed.push_back(fmt::format(
        "{}; nothing was reverted or removed: a running agent reverts its own faults (stop it with SIGTERM, e.g. "
        "systemctl stop faultline-agent, or use faultline halt), and sweeping now would remove its live faults",
        opened.error().message));
    return;
  }
  if (!opened) {
    report.failed.push_back(
        fmt::format("the undo journal's open entries were not reverted: {}", opened.error().message));
    return;
  }
  for (const auto& problem : opened->problems) {
    report.notes.push_back(fmt::format("undo journal {}: skipped {}", file.string(), problem));
  }
  auto recovered = recoverOpenFaults(*opened->journal, opened->open, open);
  for (auto& line : recovered.reverted) {
    report.reverted.push_back(std::move(line));
  }
  for (auto& line : recovered.failed) {
    report.failed.push_back(std::move(line));
  }
}

// faultline's ifb devices (kind ifb, named flt-ifb<hex index>) and the ingress qdiscs redirecting
// to them, on the interface whose index the name carries; before the roots, so that an ifb's own
// fa17: root goes with it.
void removeIngressPaths(kernel::QdiscTable& table, const std::string& netns, RevertAllReport& report) {
  auto links = table.links();
  if (!links) {
    report.failed.push_back(
        fmt::format("cannot list the interfaces in {}: {}", whereText(netns), links.error().message()));
    return;
  }
  for (const auto& link : *links) {
    if (link.kind != "ifb" || !link.name.starts_with(kIfbPrefix)) {
      continue;
    }
    std::string interface;
    const std::string hex = link.name.substr(kIfbPrefix.size());
    char* end = nullptr;
    const unsigned long index = std::strtoul(hex.c_str(), &end, 16);
    if (!hex.empty() && end != nullptr && *end == '\0') {
      for (const auto& other : *links) {
        if (static_cast<unsigned long>(other.index) == index) {
          interface = other.name;
        }
      }
    }
    auto removed = removeIngressPath(table, netns, interface, link.name);
    if (!removed) {
      report.failed.push_back(fmt::format("ifb {} in {}: {}", link.name, whereText(netns), removed.error().message));
    } else {
      report.removed.push_back(fmt::format("ingress path {}{} in {}: {}", link.name,
                                           interface.empty() ? "" : fmt::format(" of {}", interface), whereText(netns),
                                           *removed));
    }
  }
}

void scanNamespace(const std::string& netns, const QdiscTableOpener& open, const SteeringOpener& steering,
                   RevertAllReport& report) {
  auto table = open(netns);
  if (!table) {
    if (table.error() == std::errc::no_such_file_or_directory) {
      report.notes.push_back(fmt::format("{} went away before it was scanned", whereText(netns)));
    } else {
      report.failed.push_back(fmt::format("cannot scan {}: {}", whereText(netns), table.error().message()));
    }
    return;
  }
  ++report.namespaces;
  if (steering) {
    auto sweep = removeAllSteering(netns, steering);
    report.removed.insert(report.removed.end(), sweep.removed.begin(), sweep.removed.end());
    report.failed.insert(report.failed.end(), sweep.failed.begin(), sweep.failed.end());
    report.kept.insert(report.kept.end(), sweep.kept.begin(), sweep.kept.end());
  }
  removeIngressPaths(**table, netns, report);
  auto roots = (*table)->roots();
  if (!roots) {
    report.failed.push_back(
        fmt::format("cannot list the root qdiscs in {}: {}", whereText(netns), roots.error().message()));
    return;
  }
  report.interfaces += roots->size();
  for (const auto& [interface, root] : *roots) {
    if (!isFaultline(root.handle)) {
      continue;
    }
    const std::string what =
        fmt::format("{} {} on {} in {}", root.kind, handleText(root.handle), interface, whereText(netns));
    auto deleted = (*table)->deleteRoot(interface);
    if (!deleted && deleted.error() != std::errc::no_such_device &&
        deleted.error() != std::errc::no_such_file_or_directory) {
      report.failed.push_back(fmt::format("{}: cannot delete it: {}", what, deleted.error().message()));
      continue;
    }
    // Read back: gone with its interface, or replaced by the kernel's default (or anyone's).
    auto after = (*table)->root(interface);
    if (!after && after.error() != std::errc::no_such_device) {
      report.failed.push_back(fmt::format("{}: cannot read it back: {}", what, after.error().message()));
    } else if (after && *after && isFaultline((*after)->handle)) {
      report.failed.push_back(fmt::format("{}: still there after it was deleted", what));
    } else {
      report.removed.push_back(what);
    }
  }
}

}  // namespace

RevertAllReport revertAllFaults(const std::filesystem::path& stateDir, const std::vector<std::string>& namespaces,
                                const QdiscTableOpener& open, const SteeringOpener& steering) {
  RevertAllReport report;
  revertJournal(stateDir, open, report);
  if (report.agentRunning) {
    return report;
  }
  for (const auto& netns : namespaces) {
    scanNamespace(netns, open, steering, report);
  }
  return report;
}

}  // namespace faultline::agent
