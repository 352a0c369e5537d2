// The rtnetlink requests QdiscTable sends, built as bytes with libnl-3 messages (sent by
// qdisc_table.cpp); the tc requests are encoded here with the same units libnl-route uses (delay in µs -> kernel ticks,
// probabilities on the u32 scale). libnl-route 3.7's own builders are not used because they cannot carry what
// validateFaultSpec() accepts: rtnl_netem_set_delay() takes int µs and fills only the u32 tick field (≤ ~274 s, the
// spec allows 1 h), rtnl_qdisc_tbf_set_rate() takes int bytes/s (≤ ~17 Gbit/s, the spec allows
// 1 Tbit/s) and sends neither TCA_TBF_RATE64 nor TCA_TBF_BURST, and libnl objects do not keep the
// raw TCA_OPTIONS bytes a restore needs.
#include "agent/kernel/qdisc_table.h"
#include "agent/kernel/qdisc_table_internal.h"

#include <net/if.h>

#include <arpa/inet.h>
#include <linux/if_link.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/tc_act/tc_mirred.h>

#include <netlink/errno.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/utils.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>

namespace faultline::kernel::qdisc_internal {
namespace {

// libnl reports its own NLE_* codes; nl_syserr2nlerr() only goes errno -> NLE, so this goes back.
// Used only when no errno was captured at the failing call.
int errnoFromNle(int nle) {
  switch (nle < 0 ? -nle : nle) {
    case NLE_INTR:
      return EINTR;
    case NLE_BAD_SOCK:
      return EBADF;
    case NLE_AGAIN:
      return EAGAIN;
    case NLE_NOMEM:
      return ENOMEM;
    case NLE_EXIST:
      return EEXIST;
    case NLE_INVAL:
    case NLE_MISSING_ATTR:
    case NLE_ATTRSIZE:
      return EINVAL;
    case NLE_RANGE:
      return ERANGE;
    case NLE_MSGSIZE:
      return EMSGSIZE;
    case NLE_OPNOTSUPP:
    case NLE_MSGTYPE_NOSUPPORT:
      return EOPNOTSUPP;
    case NLE_AF_NOSUPPORT:
      return EAFNOSUPPORT;
    case NLE_OBJ_NOTFOUND:
    case NLE_NOATTR:
      return ENOENT;
    case NLE_NOADDR:
      return EADDRNOTAVAIL;
    case NLE_BUSY:
      return EBUSY;
    case NLE_PROTO_MISMATCH:
      return EPROTONOSUPPORT;
    case NLE_NOACCESS:
      return EACCES;
    case NLE_PERM:
      return EPERM;
    case NLE_NODEV:
      return ENODEV;
    case NLE_DUMP_INTR:
      return EAGAIN;
    case NLE_SEQ_MISMATCH:
    case NLE_MSG_OVERFLOW:
    case NLE_MSG_TRUNC:
    case NLE_MSG_TOOSHORT:
    case NLE_PARSE_ERR:
      return EPROTO;
    default:
      return EIO;
  }
}

}  // namespace

// savedErrno: errno read right after the failing libnl call (0 when libnl failed on its own).
std::error_code libnlError(int nle, int savedErrno) {
  return errnoCode(savedErrno != 0 ? savedErrno : errnoFromNle(nle));
}

}  // namespace faultline::kernel::qdisc_internal

