// The fields of network.* faults: target (interface, netns, direction, match), delay, loss and
// its Gilbert-Elliott model, rates, sizes, packet limits.
#include "controller/experiment/parser.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "agent/faults/spec.h"

namespace faultline::controller {

using namespace detail;
using namespace std::chrono_literals;

namespace {

constexpr std::array<std::string_view, 4> kNetworkTargetKeys{"interface", "netns", "direction", "match"};
constexpr std::array<std::string_view, 5> kMatchKeys{"destination", "source", "destinationPorts", "sourcePorts",
                                                     "protocol"};
constexpr std::array<std::string_view, 4> kGilbertElliottKeys{"p", "r", "badLoss", "goodLoss"};

}  // namespace

void Parser::parseNetworkFault(FaultKind kind, const MapNode& m, v1::FaultSpec& spec) {
  switch (kind) {
    case FaultKind::kDelay: {
      auto* d = spec.mutable_network_delay();
      if (auto target = parseNetworkTarget(m)) {
        *d->mutable_target() = std::move(*target);
      }
      if (auto delay = require(m, "delay", "a duration more than 0 and at most 1h, e.g. 100ms")) {
        if (auto v = duration(*delay)) {
          *d->mutable_delay() = toProto(*v);
        }
      }
      if (auto jitter = lookup(m, "jitter")) {
        if (auto v = duration(*jitter)) {
          *d->mutable_jitter() = toProto(*v);
        }
      }
      if (auto correlation = lookup(m, "correlation")) {
        if (auto v = percent(*correlation)) {
          d->set_correlation(*v);
        }
      }
      if (auto distribution = lookup(m, "distribution")) {
        constexpr std::string_view accepted = "uniform, normal, pareto or paretonormal";
        if (auto v = scalar(*distribution, accepted)) {
          static constexpr std::array<std::pair<std::string_view, v1::DelayDistribution>, 4> kDistributions{
              {{"uniform", v1::DELAY_DISTRIBUTION_UNIFORM},
               {"normal", v1::DELAY_DISTRIBUTION_NORMAL},
               {"pareto", v1::DELAY_DISTRIBUTION_PARETO},
               {"paretonormal", v1::DELAY_DISTRIBUTION_PARETONORMAL}}};
          const auto it = std::find_if(kDistributions.begin(), kDistributions.end(),
                                       [&](const auto& known) { return known.first == *v; });
          if (it == kDistributions.end()) {
            error(distribution->mark, distribution->path,
                  fmt::format("unknown distribution '{}'; accepted: {}", *v, accepted));
          } else {
            d->set_distribution(it->second);
          }
        }
      }
      if (auto r = lookup(m, "rate")) {
        if (auto v = rate(*r)) {
          d->set_rate_bps(*v);
        }
      }
      if (auto limit = lookup(m, "limit")) {
        if (auto v = packets(*limit)) {
          d->set_limit_packets(*v);
        }
      }
      if (auto keepOrder = lookup(m, "keepOrder")) {
        if (auto v = scalar(*keepOrder, "true or false")) {
          if (*v == "true" || *v == "false") {
            d->set_keep_order(*v == "true");
          } else {
            error(keepOrder->mark, keepOrder->path, fmt::format("'{}' is not a boolean; accepted: true or false", *v));
          }
        }
      }
      break;
    }
    case FaultKind::kLoss: {
      auto* l = spec.mutable_network_loss();
      if (auto target = parseNetworkTarget(m)) {
        *l->mutable_target() = std::move(*target);
      }
      auto ge = lookup(m, "gilbertElliott");
      if (ge) {
        if (auto model = parseGilbertElliott(*ge)) {
          *l->mutable_gilbert_elliott() = std::move(*model);
        }
      }
      auto p = ge ? lookup(m, "percent")
                  : require(m, "percent", "a percentage more than 0 and at most 100, e.g. 30, or gilbertElliott");
      if (p) {
        if (auto v = percent(*p)) {
          l->set_percent(*v);
        }
      }
      if (auto correlation = lookup(m, "correlation")) {
        if (auto v = percent(*correlation)) {
          l->set_correlation(*v);
        }
      }
      if (auto limit = lookup(m, "limit")) {
        if (auto v = packets(*limit)) {
          l->set_limit_packets(*v);
        }
      }
      break;
    }
    case FaultKind::kBandwidth: {
      auto* b = spec.mutable_network_bandwidth();
      if (auto target = parseNetworkTarget(m)) {
        *b->mutable_target() = std::move(*target);
      }
      if (auto r = require(m, "rate", "bits per second with a unit bit, kbit, mbit, gbit or tbit, e.g. 1mbit")) {
        if (auto v = rate(*r)) {
          b->set_rate_bps(*v);
        }
      }
      if (auto burst = lookup(m, "burst")) {
        if (auto v = size(*burst)) {
          b->set_burst_bytes(*v);
        }
      }
      if (auto limit = lookup(m, "limit")) {
        if (auto v = size(*limit)) {
          b->set_limit_bytes(*v);
        }
      }
      if (auto latency = lookup(m, "latency")) {
        if (auto v = duration(*latency)) {
          *b->mutable_latency() = toProto(*v);
        }
      }
      break;
    }
    case FaultKind::kDuplicate:
    case FaultKind::kCorrupt:
    case FaultKind::kReorder: {
      std::optional<v1::NetworkTarget> target = parseNetworkTarget(m);
      double percentValue = 0;
      double correlationValue = 0;
      if (auto p = require(m, "percent", "a percentage more than 0 and at most 100, e.g. 5")) {
        if (auto v = percent(*p)) {
          percentValue = *v;
        }
      }
      if (auto correlation = lookup(m, "correlation")) {
        if (auto v = percent(*correlation)) {
          correlationValue = *v;
        }
      }
      if (kind == FaultKind::kDuplicate) {
        auto* d = spec.mutable_network_duplicate();
        *d->mutable_target() = target.value_or(v1::NetworkTarget{});
        d->set_percent(percentValue);
        d->set_correlation(correlationValue);
      } else if (kind == FaultKind::kCorrupt) {
        auto* c = spec.mutable_network_corrupt();
        *c->mutable_target() = target.value_or(v1::NetworkTarget{});
        c->set_percent(percentValue);
        c->set_correlation(correlationValue);
      } else {
        auto* o = spec.mutable_network_reorder();
        *o->mutable_target() = target.value_or(v1::NetworkTarget{});
        o->set_percent(percentValue);
        o->set_correlation(correlationValue);
        if (auto delay = require(m, "delay",
                                 "a duration more than 0 and at most 1h, e.g. 10ms (reorder works by delaying the "
                                 "packets it does not pick)")) {
          if (auto v = duration(*delay)) {
            *o->mutable_delay() = toProto(*v);
          }
        }
        if (auto gap = lookup(m, "gap")) {
          if (auto v = integer(*gap, 0, 1'000'000, "a number of packets")) {
            o->set_gap(static_cast<uint32_t>(*v));
          }
        }
      }
      break;
    }
    case FaultKind::kPartition: {
      auto* p = spec.mutable_network_partition();
      if (auto target = parseNetworkTarget(m)) {
        *p->mutable_target() = std::move(*target);
      }
      break;
    }
    default:  // not a network fault: parseFault() calls the family's own
      break;
  }
}

std::optional<v1::NetworkTarget> Parser::parseNetworkTarget(const MapNode& fault) {
  constexpr std::string_view accepted =
      "a map with interface and optionally netns, direction and match, e.g. {interface: eth0}";
  auto f = require(fault, "target", accepted);
  if (!f) {
    return std::nullopt;
  }
  auto m = openMap(*f, accepted);
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kNetworkTargetKeys);
  v1::NetworkTarget target;
  constexpr std::string_view interfaceAccepted =
      "a Linux interface name such as eth0, or default (the interface of the default route)";
  if (auto interface = require(*m, "interface", interfaceAccepted)) {
    if (auto v = scalar(*interface, interfaceAccepted)) {
      target.set_interface(*v);
    }
  }
  if (auto netns = lookup(*m, "netns")) {
    constexpr std::string_view netnsAccepted =
        "a path such as /var/run/netns/NAME or /proc/PID/ns/net, or the processes whose namespace it is, "
        "e.g. {pid: 4242}, {name: nginx} or {systemdUnit: orders}";
    if (netns->value.IsMap()) {
      if (auto selector = parseSelector(*netns, netnsAccepted)) {
        *target.mutable_netns_process() = std::move(*selector);
      }
    } else if (auto v = scalar(*netns, netnsAccepted)) {
      if (v->empty()) {
        // "" (e.g. an empty --var) must not silently mean the agent's own namespace.
        error(netns->mark, netns->path,
              fmt::format("is empty; accepted: {}; leave netns out for the agent's own namespace", netnsAccepted));
      } else {
        target.set_netns(*v);
      }
    }
  }
  if (auto direction = lookup(*m, "direction")) {
    constexpr std::string_view directionAccepted = "egress, ingress, or both (network.partition only)";
    if (auto v = scalar(*direction, directionAccepted)) {
      if (*v == "egress") {
        target.set_direction(v1::DIRECTION_EGRESS);
      } else if (*v == "ingress") {
        target.set_direction(v1::DIRECTION_INGRESS);
      } else if (*v == "both") {
        target.set_direction(v1::DIRECTION_BOTH);
      } else {
        error(direction->mark, direction->path,
              fmt::format("unknown direction '{}'; accepted: {}", *v, directionAccepted));
      }
    }
  }
  if (auto match = lookup(*m, "match")) {
    if (auto parsed = parseMatch(*match)) {
      *target.mutable_match() = std::move(*parsed);
    }
  }
  return target;
}

