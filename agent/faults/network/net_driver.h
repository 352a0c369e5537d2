// network.delay, network.loss (netem) and network.bandwidth (tbf) as the root qdisc of one
// interface in one network namespace.
//
// apply(): opens the namespace's QdiscTable, reads the interface's current root qdisc (the undo
// record) and what hangs below it, and refuses, before any change:
//   EEXIST  the root is already faultline's (one network fault per interface in this version);
//           the message says how to remove a leftover one with tc when no run holds it.
//   ENOTSUP a tree faultline cannot put back exactly, the message naming the part: a root kind
//           whose dump the kernel does not take back byte for byte (kernel::restorability()), a
//           classful kind other than htb, prio and mq, or a part below the root that
//           kernel::treeRefusal() refuses (filters with actions, classifiers other than u32, ...);
//           or a kernel default root (handle 0:) with someone's qdisc attached below it. Kernel
//           defaults alone (e.g. mq, pfifo_fast, noqueue) are fine: revert deletes faultline's root
//           and the kernel attaches its default again. A root with a handle is saved whole: the
//           root, its classes, the qdiscs below and their filters (QdiscTable::dumpTree()).
// Then it replaces the root with faultline's qdisc (handle FA17:). With a traffic match it builds a
// tree instead: htb FA17: (unclassified packets bypass the classes), class FA17:1, the fault's
// qdisc FA18: below it, and u32 filters (traffic_match.h) steering matched packets to FA17:1; a
// step that fails removes the half-built tree (puts the saved root back) before the error is
// returned, and the message names the step (and the module: sch_htb, cls_u32, sch_netem).
// Direction ingress (and both, which adds ingress to the egress fault above): the interface's
// received packets are redirected to an ifb device faultline creates, named ifbName(ifindex)
// ("flt-ifb" + the interface's index in hex, e.g. flt-ifb7; unique per interface and namespace,
// at most 15 bytes), and the same qdisc or tree is built on the ifb's root. apply() refuses, before
// any change: EEXIST that ifb exists already (a leftover or a second ingress fault); EBUSY the
// interface has an ingress or clsact qdisc already (someone else's: faultline does not share it).
// Then: ifb created and up, faultline's qdisc/tree on its root, ingress qdisc ffff: on the
// interface, u32 filters (IPv4 priority 1, IPv6 2) matching every packet with a mirred egress
// redirect to the ifb. ARP and other non-IP frames are not redirected. A failed step removes the
// ingress path (and, for both, puts the egress root and the tree below it back) before the error
// is returned; the message names the module (ifb, sch_ingress, cls_u32/act_mirred). revert()
// removes the ingress qdisc (only while its filters redirect to faultline's ifb alone), then the
// ifb, then reverts egress. The ifb's own root is not saved: faultline created the ifb.
// ENOTSUP, before anything is read: interface "default" or a netns chosen by process when the
// driver has no target resolver (setTargetResolver()).
// revert(): if the root is still faultline's, restores the saved root qdisc byte for byte, then the
// tree below it (kernel::restoreOrder()), or deletes ours when the saved one was the kernel's
// default (handle 0:), then reads the root and the tree back to verify; when the saved root is
// already back, only the parts of the tree that are missing are added.
// It succeeds with nothing to do when the interface or the namespace no longer exists (the fault
// went with it); describe() then says so. Its errors:
//   EBUSY   permanent, do not retry: the root is no longer faultline's (someone replaced it, or the
//           kernel put back something other than the saved root); faultline leaves it alone and
//           the message says what is there now. FaultError::permanent is set too.
//   any other code (EPERM, ENOBUFS, EIO, ...) is transient: revert() may be called again.
// lost() (AppliedFault; the agent calls it about once a second while it holds the fault): the
// fault is no longer in place when the interface's root is not faultline's fa17: of the fault's
// kind (egress, both), or, for ingress and both, when the ifb is gone, its root is not faultline's,
// or no u32 filter on the interface's ingress qdisc redirects to it (the qdisc deleted, or its
// filters replaced). The words say what is there now. Cost: egress one RTM_GETQDISC dump (and the
// namespace opened); ingress adds the ingress filter dump, the ifb's qdisc dump and index. A read
// error, a namespace or interface that is gone are not a loss (revert() reports the latter). Not
// watched: faultline's own root with changed options (`tc qdisc change ... handle fa17:`), or the
// classes, leaf qdisc and filters below a tree's root.
// Neither class is thread-safe; both block for a few netlink round trips.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "agent/faults/fault.h"
#include "agent/faults/network/net_target.h"
#include "agent/faults/network/traffic_match.h"
#include "agent/kernel/qdisc_table.h"

