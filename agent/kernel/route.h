// The interface of a network namespace's default route, for network faults whose target
// interface is "default".
#pragma once

#include <cstdint>
#include <string>
#include <system_error>

#include <tl/expected.hpp>

namespace faultline::kernel {

// The interface of the default route (destination 0.0.0.0/0, else ::/0) in the main routing
// table of the namespace at netnsPath (/var/run/netns/NAME, /proc/PID/ns/net; "" for the caller's
// own), read with one RTM_GETROUTE dump (libnl-route-3) and one RTM_GETLINK. Among several default
// routes of a family the one with the lowest metric wins (as the kernel picks); a multipath
// route gives its first next hop. IPv4 is looked at before IPv6.
// Blocks for two netlink round trips; the lookup in another namespace runs on a short-lived
// thread, so the caller's namespace never changes. Thread-safe.
// errors: ENETUNREACH no default route in either family; ENOENT no such namespace file; EINVAL
// not a network namespace; EPERM without CAP_SYS_ADMIN (another namespace).
[[nodiscard]] tl::expected<std::string, std::error_code> defaultRouteInterface(const std::string& netnsPath);

// The MTU of ifname in the namespace at netnsPath ("" for the caller's own), from one RTM_GETLINK
// (libnl-route-3), on a short-lived thread for another namespace as above. Thread-safe.
// errors: ENODEV no such interface; ENOENT, EINVAL, EPERM as above.
[[nodiscard]] tl::expected<uint32_t, std::error_code> interfaceMtu(const std::string& netnsPath,
                                                                   const std::string& ifname);

}  // namespace faultline::kernel
