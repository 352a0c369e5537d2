// DNS probe and what the protocol probes share (protocol.h): name resolution with c-ares
// (ares_getaddrinfo) on a channel of the call's own, driven by poll() until the deadline, so a
// dead resolver cannot hold a sample; and connect, send and receive on non-blocking sockets
// against the same deadline.
#include <arpa/inet.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <ares.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "controller/probes/protocol.h"

namespace faultline::controller {
namespace {

struct Lookup {
  bool done = false;
  int status = ARES_SUCCESS;
  std::vector<std::string> addresses;
};

void onAddresses(void* arg, int status, int /*timeouts*/, struct ares_addrinfo* result) {
  auto* lookup = static_cast<Lookup*>(arg);
  lookup->done = true;
  lookup->status = status;
  if (status == ARES_SUCCESS && result != nullptr) {
    for (auto* node = result->nodes; node != nullptr && lookup->addresses.size() < 64; node = node->ai_next) {
      char text[INET6_ADDRSTRLEN] = {};
      if (node->ai_family == AF_INET) {
        ::inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(node->ai_addr)->sin_addr, text, sizeof text);
      } else if (node->ai_family == AF_INET6) {
        ::inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(node->ai_addr)->sin6_addr, text, sizeof text);
      } else {
        continue;
      }
      if (std::find(lookup->addresses.begin(), lookup->addresses.end(), text) == lookup->addresses.end()) {
        lookup->addresses.emplace_back(text);
      }
    }
  }
  if (result != nullptr) {
    ares_freeaddrinfo(result);
  }
}

std::string literal(const std::string& text) {
  unsigned char buf[16];
  char out[INET6_ADDRSTRLEN];
  if (::inet_pton(AF_INET, text.c_str(), buf) == 1) {
    return ::inet_ntop(AF_INET, buf, out, sizeof out);
  }
  if (::inet_pton(AF_INET6, text.c_str(), buf) == 1) {
    return ::inet_ntop(AF_INET6, buf, out, sizeof out);
  }
  return "";
}

}  // namespace

tl::expected<std::vector<std::string>, std::string> resolveName(const std::string& name, int family,
                                                                const std::string& server, uint16_t serverPort,
                                                                ProbeClock::time_point deadline) {
  if (auto ip = literal(name); !ip.empty()) {
    return std::vector<std::string>{ip};
  }
  static std::once_flag once;
  static int initStatus = ARES_SUCCESS;
  std::call_once(once, [] { initStatus = ares_library_init(ARES_LIB_INIT_ALL); });
  if (initStatus != ARES_SUCCESS) {
    return tl::unexpected(fmt::format("cannot resolve {}: c-ares: {}", name, ares_strerror(initStatus)));
  }
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - ProbeClock::now());
  if (left.count() <= 0) {
    return tl::unexpected(std::string("timeout before the name was resolved"));
  }
  ares_options options{};
  int mask = ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES;
  options.timeout = static_cast<int>(std::max<long long>(1, left.count() / 2));
  options.tries = 2;
  std::string lookups = "b";  // a given server only: not /etc/hosts
  if (!server.empty()) {
    mask |= ARES_OPT_LOOKUPS;
    options.lookups = lookups.data();
  }
  ares_channel channel = nullptr;
  if (const int st = ares_init_options(&channel, &options, mask); st != ARES_SUCCESS) {
    return tl::unexpected(fmt::format("cannot resolve {}: c-ares: {}", name, ares_strerror(st)));
  }
  struct Destroy {
    ares_channel c;
    ~Destroy() { ares_destroy(c); }  // runs pending callbacks with ARES_EDESTRUCTION
  };
  Lookup lookup;
  {
    Destroy destroy{channel};
    if (!server.empty()) {
      const std::string csv = server.find(':') != std::string::npos ? fmt::format("[{}]:{}", server, serverPort)
                                                                    : fmt::format("{}:{}", server, serverPort);
      if (const int st = ares_set_servers_ports_csv(channel, csv.c_str()); st != ARES_SUCCESS) {
        return tl::unexpected(fmt::format("cannot use DNS server {}: {}", csv, ares_strerror(st)));
      }
    }
    ares_addrinfo_hints hints{};
    hints.ai_family = family;
    hints.ai_socktype = SOCK_STREAM;
    ares_getaddrinfo(channel, name.c_str(), nullptr, &hints, onAddresses, &lookup);
    while (!lookup.done) {
      const auto now = ProbeClock::now();
      if (now >= deadline) {
        break;
      }
      ares_socket_t socks[ARES_GETSOCK_MAXNUM];
      const int bits = ares_getsock(channel, socks, ARES_GETSOCK_MAXNUM);
      pollfd fds[ARES_GETSOCK_MAXNUM];
      nfds_t n = 0;
      for (int i = 0; i < ARES_GETSOCK_MAXNUM; ++i) {
        short events = 0;
        if (ARES_GETSOCK_READABLE(bits, i)) {
          events |= POLLIN;
        }
        if (ARES_GETSOCK_WRITABLE(bits, i)) {
          events |= POLLOUT;
        }
        if (events != 0) {
          fds[n++] = pollfd{socks[i], events, 0};
        }
      }
      timeval maxWait{};
      const auto leftUs = std::chrono::duration_cast<std::chrono::microseconds>(deadline - now).count();
      maxWait.tv_sec = leftUs / 1'000'000;
      maxWait.tv_usec = leftUs % 1'000'000;
      timeval tv{};
      const timeval* wait = ares_timeout(channel, &maxWait, &tv);
      const int waitMs = static_cast<int>(wait->tv_sec * 1000 + (wait->tv_usec + 999) / 1000);
      const int ready = ::poll(fds, n, std::max(1, waitMs));
      if (ready < 0 && errno != EINTR) {
        break;
      }
      if (ready <= 0) {
        ares_process_fd(channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts and retries
        continue;
      }
      for (nfds_t i = 0; i < n; ++i) {
        const bool readable = (fds[i].revents & (POLLIN | POLLERR | POLLHUP)) != 0;
        const bool writable = (fds[i].revents & POLLOUT) != 0;
        ares_process_fd(channel, readable ? fds[i].fd : ARES_SOCKET_BAD, writable ? fds[i].fd : ARES_SOCKET_BAD);
      }
    }
    if (!lookup.done) {
      ares_cancel(channel);  // the callback runs now, with ARES_ECANCELLED
      return tl::unexpected(std::string("timeout while resolving ") + name);
    }
  }
  if (lookup.status != ARES_SUCCESS) {
    return tl::unexpected(fmt::format("cannot resolve {}: {}", name, ares_strerror(lookup.status)));
  }
  if (lookup.addresses.empty()) {
    return tl::unexpected(fmt::format("cannot resolve {}: no address", name));
  }
  return lookup.addresses;
}

