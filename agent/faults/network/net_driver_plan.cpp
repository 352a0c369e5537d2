// The network fault driver's planning: what apply() will build (the qdisc's parameters, the tree
// and filters for a traffic match, the direction) from a validated spec, and which trees below a
// root it refuses because it cannot put them back exactly.
#include "agent/faults/network/net_driver.h"
#include "agent/faults/network/net_driver_internal.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "agent/faults/network/netem_dist.h"
#include "agent/faults/network/traffic_match.h"
#include "agent/faults/spec.h"
#include "agent/kernel/route.h"

namespace faultline::agent {
using namespace net_driver_internal;
namespace {

constexpr uint64_t kMinDefaultBurstBytes = 2 * 1514;  // two full-size Ethernet frames

std::string percentText(double p) {
  return fmt::format("{:g}%", p);
}

uint64_t ceilDiv(uint64_t a, uint64_t b) {
  return (a + b - 1) / b;
}

uint32_t capU32(uint64_t v) {
  return static_cast<uint32_t>(std::min<uint64_t>(v, std::numeric_limits<uint32_t>::max()));
}

}  // namespace

namespace net_driver_internal {

std::string_view directionText(const Plan& plan) {
  return plan.ingress ? (plan.egress ? "both" : "ingress") : "egress";
}

std::string rootKind(const Plan& plan) {
  return plan.tree ? "htb" : std::string(kernel::qdiscKind(plan.params));
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
    if (!n->delayDistribution.empty()) {
      out += fmt::format(" distribution ({} values)", n->delayDistribution.size());
    }
    if (n->gilbertElliott) {
      const auto& ge = *n->gilbertElliott;
      out += fmt::format(" loss gemodel p {} r {} bad-loss {} good-loss {}", percentText(ge.p), percentText(ge.r),
                         percentText(ge.badLoss), percentText(ge.goodLoss));
    } else if (n->lossPercent > 0) {
      out += " loss " + percentText(n->lossPercent);
      if (n->lossCorrelationPercent > 0) {
        out += " correlation " + percentText(n->lossCorrelationPercent);
      }
    }
    const auto probability = [&out](std::string_view name, double percent, double correlation) {
      if (percent > 0) {
        out += fmt::format(" {} {}", name, percentText(percent));
        if (correlation > 0) {
          out += " correlation " + percentText(correlation);
        }
      }
    };
    probability("duplicate", n->duplicatePercent, n->duplicateCorrelationPercent);
    probability("corrupt", n->corruptPercent, n->corruptCorrelationPercent);
    probability("reorder", n->reorderPercent, n->reorderCorrelationPercent);
    if (n->reorderPercent > 0 && n->gap > 1) {
      out += fmt::format(" gap {}", n->gap);
    }
    if (n->rateBitsPerSecond > 0) {
      out += fmt::format(" rate {}bit/s", n->rateBitsPerSecond);
    }
    if (n->limitPackets != 0) {
      out += fmt::format(" limit {}", n->limitPackets);
    }
    return out;
  }
  const auto& t = std::get<TbfParams>(params);
  return fmt::format("tbf rate {}bit/s burst {}B limit {}B", t.rateBitsPerSecond, t.burstBytes, t.limitBytes);
}

// Why faultline cannot put back root (with children below it) exactly; nullopt when it can.
std::optional<std::string> cannotRestore(const Plan& plan, const std::optional<QdiscInfo>& root,
                                         const std::vector<TcObject>& below) {
  if (root && root->handle != 0) {
    switch (kernel::restorability(root->kind)) {
      case kernel::Restorability::kExact:
        break;
      case kernel::Restorability::kClassful:
        if (root->kind == "htb" || root->kind == "prio" || root->kind == "mq") {
          break;  // saved and restored whole, classes and filters included, when treeRefusal() allows
        }
        return fmt::format(
            "interface {} has the classful root qdisc {}, whose classes and filters faultline cannot save and "
            "restore yet",
            plan.interface, qdiscText(root));
      case kernel::Restorability::kInexact:
        return fmt::format(
            "interface {} has the root qdisc {}, which the kernel does not re-create exactly from its own dump, "
            "so faultline cannot put it back",
            plan.interface, qdiscText(root));
      case kernel::Restorability::kUnverified:
        return fmt::format(
            "interface {} has the root qdisc {}, a kind faultline has not verified it can save and restore "
            "exactly",
            plan.interface, qdiscText(root));
    }
  }
  if (root && root->handle != 0) {
    if (auto why = kernel::treeRefusal(*root, below)) {
      return fmt::format("interface {} has the root qdisc {}, and {}, so faultline cannot put the tree back exactly",
                         plan.interface, qdiscText(root), *why);
    }
    return std::nullopt;
  }
  // A default root's own children (handle 0:, e.g. mq's per-queue fq_codel) come back with it.
  const auto added = std::find_if(below.begin(), below.end(), [](const TcObject& q) {
    return q.type == kernel::TcObjectType::kQdisc && q.handle != 0;
  });
  if (added != below.end()) {
    return fmt::format(
        "interface {} has the kernel's default root qdisc {} with qdiscs attached below it ({} {} at parent {}), "
        "which faultline cannot save and restore; give the root a handle (e.g. `tc qdisc replace dev {} root "
        "handle 1: {}`) and attach them below it",
        plan.interface, qdiscText(root), added->kind, handleText(added->handle), parentText(added->parent),
        plan.interface, root ? root->kind : "mq");
  }
  return std::nullopt;
}

tl::expected<Plan, FaultError> planFor(const v1::FaultSpec& spec, const std::vector<Endpoint>& exempt) {
  Plan plan;
  plan.faultName = std::string(faultKindName(spec));
  const v1::NetworkTarget* target = networkTarget(spec);
  if (target == nullptr) {
    return tl::unexpected(
        faultError(std::make_error_code(std::errc::invalid_argument),
                   fmt::format("{} is not a network fault; accepted: network.delay, network.loss, network.bandwidth, "
                               "network.duplicate, network.corrupt, network.reorder, network.partition",
                               plan.faultName.empty() ? "an empty spec" : plan.faultName)));
  }
  plan.interface = target->interface();
  plan.netns = target->netns();
  switch (spec.kind_case()) {
    case v1::FaultSpec::kNetworkDelay:
      plan.params = delayParams(spec.network_delay());
      break;
    case v1::FaultSpec::kNetworkLoss: {
      const auto& l = spec.network_loss();
      NetemParams p{.lossPercent = l.percent(), .lossCorrelationPercent = l.correlation()};
      if (l.has_gilbert_elliott()) {
        const auto& ge = l.gilbert_elliott();
        p.gilbertElliott = kernel::GilbertElliottLoss{ge.p(), ge.r(), ge.bad_loss(), ge.good_loss()};
      }
      p.limitPackets = l.limit_packets();
      plan.params = std::move(p);
      break;
    }
    case v1::FaultSpec::kNetworkBandwidth:
      plan.params = bandwidthParams(spec.network_bandwidth());
      break;
    case v1::FaultSpec::kNetworkDuplicate: {
      const auto& d = spec.network_duplicate();
      plan.params = NetemParams{.duplicatePercent = d.percent(), .duplicateCorrelationPercent = d.correlation()};
      break;
    }
    case v1::FaultSpec::kNetworkCorrupt: {
      const auto& c = spec.network_corrupt();
      plan.params = NetemParams{.corruptPercent = c.percent(), .corruptCorrelationPercent = c.correlation()};
      break;
    }
    case v1::FaultSpec::kNetworkReorder: {
      const auto& o = spec.network_reorder();
      plan.params = NetemParams{.delay = toMicros(o.delay()),
                                .reorderPercent = o.percent(),
                                .reorderCorrelationPercent = o.correlation(),
                                .gap = o.gap()};
      break;
    }
    case v1::FaultSpec::kNetworkPartition:
      plan.params = NetemParams{.lossPercent = 100};
      break;
    default:
      break;
  }
  // Not built yet: say so before anything is read or changed, rather than fault all traffic.
  const auto notYet = [&](std::string what) {
    return tl::unexpected(faultError(
        std::make_error_code(std::errc::not_supported),
        fmt::format("{}: {} is not supported by this agent version; nothing was changed", context(plan), what)));
  };
  plan.ingress = target->direction() == v1::DIRECTION_INGRESS || target->direction() == v1::DIRECTION_BOTH;
  plan.egress = target->direction() != v1::DIRECTION_INGRESS;
  if (target->has_match()) {
    const auto& m = target->match();
    if (!m.destination_cidrs().empty() || !m.source_cidrs().empty() || !m.destination_ports().empty() ||
        !m.source_ports().empty() || m.protocol() != v1::PROTOCOL_UNSPECIFIED) {
      auto filters = matchFilters(m, kFaultlineRootHandle, kMatchFilterPriority, kFaultlineClass);
      if (!filters) {
        return tl::unexpected(faultError(std::make_error_code(std::errc::invalid_argument),
                                         fmt::format("{}: {}; nothing was changed", context(plan), filters.error())));
      }
      plan.tree = true;
      plan.filters = std::move(*filters);
    }
  }
  if (plan.netns.empty() && !exempt.empty()) {
    if (!plan.tree) {
      auto all = matchFilters(v1::TrafficMatch{}, kFaultlineRootHandle, kMatchFilterPriority, kFaultlineClass);
      plan.filters = std::move(*all);  // an empty match never needs too many filters
      plan.tree = true;
    }
    // Ahead of the fault's filters: egress to the controller, and (ifb, ingress) from it.
    auto first = exemptFilters(exempt, PeerSide::kDestination, kFaultlineRootHandle, kExemptFilterPriority,
                               kFaultlineRootHandle);
    auto fromController =
        exemptFilters(exempt, PeerSide::kSource, kFaultlineRootHandle, kExemptFilterPriority, kFaultlineRootHandle);
    first.insert(first.end(), fromController.begin(), fromController.end());
    plan.filters.insert(plan.filters.begin(), first.begin(), first.end());
  }
  // Both are resolved before planning when the driver has a target resolver (the agent's has one).
  if (target->interface() == kDefaultRouteInterface) {
    return notYet("interface default (the interface of the default route)");
  }
  if (target->has_netns_process()) {
    return notYet("a network namespace chosen by process");
  }
  return plan;
}

}  // namespace net_driver_internal

