// Packet steering's shared part: the rule planning both backends install (checkRules(), the
// combinations of a match), what they read back the same way (bound queues, owned slots, a slot's
// state and its changes) and openPacketSteering(), which picks the backend.
#include "agent/kernel/packet_steering.h"
#include "agent/kernel/packet_steering_internal.h"
#include "agent/kernel/spec_files.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <sys/syscall.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace faultline::kernel {
using namespace steering_internal;
namespace {

// The combinations of a match (destination x source x destination port x source port, per address
// family), or words saying why the rules cannot express it.
tl::expected<std::vector<Combination>, std::string> combinations(const v1::TrafficMatch& match) {
  std::vector<std::optional<Cidr>> destinations;
  std::vector<std::optional<Cidr>> sources;
  int family = 0;
  for (const auto* list : {&match.destination_cidrs(), &match.source_cidrs()}) {
    for (const auto& text : *list) {
      auto cidr = parseCidr(text);
      if (!cidr) {
        return tl::unexpected(fmt::format("match CIDR '{}': {}", text, cidr.error()));
      }
      if (family != 0 && cidr->family != family) {
        return tl::unexpected(
            fmt::format("match CIDR '{}' is of another address family than the others; accepted: one family", text));
      }
      family = cidr->family;
      (list == &match.destination_cidrs() ? destinations : sources).emplace_back(*cidr);
    }
  }
  if (!v1::Protocol_IsValid(match.protocol())) {
    return tl::unexpected(fmt::format("match protocol {} is unknown; accepted: tcp, udp or icmp", match.protocol()));
  }
  const bool ports = !match.destination_ports().empty() || !match.source_ports().empty();
  if (ports && match.protocol() != v1::PROTOCOL_TCP && match.protocol() != v1::PROTOCOL_UDP) {
    return tl::unexpected(std::string("match ports need protocol tcp or udp"));
  }
  std::vector<std::optional<uint16_t>> dports(1);
  std::vector<std::optional<uint16_t>> sports(1);
  for (auto [list, out] : {std::pair{&match.destination_ports(), &dports}, std::pair{&match.source_ports(), &sports}}) {
    if (!list->empty()) {
      out->clear();
    }
    for (uint32_t p : *list) {
      if (p < 1 || p > 65535) {
        return tl::unexpected(fmt::format("match port {} is out of range; accepted: 1 to 65535", p));
      }
      out->emplace_back(static_cast<uint16_t>(p));
    }
  }
  if (destinations.empty()) {
    destinations.emplace_back(std::nullopt);
  }
  if (sources.empty()) {
    sources.emplace_back(std::nullopt);
  }
  const std::vector<int> families = family != 0 ? std::vector<int>{family} : std::vector<int>{AF_INET, AF_INET6};
  const size_t count = families.size() * destinations.size() * sources.size() * dports.size() * sports.size();
  if (count > kMaxMatchCombinations) {
    return tl::unexpected(
        fmt::format("the match needs {} rules (one per combination of destination, source and "
                    "ports); at most {} are accepted: split it into several faults",
                    count, kMaxMatchCombinations));
  }
  std::vector<Combination> out;
  for (int f : families) {
    for (const auto& d : destinations) {
      for (const auto& s : sources) {
        for (const auto& dp : dports) {
          for (const auto& sp : sports) {
            out.push_back(Combination{f, d, s, dp, sp, agent::protocolNumber(match.protocol(), f)});
          }
        }
      }
    }
  }
  return out;
}

// The namespace's bound queues by number, from /proc/thread-self/net/netfilter/nfnetlink_queue
// (the calling thread's namespace). No file (nfnetlink_queue not loaded): none bound.
std::map<uint16_t, QueueState> boundQueues() {
  std::map<uint16_t, QueueState> queues;
  std::ifstream file("/proc/thread-self/net/netfilter/nfnetlink_queue");
  std::string line;
  while (std::getline(file, line)) {
    // queue_num peer_portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
    std::istringstream in(line);
    uint32_t number = 0, portid = 0, total = 0, mode = 0, range = 0, dropped = 0, userDropped = 0, sequence = 0;
    if (in >> number >> portid >> total >> mode >> range >> dropped >> userDropped >> sequence && number <= 0xFFFF) {
      queues[static_cast<uint16_t>(number)] = QueueState{true, total, sequence};
    }
  }
  return queues;
}

// A slot's state read by either backend, completed: its parts in name order (so two reads compare
// part by part) and its queue as the namespace's nfnetlink_queue lists it (run in the namespace).
SlotState finishSlotState(SlotState state, uint16_t slot) {
  std::sort(state.parts.begin(), state.parts.end(),
            [](const SteeringPart& a, const SteeringPart& b) { return a.name < b.name; });
  const auto queues = boundQueues();
  if (auto it = queues.find(static_cast<uint16_t>(kQueueBase + slot)); it != queues.end()) {
    state.queue = it->second;
  }
  return state;
}

}  // namespace

