// agent/kernel/tcp_listeners.h against this kernel's socket tables: the uid owning a listener and
// the uid at the far end of a loopback connection, the way the controller tells whether an agent's
// plaintext connection comes from root or from another local user. Forks a child that drops to
// uid 65534 (nobody), so it needs root; skipped otherwise.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include <doctest/doctest.h>

#include "agent/kernel/tcp_listeners.h"
#include "common/unique_fd.h"

using faultline::UniqueFd;

namespace {

struct Endpoint {
  UniqueFd fd;
  uint16_t port = 0;
};

// A listener on the loopback address of family (AF_INET or AF_INET6), on a port the kernel picks.
Endpoint listenOn(int family) {
  Endpoint e;
  e.fd = UniqueFd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_storage storage{};
  socklen_t length = 0;
  if (family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&storage);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    length = sizeof(sockaddr_in);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&storage);
    a->sin6_family = AF_INET6;
    a->sin6_addr = in6addr_loopback;
    length = sizeof(sockaddr_in6);
  }
  REQUIRE(e.fd.get() >= 0);
  REQUIRE(::bind(e.fd.get(), reinterpret_cast<sockaddr*>(&storage), length) == 0);
  REQUIRE(::listen(e.fd.get(), 4) == 0);
  REQUIRE(::getsockname(e.fd.get(), reinterpret_cast<sockaddr*>(&storage), &length) == 0);
  e.port = ntohs(family == AF_INET ? reinterpret_cast<sockaddr_in*>(&storage)->sin_port
                                   : reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port);
  return e;
}

// A child that becomes uid (and gid) `uid`, connects to the listener and waits to be killed; the
// accepted connection's peer address and port are returned through the listener.
struct Connector {
  pid_t pid = -1;
  std::string peerAddress;
  uint16_t peerPort = 0;
  ~Connector() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
};

void connectAs(Connector& c, const Endpoint& listener, int family, uid_t uid, UniqueFd& accepted) {
  c.pid = ::fork();
  REQUIRE(c.pid >= 0);
  if (c.pid == 0) {
    if (::setgid(uid) != 0 || ::setuid(uid) != 0) {
      ::_exit(1);
    }
    const int fd = ::socket(family, SOCK_STREAM, 0);
    sockaddr_storage to{};
    socklen_t length = 0;
    if (family == AF_INET) {
      auto* a = reinterpret_cast<sockaddr_in*>(&to);
      a->sin_family = AF_INET;
      a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a->sin_port = htons(listener.port);
      length = sizeof(sockaddr_in);
    } else {
      auto* a = reinterpret_cast<sockaddr_in6*>(&to);
      a->sin6_family = AF_INET6;
      a->sin6_addr = in6addr_loopback;
      a->sin6_port = htons(listener.port);
      length = sizeof(sockaddr_in6);
    }
    if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&to), length) != 0) {
      ::_exit(1);
    }
    ::pause();
    ::_exit(0);
  }
  sockaddr_storage from{};
  socklen_t length = sizeof from;
  accepted = UniqueFd(::accept4(listener.fd.get(), reinterpret_cast<sockaddr*>(&from), &length, SOCK_CLOEXEC));
  REQUIRE(accepted.get() >= 0);
  char text[INET6_ADDRSTRLEN] = {};
  if (from.ss_family == AF_INET) {
    auto* a = reinterpret_cast<sockaddr_in*>(&from);
    ::inet_ntop(AF_INET, &a->sin_addr, text, sizeof text);
    c.peerPort = ntohs(a->sin_port);
  } else {
    auto* a = reinterpret_cast<sockaddr_in6*>(&from);
    ::inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof text);
    c.peerPort = ntohs(a->sin6_port);
  }
  c.peerAddress = text;
}

}  // namespace

TEST_CASE("tcp sockets: the owner of a loopback connection's far end is the uid that connected, IPv4 and IPv6") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root to fork a child as uid 65534");
    return;
  }
  for (const int family : {AF_INET, AF_INET6}) {
    CAPTURE(family);
    const auto listener = listenOn(family);
    // The listener is this process's (root's).
    const auto owners = faultline::kernel::tcpListenerOwners(listener.port);
    REQUIRE(owners.size() == 1);
    CHECK(owners.front() == 0);

    Connector nobody;
    UniqueFd accepted;
    connectAs(nobody, listener, family, 65534, accepted);
    CHECK(nobody.peerAddress == (family == AF_INET ? "127.0.0.1" : "::1"));
    const auto owner = faultline::kernel::tcpConnectionOwner(nobody.peerAddress, nobody.peerPort, listener.port);
    REQUIRE(owner.has_value());
    CHECK(*owner == 65534);

    Connector root;
    UniqueFd acceptedRoot;
    connectAs(root, listener, family, 0, acceptedRoot);
    CHECK(faultline::kernel::tcpConnectionOwner(root.peerAddress, root.peerPort, listener.port) == 0u);

    // The wrong remote port, a closed connection, not an address: no owner.
    CHECK_FALSE(faultline::kernel::tcpConnectionOwner(nobody.peerAddress, nobody.peerPort,
                                                      static_cast<uint16_t>(listener.port + 1))
                    .has_value());
    CHECK_FALSE(faultline::kernel::tcpConnectionOwner("not an address", nobody.peerPort, listener.port).has_value());
  }
}