tl::expected<UniqueFd, std::string> connectByDeadline(const ProbeAddress& address, ProbeClock::time_point deadline) {
  const auto waitConnected = [&](int fd) -> tl::expected<void, std::string> {
    while (true) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - ProbeClock::now()).count();
      if (left <= 0) {
        return tl::unexpected(std::string("timeout"));
      }
      pollfd p{fd, POLLOUT, 0};
      const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
      if (r < 0 && errno != EINTR) {
        return tl::unexpected(std::string(std::strerror(errno)));
      }
      if (r > 0) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          return tl::unexpected(err == ECONNREFUSED ? std::string("connection refused") : std::strerror(err));
        }
        return {};
      }
    }
  };
  if (!address.unixSocket.empty()) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) {
      return tl::unexpected(fmt::format("cannot create a socket: {}", std::strerror(errno)));
    }
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    if (address.unixSocket.size() >= sizeof sa.sun_path) {
      return tl::unexpected(std::string("the socket path is too long"));
    }
    std::memcpy(sa.sun_path, address.unixSocket.data(), address.unixSocket.size());
    // connect() on a Unix socket never waits on what the path names (a FIFO or a file is refused).
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
      if (errno == EAGAIN) {  // a Unix socket does not finish such a connect later
        return tl::unexpected(
            fmt::format("cannot connect to unix:{}: the server's listen backlog is full", address.unixSocket));
      }
      if (errno != EINPROGRESS) {
        return tl::unexpected(fmt::format("cannot connect to unix:{}: {}", address.unixSocket,
                                          errno == ECONNREFUSED ? "connection refused" : std::strerror(errno)));
      }
      if (auto ok = waitConnected(fd.get()); !ok) {
        return tl::unexpected(fmt::format("cannot connect to unix:{}: {}", address.unixSocket, ok.error()));
      }
    }
    return fd;
  }
  auto addresses = resolveName(address.host, AF_UNSPEC, "", 0, deadline);
  if (!addresses) {
    return tl::unexpected(addresses.error());
  }
  std::string lastError = "no address";
  for (const auto& ip : *addresses) {
    sockaddr_storage ss{};
    socklen_t len = 0;
    if (ip.find(':') != std::string::npos) {
      auto* sa = reinterpret_cast<sockaddr_in6*>(&ss);
      sa->sin6_family = AF_INET6;
      sa->sin6_port = htons(address.port);
      ::inet_pton(AF_INET6, ip.c_str(), &sa->sin6_addr);
      len = sizeof *sa;
    } else {
      auto* sa = reinterpret_cast<sockaddr_in*>(&ss);
      sa->sin_family = AF_INET;
      sa->sin_port = htons(address.port);
      ::inet_pton(AF_INET, ip.c_str(), &sa->sin_addr);
      len = sizeof *sa;
    }
    UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (fd.get() < 0) {
      return tl::unexpected(fmt::format("cannot create a socket: {}", std::strerror(errno)));
    }
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) != 0) {
      if (errno != EINPROGRESS) {
        lastError = errno == ECONNREFUSED ? "connection refused" : std::strerror(errno);
        continue;
      }
      if (auto ok = waitConnected(fd.get()); !ok) {
        if (ok.error() == "timeout") {
          return tl::unexpected(std::string("timeout"));
        }
        lastError = ok.error();
        continue;
      }
    }
    return fd;
  }
  return tl::unexpected(lastError == "connection refused"
                            ? lastError
                            : fmt::format("cannot connect to {}: {}", addressText(address), lastError));
}

