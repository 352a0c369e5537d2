// The seam between network fault drivers and the kernel's traffic control (tc) tables.
//
// One QdiscTable talks rtnetlink (libnl-route-3) to one network namespace: root qdiscs, and the
// tree below a root read and put back whole (dumpTree(), restoreObject()). Calls block for one netlink round trip
// (microseconds). Not thread-safe: use one table from one thread. See tc(8), tc-netem(8), tc-tbf(8).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <variant>
#include <vector>

#include <tl/expected.hpp>

#include "agent/kernel/qdisc_tree.h"

namespace faultline::kernel {

// A qdisc as the kernel reports it in an RTM_GETQDISC dump.
struct QdiscInfo {
  std::string kind;              // TCA_KIND, e.g. "noqueue", "tbf", "netem"
  uint32_t handle = 0;           // major:minor as one u32 (0x80010000 is 8001:); 0 for defaults
  uint32_t parent = 0;           // TC_H_ROOT (0xFFFFFFFF) for a root qdisc
  std::vector<uint8_t> options;  // raw TCA_OPTIONS payload, as dumped (restored byte for byte)
};

// Gilbert-Elliott loss (tc-netem(8) "loss gemodel"): percentages in [0, 100]. The kernel's
// state machine (net/sched/sch_netem.c, loss_gilb_ell()) goes good -> bad with p, bad -> good
// with r, and drops with goodLoss in the good state and badLoss in the bad one. Encoded as
// NETEM_LOSS_GE {p, r, h = 100 - badLoss, k1 = goodLoss} inside TCA_NETEM_LOSS.
struct GilbertElliottLoss {
  double p = 0;
  double r = 0;
  double badLoss = 100;
  double goodLoss = 0;
};

// netem: see tc-netem(8). Unset (zero) fields leave the feature off. Encoded like tc: delay and
// jitter in kernel ticks (/proc/net/psched, 64 ns; TCA_NETEM_LATENCY64/JITTER64 added when a
// value does not fit the u32 field, beyond ~274 s), percentages on the kernel's u32 scale
// (0 = none, 0xFFFFFFFF = 100 %).
struct NetemParams {
  std::chrono::microseconds delay{0};
  std::chrono::microseconds jitter{0};  // ≤ delay
  double delayCorrelationPercent = 0;   // [0, 100]
  // TCA_NETEM_DELAY_DIST: the jitter's distribution as a table of values in units of
  // jitter / 8192 (iproute2's NAME.dist files), at most 16384 entries; empty = uniform.
  std::vector<int16_t> delayDistribution{};
  double lossPercent = 0;                              // [0, 100]; random loss
  double lossCorrelationPercent = 0;                   // [0, 100]
  std::optional<GilbertElliottLoss> gilbertElliott{};  // instead of random loss
  double duplicatePercent = 0;                         // [0, 100]
  double duplicateCorrelationPercent = 0;              // [0, 100]
  double corruptPercent = 0;                           // [0, 100]: TCA_NETEM_CORRUPT
  double corruptCorrelationPercent = 0;                // [0, 100]
  // TCA_NETEM_REORDER: reorderPercent of packets (every gap-th when gap > 1) go out at once, the
  // others after delay; needs delay > 0. gap 0 is sent as 1 (as tc does: the kernel never
  // reorders with gap 0).
  double reorderPercent = 0;
  double reorderCorrelationPercent = 0;
  uint32_t gap = 0;
  uint64_t rateBitsPerSecond = 0;  // TCA_NETEM_RATE (+ RATE64 from 2^32 bytes/s); 0 = none
  uint32_t limitPackets = 0;       // queue limit in packets; 0 = 1000 (the kernel's default)
};

// tbf: see tc-tbf(8). Encoded like tc: TCA_TBF_PARMS (link layer ethernet, no rate table),
// TCA_TBF_BURST, and TCA_TBF_RATE64 for rates of 2^32 bytes/s and more.
struct TbfParams {
  uint64_t rateBitsPerSecond = 0;  // > 0
  uint32_t burstBytes = 0;         // bucket size; ≥ the interface MTU to pass full-size packets
  uint32_t limitBytes = 0;         // bytes that may wait in the queue; > 0 (0 would drop everything)
};

// htb as faultline's classful root: see tc-htb(8). Encoded like tc: TCA_HTB_INIT {version 3,
// rate2quantum 10, defcls}. defaultClass 0: packets no filter classifies bypass the classes
// (htb's direct queue, a plain FIFO), so only what the filters pick is shaped or faulted.
struct HtbParams {
  uint32_t defaultClass = 0;  // minor of the default class; 0 = direct queue
};

using QdiscParams = std::variant<NetemParams, TbfParams, HtbParams>;

// An htb class: rate and ceil in bits/s (TCA_HTB_PARMS with link layer ethernet, so no rate
// tables; TCA_HTB_RATE64/CEIL64 from 2^32 bytes/s), quantum 200000 bytes, buffer 1 ms at the rate.
struct HtbClassParams {
  uint64_t rateBitsPerSecond = 0;  // > 0
  uint64_t ceilBitsPerSecond = 0;  // ≥ rate; 0 = rate
};

// One 32-bit match of a u32 filter: (the packet's 32-bit word at offset, from the network
// header) & mask == value. value and mask in network byte order, as on the wire.
struct U32Key {
  uint32_t value = 0;
  uint32_t mask = 0;
  int32_t offset = 0;  // bytes from the start of the IPv4/IPv6 header; a multiple of 4
};

// A u32 filter (tc-u32(8)) at parent: packets of protocol whose keys all match go to classid.
// Three shapes (u32_classify() in net/sched/cls_u32.c):
//   - a node in the priority's own hash table (table 0, link 0): terminal, matched packets go to
//     classid;
//   - a hash table (divisor > 0, handle X << 20, no keys): tc's `handle X: u32 divisor 1`;
//   - a link node (link = X << 20): packets its keys match continue in table X; with
//     skipIpv4Header, keys there count from the IPv4 payload (offset = IHL * 4: TC_U32_VAROFFSET
//     at byte 0, mask 0x0F00, shift 6, and TC_U32_EAT), tc's `link X: offset at 0 mask 0f00 shift 6
//     eat`; a node in table X (table = X << 20) then matches the transport header at offset 0.
struct U32Filter {
  uint32_t parent = 0;          // the classful qdisc's handle, e.g. 0xFA170000
  uint16_t priority = 0;        // lower runs first; > 0
  uint16_t protocol = 0;        // ETH_P_IP (0x0800) or ETH_P_IPV6 (0x86DD), host order
  std::vector<U32Key> keys;     // 1-128; none for a hash table
  uint32_t classid = 0;         // the class matched packets go to; the qdisc's own handle = htb's direct queue
  uint32_t divisor = 0;         // > 0: this creates hash table `handle` with that many buckets (1: no hashing)
  uint32_t handle = 0;          // with divisor: the table's handle, X << 20 (X in 1..0x7FF); else 0
  uint32_t table = 0;           // TCA_U32_HASH: the hash table this node goes in (X << 20); 0 = the priority's own
  uint32_t link = 0;            // TCA_U32_LINK: matched packets continue in this table (no classid)
  bool skipIpv4Header = false;  // with link: keys in the linked table count from the IPv4 payload
};

// One interface's root qdisc, as roots() lists it.
struct InterfaceRoot {
  std::string interface;  // its name in the table's namespace
  QdiscInfo root;
};

// A network interface as an RTM_GETLINK dump reports it.
struct LinkInfo {
  int index = 0;
  std::string name;
  std::string kind;  // IFLA_INFO_KIND, e.g. "ifb", "veth"; "" for a device without one (lo, most NICs)
};

// A u32 filter on an interface's ingress qdisc (parent ffff:) that matches every packet of protocol
// (u32 key 0/0 at 0) and redirects it to the egress of target with a mirred action (tc-mirred(8):
// "action mirred egress redirect dev TARGET"), so target's root qdisc sees the interface's ingress.
struct RedirectFilter {
  uint16_t priority = 0;  // > 0
  uint16_t protocol = 0;  // ETH_P_IP (0x0800) or ETH_P_IPV6 (0x86DD), host order
  std::string target;     // the device packets are redirected to (an ifb), in the same namespace
};

// One entry of an RTM_GETTFILTER dump of an interface's ingress qdisc (`tc filter show dev X
// parent ffff:`). The kernel lists each priority's classifier first (handle 0, no options), then
// what the classifier walks: for u32 its hash tables (handle X:, node bits 0, e.g. 0x80000000 for
// 800:) and their nodes (X::N, e.g. 0x80000800 for 800::800).
struct IngressFilter {
  uint16_t priority = 0;
  uint16_t protocol = 0;       // ETH_P_*, host order (ETH_P_ALL = 3 for `protocol all`)
  uint32_t handle = 0;         // 0: the priority's classifier itself
  std::string kind;            // TCA_KIND: "u32", "matchall", "flower", ...
  std::vector<int> redirects;  // interface indexes its mirred actions redirect or mirror to (u32 only)
};

// Kind name of params: "netem", "tbf" or "htb".
[[nodiscard]] std::string_view qdiscKind(const QdiscParams& params);

class QdiscTable {
 public:
  virtual ~QdiscTable() = default;