namespace faultline::kernel {
using namespace qdisc_internal;
namespace {

// A message with header (seq 0, port 0: filled in by nl_send_auto) and a zeroed fixed header of
// fixedLen bytes; room for extra bytes of attributes.
tl::expected<MsgPtr, std::error_code> newMessage(int type, int flags, size_t fixedLen, size_t extra) {
  MsgPtr msg(nlmsg_alloc_size(NLMSG_SPACE(fixedLen) + extra + 64));
  if (!msg) {
    return fail(ENOMEM);
  }
  if (nlmsg_put(msg.get(), NL_AUTO_PORT, NL_AUTO_SEQ, type, static_cast<int>(fixedLen), flags) == nullptr) {
    return fail(EMSGSIZE);
  }
  return msg;
}

Bytes toBytes(nl_msg* msg) {
  const nlmsghdr* hdr = nlmsg_hdr(msg);
  const auto* p = reinterpret_cast<const uint8_t*>(hdr);
  return Bytes(p, p + hdr->nlmsg_len);
}

tl::expected<MsgPtr, std::error_code> newTcMessage(int type, int flags, int ifindex, uint32_t handle, size_t extra) {
  auto msg = newMessage(type, flags, sizeof(tcmsg), extra);
  if (!msg) {
    return msg;
  }
  auto* tcm = static_cast<tcmsg*>(nlmsg_data(nlmsg_hdr(msg->get())));
  tcm->tcm_family = AF_UNSPEC;
  tcm->tcm_ifindex = ifindex;
  tcm->tcm_handle = handle;
  tcm->tcm_parent = TC_H_ROOT;
  return msg;
}

// An rtnetlink link message: ifinfomsg with family AF_UNSPEC, ifindex (0: none), and up (IFF_UP or
// 0) as both its flags and the flags it changes; room for extra bytes of attributes.
tl::expected<MsgPtr, std::error_code> newLinkMessage(int type, int flags, int ifindex, unsigned up, size_t extra) {
  auto msg = newMessage(type, flags, sizeof(ifinfomsg), extra);
  if (!msg) {
    return msg;
  }
  auto* ifi = static_cast<ifinfomsg*>(nlmsg_data(nlmsg_hdr(msg->get())));
  ifi->ifi_family = AF_UNSPEC;
  ifi->ifi_index = ifindex;
  ifi->ifi_flags = up;
  ifi->ifi_change = up;
  return msg;
}

// Kernel ticks per microsecond as libnl reads them from /proc/net/psched (15.625: 64 ns ticks on
// every kernel since 2.6.32). nl_us2ticks() itself takes and returns u32, too small for 1 h.
double ticksPerMicrosecond() {
  static const double perUs = static_cast<double>(nl_us2ticks(1'000'000)) / 1e6;
  return perUs;
}

// Ticks for the u32 fields of tc_netem_qopt / tc_tbf_qopt; nullopt when they do not fit.
std::optional<uint32_t> toTicks(double micros) {
  const double ticks = std::round(micros * ticksPerMicrosecond());
  if (ticks > static_cast<double>(std::numeric_limits<uint32_t>::max())) {
    return std::nullopt;
  }
  return static_cast<uint32_t>(ticks);
}

// Percent [0, 100] on the kernel's scale for netem probabilities: 0 = never, ~0u = always
// (as tc rounds it, to nearest with ties to even: 1 % -> 42949673, 30 % -> 0x4ccccccc).
uint32_t toKernelProbability(double percent) {
  return static_cast<uint32_t>(
      std::nearbyint(percent / 100.0 * static_cast<double>(std::numeric_limits<uint32_t>::max())));
}

bool validPercent(double p) {
  return std::isfinite(p) && p >= 0 && p <= 100;
}

tl::expected<void, std::error_code> putAttr(nl_msg* msg, int type, const void* data, size_t len) {
  if (len > std::numeric_limits<uint16_t>::max() - NLA_HDRLEN) {
    return fail(EINVAL);
  }
  const int rc = nla_put(msg, type, static_cast<int>(len), data);
  if (rc < 0) {
    return tl::unexpected(libnlError(rc, 0));
  }
  return {};
}

// TCA_OPTIONS as tc sends it: without NLA_F_NESTED (which libnl 3.7's nla_nest_start() sets), since
// for netem it is not a plain nest. The message never grows (sized up front), so start stays valid.
nlattr* startOptions(nl_msg* msg) {
  return nla_reserve(msg, TCA_OPTIONS, 0);
}

tl::expected<void, std::error_code> endOptions(nl_msg* msg, nlattr* start) {
  const nlmsghdr* hdr = nlmsg_hdr(msg);
  const auto* tail = reinterpret_cast<const char*>(hdr) + NLMSG_ALIGN(hdr->nlmsg_len);
  const auto len = tail - reinterpret_cast<const char*>(start);
  if (len > std::numeric_limits<uint16_t>::max()) {
    return fail(EMSGSIZE);
  }
  start->nla_len = static_cast<uint16_t>(len);
  return {};
}

// TCA_OPTIONS of netem is not a plain nest: a struct tc_netem_qopt followed by attributes, in the
// order tc sends them.
tl::expected<void, std::error_code> putNetemOptions(nl_msg* msg, const NetemParams& p) {
  const bool percentsValid =
      validPercent(p.delayCorrelationPercent) && validPercent(p.lossPercent) &&
      validPercent(p.lossCorrelationPercent) && validPercent(p.duplicatePercent) &&
      validPercent(p.duplicateCorrelationPercent) && validPercent(p.corruptPercent) &&
      validPercent(p.corruptCorrelationPercent) && validPercent(p.reorderPercent) &&
      validPercent(p.reorderCorrelationPercent) &&
      (!p.gilbertElliott || (validPercent(p.gilbertElliott->p) && validPercent(p.gilbertElliott->r) &&
                             validPercent(p.gilbertElliott->badLoss) && validPercent(p.gilbertElliott->goodLoss)));
  constexpr size_t kMaxDistribution = 16384;  // NETEM_DIST_MAX
  if (p.delay.count() < 0 || p.jitter.count() < 0 || !percentsValid || p.delayDistribution.size() > kMaxDistribution ||
      (p.reorderPercent > 0 && p.delay.count() == 0)) {
    return fail(EINVAL);
  }
  const auto latencyTicks = toTicks(static_cast<double>(p.delay.count()));
  const auto jitterTicks = toTicks(static_cast<double>(p.jitter.count()));
  tc_netem_qopt qopt{};
  qopt.latency = latencyTicks.value_or(std::numeric_limits<uint32_t>::max());
  qopt.jitter = jitterTicks.value_or(std::numeric_limits<uint32_t>::max());
  qopt.limit = p.limitPackets != 0 ? p.limitPackets : 1000;
  qopt.loss = p.gilbertElliott ? 0 : toKernelProbability(p.lossPercent);
  qopt.duplicate = toKernelProbability(p.duplicatePercent);
  qopt.gap = p.reorderPercent > 0 ? std::max<uint32_t>(p.gap, 1) : 0;

  nlattr* nest = startOptions(msg);
  if (nest == nullptr) {
    return fail(EMSGSIZE);
  }
  void* room = nlmsg_reserve(msg, sizeof(qopt), NLMSG_ALIGNTO);
  if (room == nullptr) {
    return fail(EMSGSIZE);
  }
  std::memcpy(room, &qopt, sizeof(qopt));
  const bool lossCorrelation = !p.gilbertElliott && p.lossCorrelationPercent != 0;
  if (p.delayCorrelationPercent != 0 || lossCorrelation || p.duplicateCorrelationPercent != 0) {
    tc_netem_corr corr{};
    corr.delay_corr = toKernelProbability(p.delayCorrelationPercent);
    corr.loss_corr = lossCorrelation ? toKernelProbability(p.lossCorrelationPercent) : 0;
    corr.dup_corr = toKernelProbability(p.duplicateCorrelationPercent);
    if (auto r = putAttr(msg, TCA_NETEM_CORR, &corr, sizeof(corr)); !r) {
      return r;
    }
  }
  if (p.reorderPercent > 0) {
    tc_netem_reorder reorder{toKernelProbability(p.reorderPercent), toKernelProbability(p.reorderCorrelationPercent)};
    if (auto r = putAttr(msg, TCA_NETEM_REORDER, &reorder, sizeof(reorder)); !r) {
      return r;
    }
  }
  if (p.corruptPercent > 0) {
    tc_netem_corrupt corrupt{toKernelProbability(p.corruptPercent), toKernelProbability(p.corruptCorrelationPercent)};
    if (auto r = putAttr(msg, TCA_NETEM_CORRUPT, &corrupt, sizeof(corrupt)); !r) {
      return r;
    }
  }
  if (p.gilbertElliott) {
    // A nest flagged NLA_F_NESTED, as tc (iproute2 6.x) sends it.
    nlattr* loss = nla_reserve(msg, TCA_NETEM_LOSS | NLA_F_NESTED, 0);
    if (loss == nullptr) {
      return fail(EMSGSIZE);
    }
    tc_netem_gemodel ge{};
    ge.p = toKernelProbability(p.gilbertElliott->p);
    ge.r = toKernelProbability(p.gilbertElliott->r);
    ge.h = toKernelProbability(100.0 - p.gilbertElliott->badLoss);
    ge.k1 = toKernelProbability(p.gilbertElliott->goodLoss);
    if (auto r = putAttr(msg, NETEM_LOSS_GE, &ge, sizeof(ge)); !r) {
      return r;
    }
    if (auto r = endOptions(msg, loss); !r) {
      return r;
    }
  }
  if (p.rateBitsPerSecond > 0) {
    const uint64_t rateBytes = std::max<uint64_t>(p.rateBitsPerSecond / 8, 1);
    constexpr uint64_t kU32Max = std::numeric_limits<uint32_t>::max();
    tc_netem_rate rate{};
    rate.rate = rateBytes > kU32Max ? std::numeric_limits<uint32_t>::max() : static_cast<uint32_t>(rateBytes);
    if (rateBytes > kU32Max) {
      if (auto r = putAttr(msg, TCA_NETEM_RATE64, &rateBytes, sizeof(rateBytes)); !r) {
        return r;
      }
    }
    if (auto r = putAttr(msg, TCA_NETEM_RATE, &rate, sizeof(rate)); !r) {
      return r;
    }
  }
  // The kernel prefers these nanosecond values over the tick fields when present.
  if (!latencyTicks) {
    const int64_t ns = static_cast<int64_t>(p.delay.count()) * 1000;
    if (auto r = putAttr(msg, TCA_NETEM_LATENCY64, &ns, sizeof(ns)); !r) {
      return r;
    }
  }
  if (!jitterTicks) {
    const int64_t ns = static_cast<int64_t>(p.jitter.count()) * 1000;
    if (auto r = putAttr(msg, TCA_NETEM_JITTER64, &ns, sizeof(ns)); !r) {
      return r;
    }
  }
  if (!p.delayDistribution.empty()) {
    if (auto r = putAttr(msg, TCA_NETEM_DELAY_DIST, p.delayDistribution.data(),
                         p.delayDistribution.size() * sizeof(int16_t));
        !r) {
      return r;
    }
  }
  return endOptions(msg, nest);
}

tl::expected<void, std::error_code> putTbfOptions(nl_msg* msg, const TbfParams& p) {
  const uint64_t rateBytes = p.rateBitsPerSecond / 8;
  if (rateBytes == 0 || p.burstBytes == 0 || p.limitBytes == 0) {
    return fail(EINVAL);
  }
  constexpr uint64_t kU32Max = std::numeric_limits<uint32_t>::max();
  tc_tbf_qopt qopt{};
  qopt.rate.linklayer = TC_LINKLAYER_ETHERNET;  // tells the kernel no rate table follows
  qopt.rate.rate = static_cast<uint32_t>(std::min(rateBytes, kU32Max));
  qopt.limit = p.limitBytes;
  // Time to send one bucket at the rate; the kernel recomputes it from TCA_TBF_BURST.
  qopt.buffer = toTicks(static_cast<double>(p.burstBytes) * 1e6 / static_cast<double>(rateBytes))
                    .value_or(std::numeric_limits<uint32_t>::max());

  nlattr* nest = startOptions(msg);
  if (nest == nullptr) {
    return fail(EMSGSIZE);
  }
  if (auto r = putAttr(msg, TCA_TBF_PARMS, &qopt, sizeof(qopt)); !r) {
    return r;
  }
  if (rateBytes > kU32Max) {
    if (auto r = putAttr(msg, TCA_TBF_RATE64, &rateBytes, sizeof(rateBytes)); !r) {
      return r;
    }
  }
  if (auto r = putAttr(msg, TCA_TBF_BURST, &p.burstBytes, sizeof(p.burstBytes)); !r) {
    return r;
  }
  return endOptions(msg, nest);
}

tl::expected<void, std::error_code> putHtbOptions(nl_msg* msg, const HtbParams& p) {
  nlattr* nest = startOptions(msg);
  if (nest == nullptr) {
    return fail(EMSGSIZE);
  }
  tc_htb_glob glob{};
  glob.version = 3;  // TC_HTB_PROTOVER, as tc sends it
  glob.rate2quantum = 10;
  glob.defcls = p.defaultClass;
  if (auto r = putAttr(msg, TCA_HTB_INIT, &glob, sizeof(glob)); !r) {
    return r;
  }
  return endOptions(msg, nest);
}

// The options of params as TCA_OPTIONS.
tl::expected<void, std::error_code> putOptions(nl_msg* msg, const QdiscParams& params) {
  return std::visit(
      [&](const auto& p) -> tl::expected<void, std::error_code> {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, NetemParams>) {
          return putNetemOptions(msg, p);
        } else if constexpr (std::is_same_v<T, TbfParams>) {
          return putTbfOptions(msg, p);
        } else {
          return putHtbOptions(msg, p);
        }
      },
      params);
}

size_t optionsRoom(const QdiscParams& params) {
  const auto* netem = std::get_if<NetemParams>(&params);
  return 256 + (netem != nullptr ? netem->delayDistribution.size() * sizeof(int16_t) : 0);
}

}  // namespace

