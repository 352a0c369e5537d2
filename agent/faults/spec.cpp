#include "agent/faults/spec.h"

#include <arpa/inet.h>
#include <string.h>  // sigabbrev_np
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstring>

#include <fmt/format.h>
#include <google/protobuf/descriptor.h>

#include "common/regex.h"

namespace faultline {
namespace {

using std::chrono::microseconds;

constexpr std::chrono::hours kMaxDelay{1};
constexpr std::chrono::milliseconds kMinKillEvery{100};
constexpr uint64_t kMinStressBytes = uint64_t{1} << 20;
constexpr uint64_t kMaxStressBytes = uint64_t{1} << 40;

std::string pct(double v) {
  return fmt::format("{:g}", v);
}

tl::expected<void, SpecError> fail(std::string field, std::string message) {
  return tl::unexpected(SpecError{std::move(field), std::move(message)});
}

tl::expected<void, SpecError> validatePercent(const std::string& field, double v, bool zeroAllowed) {
  if (!std::isfinite(v) || v < 0 || v > 100 || (!zeroAllowed && v == 0)) {
    return fail(field, fmt::format("{} is out of range; accepted: a percentage {} 0 and ≤ 100", pct(v),
                                   zeroAllowed ? "≥" : ">"));
  }
  return {};
}

std::string_view directionName(v1::Direction d) {
  switch (d) {
    case v1::DIRECTION_UNSPECIFIED:
    case v1::DIRECTION_EGRESS:
      return "egress";
    case v1::DIRECTION_INGRESS:
      return "ingress";
    case v1::DIRECTION_BOTH:
      return "both";
    default:
      return "unknown";
  }
}

tl::expected<void, SpecError> validateCidrs(const std::string& field,
                                            const google::protobuf::RepeatedPtrField<std::string>& cidrs, int& family) {
  for (const auto& text : cidrs) {
    auto cidr = parseCidr(text);
    if (!cidr) {
      return fail(field, cidr.error());
    }
    if (family != 0 && cidr->family != family) {
      return fail(field, fmt::format("'{}' is IPv{} but another address of this fault is IPv{}; accepted: "
                                     "addresses of one family per fault (use two faults for IPv4 and IPv6)",
                                     text, cidr->family == AF_INET ? 4 : 6, family == AF_INET ? 4 : 6));
    }
    family = cidr->family;
  }
  return {};
}

tl::expected<void, SpecError> validatePorts(const std::string& field,
                                            const google::protobuf::RepeatedField<uint32_t>& ports) {
  for (uint32_t port : ports) {
    if (port < 1 || port > 65535) {
      return fail(field, fmt::format("{} is not a port; accepted: 1 to 65535", port));
    }
  }
  return {};
}

tl::expected<void, SpecError> validateSelector(const v1::ProcessSelector& s, const std::string& at);

tl::expected<void, SpecError> validateTarget(const v1::NetworkTarget& t, bool bothAllowed) {
  if (!isValidInterfaceName(t.interface())) {
    return fail("interface", fmt::format("'{}' is not a Linux interface name: 1-15 bytes, no '/', ':' or "
                                         "whitespace, not '.' or '..' (e.g. eth0, enp6s0, eth0.100), or default "
                                         "(the interface of the default route)",
                                         t.interface()));
  }
  if (!t.netns().empty() &&
      (t.netns() == "/" || t.netns().back() == '/' || t.netns().find("/../") != std::string::npos ||
       t.netns().ends_with("/..") || t.netns().find("/./") != std::string::npos)) {
    return fail("netns", fmt::format("'{}' is not a namespace file's path; use /var/run/netns/NAME or "
                                     "/proc/PID/ns/net (no '.' or '..' components), or leave it out for the "
                                     "agent's own namespace",
                                     t.netns()));
  }
  if (!t.netns().empty() && t.netns().front() != '/') {
    return fail("netns", fmt::format("'{}' is not an absolute path; use /var/run/netns/NAME or "
                                     "/proc/PID/ns/net, or leave it out for the agent's own namespace",
                                     t.netns()));
  }
  if (t.has_netns_process()) {
    const auto& p = t.netns_process();
    if (!t.netns().empty()) {
      return fail("netns",
                  fmt::format("is both the path '{}' and a process selector; accepted: one of them", t.netns()));
    }
    if (auto r = validateSelector(p, "netns."); !r) {
      return r;
    }
    if (p.count() > 0 || p.percent() != 0) {
      return fail(p.count() > 0 ? "netns.count" : "netns.percent",
                  "is not accepted here: the namespace is the one every process the selector picks is in; "
                  "accepted: pid, name, cmdline, cgroup, systemdUnit or pidfile alone");
    }
  }
  if (!v1::Direction_IsValid(t.direction()) || (t.direction() == v1::DIRECTION_BOTH && !bothAllowed)) {
    return fail("direction",
                fmt::format("'{}' is not accepted here; accepted: egress or ingress{}", directionName(t.direction()),
                            bothAllowed ? " or both" : " (both: network.partition only)"));
  }
  const auto& m = t.match();
  int family = 0;
  if (auto r = validateCidrs("match.destination", m.destination_cidrs(), family); !r) {
    return r;
  }
  if (auto r = validateCidrs("match.source", m.source_cidrs(), family); !r) {
    return r;
  }
  if (!v1::Protocol_IsValid(m.protocol())) {
    return fail("match.protocol", fmt::format("{} is not a protocol; accepted: tcp, udp or icmp", m.protocol()));
  }
  if (auto r = validatePorts("match.destinationPorts", m.destination_ports()); !r) {
    return r;
  }
  if (auto r = validatePorts("match.sourcePorts", m.source_ports()); !r) {
    return r;
  }
  const bool ports = !m.destination_ports().empty() || !m.source_ports().empty();
  if (ports && m.protocol() != v1::PROTOCOL_TCP && m.protocol() != v1::PROTOCOL_UDP) {
    return fail("match.protocol", fmt::format("{}; ports match only tcp or udp: accepted: protocol tcp or udp",
                                              m.protocol() == v1::PROTOCOL_ICMP ? "icmp has no ports" : "is missing"));
  }
  constexpr int kMaxEntries = 64;  // one u32 filter each: keeps the tree small
  for (const auto& [field, n] :
       {std::pair{"match.destination", m.destination_cidrs_size()}, std::pair{"match.source", m.source_cidrs_size()},
        std::pair{"match.destinationPorts", m.destination_ports_size()},
        std::pair{"match.sourcePorts", m.source_ports_size()}}) {
    if (n > kMaxEntries) {
      return fail(field, fmt::format("has {} entries; accepted: at most {}", n, kMaxEntries));
    }
  }
  if (t.has_match() && m.destination_cidrs().empty() && m.source_cidrs().empty() && !ports &&
      m.protocol() == v1::PROTOCOL_UNSPECIFIED) {
    return fail("match",
                "is empty: it would match all traffic; accepted: at least one of destination, source, "
                "destinationPorts, sourcePorts or protocol, or leave match out for all traffic");
  }
  // One rule (u32 filter) per combination of destination, source and ports, per address family.
  const auto atLeastOne = [](int n) { return static_cast<uint64_t>(std::max(n, 1)); };
  const uint64_t combinations = (family != 0 ? 1 : 2) * atLeastOne(m.destination_cidrs_size()) *
                                atLeastOne(m.source_cidrs_size()) * atLeastOne(m.destination_ports_size()) *
                                atLeastOne(m.source_ports_size());
  if (combinations > kMaxMatchCombinations) {
    return fail("match", fmt::format("needs {} rules, one per combination of destination, source, destination port "
                                     "and source port{}; accepted: at most {}: list fewer, or use a CIDR or a "
                                     "protocol that covers several",
                                     combinations, family != 0 ? "" : " (for IPv4 and IPv6)", kMaxMatchCombinations));
  }
  return {};
}

tl::expected<void, SpecError> validateDelay(const char* field, const google::protobuf::Duration& d) {
  const auto delay = toMicros(d);
  if (delay <= microseconds{0} || delay > kMaxDelay) {
    return fail(field, fmt::format("{} is out of range; accepted: more than 0 and at most 1h", formatDuration(delay)));
  }
  return {};
}

tl::expected<void, SpecError> validateRate(const char* field, uint64_t bps, bool zeroAllowed) {
  if ((bps == 0 && zeroAllowed) || (bps >= 8 && bps <= (uint64_t{1} << 40))) {
    return {};
  }
  return fail(field, fmt::format("{} bit/s is out of range; accepted: 8bit to 1tbit per second", bps));
}

// percent (0, 100] and correlation [0, 100] of duplicate, corrupt and reorder.
tl::expected<void, SpecError> validateProbability(double percent, double correlation) {
  if (auto r = validatePercent("percent", percent, false); !r) {
    return r;
  }
  return validatePercent("correlation", correlation, true);
}

bool isCgroupPath(const std::string& path) {
  if (path.empty() || path.front() != '/' || path.find("/../") != std::string::npos ||
      path.find('\0') != std::string::npos || path.find("\n") != std::string::npos) {
    return false;
  }
  return path.size() < 3 || path.substr(path.size() - 3) != "/..";
}

tl::expected<void, SpecError> validateSelector(const v1::ProcessSelector& s, const std::string& at) {
  switch (s.by_case()) {
    case v1::ProcessSelector::kPid:
      if (s.pid() <= 1) {
        return fail(at + "pid", fmt::format("{} cannot be targeted; accepted: a pid greater than 1", s.pid()));
      }
      break;
    case v1::ProcessSelector::kName:
      if (s.name().empty()) {
        return fail(at + "name", "is empty; accepted: a process name such as nginx");
      }
      break;
    case v1::ProcessSelector::kCmdline:
      if (s.cmdline().empty()) {
        return fail(at + "cmdline", "is empty; accepted: a regular expression such as 'java .*-jar orders'");
      }
      if (auto re = Regex::compile(s.cmdline(), RegexAnchors::kTextEnds); !re) {
        return fail(at + "cmdline",
                    fmt::format("{}; accepted: {}, e.g. 'java .*-jar orders'", re.error(), kRegexAccepted));
      }
      break;
    case v1::ProcessSelector::kCgroup:
      if (!isCgroupPath(s.cgroup())) {
        return fail(at + "cgroup", fmt::format("'{}' is not a cgroup path; accepted: a path from the cgroup v2 "
                                               "root without '..', e.g. /system.slice/nginx.service",
                                               s.cgroup()));
      }
      break;
    case v1::ProcessSelector::kSystemdUnit:
      if (s.systemd_unit().empty() || s.systemd_unit().find('/') != std::string::npos) {
        return fail(at + "systemdUnit",
                    fmt::format("'{}' is not a unit name; accepted: e.g. nginx.service or nginx", s.systemd_unit()));
      }
      break;
    case v1::ProcessSelector::kPidfile:
      if (s.pidfile().empty() || s.pidfile().front() != '/') {
        return fail(at + "pidfile",
                    fmt::format("'{}' is not an absolute path; accepted: e.g. /run/nginx.pid", s.pidfile()));
      }
      break;
    case v1::ProcessSelector::BY_NOT_SET:
      return fail(at + "pid",
                  "no process selector; accepted: one of pid, name, cmdline, cgroup, systemdUnit, pidfile, optionally "
                  "narrowed by count or percent");
  }
  if (s.count() > 0 && s.percent() != 0) {
    return fail(at + "count", "count and percent are both set; accepted: at most one of them");
  }
  if (!std::isfinite(s.percent()) || s.percent() < 0 || s.percent() > 100) {
    return fail(at + "percent",
                fmt::format("{} is out of range; accepted: a percentage > 0 and ≤ 100 (or leave it out for all)",
                            pct(s.percent())));
  }
  return {};
}

}  // namespace

int parseSignal(std::string_view text) {
  if (text.empty()) {
    return SIGKILL;
  }
  int number = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
  if (ec == std::errc{} && end == text.data() + text.size()) {
    return number >= 1 && number < NSIG ? number : 0;
  }
  std::string upper;
  for (char c : text) {
    upper.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  }
  if (upper.rfind("SIG", 0) == 0) {
    upper.erase(0, 3);
  }
  for (int s = 1; s < SIGRTMIN; ++s) {
    const char* abbrev = sigabbrev_np(s);
    if (abbrev != nullptr && upper == abbrev) {
      return s;
    }
  }
  return 0;
}

std::string_view faultKindName(const v1::FaultSpec& spec) {
  switch (spec.kind_case()) {
    case v1::FaultSpec::kNetworkDelay:
      return "network.delay";
    case v1::FaultSpec::kNetworkLoss:
      return "network.loss";
    case v1::FaultSpec::kNetworkBandwidth:
      return "network.bandwidth";
    case v1::FaultSpec::kProcessKill:
      return "process.kill";
    case v1::FaultSpec::kNetworkDuplicate:
      return "network.duplicate";
    case v1::FaultSpec::kNetworkCorrupt:
      return "network.corrupt";
    case v1::FaultSpec::kNetworkReorder:
      return "network.reorder";
    case v1::FaultSpec::kNetworkPartition:
      return "network.partition";
    case v1::FaultSpec::kProcessPause:
      return "process.pause";
    case v1::FaultSpec::kStressCpu:
      return "stress.cpu";
    case v1::FaultSpec::kStressMemory:
      return "stress.memory";
    case v1::FaultSpec::kCgroupSqueeze:
      return "cgroup.squeeze";
    case v1::FaultSpec::KIND_NOT_SET:
      break;
  }
  return "";
}

const std::vector<std::string_view>& faultKindNames() {
  static const std::vector<std::string_view> names = [] {
    std::vector<std::string_view> out;
    const google::protobuf::OneofDescriptor* kinds = v1::FaultSpec::descriptor()->FindOneofByName("kind");
    for (int i = 0; kinds != nullptr && i < kinds->field_count(); ++i) {
      v1::FaultSpec spec;
      spec.GetReflection()->MutableMessage(&spec, kinds->field(i));
      out.push_back(faultKindName(spec));
    }
    return out;
  }();
  return names;
}

const v1::NetworkTarget* networkTarget(const v1::FaultSpec& spec) {
  switch (spec.kind_case()) {
    case v1::FaultSpec::kNetworkDelay:
      return &spec.network_delay().target();
    case v1::FaultSpec::kNetworkLoss:
      return &spec.network_loss().target();
    case v1::FaultSpec::kNetworkBandwidth:
      return &spec.network_bandwidth().target();
    case v1::FaultSpec::kNetworkDuplicate:
      return &spec.network_duplicate().target();
    case v1::FaultSpec::kNetworkCorrupt:
      return &spec.network_corrupt().target();
    case v1::FaultSpec::kNetworkReorder:
      return &spec.network_reorder().target();
    case v1::FaultSpec::kNetworkPartition:
      return &spec.network_partition().target();
    default:
      return nullptr;
  }
}

tl::expected<void, SpecError> validateFaultSpec(const v1::FaultSpec& spec) {
  switch (spec.kind_case()) {
    case v1::FaultSpec::kNetworkDelay: {
      const auto& d = spec.network_delay();
      if (auto r = validateTarget(d.target(), false); !r) {
        return r;
      }
      if (auto r = validateDelay("delay", d.delay()); !r) {
        return r;
      }
      const auto delay = toMicros(d.delay());
      const auto jitter = toMicros(d.jitter());
      if (jitter < microseconds{0} || jitter > delay) {
        return fail("jitter", fmt::format("{} is out of range; accepted: from 0 up to the delay ({})",
                                          formatDuration(jitter), formatDuration(delay)));
      }
      if (auto r = validatePercent("correlation", d.correlation(), true); !r) {
        return r;
      }
      if (!v1::DelayDistribution_IsValid(d.distribution())) {
        return fail("distribution",
                    fmt::format("{} is not a distribution; accepted: uniform, normal, pareto, paretonormal",
                                static_cast<int>(d.distribution())));
      }
      if (d.distribution() > v1::DELAY_DISTRIBUTION_UNIFORM && jitter == microseconds{0}) {
        return fail("distribution",
                    "shapes the jitter, and jitter is 0; accepted: a jitter more than 0 with "
                    "normal, pareto or paretonormal, or leave distribution out");
      }
      if (auto r = validateRate("rate", d.rate_bps(), true); !r) {
        return r;
      }
      if (d.keep_order() && jitter == microseconds{0}) {
        return fail("keepOrder",
                    "keeps packets in order despite the jitter, and jitter is 0 (without jitter a delay never "
                    "reorders); accepted: a jitter more than 0 with keepOrder, or leave keepOrder out");
      }
      return {};
    }
    case v1::FaultSpec::kNetworkLoss: {
      const auto& l = spec.network_loss();
      if (auto r = validateTarget(l.target(), false); !r) {
        return r;
      }
      if (l.has_gilbert_elliott()) {
        const auto& ge = l.gilbert_elliott();
        if (l.percent() != 0 || l.correlation() != 0) {
          return fail(l.percent() != 0 ? "percent" : "correlation",
                      "cannot be given with gilbertElliott; accepted: either percent (and correlation) for random "
                      "loss, or gilbertElliott");
        }
        if (auto r = validatePercent("gilbertElliott.p", ge.p(), false); !r) {
          return r;
        }
        if (auto r = validatePercent("gilbertElliott.r", ge.r(), true); !r) {
          return r;
        }
        if (auto r = validatePercent("gilbertElliott.badLoss", ge.bad_loss(), true); !r) {
          return r;
        }
        return validatePercent("gilbertElliott.goodLoss", ge.good_loss(), true);
      }
      if (auto r = validatePercent("percent", l.percent(), false); !r) {
        return r;
      }
      return validatePercent("correlation", l.correlation(), true);
    }
    case v1::FaultSpec::kNetworkBandwidth: {
      const auto& b = spec.network_bandwidth();
      if (auto r = validateTarget(b.target(), false); !r) {
        return r;
      }
      if (auto r = validateRate("rate", b.rate_bps(), false); !r) {
        return r;
      }
      if (b.has_latency()) {
        if (b.limit_bytes() != 0) {
          return fail("latency", "cannot be given with limit (both size the queue); accepted: one of them");
        }
        if (auto r = validateDelay("latency", b.latency()); !r) {
          return r;
        }
      }
      return {};
    }
    case v1::FaultSpec::kNetworkDuplicate: {
      const auto& d = spec.network_duplicate();
      if (auto r = validateTarget(d.target(), false); !r) {
        return r;
      }
      return validateProbability(d.percent(), d.correlation());
    }
    case v1::FaultSpec::kNetworkCorrupt: {
      const auto& c = spec.network_corrupt();
      if (auto r = validateTarget(c.target(), false); !r) {
        return r;
      }
      return validateProbability(c.percent(), c.correlation());
    }
    case v1::FaultSpec::kNetworkReorder: {
      const auto& o = spec.network_reorder();
      if (auto r = validateTarget(o.target(), false); !r) {
        return r;
      }
      if (auto r = validateProbability(o.percent(), o.correlation()); !r) {
        return r;
      }
      if (!o.has_delay()) {
        return fail("delay",
                    "is required: netem reorders by sending the picked packets at once and delaying the "
                    "others; accepted: a duration more than 0 and at most 1h, e.g. 10ms");
      }
      if (auto r = validateDelay("delay", o.delay()); !r) {
        return r;
      }
      if (o.gap() > 1'000'000) {
        return fail("gap", fmt::format("{} is out of range; accepted: 0 (none) to 1000000 packets", o.gap()));
      }
      return {};
    }
    case v1::FaultSpec::kNetworkPartition:
      return validateTarget(spec.network_partition().target(), true);
    case v1::FaultSpec::kProcessKill: {
      const auto& k = spec.process_kill();
      if (k.has_process()) {
        if (k.selector_case() != v1::ProcessKill::SELECTOR_NOT_SET) {
          return fail("process", "has both the process selector and the older pid/name field; accepted: one of them");
        }
        if (auto r = validateSelector(k.process(), "process."); !r) {
          return r;
        }
      } else {
        if (k.selector_case() == v1::ProcessKill::kPid && k.pid() <= 1) {
          return fail("pid", fmt::format("{} cannot be targeted; accepted: a pid greater than 1", k.pid()));
        }
        if (k.selector_case() == v1::ProcessKill::kName && k.name().empty()) {
          return fail("name", "is empty; accepted: a process name such as nginx");
        }
        if (k.selector_case() == v1::ProcessKill::SELECTOR_NOT_SET) {
          return fail("pid", "no process selector; accepted: pid or name");
        }
      }
      if (parseSignal(k.signal()) == 0) {
        return fail("signal", fmt::format("'{}' is not a signal; accepted: a name such as SIGKILL, TERM, "
                                          "or a number from 1 to {}",
                                          k.signal(), NSIG - 1));
      }
      const auto every = toMicros(k.every());
      if (k.has_every() && (every < kMinKillEvery || every > kMaxDelay)) {
        return fail("every", fmt::format("{} is out of range; accepted: from {} to 1h, or leave it out for one kill",
                                         formatDuration(every), formatDuration(kMinKillEvery)));
      }
      return {};
    }
    case v1::FaultSpec::kProcessPause: {
      const auto mechanism = spec.process_pause().mechanism();
      if (mechanism != v1::PAUSE_MECHANISM_AUTO && mechanism != v1::PAUSE_MECHANISM_FREEZE) {
        return fail("mechanism", fmt::format("{} is not a pause mechanism; accepted: auto (0: freeze where a process "
                                             "owns its cgroup, else SIGSTOP) or freeze (1: cgroup.freeze only)",
                                             static_cast<int>(mechanism)));
      }
      return validateSelector(spec.process_pause().process(), "process.");
    }
    case v1::FaultSpec::kStressCpu: {
      const auto& c = spec.stress_cpu();
      if (c.workers() < 1 || c.workers() > kMaxStressWorkers) {
        return fail("workers", fmt::format("{} is out of range; accepted: 1 to {}", c.workers(), kMaxStressWorkers));
      }
      return validatePercent("load", c.load_percent(), false);
    }
    case v1::FaultSpec::kStressMemory: {
      const auto bytes = spec.stress_memory().bytes();
      if (bytes < kMinStressBytes || bytes > kMaxStressBytes) {
        return fail("bytes", fmt::format("{} bytes is out of range; accepted: 1MiB to 1TiB", bytes));
      }
      return {};
    }
    case v1::FaultSpec::kCgroupSqueeze: {
      const auto& q = spec.cgroup_squeeze();
      if (!isCgroupPath(q.cgroup()) || q.cgroup() == "/") {
        return fail("cgroup", fmt::format("'{}' is not a cgroup path below the root; accepted: a path from the "
                                          "cgroup v2 root without '..', e.g. /system.slice/nginx.service",
                                          q.cgroup()));
      }
      if (!q.has_cpus() && !q.has_memory_high_bytes() && !q.has_pids_max()) {
        return fail("cpus", "no limit to squeeze; accepted: at least one of cpus, memoryHigh, pidsMax");
      }
      if (q.has_cpus() && (!std::isfinite(q.cpus()) || q.cpus() < 0.01 || q.cpus() > 1024)) {
        return fail("cpus", fmt::format("{:g} is out of range; accepted: 0.01 to 1024 CPUs", q.cpus()));
      }
      if (q.has_memory_high_bytes() && q.memory_high_bytes() < kMinStressBytes) {
        return fail("memoryHigh", fmt::format("{} bytes is too small; accepted: at least 1MiB", q.memory_high_bytes()));
      }
      if (q.has_pids_max() && (q.pids_max() < 1 || q.pids_max() > kMaxPidsMax)) {
        return fail("pidsMax", fmt::format("{} is out of range (accepted: 1..{}, a number of processes)", q.pids_max(),
                                           kMaxPidsMax));
      }
      return {};
    }
    default:
      break;
  }
  return fail("type",
              "no fault kind; accepted: network.delay, network.loss, network.bandwidth, network.duplicate, "
              "network.corrupt, network.reorder, network.partition, process.kill, process.pause, stress.cpu, "
              "stress.memory, cgroup.squeeze");
}

std::string checkAddress(std::string_view address, bool listening) {
  const std::string accepted = listening ? "HOST:PORT with PORT 0-65535 (0: any free port), or unix:PATH"
                                         : "HOST:PORT with PORT 1-65535, or unix:PATH";
  if (address.rfind("unix:", 0) == 0) {
    return address.size() > 5 ? "" : fmt::format("'{}' names no socket path; accepted: {}", address, accepted);
  }
  const auto colon = address.rfind(':');
  if (colon == std::string_view::npos || colon == 0) {
    return fmt::format("'{}' is not an address; accepted: {}", address, accepted);
  }
  const std::string_view host = address.substr(0, colon);
  const std::string_view port = address.substr(colon + 1);
  if (host.find(':') != std::string_view::npos && !(host.front() == '[' && host.back() == ']')) {
    return fmt::format("'{}': write an IPv6 address in brackets, e.g. [::1]:7443", address);
  }
  unsigned value = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || value > 65535 ||
      (value == 0 && !listening)) {
    return fmt::format("'{}' has no valid port ('{}'); accepted: {}", address, port, accepted);
  }
  return "";
}

