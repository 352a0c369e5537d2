#include "agent/kernel/route.h"
#include "agent/kernel/spec_files.h"

#include <fcntl.h>
#include <linux/rtnetlink.h>
#include <netlink/route/link.h>
#include <netlink/route/route.h>
#include <netlink/socket.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <thread>

namespace faultline::kernel {
namespace {

std::error_code errnoCode(int e) {
  return {e, std::generic_category()};
}

struct SocketDeleter {
  void operator()(nl_sock* s) const { nl_socket_free(s); }
};
using SocketPtr = std::unique_ptr<nl_sock, SocketDeleter>;

// A libnl socket connected to NETLINK_ROUTE in the calling thread's current namespace.
// errors: ENOMEM; nl_connect()'s errno (EPROTO when it left none).
tl::expected<SocketPtr, std::error_code> connectRoute() {
  SocketPtr sock(nl_socket_alloc());
  if (!sock) {
    return tl::unexpected(errnoCode(ENOMEM));
  }
  errno = 0;
  if (nl_connect(sock.get(), NETLINK_ROUTE) < 0) {
    return tl::unexpected(errnoCode(errno != 0 ? errno : EPROTO));
  }
  return sock;
}

struct CacheDeleter {
  void operator()(nl_cache* c) const { nl_cache_free(c); }
};
struct LinkDeleter {
  void operator()(rtnl_link* l) const { rtnl_link_put(l); }
};

// The lookup itself, in the calling thread's current namespace.
tl::expected<std::string, std::error_code> lookupHere() {
  auto sock = connectRoute();
  if (!sock) {
    return tl::unexpected(sock.error());
  }
  for (int family : {AF_INET, AF_INET6}) {
    nl_cache* raw = nullptr;
    if (rtnl_route_alloc_cache(sock->get(), family, 0, &raw) < 0) {
      return tl::unexpected(errnoCode(errno != 0 ? errno : EPROTO));
    }
    std::unique_ptr<nl_cache, CacheDeleter> cache(raw);
    int best = 0;
    uint32_t bestMetric = std::numeric_limits<uint32_t>::max();
    bool found = false;
    for (nl_object* o = nl_cache_get_first(cache.get()); o != nullptr; o = nl_cache_get_next(o)) {
      auto* route = reinterpret_cast<rtnl_route*>(o);
      nl_addr* dst = rtnl_route_get_dst(route);
      if (rtnl_route_get_table(route) != RT_TABLE_MAIN || rtnl_route_get_type(route) != RTN_UNICAST ||
          (dst != nullptr && nl_addr_get_prefixlen(dst) != 0) || rtnl_route_get_nnexthops(route) < 1) {
        continue;
      }
      const int ifindex = rtnl_route_nh_get_ifindex(rtnl_route_nexthop_n(route, 0));
      const uint32_t metric = rtnl_route_get_priority(route);
      if (ifindex > 0 && (!found || metric < bestMetric)) {
        best = ifindex;
        bestMetric = metric;
        found = true;
      }
    }
    if (!found) {
      continue;
    }
    rtnl_link* link = nullptr;
    if (int rc = rtnl_link_get_kernel(sock->get(), best, nullptr, &link); rc < 0 || link == nullptr) {
      return tl::unexpected(errnoCode(ENODEV));
    }
    std::unique_ptr<rtnl_link, LinkDeleter> owned(link);
    const char* name = rtnl_link_get_name(link);
    if (name == nullptr) {
      return tl::unexpected(errnoCode(ENODEV));
    }
    return std::string(name);
  }
  return tl::unexpected(errnoCode(ENETUNREACH));
}

tl::expected<uint32_t, std::error_code> mtuHere(const std::string& ifname) {
  auto sock = connectRoute();
  if (!sock) {
    return tl::unexpected(sock.error());
  }
  rtnl_link* link = nullptr;
  if (rtnl_link_get_kernel(sock->get(), 0, ifname.c_str(), &link) < 0 || link == nullptr) {
    return tl::unexpected(errnoCode(ENODEV));
  }
  std::unique_ptr<rtnl_link, LinkDeleter> owned(link);
  return rtnl_link_get_mtu(link);
}

// Runs lookup in the namespace at netnsPath ("" = here) and returns its result.
template <typename T>
tl::expected<T, std::error_code> inNamespace(const std::string& netnsPath,
                                             const std::function<tl::expected<T, std::error_code>()>& lookup) {
  if (netnsPath.empty()) {
    return lookup();
  }
  auto opened = openNetnsFile(netnsPath);  // typed and non-blocking: a FIFO is refused at once
  if (!opened) {
    return tl::unexpected(opened.error().code);
  }
  const int fd = opened->release();
  tl::expected<T, std::error_code> result = tl::unexpected(errnoCode(EINTR));
  // Only this thread enters the namespace; it ends there, and the caller's thread never moves.
  std::thread worker([&] {
    if (::setns(fd, CLONE_NEWNET) != 0) {
      result = tl::unexpected(errnoCode(errno));  // EINVAL: not a network namespace
      return;
    }
    result = lookup();
  });
  worker.join();
  ::close(fd);
  return result;
}

}  // namespace

tl::expected<uint32_t, std::error_code> interfaceMtu(const std::string& netnsPath, const std::string& ifname) {
  return inNamespace<uint32_t>(netnsPath, [&ifname] { return mtuHere(ifname); });
}

tl::expected<std::string, std::error_code> defaultRouteInterface(const std::string& netnsPath) {
  return inNamespace<std::string>(netnsPath, [] { return lookupHere(); });
}

}  // namespace faultline::kernel
