// QdiscTable over rtnetlink: one libnl-3 socket per network namespace that sends the requests
// qdisc_table_requests.cpp builds and reads the replies qdisc_table_replies.cpp parses; the kernel
// probe of the qdisc kinds and the restorability of each kind.
#include "agent/kernel/qdisc_table.h"
#include "agent/kernel/qdisc_table_internal.h"
#include "common/unique_fd.h"

#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <unistd.h>

#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>

#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <netlink/socket.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <thread>

#include <spdlog/spdlog.h>

namespace faultline::kernel {
using namespace qdisc_internal;
namespace {

struct SockFree {
  void operator()(nl_sock* s) const { nl_socket_free(s); }
};
using SockPtr = std::unique_ptr<nl_sock, SockFree>;

// One table: an rtnetlink socket bound to one network namespace.
class NetlinkQdiscTable final : public QdiscTable {
 public:
  explicit NetlinkQdiscTable(SockPtr sock) : sock_(std::move(sock)) {}

  tl::expected<std::optional<QdiscInfo>, std::error_code> root(std::string_view ifname) override {
    auto all = dump(ifname);
    if (!all) {
      return tl::unexpected(all.error());
    }
    return rootOf(*all);
  }

  tl::expected<std::vector<QdiscInfo>, std::error_code> rootChildren(std::string_view ifname) override {
    auto all = dump(ifname);
    if (!all) {
      return tl::unexpected(all.error());
    }
    std::vector<QdiscInfo> children;
    const auto root = rootOf(*all);
    if (!root) {
      return children;
    }
    for (auto& q : *all) {
      if (q.parent != TC_H_ROOT && q.parent != TC_H_INGRESS && TC_H_MAJ(q.parent) == TC_H_MAJ(root->handle)) {
        children.push_back(std::move(q));
      }
    }
    return children;
  }

  tl::expected<std::vector<InterfaceRoot>, std::error_code> roots() override {
    auto linksRequest = buildDumpLinksRequest();
    if (!linksRequest) {
      return tl::unexpected(linksRequest.error());
    }
    auto qdiscsRequest = buildDumpQdiscsRequest(0);
    if (!qdiscsRequest) {
      return tl::unexpected(qdiscsRequest.error());
    }
    constexpr int kAttempts = 3;  // a dump interrupted by a concurrent change is repeated
    for (int attempt = 1;; ++attempt) {
      std::map<int, std::string> names;
      std::vector<std::pair<int, QdiscInfo>> found;
      std::error_code parseError;
      auto links = send(*linksRequest, [&](std::span<const uint8_t> message) {
        auto link = parseLinkMessage(message);
        if (!link) {
          parseError = link.error();
        } else {
          names[link->first] = std::move(link->second);
        }
      });
      auto qdiscs = links ? send(*qdiscsRequest,
                                 [&](std::span<const uint8_t> message) {
                                   auto dumped = parseQdiscMessage(message);
                                   if (!dumped) {
                                     parseError = dumped.error();
                                   } else if (dumped->info.parent == TC_H_ROOT) {
                                     found.emplace_back(dumped->ifindex, std::move(dumped->info));
                                   }
                                 })
                          : links;
      if (!qdiscs && qdiscs.error() == std::errc::resource_unavailable_try_again && attempt < kAttempts) {
        continue;
      }
      if (!qdiscs) {
        return tl::unexpected(qdiscs.error());
      }
      if (parseError) {
        return tl::unexpected(parseError);
      }
      std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      std::vector<InterfaceRoot> out;
      for (auto& [index, info] : found) {
        auto name = names.find(index);
        if (name == names.end()) {
          if (attempt < kAttempts) {
            break;  // an interface created between the two dumps: read both again
          }
          return fail(EAGAIN);
        }
        out.push_back(InterfaceRoot{name->second, std::move(info)});
      }
      if (out.size() == found.size()) {
        return out;
      }
    }
  }

  tl::expected<void, std::error_code> replaceRoot(std::string_view ifname, uint32_t handle,
                                                  const QdiscParams& params) override {
    return sendTo(ifname, [&](int index) { return buildReplaceRootRequest(index, handle, params); });
  }