namespace qdisc_internal {

tl::expected<Bytes, std::error_code> buildGetLinkRequest(std::string_view ifname) {
  auto msg = newLinkMessage(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, 0, 0, ifname.size() + 16);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  const std::string name(ifname);
  if (auto r = putAttr(msg->get(), IFLA_IFNAME, name.c_str(), name.size() + 1); !r) {
    return tl::unexpected(r.error());
  }
  const uint32_t mask = RTEXT_FILTER_SKIP_STATS;
  if (auto r = putAttr(msg->get(), IFLA_EXT_MASK, &mask, sizeof(mask)); !r) {
    return tl::unexpected(r.error());
  }
  return toBytes(msg->get());
}

tl::expected<Bytes, std::error_code> buildLinkUpRequest(int ifindex) {
  auto msg = newLinkMessage(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, ifindex, IFF_UP, 0);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  return toBytes(msg->get());
}

tl::expected<Bytes, std::error_code> buildDumpQdiscsRequest(int ifindex) {
  auto msg = newTcMessage(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, ifindex, 0, 0);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  auto* tcm = static_cast<tcmsg*>(nlmsg_data(nlmsg_hdr(msg->get())));
  tcm->tcm_parent = 0;
  return toBytes(msg->get());
}

tl::expected<Bytes, std::error_code> buildDumpLinksRequest() {
  auto msg = newLinkMessage(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 0, 0, 16);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  const uint32_t mask = RTEXT_FILTER_SKIP_STATS;
  if (auto r = putAttr(msg->get(), IFLA_EXT_MASK, &mask, sizeof(mask)); !r) {
    return tl::unexpected(r.error());
  }
  return toBytes(msg->get());
}

tl::expected<Bytes, std::error_code> buildDumpIngressFiltersRequest(int ifindex) {
  auto msg = newTcMessage(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, ifindex, 0, 0);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  static_cast<tcmsg*>(nlmsg_data(nlmsg_hdr(msg->get())))->tcm_parent = TC_H_MAKE(TC_H_INGRESS, 0);
  return toBytes(msg->get());
}

}  // namespace qdisc_internal