tl::expected<void, std::string> sendAll(int fd, std::string_view data, ProbeClock::time_point deadline) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) {
      return tl::unexpected(fmt::format("cannot send: {}", std::strerror(errno)));
    }
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - ProbeClock::now()).count();
    if (left <= 0) {
      return tl::unexpected(std::string("timeout"));
    }
    pollfd p{fd, POLLOUT, 0};
    ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
  }
  return {};
}

tl::expected<std::string, std::string> receiveSome(int fd, size_t max, ProbeClock::time_point deadline) {
  while (true) {
    std::string buffer(std::min<size_t>(max, 16 * 1024), '\0');
    const ssize_t n = ::recv(fd, buffer.data(), buffer.size(), 0);
    if (n >= 0) {
      buffer.resize(static_cast<size_t>(n));
      return buffer;
    }
    if (errno != EAGAIN && errno != EINTR) {
      return tl::unexpected(errno == ECONNRESET ? std::string("connection reset")
                                                : fmt::format("cannot read: {}", std::strerror(errno)));
    }
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - ProbeClock::now()).count();
    if (left <= 0) {
      return tl::unexpected(std::string("timeout"));
    }
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
  }
}

Sample runDnsProbe(const DnsProbe& spec) {
  Sample sample;
  const auto start = ProbeClock::now();
  const int family = spec.family == DnsProbe::Family::kIpv4   ? AF_INET
                     : spec.family == DnsProbe::Family::kIpv6 ? AF_INET6
                                                              : AF_UNSPEC;
  auto addresses = resolveName(spec.name, family, spec.server, spec.serverPort, start + spec.timeout);
  sample.latency = since(start);
  if (!addresses) {
    sample.detail =
        addresses.error().rfind("timeout", 0) == 0 ? "timeout after " + formatLimit(spec.timeout) : addresses.error();
    return sample;
  }
  std::string shown;
  for (size_t i = 0; i < addresses->size() && i < 4; ++i) {
    shown += (i == 0 ? "" : ", ") + (*addresses)[i];
  }
  if (addresses->size() > 4) {
    shown += fmt::format(" (+{})", addresses->size() - 4);
  }
  if (!spec.expect.empty()) {
    const bool found = std::any_of(addresses->begin(), addresses->end(), [&](const std::string& a) {
      return std::find(spec.expect.begin(), spec.expect.end(), a) != spec.expect.end();
    });
    if (!found) {
      std::string expected;
      for (const auto& e : spec.expect) {
        expected += (expected.empty() ? "" : ", ") + e;
      }
      sample.detail = fmt::format("{} is {}, expected one of {}", spec.name, shown, expected);
      return sample;
    }
  }
  sample.detail = fmt::format("{} is {} in {}", spec.name, shown, formatLatency(sample.latency));
  if (sample.latency > spec.maxLatency) {
    sample.detail += ", above maxLatency " + formatLimit(spec.maxLatency);
    return sample;
  }
  sample.ok = true;
  return sample;
}

}  // namespace faultline::controller
