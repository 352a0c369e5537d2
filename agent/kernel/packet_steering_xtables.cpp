// Packet steering's legacy xtables backend: one chain per fault in the IPv4 and IPv6 mangle tables
// and the jump rules to it, laid out as ipt_entry / ip6t_entry and committed through libiptc and
// libip6tc (the same code for both families, by traits); the xtables lock iptables(8) shares.
#include "agent/kernel/packet_steering.h"
#include "agent/kernel/packet_steering_internal.h"
#include "agent/kernel/whole_file.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libiptc/libiptc.h>
// libip6tc.h, unlike libiptc.h, declares its functions without extern "C".
extern "C" {
#include <libiptc/libip6tc.h>
}
#include <linux/netfilter/xt_NFQUEUE.h>
#include <linux/netfilter/xt_mark.h>
#include <linux/netfilter/xt_statistic.h>
#include <linux/netfilter/xt_tcpudp.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace faultline::kernel {
using namespace steering_internal;
namespace {

// What ipt_ip (IPv4) and ip6t_ip6 (IPv6) name alike: addresses with their masks, interfaces.

// Source and destination, each with the mask of its prefix length (mask(int) -> in_addr / in6_addr).
template <typename Ip, typename Mask>
void setIpAddresses(Ip& ip, const std::optional<Cidr>& src, const std::optional<Cidr>& dst, const Mask& mask) {
  const auto put = [&](const Cidr& c, auto& addr, auto& addrMask) {
    std::memcpy(&addr, c.address.data(), sizeof addr);
    addrMask = mask(c.prefixLength);
  };
  if (src) {
    put(*src, ip.src, ip.smsk);
  }
  if (dst) {
    put(*dst, ip.dst, ip.dmsk);
  }
}

template <typename Ip>
std::string ipInterface(const Ip& ip, bool out) {
  const char* name = out ? ip.outiface : ip.iniface;
  return std::string(name, strnlen(name, sizeof ip.outiface));
}

template <typename Ip>
void setIpInterface(Ip& ip, const std::string& name, bool out) {
  char* dst = out ? ip.outiface : ip.iniface;
  unsigned char* mask = out ? ip.outiface_mask : ip.iniface_mask;
  std::memcpy(dst, name.data(), name.size());
  std::memset(mask, 0xFF, name.size() + 1);
}

struct Ip4 {
  using Entry = ipt_entry;
  static constexpr int kFamily = AF_INET;
  static constexpr const char* kName = "IPv4";
  static xtc_handle* init() { return iptc_init("mangle"); }
  static void free(xtc_handle* h) { iptc_free(h); }
  static int isChain(const char* c, xtc_handle* h) { return iptc_is_chain(c, h); }
  static const char* firstChain(xtc_handle* h) { return iptc_first_chain(h); }
  static const char* nextChain(xtc_handle* h) { return iptc_next_chain(h); }
  static const Entry* firstRule(const char* c, xtc_handle* h) { return iptc_first_rule(c, h); }
  static const Entry* nextRule(const Entry* e, xtc_handle* h) { return iptc_next_rule(e, h); }
  static const char* target(const Entry* e, xtc_handle* h) { return iptc_get_target(e, h); }
  static int createChain(const char* c, xtc_handle* h) { return iptc_create_chain(c, h); }
  static int append(const char* c, const Entry* e, xtc_handle* h) { return iptc_append_entry(c, e, h); }
  static int insert(const char* c, const Entry* e, xtc_handle* h) { return iptc_insert_entry(c, e, 0, h); }
  static int deleteNum(const char* c, unsigned n, xtc_handle* h) { return iptc_delete_num_entry(c, n, h); }
  static int flush(const char* c, xtc_handle* h) { return iptc_flush_entries(c, h); }
  static int deleteChain(const char* c, xtc_handle* h) { return iptc_delete_chain(c, h); }
  static int commit(xtc_handle* h) { return iptc_commit(h); }
  static const char* strerror(int e) { return iptc_strerror(e); }
  static in_addr mask(int prefixLength) {
    in_addr mask{};
    mask.s_addr = prefixLength == 0 ? 0 : htonl(~uint32_t{0} << (32 - prefixLength));
    return mask;
  }
  static void setAddresses(Entry& e, const std::optional<Cidr>& src, const std::optional<Cidr>& dst) {
    setIpAddresses(e.ip, src, dst, mask);
  }
  static void setProtocol(Entry& e, uint8_t proto) { e.ip.proto = proto; }
  static std::string interfaceOf(const Entry& e, bool out) { return ipInterface(e.ip, out); }
  static void setInterface(Entry& e, const std::string& name, bool out) { setIpInterface(e.ip, name, out); }
  static bool sameIp(const Entry& a, const Entry& b) { return std::memcmp(&a.ip, &b.ip, sizeof a.ip) == 0; }
};

struct Ip6 {
  using Entry = ip6t_entry;
  static constexpr int kFamily = AF_INET6;
  static constexpr const char* kName = "IPv6";
  static xtc_handle* init() { return ip6tc_init("mangle"); }
  static void free(xtc_handle* h) { ip6tc_free(h); }
  static int isChain(const char* c, xtc_handle* h) { return ip6tc_is_chain(c, h); }
  static const char* firstChain(xtc_handle* h) { return ip6tc_first_chain(h); }
  static const char* nextChain(xtc_handle* h) { return ip6tc_next_chain(h); }
  static const Entry* firstRule(const char* c, xtc_handle* h) { return ip6tc_first_rule(c, h); }
  static const Entry* nextRule(const Entry* e, xtc_handle* h) { return ip6tc_next_rule(e, h); }
  static const char* target(const Entry* e, xtc_handle* h) { return ip6tc_get_target(e, h); }
  static int createChain(const char* c, xtc_handle* h) { return ip6tc_create_chain(c, h); }
  static int append(const char* c, const Entry* e, xtc_handle* h) { return ip6tc_append_entry(c, e, h); }
  static int insert(const char* c, const Entry* e, xtc_handle* h) { return ip6tc_insert_entry(c, e, 0, h); }
  static int deleteNum(const char* c, unsigned n, xtc_handle* h) { return ip6tc_delete_num_entry(c, n, h); }
  static int flush(const char* c, xtc_handle* h) { return ip6tc_flush_entries(c, h); }
  static int deleteChain(const char* c, xtc_handle* h) { return ip6tc_delete_chain(c, h); }
  static int commit(xtc_handle* h) { return ip6tc_commit(h); }
  static const char* strerror(int e) { return ip6tc_strerror(e); }
  static in6_addr mask(int prefixLength) {
    in6_addr mask{};
    for (int i = 0; i < 16; ++i) {
      const int bits = std::clamp(prefixLength - i * 8, 0, 8);
      mask.s6_addr[i] = static_cast<uint8_t>(bits == 0 ? 0 : 0xFF << (8 - bits));
    }
    return mask;
  }
  static void setAddresses(Entry& e, const std::optional<Cidr>& src, const std::optional<Cidr>& dst) {
    setIpAddresses(e.ipv6, src, dst, mask);
  }
  static void setProtocol(Entry& e, uint8_t proto) {
    e.ipv6.proto = proto;
    if (proto != 0) {
      e.ipv6.flags |= IP6T_F_PROTO;
    }
  }
  static std::string interfaceOf(const Entry& e, bool out) { return ipInterface(e.ipv6, out); }
  static void setInterface(Entry& e, const std::string& name, bool out) { setIpInterface(e.ipv6, name, out); }
  static bool sameIp(const Entry& a, const Entry& b) { return std::memcmp(&a.ipv6, &b.ipv6, sizeof a.ipv6) == 0; }
};

// One xtables rule, before it is laid out as an ipt_entry / ip6t_entry.
struct XtRule {
  std::optional<Cidr> source;
  std::optional<Cidr> destination;
  uint8_t protocol = 0;
  std::optional<uint16_t> sourcePort;
  std::optional<uint16_t> destinationPort;
  std::string inInterface;
  std::string outInterface;
  std::optional<uint32_t> mark;         // the mark match (revision 1), exact
  std::optional<uint32_t> probability;  // the statistic match, random mode: of 2^31
  // The target: a standard one ("ACCEPT", "DROP", "RETURN", a chain's name), or NFQUEUE when
  // queue is set.
  std::string target;
  std::optional<uint16_t> queue;
};

// An entry's bytes, 8-byte aligned as libiptc and the kernel expect.
struct EntryBuffer {
  std::vector<uint64_t> words;
  template <typename Entry>
  const Entry* entry() const {
    return reinterpret_cast<const Entry*>(words.data());
  }
};

template <typename T>
void putExtension(uint8_t* at, size_t size, const char* name, uint8_t revision, const T& data) {
  auto* m = reinterpret_cast<xt_entry_match*>(at);  // xt_entry_target has the same layout
  m->u.user.match_size = static_cast<uint16_t>(size);
  std::strncpy(m->u.user.name, name, sizeof m->u.user.name - 1);
  m->u.user.revision = revision;
  std::memcpy(m->data, &data, sizeof data);
}

template <typename F>
EntryBuffer buildEntry(const XtRule& r) {
  using Entry = typename F::Entry;
  const auto ext = [](size_t data) { return XT_ALIGN(sizeof(xt_entry_match) + data); };
  size_t matches = 0;
  if (r.protocol == IPPROTO_TCP && (r.sourcePort || r.destinationPort)) {
    matches += ext(sizeof(xt_tcp));
  }
  if (r.protocol == IPPROTO_UDP && (r.sourcePort || r.destinationPort)) {
    matches += ext(sizeof(xt_udp));
  }
  if (r.mark) {
    matches += ext(sizeof(xt_mark_mtinfo1));
  }
  if (r.probability) {
    matches += ext(sizeof(xt_statistic_info));
  }
  const size_t targetSize =
      r.queue ? XT_ALIGN(sizeof(xt_entry_target) + sizeof(xt_NFQ_info_v3)) : XT_ALIGN(sizeof(xt_standard_target));
  const size_t total = XT_ALIGN(sizeof(Entry)) + matches + targetSize;
  EntryBuffer buf;
  buf.words.assign((total + 7) / 8, 0);
  auto* bytes = reinterpret_cast<uint8_t*>(buf.words.data());
  auto* e = reinterpret_cast<Entry*>(bytes);
  F::setAddresses(*e, r.source, r.destination);
  F::setProtocol(*e, r.protocol);
  if (!r.inInterface.empty()) {
    F::setInterface(*e, r.inInterface, false);
  }
  if (!r.outInterface.empty()) {
    F::setInterface(*e, r.outInterface, true);
  }
  e->target_offset = static_cast<uint16_t>(XT_ALIGN(sizeof(Entry)) + matches);
  e->next_offset = static_cast<uint16_t>(total);
  size_t at = XT_ALIGN(sizeof(Entry));
  const uint16_t sp0 = r.sourcePort.value_or(0), sp1 = r.sourcePort.value_or(0xFFFF);
  const uint16_t dp0 = r.destinationPort.value_or(0), dp1 = r.destinationPort.value_or(0xFFFF);
  if (r.protocol == IPPROTO_TCP && (r.sourcePort || r.destinationPort)) {
    xt_tcp tcp{};
    tcp.spts[0] = sp0;
    tcp.spts[1] = sp1;
    tcp.dpts[0] = dp0;
    tcp.dpts[1] = dp1;
    putExtension(bytes + at, ext(sizeof tcp), "tcp", 0, tcp);
    at += ext(sizeof tcp);
  }
  if (r.protocol == IPPROTO_UDP && (r.sourcePort || r.destinationPort)) {
    xt_udp udp{};
    udp.spts[0] = sp0;
    udp.spts[1] = sp1;
    udp.dpts[0] = dp0;
    udp.dpts[1] = dp1;
    putExtension(bytes + at, ext(sizeof udp), "udp", 0, udp);
    at += ext(sizeof udp);
  }
  if (r.mark) {
    xt_mark_mtinfo1 mark{};
    mark.mark = *r.mark;
    mark.mask = 0xFFFFFFFF;
    putExtension(bytes + at, ext(sizeof mark), "mark", 1, mark);
    at += ext(sizeof mark);
  }
  if (r.probability) {
    xt_statistic_info stat{};
    stat.mode = XT_STATISTIC_MODE_RANDOM;
    stat.u.random.probability = *r.probability;
    putExtension(bytes + at, ext(sizeof stat), "statistic", 0, stat);
    at += ext(sizeof stat);
  }
  if (r.queue) {
    xt_NFQ_info_v3 nfq{};
    nfq.queuenum = *r.queue;
    nfq.queues_total = 1;
    nfq.flags = NFQ_FLAG_BYPASS;
    putExtension(bytes + at, targetSize, "NFQUEUE", 3, nfq);
  } else {
    auto* t = reinterpret_cast<xt_entry_target*>(bytes + at);
    t->u.user.target_size = static_cast<uint16_t>(targetSize);
    std::strncpy(t->u.user.name, r.target.c_str(), sizeof t->u.user.name - 1);
  }
  return buf;
}

std::string xtChainName(uint16_t slot) {
  return fmt::format("{}{}", kXtChainPrefix, slot);
}

template <typename F>
struct XtHandle {
  xtc_handle* h = nullptr;
  XtHandle() : h(F::init()) {}
  XtHandle(const XtHandle&) = delete;
  XtHandle& operator=(const XtHandle&) = delete;
  ~XtHandle() {
    if (h != nullptr) {
      F::free(h);
    }
  }
};

template <typename F>
Failure xtFailure(int e, const std::string& what) {
  if (e == EPERM || e == EACCES || !hasNetAdmin()) {
    return {errnoCode(EPERM), fmt::format("{} needs CAP_NET_ADMIN", what)};
  }
  return {errnoCode(e), fmt::format("{} ({}): {}", what, F::kName, F::strerror(e))};
}

template <typename F>
std::vector<std::string> xtChains(xtc_handle* h) {
  std::vector<std::string> out;
  for (const char* c = F::firstChain(h); c != nullptr; c = F::nextChain(h)) {
    out.emplace_back(c);
  }
  return out;
}

// The hooks faultline's jump rules sit in: egress, -o: OUTPUT (what this host sends) and FORWARD
// (what it forwards out of the interface; netem on the interface sees both); ingress, -i:
// PREROUTING.
constexpr std::array<std::pair<const char*, bool>, 3> kXtHooks{
    {{"OUTPUT", true}, {"FORWARD", true}, {"PREROUTING", false}}};

// Whether e, a rule of chain `in` that jumps to a faultline chain, has the shape install() gives
// its jump rules: in one of kXtHooks, the hook's interface (-o, or -i for PREROUTING) and nothing
// else, no match.
template <typename F>
bool xtIsOwnJump(const std::string& in, const typename F::Entry* e) {
  for (const auto& [hook, out] : kXtHooks) {
    if (in != hook) {
      continue;
    }
    XtRule jump;
    const std::string iface = F::interfaceOf(*e, out);
    if (iface.empty()) {
      return false;
    }
    (out ? jump.outInterface : jump.inInterface) = iface;
    jump.target = "RETURN";  // the target is not compared: the caller knows where e jumps
    const auto buf = buildEntry<F>(jump);
    const auto* want = buf.template entry<typename F::Entry>();
    return e->target_offset == want->target_offset && F::sameIp(*e, *want);
  }
  return false;
}

// Words for rule n (0-based) of chain in: "rule 2 of INPUT (-i eth0) in the IPv4 mangle table".
template <typename F>
std::string xtRuleWords(const std::string& in, unsigned n, const typename F::Entry* e) {
  std::string interfaces;
  for (const bool out : {false, true}) {
    if (const std::string name = F::interfaceOf(*e, out); !name.empty()) {
      interfaces += fmt::format("{}{} {}", interfaces.empty() ? "" : " ", out ? "-o" : "-i", name);
    }
  }
  return fmt::format("rule {} of {}{} in the {} mangle table", n + 1, in,
                     interfaces.empty() ? std::string() : " (" + interfaces + ")", F::kName);
}

// Removes faultline's jump rules to chain (the first rule of install()'s shape in each hook) and
// chain itself from the handle (not committed). When any other rule jumps to chain, that rule
// stays and so does chain, emptied of its rules; foreign then names each such rule. Returns
// whether anything changed.
template <typename F>
tl::expected<bool, int> xtDropChain(xtc_handle* h, const std::string& chain, std::vector<std::string>& foreign) {
  if (F::isChain(chain.c_str(), h) == 0) {
    return false;
  }
  bool changed = false;
  for (const auto& c : xtChains<F>(h)) {
    std::optional<unsigned> own;
    std::vector<std::pair<unsigned, const typename F::Entry*>> others;
    unsigned n = 0;
    for (const auto* e = F::firstRule(c.c_str(), h); e != nullptr; e = F::nextRule(e, h), ++n) {
      const char* t = F::target(e, h);
      if (t == nullptr || chain != t) {
        continue;
      }
      if (!own && xtIsOwnJump<F>(c, e)) {  // install() adds one per hook
        own = n;
      } else {
        others.emplace_back(n, e);
      }
    }
    // Each named by its number once faultline's own jump above it is gone, as iptables -L will
    // show it (and before the deletion, which frees the entries read here).
    for (const auto& [number, e] : others) {
      foreign.push_back(xtRuleWords<F>(c, own && *own < number ? number - 1 : number, e));
    }
    if (own) {
      if (F::deleteNum(c.c_str(), *own, h) == 0) {
        return tl::unexpected(errno);
      }
      changed = true;
    }
  }
  if (F::firstRule(chain.c_str(), h) != nullptr) {
    if (F::flush(chain.c_str(), h) == 0) {
      return tl::unexpected(errno);
    }
    changed = true;
  }
  if (foreign.empty()) {
    if (F::deleteChain(chain.c_str(), h) == 0) {
      return tl::unexpected(errno);
    }
    changed = true;
  }
  return changed;
}

// Removes slot's chain in one family (xtDropChain()), commits, and reads back: the chain gone, or,
// when foreign rules jump to it, empty. The words of what stayed are added to left.
template <typename F>
VoidResult xtRemoveFamily(uint16_t slot, std::vector<std::string>& left) {
  const std::string chain = xtChainName(slot);
  XtHandle<F> table;
  if (table.h == nullptr) {
    if (errno == ENOENT || errno == ENOPROTOOPT) {
      return {};  // no mangle table, nothing of ours
    }
    return tl::unexpected(xtFailure<F>(errno, "reading the mangle table"));
  }
  std::vector<std::string> foreign;
  auto changed = xtDropChain<F>(table.h, chain, foreign);
  if (!changed) {
    return tl::unexpected(xtFailure<F>(changed.error(), fmt::format("removing chain {}", chain)));
  }
  if (*changed && F::commit(table.h) == 0) {
    return tl::unexpected(xtFailure<F>(errno, fmt::format("removing chain {}", chain)));
  }
  XtHandle<F> check;
  if (check.h != nullptr && F::isChain(chain.c_str(), check.h) != 0) {
    if (foreign.empty()) {
      return fail(EIO, fmt::format("chain {} is still in the {} mangle table after its removal", chain, F::kName));
    }
    if (F::firstRule(chain.c_str(), check.h) != nullptr) {
      return fail(EIO, fmt::format("chain {} in the {} mangle table still has rules after faultline's were removed",
                                   chain, F::kName));
    }
  }
  if (!foreign.empty()) {
    left.push_back(fmt::format(
        "the {} chain {} was left in place, emptied of faultline's rules (packets that reach it go on unharmed): "
        "faultline did not add {} that jump{} to it ({}), and deletes no rule it did not add; delete {}, then run "
        "faultline-agent revert-all (or revert again) to remove the chain",
        F::kName, chain, foreign.size() == 1 ? "the rule" : "the rules", foreign.size() == 1 ? "s" : "",
        fmt::join(foreign, "; "), foreign.size() == 1 ? "that rule" : "those rules"));
  }
  return {};
}

template <typename F>
VoidResult xtInstallFamily(const SteeringRules& rules, const std::vector<Combination>& combos) {
  const std::string chain = xtChainName(rules.slot);
  XtHandle<F> table;
  if (table.h == nullptr) {
    const int e = errno;
    if (e == ENOENT || e == ENOPROTOOPT || e == EINVAL) {
      const bool v4 = F::kFamily == AF_INET;
      return fail(ENOENT, fmt::format("the {} legacy mangle table is missing ({}): {} and {} must be loaded "
                                      "(CONFIG_IP{}_NF_IPTABLES, CONFIG_IP{}_NF_MANGLE)",
                                      F::kName, F::strerror(e), v4 ? "ip_tables" : "ip6_tables",
                                      v4 ? "iptable_mangle" : "ip6table_mangle", v4 ? "" : "6", v4 ? "" : "6"));
    }
    return tl::unexpected(xtFailure<F>(e, "reading the mangle table"));
  }
  if (F::isChain(chain.c_str(), table.h) != 0) {
    return fail(EEXIST, fmt::format("chain {} exists already in the {} mangle table: slot {} is taken", chain, F::kName,
                                    rules.slot));
  }
  const auto step = [&](int ok, const std::string& what) -> VoidResult {
    if (ok == 0) {
      return tl::unexpected(xtFailure<F>(errno, fmt::format("{} in chain {}", what, chain)));
    }
    return {};
  };
  if (auto r = step(F::createChain(chain.c_str(), table.h), "creating the chain"); !r) {
    return r;
  }
  const auto append = [&](const XtRule& rule) {
    auto buf = buildEntry<F>(rule);
    return step(F::append(chain.c_str(), buf.template entry<typename F::Entry>(), table.h), "adding a rule");
  };
  XtRule mark;
  mark.mark = kInjectedMark;
  mark.target = "RETURN";
  if (auto r = append(mark); !r) {
    return r;
  }
  for (const auto& e : rules.exempt) {
    if (e.address.family != F::kFamily) {
      continue;
    }
    for (const bool toEndpoint : {true, false}) {
      XtRule x;
      x.protocol = IPPROTO_TCP;
      (toEndpoint ? x.destination : x.source) = e.address;
      (toEndpoint ? x.destinationPort : x.sourcePort) = e.port;
      x.target = "RETURN";
      if (auto r = append(x); !r) {
        return r;
      }
    }
  }
  for (const auto& c : combos) {
    if (c.family != F::kFamily) {
      continue;
    }
    XtRule x;
    x.source = c.source;
    x.destination = c.destination;
    x.protocol = c.protocol;
    x.sourcePort = c.sourcePort;
    x.destinationPort = c.destinationPort;
    switch (rules.verdict) {
      case SteeringRules::Verdict::kQueue:
        x.queue = rules.queue;
        break;
      case SteeringRules::Verdict::kDrop:
        x.target = "DROP";
        break;
      case SteeringRules::Verdict::kDropRandom:
        x.probability = static_cast<uint32_t>(
            std::min<double>(std::llround(rules.dropPercent / 100.0 * 2147483648.0), 2147483648.0));
        x.target = "DROP";
        break;
    }
    if (auto r = append(x); !r) {
      return r;
    }
  }
  for (const auto& [builtin, egress] : kXtHooks) {
    if (egress ? !rules.egress : !rules.ingress) {
      continue;
    }
    XtRule jump;
    (egress ? jump.outInterface : jump.inInterface) = rules.interface;
    jump.target = chain;
    auto buf = buildEntry<F>(jump);
    if (auto r = step(F::insert(builtin, buf.template entry<typename F::Entry>(), table.h),
                      fmt::format("adding the jump rule from {}", builtin));
        !r) {
      return r;
    }
  }
  if (F::commit(table.h) == 0) {
    return tl::unexpected(xtFailure<F>(errno, fmt::format("committing chain {} to the mangle table", chain)));
  }
  return {};
}

// The digest of a chain's rules: each entry's header with its packet/byte counters (and the
// kernel's comefrom bookkeeping) zeroed, then each match and the target by size, name (up to its
// NUL: the kernel copies no more of it, the rest of the field is whatever the reader's buffer
// held), revision and data.
template <typename F>
uint64_t xtEntryDigest(const typename F::Entry* e, uint64_t h) {
  using Entry = typename F::Entry;
  Entry header;
  std::memcpy(&header, e, sizeof header);
  header.counters = {};
  header.comefrom = 0;
  h = fnv1a(&header, sizeof header, h);
  const auto* bytes = reinterpret_cast<const uint8_t*>(e);
  const auto extension = [&](size_t at, size_t size, const char* name, uint8_t revision) {
    h = fnv1a(&size, sizeof size, h);
    h = fnv1a(name, strnlen(name, XT_EXTENSION_MAXNAMELEN), h);
    h = fnv1a(&revision, 1, h);
    if (size > sizeof(xt_entry_match)) {
      h = fnv1a(bytes + at + sizeof(xt_entry_match), size - sizeof(xt_entry_match), h);
    }
  };
  for (size_t at = sizeof(Entry); at + sizeof(xt_entry_match) <= e->target_offset;) {
    const auto* m = reinterpret_cast<const xt_entry_match*>(bytes + at);
    if (m->u.match_size < sizeof(xt_entry_match)) {
      break;
    }
    extension(at, m->u.match_size, m->u.user.name, m->u.user.revision);
    at += m->u.match_size;
  }
  if (e->target_offset + sizeof(xt_entry_target) <= e->next_offset) {
    const auto* t = reinterpret_cast<const xt_entry_target*>(bytes + e->target_offset);
    extension(e->target_offset, std::min<size_t>(t->u.target_size, e->next_offset - e->target_offset), t->u.user.name,
              t->u.user.revision);
  }
  return h;
}

// Slot's chain and the jump rules to it in one family's mangle table, as parts. ENOENT/EPERM
// when the table cannot be read.
template <typename F>
tl::expected<void, int> xtInspectFamily(uint16_t slot, std::vector<SteeringPart>& parts) {
  XtHandle<F> table;
  if (table.h == nullptr) {
    return tl::unexpected(errno);
  }
  const std::string chain = xtChainName(slot);
  if (F::isChain(chain.c_str(), table.h) != 0) {
    SteeringPart part{fmt::format("{} chain {}", F::kName, chain), 0, fnv1a(nullptr, 0)};
    for (const auto* e = F::firstRule(chain.c_str(), table.h); e != nullptr; e = F::nextRule(e, table.h)) {
      ++part.rules;
      part.digest = xtEntryDigest<F>(e, part.digest);
    }
    parts.push_back(std::move(part));
  }
  for (const auto& [hook, out] : kXtHooks) {
    for (const auto* e = F::firstRule(hook, table.h); e != nullptr; e = F::nextRule(e, table.h)) {
      const char* t = F::target(e, table.h);
      if (t == nullptr || chain != t) {
        continue;
      }
      const std::string name =
          fmt::format("{} jump rule {} {} {} -> {}", F::kName, hook, out ? "-o" : "-i", F::interfaceOf(*e, out), chain);
      auto it = std::find_if(parts.begin(), parts.end(), [&](const SteeringPart& p) { return p.name == name; });
      if (it == parts.end()) {
        parts.push_back(SteeringPart{name, 1, 0});
      } else {
        ++it->rules;
      }
    }
  }
  return {};
}

// What faultline's jump rules in one family steer, by slot. Only rules of install()'s shape count
// (xtIsOwnJump): someone's rule that jumps to a faultline chain (another interface, a protocol
// match) neither names the slot's interface nor adds a direction.
template <typename F>
void xtSteeredFamily(xtc_handle* h, std::map<uint16_t, PacketSteering::Steered>& steered) {
  for (const auto& [hook, out] : kXtHooks) {
    for (const auto* e = F::firstRule(hook, h); e != nullptr; e = F::nextRule(e, h)) {
      const char* t = F::target(e, h);
      if (t == nullptr) {
        continue;
      }
      auto slot = slotOf(t, kXtChainPrefix);
      if (!slot || !xtIsOwnJump<F>(hook, e)) {
        continue;
      }
      auto& s = steered[*slot];
      s.slot = *slot;
      if (s.interface.empty()) {
        s.interface = F::interfaceOf(*e, out);
      }
      (out ? s.egress : s.ingress) = true;
    }
  }
}

template <typename F>
tl::expected<void, int> xtOwnedFamily(std::vector<std::string>& names,
                                      std::map<uint16_t, PacketSteering::Steered>& steered) {
  XtHandle<F> table;
  if (table.h == nullptr) {
    return tl::unexpected(errno);
  }
  for (auto& c : xtChains<F>(table.h)) {
    if (c.rfind(kXtChainPrefix, 0) == 0) {
      names.push_back(std::move(c));
    }
  }
  xtSteeredFamily<F>(table.h, steered);
  return {};
}

class XtSteering final : public PacketSteering {
 public:
  XtSteering(int fd, std::chrono::milliseconds lockWait) : ns_(fd), lockWait_(lockWait) {}