uint32_t netemLimitPackets(std::chrono::microseconds delay, std::chrono::microseconds jitter, uint64_t rateBps) {
  constexpr uint64_t kAssumedLinkBps = 10'000'000'000;  // 10 Gbit/s
  constexpr uint64_t kPacketBits = 1500 * 8;
  constexpr uint64_t kMinLimit = 1000;        // the kernel's own default
  constexpr uint64_t kMaxLimit = 10'000'000;  // ~15 GB of full-size packets at most, if ever filled
  const uint64_t bps = rateBps != 0 ? rateBps : kAssumedLinkBps;
  const auto micros = static_cast<uint64_t>(std::max<int64_t>(0, (delay + jitter).count()));
  // packets = bits per second x seconds / bits per packet, without overflow for 1 h at 1 Tbit/s
  const long double packets =
      static_cast<long double>(bps) * static_cast<long double>(micros) / 1e6L / static_cast<long double>(kPacketBits);
  const auto needed = static_cast<uint64_t>(std::ceil(packets));
  return static_cast<uint32_t>(std::clamp(needed, kMinLimit, kMaxLimit));
}

kernel::NetemParams delayParams(const v1::NetworkDelay& spec) {
  NetemParams p{.delay = toMicros(spec.delay()),
                .jitter = toMicros(spec.jitter()),
                .delayCorrelationPercent = spec.correlation(),
                .delayDistribution = delayDistributionTable(spec.distribution()).values,
                .rateBitsPerSecond = spec.rate_bps()};
  p.limitPackets =
      spec.limit_packets() != 0 ? spec.limit_packets() : netemLimitPackets(p.delay, p.jitter, spec.rate_bps());
  return p;
}