  tl::expected<void, std::error_code> restoreRoot(std::string_view ifname, const QdiscInfo& saved) override {
    return sendTo(ifname, [&](int index) { return buildRestoreRootRequest(index, saved); });
  }

  tl::expected<void, std::error_code> deleteRoot(std::string_view ifname) override {
    return sendTo(ifname, [&](int index) { return buildDeleteRootRequest(index); });
  }

  tl::expected<void, std::error_code> addQdisc(std::string_view ifname, uint32_t parent, uint32_t handle,
                                               const QdiscParams& params) override {
    return sendTo(ifname, [&](int index) { return buildAddQdiscRequest(index, parent, handle, params); });
  }

  tl::expected<void, std::error_code> addHtbClass(std::string_view ifname, uint32_t classid,
                                                  const HtbClassParams& params) override {
    return sendTo(ifname, [&](int index) { return buildAddHtbClassRequest(index, classid, params); });
  }

  tl::expected<void, std::error_code> addU32Filter(std::string_view ifname, const U32Filter& filter) override {
    return sendTo(ifname, [&](int index) { return buildAddU32FilterRequest(index, filter); });
  }

  tl::expected<std::vector<TcObject>, std::error_code> dumpTree(std::string_view ifname) override {
    auto index = ifindex(ifname);
    if (!index) {
      return tl::unexpected(index.error());
    }
    auto classesRequest = buildDumpClassesRequest(*index);
    if (!classesRequest) {
      return tl::unexpected(classesRequest.error());
    }
    const auto isIngress = [](uint32_t id) { return TC_H_MAJ(id) == TC_H_MAJ(TC_H_INGRESS); };
    constexpr int kAttempts = 3;  // a dump interrupted by a concurrent change is repeated
    for (int attempt = 1;; ++attempt) {
      std::vector<TcObject> out;
      std::error_code parseError;
      const auto collect = [&](std::span<const uint8_t> message) {
        auto dumped = parseTcObjectMessage(message);
        if (!dumped) {
          parseError = dumped.error();
        } else if (dumped->ifindex == *index && !isIngress(dumped->object.handle)) {
          // (A top-level class's parent is TC_H_ROOT, ffff:ffff: only the handle tells ingress.)
          out.push_back(std::move(dumped->object));
        }
      };
      auto qdiscs = dump(ifname);
      if (!qdiscs) {
        return tl::unexpected(qdiscs.error());
      }
      std::vector<uint32_t> parents;
      for (const auto& q : *qdiscs) {
        if (q.parent == TC_H_INGRESS || isIngress(q.handle)) {
          continue;
        }
        if (q.handle != 0) {
          parents.push_back(q.handle);
        }
        if (q.parent != TC_H_ROOT) {
          out.push_back(TcObject{TcObjectType::kQdisc, q.kind, q.handle, q.parent, 0, 0, q.options});
        }
      }
      auto classes = send(*classesRequest, collect);
      std::error_code failed = classes ? std::error_code{} : classes.error();
      // Classes that are flows of a classless scheduler (fq_codel, sfq, cake, ...) come and go with
      // traffic and are no configuration: left out.
      std::map<uint32_t, std::string> kinds;
      for (const auto& q : *qdiscs) {
        kinds[TC_H_MAJ(q.handle)] = q.kind;
      }
      std::erase_if(out, [&](const TcObject& o) {
        auto kind = kinds.find(TC_H_MAJ(o.handle));
        return o.type == TcObjectType::kClass && kind != kinds.end() && hasFlowClasses(kind->second);
      });
      for (const auto& o : out) {
        if (o.type == TcObjectType::kClass) {
          parents.push_back(o.handle);
        }
      }
      for (size_t i = 0; !failed && i < parents.size(); ++i) {
        auto request = buildDumpFiltersRequest(*index, parents[i]);
        if (!request) {
          return tl::unexpected(request.error());
        }
        auto filters = send(*request, collect);
        // A qdisc that takes no filters (mq, a default child) answers EOPNOTSUPP or EINVAL: none.
        if (!filters && filters.error() != std::errc::operation_not_supported &&
            filters.error() != std::errc::invalid_argument) {
          failed = filters.error();
        }
      }
      if (failed == std::errc::resource_unavailable_try_again && attempt < kAttempts) {
        continue;
      }
      if (failed) {
        return tl::unexpected(failed);
      }
      if (parseError) {
        return tl::unexpected(parseError);
      }
      return out;
    }
  }