std::string parseLabels(const std::vector<std::string>& labels, std::map<std::string, std::string>& out) {
  for (const auto& l : labels) {
    const auto eq = l.find('=');
    if (eq == std::string::npos || eq == 0) {
      return fmt::format("label '{}' is not KEY=VALUE (e.g. role=web)", l);
    }
    if (!out.emplace(l.substr(0, eq), l.substr(eq + 1)).second) {
      return fmt::format("label key '{}' is given twice", l.substr(0, eq));
    }
  }
  return "";
}

std::chrono::microseconds toMicros(const google::protobuf::Duration& d) {
  // A peer may send any int64 of seconds (2^62 s is 2^62 * 10^9 ns, past int64): clamp to about
  // 285 years either way, which still converts to nanoseconds (formatDuration) without overflow;
  // every caller refuses such a duration by its range.
  constexpr int64_t kMaxSeconds = 9'000'000'000;
  const int64_t seconds = std::clamp<int64_t>(d.seconds(), -kMaxSeconds, kMaxSeconds);
  return std::chrono::duration_cast<microseconds>(std::chrono::seconds{seconds}) +
         std::chrono::duration_cast<microseconds>(std::chrono::nanoseconds{d.nanos()});
}

google::protobuf::Duration toProto(std::chrono::nanoseconds d) {
  google::protobuf::Duration out;
  out.set_seconds(std::chrono::duration_cast<std::chrono::seconds>(d).count());
  out.set_nanos(static_cast<int32_t>((d % std::chrono::seconds{1}).count()));
  return out;
}