std::string_view qdiscKind(const QdiscParams& params) {
  if (std::holds_alternative<NetemParams>(params)) {
    return "netem";
  }
  return std::holds_alternative<TbfParams>(params) ? "tbf" : "htb";
}

namespace {

// RTM_NEWQDISC with flags (NLM_F_CREATE | NLM_F_REPLACE or NLM_F_EXCL), parent and handle, kind and
// TCA_OPTIONS from params.
tl::expected<std::vector<uint8_t>, std::error_code> buildNewQdiscRequest(int flags, int ifindex, uint32_t parent,
                                                                         uint32_t handle, const QdiscParams& params) {
  auto msg = newTcMessage(RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK | flags, ifindex, handle, optionsRoom(params));
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  static_cast<tcmsg*>(nlmsg_data(nlmsg_hdr(msg->get())))->tcm_parent = parent;
  const std::string kind(qdiscKind(params));
  if (auto r = putAttr(msg->get(), TCA_KIND, kind.c_str(), kind.size() + 1); !r) {
    return tl::unexpected(r.error());
  }
  if (auto put = putOptions(msg->get(), params); !put) {
    return tl::unexpected(put.error());
  }
  return toBytes(msg->get());
}

}  // namespace

tl::expected<std::vector<uint8_t>, std::error_code> buildReplaceRootRequest(int ifindex, uint32_t handle,
                                                                            const QdiscParams& params) {
  return buildNewQdiscRequest(NLM_F_CREATE | NLM_F_REPLACE, ifindex, TC_H_ROOT, handle, params);
}

