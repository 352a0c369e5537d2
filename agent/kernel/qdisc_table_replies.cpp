// The replies QdiscTable reads: RTM_NEWQDISC, RTM_NEWLINK and RTM_NEWTFILTER messages as the kernel
// dumps them, parsed from bytes with libnl's attribute parsers, so they are unit-tested on hand-built
// buffers without a kernel.
#include "agent/kernel/qdisc_table.h"
#include "agent/kernel/qdisc_table_internal.h"

#include <arpa/inet.h>
#include <linux/if_link.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/tc_act/tc_mirred.h>

#include <netlink/attr.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace faultline::kernel {
using namespace qdisc_internal;
namespace {

std::string attrString(const nlattr* attr) {
  const auto* text = static_cast<const char*>(nla_data(attr));
  return {text, strnlen(text, static_cast<size_t>(std::max(0, nla_len(attr))))};
}

// One reply, copied into aligned storage with its header checked and its attributes parsed. attrs
// point into storage; a move keeps them valid (the vector's buffer moves with it), a copy would not.
struct Reply {
  std::vector<uint32_t> storage;
  std::vector<nlattr*> attrs;  // by attribute type, 0 to the parser's maximum; nullptr when absent
  Reply(std::vector<uint32_t> bytes, size_t maxAttr) : storage(std::move(bytes)), attrs(maxAttr + 1) {}
  Reply(Reply&&) = default;
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;
  [[nodiscard]] nlmsghdr* header() { return reinterpret_cast<nlmsghdr*>(storage.data()); }
  // The fixed header (tcmsg, ifinfomsg, ...) after the netlink header, copied out.
  template <typename Fixed>
  [[nodiscard]] Fixed fixed() {
    Fixed out{};
    std::memcpy(&out, nlmsg_data(header()), sizeof(out));
    return out;
  }
};

// message, with a fixed header of type Fixed and attributes up to maxAttr; type 0: of any type.
// errors: EPROTO shorter than its headers, a length that disagrees with the buffer, another type,
// or attributes that do not parse.
template <typename Fixed>
tl::expected<Reply, std::error_code> parseReply(std::span<const uint8_t> message, uint16_t type, int maxAttr) {
  if (message.size() < NLMSG_LENGTH(sizeof(Fixed))) {
    return fail(EPROTO);
  }
  Reply reply(aligned(message), static_cast<size_t>(maxAttr));
  const nlmsghdr* hdr = reply.header();
  if ((type != 0 && hdr->nlmsg_type != type) || hdr->nlmsg_len < NLMSG_LENGTH(sizeof(Fixed)) ||
      hdr->nlmsg_len > message.size()) {
    return fail(EPROTO);
  }
  if (nlmsg_parse(reply.header(), sizeof(Fixed), reply.attrs.data(), maxAttr, nullptr) < 0) {
    return fail(EPROTO);
  }
  return reply;
}

}  // namespace

namespace qdisc_internal {

tl::expected<std::pair<int, std::string>, std::error_code> parseLinkMessage(std::span<const uint8_t> message) {
  const size_t fixed = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(ifinfomsg));
  if (message.size() < fixed) {
    return fail(EPROTO);
  }
  ifinfomsg ifi{};
  std::memcpy(&ifi, message.data() + NLMSG_HDRLEN, sizeof(ifi));
  size_t at = fixed;
  while (at + sizeof(rtattr) <= message.size()) {
    rtattr attr{};
    std::memcpy(&attr, message.data() + at, sizeof(attr));
    if (attr.rta_len < sizeof(rtattr) || at + attr.rta_len > message.size()) {
      return fail(EPROTO);
    }
    if (attr.rta_type == IFLA_IFNAME) {
      const auto* name = reinterpret_cast<const char*>(message.data() + at + RTA_LENGTH(0));
      const size_t len = attr.rta_len - RTA_LENGTH(0);
      return std::make_pair(ifi.ifi_index, std::string(name, strnlen(name, len)));
    }
    at += RTA_ALIGN(attr.rta_len);
  }
  return fail(EPROTO);
}

std::vector<uint32_t> aligned(std::span<const uint8_t> bytes) {
  std::vector<uint32_t> out((bytes.size() + 3) / 4);
  if (!bytes.empty()) {
    std::memcpy(out.data(), bytes.data(), bytes.size());
  }
  return out;
}

