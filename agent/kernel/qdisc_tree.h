// An interface's whole egress tc tree, saved and put back: the root qdisc, its classes, the qdiscs
// below them and the filters attached at each, as the kernel dumps them (RTM_GETQDISC,
// RTM_GETTCLASS, RTM_GETTFILTER per parent). Pure functions over dumped bytes (host byte order);
// thread-safe. QdiscTable::dumpTree() and restoreObject() (qdisc_table.h) read and write them.
//
// What comes back byte for byte was measured on Linux 6.18 (this machine) and 6.1 (the VM tier):
// build the tree with tc, dump it, replace the root, restore every part from the dump, dump again,
// compare. See docs/operations.md, "What faultline restores".
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <tl/expected.hpp>

namespace faultline::kernel {

struct QdiscInfo;  // qdisc_table.h, which includes this header

enum class TcObjectType : uint8_t { kQdisc, kClass, kFilter };

// One qdisc, class or filter below an interface's root, as dumped.
struct TcObject {
  TcObjectType type = TcObjectType::kQdisc;
  std::string kind;              // TCA_KIND: "htb", "pfifo", "u32", ...
  uint32_t handle = 0;           // qdisc major:0, class major:minor, filter handle (u32: 800::800)
  uint32_t parent = 0;           // a qdisc handle (major:0) or a class id
  uint32_t info = 0;             // filters: tcm_info, priority << 16 | protocol (network order)
  uint32_t chain = 0;            // filters: TCA_CHAIN (only 0 is restored)
  std::vector<uint8_t> options;  // raw TCA_OPTIONS payload; empty when the kernel sent none

  friend bool operator==(const TcObject&, const TcObject&) = default;
};

// Words for a type: "qdisc", "class", "filter".
[[nodiscard]] std::string_view tcObjectTypeName(TcObjectType type);
// tc's words for an object: "class htb 1:10 parent 1:", "filter u32 800::800 parent 1: prio 3".
[[nodiscard]] std::string tcObjectText(const TcObject& object);

// Why faultline cannot put this tree back exactly (root: a root qdisc with a handle; below: what
// dumpTree() returned), naming the part; nullopt when it can. Restored: a root of an exact kind
// (restorability()), htb, prio, mq; classes of htb (prio's bands and mq's queues come back with
// their qdisc); child qdiscs of the same kinds; filters of kind u32 in chain 0 whose keys sit in
// the priority's own hash table (no `link`, no `divisor` tables, no actions or police). tbf's and
// netem's single class, prio's bands and mq's queues come with their qdisc.
[[nodiscard]] std::optional<std::string> treeRefusal(const QdiscInfo& root, const std::vector<TcObject>& below);

// The requests that put below back once root is restored: every class of a classful qdisc before
// what hangs below it (parent first), then child qdiscs, then filters in (parent, priority)
// order; objects the kernel re-creates itself (a prio's bands, mq's queues, the default child
// qdiscs with handle 0:, a filter priority's own entry and its u32 root hash table) are left out.
[[nodiscard]] std::vector<TcObject> restoreOrder(const QdiscInfo& root, const std::vector<TcObject>& below);

// Whether the classes an RTM_GETTCLASS dump shows for a qdisc of kind are its active flows
// (fq_codel, sfq, cake, fq, fq_pie, hhf, sfb): state, not configuration.
[[nodiscard]] bool hasFlowClasses(std::string_view kind);

// Whether two dumps show the same tree: every object's type, kind, handle, parent, info, chain
// and options, with counters the kernel keeps inside options (u32's TCA_U32_PCNT) left out.
[[nodiscard]] bool sameTree(const std::vector<TcObject>& a, const std::vector<TcObject>& b);
// Whether two dumps of a qdisc of kind show the same configuration (htb's direct_pkts counter left
// out).
[[nodiscard]] bool sameQdiscOptions(std::string_view kind, std::span<const uint8_t> a, std::span<const uint8_t> b);

// The TCA_OPTIONS payload to send so the kernel dumps `dumped` again: htb's TCA_HTB_INIT version
// put back to 3 (the dump says 0x30011, htb_init() wants the major); codel's and fq_codel's target,
// interval and ce_threshold (dumped as floor(t * 1024 / 1000) µs of an internal value t in 1024 ns
// units) sent as the smallest µs value the kernel turns back into t; u32's TCA_U32_PCNT dropped and
// its TCA_U32_FLAGS cut to what a user may set (skip_hw, skip_sw; not_in_hw is the kernel's status,
// which the kernel refuses on input).
// Unchanged for every other kind.
[[nodiscard]] std::vector<uint8_t> restoreOptions(TcObjectType type, std::string_view kind,
                                                  std::span<const uint8_t> dumped);

// RTM_GETTCLASS dump of every class of ifindex.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildDumpClassesRequest(int ifindex);
// RTM_GETTFILTER dump of the filters attached at parent (a qdisc handle or a class id) of ifindex.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildDumpFiltersRequest(int ifindex, uint32_t parent);
// RTM_NEWQDISC (NLM_F_CREATE | NLM_F_EXCL), RTM_NEWTCLASS (NLM_F_CREATE | NLM_F_EXCL) or
// RTM_NEWTFILTER (NLM_F_CREATE | NLM_F_EXCL) with the object's handle, parent, info, kind and
// restoreOptions(). errors: EINVAL empty kind, a chain other than 0, options too large.
[[nodiscard]] tl::expected<std::vector<uint8_t>, std::error_code> buildRestoreObjectRequest(int ifindex,
                                                                                            const TcObject& object);

// One RTM_NEWQDISC, RTM_NEWTCLASS or RTM_NEWTFILTER message of a dump (header included).
struct DumpedTcObject {
  int ifindex = 0;
  TcObject object;
};
// errors: EPROTO truncated or malformed, another message type, or no TCA_KIND.
[[nodiscard]] tl::expected<DumpedTcObject, std::error_code> parseTcObjectMessage(std::span<const uint8_t> message);

}  // namespace faultline::kernel
