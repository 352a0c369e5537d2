#include "agent/net_driver.h"

#include <algorithm>
#include <cctype>
#include <limits>
#include <optional>
#include <utility>

#include <fmt/format.h>

#include "agent/spec.h"

namespace faultline::agent {
namespace {

using kernel::NetemParams;
using kernel::QdiscInfo;
using kernel::QdiscParams;
using kernel::QdiscTable;
using kernel::TbfParams;

constexpr uint64_t kMinDefaultBurstBytes = 2 * 1514;  // two full-size Ethernet frames

// What apply() is asked to do, taken from a validated spec.
struct Plan {
  std::string faultName;  // "network.delay", ...
  std::string interface;
  std::string netns;  // "" = the agent's own
  QdiscParams params;
};

FaultError faultError(std::error_code code, std::string message) {
  return FaultError{code, std::move(message)};
}

std::string where(const std::string& netns) {
  return netns.empty() ? "the agent's network namespace" : netns;
}

std::string context(const Plan& plan) {
  return fmt::format("{} on {} in {}", plan.faultName, plan.interface, where(plan.netns));
}

// tc's notation: "8001:" or "1:a"; "0:" for the kernel's defaults.
std::string handleText(uint32_t handle) {
  const uint32_t minor = handle & 0xFFFF;
  return minor != 0 ? fmt::format("{:x}:{:x}", handle >> 16, minor) : fmt::format("{:x}:", handle >> 16);
}

std::string qdiscText(const std::optional<QdiscInfo>& q) {
  if (!q) {
    return "none";
  }
  return q->handle == 0 ? q->kind : fmt::format("{} {}", q->kind, handleText(q->handle));
}

std::string percentText(double p) {
  return fmt::format("{:g}%", p);
}

std::string paramsText(const QdiscParams& params) {
  if (const auto* n = std::get_if<NetemParams>(&params)) {
    std::string out = "netem";
    if (n->delay.count() > 0) {
      out += " delay " + formatDuration(n->delay);
      if (n->jitter.count() > 0) {
        out += " jitter " + formatDuration(n->jitter);
      }
      if (n->delayCorrelationPercent > 0) {
        out += " correlation " + percentText(n->delayCorrelationPercent);
      }
    }
    if (n->lossPercent > 0) {
      out += " loss " + percentText(n->lossPercent);
      if (n->lossCorrelationPercent > 0) {
        out += " correlation " + percentText(n->lossCorrelationPercent);
      }
    }
    return out;
  }
  const auto& t = std::get<TbfParams>(params);
  return fmt::format("tbf rate {}bit/s burst {}B limit {}B", t.rateBitsPerSecond, t.burstBytes, t.limitBytes);
}

bool isFaultlineHandle(uint32_t handle) {
  return (handle >> 16) == kFaultlineQdiscMajor;
}

// The qdisc apply() installed (and no other, even with faultline's major).
bool isOurs(const std::optional<QdiscInfo>& q, const QdiscParams& params) {
  return q && q->handle == kFaultlineRootHandle && q->kind == kernel::qdiscKind(params);
}

// Whether the root is back to what it was before apply(): the same kind, handle and options, or,
// when the kernel's default was attached before (handle 0), a default again.
bool isRestored(const std::optional<QdiscInfo>& current, const std::optional<QdiscInfo>& saved) {
  if (saved && saved->handle != 0) {
    return current && current->kind == saved->kind && current->handle == saved->handle &&
           current->options == saved->options;
  }
  return !current || current->handle == 0;
}

// Puts the saved root back in place of ours.
tl::expected<void, std::error_code> undo(QdiscTable& table, const std::string& interface,
                                         const std::optional<QdiscInfo>& saved) {
  if (saved && saved->handle != 0) {
    return table.restoreRoot(interface, *saved);
  }
  return table.deleteRoot(interface);
}

// Words for a failed table call; the code decides, never the text.
std::string tableErrorText(const Plan& plan, std::string_view doing, std::error_code code) {
  if (code == std::errc::no_such_device) {
    return fmt::format("{}: interface {} does not exist in {}", context(plan), plan.interface, where(plan.netns));
  }
  if (code == std::errc::operation_not_permitted) {
    return fmt::format(
        "{}: {}: not permitted (the agent needs CAP_NET_ADMIN and, for another namespace, "
        "CAP_SYS_ADMIN)",
        context(plan), doing);
  }
  return fmt::format("{}: {}: {}", context(plan), doing, code.message());
}

tl::expected<Plan, FaultError> planFor(const v1::FaultSpec& spec) {
  Plan plan;
  plan.faultName = std::string(faultKindName(spec));
  switch (spec.kind_case()) {
    case v1::FaultSpec::kNetworkDelay: {
      const auto& d = spec.network_delay();
      plan.interface = d.target().interface();
      plan.netns = d.target().netns();
      plan.params = NetemParams{
          .delay = toMicros(d.delay()), .jitter = toMicros(d.jitter()), .delayCorrelationPercent = d.correlation()};
      return plan;
    }
    case v1::FaultSpec::kNetworkLoss: {
      const auto& l = spec.network_loss();
      plan.interface = l.target().interface();
      plan.netns = l.target().netns();
      plan.params = NetemParams{.lossPercent = l.percent(), .lossCorrelationPercent = l.correlation()};
      return plan;
    }
    case v1::FaultSpec::kNetworkBandwidth: {
      const auto& b = spec.network_bandwidth();
      plan.interface = b.target().interface();
      plan.netns = b.target().netns();
      plan.params = bandwidthParams(b);
      return plan;
    }
    default:
      break;
  }
  return tl::unexpected(faultError(std::make_error_code(std::errc::invalid_argument),
                                   fmt::format("{} is not a network fault; accepted: network.delay, "
                                               "network.loss, network.bandwidth",
                                               plan.faultName.empty() ? "an empty spec" : plan.faultName)));
}

class AppliedNetworkFault final : public AppliedFault {
 public:
  AppliedNetworkFault(QdiscTableOpener open, Plan plan, std::optional<QdiscInfo> saved)
      : open_(std::move(open)), plan_(std::move(plan)), saved_(std::move(saved)) {}