tl::expected<std::vector<uint8_t>, std::error_code> buildAddQdiscRequest(int ifindex, uint32_t parent, uint32_t handle,
                                                                         const QdiscParams& params) {
  return buildNewQdiscRequest(NLM_F_CREATE | NLM_F_EXCL, ifindex, parent, handle, params);
}

tl::expected<std::vector<uint8_t>, std::error_code> buildAddHtbClassRequest(int ifindex, uint32_t classid,
                                                                            const HtbClassParams& params) {
  const uint64_t rateBytes = params.rateBitsPerSecond / 8;
  const uint64_t ceilBytes = (params.ceilBitsPerSecond != 0 ? params.ceilBitsPerSecond : params.rateBitsPerSecond) / 8;
  if (rateBytes == 0 || ceilBytes < rateBytes) {
    return fail(EINVAL);
  }
  auto msg = newTcMessage(RTM_NEWTCLASS, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ifindex, classid, 128);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  static_cast<tcmsg*>(nlmsg_data(nlmsg_hdr(msg->get())))->tcm_parent = TC_H_MAJ(classid);
  if (auto r = putAttr(msg->get(), TCA_KIND, "htb", 4); !r) {
    return tl::unexpected(r.error());
  }
  constexpr uint64_t kU32Max = std::numeric_limits<uint32_t>::max();
  tc_htb_opt opt{};
  opt.rate.linklayer = TC_LINKLAYER_ETHERNET;  // no rate tables follow
  opt.rate.rate = static_cast<uint32_t>(std::min(rateBytes, kU32Max));
  opt.ceil.linklayer = TC_LINKLAYER_ETHERNET;
  opt.ceil.rate = static_cast<uint32_t>(std::min(ceilBytes, kU32Max));
  opt.buffer = toTicks(1000).value_or(0);  // 1 ms worth of tokens at the rate
  opt.cbuffer = opt.buffer;
  opt.quantum = 200000;  // htb's largest: no "quantum is big" warnings at high rates
  nlattr* nest = startOptions(msg->get());
  if (nest == nullptr) {
    return fail(EMSGSIZE);
  }
  if (rateBytes > kU32Max) {
    if (auto r = putAttr(msg->get(), TCA_HTB_RATE64, &rateBytes, sizeof(rateBytes)); !r) {
      return tl::unexpected(r.error());
    }
  }
  if (ceilBytes > kU32Max) {
    if (auto r = putAttr(msg->get(), TCA_HTB_CEIL64, &ceilBytes, sizeof(ceilBytes)); !r) {
      return tl::unexpected(r.error());
    }
  }
  if (auto r = putAttr(msg->get(), TCA_HTB_PARMS, &opt, sizeof(opt)); !r) {
    return tl::unexpected(r.error());
  }
  if (auto r = endOptions(msg->get(), nest); !r) {
    return tl::unexpected(r.error());
  }
  return toBytes(msg->get());
}