// A scalar or a list of scalars.
std::vector<Field> Parser::scalarList(const Field& f, std::string_view accepted) {
  std::vector<Field> out;
  if (f.value.IsScalar()) {
    out.push_back(f);
    return out;
  }
  if (!f.value.IsSequence()) {
    typeError(f, accepted);
    return out;
  }
  size_t i = 0;
  for (auto it = f.value.begin(); it != f.value.end() && !full(); ++it, ++i) {
    Field item{*it, it->Mark(), fmt::format("{}[{}]", f.path, i)};
    if (!it->IsScalar()) {
      typeError(item, accepted);
      continue;
    }
    out.push_back(std::move(item));
  }
  return out;
}

std::optional<v1::TrafficMatch> Parser::parseMatch(const Field& f) {
  constexpr std::string_view accepted =
      "a map with destination, source (CIDRs), destinationPorts, sourcePorts and protocol, e.g. "
      "{destination: 10.0.0.0/8, protocol: tcp, destinationPorts: [443]}";
  auto m = openMap(f, accepted);
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kMatchKeys);
  v1::TrafficMatch match;
  constexpr std::string_view cidrAccepted =
      "an IPv4 or IPv6 address or prefix, or a list of them, e.g. 10.0.0.0/8 or [192.0.2.7, 2001:db8::/32]";
  for (const auto& [key, list] : {std::pair{"destination", match.mutable_destination_cidrs()},
                                  std::pair{"source", match.mutable_source_cidrs()}}) {
    if (auto cidrs = lookup(*m, key)) {
      for (const Field& item : scalarList(*cidrs, cidrAccepted)) {
        if (auto parsed = parseCidr(item.value.Scalar()); !parsed) {
          error(item.mark, item.path, parsed.error());
        } else {
          list->Add(std::string(item.value.Scalar()));
        }
      }
    }
  }
  constexpr std::string_view portAccepted = "a port from 1 to 65535, or a list of them, e.g. [80, 443]";
  for (const auto& [key, list] : {std::pair{"destinationPorts", match.mutable_destination_ports()},
                                  std::pair{"sourcePorts", match.mutable_source_ports()}}) {
    if (auto ports = lookup(*m, key)) {
      for (const Field& item : scalarList(*ports, portAccepted)) {
        if (auto v = integer(item, 1, 65535, "a port")) {
          list->Add(static_cast<uint32_t>(*v));
        }
      }
    }
  }
  if (auto protocol = lookup(*m, "protocol")) {
    constexpr std::string_view protocolAccepted = "tcp, udp or icmp";
    if (auto v = scalar(*protocol, protocolAccepted)) {
      if (*v == "tcp") {
        match.set_protocol(v1::PROTOCOL_TCP);
      } else if (*v == "udp") {
        match.set_protocol(v1::PROTOCOL_UDP);
      } else if (*v == "icmp") {
        match.set_protocol(v1::PROTOCOL_ICMP);
      } else {
        error(protocol->mark, protocol->path, fmt::format("unknown protocol '{}'; accepted: {}", *v, protocolAccepted));
      }
    }
  }
  return match;
}

