// What the agent is allowed to do, read once at its start: the Linux capabilities of its
// effective set that faults need (capget(2) through libcap), and whether it may create cgroups in
// a directory. A missing privilege is named before anything is tried, instead of the failure it
// would cause (an agent without CAP_NET_ADMIN cannot create a qdisc, which the kernel's probe
// would otherwise report as a missing module).
#pragma once

#include <string>
#include <system_error>
#include <vector>

#include <tl/expected.hpp>

namespace faultline::kernel {

// The capabilities faults need, as capabilities(7) names them: CAP_NET_ADMIN (network faults:
// qdiscs, netfilter rules, the NFQUEUE socket), CAP_SYS_ADMIN (a network fault in another network
// namespace: setns(2); the throwaway namespace of the kernel probe), CAP_KILL (signals to other
// users' processes), CAP_SYS_PTRACE (reading other users' /proc/PID entries, pidfd_getfd(2)).
[[nodiscard]] const std::vector<std::string>& faultCapabilities();

// The names of faultCapabilities() that are in the calling thread's effective set, in that order.
// errors: what cap_get_proc(3) sets (ENOMEM). Thread-safe; does not block.
[[nodiscard]] tl::expected<std::vector<std::string>, std::error_code> effectiveFaultCapabilities();

// Whether this process may create entries in directory path (faccessat(2) with AT_EACCESS: its
// effective uid, gid and capabilities, e.g. CAP_DAC_OVERRIDE); false when path does not exist.
// Does not block on a path that is a FIFO or a hung mount beyond the access(2) call itself.
[[nodiscard]] bool canCreateIn(const std::string& path);

}  // namespace faultline::kernel