namespace {

// RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, of a u32 filter: handle, parent, tcm_info = priority << 16 |
// htons(protocol), TCA_KIND "u32"; room for extra bytes of options.
tl::expected<MsgPtr, std::error_code> newU32FilterMessage(int ifindex, uint32_t handle, uint32_t parent,
                                                          uint16_t priority, uint16_t protocol, size_t extra) {
  auto msg =
      newTcMessage(RTM_NEWTFILTER, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, ifindex, handle, extra);
  if (!msg) {
    return msg;
  }
  auto* tcm = static_cast<tcmsg*>(nlmsg_data(nlmsg_hdr(msg->get())));
  tcm->tcm_parent = parent;
  tcm->tcm_info = TC_H_MAKE(static_cast<uint32_t>(priority) << 16, htons(protocol));
  if (auto r = putAttr(msg->get(), TCA_KIND, "u32", 4); !r) {
    return tl::unexpected(r.error());
  }
  return msg;
}

// A u32 hash table: tc's `tc filter add ... prio P handle X: protocol ip u32 divisor N`.
tl::expected<std::vector<uint8_t>, std::error_code> buildAddU32TableRequest(int ifindex, const U32Filter& filter) {
  const uint32_t id = filter.handle >> 20;
  if (!filter.keys.empty() || (filter.handle & 0xFFFFF) != 0 || id == 0 || id >= 0x800 || filter.divisor > 256) {
    return fail(EINVAL);
  }
  auto msg = newU32FilterMessage(ifindex, filter.handle, filter.parent, filter.priority, filter.protocol, 64);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  nlattr* nest = startOptions(msg->get());
  if (nest == nullptr) {
    return fail(EMSGSIZE);
  }
  if (auto r = putAttr(msg->get(), TCA_U32_DIVISOR, &filter.divisor, sizeof(filter.divisor)); !r) {
    return tl::unexpected(r.error());
  }
  if (auto r = endOptions(msg->get(), nest); !r) {
    return tl::unexpected(r.error());
  }
  return toBytes(msg->get());
}

}  // namespace