std::optional<v1::GilbertElliott> Parser::parseGilbertElliott(const Field& f) {
  constexpr std::string_view accepted =
      "a map with p (good to bad), r (bad to good), badLoss and goodLoss, as percentages, e.g. "
      "{p: 1, r: 25, badLoss: 100}";
  auto m = openMap(f, accepted);
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kGilbertElliottKeys);
  v1::GilbertElliott ge;
  ge.set_bad_loss(100);  // tc's default: 1-h = 100 %
  if (auto p = require(*m, "p", "a percentage more than 0 and at most 100: the chance to go from good to bad")) {
    if (auto v = percent(*p)) {
      ge.set_p(*v);
    }
  }
  // tc's default r is 100 - p.
  ge.set_r(100 - ge.p());
  if (auto r = lookup(*m, "r")) {
    if (auto v = percent(*r)) {
      ge.set_r(*v);
    }
  }
  if (auto bad = lookup(*m, "badLoss")) {
    if (auto v = percent(*bad)) {
      ge.set_bad_loss(*v);
    }
  }
  if (auto good = lookup(*m, "goodLoss")) {
    if (auto v = percent(*good)) {
      ge.set_good_loss(*v);
    }
  }
  return ge;
}

std::optional<uint32_t> Parser::packets(const Field& f) {
  auto v = integer(f, 1, std::numeric_limits<uint32_t>::max(), "a number of packets, e.g. 10000");
  if (!v) {
    return std::nullopt;
  }
  return static_cast<uint32_t>(*v);
}