  tl::expected<void, std::error_code> restoreObject(std::string_view ifname, const TcObject& object) override {
    return sendTo(ifname, [&](int index) { return buildRestoreObjectRequest(index, object); });
  }

  tl::expected<std::vector<LinkInfo>, std::error_code> links() override {
    auto request = buildDumpLinksRequest();
    if (!request) {
      return tl::unexpected(request.error());
    }
    auto out = dumpAll(*request, parseLinkInfoMessage);
    if (!out) {
      return out;
    }
    std::sort(out->begin(), out->end(), [](const LinkInfo& a, const LinkInfo& b) { return a.index < b.index; });
    return out;
  }

  tl::expected<int, std::error_code> interfaceIndex(std::string_view ifname) override { return ifindex(ifname); }

  tl::expected<void, std::error_code> createIfb(std::string_view name) override {
    auto request = buildCreateIfbRequest(name);
    if (!request) {
      return tl::unexpected(request.error());
    }
    return send(*request);
  }

  tl::expected<void, std::error_code> deleteLink(std::string_view ifname) override {
    return sendTo(ifname, [&](int index) { return buildDeleteLinkRequest(index); });
  }

  tl::expected<std::optional<QdiscInfo>, std::error_code> ingressQdisc(std::string_view ifname) override {
    auto all = dump(ifname);
    if (!all) {
      return tl::unexpected(all.error());
    }
    auto it = std::find_if(all->begin(), all->end(), [](const QdiscInfo& q) { return q.parent == TC_H_INGRESS; });
    return it == all->end() ? std::nullopt : std::optional<QdiscInfo>(*it);
  }

  tl::expected<void, std::error_code> addIngressQdisc(std::string_view ifname) override {
    return sendTo(ifname, [&](int index) { return buildAddIngressRequest(index); });
  }

  tl::expected<void, std::error_code> deleteIngressQdisc(std::string_view ifname) override {
    return sendTo(ifname, [&](int index) { return buildDeleteIngressRequest(index); });
  }

  tl::expected<void, std::error_code> addRedirectFilter(std::string_view ifname,
                                                        const RedirectFilter& filter) override {
    auto index = ifindex(ifname);
    if (!index) {
      return tl::unexpected(index.error());
    }
    auto target = ifindex(filter.target);
    if (!target) {
      return tl::unexpected(target.error());
    }
    auto request = buildAddRedirectFilterRequest(*index, filter, *target);
    if (!request) {
      return tl::unexpected(request.error());
    }
    return send(*request);
  }

  tl::expected<std::vector<IngressFilter>, std::error_code> ingressFilters(std::string_view ifname) override {
    auto ingress = ingressQdisc(ifname);
    if (!ingress) {
      return tl::unexpected(ingress.error());
    }
    std::vector<IngressFilter> filters;
    if (!*ingress) {
      return filters;  // without an ingress qdisc the kernel answers the dump with EINVAL
    }
    auto index = ifindex(ifname);
    if (!index) {
      return tl::unexpected(index.error());
    }
    auto request = buildDumpIngressFiltersRequest(*index);
    if (!request) {
      return tl::unexpected(request.error());
    }
    return dumpAll(*request, parseIngressFilter, 1);  // read once: a dump interrupted is EAGAIN
  }

  tl::expected<void, std::error_code> deleteIngressFilter(std::string_view ifname,
                                                          const IngressFilter& filter) override {
    return sendTo(ifname, [&](int index) { return buildDeleteIngressFilterRequest(index, filter); });
  }