namespace faultline::agent {

// Handles whose major is 0xFA17 belong to faultline ("fa17:" in tc's output).
inline constexpr uint32_t kFaultlineQdiscMajor = 0xFA17;
inline constexpr uint32_t kFaultlineRootHandle = kFaultlineQdiscMajor << 16;
// A fault with a traffic match: htb root fa17:, class fa17:1 (unlimited), the fault's qdisc
// fa18: below it, u32 filters at priority 3 (IPv6: 4) steering matched packets to fa17:1 after the
// controller's exemption at 1 (IPv6: 2); everything else
// bypasses the classes (htb's direct queue).
inline constexpr uint32_t kFaultlineClass = kFaultlineRootHandle | 1;
inline constexpr uint32_t kFaultlineLeafHandle = 0xFA180000;
inline constexpr uint16_t kExemptFilterPriority = 1;          // IPv4 1, IPv6 2
inline constexpr uint16_t kMatchFilterPriority = 3;           // IPv4 3, IPv6 4
inline constexpr uint64_t kUnlimitedBps = uint64_t{1} << 40;  // 1.1 Tbit/s: never the bottleneck
// The ingress path: ifb devices named kIfbPrefix + the interface's index in hex; the redirect
// filters on the interface's ingress qdisc at priority 1 (IPv4) and 2 (IPv6).
inline constexpr std::string_view kIfbPrefix = "flt-ifb";
inline constexpr uint16_t kIngressRedirectPriority = 1;

using QdiscTableOpener =
    std::function<tl::expected<std::unique_ptr<kernel::QdiscTable>, std::error_code>(const std::string& netns)>;

class NetworkFaultDriver final : public FaultDriver {
 public:
  // open: called once per apply/revert for the spec's namespace; tests pass a fake.
  explicit NetworkFaultDriver(QdiscTableOpener open);
  // The agent's controller (resolved addresses, TCP port): a fault in the agent's own namespace
  // (netns "") is then built as a tree whose first filters (priority 1) send TCP to and from
  // these endpoints to htb's direct queue, so the channel that reverts the fault never suffers it;
  // without a match, the fault's filters then match all IPv4 and IPv6 packets (ARP and other
  // non-IP frames bypass it). Call before apply(); not thread-safe.
  void setExempt(std::vector<Endpoint> endpoints) { exempt_ = std::move(endpoints); }
  // Resolves targets before they are planned (net_target.h): interface "default", netns_process,
  // and a netns path that is the agent's own namespace. Without one (tests with a fake table),
  // "default" and netns_process are refused with ENOTSUP and paths are taken as they are.
  // resolver must outlive the driver. Call before apply(); not thread-safe.
  void setTargetResolver(NetworkTargetResolver* resolver) { resolver_ = resolver; }
  // apply() calls persist (when set) with the undo record after reading the root and before
  // replacing it:
  //   {"fault":"network.bandwidth","netns":"/var/run/netns/a" or "","interface":"veth0",
  //    "handle":4195811328 (FA17:),"qdisc":"tbf",
  //    "saved":null (a kernel default root) or {"kind","handle","parent","options":"<hex>"},
  //    "below":[{"type":"qdisc"|"class"|"filter","kind","handle","parent","info","chain",
  //              "options":"<hex>"}, ...] (only when something hung below a saved root),
  //    "direction":"egress"|"ingress"|"both",
  //    and for ingress/both: "ifb":"flt-ifb7","ingressQdisc":"ingress"}
  //  ("handle" and "qdisc" are then also what sits on the ifb's root; "saved" and "below" are the
  //  interface's egress root and tree, saved and restored only for egress and both).
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

