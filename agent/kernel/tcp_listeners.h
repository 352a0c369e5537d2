// Who owns the TCP sockets listening on a port of this network namespace: the agent asks before
// it dials a controller in plaintext on loopback, so that a local user who took the controller's
// port while it was down is not obeyed. Source: /proc/net/tcp and /proc/net/tcp6 (the kernel's
// socket tables: state 0A is LISTEN, the eighth column the owner's uid); no Debian library reads
// these, so the few lines of parsing are our own.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace faultline::kernel {

// The uids owning a socket in LISTEN state on port (any local address, IPv4 and IPv6), in the
// calling thread's network namespace; empty when none listens or the tables cannot be read.
// Each table is read with a bound (4 MiB). Thread-safe; does not block on input.
[[nodiscard]] std::vector<uid_t> tcpListenerOwners(uint16_t port);

}  // namespace faultline::kernel
