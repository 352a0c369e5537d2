// Test and benchmark support without doctest: two network namespaces joined by a veth pair, sockets
// made in a namespace (UDP between two of them, a TCP listener), and UDP with the kernel's receive
// time, as the kernel tests and bench/nfqueue use them. Needs root.
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "common/unique_fd.h"
#include "tests/support/netns_holder.h"

namespace faultline::testing {

// Moves a's veth1 into b, renamed peer0 and up, and adds the addresses ("10.78.1.1/24",
// "fd78:1::1/64": IPv6 without duplicate address detection, so they work at once) to a's veth0
// and b's peer0; b's lo is brought up too. Returns "" or the command that failed, with its output.
inline std::string joinPeers(NetnsHolder& a, NetnsHolder& b, const std::vector<std::string>& aAddresses,
                             const std::vector<std::string>& bAddresses) {
  const auto addressCommand = [](const std::string& address, const char* device) {
    return address.find(':') != std::string::npos ? fmt::format("ip -6 addr add {} dev {} nodad", address, device)
                                                  : fmt::format("ip addr add {} dev {}", address, device);
  };
  // Down first: older kernels (Debian 12's, in the scripts/vm-run guest) refuse to rename an
  // interface that is up.
  std::vector<std::string> inA{"ip link set veth1 down", "ip link set veth1 name peer0",
                               fmt::format("ip link set peer0 netns {}", b.pid())};
  for (const auto& address : aAddresses) {
    inA.push_back(addressCommand(address, "veth0"));
  }
  std::vector<std::string> inB{"ip link set peer0 up", "ip link set lo up"};
  for (const auto& address : bAddresses) {
    inB.push_back(addressCommand(address, "peer0"));
  }
  for (const auto& c : inA) {
    if (!a.inNetns(c)) {
      return a.error();
    }
  }
  for (const auto& c : inB) {
    if (!b.inNetns(c)) {
      return b.error();
    }
  }
  return "";
}

// A socket created on a thread that joined netns (a namespace file), so it lives there; holds -1
// when the namespace or the socket cannot be opened.
inline UniqueFd socketIn(const std::string& netns, int family, int type, int protocol = 0) {
  int fd = -1;
  std::thread t([&] {
    const UniqueFd ns(::open(netns.c_str(), O_RDONLY | O_CLOEXEC));
    if (ns.get() >= 0 && ::setns(ns.get(), CLONE_NEWNET) == 0) {
      fd = ::socket(family, type | SOCK_CLOEXEC, protocol);
    }
  });
  t.join();
  return UniqueFd(fd);
}

// An IPv4 or IPv6 address and port, as bind(), connect() and sendto() take it.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;  // 0: ip did not parse
  int family = AF_UNSPEC;

  [[nodiscard]] const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  [[nodiscard]] uint16_t port() const {
    return ntohs(family == AF_INET6 ? reinterpret_cast<const sockaddr_in6*>(&storage)->sin6_port
                                    : reinterpret_cast<const sockaddr_in*>(&storage)->sin_port);
  }
};

// ip ("10.78.1.2", "fd78:1::2"; "0.0.0.0" or "::" for any) and port; length 0 when ip does not
// parse.
inline SocketAddress socketAddress(const std::string& ip, uint16_t port) {
  SocketAddress a;
  const bool v6 = ip.find(':') != std::string::npos;
  auto* six = reinterpret_cast<sockaddr_in6*>(&a.storage);
  auto* four = reinterpret_cast<sockaddr_in*>(&a.storage);
  const int family = v6 ? AF_INET6 : AF_INET;
  void* bytes = v6 ? static_cast<void*>(&six->sin6_addr) : static_cast<void*>(&four->sin_addr);
  if (::inet_pton(family, ip.c_str(), bytes) != 1) {
    return {};
  }
  a.family = family;
  a.storage.ss_family = static_cast<sa_family_t>(family);
  if (v6) {
    six->sin6_port = htons(port);
    a.length = sizeof(sockaddr_in6);
  } else {
    four->sin_port = htons(port);
    a.length = sizeof(sockaddr_in);
  }
  return a;
}

// UDP from one namespace to another: a receiver in toNetns bound to port on every address, a
// sender in fromNetns, and the receiver's address ip:port to send to. error is empty when all
// three are ready, else says what failed.
struct UdpPair {
  UniqueFd receiver;
  UniqueFd sender;
  SocketAddress to;
  std::string error;
};