  tl::expected<void, Failure> install(const SteeringRules& rules) override {
    auto combos = checkRules(rules);
    if (!combos) {
      return tl::unexpected(combos.error());
    }
    auto lock = XtablesLock::take(lockWait_);
    if (!lock) {
      return tl::unexpected(Failure{lock.error().first, fmt::format("installing chain {}{}: {}; nothing was changed",
                                                                    kXtChainPrefix, rules.slot, lock.error().second)});
    }
    auto result = onThreadIn<VoidResult>(
        ns_.fd(),
        [&]() -> VoidResult {
          // One commit per family; IPv4 first. A failure of IPv6 takes IPv4's commit back.
          if (auto r = xtInstallFamily<Ip4>(rules, *combos); !r) {
            return r;
          }
          auto r6 = xtInstallFamily<Ip6>(rules, *combos);
          if (!r6) {
            std::vector<std::string> left;
            if (auto undo = xtRemoveFamily<Ip4>(rules.slot, left); !undo) {
              return fail(r6.error().first.value(), fmt::format("{}; and taking back the IPv4 chain failed too: {}",
                                                                r6.error().second, undo.error().second));
            }
          }
          return r6;
        },
        voidOnError);
    if (!result && result.error().first == std::errc::no_such_file_or_directory) {
      if (auto missing = missingPart(SteeringBackend::kXtables, rules)) {
        return tl::unexpected(*missing);
      }
    }
    return result;
  }