  // errors: ENODEV no such interface.
  tl::expected<int, std::error_code> ifindex(std::string_view ifname) {
    if (ifname.empty() || ifname.size() >= IFNAMSIZ) {
      return fail(ENODEV);  // no interface can have this name
    }
    auto request = buildGetLinkRequest(ifname);
    if (!request) {
      return tl::unexpected(request.error());
    }
    int index = 0;
    auto done = send(*request, [&](std::span<const uint8_t> message) {
      if (message.size() >= NLMSG_LENGTH(sizeof(ifinfomsg))) {
        ifinfomsg ifi{};
        std::memcpy(&ifi, message.data() + NLMSG_HDRLEN, sizeof(ifi));
        index = ifi.ifi_index;
      }
    });
    if (!done) {
      return tl::unexpected(done.error());
    }
    if (index <= 0) {
      return fail(EPROTO);
    }
    return index;
  }

  tl::expected<void, std::error_code> setLinkUp(int ifindex) {
    auto request = buildLinkUpRequest(ifindex);
    if (!request) {
      return tl::unexpected(request.error());
    }
    return send(*request);
  }

 private:
  using OnMessage = std::function<void(std::span<const uint8_t>)>;

  // Sends one request and reads until its ack, error or end of dump. onMessage sees every data
  // message answering it. The error is the kernel's errno from NLMSG_ERROR (or a dump's
  // NLMSG_DONE), else the errno of the failed send/recv.
  tl::expected<void, std::error_code> send(const Bytes& request, const OnMessage& onMessage = {}) {
    auto storage = aligned(request);
    MsgPtr msg(nlmsg_convert(reinterpret_cast<nlmsghdr*>(storage.data())));
    if (!msg) {
      return fail(ENOMEM);
    }
    errno = 0;
    if (int rc = nl_send_auto(sock_.get(), msg.get()); rc < 0) {
      return tl::unexpected(libnlError(rc, errno));
    }
    const uint32_t seq = nlmsg_hdr(msg.get())->nlmsg_seq;
    bool interrupted = false;
    for (;;) {
      sockaddr_nl peer{};
      unsigned char* raw = nullptr;
      errno = 0;
      const int n = nl_recv(sock_.get(), &peer, &raw, nullptr);
      const int recvErrno = errno;
      std::unique_ptr<unsigned char, decltype(&std::free)> buffer(raw, &std::free);
      if (n < 0) {
        return tl::unexpected(libnlError(n, recvErrno));
      }
      if (n == 0) {
        return fail(EPROTO);
      }
      int remaining = n;
      for (auto* hdr = reinterpret_cast<nlmsghdr*>(buffer.get()); nlmsg_ok(hdr, remaining);
           hdr = nlmsg_next(hdr, &remaining)) {
        if (hdr->nlmsg_seq != seq) {
          continue;  // a late answer to an earlier request
        }
        if ((hdr->nlmsg_flags & NLM_F_DUMP_INTR) != 0) {
          interrupted = true;
        }
        if (hdr->nlmsg_type == NLMSG_DONE) {
          int error = 0;
          if (hdr->nlmsg_len >= NLMSG_LENGTH(sizeof(int))) {
            std::memcpy(&error, nlmsg_data(hdr), sizeof(error));
          }
          if (error < 0) {
            return fail(-error);
          }
          if (interrupted) {
            return fail(EAGAIN);
          }
          return {};
        }
        if (hdr->nlmsg_type == NLMSG_ERROR) {
          if (hdr->nlmsg_len < NLMSG_LENGTH(sizeof(nlmsgerr))) {
            return fail(EPROTO);
          }
          nlmsgerr err{};
          std::memcpy(&err, nlmsg_data(hdr), sizeof(err));
          if (err.error == 0) {
            return {};  // the ack
          }
          return fail(-err.error);
        }
        if (hdr->nlmsg_type == NLMSG_NOOP || hdr->nlmsg_type == NLMSG_OVERRUN) {
          continue;
        }
        if (onMessage) {
          onMessage(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(hdr), hdr->nlmsg_len));
        }
      }
    }
  }

  static std::optional<QdiscInfo> rootOf(const std::vector<QdiscInfo>& qdiscs) {
    auto it = std::find_if(qdiscs.begin(), qdiscs.end(), [](const QdiscInfo& q) { return q.parent == TC_H_ROOT; });
    return it == qdiscs.end() ? std::nullopt : std::optional<QdiscInfo>(*it);
  }

