#include "agent/faults/resource/squeeze_driver.h"

#include <cmath>
#include <map>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "agent/faults/spec.h"

namespace faultline::agent {
namespace {

constexpr std::string_view kKind = "cgroup.squeeze";
constexpr uint64_t kCpuPeriodUs = 100'000;

FaultError failure(std::error_code code, std::string message) {
  return FaultError{code, fmt::format("{}: {}", kKind, std::move(message))};
}

using Values = std::map<std::string, std::string>;  // file -> value

// Writes every value and reads it back; collects what did not hold.
tl::expected<void, FaultError> restore(kernel::CgroupTree& tree, const std::string& cgroup, const Values& previous) {
  std::vector<std::string> failed;
  std::error_code first;
  for (const auto& [file, value] : previous) {
    auto written = tree.write(cgroup, file, value);
    if (!written && written.error() == std::errc::no_such_file_or_directory) {
      if (auto gone = tree.children(cgroup); !gone) {
        continue;  // the cgroup itself is gone: nothing left to restore
      }
    }
    auto now = tree.read(cgroup, file);
    if (!now || *now != value) {
      first = first ? first : (written ? std::make_error_code(std::errc::io_error) : written.error());
      failed.push_back(fmt::format("{} reads '{}', not '{}'{}", file, now ? *now : now.error().message(), value,
                                   written ? "" : " (write: " + written.error().message() + ")"));
    }
  }
  if (!failed.empty()) {
    return tl::unexpected(failure(first, fmt::format("cgroup {} not restored: {}", cgroup, fmt::join(failed, "; "))));
  }
  return {};
}

std::string describeValues(const Values& v) {
  std::vector<std::string> parts;
  for (const auto& [file, value] : v) {
    parts.push_back(fmt::format("{} '{}'", file, value));
  }
  return fmt::format("{}", fmt::join(parts, ", "));
}

class Squeezed final : public AppliedFault {
 public:
  Squeezed(kernel::CgroupTree& tree, std::string cgroup, Values previous, std::string description)
      : tree_(tree), cgroup_(std::move(cgroup)), previous_(std::move(previous)), description_(std::move(description)) {}

  tl::expected<void, FaultError> revert() override {
    if (restored_) {
      return {};
    }
    if (auto r = restore(tree_, cgroup_, previous_); !r) {
      return r;
    }
    restored_ = true;
    return {};
  }
  std::string describe() const override { return description_; }

 private:
  kernel::CgroupTree& tree_;
  std::string cgroup_;
  Values previous_;
  std::string description_;
  bool restored_ = false;
};

}  // namespace

CgroupSqueezeDriver::CgroupSqueezeDriver(kernel::CgroupTree* cgroups) : cgroups_(cgroups) {}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> CgroupSqueezeDriver::apply(const v1::FaultSpec& spec,
                                                                                   const PersistUndo& persist) {
  if (auto valid = validateFaultSpec(spec); !valid) {
    return tl::unexpected(failure(std::make_error_code(std::errc::invalid_argument),
                                  fmt::format("invalid spec: {}: {}", valid.error().field, valid.error().message)));
  }
  if (spec.kind_case() != v1::FaultSpec::kCgroupSqueeze) {
    return tl::unexpected(failure(std::make_error_code(std::errc::invalid_argument),
                                  fmt::format("the squeeze driver cannot apply {}", faultKindName(spec))));
  }
  if (cgroups_ == nullptr) {
    return tl::unexpected(
        FaultError{std::make_error_code(std::errc::not_supported), kernel::cgroupV2MissingMessage(kKind)});
  }
  auto& tree = *cgroups_;
  const auto& q = spec.cgroup_squeeze();
  const std::string& cgroup = q.cgroup();
  if (auto exists = tree.children(cgroup); !exists) {
    return tl::unexpected(failure(
        exists.error(), fmt::format("no cgroup {} under {}: {}", cgroup, tree.mountPoint(), exists.error().message())));
  }
  Values wanted;
  if (q.has_cpus()) {
    wanted["cpu.max"] = fmt::format(
        "{} {}", std::max<uint64_t>(1000, static_cast<uint64_t>(std::llround(q.cpus() * kCpuPeriodUs))), kCpuPeriodUs);
  }
  if (q.has_memory_high_bytes()) {
    wanted["memory.high"] = std::to_string(q.memory_high_bytes());
  }
  if (q.has_pids_max()) {
    wanted["pids.max"] = std::to_string(q.pids_max());
  }
  Values previous;
  for (const auto& [file, value] : wanted) {
    auto before = tree.read(cgroup, file);
    if (!before) {
      const auto controller = file.substr(0, file.find('.'));
      return tl::unexpected(failure(
          before.error(),
          before.error() == std::errc::no_such_file_or_directory
              ? fmt::format("cgroup {} has no {}: the {} controller is not enabled for it (enable it in its parent's "
                            "cgroup.subtree_control; on hybrid hosts it may be bound to cgroup v1)",
                            cgroup, file, controller)
              : fmt::format("cannot read {} of {}: {}", file, cgroup, before.error().message())));
    }
    previous[file] = *before;
  }
  if (persist) {
    if (auto persisted = persist({{"mount", tree.mountPoint()}, {"cgroup", cgroup}, {"previous", previous}});
        !persisted) {
      return tl::unexpected(persisted.error());
    }
  }
  Values changed;
  for (const auto& [file, value] : wanted) {
    changed[file] = previous[file];
    if (auto written = tree.write(cgroup, file, value); !written) {
      FaultError error = failure(written.error(), fmt::format("cannot write {} '{}' to cgroup {}: {}", file, value,
                                                              cgroup, written.error().message()));
      if (auto undone = restore(tree, cgroup, changed); !undone) {
        error.mayBeChanged = true;
        error.message += "; rolling back failed too: " + undone.error().message;
      }
      return tl::unexpected(std::move(error));
    }
  }
  std::string description =
      fmt::format("cgroup {}: {} (were {})", cgroup, describeValues(wanted), describeValues(previous));
  return std::make_unique<Squeezed>(tree, cgroup, std::move(previous), std::move(description));
}

tl::expected<std::string, FaultError> CgroupSqueezeDriver::revertRecord(const nlohmann::json& undo,
                                                                        kernel::CgroupTree* cgroups) {
  Values previous;
  std::string cgroup;
  try {
    cgroup = undo.at("cgroup").get<std::string>();
    previous = undo.at("previous").get<Values>();
  } catch (const nlohmann::json::exception& e) {
    FaultError error = failure(std::make_error_code(std::errc::invalid_argument),
                               fmt::format("unreadable undo record {}: {}", undo.dump(), e.what()));
    error.permanent = true;
    return tl::unexpected(error);
  }
  if (cgroups == nullptr) {
    return tl::unexpected(
        FaultError{std::make_error_code(std::errc::not_supported), kernel::cgroupV2MissingMessage(kKind)});
  }
  if (auto exists = cgroups->children(cgroup); !exists) {
    return fmt::format("cgroup {} is gone; nothing to restore", cgroup);
  }
  if (auto r = restore(*cgroups, cgroup, previous); !r) {
    return tl::unexpected(r.error());
  }
  return fmt::format("restored cgroup {}: {}", cgroup, describeValues(previous));
}

}  // namespace faultline::agent
