// u32 filters (tc-u32(8)) for a network fault's traffic match, and for the agent's own channel to
// its controller, which no fault may touch. Pure functions; thread-safe.
//
// Offsets are from the network header. IPv4: source address at 12, destination at 16, protocol
// byte at 9; ports at the IPv4 payload, wherever IHL puts it (20 bytes, or up to 60 with IP
// options): a link node matching the addresses and protocol enters a hash table of its own at
// offset IHL * 4 (u32's variable offset), whose node matches the ports at 0/2. IPv6: next header
// at 6, source at 8, destination at 24, ports at 40/42: a port match sees TCP/UDP directly after
// the fixed header only (packets with extension headers never match a port rule). Non-first
// fragments carry no ports and do not match a port rule.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <tl/expected.hpp>

#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "faultline/v1/faults.pb.h"

namespace faultline::agent {

// Which side of a packet a rule looks at: egress filters match the peer as destination, ingress
// (ifb) filters as source.
enum class PeerSide { kDestination, kSource };

// The filters that steer a validated match's packets to classid: one filter per combination of
// destination x source x destination port x source port (an empty list is "any"), all with
// protocol ETH_P_IP or ETH_P_IPV6 after the match's addresses (both when it has none), IPv4 at
// priority and IPv6 at priority + 1 (the kernel keeps one protocol per filter priority). An IPv4
// combination with ports is three requests, in this order: its hash table (u32TableHandle()), the
// ports node in it, the link node. errors: words, when the match needs more than 256 combinations.
[[nodiscard]] tl::expected<std::vector<kernel::U32Filter>, std::string> matchFilters(const v1::TrafficMatch& match,
                                                                                     uint32_t parent, uint16_t priority,
                                                                                     uint32_t classid);

// The handle of the index-th (1-based) u32 hash table of priority: (priority << 9 | index) << 20,
// "201:" for the first of priority 1; unique in faultline's tree for priorities 1-3 and up to 511
// tables each.
[[nodiscard]] uint32_t u32TableHandle(uint16_t priority, uint32_t index);

// Filters that send the TCP packets to (side kDestination) or from (kSource) each endpoint to
// classid (htb's direct queue: never faulted).
[[nodiscard]] std::vector<kernel::U32Filter> exemptFilters(const std::vector<Endpoint>& endpoints, PeerSide side,
                                                           uint32_t parent, uint16_t priority, uint32_t classid);

}  // namespace faultline::agent