  tl::expected<void, FaultError> revert() override {
    if (reverted_) {
      return {};
    }
    auto table = open_(plan_.netns);
    if (!table) {
      return tl::unexpected(
          faultError(table.error(), tableErrorText(plan_, "revert: cannot open the network namespace", table.error())));
    }
    auto current = (*table)->root(plan_.interface);
    if (!current) {
      return tl::unexpected(
          faultError(current.error(), tableErrorText(plan_, "revert: cannot read the root qdisc", current.error())));
    }
    if (isRestored(*current, saved_)) {
      reverted_ = true;  // an earlier attempt (or someone) already put the saved root back
      return {};
    }
    if (!isOurs(*current, plan_.params)) {
      return tl::unexpected(
          faultError(std::make_error_code(std::errc::device_or_resource_busy),
                     fmt::format("{}: revert refused: the root qdisc is now {}, not faultline's {} {}; someone else "
                                 "replaced it, so it is left untouched (before the fault it was {})",
                                 context(plan_), qdiscText(*current), kernel::qdiscKind(plan_.params),
                                 handleText(kFaultlineRootHandle), qdiscText(saved_))));
    }
    if (auto undone = undo(**table, plan_.interface, saved_); !undone) {
      return tl::unexpected(
          faultError(undone.error(),
                     tableErrorText(plan_, fmt::format("revert: cannot put back the root qdisc {}", qdiscText(saved_)),
                                    undone.error())));
    }
    auto after = (*table)->root(plan_.interface);
    if (!after) {
      return tl::unexpected(faultError(
          after.error(),
          tableErrorText(plan_, "revert: reverted, but cannot read the root qdisc back to verify", after.error())));
    }
    if (!isRestored(*after, saved_)) {
      return tl::unexpected(faultError(
          std::make_error_code(std::errc::io_error),
          fmt::format("{}: revert did not take: the root qdisc is {}, expected {} (with its original options)",
                      context(plan_), qdiscText(*after), qdiscText(saved_))));
    }
    reverted_ = true;
    return {};
  }

  std::string describe() const override {
    return fmt::format("{} on {} in {} (root was {})", paramsText(plan_.params), plan_.interface, where(plan_.netns),
                       qdiscText(saved_));
  }