  // The root qdisc of ifname, read back with an RTM_GETQDISC dump. nullopt: the interface has
  // none attached (never seen for an existing interface in practice).
  // errors: ENODEV when ifname does not exist in this namespace.
  [[nodiscard]] virtual tl::expected<std::optional<QdiscInfo>, std::error_code> root(std::string_view ifname) = 0;

  // Creates or replaces (NLM_F_CREATE | NLM_F_REPLACE) the root qdisc of ifname.
  // handle: major:minor as one u32, minor 0.
  // errors: ENODEV no such interface; ENOENT the kernel has no qdisc of that kind (module
  // missing); EPERM without CAP_NET_ADMIN; EINVAL parameters refused.
  [[nodiscard]] virtual tl::expected<void, std::error_code> replaceRoot(std::string_view ifname, uint32_t handle,
                                                                        const QdiscParams& params) = 0;

  // Re-installs a root qdisc saved by root(): same kind, handle and raw options.
  // errors: as replaceRoot.
  [[nodiscard]] virtual tl::expected<void, std::error_code> restoreRoot(std::string_view ifname,
                                                                        const QdiscInfo& saved) = 0;

  // Deletes the root qdisc; the kernel attaches the interface's default again.
  // errors: ENODEV no such interface; ENOENT no root qdisc to delete; EPERM.
  [[nodiscard]] virtual tl::expected<void, std::error_code> deleteRoot(std::string_view ifname) = 0;