namespace steering_internal {

tl::expected<SlotState, std::error_code> inspectSlot(
    int nsFd, uint16_t slot, const std::function<tl::expected<SlotState, std::error_code>()>& read) {
  if (slot >= kMaxSlots) {
    return tl::unexpected(errnoCode(EINVAL));
  }
  return onThreadIn<tl::expected<SlotState, std::error_code>>(
      nsFd,
      [&]() -> tl::expected<SlotState, std::error_code> {
        auto state = read();
        if (!state) {
          return state;
        }
        return finishSlotState(std::move(*state), slot);
      },
      [](int e) -> tl::expected<SlotState, std::error_code> { return tl::unexpected(errnoCode(e)); });
}

bool hasNetAdmin() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &header, data) != 0) {
    return true;  // cannot tell: let the kernel's answer stand
  }
  return (data[CAP_NET_ADMIN / 32].effective & (1u << (CAP_NET_ADMIN % 32))) != 0;
}

tl::expected<std::vector<Combination>, Failure> checkRules(const SteeringRules& rules) {
  const auto invalid = [](std::string words) { return tl::unexpected(Failure{errnoCode(EINVAL), std::move(words)}); };
  if (rules.slot >= kMaxSlots) {
    return invalid(fmt::format("slot {} is out of range; accepted: 0 to {}", rules.slot, kMaxSlots - 1));
  }
  if (!isValidInterfaceName(rules.interface)) {
    return invalid(
        fmt::format("interface '{}' is not a valid interface name; accepted: 1-15 bytes without '/', ':' "
                    "or whitespace",
                    rules.interface));
  }
  if (!rules.egress && !rules.ingress) {
    return invalid("neither egress nor ingress is set; accepted: one or both");
  }
  if (rules.verdict == SteeringRules::Verdict::kDropRandom &&
      !(rules.dropPercent > 0 && rules.dropPercent <= 100 && std::isfinite(rules.dropPercent))) {
    return invalid(
        fmt::format("drop percent {} is out of range; accepted: more than 0 and at most 100", rules.dropPercent));
  }
  for (const auto& e : rules.exempt) {
    if ((e.address.family != AF_INET && e.address.family != AF_INET6) || e.port == 0) {
      return invalid("an exempt endpoint has no address or port; accepted: an IPv4 or IPv6 address and a port");
    }
  }
  auto combos = combinations(rules.match);
  if (!combos) {
    return invalid(combos.error());
  }
  return std::move(*combos);
}