tl::expected<LinkInfo, std::error_code> parseLinkInfoMessage(std::span<const uint8_t> message) {
  auto reply = parseReply<ifinfomsg>(message, 0, IFLA_MAX);
  if (!reply) {
    return tl::unexpected(reply.error());
  }
  const auto& tb = reply->attrs;
  if (tb[IFLA_IFNAME] == nullptr) {
    return fail(EPROTO);
  }
  LinkInfo out;
  out.index = reply->fixed<ifinfomsg>().ifi_index;
  out.name = attrString(tb[IFLA_IFNAME]);
  if (tb[IFLA_LINKINFO] != nullptr) {
    nlattr* info[IFLA_INFO_MAX + 1] = {};
    if (nla_parse_nested(info, IFLA_INFO_MAX, tb[IFLA_LINKINFO], nullptr) < 0) {
      return fail(EPROTO);
    }
    if (info[IFLA_INFO_KIND] != nullptr) {
      out.kind = attrString(info[IFLA_INFO_KIND]);
    }
  }
  return out;
}

}  // namespace qdisc_internal

tl::expected<IngressFilter, std::error_code> parseIngressFilter(std::span<const uint8_t> message) {
  auto reply = parseReply<tcmsg>(message, RTM_NEWTFILTER, TCA_MAX);
  if (!reply) {
    return tl::unexpected(reply.error());
  }
  const auto& tb = reply->attrs;
  const auto tcm = reply->fixed<tcmsg>();
  IngressFilter filter;
  filter.priority = static_cast<uint16_t>(TC_H_MAJ(tcm.tcm_info) >> 16);
  filter.protocol = ntohs(static_cast<uint16_t>(TC_H_MIN(tcm.tcm_info)));
  filter.handle = tcm.tcm_handle;
  filter.kind = tb[TCA_KIND] != nullptr ? attrString(tb[TCA_KIND]) : "";
  std::vector<int>& targets = filter.redirects;
  if (filter.kind != "u32" || tb[TCA_OPTIONS] == nullptr) {
    return filter;
  }
  nlattr* u32[TCA_U32_MAX + 1] = {};
  if (nla_parse_nested(u32, TCA_U32_MAX, tb[TCA_OPTIONS], nullptr) < 0) {
    return fail(EPROTO);
  }
  if (u32[TCA_U32_ACT] == nullptr) {
    return filter;
  }
  nlattr* action = nullptr;
  int rem = 0;
  nla_for_each_nested(action, u32[TCA_U32_ACT], rem) {
    nlattr* act[TCA_ACT_MAX + 1] = {};
    if (nla_parse_nested(act, TCA_ACT_MAX, action, nullptr) < 0) {
      return fail(EPROTO);
    }
    if (act[TCA_ACT_KIND] == nullptr || attrString(act[TCA_ACT_KIND]) != "mirred" || act[TCA_ACT_OPTIONS] == nullptr) {
      continue;
    }
    nlattr* mirred[TCA_MIRRED_MAX + 1] = {};
    if (nla_parse_nested(mirred, TCA_MIRRED_MAX, act[TCA_ACT_OPTIONS], nullptr) < 0) {
      return fail(EPROTO);
    }
    if (mirred[TCA_MIRRED_PARMS] == nullptr ||
        nla_len(mirred[TCA_MIRRED_PARMS]) < static_cast<int>(sizeof(tc_mirred))) {
      return fail(EPROTO);
    }
    tc_mirred parms{};
    std::memcpy(&parms, nla_data(mirred[TCA_MIRRED_PARMS]), sizeof(parms));
    targets.push_back(static_cast<int>(parms.ifindex));
  }
  return filter;
}

tl::expected<DumpedQdisc, std::error_code> parseQdiscMessage(std::span<const uint8_t> message) {
  auto reply = parseReply<tcmsg>(message, RTM_NEWQDISC, TCA_MAX);
  if (!reply) {
    return tl::unexpected(reply.error());
  }
  const auto& tb = reply->attrs;
  if (tb[TCA_KIND] == nullptr || nla_len(tb[TCA_KIND]) <= 0) {
    return fail(EPROTO);
  }
  const auto tcm = reply->fixed<tcmsg>();
  DumpedQdisc out;
  out.ifindex = tcm.tcm_ifindex;
  out.info.kind = attrString(tb[TCA_KIND]);
  out.info.handle = tcm.tcm_handle;
  out.info.parent = tcm.tcm_parent;
  if (tb[TCA_OPTIONS] != nullptr) {
    const auto* data = static_cast<const uint8_t*>(nla_data(tb[TCA_OPTIONS]));
    out.info.options.assign(data, data + nla_len(tb[TCA_OPTIONS]));
  }
  return out;
}

}  // namespace faultline::kernel