  // The qdiscs attached directly below the root qdisc of ifname (their parent's major is the root
  // handle's major: "parent 7:1" under "tbf 7:", "parent :1" under the default "mq 0:"), read with
  // an RTM_GETQDISC dump. Neither root() nor restoreRoot() keeps them: replacing the root destroys
  // them. Hidden defaults the kernel creates itself (a tbf's inner bfifo, an htb leaf's pfifo) are
  // not dumped and not listed. Empty when the interface has no root qdisc.
  // errors: ENODEV when ifname does not exist in this namespace.
  [[nodiscard]] virtual tl::expected<std::vector<QdiscInfo>, std::error_code> rootChildren(std::string_view ifname) = 0;

  // Adds (NLM_F_CREATE | NLM_F_EXCL) a qdisc with handle below parent (a class, e.g. 0xFA170001).
  // errors: ENODEV no such interface; ENOENT no such parent or no qdisc of that kind; EEXIST the
  // handle or the parent's slot is taken (a class's default child is replaced, not EEXIST); EINVAL.
  [[nodiscard]] virtual tl::expected<void, std::error_code> addQdisc(std::string_view ifname, uint32_t parent,
                                                                     uint32_t handle, const QdiscParams& params) = 0;

  // Adds an htb class classid (major:minor) directly below the htb qdisc classid's major.
  // errors: ENODEV; ENOENT no such qdisc; EEXIST the class exists; EINVAL (e.g. the qdisc is not htb).
  [[nodiscard]] virtual tl::expected<void, std::error_code> addHtbClass(std::string_view ifname, uint32_t classid,
                                                                        const HtbClassParams& params) = 0;

  // Adds a u32 filter (the kernel picks its handle in the default hash table).
  // errors: ENODEV; ENOENT no such parent qdisc, or no cls_u32 in the kernel; EINVAL.
  [[nodiscard]] virtual tl::expected<void, std::error_code> addU32Filter(std::string_view ifname,
                                                                         const U32Filter& filter) = 0;

