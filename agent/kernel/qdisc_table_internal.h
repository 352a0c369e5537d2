// Internal to agent/kernel/qdisc_table*.cpp: what the QdiscTable's three files share (the request
// encoders in qdisc_table_requests.cpp, the reply parsers in qdisc_table_replies.cpp, the table that
// sends them in qdisc_table.cpp). Not part of the kernel seam's API: include qdisc_table.h instead.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <netlink/msg.h>
#include <tl/expected.hpp>

#include "agent/kernel/qdisc_table.h"

namespace faultline::kernel::qdisc_internal {

using Bytes = std::vector<uint8_t>;

inline std::error_code errnoCode(int e) {
  return {e, std::generic_category()};
}

inline tl::unexpected<std::error_code> fail(int e) {
  return tl::unexpected(errnoCode(e));
}

// savedErrno: errno read right after the failing libnl call (0 when libnl failed on its own).
std::error_code libnlError(int nle, int savedErrno);

struct MsgFree {
  void operator()(nl_msg* m) const { nlmsg_free(m); }
};
using MsgPtr = std::unique_ptr<nl_msg, MsgFree>;

// Requests only the table sends (qdisc_table_requests.cpp); as the public builders, with an ack
// asked for (a dump: NLM_F_DUMP instead).
// RTM_GETLINK of ifname (IFLA_IFNAME), stats skipped.
tl::expected<Bytes, std::error_code> buildGetLinkRequest(std::string_view ifname);
// RTM_NEWLINK setting IFF_UP on ifindex.
tl::expected<Bytes, std::error_code> buildLinkUpRequest(int ifindex);
// RTM_GETQDISC dump (the kernel dumps every interface's qdiscs whatever ifindex says).
tl::expected<Bytes, std::error_code> buildDumpQdiscsRequest(int ifindex);
// RTM_GETLINK dump of every interface, stats skipped.
tl::expected<Bytes, std::error_code> buildDumpLinksRequest();
// RTM_GETTFILTER dump of the filters on ifindex's ingress qdisc (parent ffff:).
tl::expected<Bytes, std::error_code> buildDumpIngressFiltersRequest(int ifindex);

// Replies only the table reads (qdisc_table_replies.cpp).
// The index and IFLA_IFNAME of one RTM_NEWLINK message (header included).
// errors: EPROTO truncated or malformed, or no name.
tl::expected<std::pair<int, std::string>, std::error_code> parseLinkMessage(std::span<const uint8_t> message);
// Index, name and IFLA_INFO_KIND of one RTM_NEWLINK message (header included).
// errors: EPROTO truncated or malformed, or no name.
tl::expected<LinkInfo, std::error_code> parseLinkInfoMessage(std::span<const uint8_t> message);

// Copies a message into 4-byte aligned storage so libnl's parsers may read it in place.
std::vector<uint32_t> aligned(std::span<const uint8_t> bytes);

}  // namespace faultline::kernel::qdisc_internal
