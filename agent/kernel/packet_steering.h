// Packet steering for the userspace network driver: netfilter rules, owned by faultline and
// recognisable by name, that send one interface's matched packets to an NFQUEUE (served by
// agent/faults/network/packet_queue.h) or drop them, in one network namespace. See docs/experiments.md, "Network
// drivers".
//
// Two backends, chosen by the caller from probeSteeringSupport():
//   kNftables: one table per fault, family inet, named "faultline-<slot>" (nft(8)), programmed
//     through libnftables; base chains hook output (egress) and prerouting (ingress) at priority
//     -150 (mangle), policy accept. A queue verdict needs nft_queue (CONFIG_NFT_QUEUE): `queue num
//     N bypass`; a random drop is `numgen random mod 1000000 < X drop`.
//   kXtables: one chain per fault in the legacy mangle table of IPv4 and of IPv6 (ip_tables,
//     ip6_tables), named "FAULTLINE-<slot>", jumped to from OUTPUT (egress, with -o interface) and
//     PREROUTING (ingress, -i interface) by one rule each; programmed with libiptc / libip6tc. A
//     queue verdict is the NFQUEUE target (revision 3) with --queue-bypass; a drop is DROP; a
//     random drop is the statistic match (random mode) with DROP.
// The rules, in order: packets carrying kInjectedMark (copies the agent sends itself) are
// accepted/returned; the agent's own channel (TCP to and from each exempt endpoint's address and
// port) is accepted/returned; then one rule per match combination (destination CIDR x source CIDR
// x destination port x source port x protocol; an empty list is "any") on the interface, with the
// verdict. Without a match every IPv4 and IPv6 packet on the interface is matched.
// With --queue-bypass / `bypass`, a queue no program is bound to (the agent stopped or died) lets
// packets pass unharmed: a dead agent never blackholes traffic.
// Neither the support probe nor a PacketSteering is thread-safe; each call blocks for a few
// netlink round trips.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <tl/expected.hpp>

#include "agent/kernel/net_types.h"
#include "faultline/v1/faults.pb.h"

namespace faultline::kernel {

enum class SteeringBackend { kNftables, kXtables };

// "nftables" or "xtables".
[[nodiscard]] std::string_view steeringBackendName(SteeringBackend backend);

// skb mark of packets the agent's packet queue sends itself (duplicates): never steered.
inline constexpr uint32_t kInjectedMark = 0xFA170001;
// The queue of the fault in slot s is kQueueBase + s (slots 0-255).
inline constexpr uint16_t kQueueBase = 0xFA00;
inline constexpr uint16_t kMaxSlots = 256;
// Table (nftables) and chain (xtables) names: kNftTablePrefix / kXtChainPrefix + slot in decimal.
inline constexpr std::string_view kNftTablePrefix = "faultline-";
inline constexpr std::string_view kXtChainPrefix = "FAULTLINE-";

// What this kernel offers the userspace driver, each probed for real in a throwaway network
// namespace (a table, chain and rule added, a queue bound), names as the kernel config spells them.
struct SteeringSupport {
  bool nftables = false;     // nf_tables with inet base chains (CONFIG_NF_TABLES_INET)
  bool nftQueue = false;     // nft's queue statement (CONFIG_NFT_QUEUE)
  bool nftNumgen = false;    // numgen random (CONFIG_NFT_NUMGEN)
  bool xtables = false;      // legacy ip_tables and ip6_tables mangle tables (CONFIG_IP_NF_MANGLE, IP6_NF_MANGLE)
  bool xtNfqueue = false;    // the NFQUEUE target (CONFIG_NETFILTER_XT_TARGET_NFQUEUE)
  bool xtStatistic = false;  // the statistic match (CONFIG_NETFILTER_XT_MATCH_STATISTIC)
  bool nfqueue = false;      // a queue can be bound over nfnetlink (CONFIG_NETFILTER_NETLINK_QUEUE)
};

// Probes in a throwaway network namespace (unshare on a short-lived thread); never touches the
// caller's namespace. Blocks for tens of milliseconds.
[[nodiscard]] SteeringSupport probeSteeringSupport();

// The backend a queue verdict uses: nftables where it has nft_queue, else xtables with the NFQUEUE
// target; an error when neither, or when no queue can be bound (nfqueue). For drop-only rules
// (partition, plain loss): nftables with numgen, else xtables with the statistic match, else
// whichever exists (a plain drop needs neither). errors: words naming what is missing.
[[nodiscard]] tl::expected<SteeringBackend, std::string> chooseBackend(const SteeringSupport& support, bool needsQueue);

struct SteeringRules {
  enum class Verdict { kQueue, kDrop, kDropRandom };
  uint16_t slot = 0;      // 0 - kMaxSlots-1: names the table/chain; the caller picks a free one
  std::string interface;  // oifname (egress) / iifname (ingress): a valid interface name
  bool egress = true;     // hook output / OUTPUT
  bool ingress = false;   // hook prerouting / PREROUTING
  // Validated as a fault's target is (validateFaultSpec()), and checked again by install(); the
  // destination and source are the packet's own fields in either direction. Empty: every IPv4 and
  // IPv6 packet, neighbour discovery's too (ARP is neither).
  v1::TrafficMatch match;
  std::vector<agent::Endpoint> exempt;  // the agent's controller: never matched
  Verdict verdict = Verdict::kQueue;
  uint16_t queue = 0;      // kQueue: the queue number (kQueueBase + slot)
  double dropPercent = 0;  // kDropRandom: (0, 100], resolution 0.0001 %
};

// One part of what a slot installed, as read back by PacketSteering::inspect().
struct SteeringPart {
  // Words naming it, unique within the slot: "IPv4 chain FAULTLINE-0", "IPv6 jump rule
  // PREROUTING -i veth0 -> FAULTLINE-0", "nftables chain egress of table inet faultline-0".
  std::string name;
  size_t rules = 0;     // rules in the chain; for a jump rule, how many such rules
  uint64_t digest = 0;  // of the rules' contents (packet and byte counters excluded)
};

// The slot's queue (kQueueBase + slot) as the kernel lists it in the namespace
// (/proc/net/netfilter/nfnetlink_queue).
struct QueueState {
  bool bound = false;     // a program has bound it
  uint32_t waiting = 0;   // packets queued without a verdict yet (read and held, or not yet read)
  uint32_t sequence = 0;  // packets queued since it was bound (the last packet id)
};

struct SlotState {
  std::vector<SteeringPart> parts;  // sorted by name; empty: nothing of the slot is there
  QueueState queue;
};

class PacketSteering {
 public:
  virtual ~PacketSteering() = default;