  // The root qdisc of every interface in this namespace (one RTM_GETLINK and one RTM_GETQDISC
  // dump), in interface index order; an interface with no root qdisc is not listed.
  // errors: EPERM, ENOBUFS, EPROTO (a reply that does not parse).
  [[nodiscard]] virtual tl::expected<std::vector<InterfaceRoot>, std::error_code> roots() = 0;

  // Everything below the root qdisc of ifname (qdisc_tree.h): every other qdisc (RTM_GETQDISC
  // dump), every class (RTM_GETTCLASS dump) and the filters attached at each qdisc with a handle
  // and at each class (one RTM_GETTFILTER dump per parent), in dump order. The ingress and clsact
  // qdiscs (ffff:), their classes and filters are not listed. Empty when the interface has none.
  // errors: ENODEV when ifname does not exist in this namespace; EPROTO a reply that does not parse.
  [[nodiscard]] virtual tl::expected<std::vector<TcObject>, std::error_code> dumpTree(std::string_view ifname) = 0;

  // Adds one object saved by dumpTree() (buildRestoreObjectRequest()): same kind, handle, parent,
  // priority and protocol, options as restoreOptions() gives them.
  // errors: ENODEV; ENOENT no such parent, or the kernel lacks the kind's module; EEXIST the handle
  // is taken; EINVAL the kernel refused the options; EOPNOTSUPP the parent's classes cannot be added.
  [[nodiscard]] virtual tl::expected<void, std::error_code> restoreObject(std::string_view ifname,
                                                                          const TcObject& object) = 0;

  // --- The ingress path: an ifb device, the interface's ingress qdisc, mirred redirects. ---

  // Every interface of this namespace with its kind (one RTM_GETLINK dump), in index order.
  // errors: EPERM, ENOBUFS, EPROTO.
  [[nodiscard]] virtual tl::expected<std::vector<LinkInfo>, std::error_code> links() = 0;

  // The index of ifname. errors: ENODEV no such interface.
  [[nodiscard]] virtual tl::expected<int, std::error_code> interfaceIndex(std::string_view ifname) = 0;

  // Creates an ifb device named name (RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, IFLA_INFO_KIND "ifb")
  // and sets it up in the same message. name: a valid interface name (1-15 bytes).
  // errors: EEXIST a device of that name exists; EOPNOTSUPP the kernel has no ifb (CONFIG_IFB, module
  // ifb); EINVAL a bad name; EPERM without CAP_NET_ADMIN.
  [[nodiscard]] virtual tl::expected<void, std::error_code> createIfb(std::string_view name) = 0;

  // Deletes the device ifname (RTM_DELLINK) with its qdiscs. errors: ENODEV no such device; EOPNOTSUPP
  // a device that cannot be deleted (a physical NIC).
  [[nodiscard]] virtual tl::expected<void, std::error_code> deleteLink(std::string_view ifname) = 0;

  // The ingress-side qdisc of ifname (parent ffff:fff1: "ingress" or "clsact", handle ffff:), from an
  // RTM_GETQDISC dump; nullopt when it has none. errors: ENODEV no such interface.
  [[nodiscard]] virtual tl::expected<std::optional<QdiscInfo>, std::error_code> ingressQdisc(
      std::string_view ifname) = 0;

  // Adds the ingress qdisc (kind "ingress", handle ffff:, parent ffff:fff1; NLM_F_CREATE | NLM_F_EXCL).
  // errors: ENODEV; EEXIST an ingress or clsact qdisc is there already; ENOENT the kernel has no
  // sch_ingress (CONFIG_NET_SCH_INGRESS).
  [[nodiscard]] virtual tl::expected<void, std::error_code> addIngressQdisc(std::string_view ifname) = 0;

  // Deletes the ingress-side qdisc of ifname (and every filter on it). errors: ENODEV; EINVAL or
  // ENOENT when there is none.
  [[nodiscard]] virtual tl::expected<void, std::error_code> deleteIngressQdisc(std::string_view ifname) = 0;

  // Adds filter on ifname's ingress qdisc. errors: ENODEV ifname or filter.target missing; ENOENT no
  // ingress qdisc, or the kernel lacks cls_u32 or act_mirred; EEXIST a filter at that priority; EINVAL.
  [[nodiscard]] virtual tl::expected<void, std::error_code> addRedirectFilter(std::string_view ifname,
                                                                              const RedirectFilter& filter) = 0;