  tl::expected<Removal, Failure> remove(uint16_t slot) override {
    if (slot >= kMaxSlots) {
      return fail(EINVAL, fmt::format("slot {} is out of range; accepted: 0 to {}", slot, kMaxSlots - 1));
    }
    auto lock = XtablesLock::take(lockWait_);
    if (!lock) {
      return tl::unexpected(Failure{lock.error().first, fmt::format("removing chain {}{}: {}; nothing was changed",
                                                                    kXtChainPrefix, slot, lock.error().second)});
    }
    Removal removal;
    auto result = onThreadIn<VoidResult>(
        ns_.fd(),
        [&]() -> VoidResult {
          auto r4 = xtRemoveFamily<Ip4>(slot, removal.left);
          auto r6 = xtRemoveFamily<Ip6>(slot, removal.left);  // even when IPv4 failed: remove what can go
          return r4 ? r6 : r4;
        },
        voidOnError);
    if (!result) {
      return tl::unexpected(result.error());
    }
    return removal;
  }

  tl::expected<Owned, std::error_code> owned() override {
    return onThreadIn<tl::expected<Owned, std::error_code>>(
        ns_.fd(),
        []() -> tl::expected<Owned, std::error_code> {
          std::vector<std::string> names;
          std::map<uint16_t, Steered> steered;
          auto r4 = xtOwnedFamily<Ip4>(names, steered);
          auto r6 = xtOwnedFamily<Ip6>(names, steered);
          if (!r4 && !r6) {
            const int e = r4.error();
            return tl::unexpected(errnoCode(e == EPERM || e == EACCES || !hasNetAdmin() ? EPERM : ENOENT));
          }
          Owned owned = sortOwned(names, kXtChainPrefix);
          for (auto& [slot, s] : steered) {
            owned.steered.push_back(std::move(s));
          }
          owned.served = servedSlots();
          return owned;
        },
        ownedOnError);
  }

