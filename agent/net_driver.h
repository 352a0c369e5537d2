// network.delay, network.loss (netem) and network.bandwidth (tbf) as the root qdisc of one
// interface in one network namespace.
//
// apply(): opens the namespace's QdiscTable, reads the interface's current root qdisc (the undo
// record) and what hangs below it, and refuses, before any change:
//   EEXIST  the root is already faultline's (one network fault per interface in this version);
//           the message says how to remove a leftover one with tc when no run holds it.
//   ENOTSUP a root faultline cannot put back exactly: a classful kind (htb, prio, mq, ...) with a
//           handle, whose classes and filters nothing saves; a kind whose dump the kernel does not
//           take back byte for byte (kernel::restorability()); or a root with qdiscs of someone's
//           attached below it. Kernel defaults (handle 0:, e.g. mq, pfifo_fast, noqueue) are fine:
//           revert deletes faultline's root and the kernel attaches its default again.
// Then it replaces the root with faultline's qdisc (handle FA17:).
// revert(): if the root is still faultline's, restores the saved root qdisc byte for byte, or
// deletes ours when the saved one was the kernel's default (handle 0:), then reads back to verify.
// It succeeds with nothing to do when the interface or the namespace no longer exists (the fault
// went with it); describe() then says so. Its errors:
//   EBUSY   permanent, do not retry: the root is no longer faultline's (someone replaced it, or the
//           kernel put back something other than the saved root); faultline leaves it alone and
//           the message says what is there now. FaultError::permanent is set too.
//   any other code (EPERM, ENOBUFS, EIO, ...) is transient: revert() may be called again.
// Neither class is thread-safe; both block for a few netlink round trips.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "agent/fault.h"
#include "agent/kernel/qdisc_table.h"

namespace faultline::agent {

// Handles whose major is 0xFA17 belong to faultline ("fa17:" in tc's output).
inline constexpr uint32_t kFaultlineQdiscMajor = 0xFA17;
inline constexpr uint32_t kFaultlineRootHandle = kFaultlineQdiscMajor << 16;

using QdiscTableOpener =
    std::function<tl::expected<std::unique_ptr<kernel::QdiscTable>, std::error_code>(const std::string& netns)>;

class NetworkFaultDriver final : public FaultDriver {
 public:
  // open: called once per apply/revert for the spec's namespace; tests pass a fake.
  explicit NetworkFaultDriver(QdiscTableOpener open);
  // apply() calls persist (when set) with the undo record after reading the root and before
  // replacing it:
  //   {"fault":"network.bandwidth","netns":"/var/run/netns/a" or "","interface":"veth0",
  //    "handle":4195811328 (FA17:),"qdisc":"tbf",
  //    "saved":null (a kernel default root) or {"kind","handle","parent","options":"<hex>"}}
  using FaultDriver::apply;
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist) override;

  // Crash recovery: does what the fault's revert() does, from its undo record alone. If the root
  // is still faultline's, restores the saved root byte for byte (or deletes ours when it was a
  // default); nothing to do when the saved root is already back (a crash before the kernel
  // change), or the interface or namespace is gone. Returns what it did, in words.
  // errors: as revert(); EINVAL (permanent) for a record it cannot read.
  [[nodiscard]] static tl::expected<std::string, FaultError> revertRecord(const nlohmann::json& undo,
                                                                          const QdiscTableOpener& open);

 private:
  QdiscTableOpener open_;
};

// tbf parameters for a validated network.bandwidth spec. Defaults when a field is 0:
//   burst: 10 ms of traffic at the rate, at least 3028 bytes (two full-size 1514-byte Ethernet
//          frames). Interfaces with a larger MTU (jumbo frames, lo's 65536) need burst_bytes set
//          to at least their MTU: tbf drops non-GSO packets larger than the burst.
//   limit: 50 ms of traffic at the rate, at least the burst.
// Both are capped at 4 GiB - 1 (the kernel's u32).
[[nodiscard]] kernel::TbfParams bandwidthParams(const v1::NetworkBandwidth& spec);

// Words for a qdisc kind the kernel cannot create (ENOENT from RTM_NEWQDISC): names the config
// option and the module, e.g. "the kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): load it with
// `modprobe sch_netem`; on RHEL-family hosts it ships in kernel-modules-extra".
[[nodiscard]] std::string missingQdiscMessage(std::string_view kind);

}  // namespace faultline::agent
