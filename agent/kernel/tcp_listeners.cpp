#include "agent/kernel/tcp_listeners.h"

#include <arpa/inet.h>

#include <array>
#include <charconv>
#include <cstring>
#include <functional>
#include <sstream>

#include "agent/kernel/whole_file.h"

namespace faultline::kernel {
namespace {

struct TcpEnd {
  std::array<uint8_t, 16> address{};  // network byte order; IPv4 in the first 4 bytes
  size_t length = 0;                  // 4 or 16
  unsigned port = 0;
};

// "0100007F:1F90" (IPv4) or 32 hex digits ":PORT" (IPv6): each 8-digit word is a 32-bit value in
// host byte order, whose bytes in memory are the address's.
std::optional<TcpEnd> parseEnd(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos || (colon != 8 && colon != 32)) {
    return std::nullopt;
  }
  TcpEnd end;
  end.length = colon / 2;
  for (size_t word = 0; word < colon / 8; ++word) {
    uint32_t value = 0;
    if (std::from_chars(text.data() + word * 8, text.data() + word * 8 + 8, value, 16).ec != std::errc{}) {
      return std::nullopt;
    }
    std::memcpy(end.address.data() + word * 4, &value, 4);
  }
  if (std::from_chars(text.data() + colon + 1, text.data() + text.size(), end.port, 16).ec != std::errc{}) {
    return std::nullopt;
  }
  return end;
}

// Calls row(local, remote, state, uid) for each parsable row of both tables.
void forEachTcpSocket(const std::function<void(const TcpEnd&, const TcpEnd&, const std::string&, uid_t)>& row) {
  constexpr size_t kMaxTableBytes = 4 * 1024 * 1024;
  for (const char* table : {"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"}) {
    auto text = readWholeFile(table, kMaxTableBytes);
    if (!text) {
      continue;
    }
    std::istringstream lines(*text);
    std::string line;
    std::getline(lines, line);  // the header
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retransmits, uid;
      if (!(fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid)) {
        continue;
      }
      auto localEnd = parseEnd(local);
      auto remoteEnd = parseEnd(remote);
      unsigned long owner = 0;
      if (!localEnd || !remoteEnd || std::from_chars(uid.data(), uid.data() + uid.size(), owner).ec != std::errc{}) {
        continue;
      }
      row(*localEnd, *remoteEnd, state, static_cast<uid_t>(owner));
    }
  }
}

}  // namespace

std::vector<uid_t> tcpListenerOwners(uint16_t port) {
  std::vector<uid_t> owners;
  forEachTcpSocket([&](const TcpEnd& local, const TcpEnd&, const std::string& state, uid_t uid) {
    if (state == "0A" && local.port == port) {
      owners.push_back(uid);
    }
  });
  return owners;
}

std::optional<uid_t> tcpConnectionOwner(const std::string& address, uint16_t port, uint16_t remotePort) {
  TcpEnd wanted;
  if (::inet_pton(AF_INET, address.c_str(), wanted.address.data()) == 1) {
    wanted.length = 4;
  } else if (::inet_pton(AF_INET6, address.c_str(), wanted.address.data()) == 1) {
    wanted.length = 16;
  } else {
    return std::nullopt;
  }
  // An IPv4 peer may sit in the tcp6 table under its IPv4-mapped address (::ffff:a.b.c.d): gRPC
  // opens dual-stack IPv6 sockets and names their peers in IPv4.
  TcpEnd mapped;
  if (wanted.length == 4) {
    mapped.length = 16;
    mapped.address[10] = 0xff;
    mapped.address[11] = 0xff;
    std::memcpy(mapped.address.data() + 12, wanted.address.data(), 4);
  }
  const auto same = [](const TcpEnd& a, const TcpEnd& b) {
    return a.length == b.length && std::memcmp(a.address.data(), b.address.data(), a.length) == 0;
  };
  std::optional<uid_t> owner;
  forEachTcpSocket([&](const TcpEnd& local, const TcpEnd& remote, const std::string& state, uid_t uid) {
    if (state == "01" && local.port == port && remote.port == remotePort &&
        (same(local, wanted) || (mapped.length != 0 && same(local, mapped)))) {
      owner = uid;
    }
  });
  return owner;
}

}  // namespace faultline::kernel