  tl::expected<SlotState, std::error_code> inspect(uint16_t slot) override {
    return inspectSlot(ns_.fd(), slot, [slot]() -> tl::expected<SlotState, std::error_code> {
      SlotState state;
      // Both families or an error: a family that cannot be read is not a family whose rules
      // are gone.
      auto r4 = xtInspectFamily<Ip4>(slot, state.parts);
      auto r6 = r4 ? xtInspectFamily<Ip6>(slot, state.parts) : r4;
      for (const auto& r : {r4, r6}) {
        if (!r) {
          const int e = r.error();
          return tl::unexpected(errnoCode(e == EPERM || e == EACCES || !hasNetAdmin() ? EPERM : e));
        }
      }
      return state;
    });
  }

 private:
  Namespace ns_;
  std::chrono::milliseconds lockWait_;
};

template <typename F>
bool xtCommitProbe(const std::vector<XtRule>& rules) {
  XtHandle<F> table;
  if (table.h == nullptr) {
    return false;
  }
  const char* chain = "FAULTLINE-probe";
  if (F::isChain(chain, table.h) == 0 && F::createChain(chain, table.h) == 0) {
    return false;
  }
  for (const auto& r : rules) {
    auto buf = buildEntry<F>(r);
    if (F::append(chain, buf.template entry<typename F::Entry>(), table.h) == 0) {
      return false;
    }
  }
  return F::commit(table.h) != 0;
}

}  // namespace

