#include "agent/kernel/packet_steering.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <libiptc/libiptc.h>
// libip6tc.h, unlike libiptc.h, declares its functions without extern "C".
extern "C" {
#include <libiptc/libip6tc.h>
}
#include <linux/capability.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netfilter/xt_NFQUEUE.h>
#include <linux/netfilter/xt_mark.h>
#include <linux/netfilter/xt_statistic.h>
#include <linux/netfilter/xt_tcpudp.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <nftables/libnftables.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "agent/kernel/net_types.h"

namespace faultline::kernel {
namespace {

using Failure = std::pair<std::error_code, std::string>;
using VoidResult = tl::expected<void, Failure>;

std::error_code errnoCode(int e) {
  return {e, std::generic_category()};
}

tl::unexpected<Failure> fail(int e, std::string words) {
  return tl::unexpected(Failure{errnoCode(e), std::move(words)});
}

// Runs fn on a short-lived thread that joined the namespace nsFd (-1: the caller's namespace), so
// the caller's thread never changes namespace. onError makes fn's result type from an errno.
template <typename R>
R onThreadIn(int nsFd, const std::function<R()>& fn, const std::function<R(int)>& onError) {
  std::optional<R> result;
  try {
    std::thread worker([&] {
      if (nsFd >= 0 && ::setns(nsFd, CLONE_NEWNET) != 0) {
        result = onError(errno);
        return;
      }
      result = fn();
    });
    worker.join();
  } catch (const std::system_error&) {
    return onError(EAGAIN);
  }
  return std::move(*result);
}

// True when this thread has CAP_NET_ADMIN in its effective set.
bool hasNetAdmin() {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &header, data) != 0) {
    return true;  // cannot tell: let the kernel's answer stand
  }
  return (data[CAP_NET_ADMIN / 32].effective & (1u << (CAP_NET_ADMIN % 32))) != 0;
}