std::optional<uint64_t> Parser::rate(const Field& f) {
  constexpr std::string_view accepted =
      "bits per second with a unit bit, kbit, mbit, gbit or tbit (x1000, as in tc(8)), e.g. 1mbit";
  auto text = scalar(f, accepted);
  if (!text) {
    return std::nullopt;
  }
  auto number = splitNumber(*text);
  if (!number) {
    error(f.mark, f.path, fmt::format("'{}' is not a rate; accepted: {}", *text, accepted));
    return std::nullopt;
  }
  const auto& [value, unit] = *number;
  static constexpr std::array<std::pair<std::string_view, double>, 5> kUnits{
      {{"bit", 1}, {"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}, {"tbit", 1e12}}};
  for (const auto& [name, multiplier] : kUnits) {
    if (unit == name) {
      const double bits = value * multiplier;
      if (bits > 9e18) {  // llround() would overflow
        error(f.mark, f.path, fmt::format("{} is out of range; accepted: 8bit to 1tbit", *text));
        return std::nullopt;
      }
      return static_cast<uint64_t>(std::llround(bits));  // the range is checked by validateFaultSpec()
    }
  }
  if (unit.empty()) {
    error(f.mark, f.path, fmt::format("'{}' has no unit; accepted: {}", *text, accepted));
  } else if (unit == "bps" || unit == "kbps" || unit == "mbps" || unit == "gbps" || unit == "tbps") {
    error(f.mark, f.path,
          fmt::format("'{}' is bytes per second in tc(8); accepted: {} (1mbps is 8mbit)", *text, accepted));
  } else {
    error(f.mark, f.path, fmt::format("'{}' has an unknown unit '{}'; accepted: {}", *text, unit, accepted));
  }
  return std::nullopt;
}

std::optional<uint32_t> Parser::size(const Field& f) {
  constexpr std::string_view accepted =
      "bytes with a unit b, kb, mb, gb (x1024, as in tc(8)) or kib, mib, gib, e.g. 32kb";
  auto text = scalar(f, accepted);
  if (!text) {
    return std::nullopt;
  }
  auto number = splitNumber(*text);
  if (!number) {
    error(f.mark, f.path, fmt::format("'{}' is not a size; accepted: {}", *text, accepted));
    return std::nullopt;
  }
  const auto& [value, unit] = *number;
  static constexpr std::array<std::pair<std::string_view, double>, 7> kUnits{{{"b", 1},
                                                                              {"kb", 1024.0},
                                                                              {"kib", 1024.0},
                                                                              {"mb", 1024.0 * 1024},
                                                                              {"mib", 1024.0 * 1024},
                                                                              {"gb", 1024.0 * 1024 * 1024},
                                                                              {"gib", 1024.0 * 1024 * 1024}}};
  for (const auto& [name, multiplier] : kUnits) {
    if (unit == name) {
      const double bytes = std::round(value * multiplier);
      if (bytes < 1 || bytes > std::numeric_limits<uint32_t>::max()) {
        error(f.mark, f.path,
              fmt::format("{} is out of range; accepted: from 1b to 4294967295b (just under 4gib)", *text));
        return std::nullopt;
      }
      return static_cast<uint32_t>(bytes);
    }
  }
  if (unit.empty()) {
    error(f.mark, f.path, fmt::format("'{}' has no unit; accepted: {}", *text, accepted));
  } else {
    error(f.mark, f.path, fmt::format("'{}' has an unknown unit '{}'; accepted: {}", *text, unit, accepted));
  }
  return std::nullopt;
}

}  // namespace faultline::controller
