// Test and benchmark support without doctest: two network namespaces joined by a veth pair, and
// UDP between them with the kernel's receive time, as the userspace queue's kernel test and
// bench/nfqueue use them. Needs root.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "tests/support/netns_holder.h"

namespace faultline::testing {

// Moves a's veth1 into b, renamed peer0 and up, and adds the addresses ("10.78.1.1/24",
// "fd78:1::1/64": IPv6 without duplicate address detection, so they work at once) to a's veth0
// and b's peer0; b's lo is brought up too. Returns "" or the command that failed, with its output.
inline std::string joinPeers(NetnsHolder& a, NetnsHolder& b, const std::vector<std::string>& aAddresses,
                             const std::vector<std::string>& bAddresses) {
  const std::string& path = b.path();
  const auto start = std::string("/proc/").size();
  const std::string pid = path.substr(start, path.find('/', start) - start);
  const auto addressCommand = [](const std::string& address, const char* device) {
    return address.find(':') != std::string::npos ? fmt::format("ip -6 addr add {} dev {} nodad", address, device)
                                                  : fmt::format("ip addr add {} dev {}", address, device);
  };
  // Down first: older kernels (Debian 12's, in the scripts/vm-run guest) refuse to rename an
  // interface that is up.
  std::vector<std::string> inA{"ip link set veth1 down", "ip link set veth1 name peer0",
                               fmt::format("ip link set peer0 netns {}", pid)};
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

// A socket created on a thread that joined netns (a namespace file), so it lives there; -1 when
// the namespace or the socket cannot be opened.
inline int socketIn(const std::string& netns, int family, int type) {
  int fd = -1;
  std::thread t([&] {
    const int ns = ::open(netns.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns >= 0 && ::setns(ns, CLONE_NEWNET) == 0) {
      fd = ::socket(family, type | SOCK_CLOEXEC, 0);
    }
    if (ns >= 0) {
      ::close(ns);
    }
  });
  t.join();
  return fd;
}

// CLOCK_REALTIME in nanoseconds: the clock of SO_TIMESTAMPNS, for a sender to stamp datagrams.
inline uint64_t realNs() {
  timespec t{};
  ::clock_gettime(CLOCK_REALTIME, &t);
  return static_cast<uint64_t>(t.tv_sec) * 1'000'000'000 + static_cast<uint64_t>(t.tv_nsec);
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