  // Crash recovery: does what the fault's revert() does, from its undo record alone. If the root
  // is still faultline's, restores the saved root and the tree below it byte for byte (or deletes
  // ours when it was a default); when the saved root is already back (a crash before the kernel
  // change, or during a revert) adds what is missing of the tree; nothing to do when the interface
  // or namespace is gone. Records without "below" (earlier versions) restore the root alone.
  // Returns what it did, in words.
  // errors: as revert(); EINVAL (permanent) for a record it cannot read.
  [[nodiscard]] static tl::expected<std::string, FaultError> revertRecord(const nlohmann::json& undo,
                                                                          const QdiscTableOpener& open);

 private:
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> applyResolved(const v1::FaultSpec& spec,
                                                                                      const PersistUndo& persist);
  QdiscTableOpener open_;
  std::vector<Endpoint> exempt_;
  NetworkTargetResolver* resolver_ = nullptr;
};

// faultline's ifb for the interface of index ifindex: "flt-ifb" + ifindex in hex (≤ 15 bytes).
[[nodiscard]] std::string ifbName(int ifindex);

// Removes faultline's ingress path for interface in table's namespace (netns: for messages only):
// the u32 filters redirecting to ifb, then the ifb device; reads back that the ifb is gone and no
// filter redirects to it. The interface's ingress qdisc goes with faultline's filters when they are
// all it carries; when someone added filters of their own to it, it stays with theirs, and only
// faultline's priorities (or, in a priority shared with theirs, faultline's u32 nodes) are deleted;
// without a redirect to ifb it is not faultline's and stays. interface "" or missing: only the ifb.
// Returns what it did, in words, naming filters it left. errors: the table's (EPERM, ENOBUFS, ...);
// EIO when the ifb or a redirect to it is still there afterwards. Used by revert-all.
[[nodiscard]] tl::expected<std::string, FaultError> removeIngressPath(kernel::QdiscTable& table,
                                                                      const std::string& netns,
                                                                      const std::string& interface,
                                                                      const std::string& ifb);

// The interface name that stands for the namespace's default-route interface.
inline constexpr std::string_view kDefaultRouteInterface = "default";

// netem's queue limit when the spec sets none: enough packets that the delayed traffic of a
// link at rateBps (10 Gbit/s when 0) in 1500-byte packets does not tail-drop:
// ceil((delay + jitter) x rate / 12000 bit), at least 1000 (the kernel's default), at most
// 10,000,000. netem holds only the packets that arrive, so a large limit costs memory only under load.
[[nodiscard]] uint32_t netemLimitPackets(std::chrono::microseconds delay, std::chrono::microseconds jitter,
                                         uint64_t rateBps);

// netem parameters for a validated network.delay spec: the distribution table loaded
// (delayDistributionTable()), limit from limit_packets or netemLimitPackets().
[[nodiscard]] kernel::NetemParams delayParams(const v1::NetworkDelay& spec);

// tbf parameters for a validated network.bandwidth spec. Defaults when a field is 0:
//   burst: 10 ms of traffic at the rate, at least 3028 bytes (two full-size 1514-byte Ethernet
//          frames). tbf drops non-GSO packets larger than the burst: apply() (with a target
//          resolver) raises a default burst to the interface's MTU + 14 and refuses (EINVAL) an
//          explicit one below that, before any change.
//   limit: with latency set, the bytes sent at the rate in that time plus the burst (as tc-tbf(8));
//          else 50 ms of traffic at the rate, at least the burst.
// Both are capped at 4 GiB - 1 (the kernel's u32).
[[nodiscard]] kernel::TbfParams bandwidthParams(const v1::NetworkBandwidth& spec);

// Words for a qdisc kind the kernel cannot create (ENOENT from RTM_NEWQDISC): names the config
// option and the module, e.g. "the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): load it with
// `modprobe sch_netem`; on RHEL-family hosts it ships in kernel-modules-extra".
[[nodiscard]] std::string missingQdiscMessage(std::string_view kind);

}  // namespace faultline::agent