inline UdpPair udpPair(const std::string& fromNetns, const std::string& toNetns, const std::string& ip, uint16_t port) {
  UdpPair p;
  p.to = socketAddress(ip, port);
  const SocketAddress any = socketAddress(p.to.family == AF_INET6 ? "::" : "0.0.0.0", port);
  p.receiver = socketIn(toNetns, p.to.family, SOCK_DGRAM);
  p.sender = socketIn(fromNetns, p.to.family, SOCK_DGRAM);
  if (p.to.length == 0) {
    p.error = "not an IP address: " + ip;
  } else if (p.receiver.get() < 0 || p.sender.get() < 0) {
    p.error = fmt::format("no UDP socket in {} or {}", toNetns, fromNetns);
  } else if (::bind(p.receiver.get(), any.get(), any.length) != 0) {
    p.error = fmt::format("bind to port {} in {}: {}", port, toNetns, std::strerror(errno));
  }
  return p;
}

// A TCP listener in netns at ip:port (port 0: any free one), with SO_REUSEADDR, listening with
// backlog; at is where it listens, with the port the kernel chose. error is empty when it listens.
struct TcpListener {
  UniqueFd fd;
  SocketAddress at;
  std::string error;
};

inline TcpListener tcpListener(const std::string& netns, const std::string& ip, uint16_t port, int backlog = 1) {
  TcpListener l;
  l.at = socketAddress(ip, port);
  l.fd = socketIn(netns, l.at.family, SOCK_STREAM);
  const int one = 1;
  if (l.at.length == 0) {
    l.error = "not an IP address: " + ip;
  } else if (l.fd.get() < 0 || ::setsockopt(l.fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
             ::bind(l.fd.get(), l.at.get(), l.at.length) != 0 || ::listen(l.fd.get(), backlog) != 0 ||
             ::getsockname(l.fd.get(), reinterpret_cast<sockaddr*>(&l.at.storage), &l.at.length) != 0) {
    l.error = fmt::format("TCP listener at {} port {} in {}: {}", ip, port, netns, std::strerror(errno));
  }
  return l;
}

// CLOCK_REALTIME in nanoseconds: the clock of SO_TIMESTAMPNS, for a sender to stamp datagrams.
inline uint64_t realNs() {
  timespec t{};
  ::clock_gettime(CLOCK_REALTIME, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(t.tv_nsec);
}

// The first three fields of /proc/loadavg ("0.67 0.86 1.06"), to print next to a timing figure;
// "?" when it cannot be read.
inline std::string loadAverage() {
  std::string text(64, '\0');
  const int fd = ::open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  const ssize_t n = fd < 0 ? -1 : ::read(fd, text.data(), text.size());
  if (fd >= 0) {
    ::close(fd);
  }
  if (n <= 0) {
    return "?";
  }
  text.resize(static_cast<size_t>(n));
  size_t end = 0;
  for (int field = 0; field < 3 && end != std::string::npos; ++field) {
    end = text.find(' ', end == 0 ? 0 : end + 1);
  }
  return end == std::string::npos ? text : text.substr(0, end);
}

struct Received {
  ssize_t length = -1;     // recvmsg()'s result: -1 on error or timeout (SO_RCVTIMEO)
  uint64_t arrivedNs = 0;  // the kernel's receive time (SO_TIMESTAMPNS), else when recvmsg returned
};

// Receives one datagram into buffer on a socket with SO_TIMESTAMPNS set, so that the one-way delay
// does not include the receiving thread's wake-up. Blocks up to the socket's SO_RCVTIMEO.
inline Received receiveStamped(int fd, std::vector<uint8_t>& buffer) {
  iovec io{buffer.data(), buffer.size()};
  std::array<char, CMSG_SPACE(sizeof(timespec))> control{};
  msghdr m{};
  m.msg_iov = &io;
  m.msg_iovlen = 1;
  m.msg_control = control.data();
  m.msg_controllen = control.size();
  Received r;
  r.length = ::recvmsg(fd, &m, 0);
  r.arrivedNs = realNs();
  if (r.length < 0) {
    return r;
  }
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c != nullptr; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_TIMESTAMPNS) {
      timespec t{};
      std::memcpy(&t, CMSG_DATA(c), sizeof(t));
      r.arrivedNs = static_cast<uint64_t>(t.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(t.tv_nsec);
    }
  }
  return r;
}

}  // namespace faultline::testing