 private:
  QdiscTableOpener open_;
  Plan plan_;
  std::optional<QdiscInfo> saved_;  // the undo record: the root before apply()
  bool reverted_ = false;
};

uint64_t ceilDiv(uint64_t a, uint64_t b) {
  return (a + b - 1) / b;
}

uint32_t capU32(uint64_t v) {
  return static_cast<uint32_t>(std::min<uint64_t>(v, std::numeric_limits<uint32_t>::max()));
}

}  // namespace

kernel::TbfParams bandwidthParams(const v1::NetworkBandwidth& spec) {
  const uint64_t bytesPerSecond = spec.rate_bps() / 8;
  TbfParams params;
  params.rateBitsPerSecond = spec.rate_bps();
  params.burstBytes = spec.burst_bytes() != 0
                          ? spec.burst_bytes()
                          : capU32(std::max(ceilDiv(bytesPerSecond, 100), kMinDefaultBurstBytes));  // 10 ms
  params.limitBytes = spec.limit_bytes() != 0
                          ? spec.limit_bytes()
                          : capU32(std::max<uint64_t>(ceilDiv(bytesPerSecond, 20), params.burstBytes));  // 50 ms
  return params;
}

std::string missingQdiscMessage(std::string_view kind) {
  if (kind == "netem") {
    return "the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): load it with `modprobe sch_netem`; on "
           "RHEL-family hosts it ships in kernel-modules-extra";
  }
  if (kind == "tbf") {
    return "the kernel has no tbf qdisc (CONFIG_NET_SCH_TBF): load it with `modprobe sch_tbf`";
  }
  std::string option;
  for (char c : kind) {
    option.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  return fmt::format("the kernel has no {0} qdisc (CONFIG_NET_SCH_{1}): load it with `modprobe sch_{0}`", kind, option);
}

NetworkFaultDriver::NetworkFaultDriver(QdiscTableOpener open) : open_(std::move(open)) {}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> NetworkFaultDriver::apply(const v1::FaultSpec& spec) {
  if (auto valid = validateFaultSpec(spec); !valid) {
    const auto name = faultKindName(spec);
    return tl::unexpected(faultError(std::make_error_code(std::errc::invalid_argument),
                                     fmt::format("{}: invalid field '{}': {}", name.empty() ? "fault" : name,
                                                 valid.error().field, valid.error().message)));
  }
  auto plan = planFor(spec);
  if (!plan) {
    return tl::unexpected(plan.error());
  }
  auto table = open_(plan->netns);
  if (!table) {
    return tl::unexpected(
        faultError(table.error(), tableErrorText(*plan, "cannot open the network namespace", table.error())));
  }
  // The undo record, read before anything changes.
  auto before = (*table)->root(plan->interface);
  if (!before) {
    return tl::unexpected(
        faultError(before.error(), tableErrorText(*plan, "cannot read the root qdisc", before.error())));
  }
  if (*before && isFaultlineHandle((*before)->handle)) {
    return tl::unexpected(
        faultError(std::make_error_code(std::errc::file_exists),
                   fmt::format("{}: interface {} already carries faultline fault ({}); one network fault per interface",
                               context(*plan), plan->interface, qdiscText(*before))));
  }
  if (auto replaced = (*table)->replaceRoot(plan->interface, kFaultlineRootHandle, plan->params); !replaced) {
    const std::error_code code = replaced.error();
    std::string message =
        code == std::errc::no_such_file_or_directory
            ? fmt::format("{}: {}", context(*plan), missingQdiscMessage(kernel::qdiscKind(plan->params)))
            : tableErrorText(*plan, fmt::format("the kernel refused {}", paramsText(plan->params)), code);
    // A refused replace changes nothing in the kernel; make sure of it before reporting.
    auto after = (*table)->root(plan->interface);
    if (!after) {
      message += fmt::format(" (and the root qdisc could not be read back to check it is unchanged: {})",
                             after.error().message());
    } else if (*after && isFaultlineHandle((*after)->handle)) {
      if (auto undone = undo(**table, plan->interface, *before); !undone) {
        message += fmt::format(" (and putting back the root qdisc {} failed: {})", qdiscText(*before),
                               undone.error().message());
      }
    }
    return tl::unexpected(faultError(code, std::move(message)));
  }
  return std::make_unique<AppliedNetworkFault>(open_, std::move(*plan), std::move(*before));
}

}  // namespace faultline::agent
