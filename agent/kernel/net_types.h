// Network values in the kernel seam's vocabulary: a CIDR, an interface name's rules, the most
// rules one match may make, an endpoint (address and TCP port), and an IP protocol number. Plain
// values and pure functions; thread-safe. They sit here, at the bottom,
// because the seam's own interfaces (packet_steering.h) speak in them; the fault specs above
// (agent/faults/spec.h) parse and validate with them. Their namespaces are the ones they had
// before they moved here, so their users did not change.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include <tl/expected.hpp>

#include "faultline/v1/faults.pb.h"

namespace faultline {

// An IPv4 or IPv6 prefix: "10.0.0.0/8", "2001:db8::/32", or an address alone (/32, /128).
struct Cidr {
  int family = 0;                     // AF_INET or AF_INET6
  std::array<uint8_t, 16> address{};  // network byte order; IPv4 uses the first 4 bytes
  int prefixLength = 0;               // 0-32 (IPv4), 0-128 (IPv6)
};
// Parses a CIDR; the error says what is wrong (host bits set: names the network meant).
[[nodiscard]] tl::expected<Cidr, std::string> parseCidr(std::string_view text);

// Linux interface name rules (see dev_valid_name() in net/core/dev.c).
[[nodiscard]] bool isValidInterfaceName(std::string_view name);

// The most combinations (destination x source x destination port x source port, per address
// family) a traffic match may have: each is one u32 filter or netfilter rule.
inline constexpr uint64_t kMaxMatchCombinations = 256;

}  // namespace faultline

namespace faultline::agent {

// One endpoint the agent talks to (its controller): an address and a TCP port.
struct Endpoint {
  Cidr address;  // a host address (/32 or /128)
  uint16_t port = 0;
};

// The IP protocol number (IPPROTO_*) of a match's protocol in family (AF_INET or AF_INET6: icmp is
// IPPROTO_ICMP or IPPROTO_ICMPV6); 0 for PROTOCOL_UNSPECIFIED ("any"). Shared by the u32 filters
// and the netfilter rules (kernel/packet_steering.h).
[[nodiscard]] uint8_t protocolNumber(v1::Protocol protocol, int family);

}  // namespace faultline::agent