tl::expected<std::chrono::nanoseconds, std::string> parseDuration(std::string_view text) {
  const std::string accepted = "a number with a unit: us, ms, s, m or h (e.g. 250ms, 1.5s, 2m)";
  size_t unitAt = 0;
  while (unitAt < text.size() && (std::isdigit(static_cast<unsigned char>(text[unitAt])) || text[unitAt] == '.')) {
    ++unitAt;
  }
  if (unitAt == 0) {
    return tl::unexpected(fmt::format("'{}' is not a duration; accepted: {}", text, accepted));
  }
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + unitAt, value);
  if (ec != std::errc{} || end != text.data() + unitAt) {
    return tl::unexpected(fmt::format("'{}' is not a duration; accepted: {}", text, accepted));
  }
  const std::string_view unit = text.substr(unitAt);
  double nanosPerUnit = 0;
  if (unit == "us" || unit == "µs") {
    nanosPerUnit = 1e3;
  } else if (unit == "ms") {
    nanosPerUnit = 1e6;
  } else if (unit == "s") {
    nanosPerUnit = 1e9;
  } else if (unit == "m") {
    nanosPerUnit = 60e9;
  } else if (unit == "h") {
    nanosPerUnit = 3600e9;
  } else {
    return tl::unexpected(fmt::format("'{}' has no known unit; accepted: {}", text, accepted));
  }
  const double nanos = value * nanosPerUnit;
  if (nanos > 1e18) {
    return tl::unexpected(
        fmt::format("'{}' is too long to be a duration (more than 31 years); accepted: {}", text, accepted));
  }
  // Finer than a nanosecond cannot be kept: refused rather than rounded (1.0000000001s is not 1s).
  if (std::abs(nanos - std::round(nanos)) > 1e-3) {
    return tl::unexpected(fmt::format("'{}' is finer than 1ns; accepted: {}", text, accepted));
  }
  return std::chrono::nanoseconds{static_cast<int64_t>(std::llround(nanos))};
}

std::string formatDuration(std::chrono::nanoseconds d) {
  const auto n = d.count();
  if (n == 0) {
    return "0s";
  }
  if (n % 3'600'000'000'000 == 0 && n != 0) {
    return fmt::format("{}h", n / 3'600'000'000'000);
  }
  if (n % 60'000'000'000 == 0 && n != 0) {
    return fmt::format("{}m", n / 60'000'000'000);
  }
  if (n >= 1'000'000'000 || n <= -1'000'000'000) {
    return fmt::format("{:g}s", static_cast<double>(n) / 1e9);
  }
  if (n >= 1'000'000 || n <= -1'000'000) {
    return fmt::format("{:g}ms", static_cast<double>(n) / 1e6);
  }
  if (n >= 1'000 || n <= -1'000) {
    return fmt::format("{:g}us", static_cast<double>(n) / 1e3);
  }
  return fmt::format("{}ns", n);
}

}  // namespace faultline