kernel::TbfParams bandwidthParams(const v1::NetworkBandwidth& spec) {
  const uint64_t bytesPerSecond = spec.rate_bps() / 8;
  TbfParams params;
  params.rateBitsPerSecond = spec.rate_bps();
  params.burstBytes = spec.burst_bytes() != 0
                          ? spec.burst_bytes()
                          : capU32(std::max(ceilDiv(bytesPerSecond, 100), kMinDefaultBurstBytes));  // 10 ms
  if (spec.limit_bytes() != 0) {
    params.limitBytes = spec.limit_bytes();
  } else if (spec.has_latency()) {
    // As tc-tbf(8) turns latency into a limit: the bytes sent at the rate in that time, plus the burst.
    const auto micros = static_cast<uint64_t>(std::max<int64_t>(0, toMicros(spec.latency()).count()));
    const long double bytes = static_cast<long double>(bytesPerSecond) * static_cast<long double>(micros) / 1e6L;
    params.limitBytes = capU32(static_cast<uint64_t>(std::ceil(bytes)) + params.burstBytes);
  } else {
    // As latency 50ms would: 50 ms of queue at the rate on top of the burst (a limit of only the
    // burst leaves no room to queue, and slow rates then drop instead of delay).
    params.limitBytes = capU32(ceilDiv(bytesPerSecond, 20) + params.burstBytes);
  }
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

}  // namespace faultline::agent