  // Every qdisc of ifname that an RTM_GETQDISC dump shows. errors: ENODEV no such interface.
  tl::expected<std::vector<QdiscInfo>, std::error_code> dump(std::string_view ifname) {
    auto index = ifindex(ifname);
    if (!index) {
      return tl::unexpected(index.error());
    }
    auto request = buildDumpQdiscsRequest(*index);
    if (!request) {
      return tl::unexpected(request.error());
    }
    auto dumped = dumpAll(*request, parseQdiscMessage);
    if (!dumped) {
      return tl::unexpected(dumped.error());
    }
    std::vector<QdiscInfo> found;
    for (auto& q : *dumped) {
      if (q.ifindex == *index) {  // the kernel dumps every interface's qdiscs
        found.push_back(std::move(q.info));
      }
    }
    return found;
  }

  // Sends a dump request and returns every reply as parse(message) -> expected<T> reads it; a reply
  // that does not parse is the error, once the dump is read to its end. A dump the kernel marks
  // interrupted by a concurrent change (EAGAIN) is read again, attempts times in all.
  template <typename Parse>
  auto dumpAll(const Bytes& request, const Parse& parse, int attempts = 3)
      -> tl::expected<std::vector<typename std::invoke_result_t<Parse, std::span<const uint8_t>>::value_type>,
                      std::error_code> {
    for (int attempt = 1;; ++attempt) {
      std::vector<typename std::invoke_result_t<Parse, std::span<const uint8_t>>::value_type> out;
      std::error_code parseError;
      auto done = send(request, [&](std::span<const uint8_t> message) {
        auto parsed = parse(message);
        if (!parsed) {
          parseError = parsed.error();
        } else {
          out.push_back(std::move(*parsed));
        }
      });
      if (!done && done.error() == std::errc::resource_unavailable_try_again && attempt < attempts) {
        continue;
      }
      if (!done) {
        return tl::unexpected(done.error());
      }
      if (parseError) {
        return tl::unexpected(parseError);
      }
      return out;
    }
  }

  // Resolves ifname, builds one request for its index (build(int) -> expected<Bytes>), sends it and
  // waits for the ack.
  template <typename Build>
  tl::expected<void, std::error_code> sendTo(std::string_view ifname, const Build& build) {
    auto index = ifindex(ifname);
    if (!index) {
      return tl::unexpected(index.error());
    }
    auto request = build(*index);
    if (!request) {
      return tl::unexpected(request.error());
    }
    return send(*request);
  }

  SockPtr sock_;
};

// A connected rtnetlink socket in the calling thread's current network namespace.
tl::expected<SockPtr, std::error_code> connectRtnetlink() {
  SockPtr sock(nl_socket_alloc());
  if (!sock) {
    return fail(ENOMEM);
  }
  nl_socket_disable_auto_ack(sock.get());  // requests carry NLM_F_ACK themselves
  nl_socket_enable_msg_peek(sock.get());   // replies of any size
  errno = 0;
  if (int rc = nl_connect(sock.get(), NETLINK_ROUTE); rc < 0) {
    return tl::unexpected(libnlError(rc, errno));
  }
  return sock;
}

}  // namespace

Restorability restorability(std::string_view kind) {
  // Root qdiscs dumped, replaced by tbf, restored from the dump and dumped again, on Linux 6.1
  // (Debian, in the VM tier) and 6.18: these came back byte for byte.
  // codel and fq_codel: exact through restoreOptions() (qdisc_tree.h), which undoes the 1 µs
  // their dump loses (measured in the VM tier, Linux 6.1; this machine's kernel has neither).
  static constexpr std::array<std::string_view, 16> kExact = {
      "tbf",  "pfifo", "bfifo", "pfifo_head_drop", "pfifo_fast", "netem", "fq",    "pie",
      "cake", "hhf",   "sfb",   "skbprio",         "cbs",        "etf",   "codel", "fq_codel"};
  static constexpr std::array<std::string_view, 13> kClassful = {
      "htb", "hfsc", "prio", "cbq", "drr", "qfq", "ets", "multiq", "mqprio", "taprio", "atm", "dsmark", "mq"};
  // (htb, ets: the kernel refuses their dump back too; htb's TCA_HTB_INIT says version 0x30011,
  // htb_init() wants the major, 3, which tc sends.)
  // EINVAL on restore: red, choke (need TCA_*_STAB, never dumped), gred (needs TCA_GRED_DPS),
  // fq_pie. Restored but different: sfq dumps flows 128 with limit 127 and, given
  // them back, caps flows at the limit; plug's plugged/released state is not in its options.
  static constexpr std::array<std::string_view, 6> kInexact = {"red", "choke", "gred", "fq_pie", "sfq", "plug"};
  const auto in = [kind](const auto& kinds) { return std::find(kinds.begin(), kinds.end(), kind) != kinds.end(); };
  if (in(kExact)) {
    return Restorability::kExact;
  }
  if (in(kClassful)) {
    return Restorability::kClassful;
  }
  if (in(kInexact)) {
    return Restorability::kInexact;
  }
  return Restorability::kUnverified;
}

