// Network fault targets made concrete before the qdisc code runs: the interface "default" becomes
// the default route's interface, and a namespace chosen by processes (NetworkTarget.netns_process)
// becomes a path the agent pins for the fault's lifetime.
//
// Pins: the namespace of the picked processes is bind-mounted (as `ip netns add` does) on a file
// under kNetnsPinDir, named after the first pid, e.g. /run/faultline-agent/netns/pid4242-Xa81Qz. The
// fault's qdiscs are then reverted through the pin even after those processes exited, and the
// journal's undo record names the pin, which survives an agent crash (not a reboot: /run is a
// tmpfs, and the namespace goes with the reboot anyway). The pin is unmounted and removed once the
// fault is reverted, by revert(), by the crash recovery, or by `faultline-agent revert-all`.
// A namespace that is the agent's own (by device and inode, whatever path or process named it) is
// targeted as the agent's own, "", so the controller's channel stays exempt from the fault.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <string_view>

#include <nlohmann/json_fwd.hpp>
#include <tl/expected.hpp>

#include "agent/faults/fault.h"
#include "agent/kernel/process_table.h"
#include "faultline/v1/faults.pb.h"

namespace faultline::agent {

// The agent's own directory (root's), not the controller's /run/faultline: on a host running both
// services that one belongs to the unprivileged controller user, who could replace the pins.
inline constexpr std::string_view kNetnsPinDir = "/run/faultline-agent/netns";

// A network namespace's identity: the device and inode of its nsfs file (as `stat -L` shows them
// for /proc/PID/ns/net; `ip netns identify` compares the same).
struct NetnsIdentity {
  uint64_t dev = 0;
  uint64_t ino = 0;
  friend bool operator==(const NetnsIdentity&, const NetnsIdentity&) = default;
};
// errors: the errno of stat() (ENOENT, EACCES).
[[nodiscard]] tl::expected<NetnsIdentity, std::error_code> netnsIdentity(const std::string& path);

struct ResolvedNetworkTarget {
  std::string netns;                      // "" = the agent's own namespace; else an absolute path (maybe a pin)
  std::string interface;                  // a real interface name, never "default"
  std::optional<NetnsIdentity> identity;  // of netns, when it is not the agent's own
  std::string pin;                        // the pin's path when this resolution created one, else ""
  std::string note;  // how the target was resolved, in words ("" when nothing was): "interface default
                     // is eth0; namespace of pid 42 (nginx -g daemon off;), pinned at /run/..."
};

class NetworkTargetResolver {
 public:
  // processes: the table netns_process selectors are matched against (nullptr: such targets are
  // refused with ENOTSUP). pinDir: where pins are created (tests pass their own directory).
  explicit NetworkTargetResolver(kernel::ProcessTable* processes,
                                 std::filesystem::path pinDir = std::filesystem::path(kNetnsPinDir));

  // target must have passed validateFaultSpec(). Blocks for a /proc scan (a selector), a mount, and
  // two netlink round trips ("default"). On error nothing is left behind (no pin).
  // errors (message starts with faultKind): ESRCH the selector matched no process, or it exited
  // while it was being pinned; EINVAL the processes picked are in more than one namespace (the
  // message lists them); ENETUNREACH interface "default" in a namespace without a default route;
  // the errno of opening or pinning the namespace (ENOENT, EPERM without CAP_SYS_ADMIN).
  [[nodiscard]] tl::expected<ResolvedNetworkTarget, FaultError> resolve(const v1::NetworkTarget& target,
                                                                        std::string_view faultKind);

 private:
  // Bind-mounts the namespace open at nsFd on a new file pinDir_/LABEL-XXXXXX; what: for messages.
  // Returns the pin's path. errors: FaultError naming the step (EPERM without CAP_SYS_ADMIN).
  [[nodiscard]] tl::expected<std::string, FaultError> pinNamespace(int nsFd, const std::string& label,
                                                                   const std::string& what, std::string_view faultKind);
  kernel::ProcessTable* processes_;
  std::filesystem::path pinDir_;
  std::mt19937_64 rng_{std::random_device{}()};
};

// Unmounts (lazily, MNT_DETACH) and removes a pin. A pin that is already gone is fine.
// errors: the errno of umount2 or unlink, in words naming the path.
[[nodiscard]] tl::expected<void, std::string> releaseNetnsPin(const std::string& path);

// Releases every pin in dir; returns what it could not release, in words.
[[nodiscard]] std::vector<std::string> releaseAllNetnsPins(const std::filesystem::path& dir);

// For crash recovery: when undo["netnsIdentity"] is set and undo["netns"] no longer names that
// namespace (the process behind /proc/PID/ns/net exited and its pid was reused, or the path is
// gone), looks for the namespace among the host's (kernel::listNetworkNamespaces(), which includes
// the pins) and rewrites undo["netns"] to a path that names it.
struct NetnsRelocation {
  enum class State {
    kUnchanged,  // no identity recorded, or the path still names the namespace
    kMoved,      // undo["netns"] was rewritten; note says from where to where
    kGone,       // the namespace is nowhere to be found: it is gone, and the fault with it
  };
  State state = State::kUnchanged;
  std::string note;
};
[[nodiscard]] NetnsRelocation relocateNetns(nlohmann::json& undo);

// The undo record with what resolve() found, for crash recovery: "netnsIdentity": {"dev","ino"}
// when target.identity is set, and "pin": the pin's path when there is one.
void addResolvedTarget(nlohmann::json& undo, const ResolvedNetworkTarget& target);

// A fault applied on a resolved target: describe() adds target.note, and a successful revert()
// releases target.pin (a failure to release it is logged; revert-all removes leftovers).
[[nodiscard]] std::unique_ptr<AppliedFault> withResolvedTarget(std::unique_ptr<AppliedFault> fault,
                                                               ResolvedNetworkTarget target);

// A network driver's apply on a resolved target: concrete is spec with the namespace path and the
// real interface in place of "default" and netns_process; persist adds the resolution to the undo
// record (addResolvedTarget).
using ResolvedApply = std::function<tl::expected<std::unique_ptr<AppliedFault>, FaultError>(
    const v1::FaultSpec& concrete, const ResolvedNetworkTarget& target, const PersistUndo& persist)>;

// Resolves spec's network target (spec must have passed validateFaultSpec()), calls apply, and
// wraps what it applied with withResolvedTarget(). A pin this created is released when apply
// fails without changing anything (FaultError::mayBeChanged false); otherwise it stays, for the
// recovery. errors: resolve()'s, then apply's.
[[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> applyOnResolvedTarget(
    NetworkTargetResolver& resolver, const v1::FaultSpec& spec, const PersistUndo& persist, const ResolvedApply& apply);

}  // namespace faultline::agent