tl::expected<std::vector<uint8_t>, std::error_code> buildAddU32FilterRequest(int ifindex, const U32Filter& filter) {
  constexpr size_t kMaxKeys = 128;  // TC_U32_MAXDEPTH-independent, far below the attribute limit
  if (filter.priority == 0) {
    return fail(EINVAL);
  }
  if (filter.divisor != 0) {
    return buildAddU32TableRequest(ifindex, filter);
  }
  if (filter.keys.empty() || filter.keys.size() > kMaxKeys || filter.handle != 0 ||
      std::any_of(filter.keys.begin(), filter.keys.end(), [](const U32Key& k) { return k.offset % 4 != 0; })) {
    return fail(EINVAL);
  }
  const size_t selBytes = sizeof(tc_u32_sel) + filter.keys.size() * sizeof(tc_u32_key);
  auto msg = newU32FilterMessage(ifindex, 0, filter.parent, filter.priority, filter.protocol, selBytes + 64);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  nlattr* nest = startOptions(msg->get());
  if (nest == nullptr) {
    return fail(EMSGSIZE);
  }
  if (filter.link == 0) {
    if (auto r = putAttr(msg->get(), TCA_U32_CLASSID, &filter.classid, sizeof(filter.classid)); !r) {
      return tl::unexpected(r.error());
    }
  }
  if (filter.table != 0) {
    if (auto r = putAttr(msg->get(), TCA_U32_HASH, &filter.table, sizeof(filter.table)); !r) {
      return tl::unexpected(r.error());
    }
  }
  if (filter.link != 0) {
    if (auto r = putAttr(msg->get(), TCA_U32_LINK, &filter.link, sizeof(filter.link)); !r) {
      return tl::unexpected(r.error());
    }
  }
  std::vector<uint8_t> sel(selBytes);
  tc_u32_sel head{};
  head.flags = filter.link == 0 ? TC_U32_TERMINAL : 0;
  if (filter.link != 0 && filter.skipIpv4Header) {
    // off2 = (ntohs(word at 0 & 0x0F00) >> 6) = IHL * 4; EAT moves the base there for the table.
    head.flags |= TC_U32_VAROFFSET | TC_U32_EAT;
    head.offoff = 0;
    head.offmask = htons(0x0F00);
    head.offshift = 6;
  }
  head.nkeys = static_cast<unsigned char>(filter.keys.size());
  std::memcpy(sel.data(), &head, sizeof(head));
  for (size_t i = 0; i < filter.keys.size(); ++i) {
    tc_u32_key key{};
    key.mask = filter.keys[i].mask;
    key.val = filter.keys[i].value & filter.keys[i].mask;
    key.off = filter.keys[i].offset;
    std::memcpy(sel.data() + sizeof(head) + i * sizeof(key), &key, sizeof(key));
  }
  if (auto r = putAttr(msg->get(), TCA_U32_SEL, sel.data(), sel.size()); !r) {
    return tl::unexpected(r.error());
  }
  if (auto r = endOptions(msg->get(), nest); !r) {
    return tl::unexpected(r.error());
  }
  return toBytes(msg->get());
}

tl::expected<std::vector<uint8_t>, std::error_code> buildRestoreRootRequest(int ifindex, const QdiscInfo& saved) {
  if (saved.kind.empty()) {
    return fail(EINVAL);
  }
  auto msg = newTcMessage(RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, ifindex, saved.handle,
                          saved.kind.size() + saved.options.size() + 16);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  if (auto r = putAttr(msg->get(), TCA_KIND, saved.kind.c_str(), saved.kind.size() + 1); !r) {
    return tl::unexpected(r.error());
  }
  const auto options = restoreOptions(TcObjectType::kQdisc, saved.kind, saved.options);
  if (!options.empty()) {
    if (auto r = putAttr(msg->get(), TCA_OPTIONS, options.data(), options.size()); !r) {
      return tl::unexpected(r.error());
    }
  }
  return toBytes(msg->get());
}

tl::expected<std::vector<uint8_t>, std::error_code> buildCreateIfbRequest(std::string_view name) {
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return fail(EINVAL);
  }
  auto msg = newLinkMessage(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 0, IFF_UP, 64);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  const std::string text(name);
  if (auto r = putAttr(msg->get(), IFLA_IFNAME, text.c_str(), text.size() + 1); !r) {
    return tl::unexpected(r.error());
  }
  nlattr* info = nla_reserve(msg->get(), IFLA_LINKINFO, 0);  // as ip-link sends it: no NLA_F_NESTED
  if (info == nullptr) {
    return fail(EMSGSIZE);
  }
  if (auto r = putAttr(msg->get(), IFLA_INFO_KIND, "ifb", 3); !r) {  // no NUL, as ip sends it
    return tl::unexpected(r.error());
  }
  if (auto r = endOptions(msg->get(), info); !r) {
    return tl::unexpected(r.error());
  }
  return toBytes(msg->get());
}

tl::expected<std::vector<uint8_t>, std::error_code> buildDeleteLinkRequest(int ifindex) {
  auto msg = newLinkMessage(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, ifindex, 0, 0);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  return toBytes(msg->get());
}

namespace {

// An RTM_NEWQDISC or RTM_DELQDISC of the ingress qdisc: handle ffff:, parent ffff:fff1, TCA_KIND
// "ingress" (as tc sends both: the kernel refuses (EINVAL) to delete a clsact qdisc by it).
tl::expected<std::vector<uint8_t>, std::error_code> buildIngressRequest(int type, int flags, int ifindex) {
  auto msg = newTcMessage(type, NLM_F_REQUEST | NLM_F_ACK | flags, ifindex, TC_H_MAKE(TC_H_INGRESS, 0), 16);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  static_cast<tcmsg*>(nlmsg_data(nlmsg_hdr(msg->get())))->tcm_parent = TC_H_INGRESS;
  if (auto r = putAttr(msg->get(), TCA_KIND, "ingress", 8); !r) {
    return tl::unexpected(r.error());
  }
  return toBytes(msg->get());
}

}  // namespace

