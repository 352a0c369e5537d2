#include "agent/faults/resource/stress_driver.h"

#include <chrono>
#include <cmath>
#include <thread>

#include <unistd.h>  // getpid

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "agent/faults/spec.h"
#include "agent/kernel/stress_worker.h"

namespace faultline::agent {
namespace {

using std::chrono::milliseconds;

constexpr uint64_t kCpuPeriodUs = 100'000;
constexpr uint64_t kMinQuotaUs = 1'000;  // the kernel's minimum cpu.max quota
constexpr uint64_t kMemoryHeadroom = uint64_t{32} << 20;
constexpr milliseconds kResidentWait{10'000};
constexpr milliseconds kEmptyWait{2'000};

FaultError failure(std::string_view kind, std::error_code code, std::string message) {
  return FaultError{code, fmt::format("{}: {}", kind, std::move(message))};
}

bool hasWord(std::string_view list, std::string_view word) {
  while (!list.empty()) {
    const auto space = list.find(' ');
    if (list.substr(0, space) == word) {
      return true;
    }
    if (space == std::string_view::npos) {
      break;
    }
    list.remove_prefix(space + 1);
  }
  return false;
}

std::string join(const std::string& parent, const std::string& name) {
  return parent == "/" ? "/" + name : parent + "/" + name;
}

void collect(kernel::CgroupTree& tree, const std::string& cgroup, int depth, std::vector<std::string>& out) {
  if (depth > 32) {
    return;
  }
  auto kids = tree.children(cgroup);
  if (!kids) {
    return;
  }
  for (const auto& k : *kids) {
    const std::string path = join(cgroup, k);
    if (k.rfind(kStressCgroupPrefix, 0) == 0) {
      out.push_back(path);
    } else {
      collect(tree, path, depth + 1, out);
    }
  }
}

class StressFault final : public AppliedFault {
 public:
  StressFault(kernel::CgroupTree& tree, std::string cgroup, std::vector<pid_t> workers, std::string description)
      : tree_(tree), cgroup_(std::move(cgroup)), workers_(std::move(workers)), description_(std::move(description)) {}
  ~StressFault() override {
    if (!removed_) {
      (void)revert();
    }
  }

  tl::expected<void, FaultError> revert() override {
    if (removed_) {
      return {};
    }
    auto removed = StressDriver::removeStressCgroup(tree_, cgroup_, workers_);
    if (!removed) {
      return tl::unexpected(removed.error());
    }
    removed_ = true;
    return {};
  }

  std::string describe() const override { return description_; }

 private:
  kernel::CgroupTree& tree_;
  std::string cgroup_;
  std::vector<pid_t> workers_;
  std::string description_;
  bool removed_ = false;
};

}  // namespace

StressDriver::StressDriver(kernel::CgroupTree* cgroups) : cgroups_(cgroups) {}

tl::expected<std::string, FaultError> StressDriver::removeStressCgroup(kernel::CgroupTree& cgroups,
                                                                       const std::string& cgroup,
                                                                       const std::vector<pid_t>& reap) {
  if (auto kids = cgroups.children(cgroup); !kids && kids.error() == std::errc::no_such_file_or_directory) {
    for (pid_t pid : reap) {
      kernel::reapWorker(pid, 100);
    }
    return fmt::format("cgroup {} was already gone", cgroup);
  }
  (void)cgroups.write(cgroup, "cgroup.freeze", "0");
  if (auto killed = cgroups.write(cgroup, "cgroup.kill", "1"); !killed) {
    // Kernels before 5.14 have no cgroup.kill.
    if (auto procs = cgroups.procs(cgroup)) {
      kernel::killWorkers(*procs);
    }
  }
  for (pid_t pid : reap) {
    kernel::reapWorker(pid, 1000);
  }
  auto empty = cgroups.waitEvent(cgroup, "populated", "0", kEmptyWait);
  if (!empty || !*empty) {
    return tl::unexpected(FaultError{empty ? std::make_error_code(std::errc::device_or_resource_busy) : empty.error(),
                                     fmt::format("stress cgroup {} still holds processes after cgroup.kill", cgroup)});
  }
  if (auto removed = cgroups.remove(cgroup); !removed && removed.error() != std::errc::no_such_file_or_directory) {
    return tl::unexpected(FaultError{
        removed.error(), fmt::format("cannot remove stress cgroup {}: {}", cgroup, removed.error().message())});
  }
  if (auto still = cgroups.children(cgroup); still) {
    return tl::unexpected(FaultError{std::make_error_code(std::errc::device_or_resource_busy),
                                     fmt::format("stress cgroup {} is still there after rmdir", cgroup)});
  }
  return fmt::format("removed stress cgroup {}", cgroup);
}

tl::expected<std::string, FaultError> StressDriver::revertRecord(const nlohmann::json& undo,
                                                                 kernel::CgroupTree* cgroups) {
  if (!undo.is_object() || !undo.contains("cgroup") || !undo["cgroup"].is_string() ||
      undo["cgroup"].get<std::string>().find(kStressCgroupPrefix) == std::string::npos) {
    FaultError error{std::make_error_code(std::errc::invalid_argument),
                     fmt::format("unreadable stress undo record {}", undo.dump())};
    error.permanent = true;
    return tl::unexpected(error);
  }
  if (cgroups == nullptr) {
    return tl::unexpected(
        FaultError{std::make_error_code(std::errc::not_supported), kernel::cgroupV2MissingMessage("stress revert")});
  }
  return removeStressCgroup(*cgroups, undo["cgroup"].get<std::string>());
}

std::vector<std::string> StressDriver::findStressCgroups(kernel::CgroupTree& cgroups) {
  std::vector<std::string> out;
  collect(cgroups, "/", 0, out);
  return out;
}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> StressDriver::apply(const v1::FaultSpec& spec,
                                                                            const PersistUndo& persist) {
  const std::string_view kind = faultKindName(spec);
  if (auto valid = validateFaultSpec(spec); !valid) {
    return tl::unexpected(failure(kind, std::make_error_code(std::errc::invalid_argument),
                                  fmt::format("invalid spec: {}: {}", valid.error().field, valid.error().message)));
  }
  const bool cpu = spec.kind_case() == v1::FaultSpec::kStressCpu;
  if (!cpu && spec.kind_case() != v1::FaultSpec::kStressMemory) {
    return tl::unexpected(
        failure(kind, std::make_error_code(std::errc::invalid_argument), "the stress driver cannot apply this kind"));
  }
  if (cgroups_ == nullptr) {
    return tl::unexpected(
        FaultError{std::make_error_code(std::errc::not_supported), kernel::cgroupV2MissingMessage(kind)});
  }
  auto& tree = *cgroups_;
  const std::string controller = cpu ? "cpu" : "memory";
  auto self = tree.selfCgroup();
  if (!self) {
    return tl::unexpected(failure(kind, self.error(), "cannot read the agent's cgroup from /proc/self/cgroup"));
  }
  const std::string parent = kernel::parentCgroup(*self);
  auto available = tree.read(parent, "cgroup.controllers");
  if (!available || !hasWord(*available, controller)) {
    return tl::unexpected(failure(
        kind, std::make_error_code(std::errc::not_supported),
        fmt::format("the {} controller is not available in cgroup v2 at {} (cgroup {} has: {}); on hybrid hosts it is "
                    "bound to cgroup v1: boot with systemd.unified_cgroup_hierarchy=1",
                    controller, tree.mountPoint(), parent,
                    available ? (available->empty() ? "none" : *available) : "?")));
  }
  auto enabled = tree.read(parent, "cgroup.subtree_control");
  if (!enabled || !hasWord(*enabled, controller)) {
    if (auto on = tree.write(parent, "cgroup.subtree_control", "+" + controller); !on) {
      return tl::unexpected(failure(kind, on.error(),
                                    fmt::format("cannot enable the {} controller for cgroup {}'s children: {}",
                                                controller, parent, on.error().message())));
    }
  }
  const std::string cgroup =
      join(parent, fmt::format("{}{}-{}-{}", kStressCgroupPrefix, cpu ? "cpu" : "mem", ::getpid(), ++counter_));
  const nlohmann::json undo = {{"mount", tree.mountPoint()}, {"cgroup", cgroup}};
  if (persist) {
    if (auto persisted = persist(undo); !persisted) {
      return tl::unexpected(persisted.error());
    }
  }
  if (auto created = tree.create(cgroup); !created) {
    return tl::unexpected(
        failure(kind, created.error(), fmt::format("cannot create cgroup {}: {}", cgroup, created.error().message())));
  }
  std::vector<pid_t> pids;
  const auto rollBack = [&](FaultError error) -> tl::unexpected<FaultError> {
    if (auto removed = removeStressCgroup(tree, cgroup, pids); !removed) {
      error.mayBeChanged = true;
      error.message += "; rolling back failed too: " + removed.error().message;
    }
    return tl::unexpected(std::move(error));
  };
  // Limits first, then the workers.
  std::string limits;
  if (cpu) {
    const auto& c = spec.stress_cpu();
    const auto quota = std::max<uint64_t>(
        kMinQuotaUs, static_cast<uint64_t>(std::llround(c.workers() * c.load_percent() / 100.0 * kCpuPeriodUs)));
    limits = fmt::format("{} {}", quota, kCpuPeriodUs);
    if (auto w = tree.write(cgroup, "cpu.max", limits); !w) {
      return rollBack(
          failure(kind, w.error(), fmt::format("cannot set cpu.max of {}: {}", cgroup, w.error().message())));
    }
  } else {
    const uint64_t max = spec.stress_memory().bytes() + kMemoryHeadroom;
    limits = std::to_string(max);
    if (auto w = tree.write(cgroup, "memory.max", limits); !w) {
      return rollBack(
          failure(kind, w.error(), fmt::format("cannot set memory.max of {}: {}", cgroup, w.error().message())));
    }
    (void)tree.write(cgroup, "memory.swap.max", "0");  // absent without swap accounting
  }
  const uint32_t workers = cpu ? spec.stress_cpu().workers() : 1;
  for (uint32_t i = 0; i < workers; ++i) {
    kernel::StressWork work;
    work.kind = cpu ? kernel::StressWork::Kind::kCpu : kernel::StressWork::Kind::kMemory;
    work.bytes = cpu ? 0 : spec.stress_memory().bytes();
    auto worker = kernel::forkStressWorker(work);
    if (!worker) {
      return rollBack(failure(kind, worker.error(), fmt::format("cannot fork a worker: {}", worker.error().message())));
    }
    pids.push_back(worker->pid);
    if (auto moved = tree.write(cgroup, "cgroup.procs", std::to_string(worker->pid)); !moved) {
      kernel::releaseWorker(*worker, false);
      return rollBack(
          failure(kind, moved.error(),
                  fmt::format("cannot move worker {} into {}: {}", worker->pid, cgroup, moved.error().message())));
    }
    kernel::releaseWorker(*worker);
  }
  std::string description;
  if (cpu) {
    description = fmt::format("{} CPU worker(s) at {:g}% load in cgroup {} (cpu.max {}); pids {}", workers,
                              spec.stress_cpu().load_percent(), cgroup, limits, fmt::join(pids, ", "));
  } else {
    const uint64_t bytes = spec.stress_memory().bytes();
    const auto deadline = std::chrono::steady_clock::now() + kResidentWait;
    uint64_t current = 0;
    for (;;) {
      if (auto text = tree.read(cgroup, "memory.current")) {
        current = std::strtoull(text->c_str(), nullptr, 10);
      }
      if (current >= bytes || std::chrono::steady_clock::now() >= deadline) {
        break;
      }
      auto populated = tree.waitEvent(cgroup, "populated", "0", milliseconds{0});
      if (populated && *populated) {
        return rollBack(failure(
            kind, std::make_error_code(std::errc::not_enough_memory),
            fmt::format("the memory worker died before {} bytes were resident (memory.max {})", bytes, limits)));
      }
      std::this_thread::sleep_for(milliseconds{10});
    }
    description = fmt::format("{} bytes resident in cgroup {} (memory.current {}, memory.max {}); pid {}", bytes,
                              cgroup, current, limits, pids.front());
  }
  return std::make_unique<StressFault>(tree, cgroup, std::move(pids), std::move(description));
}

}  // namespace faultline::agent
