// Who owns TCP sockets of this network namespace: the agent asks before it dials a controller in
// plaintext on loopback (so that a local user who took the controller's port while it was down is
// not obeyed), and a controller without TLS asks who is at the other end of an agent's loopback
// connection (so that a local user cannot register as an agent). Source: /proc/net/tcp and
// /proc/net/tcp6 (the kernel's socket tables: addresses as hex words in host byte order, state 01
// ESTABLISHED and 0A LISTEN, the eighth column the owner's uid); no Debian library reads these, so
// the few lines of parsing are our own.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace faultline::kernel {

// The uids owning a socket in LISTEN state on port (any local address, IPv4 and IPv6), in the
// calling thread's network namespace; empty when none listens or the tables cannot be read.
// Each table is read with a bound (4 MiB). Thread-safe; does not block on input.
[[nodiscard]] std::vector<uid_t> tcpListenerOwners(uint16_t port);

// The uid owning the ESTABLISHED socket whose local end is address:port (an IPv4 or IPv6 address
// in text, e.g. "127.0.0.1" or "::1") and whose remote port is remotePort, in the calling
// thread's network namespace: the process at the far end of a loopback connection this process
// accepted. nullopt when there is no such socket (closed meanwhile), the address is not one, or
// the tables cannot be read. Same bounds and thread-safety as above.
[[nodiscard]] std::optional<uid_t> tcpConnectionOwner(const std::string& address, uint16_t port, uint16_t remotePort);

}  // namespace faultline::kernel