namespace steering_internal {

std::unique_ptr<PacketSteering> makeXtSteering(int fd, std::chrono::milliseconds lockWait) {
  return std::make_unique<XtSteering>(fd, lockWait);
}

void probeXtables(SteeringSupport& support) {
  support.xtables = xtCommitProbe<Ip4>({}) && xtCommitProbe<Ip6>({});
  if (support.xtables) {
    XtRule queue;
    queue.protocol = IPPROTO_UDP;
    queue.queue = kQueueBase;
    support.xtNfqueue = xtCommitProbe<Ip4>({queue}) && xtCommitProbe<Ip6>({queue});
    XtRule random;
    random.probability = 1;
    random.target = "DROP";
    support.xtStatistic = xtCommitProbe<Ip4>({random});
  }
}

}  // namespace steering_internal

std::string xtablesLockPath() {
  const char* path = std::getenv("XTABLES_LOCKFILE");  // as iptables(8) reads it
  return path != nullptr && *path != '\0' ? path : "/run/xtables.lock";
}

namespace {

// Who holds a lock on the file open at fd, as /proc/locks lists it ("1: FLOCK  ADVISORY  WRITE
// 1234 00:19:567 0 EOF": pid, then device major:minor in hex and inode): "pid 1234 (iptables)",
// or "" when it does not say.
std::string lockHolder(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    return "";
  }
  auto text = readWholeFile("/proc/locks", 1 << 20);
  if (!text) {
    return "";
  }
  const std::string file = fmt::format("{:02x}:{:02x}:{}", major(st.st_dev), minor(st.st_dev), st.st_ino);
  std::istringstream lines(*text);
  std::string line;
  while (std::getline(lines, line)) {
    std::istringstream words(line);
    std::string number, kind, mode, access, pid, id;
    if (!(words >> number >> kind) || kind == "->") {
      continue;  // a waiter ("1: -> FLOCK ...")
    }
    if (!(words >> mode >> access >> pid >> id) || id != file || pid == "-1") {
      continue;
    }
    std::string command;
    if (auto comm = readWholeFile(fmt::format("/proc/{}/comm", pid), 64)) {
      command = comm->substr(0, comm->find('\n'));
    }
    return command.empty() ? fmt::format("pid {}", pid) : fmt::format("pid {} ({})", pid, command);
  }
  return "";
}

}  // namespace

