#include "agent/faults/network/traffic_match.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include <fmt/format.h>

namespace faultline::agent {
namespace {

constexpr uint16_t kEthIp = 0x0800;
constexpr uint16_t kEthIpv6 = 0x86DD;
constexpr size_t kMaxFilters = kMaxMatchCombinations;

using kernel::U32Key;

// Network-order word from 4 bytes.
uint32_t word(const uint8_t* bytes) {
  uint32_t w = 0;
  std::memcpy(&w, bytes, 4);
  return w;
}

// Keys for a prefix whose address starts at offset (4 bytes for IPv4, 16 for IPv6).
void addPrefix(std::vector<U32Key>& keys, const Cidr& cidr, int32_t offset) {
  const int bytes = cidr.family == AF_INET ? 4 : 16;
  for (int w = 0; w < bytes / 4; ++w) {
    const int bitsInWord = std::clamp(cidr.prefixLength - w * 32, 0, 32);
    if (bitsInWord == 0) {
      break;
    }
    const uint32_t hostMask = bitsInWord == 32 ? 0xFFFFFFFFu : ~(0xFFFFFFFFu >> bitsInWord);
    keys.push_back(U32Key{word(cidr.address.data() + w * 4), htonl(hostMask), offset + w * 4});
  }
}

void addProtocol(std::vector<U32Key>& keys, uint8_t number, int family) {
  if (family == AF_INET) {
    keys.push_back(U32Key{htonl(uint32_t{number} << 16), htonl(0x00FF0000u), 8});  // byte 9
  } else {
    keys.push_back(U32Key{htonl(uint32_t{number} << 8), htonl(0x0000FF00u), 4});  // byte 6
  }
}

// The ports key at offset at: IPv6 at 40 (right after the fixed header); IPv4 at 0 of the table
// a link node enters at the IPv4 payload (see filtersFor()).
void addPortKey(std::vector<U32Key>& keys, std::optional<uint16_t> source, std::optional<uint16_t> destination,
                int32_t at) {
  uint32_t value = 0;
  uint32_t mask = 0;
  if (source) {
    value |= uint32_t{*source} << 16;
    mask |= 0xFFFF0000u;
  }
  if (destination) {
    value |= *destination;
    mask |= 0x0000FFFFu;
  }
  keys.push_back(U32Key{htonl(value), htonl(mask), at});
}

kernel::U32Filter filterFor(int family, std::vector<U32Key> keys, uint32_t parent, uint16_t priority,
                            uint32_t classid) {
  if (keys.empty()) {
    keys.push_back(U32Key{0, 0, 0});  // matches every packet of the protocol
  }
  // Filters of one priority share one protocol in the kernel: IPv6 goes one priority later.
  const auto prio = static_cast<uint16_t>(family == AF_INET ? priority : priority + 1);
  return kernel::U32Filter{parent, prio, family == AF_INET ? kEthIp : kEthIpv6, std::move(keys), classid};
}

// The filters for one combination: keys (addresses, protocol) at the network header, and ports.
// IPv6, or no ports: one node. IPv4 with ports: a hash table of its own (the tableIndex-th of this
// priority), a node in it matching the ports at offset 0, and a link node matching the rest and
// the fragment offset 0 that enters the table at the IPv4 payload (IHL * 4), so packets with IP
// options match too.
void filtersFor(std::vector<kernel::U32Filter>& out, int family, std::vector<U32Key> keys,
                std::optional<uint16_t> sport, std::optional<uint16_t> dport, uint32_t parent, uint16_t priority,
                uint32_t classid, uint32_t& tableIndex) {
  if (!sport && !dport) {
    out.push_back(filterFor(family, std::move(keys), parent, priority, classid));
    return;
  }
  if (family == AF_INET6) {
    addPortKey(keys, sport, dport, 40);
    out.push_back(filterFor(family, std::move(keys), parent, priority, classid));
    return;
  }
  const uint32_t table = u32TableHandle(priority, ++tableIndex);
  kernel::U32Filter hashTable = filterFor(family, {}, parent, priority, classid);
  hashTable.keys.clear();
  hashTable.classid = 0;
  hashTable.divisor = 1;
  hashTable.handle = table;
  out.push_back(std::move(hashTable));
  std::vector<U32Key> ports;
  addPortKey(ports, sport, dport, 0);
  kernel::U32Filter portNode = filterFor(family, std::move(ports), parent, priority, classid);
  portNode.table = table;
  out.push_back(std::move(portNode));
  keys.push_back(U32Key{0, htonl(0x00001FFFu), 4});  // fragment offset 0: later fragments carry no ports
  kernel::U32Filter link = filterFor(family, std::move(keys), parent, priority, classid);
  link.classid = 0;
  link.link = table;
  link.skipIpv4Header = true;
  out.push_back(std::move(link));
}

}  // namespace

uint32_t u32TableHandle(uint16_t priority, uint32_t index) {
  return ((uint32_t{priority} << 9) | (index & 0x1FF)) << 20;
}

tl::expected<std::vector<kernel::U32Filter>, std::string> matchFilters(const v1::TrafficMatch& match, uint32_t parent,
                                                                       uint16_t priority, uint32_t classid) {
  std::vector<std::optional<Cidr>> destinations;
  std::vector<std::optional<Cidr>> sources;
  int family = 0;
  for (const auto& text : match.destination_cidrs()) {
    auto cidr = parseCidr(text);
    if (!cidr) {
      return tl::unexpected(cidr.error());
    }
    family = cidr->family;
    destinations.emplace_back(*cidr);
  }
  for (const auto& text : match.source_cidrs()) {
    auto cidr = parseCidr(text);
    if (!cidr) {
      return tl::unexpected(cidr.error());
    }
    family = cidr->family;
    sources.emplace_back(*cidr);
  }
  if (destinations.empty()) {
    destinations.emplace_back(std::nullopt);
  }
  if (sources.empty()) {
    sources.emplace_back(std::nullopt);
  }
  std::vector<std::optional<uint16_t>> dports(1);
  std::vector<std::optional<uint16_t>> sports(1);
  if (!match.destination_ports().empty()) {
    dports.clear();
    for (uint32_t p : match.destination_ports()) {
      dports.emplace_back(static_cast<uint16_t>(p));
    }
  }
  if (!match.source_ports().empty()) {
    sports.clear();
    for (uint32_t p : match.source_ports()) {
      sports.emplace_back(static_cast<uint16_t>(p));
    }
  }
  const std::vector<int> families = family != 0 ? std::vector<int>{family} : std::vector<int>{AF_INET, AF_INET6};
  const size_t count = families.size() * destinations.size() * sources.size() * dports.size() * sports.size();
  if (count > kMaxFilters) {
    return tl::unexpected(
        fmt::format("the match needs {} u32 filters (one per combination of destination, source "
                    "and ports); at most {} are accepted: list fewer, or use a CIDR or a protocol that covers several",
                    count, kMaxFilters));
  }
  std::vector<kernel::U32Filter> out;
  uint32_t tables = 0;
  for (int f : families) {
    const uint8_t proto = protocolNumber(match.protocol(), f);
    for (const auto& d : destinations) {
      for (const auto& s : sources) {
        for (const auto& dp : dports) {
          for (const auto& sp : sports) {
            std::vector<U32Key> keys;
            if (s) {
              addPrefix(keys, *s, f == AF_INET ? 12 : 8);
            }
            if (d) {
              addPrefix(keys, *d, f == AF_INET ? 16 : 24);
            }
            if (proto != 0) {
              addProtocol(keys, proto, f);
            }
            filtersFor(out, f, std::move(keys), sp, dp, parent, priority, classid, tables);
          }
        }
      }
    }
  }
  return out;
}

std::vector<kernel::U32Filter> exemptFilters(const std::vector<Endpoint>& endpoints, PeerSide side, uint32_t parent,
                                             uint16_t priority, uint32_t classid) {
  std::vector<kernel::U32Filter> out;
  // Tables of the destination side first, then of the source side: both calls share a priority.
  uint32_t tables = side == PeerSide::kDestination ? 0 : 0x100;
  for (const auto& e : endpoints) {
    const int f = e.address.family;
    std::vector<U32Key> keys;
    const bool destination = side == PeerSide::kDestination;
    addPrefix(keys, e.address, f == AF_INET ? (destination ? 16 : 12) : (destination ? 24 : 8));
    addProtocol(keys, IPPROTO_TCP, f);
    filtersFor(out, f, std::move(keys), destination ? std::nullopt : std::optional<uint16_t>(e.port),
               destination ? std::optional<uint16_t>(e.port) : std::nullopt, parent, priority, classid, tables);
  }
  return out;
}

}  // namespace faultline::agent