tl::expected<std::vector<uint8_t>, std::error_code> buildAddIngressRequest(int ifindex) {
  return buildIngressRequest(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, ifindex);
}

tl::expected<std::vector<uint8_t>, std::error_code> buildDeleteIngressRequest(int ifindex) {
  return buildIngressRequest(RTM_DELQDISC, 0, ifindex);
}

tl::expected<std::vector<uint8_t>, std::error_code> buildAddRedirectFilterRequest(int ifindex,
                                                                                  const RedirectFilter& filter,
                                                                                  int targetIfindex) {
  if (filter.priority == 0 || targetIfindex <= 0) {
    return fail(EINVAL);
  }
  auto msg = newU32FilterMessage(ifindex, 0, TC_H_MAKE(TC_H_INGRESS, 0), filter.priority, filter.protocol, 256);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  // As tc sends it: TCA_U32_ACT before TCA_U32_SEL, no classid, only TCA_ACT_OPTIONS with NLA_F_NESTED.
  nlattr* options = startOptions(msg->get());
  if (options == nullptr) {
    return fail(EMSGSIZE);
  }
  nlattr* actions = nla_reserve(msg->get(), TCA_U32_ACT, 0);
  nlattr* first = actions != nullptr ? nla_reserve(msg->get(), 1, 0) : nullptr;
  if (first == nullptr) {
    return fail(EMSGSIZE);
  }
  if (auto r = putAttr(msg->get(), TCA_ACT_KIND, "mirred", 7); !r) {
    return tl::unexpected(r.error());
  }
  nlattr* actOptions = nla_reserve(msg->get(), TCA_ACT_OPTIONS, 0);
  if (actOptions == nullptr) {
    return fail(EMSGSIZE);
  }
  tc_mirred mirred{};
  mirred.action = TC_ACT_STOLEN;
  mirred.eaction = TCA_EGRESS_REDIR;
  mirred.ifindex = static_cast<uint32_t>(targetIfindex);
  if (auto r = putAttr(msg->get(), TCA_MIRRED_PARMS, &mirred, sizeof(mirred)); !r) {
    return tl::unexpected(r.error());
  }
  for (nlattr* nest : {actOptions, first, actions}) {
    if (auto r = endOptions(msg->get(), nest); !r) {
      return tl::unexpected(r.error());
    }
    if (nest == actOptions) {
      nest->nla_type |= NLA_F_NESTED;
    }
  }
  std::array<uint8_t, sizeof(tc_u32_sel) + sizeof(tc_u32_key)> sel{};  // the key 0/0 at 0: every packet
  tc_u32_sel head{};
  head.flags = TC_U32_TERMINAL;
  head.nkeys = 1;
  std::memcpy(sel.data(), &head, sizeof(head));
  if (auto r = putAttr(msg->get(), TCA_U32_SEL, sel.data(), sel.size()); !r) {
    return tl::unexpected(r.error());
  }
  if (auto r = endOptions(msg->get(), options); !r) {
    return tl::unexpected(r.error());
  }
  return toBytes(msg->get());
}

tl::expected<std::vector<uint8_t>, std::error_code> buildDeleteIngressFilterRequest(int ifindex,
                                                                                    const IngressFilter& filter) {
  if (filter.priority == 0 || (filter.handle != 0 && filter.kind.empty())) {
    return fail(EINVAL);
  }
  auto msg = newTcMessage(RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK, ifindex, filter.handle, 8 + filter.kind.size());
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  auto* tcm = static_cast<tcmsg*>(nlmsg_data(nlmsg_hdr(msg->get())));
  tcm->tcm_parent = TC_H_MAKE(TC_H_INGRESS, 0);
  tcm->tcm_info = TC_H_MAKE(static_cast<uint32_t>(filter.priority) << 16, htons(filter.protocol));
  if (filter.handle != 0) {
    if (auto r = putAttr(msg->get(), TCA_KIND, filter.kind.c_str(), filter.kind.size() + 1); !r) {
      return tl::unexpected(r.error());
    }
  }
  return toBytes(msg->get());
}

tl::expected<std::vector<uint8_t>, std::error_code> buildDeleteRootRequest(int ifindex) {
  auto msg = newTcMessage(RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK, ifindex, 0, 0);
  if (!msg) {
    return tl::unexpected(msg.error());
  }
  return toBytes(msg->get());
}

}  // namespace faultline::kernel