std::string cidrText(const Cidr& c) {
  char buf[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(c.family, c.address.data(), buf, sizeof buf);
  return fmt::format("{}/{}", buf, c.prefixLength);
}

// One rule's worth of a match: every field optional ("any").
struct Combination {
  int family = AF_INET;
  std::optional<Cidr> destination;
  std::optional<Cidr> source;
  std::optional<uint16_t> destinationPort;
  std::optional<uint16_t> sourcePort;
  uint8_t protocol = 0;  // IPPROTO_*; 0: any
};

// The combinations of a match (destination x source x destination port x source port, per address
// family), or words saying why the rules cannot express it.
tl::expected<std::vector<Combination>, std::string> combinations(const v1::TrafficMatch& match) {
  std::vector<std::optional<Cidr>> destinations;
  std::vector<std::optional<Cidr>> sources;
  int family = 0;
  for (const auto* list : {&match.destination_cidrs(), &match.source_cidrs()}) {
    for (const auto& text : *list) {
      auto cidr = parseCidr(text);
      if (!cidr) {
        return tl::unexpected(fmt::format("match CIDR '{}': {}", text, cidr.error()));
      }
      if (family != 0 && cidr->family != family) {
        return tl::unexpected(
            fmt::format("match CIDR '{}' is of another address family than the others; accepted: one family", text));
      }
      family = cidr->family;
      (list == &match.destination_cidrs() ? destinations : sources).emplace_back(*cidr);
    }
  }
  if (!v1::Protocol_IsValid(match.protocol())) {
    return tl::unexpected(fmt::format("match protocol {} is unknown; accepted: tcp, udp or icmp", match.protocol()));
  }
  const bool ports = !match.destination_ports().empty() || !match.source_ports().empty();
  if (ports && match.protocol() != v1::PROTOCOL_TCP && match.protocol() != v1::PROTOCOL_UDP) {
    return tl::unexpected(std::string("match ports need protocol tcp or udp"));
  }
  std::vector<std::optional<uint16_t>> dports(1);
  std::vector<std::optional<uint16_t>> sports(1);
  for (auto [list, out] : {std::pair{&match.destination_ports(), &dports}, std::pair{&match.source_ports(), &sports}}) {
    if (!list->empty()) {
      out->clear();
    }
    for (uint32_t p : *list) {
      if (p < 1 || p > 65535) {
        return tl::unexpected(fmt::format("match port {} is out of range; accepted: 1 to 65535", p));
      }
      out->emplace_back(static_cast<uint16_t>(p));
    }
  }
  if (destinations.empty()) {
    destinations.emplace_back(std::nullopt);
  }
  if (sources.empty()) {
    sources.emplace_back(std::nullopt);
  }
  const std::vector<int> families = family != 0 ? std::vector<int>{family} : std::vector<int>{AF_INET, AF_INET6};
  const size_t count = families.size() * destinations.size() * sources.size() * dports.size() * sports.size();
  if (count > kMaxMatchCombinations) {
    return tl::unexpected(
        fmt::format("the match needs {} rules (one per combination of destination, source and "
                    "ports); at most {} are accepted: split it into several faults",
                    count, kMaxMatchCombinations));
  }
  std::vector<Combination> out;
  for (int f : families) {
    for (const auto& d : destinations) {
      for (const auto& s : sources) {
        for (const auto& dp : dports) {
          for (const auto& sp : sports) {
            out.push_back(Combination{f, d, s, dp, sp, agent::protocolNumber(match.protocol(), f)});
          }
        }
      }
    }
  }
  return out;
}

// What install() checks before any kernel call; the combinations of the match.
tl::expected<std::vector<Combination>, Failure> checkRules(const SteeringRules& rules) {
  const auto invalid = [](std::string words) { return tl::unexpected(Failure{errnoCode(EINVAL), std::move(words)}); };
  if (rules.slot >= kMaxSlots) {
    return invalid(fmt::format("slot {} is out of range; accepted: 0 to {}", rules.slot, kMaxSlots - 1));
  }
  if (!isValidInterfaceName(rules.interface)) {
    return invalid(
        fmt::format("interface '{}' is not a valid interface name; accepted: 1-15 bytes without '/', ':' "
                    "or whitespace",
                    rules.interface));
  }
  if (!rules.egress && !rules.ingress) {
    return invalid("neither egress nor ingress is set; accepted: one or both");
  }
  if (rules.verdict == SteeringRules::Verdict::kDropRandom &&
      !(rules.dropPercent > 0 && rules.dropPercent <= 100 && std::isfinite(rules.dropPercent))) {
    return invalid(
        fmt::format("drop percent {} is out of range; accepted: more than 0 and at most 100", rules.dropPercent));
  }
  for (const auto& e : rules.exempt) {
    if ((e.address.family != AF_INET && e.address.family != AF_INET6) || e.port == 0) {
      return invalid("an exempt endpoint has no address or port; accepted: an IPv4 or IPv6 address and a port");
    }
  }
  auto combos = combinations(rules.match);
  if (!combos) {
    return invalid(combos.error());
  }
  return std::move(*combos);
}

// The words and errno for a kernel part the probe says is missing, for the rules' backend;
// nullopt when the probe finds every part the rules need.
std::optional<Failure> missingPart(SteeringBackend backend, const SteeringRules& rules) {
  const SteeringSupport s = probeSteeringSupport();
  const auto missing = [](std::string words) { return Failure{errnoCode(ENOENT), std::move(words)}; };
  if (backend == SteeringBackend::kNftables) {
    if (!s.nftables) {
      return missing("this kernel lacks nf_tables with inet base chains (CONFIG_NF_TABLES_INET)");
    }
    if (rules.verdict == SteeringRules::Verdict::kQueue && !s.nftQueue) {
      return missing(
          "this kernel lacks nftables' queue statement: nft_queue (CONFIG_NFT_QUEUE); the xtables backend's "
          "NFQUEUE target may work instead");
    }
    if (rules.verdict == SteeringRules::Verdict::kDropRandom && !s.nftNumgen) {
      return missing("this kernel lacks nftables' numgen expression: nft_numgen (CONFIG_NFT_NUMGEN)");
    }
    return std::nullopt;
  }
  if (!s.xtables) {
    return missing(
        "this kernel lacks the legacy mangle tables, or their modules are not loaded: ip_tables, "
        "ip6_tables, iptable_mangle, ip6table_mangle (CONFIG_IP_NF_MANGLE, CONFIG_IP6_NF_MANGLE); faultline "
        "loads no module itself");
  }
  if (rules.verdict == SteeringRules::Verdict::kQueue && !s.xtNfqueue) {
    return missing("this kernel lacks the NFQUEUE target: xt_NFQUEUE (CONFIG_NETFILTER_XT_TARGET_NFQUEUE)");
  }
  if (rules.verdict == SteeringRules::Verdict::kDropRandom && !s.xtStatistic) {
    return missing("this kernel lacks the statistic match: xt_statistic (CONFIG_NETFILTER_XT_MATCH_STATISTIC)");
  }
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// nftables, through libnftables' command parser.

struct NftResult {
  bool ok = false;
  std::string output;
  std::string error;
};

// Runs commands (one transaction) in the calling thread's namespace.
NftResult nftRun(const std::string& commands, bool json = false) {
  NftResult result;
  nft_ctx* ctx = nft_ctx_new(NFT_CTX_DEFAULT);
  if (ctx == nullptr) {
    result.error = "libnftables could not make a context";
    return result;
  }
  nft_ctx_buffer_output(ctx);
  nft_ctx_buffer_error(ctx);
  if (json) {
    nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON);
  }
  result.ok = nft_run_cmd_from_buffer(ctx, commands.c_str()) == 0;
  if (const char* out = nft_ctx_get_output_buffer(ctx); out != nullptr) {
    result.output = out;
  }
  if (const char* err = nft_ctx_get_error_buffer(ctx); err != nullptr) {
    result.error = err;
  }
  nft_ctx_free(ctx);
  // nft's error text ends with the failing command and a caret line: keep the first line.
  if (auto nl = result.error.find('\n'); nl != std::string::npos) {
    result.error.resize(nl);
  }
  return result;
}

std::string nftTableName(uint16_t slot) {
  return fmt::format("{}{}", kNftTablePrefix, slot);
}

// The slot a faultline name (prefix + canonical decimal < kMaxSlots) stands for.
std::optional<uint16_t> slotOf(std::string_view name, std::string_view prefix) {
  if (name.substr(0, prefix.size()) != prefix) {
    return std::nullopt;
  }
  const std::string_view digits = name.substr(prefix.size());
  if (digits.empty() || digits.size() > 3 || (digits.size() > 1 && digits[0] == '0') ||
      !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::nullopt;
  }
  const int value = std::stoi(std::string(digits));
  return value < kMaxSlots ? std::optional<uint16_t>(static_cast<uint16_t>(value)) : std::nullopt;
}

// The inet tables of this namespace whose names start with faultline's prefix.
tl::expected<std::vector<std::string>, Failure> nftFaultlineTables() {
  NftResult r = nftRun("list tables inet", true);
  if (!r.ok) {
    if (!hasNetAdmin()) {
      return fail(EPERM, "listing nftables tables needs CAP_NET_ADMIN");
    }
    return fail(ENOENT, fmt::format("cannot list nftables tables (nf_tables missing?): {}", r.error));
  }
  std::vector<std::string> names;
  try {
    const auto doc = nlohmann::json::parse(r.output.empty() ? std::string("{}") : r.output);
    if (doc.contains("nftables")) {
      for (const auto& item : doc.at("nftables")) {
        if (item.contains("table")) {
          const auto& t = item.at("table");
          const std::string name = t.value("name", "");
          if (t.value("family", "") == "inet" && name.rfind(kNftTablePrefix, 0) == 0) {
            names.push_back(name);
          }
        }
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return fail(EIO, fmt::format("cannot read nft's JSON table list: {}", e.what()));
  }
  return names;
}

std::string nftVerdict(const SteeringRules& rules) {
  switch (rules.verdict) {
    case SteeringRules::Verdict::kQueue:
      return fmt::format("queue num {} bypass", rules.queue);
    case SteeringRules::Verdict::kDrop:
      return "drop";
    case SteeringRules::Verdict::kDropRandom:
      return fmt::format("numgen random mod 1000000 < {} drop",
                         static_cast<uint32_t>(std::llround(rules.dropPercent * 10000.0)));
  }
  return "drop";
}

// The whole install as one nft script (one transaction).
std::string nftScript(const SteeringRules& rules, const std::vector<Combination>& combos) {
  const std::string table = nftTableName(rules.slot);
  std::string s = fmt::format("create table inet {}\n", table);
  // Egress: what this host sends (output) and what it forwards (forward) out of the interface, as
  // netem on the interface sees both.
  struct Hook {
    const char* chain;
    const char* hook;
    bool egress;
  };
  for (const Hook& h :
       {Hook{"egress", "output", true}, Hook{"forward", "forward", true}, Hook{"ingress", "prerouting", false}}) {
    const bool egress = h.egress;
    if (egress ? !rules.egress : !rules.ingress) {
      continue;
    }
    const char* chain = h.chain;
    s += fmt::format("add chain inet {} {} {{ type filter hook {} priority -150; policy accept; }}\n", table, chain,
                     h.hook);
    const std::string prefix = fmt::format("add rule inet {} {} ", table, chain);
    s += prefix + fmt::format("meta mark {:#x} accept\n", kInjectedMark);
    for (const auto& e : rules.exempt) {
      const char* ip = e.address.family == AF_INET ? "ip" : "ip6";
      s += prefix + fmt::format("{} daddr {} tcp dport {} accept\n", ip, cidrText(e.address), e.port);
      s += prefix + fmt::format("{} saddr {} tcp sport {} accept\n", ip, cidrText(e.address), e.port);
    }
    const std::string verdict = nftVerdict(rules);
    for (const auto& c : combos) {
      const char* ip = c.family == AF_INET ? "ip" : "ip6";
      std::string rule = fmt::format("{} \"{}\" meta nfproto {}", egress ? "oifname" : "iifname", rules.interface,
                                     c.family == AF_INET ? "ipv4" : "ipv6");
      if (c.source) {
        rule += fmt::format(" {} saddr {}", ip, cidrText(*c.source));
      }
      if (c.destination) {
        rule += fmt::format(" {} daddr {}", ip, cidrText(*c.destination));
      }
      if (c.protocol != 0) {
        rule += fmt::format(" meta l4proto {}", c.protocol);
      }
      const char* l4 = c.protocol == IPPROTO_TCP ? "tcp" : "udp";
      if (c.sourcePort) {
        rule += fmt::format(" {} sport {}", l4, *c.sourcePort);
      }
      if (c.destinationPort) {
        rule += fmt::format(" {} dport {}", l4, *c.destinationPort);
      }
      s += prefix + rule + " " + verdict + "\n";
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// xtables, through libiptc (IPv4) and libip6tc (IPv6): the same code for both, by traits.

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
  static void setAddresses(Entry& e, const std::optional<Cidr>& src, const std::optional<Cidr>& dst) {
    const auto put = [](const Cidr& c, in_addr& addr, in_addr& mask) {
      std::memcpy(&addr, c.address.data(), 4);
      mask.s_addr = c.prefixLength == 0 ? 0 : htonl(~uint32_t{0} << (32 - c.prefixLength));
    };
    if (src) {
      put(*src, e.ip.src, e.ip.smsk);
    }
    if (dst) {
      put(*dst, e.ip.dst, e.ip.dmsk);
    }
  }
  static void setProtocol(Entry& e, uint8_t proto) { e.ip.proto = proto; }
  static std::string interfaceOf(const Entry& e, bool out) {
    const char* name = out ? e.ip.outiface : e.ip.iniface;
    return std::string(name, strnlen(name, sizeof e.ip.outiface));
  }
  static void setInterface(Entry& e, const std::string& name, bool out) {
    char* dst = out ? e.ip.outiface : e.ip.iniface;
    unsigned char* mask = out ? e.ip.outiface_mask : e.ip.iniface_mask;
    std::memcpy(dst, name.data(), name.size());
    std::memset(mask, 0xFF, name.size() + 1);
  }
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
  static void setAddresses(Entry& e, const std::optional<Cidr>& src, const std::optional<Cidr>& dst) {
    const auto put = [](const Cidr& c, in6_addr& addr, in6_addr& mask) {
      std::memcpy(&addr, c.address.data(), 16);
      for (int i = 0; i < 16; ++i) {
        const int bits = std::clamp(c.prefixLength - i * 8, 0, 8);
        mask.s6_addr[i] = static_cast<uint8_t>(bits == 0 ? 0 : 0xFF << (8 - bits));
      }
    };
    if (src) {
      put(*src, e.ipv6.src, e.ipv6.smsk);
    }
    if (dst) {
      put(*dst, e.ipv6.dst, e.ipv6.dmsk);
    }
  }
  static void setProtocol(Entry& e, uint8_t proto) {
    e.ipv6.proto = proto;
    if (proto != 0) {
      e.ipv6.flags |= IP6T_F_PROTO;
    }
  }
  static std::string interfaceOf(const Entry& e, bool out) {
    const char* name = out ? e.ipv6.outiface : e.ipv6.iniface;
    return std::string(name, strnlen(name, sizeof e.ipv6.outiface));
  }
  static void setInterface(Entry& e, const std::string& name, bool out) {
    char* dst = out ? e.ipv6.outiface : e.ipv6.iniface;
    unsigned char* mask = out ? e.ipv6.outiface_mask : e.ipv6.iniface_mask;
    std::memcpy(dst, name.data(), name.size());
    std::memset(mask, 0xFF, name.size() + 1);
  }
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

// Removes every rule that jumps to chain and chain itself from the handle (not committed).
// Returns whether anything was there.
template <typename F>
tl::expected<bool, int> xtDropChain(xtc_handle* h, const std::string& chain) {
  if (F::isChain(chain.c_str(), h) == 0) {
    return false;
  }
  for (const auto& c : xtChains<F>(h)) {
    // Delete from the last rule back, so the numbers of the rules still to check stay put.
    std::vector<unsigned> jumps;
    unsigned n = 0;
    for (const auto* e = F::firstRule(c.c_str(), h); e != nullptr; e = F::nextRule(e, h), ++n) {
      const char* t = F::target(e, h);
      if (t != nullptr && chain == t) {
        jumps.push_back(n);
      }
    }
    for (auto it = jumps.rbegin(); it != jumps.rend(); ++it) {
      if (F::deleteNum(c.c_str(), *it, h) == 0) {
        return tl::unexpected(errno);
      }
    }
  }
  if (F::flush(chain.c_str(), h) == 0 || F::deleteChain(chain.c_str(), h) == 0) {
    return tl::unexpected(errno);
  }
  return true;
}

template <typename F>
VoidResult xtRemoveFamily(uint16_t slot) {
  const std::string chain = xtChainName(slot);
  XtHandle<F> table;
  if (table.h == nullptr) {
    if (errno == ENOENT || errno == ENOPROTOOPT) {
      return {};  // no mangle table, nothing of ours
    }
    return tl::unexpected(xtFailure<F>(errno, "reading the mangle table"));
  }
  auto dropped = xtDropChain<F>(table.h, chain);
  if (!dropped) {
    return tl::unexpected(xtFailure<F>(dropped.error(), fmt::format("removing chain {}", chain)));
  }
  if (*dropped && F::commit(table.h) == 0) {
    return tl::unexpected(xtFailure<F>(errno, fmt::format("removing chain {}", chain)));
  }
  XtHandle<F> check;
  if (check.h != nullptr && F::isChain(chain.c_str(), check.h) != 0) {
    return fail(EIO, fmt::format("chain {} is still in the {} mangle table after its removal", chain, F::kName));
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

// FNV-1a over bytes, continuing from h.
uint64_t fnv1a(const void* data, size_t size, uint64_t h = 0xcbf29ce484222325ULL) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) {
    h = (h ^ p[i]) * 0x100000001b3ULL;
  }
  return h;
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

// What faultline's jump rules in one family steer, by slot.
template <typename F>
void xtSteeredFamily(xtc_handle* h, std::map<uint16_t, PacketSteering::Steered>& steered) {
  for (const auto& [hook, out] : kXtHooks) {
    for (const auto* e = F::firstRule(hook, h); e != nullptr; e = F::nextRule(e, h)) {
      const char* t = F::target(e, h);
      if (t == nullptr) {
        continue;
      }
      auto slot = slotOf(t, kXtChainPrefix);
      if (!slot) {
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

// The namespace's bound queues by number, from /proc/thread-self/net/netfilter/nfnetlink_queue
// (the calling thread's namespace). No file (nfnetlink_queue not loaded): none bound.
std::map<uint16_t, QueueState> boundQueues() {
  std::map<uint16_t, QueueState> queues;
  std::ifstream file("/proc/thread-self/net/netfilter/nfnetlink_queue");
  std::string line;
  while (std::getline(file, line)) {
    // queue_num peer_portid queue_total copy_mode copy_range queue_dropped user_dropped id_sequence 1
    std::istringstream in(line);
    uint32_t number = 0, portid = 0, total = 0, mode = 0, range = 0, dropped = 0, userDropped = 0, sequence = 0;
    if (in >> number >> portid >> total >> mode >> range >> dropped >> userDropped >> sequence && number <= 0xFFFF) {
      queues[static_cast<uint16_t>(number)] = QueueState{true, total, sequence};
    }
  }
  return queues;
}

std::vector<uint16_t> servedSlots() {
  std::vector<uint16_t> slots;
  for (const auto& [number, state] : boundQueues()) {
    if (number >= kQueueBase && number < kQueueBase + kMaxSlots) {
      slots.push_back(static_cast<uint16_t>(number - kQueueBase));
    }
  }
  return slots;
}

// The document of `list table inet NAME` (JSON); nullopt when the table does not exist.
tl::expected<std::optional<nlohmann::json>, Failure> nftTableDocument(const std::string& table) {
  NftResult r = nftRun(fmt::format("list table inet {}", table), true);
  if (!r.ok) {
    auto tables = nftFaultlineTables();
    if (!tables) {
      return tl::unexpected(tables.error());
    }
    if (std::find(tables->begin(), tables->end(), table) == tables->end()) {
      return std::nullopt;
    }
    return fail(EIO, fmt::format("cannot list nftables table inet {}: {}", table, r.error));
  }
  try {
    return std::optional<nlohmann::json>(nlohmann::json::parse(r.output.empty() ? std::string("{}") : r.output));
  } catch (const nlohmann::json::exception& e) {
    return fail(EIO, fmt::format("cannot read nft's JSON listing of table inet {}: {}", table, e.what()));
  }
}

// The chains (name -> hook) and rules of a `list table` document, in listing order.
struct NftListing {
  std::vector<std::pair<std::string, std::string>> chains;
  std::vector<std::pair<std::string, const nlohmann::json*>> rules;  // chain, the rule's expr
};

NftListing nftListing(const nlohmann::json& doc) {
  NftListing listing;
  if (!doc.contains("nftables") || !doc.at("nftables").is_array()) {
    return listing;
  }
  for (const auto& item : doc.at("nftables")) {
    if (item.contains("chain")) {
      const auto& c = item.at("chain");
      listing.chains.emplace_back(c.value("name", ""), c.value("hook", ""));
    } else if (item.contains("rule")) {
      const auto& r = item.at("rule");
      if (r.contains("expr")) {
        listing.rules.emplace_back(r.value("chain", ""), &r.at("expr"));
      }
    }
  }
  return listing;
}

// The interface a rule's `oifname "X"` / `iifname "X"` names, or "".
std::string nftRuleInterface(const nlohmann::json& expr) {
  if (!expr.is_array()) {
    return "";
  }
  for (const auto& e : expr) {
    if (!e.contains("match")) {
      continue;
    }
    const auto& m = e.at("match");
    if (!m.contains("left") || !m.at("left").contains("meta") || !m.contains("right") || !m.at("right").is_string()) {
      continue;
    }
    const std::string key = m.at("left").at("meta").value("key", "");
    if (key == "oifname" || key == "iifname") {
      return m.at("right").get<std::string>();
    }
  }
  return "";
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

// A slot's state read by either backend, completed: its parts in name order (so two reads compare
// part by part) and its queue as the namespace's nfnetlink_queue lists it (run in the namespace).
SlotState finishSlotState(SlotState state, uint16_t slot) {
  std::sort(state.parts.begin(), state.parts.end(),
            [](const SteeringPart& a, const SteeringPart& b) { return a.name < b.name; });
  const auto queues = boundQueues();
  if (auto it = queues.find(static_cast<uint16_t>(kQueueBase + slot)); it != queues.end()) {
    state.queue = it->second;
  }
  return state;
}

constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ULL;
// How long a change waits for another program's xtables lock (iptables -w waits for ever).
constexpr std::chrono::milliseconds kXtablesLockWait{5000};

// ---------------------------------------------------------------------------------------------
// The backends.

class Namespace {
 public:
  explicit Namespace(int fd) : fd_(fd) {}
  Namespace(const Namespace&) = delete;
  Namespace& operator=(const Namespace&) = delete;
  ~Namespace() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  [[nodiscard]] int fd() const { return fd_; }

 private:
  int fd_;
};

VoidResult voidOnError(int e) {
  return fail(e, fmt::format("cannot enter the network namespace: {}", std::strerror(e)));
}

tl::expected<PacketSteering::Owned, std::error_code> ownedOnError(int e) {
  return tl::unexpected(errnoCode(e));
}

PacketSteering::Owned sortOwned(const std::vector<std::string>& names, std::string_view prefix) {
  PacketSteering::Owned owned;
  for (const auto& n : names) {
    if (auto slot = slotOf(n, prefix)) {
      owned.slots.push_back(*slot);
    } else {
      owned.strays.push_back(n);
    }
  }
  std::sort(owned.slots.begin(), owned.slots.end());
  owned.slots.erase(std::unique(owned.slots.begin(), owned.slots.end()), owned.slots.end());
  std::sort(owned.strays.begin(), owned.strays.end());
  owned.strays.erase(std::unique(owned.strays.begin(), owned.strays.end()), owned.strays.end());
  return owned;
}

class NftSteering final : public PacketSteering {
 public:
  explicit NftSteering(int fd) : ns_(fd) {}

  tl::expected<void, Failure> install(const SteeringRules& rules) override {
    auto combos = checkRules(rules);
    if (!combos) {
      return tl::unexpected(combos.error());
    }
    const std::string script = nftScript(rules, *combos);
    const std::string table = nftTableName(rules.slot);
    auto result = onThreadIn<VoidResult>(
        ns_.fd(),
        [&]() -> VoidResult {
          auto before = nftFaultlineTables();
          if (!before) {
            return tl::unexpected(before.error());
          }
          if (std::find(before->begin(), before->end(), table) != before->end()) {
            return fail(EEXIST,
                        fmt::format("nftables table inet {} exists already: slot {} is taken", table, rules.slot));
          }
          NftResult r = nftRun(script);
          if (r.ok) {
            return {};
          }
          if (!hasNetAdmin()) {
            return fail(EPERM, "changing nftables rules needs CAP_NET_ADMIN");
          }
          return fail(EIO, fmt::format("nft refused table inet {}: {}", table, r.error));
        },
        voidOnError);
    if (!result &&
        (result.error().first == std::errc::io_error || result.error().first == std::errc::no_such_file_or_directory)) {
      // The transaction is atomic: nothing of it stays. Name a missing kernel part if there is one.
      if (auto missing = missingPart(SteeringBackend::kNftables, rules)) {
        return tl::unexpected(*missing);
      }
    }
    return result;
  }

  tl::expected<void, Failure> remove(uint16_t slot) override {
    if (slot >= kMaxSlots) {
      return fail(EINVAL, fmt::format("slot {} is out of range; accepted: 0 to {}", slot, kMaxSlots - 1));
    }
    const std::string table = nftTableName(slot);
    return onThreadIn<VoidResult>(
        ns_.fd(),
        [&]() -> VoidResult {
          auto tables = nftFaultlineTables();
          if (!tables) {
            // No nf_tables at all: nothing of ours can be there.
            return tables.error().first == std::errc::no_such_file_or_directory ? VoidResult{}
                                                                                : tl::unexpected(tables.error());
          }
          if (std::find(tables->begin(), tables->end(), table) == tables->end()) {
            return {};
          }
          NftResult r = nftRun(fmt::format("delete table inet {}\n", table));
          auto after = nftFaultlineTables();
          if (after && std::find(after->begin(), after->end(), table) == after->end()) {
            return {};
          }
          if (!hasNetAdmin()) {
            return fail(EPERM, "removing nftables rules needs CAP_NET_ADMIN");
          }
          return fail(EIO, fmt::format("nftables table inet {} is still there after its removal{}{}", table,
                                       r.ok ? "" : ": ", r.error));
        },
        voidOnError);
  }

  tl::expected<Owned, std::error_code> owned() override {
    return onThreadIn<tl::expected<Owned, std::error_code>>(
        ns_.fd(),
        []() -> tl::expected<Owned, std::error_code> {
          auto tables = nftFaultlineTables();
          if (!tables) {
            return tl::unexpected(tables.error().first);
          }
          Owned owned = sortOwned(*tables, kNftTablePrefix);
          for (const uint16_t slot : owned.slots) {
            auto doc = nftTableDocument(nftTableName(slot));
            if (!doc || !*doc) {
              continue;  // gone meanwhile, or unreadable: its slot is still taken
            }
            const NftListing listing = nftListing(**doc);
            Steered steered;
            steered.slot = slot;
            for (const auto& [chain, hook] : listing.chains) {
              steered.egress = steered.egress || hook == "output";
              steered.ingress = steered.ingress || hook == "prerouting";
            }
            for (const auto& [chain, expr] : listing.rules) {
              if (steered.interface = nftRuleInterface(*expr); !steered.interface.empty()) {
                break;
              }
            }
            owned.steered.push_back(std::move(steered));
          }
          owned.served = servedSlots();
          return owned;
        },
        ownedOnError);
  }

  tl::expected<SlotState, std::error_code> inspect(uint16_t slot) override {
    if (slot >= kMaxSlots) {
      return tl::unexpected(errnoCode(EINVAL));
    }
    return onThreadIn<tl::expected<SlotState, std::error_code>>(
        ns_.fd(),
        [slot]() -> tl::expected<SlotState, std::error_code> {
          const std::string table = nftTableName(slot);
          auto doc = nftTableDocument(table);
          if (!doc) {
            return tl::unexpected(doc.error().first);
          }
          SlotState state;
          if (*doc) {
            const NftListing listing = nftListing(**doc);
            state.parts.push_back(SteeringPart{fmt::format("nftables table inet {}", table), listing.chains.size(), 0});
            for (const auto& [chain, hook] : listing.chains) {
              SteeringPart part{fmt::format("nftables chain {} of table inet {}", chain, table), 0, kFnvBasis};
              for (const auto& [ruleChain, expr] : listing.rules) {
                if (ruleChain == chain) {
                  ++part.rules;
                  const std::string text = expr->dump();
                  part.digest = fnv1a(text.data(), text.size(), part.digest);
                }
              }
              state.parts.push_back(std::move(part));
            }
          }
          return finishSlotState(std::move(state), slot);
        },
        [](int e) -> tl::expected<SlotState, std::error_code> { return tl::unexpected(errnoCode(e)); });
  }

 private:
  Namespace ns_;
};

class XtSteering final : public PacketSteering {
 public:
  explicit XtSteering(int fd) : ns_(fd) {}

  tl::expected<void, Failure> install(const SteeringRules& rules) override {
    auto combos = checkRules(rules);
    if (!combos) {
      return tl::unexpected(combos.error());
    }
    const XtablesLock lock(kXtablesLockWait);
    auto result = onThreadIn<VoidResult>(
        ns_.fd(),
        [&]() -> VoidResult {
          // One commit per family; IPv4 first. A failure of IPv6 takes IPv4's commit back.
          if (auto r = xtInstallFamily<Ip4>(rules, *combos); !r) {
            return r;
          }
          auto r6 = xtInstallFamily<Ip6>(rules, *combos);
          if (!r6) {
            if (auto undo = xtRemoveFamily<Ip4>(rules.slot); !undo) {
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

  tl::expected<void, Failure> remove(uint16_t slot) override {
    if (slot >= kMaxSlots) {
      return fail(EINVAL, fmt::format("slot {} is out of range; accepted: 0 to {}", slot, kMaxSlots - 1));
    }
    const XtablesLock lock(kXtablesLockWait);
    return onThreadIn<VoidResult>(
        ns_.fd(),
        [&]() -> VoidResult {
          auto r4 = xtRemoveFamily<Ip4>(slot);
          auto r6 = xtRemoveFamily<Ip6>(slot);  // even when IPv4 failed: remove what can go
          return r4 ? r6 : r4;
        },
        voidOnError);
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
    if (slot >= kMaxSlots) {
      return tl::unexpected(errnoCode(EINVAL));
    }
    return onThreadIn<tl::expected<SlotState, std::error_code>>(
        ns_.fd(),
        [slot]() -> tl::expected<SlotState, std::error_code> {
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
          return finishSlotState(std::move(state), slot);
        },
        [](int e) -> tl::expected<SlotState, std::error_code> { return tl::unexpected(errnoCode(e)); });
  }

 private:
  Namespace ns_;
};

// ---------------------------------------------------------------------------------------------
// The probe.

// Binds queue over nfnetlink (NFQNL_CFG_CMD_BIND) and unbinds it by closing the socket.
bool canBindQueue(uint16_t queue) {
  const int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) {
    return false;
  }
  struct Request {
    nlmsghdr header;
    nfgenmsg message;
    nlattr attribute;
    nfqnl_msg_config_cmd command;
  };
  bool bound = false;
  for (int attempt = 0; attempt < 3 && !bound; ++attempt) {  // EAGAIN: the kernel loaded the module
    Request request{};
    request.header.nlmsg_len = sizeof request;
    request.header.nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG;
    request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    request.header.nlmsg_seq = static_cast<uint32_t>(attempt + 1);
    request.message.nfgen_family = AF_UNSPEC;
    request.message.version = NFNETLINK_V0;
    request.message.res_id = htons(queue);
    request.attribute.nla_len = sizeof(nlattr) + sizeof(nfqnl_msg_config_cmd);
    request.attribute.nla_type = NFQA_CFG_CMD;
    request.command.command = NFQNL_CFG_CMD_BIND;
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd, &request, sizeof request, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
      break;
    }
    alignas(nlmsghdr) char reply[512];
    const ssize_t n = ::recv(fd, reply, sizeof reply, 0);
    if (n < static_cast<ssize_t>(NLMSG_LENGTH(sizeof(nlmsgerr)))) {
      break;
    }
    const auto* h = reinterpret_cast<const nlmsghdr*>(reply);
    if (h->nlmsg_type != NLMSG_ERROR) {
      break;
    }
    const auto* err = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
    bound = err->error == 0;
    if (err->error != -EAGAIN) {
      break;
    }
  }
  ::close(fd);
  return bound;
}

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

std::string_view steeringBackendName(SteeringBackend backend) {
  return backend == SteeringBackend::kNftables ? "nftables" : "xtables";
}

SteeringSupport probeSteeringSupport() {
  SteeringSupport support;
  auto probe = [&support] {
    // Only this short-lived thread moves; it and its namespace are gone after join().
    if (::unshare(CLONE_NEWNET) != 0) {
      return;
    }
    support.nftables = nftRun(
                           "add table inet faultline-probe\n"
                           "add chain inet faultline-probe c { type filter hook output priority -150; "
                           "policy accept; }\n")
                           .ok;
    if (support.nftables) {
      support.nftQueue =
          nftRun(fmt::format("add rule inet faultline-probe c meta l4proto udp queue num {} bypass\n", kQueueBase)).ok;
      support.nftNumgen = nftRun("add rule inet faultline-probe c numgen random mod 100 < 1 drop\n").ok;
    }
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
    support.nfqueue = canBindQueue(kQueueBase);
  };
  try {
    std::thread worker(probe);
    worker.join();
  } catch (const std::system_error&) {
    // No thread, no probe: everything stays false, and chooseBackend() says what is missing.
  }
  return support;
}

tl::expected<SteeringBackend, std::string> chooseBackend(const SteeringSupport& s, bool needsQueue) {
  if (needsQueue) {
    if (!s.nfqueue) {
      return tl::unexpected(std::string(
          "this kernel cannot bind a packet queue: nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE) is missing"));
    }
    if (s.nftables && s.nftQueue) {
      return SteeringBackend::kNftables;
    }
    if (s.xtables && s.xtNfqueue) {
      return SteeringBackend::kXtables;
    }
    return tl::unexpected(fmt::format(
        "this kernel can steer no packet to a queue: nftables' queue statement needs nf_tables ({}) and nft_queue "
        "(CONFIG_NFT_QUEUE, {}); the xtables NFQUEUE target needs the legacy mangle tables ({}) and xt_NFQUEUE "
        "(CONFIG_NETFILTER_XT_TARGET_NFQUEUE, {})",
        s.nftables ? "present" : "missing", s.nftQueue ? "present" : "missing", s.xtables ? "present" : "missing",
        s.xtNfqueue ? "present" : "missing"));
  }
  if (s.nftables && s.nftNumgen) {
    return SteeringBackend::kNftables;
  }
  if (s.xtables && s.xtStatistic) {
    return SteeringBackend::kXtables;
  }
  if (s.nftables) {
    return SteeringBackend::kNftables;
  }
  if (s.xtables) {
    return SteeringBackend::kXtables;
  }
  return tl::unexpected(std::string(
      "this kernel has neither nftables (CONFIG_NF_TABLES_INET) nor the legacy mangle tables (CONFIG_IP_NF_MANGLE, "
      "CONFIG_IP6_NF_MANGLE)"));
}

std::vector<std::string> steeringChanges(const SlotState& installed, const SlotState& now) {
  const auto find = [&](const std::string& name) -> const SteeringPart* {
    auto it = std::find_if(now.parts.begin(), now.parts.end(), [&](const SteeringPart& p) { return p.name == name; });
    return it == now.parts.end() ? nullptr : &*it;
  };
  std::vector<std::string> changes;
  std::vector<std::string> gone;
  for (const auto& part : installed.parts) {
    const SteeringPart* current = find(part.name);
    if (current == nullptr) {
      gone.push_back(part.name);
    } else if (current->rules != part.rules) {
      changes.push_back(fmt::format("the {} now has {} {}, not the {} installed (someone changed it)", part.name,
                                    current->rules, current->rules == 1 ? "rule" : "rules", part.rules));
    } else if (current->digest != part.digest) {
      changes.push_back(fmt::format("the rules of the {} are not those installed (someone replaced them)", part.name));
    }
  }
  if (!installed.parts.empty() && gone.size() == installed.parts.size()) {
    return {
        fmt::format("none of its rules is left: {} {} gone (someone removed them: nft, iptables, a "
                    "faultline-agent revert-all, or faultline's watchdog while this agent was stopped)",
                    fmt::join(gone, ", "), gone.size() == 1 ? "is" : "are")};
  }
  std::vector<std::string> out;
  for (const auto& name : gone) {
    out.push_back(name.find("jump rule") != std::string::npos
                      ? fmt::format("the {} is gone (someone deleted it): packets no longer reach the chain", name)
                      : fmt::format("the {} is gone (someone deleted it)", name));
  }
  out.insert(out.end(), changes.begin(), changes.end());
  return out;
}

XtablesLock::XtablesLock(std::chrono::milliseconds wait) {
  const char* path = std::getenv("XTABLES_LOCKFILE");  // as iptables(8) reads it
  const int fd =
      ::open(path != nullptr && *path != '\0' ? path : "/run/xtables.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) {
    return;
  }
  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (;;) {
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) {
      fd_ = fd;
      return;
    }
    if ((errno != EWOULDBLOCK && errno != EINTR) || std::chrono::steady_clock::now() >= deadline) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  ::close(fd);
}

XtablesLock::~XtablesLock() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

tl::expected<std::unique_ptr<PacketSteering>, std::error_code> openPacketSteering(SteeringBackend backend,
                                                                                  const std::string& netns) {
  int fd = -1;
  if (!netns.empty()) {
    fd = ::open(netns.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return tl::unexpected(errnoCode(errno));
    }
    // setns() on a short-lived thread: EINVAL when fd is no network namespace.
    const int entered = onThreadIn<int>(
        fd, [] { return 0; }, [](int e) { return e; });
    if (entered != 0) {
      ::close(fd);
      return tl::unexpected(errnoCode(entered));
    }
  }
  if (backend == SteeringBackend::kNftables) {
    return std::make_unique<NftSteering>(fd);
  }
  return std::make_unique<XtSteering>(fd);
}

}  // namespace faultline::kernel