  // Installs rules (nftables: one transaction; xtables: one commit per family, under the xtables
  // lock). On failure nothing of slot stays (what was added is removed before returning).
  // errors: EEXIST slot's table/chain exists already; ENOENT / EOPNOTSUPP the kernel lacks a part
  // (the message names it, e.g. "nft_queue (CONFIG_NFT_QUEUE)"); EINVAL rules that cannot be
  // expressed (e.g. more than 256 combinations); EPERM without CAP_NET_ADMIN; EBUSY (xtables) the
  // xtables lock is held by another program for longer than the wait, nothing changed. The
  // message is words for the user.
  [[nodiscard]] virtual tl::expected<void, std::pair<std::error_code, std::string>> install(
      const SteeringRules& rules) = 0;

  // What remove() left of the slot, and why, in words; empty: nothing of the slot is left.
  struct Removal {
    std::vector<std::string> left;
  };

  // Removes slot's table (nftables) or chains and the jump rules to them (xtables, both
  // families); reads back that nothing of slot is left. Nothing there: success (idempotent).
  // xtables: only the jump rules install() adds (one per hook, of its shape: OUTPUT / FORWARD
  // -o IF, PREROUTING -i IF, no other match) are deleted; when any other rule jumps to the chain
  // (someone's `-A INPUT ... -j FAULTLINE-0`), that rule and the chain stay, the chain emptied
  // of faultline's rules (so the rule jumps to an empty chain: packets go on unharmed), and left
  // names each such rule. The chain goes with a later remove() once nothing else jumps to it.
  // nftables: no rule outside a table can jump into it; the table goes whole.
  // Takes the xtables lock first (XtablesLock::take(), kXtablesLockWait): never commits
  // without it.
  // errors: EPERM; EBUSY the xtables lock is held by another program for longer than the wait
  // (nothing changed; the words name the holder); EIO when something of slot is still there
  // afterwards (beyond what left names).
  [[nodiscard]] virtual tl::expected<Removal, std::pair<std::error_code, std::string>> remove(uint16_t slot) = 0;