  // Every filter on ifname's ingress qdisc (an RTM_GETTFILTER dump of parent ffff:), in dump order;
  // empty when it has no ingress qdisc. errors: ENODEV; EPROTO a reply that does not parse.
  [[nodiscard]] virtual tl::expected<std::vector<IngressFilter>, std::error_code> ingressFilters(
      std::string_view ifname) = 0;

  // Deletes one filter of ifname's ingress qdisc: the one of filter.handle at filter.priority and
  // filter.protocol, or with handle 0 the whole priority (its classifier and every filter in it), as
  // `tc filter del dev X parent ffff: prio P protocol P [handle H u32]` does. filter.redirects is not
  // used. errors: ENODEV; ENOENT no such filter or priority; EINVAL.
  [[nodiscard]] virtual tl::expected<void, std::error_code> deleteIngressFilter(std::string_view ifname,
                                                                                const IngressFilter& filter) = 0;
};

// Whether restoreRoot() re-creates a root qdisc of this kind exactly as root() read it (handle ≠ 0;
// a kernel default, handle 0:, is put back by deleteRoot() instead). Measured on Linux 6.1 and 6.18:
// dump the root, replace it, restore it from the dump, dump again, compare the bytes.
enum class Restorability {
  kExact,       // the kernel takes the dumped options back and dumps the same bytes again
  kClassful,    // has classes and filters (htb, prio, mq, ...): htb, prio and mq are saved and
                // restored whole with dumpTree() and restoreObject() (qdisc_tree.h); the others not
  kInexact,     // the kernel refuses its own dump (EINVAL: htb-like version fields, missing
                // tables) or re-creates it differently (rounding, state not in the dump)
  kUnverified,  // a kind not measured: treated as not restorable
};
// Pure; thread-safe.
[[nodiscard]] Restorability restorability(std::string_view kind);

// Opens a table for the network namespace at netnsPath (/var/run/netns/NAME, /proc/PID/ns/net),
// or for the caller's namespace when netnsPath is empty. The netlink socket is created inside
// that namespace and stays bound to it; the calling thread's namespace is left unchanged.
// errors: ENOENT no such namespace file; EPERM without CAP_SYS_ADMIN; EINVAL not a netns file.
[[nodiscard]] tl::expected<std::unique_ptr<QdiscTable>, std::error_code> openQdiscTable(const std::string& netnsPath);

// Qdisc kinds this kernel can create, probed once in a throwaway network namespace (the
// caller's namespace is never touched). Blocks for a few milliseconds; needs CAP_SYS_ADMIN and
// CAP_NET_ADMIN, and reports nothing supported (all false) without them.
struct QdiscSupport {
  bool netem = false;
  bool tbf = false;
  bool htb = false;
  bool u32 = false;  // the u32 classifier (a filter added below an htb root)
  // The ingress path (direction ingress/both): an ifb device created, an ingress qdisc added to lo,
  // and a u32 filter with a mirred redirect to the ifb added on it.
  bool ifb = false;
  bool ingress = false;  // sch_ingress
  bool mirred = false;   // act_mirred
};
[[nodiscard]] QdiscSupport probeQdiscSupport();

// The netlink messages QdiscTable sends and parses, as bytes in host byte order, so the wire format
// is unit-tested without a kernel. Requests carry sequence 0 and port 0 (the socket fills both in
// when it sends) and ask for an ack (NLM_F_ACK). Pure functions; thread-safe.

// RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, parent TC_H_ROOT, kind and TCA_OPTIONS from params.
// errors: EINVAL parameters that cannot be encoded (tbf rate, burst or limit 0; negative delay;
// a percentage outside [0, 100]).
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildReplaceRootRequest(int ifindex, uint32_t handle,
                                                                                          const QdiscParams& params);

// RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, parent TC_H_ROOT, saved.kind and saved.handle, and
// saved.options as the TCA_OPTIONS payload, through restoreOptions() (qdisc_tree.h: htb's version,
// codel's rounding; every other kind byte for byte; no TCA_OPTIONS when it is empty).
// errors: EINVAL empty kind or options too large for one attribute.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildRestoreRootRequest(int ifindex,
                                                                                          const QdiscInfo& saved);

// RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, the given parent and handle.
// errors: EINVAL as buildReplaceRootRequest.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildAddQdiscRequest(int ifindex, uint32_t parent,
                                                                                       uint32_t handle,
                                                                                       const QdiscParams& params);

// RTM_NEWTCLASS, NLM_F_CREATE | NLM_F_EXCL, kind htb. errors: EINVAL rate 0 or ceil < rate.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildAddHtbClassRequest(int ifindex, uint32_t classid,
                                                                                          const HtbClassParams& params);

// RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, kind u32, tcm_info = priority << 16 | htons(protocol),
// TCA_OPTIONS {TCA_U32_CLASSID, TCA_U32_SEL (flags TC_U32_TERMINAL, the keys)}; with table,
// TCA_U32_HASH after the classid; a link node: TCA_U32_LINK and TCA_U32_SEL without TERMINAL
// (VAROFFSET | EAT with skipIpv4Header); a hash table: tcm_handle and TCA_U32_DIVISOR only.
// errors: EINVAL no keys (or keys for a table), more than 128, priority 0, an offset that is not a
// multiple of 4, a table handle with a node part or outside 1..0x7FF.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildAddU32FilterRequest(int ifindex,
                                                                                           const U32Filter& filter);

// RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, ifi_flags = ifi_change = IFF_UP, IFLA_IFNAME name,
// IFLA_LINKINFO {IFLA_INFO_KIND "ifb"}. errors: EINVAL an empty name or one of 16 bytes or more.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildCreateIfbRequest(std::string_view name);

// RTM_DELLINK of ifindex.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildDeleteLinkRequest(int ifindex);

// RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, kind "ingress", handle ffff:, parent ffff:fff1 (as
// `tc qdisc add dev X ingress` sends it).
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildAddIngressRequest(int ifindex);

// RTM_DELQDISC, handle ffff:, parent ffff:fff1, TCA_KIND "ingress" (a clsact qdisc is not deleted).
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildDeleteIngressRequest(int ifindex);

// RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, parent ffff:, kind u32, tcm_info = priority << 16 |
// htons(protocol), TCA_OPTIONS {TCA_U32_SEL (TC_U32_TERMINAL, one key 0/0 at 0), TCA_U32_ACT {1:
// {TCA_ACT_KIND "mirred", TCA_ACT_OPTIONS {TCA_MIRRED_PARMS {action TC_ACT_STOLEN, eaction
// TCA_EGRESS_REDIR, ifindex targetIfindex}}}}, TCA_U32_SEL (TC_U32_TERMINAL, one key 0/0 at 0)}: the
// bytes `tc filter add ... u32 match u32 0 0 action mirred egress redirect dev IFB` sends.
// filter.target is not used (the caller resolved it to targetIfindex).
// errors: EINVAL priority 0 or targetIfindex <= 0.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildAddRedirectFilterRequest(
    int ifindex, const RedirectFilter& filter, int targetIfindex);

// One RTM_NEWTFILTER message (header included) as the kernel dumps it: priority, protocol, handle,
// kind, and for u32 the mirred targets (interface indexes) of its actions.
// errors: EPROTO truncated or malformed.
[[nodiscard]] tl::expected<IngressFilter, std::error_code> parseIngressFilter(std::span<const uint8_t> message);

// RTM_DELTFILTER of filter on ifindex's ingress qdisc (parent ffff:); TCA_KIND only with a handle,
// as tc sends it. errors: EINVAL priority 0, or a handle without a kind.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildDeleteIngressFilterRequest(
    int ifindex, const IngressFilter& filter);

// RTM_DELQDISC of the root qdisc (parent TC_H_ROOT, handle 0: whatever root is attached).
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildDeleteRootRequest(int ifindex);

// One RTM_NEWQDISC message (header included), as the kernel sends it in an RTM_GETQDISC dump.
struct DumpedQdisc {
  int ifindex = 0;
  QdiscInfo info;
};
// errors: EPROTO truncated or malformed message, or no TCA_KIND.
[[nodiscard]] tl::expected<DumpedQdisc, std::error_code> parseQdiscMessage(std::span<const uint8_t> message);

}  // namespace faultline::kernel