tl::expected<std::unique_ptr<QdiscTable>, std::error_code> openQdiscTable(const std::string& netnsPath) {
  if (netnsPath.empty()) {
    auto sock = connectRtnetlink();
    if (!sock) {
      return tl::unexpected(sock.error());
    }
    return std::make_unique<NetlinkQdiscTable>(std::move(*sock));
  }
  UniqueFd original(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
  if (original.get() < 0) {
    return fail(errno);
  }
  // O_NONBLOCK: a FIFO swapped in for the namespace after it was checked (spec_files.h) must not
  // block here (setns() then refuses it with EINVAL).
  UniqueFd target(::open(netnsPath.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (target.get() < 0) {
    return fail(errno);
  }
  if (::setns(target.get(), CLONE_NEWNET) != 0) {
    return fail(errno);  // EINVAL: not a network namespace; EPERM: no CAP_SYS_ADMIN
  }
  auto sock = connectRtnetlink();  // the socket stays in the namespace it was created in
  if (::setns(original.get(), CLONE_NEWNET) != 0) {
    // The thread would keep running in another namespace; nothing sane can follow.
    spdlog::critical("cannot return to the original network namespace after opening {}: {}", netnsPath,
                     errnoCode(errno).message());
    std::abort();
  }
  if (!sock) {
    return tl::unexpected(sock.error());
  }
  return std::make_unique<NetlinkQdiscTable>(std::move(*sock));
}

QdiscSupport probeQdiscSupport() {
  QdiscSupport support;
  auto probe = [&support] {
    // Only this short-lived thread moves; it and its namespace are gone after join().
    if (::unshare(CLONE_NEWNET) != 0) {
      return;
    }
    auto sock = connectRtnetlink();
    if (!sock) {
      return;
    }
    NetlinkQdiscTable table(std::move(*sock));
    auto lo = table.ifindex("lo");
    if (!lo) {
      return;
    }
    (void)table.setLinkUp(*lo);  // qdiscs attach to a down link too; up is closer to real use
    // Distinct handles: replacing a root with one of the same handle but another kind is EINVAL.
    support.tbf = table.replaceRoot("lo", 0x00010000, TbfParams{1'000'000, 3028, 6250}).has_value();
    support.netem = table.replaceRoot("lo", 0x00020000, NetemParams{std::chrono::milliseconds{1}}).has_value();
    support.htb = table.replaceRoot("lo", 0x00030000, HtbParams{}).has_value();
    if (support.htb) {
      const U32Filter any{0x00030000, 1, 0x0800, {U32Key{0, 0, 0}}, 0x00030000};
      support.u32 = table.addU32Filter("lo", any).has_value();
    }
    support.ifb = table.createIfb("flt-probe").has_value();
    support.ingress = table.addIngressQdisc("lo").has_value();
    if (support.ifb && support.ingress) {
      support.mirred = table.addRedirectFilter("lo", RedirectFilter{1, 0x0800, "flt-probe"}).has_value();
    }
  };
  try {
    std::thread worker(probe);
    worker.join();
  } catch (const std::system_error& e) {
    spdlog::warn("qdisc probe could not start a thread: {}", e.what());
  }
  return support;
}

}  // namespace faultline::kernel