tl::expected<XtablesLock, std::pair<std::error_code, std::string>> XtablesLock::take(std::chrono::milliseconds wait) {
  const std::string path = xtablesLockPath();
  // Non-blocking: a FIFO named by $XTABLES_LOCKFILE does not hold the agent up.
  const int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0600);
  if (fd < 0) {
    const int e = errno;
    return tl::unexpected(std::pair{errnoCode(e), fmt::format("cannot open the xtables lock {}: {}; without it no "
                                                              "xtables change is made (iptables(8) makes none either)",
                                                              path, std::strerror(e))});
  }
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      return XtablesLock(fd);
    }
    const int e = errno;
    if (e != EWOULDBLOCK && e != EINTR) {
      ::close(fd);
      return tl::unexpected(
          std::pair{errnoCode(e), fmt::format("cannot take the xtables lock {}: {}", path, std::strerror(e))});
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  const std::string holder = lockHolder(fd);
  ::close(fd);
  return tl::unexpected(std::pair{
      errnoCode(EBUSY),
      fmt::format("the xtables lock {} was held by another program{} for all of {} ms (iptables -w, firewalld, "
                  "another agent); faultline never changes xtables rules without it: try again when it is free",
                  path, holder.empty() ? std::string() : " (" + holder + ")", wait.count())});
}

XtablesLock::~XtablesLock() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

}  // namespace faultline::kernel