  // The slots whose faultline table or chains are present in this namespace, sorted; for a free
  // slot, recovery and revert-all. Tables/chains with faultline's prefix but no number are
  // listed in strays (for words). steered: what each slot's rules steer, read from them (xtables:
  // the jump rules from OUTPUT / PREROUTING; nftables: the table's egress / ingress chains and
  // their oifname / iifname), for the one-fault-per-interface-and-direction rule across agents.
  // served: the slots (0 - kMaxSlots-1) whose queue kQueueBase + slot a running program has bound
  // in this namespace (/proc/net/netfilter/nfnetlink_queue), whether or not rules steer to it: a
  // faultline agent that died left its queue unbound, so a served slot is a live agent's.
  // errors: EPERM; ENOENT the backend is absent.
  struct Steered {
    uint16_t slot = 0;
    std::string interface;  // "" when no rule names one (someone changed the rules)
    bool egress = false;
    bool ingress = false;
  };
  struct Owned {
    std::vector<uint16_t> slots;
    std::vector<std::string> strays;
    std::vector<Steered> steered;  // by slot
    std::vector<uint16_t> served;  // sorted
  };
  [[nodiscard]] virtual tl::expected<Owned, std::error_code> owned() = 0;

  // What slot's rules and queue are now, read back from the kernel, for AppliedFault::lost(): the
  // state right after install() is the reference; steeringChanges() compares. Nothing of slot
  // there: no parts. Cost: xtables, one read of the IPv4 and of the IPv6 mangle table
  // (libiptc); nftables, one `list table` through libnftables; and one read of the namespace's
  // nfnetlink_queue list; all on one short-lived thread in the namespace. errors: EPERM; ENOENT
  // the backend is absent; EIO a listing that cannot be read.
  [[nodiscard]] virtual tl::expected<SlotState, std::error_code> inspect(uint16_t slot) = 0;
};

// The words for what changed from installed (read right after install()) to now (both
// inspect()), one entry per change, e.g. "the IPv4 chain FAULTLINE-0 is gone (someone deleted
// it)", "the IPv4 jump rule OUTPUT -o veth0 -> FAULTLINE-0 is gone (someone deleted it): packets
// no longer reach the chain", "nftables chain egress of table inet faultline-0 now has 2 rules,
// not the 5 installed (someone changed it)". Parts added since (another rule jumping to the
// chain) are not a change. The queue is not compared here (the driver knows what it read).
// Empty: nothing changed.
[[nodiscard]] std::vector<std::string> steeringChanges(const SlotState& installed, const SlotState& now);

// The xtables lock's file: $XTABLES_LOCKFILE when set and not empty (as iptables(8) reads it),
// else /run/xtables.lock.
[[nodiscard]] std::string xtablesLockPath();

// How long an xtables change waits for another program's lock (iptables -w waits for ever; a
// change that fails here can be tried again: a revert is). Shorter than the controller's 10 s wait
// for an apply's answer, so that the run records this reason, not "no answer within 10s".
inline constexpr std::chrono::milliseconds kXtablesLockWait{8000};

// The xtables lock (flock(2) on xtablesLockPath(), as iptables(8) takes it), held for the life of
// the object, so that a faultline commit and another program's (iptables, another agent) do not
// overwrite each other (libiptc replaces the whole table). Not re-entrant within one process: take
// it once per change. Movable.
class XtablesLock {
 public:
  // Waits up to wait for the lock, polling every 2 ms; never goes on without it (iptables(8)
  // fails the same way). The file is opened non-blocking (O_CREAT, mode 0600).
  // errors (code, words): EBUSY another program still holds it after wait (the words name the
  // file, the wait and the holder's pid and command when /proc/locks lists it); the open's errno
  // (EACCES, ENOENT: no /run, ...) when the file cannot be opened.
  [[nodiscard]] static tl::expected<XtablesLock, std::pair<std::error_code, std::string>> take(
      std::chrono::milliseconds wait);
  XtablesLock(XtablesLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  XtablesLock& operator=(XtablesLock&&) = delete;
  XtablesLock(const XtablesLock&) = delete;
  XtablesLock& operator=(const XtablesLock&) = delete;
  ~XtablesLock();

 private:
  explicit XtablesLock(int fd) : fd_(fd) {}
  int fd_ = -1;
};

// Steering for backend in netns ("" = the caller's own namespace; else a namespace file such as
// /proc/PID/ns/net or /run/netns/NAME). Every kernel call runs on a thread that joined netns
// (setns), so the caller's thread never changes namespace. An xtables install() or remove() waits
// up to kXtablesLockWait for the xtables lock. errors: ENOENT/EINVAL netns is not a namespace;
// EPERM.
[[nodiscard]] tl::expected<std::unique_ptr<PacketSteering>, std::error_code> openPacketSteering(
    SteeringBackend backend, const std::string& netns);
// The same, with xtablesLockWait instead of kXtablesLockWait (tests).
[[nodiscard]] tl::expected<std::unique_ptr<PacketSteering>, std::error_code> openPacketSteeringWithLockWait(
    SteeringBackend backend, const std::string& netns, std::chrono::milliseconds xtablesLockWait);

}  // namespace faultline::kernel