std::optional<uint16_t> slotOf(std::string_view name, std::string_view prefix) {
  if (name.substr(0, prefix.size()) != prefix) {
    return std::nullopt;
  }
  const std::string_view digits = name.substr(prefix.size());
  if (digits.empty() || digits.size() > 3 || (digits.size() > 1 && digits[0] == '0') ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  const int value = std::stoi(std::string(digits));
  return value < kMaxSlots ? std::optional<uint16_t>(static_cast<uint16_t>(value)) : std::nullopt;
}

std::vector<uint16_t> servedSlots() {
  std::vector<uint16_t> slots;
  for (const auto& [number, state] : boundQueues()) {
    if (number >= kQueueBase && number < kQueueBase + kMaxSlots) {
      slots.push_back(static_cast<uint16_t>(number - kQueueBase));
    }
  }
  return slots;
}

VoidResult voidOnError(int e) {
  return fail(e, fmt::format("cannot enter the network namespace: {}", std::strerror(e)));
}

tl::expected<PacketSteering::Owned, std::error_code> ownedOnError(int e) {
  return tl::unexpected(errnoCode(e));
}

PacketSteering::Owned sortOwned(const std::vector<std::string>& names, std::string_view prefix) {
  PacketSteering::Owned owned;
  for (const auto& n : names) {
    if (auto slot = slotOf(n, prefix)) {
      owned.slots.push_back(*slot);
    } else {
      owned.strays.push_back(n);
    }
  }
  std::sort(owned.slots.begin(), owned.slots.end());
  owned.slots.erase(std::unique(owned.slots.begin(), owned.slots.end()), owned.slots.end());
  std::sort(owned.strays.begin(), owned.strays.end());
  owned.strays.erase(std::unique(owned.strays.begin(), owned.strays.end()), owned.strays.end());
  return owned;
}

}  // namespace steering_internal

std::string_view steeringBackendName(SteeringBackend backend) {
  return backend == SteeringBackend::kNftables ? "nftables" : "xtables";
}

std::vector<std::string> steeringChanges(const SlotState& installed, const SlotState& now) {
  const auto find = [&](const std::string& name) -> const SteeringPart* {
    auto it = std::find_if(now.parts.begin(), now.parts.end(), [&](const SteeringPart& p) { return p.name == name; });
    return it == now.parts.end() ? nullptr : &*it;
  };
  std::vector<std::string> changes;
  std::vector<std::string> gone;
  for (const auto& part : installed.parts) {
    const SteeringPart* current = find(part.name);
    if (current == nullptr) {
      gone.push_back(part.name);
    } else if (current->rules != part.rules) {
      changes.push_back(fmt::format("the {} now has {} {}, not the {} installed (someone changed it)", part.name,
                                    current->rules, current->rules == 1 ? "rule" : "rules", part.rules));
    } else if (current->digest != part.digest) {
      changes.push_back(fmt::format("the rules of the {} are not those installed (someone replaced them)", part.name));
    }
  }
  if (!installed.parts.empty() && gone.size() == installed.parts.size()) {
    return {
        fmt::format("none of its rules is left: {} {} gone (someone removed them: nft, iptables, a "
                    "faultline-agent revert-all, or faultline's watchdog while this agent was stopped)",
                    fmt::join(gone, ", "), gone.size() == 1 ? "is" : "are")};
  }
  std::vector<std::string> out;
  for (const auto& name : gone) {
    out.push_back(name.find("jump rule") != std::string::npos
                      ? fmt::format("the {} is gone (someone deleted it): packets no longer reach the chain", name)
                      : fmt::format("the {} is gone (someone deleted it)", name));
  }
  out.insert(out.end(), changes.begin(), changes.end());
  return out;
}

tl::expected<std::unique_ptr<PacketSteering>, std::error_code> openPacketSteering(SteeringBackend backend,
                                                                                  const std::string& netns) {
  return openPacketSteeringWithLockWait(backend, netns, kXtablesLockWait);
}

tl::expected<std::unique_ptr<PacketSteering>, std::error_code> openPacketSteeringWithLockWait(
    SteeringBackend backend, const std::string& netns, std::chrono::milliseconds xtablesLockWait) {
  int fd = -1;
  if (!netns.empty()) {
    // Without blocking and checked to be a network namespace: a FIFO named here is refused at once.
    auto opened = openNetnsFile(netns);
    if (!opened) {
      return tl::unexpected(opened.error().code);
    }
    fd = opened->release();
    // setns() on a short-lived thread: EINVAL when fd is no network namespace.
    const int entered = onThreadIn<int>(
        fd, [] { return 0; }, [](int e) { return e; });
    if (entered != 0) {
      ::close(fd);
      return tl::unexpected(errnoCode(entered));
    }
  }
  if (backend == SteeringBackend::kNftables) {
    return makeNftSteering(fd);
  }
  return makeXtSteering(fd, xtablesLockWait);
}

}  // namespace faultline::kernel
