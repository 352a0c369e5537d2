// Saving and restoring an interface's whole tc tree: the pure part (what can be restored, in
// which order, with which bytes, and the messages), kept apart from qdisc_table.cpp's socket code.
#include "agent/kernel/qdisc_tree.h"

#include <arpa/inet.h>
#include <linux/netlink.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <tuple>

#include <fmt/format.h>

#include "agent/kernel/qdisc_table.h"

namespace faultline::kernel {
namespace {

using Bytes = std::vector<uint8_t>;

tl::unexpected<std::error_code> fail(int e) {
  return tl::unexpected(std::error_code(e, std::generic_category()));
}

constexpr size_t align4(size_t n) {
  return (n + 3) & ~size_t{3};
}

// One attribute of a TCA_OPTIONS payload: type (flags stripped) and the payload's place.
struct Attr {
  uint16_t type = 0;
  size_t at = 0;   // offset of the attribute header
  size_t len = 0;  // payload length
};

// The attributes of a flat nest; nullopt when it does not parse.
std::optional<std::vector<Attr>> attributes(std::span<const uint8_t> bytes) {
  std::vector<Attr> out;
  size_t at = 0;
  while (at + sizeof(nlattr) <= bytes.size()) {
    nlattr a{};
    std::memcpy(&a, bytes.data() + at, sizeof(a));
    if (a.nla_len < sizeof(nlattr) || at + a.nla_len > bytes.size()) {
      return std::nullopt;
    }
    out.push_back(Attr{static_cast<uint16_t>(a.nla_type & NLA_TYPE_MASK), at, a.nla_len - sizeof(nlattr)});
    at += align4(a.nla_len);
  }
  if (at < bytes.size()) {
    return std::nullopt;
  }
  return out;
}

std::optional<uint32_t> u32At(std::span<const uint8_t> bytes, const Attr& a) {
  if (a.len < sizeof(uint32_t)) {
    return std::nullopt;
  }
  uint32_t v = 0;
  std::memcpy(&v, bytes.data() + a.at + sizeof(nlattr), sizeof(v));
  return v;
}

std::optional<uint32_t> findU32(std::span<const uint8_t> bytes, uint16_t type) {
  auto attrs = attributes(bytes);
  if (!attrs) {
    return std::nullopt;
  }
  for (const auto& a : *attrs) {
    if (a.type == type) {
      return u32At(bytes, a);
    }
  }
  return std::nullopt;
}

bool hasAttr(std::span<const uint8_t> bytes, uint16_t type) {
  auto attrs = attributes(bytes);
  return attrs && std::any_of(attrs->begin(), attrs->end(), [type](const Attr& a) { return a.type == type; });
}

// The smallest µs value that codel's (u64)us * 1000 >> 10 turns into the internal value t whose
// dump (t << 10) / 1000 is dumped; dumped itself when no t dumps as that value.
uint32_t codelMicros(uint32_t dumped) {
  const uint64_t t = (uint64_t{dumped} * 1000 + 1023) / 1024;
  if (t * 1024 / 1000 != dumped) {
    return dumped;
  }
  const uint64_t us = (t * 1024 + 999) / 1000;
  return us > std::numeric_limits<uint32_t>::max() ? dumped : static_cast<uint32_t>(us);
}

// The options with the attributes drop() picks left out, and edit() applied to each kept one.
template <typename Drop, typename Edit>
Bytes rewrite(std::span<const uint8_t> bytes, Drop drop, Edit edit) {
  auto attrs = attributes(bytes);
  if (!attrs) {
    return Bytes(bytes.begin(), bytes.end());  // not a flat nest (e.g. netem's struct first): as is
  }
  Bytes out;
  for (const auto& a : *attrs) {
    if (drop(a.type)) {
      continue;
    }
    const size_t start = out.size();
    const size_t whole = std::min(align4(a.len + sizeof(nlattr)), bytes.size() - a.at);
    out.insert(out.end(), bytes.begin() + static_cast<std::ptrdiff_t>(a.at),
               bytes.begin() + static_cast<std::ptrdiff_t>(a.at + whole));
    out.resize(start + align4(whole), 0);
    edit(a.type, std::span<uint8_t>(out.data() + start + sizeof(nlattr), a.len));
  }
  return out;
}

void putU32(std::span<uint8_t> payload, uint32_t v) {
  if (payload.size() >= sizeof(v)) {
    std::memcpy(payload.data(), &v, sizeof(v));
  }
}

uint32_t getU32(std::span<const uint8_t> payload) {
  uint32_t v = 0;
  if (payload.size() >= sizeof(v)) {
    std::memcpy(&v, payload.data(), sizeof(v));
  }
  return v;
}

bool isCodel(std::string_view kind) {
  return kind == "codel" || kind == "fq_codel";
}

// Options with what the kernel counts (not configures) left out or zeroed, for comparing dumps.
Bytes comparable(TcObjectType type, std::string_view kind, std::span<const uint8_t> options) {
  if (type == TcObjectType::kQdisc && kind == "htb") {
    return rewrite(
        options, [](uint16_t) { return false; },
        [](uint16_t t, std::span<uint8_t> p) {
          if (t == TCA_HTB_INIT && p.size() >= sizeof(tc_htb_glob)) {
            tc_htb_glob g{};
            std::memcpy(&g, p.data(), sizeof(g));
            g.direct_pkts = 0;
            std::memcpy(p.data(), &g, sizeof(g));
          }
        });
  }
  if (type == TcObjectType::kFilter && kind == "u32") {
    return rewrite(
        options, [](uint16_t t) { return t == TCA_U32_PCNT || t == TCA_U32_PAD; }, [](uint16_t, std::span<uint8_t>) {});
  }
  return Bytes(options.begin(), options.end());
}

std::string handleText(uint32_t handle) {
  if (handle == TC_H_ROOT) {
    return "root";
  }
  const uint32_t minor = handle & 0xFFFF;
  return minor != 0 ? fmt::format("{:x}:{:x}", handle >> 16, minor) : fmt::format("{:x}:", handle >> 16);
}

bool classesComeWithQdisc(std::string_view kind) {
  return kind == "prio" || kind == "mq" || kind == "tbf" || kind == "netem";
}

bool restorableQdiscKind(std::string_view kind) {
  return restorability(kind) == Restorability::kExact || kind == "htb" || classesComeWithQdisc(kind);
}

// A filter priority's own entry (tc's "filter parent 1: protocol ip pref 3 u32 chain 0"), which
// the kernel creates with the first filter of that priority.
bool isPriorityEntry(const TcObject& o) {
  return o.type == TcObjectType::kFilter && o.handle == 0 && o.options.empty();
}

// A u32 hash table entry ("fh 800: ht divisor 1").
bool isU32Table(const TcObject& o) {
  return o.type == TcObjectType::kFilter && o.kind == "u32" && hasAttr(o.options, TCA_U32_DIVISOR);
}

std::tuple<uint32_t, uint32_t, uint32_t> filterGroup(const TcObject& o) {
  return {o.parent, o.info >> 16, o.info & 0xFFFF};
}

Bytes message(uint16_t type, uint16_t flags, const tcmsg& tcm, const std::vector<std::pair<uint16_t, Bytes>>& attrs) {
  Bytes out(NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(tcmsg)), 0);
  std::memcpy(out.data() + NLMSG_HDRLEN, &tcm, sizeof(tcm));
  for (const auto& [t, payload] : attrs) {
    nlattr a{};
    a.nla_len = static_cast<uint16_t>(sizeof(nlattr) + payload.size());
    a.nla_type = t;
    const size_t at = out.size();
    out.resize(at + align4(a.nla_len), 0);
    std::memcpy(out.data() + at, &a, sizeof(a));
    if (!payload.empty()) {
      std::memcpy(out.data() + at + sizeof(nlattr), payload.data(), payload.size());
    }
  }
  nlmsghdr h{};
  h.nlmsg_len = static_cast<uint32_t>(out.size());
  h.nlmsg_type = type;
  h.nlmsg_flags = flags;
  std::memcpy(out.data(), &h, sizeof(h));
  return out;
}

}  // namespace

bool hasFlowClasses(std::string_view kind) {
  return kind == "fq_codel" || kind == "sfq" || kind == "cake" || kind == "fq" || kind == "fq_pie" || kind == "hhf" ||
         kind == "sfb";
}

std::string_view tcObjectTypeName(TcObjectType type) {
  switch (type) {
    case TcObjectType::kQdisc:
      return "qdisc";
    case TcObjectType::kClass:
      return "class";
    case TcObjectType::kFilter:
      return "filter";
  }
  return "object";
}

std::string tcObjectText(const TcObject& o) {
  if (o.type == TcObjectType::kFilter) {
    const uint32_t h = o.handle;
    const std::string handle =
        o.kind == "u32" ? fmt::format("{:x}:{:x}:{:x}", h >> 20, (h >> 12) & 0xFF, h & 0xFFF) : fmt::format("{:x}", h);
    return fmt::format("filter {} {} parent {} prio {} protocol 0x{:04x}", o.kind, handle, handleText(o.parent),
                       o.info >> 16, ntohs(static_cast<uint16_t>(o.info & 0xFFFF)));
  }
  return fmt::format("{} {} {} parent {}", tcObjectTypeName(o.type), o.kind, handleText(o.handle),
                     handleText(o.parent));
}

std::vector<uint8_t> restoreOptions(TcObjectType type, std::string_view kind, std::span<const uint8_t> dumped) {
  if (type == TcObjectType::kQdisc && kind == "htb") {
    return rewrite(
        dumped, [](uint16_t) { return false; },
        [](uint16_t t, std::span<uint8_t> p) {
          if (t == TCA_HTB_INIT) {
            putU32(p, getU32(p) >> 16);  // version 0x30011 -> 3
          }
        });
  }
  if (type == TcObjectType::kQdisc && isCodel(kind)) {
    const bool fq = kind == "fq_codel";
    return rewrite(
        dumped, [](uint16_t) { return false; },
        [fq](uint16_t t, std::span<uint8_t> p) {
          const bool time =
              fq ? (t == TCA_FQ_CODEL_TARGET || t == TCA_FQ_CODEL_INTERVAL || t == TCA_FQ_CODEL_CE_THRESHOLD)
                 : (t == TCA_CODEL_TARGET || t == TCA_CODEL_INTERVAL || t == TCA_CODEL_CE_THRESHOLD);
          if (time) {
            putU32(p, codelMicros(getU32(p)));
          }
        });
  }
  if (type == TcObjectType::kFilter && kind == "u32") {
    // The kernel dumps its own status in TCA_U32_FLAGS (TCA_CLS_FLAGS_NOT_IN_HW, IN_HW) and
    // refuses it on input (EINVAL): only SKIP_HW and SKIP_SW go back.
    constexpr uint32_t kUserFlags = TCA_CLS_FLAGS_SKIP_HW | TCA_CLS_FLAGS_SKIP_SW;
    return rewrite(
        dumped,
        [&](uint16_t t) {
          return t == TCA_U32_PCNT || t == TCA_U32_PAD ||
                 (t == TCA_U32_FLAGS && (findU32(dumped, TCA_U32_FLAGS).value_or(0) & kUserFlags) == 0);
        },
        [](uint16_t t, std::span<uint8_t> p) {
          if (t == TCA_U32_FLAGS) {
            putU32(p, getU32(p) & kUserFlags);
          }
        });
  }
  return Bytes(dumped.begin(), dumped.end());
}

std::optional<std::string> treeRefusal(const QdiscInfo& root, const std::vector<TcObject>& below) {
  if (!restorableQdiscKind(root.kind)) {
    return fmt::format("its root qdisc {} {} is a kind faultline cannot save and restore exactly", root.kind,
                       handleText(root.handle));
  }
  std::map<uint32_t, std::string> qdiscKinds{{root.handle & 0xFFFF0000, root.kind}};
  for (const auto& o : below) {
    if (o.type == TcObjectType::kQdisc) {
      if (o.handle != 0 && !restorableQdiscKind(o.kind)) {
        return fmt::format("its {} is a kind faultline cannot save and restore exactly", tcObjectText(o));
      }
      qdiscKinds[o.handle & 0xFFFF0000] = o.kind;
    }
  }
  // Per qdisc (u32 numbers its hash tables per qdisc, across its classes): the tables seen.
  std::map<uint32_t, std::set<uint32_t>> tables;
  std::map<std::tuple<uint32_t, uint32_t, uint32_t>, uint32_t> tableOfGroup;
  std::map<std::pair<uint32_t, uint32_t>, uint32_t> u32Parents;
  for (const auto& o : below) {
    if (o.type == TcObjectType::kClass) {
      auto q = qdiscKinds.find(o.handle & 0xFFFF0000);
      const std::string kind = q == qdiscKinds.end() ? o.kind : q->second;
      if (kind != "htb" && !classesComeWithQdisc(kind)) {
        return fmt::format("its {} belongs to a {} qdisc, whose classes faultline cannot restore", tcObjectText(o),
                           kind);
      }
    } else if (o.type == TcObjectType::kFilter) {
      if (o.chain != 0) {
        return fmt::format("its {} is in chain {}; faultline restores filters in chain 0 only", tcObjectText(o),
                           o.chain);
      }
      if (isPriorityEntry(o)) {
        continue;
      }
      if (o.kind != "u32") {
        return fmt::format(
            "its {} is a {} filter; faultline restores u32 filters only (without actions, police, link or "
            "hashing tables)",
            tcObjectText(o), o.kind);
      }
      if (!attributes(o.options)) {
        return fmt::format("its {} has options faultline cannot read", tcObjectText(o));
      }
      // u32 keeps the tables of one qdisc together and dumps a priority's tables under every
      // parent of that qdisc using the priority: which parent one belongs to is lost.
      auto [seen, fresh] = u32Parents.emplace(std::make_pair(o.parent & 0xFFFF0000, o.handle), o.parent);
      if (!fresh && seen->second != o.parent) {
        return fmt::format(
            "its {} shows under two parents (u32 filters of one priority at two classes of one "
            "qdisc), which faultline cannot tell apart",
            tcObjectText(o));
      }
      if (hasAttr(o.options, TCA_U32_ACT) || hasAttr(o.options, TCA_U32_POLICE)) {
        return fmt::format("its {} has actions or police, which faultline cannot restore", tcObjectText(o));
      }
      if (hasAttr(o.options, TCA_U32_LINK)) {
        return fmt::format("its {} links to another hash table, which faultline cannot restore", tcObjectText(o));
      }
      if (isU32Table(o)) {
        if (findU32(o.options, TCA_U32_DIVISOR).value_or(0) != 1) {
          return fmt::format("its {} is a u32 hashing table (divisor > 1), which faultline cannot restore",
                             tcObjectText(o));
        }
        auto [it, added] = tableOfGroup.emplace(filterGroup(o), o.handle);
        if (!added) {
          return fmt::format("its {} is a second u32 hash table of one priority, which faultline cannot restore",
                             tcObjectText(o));
        }
        tables[o.parent & 0xFFFF0000].insert(o.handle);
      }
    }
  }
  for (const auto& o : below) {
    if (o.type != TcObjectType::kFilter || o.kind != "u32" || isPriorityEntry(o) || isU32Table(o)) {
      continue;
    }
    auto table = tableOfGroup.find(filterGroup(o));
    if (table == tableOfGroup.end() || findU32(o.options, TCA_U32_HASH) != table->second) {
      return fmt::format(
          "its {} sits in a u32 hash table other than its priority's own, which faultline cannot "
          "restore",
          tcObjectText(o));
    }
  }
  // The kernel numbers a qdisc's u32 tables 800:, 801:, ... in the order their priorities are
  // created; restoring in that order gives the same numbers only when none is missing.
  for (const auto& [major, ids] : tables) {
    uint32_t expected = 0x80000000;
    for (uint32_t id : ids) {
      if (id != expected) {
        return fmt::format(
            "its u32 filters below {} use hash table {:x}: where {:x}: was expected (a priority was deleted "
            "earlier), which faultline cannot re-create",
            handleText(major), id >> 20, expected >> 20);
      }
      expected += 0x00100000;
    }
  }
  return std::nullopt;
}

std::vector<TcObject> restoreOrder(const QdiscInfo& root, const std::vector<TcObject>& below) {
  std::vector<TcObject> out;
  std::set<uint32_t> present{root.handle & 0xFFFF0000};
  std::set<uint32_t> implicitMajors;  // qdiscs whose classes come with them
  if (classesComeWithQdisc(root.kind)) {
    implicitMajors.insert(root.handle & 0xFFFF0000);
  }
  std::map<uint32_t, std::string> qdiscKinds{{root.handle & 0xFFFF0000, root.kind}};
  for (const auto& o : below) {
    if (o.type == TcObjectType::kQdisc && o.handle != 0) {
      qdiscKinds[o.handle & 0xFFFF0000] = o.kind;
    }
  }
  std::vector<const TcObject*> pending;
  for (const auto& o : below) {
    if (o.type == TcObjectType::kQdisc && o.handle != 0) {
      pending.push_back(&o);
    } else if (o.type == TcObjectType::kClass) {
      auto q = qdiscKinds.find(o.handle & 0xFFFF0000);
      if (q == qdiscKinds.end() || !classesComeWithQdisc(q->second)) {
        pending.push_back(&o);
      }
    }
  }
  // A top-level class is dumped with parent TC_H_ROOT: its parent is its own qdisc.
  const auto parentPresent = [&](const TcObject& o) {
    const uint32_t parent =
        o.type == TcObjectType::kClass && o.parent == TC_H_ROOT ? (o.handle & 0xFFFF0000) : o.parent;
    return present.contains(parent) || implicitMajors.contains(parent & 0xFFFF0000);
  };
  bool progress = true;
  while (!pending.empty() && progress) {
    progress = false;
    std::vector<const TcObject*> later;
    // Classes first within a wave: a class's qdisc exists, its children may wait for it.
    for (const auto* o : pending) {
      if (o->type == TcObjectType::kClass && parentPresent(*o)) {
        out.push_back(*o);
        present.insert(o->handle);
        progress = true;
      } else {
        later.push_back(o);
      }
    }
    pending.swap(later);
    later.clear();
    for (const auto* o : pending) {
      if (o->type == TcObjectType::kQdisc && parentPresent(*o)) {
        out.push_back(*o);
        present.insert(o->handle & 0xFFFF0000);
        if (classesComeWithQdisc(o->kind)) {
          implicitMajors.insert(o->handle & 0xFFFF0000);
        }
        progress = true;
      } else {
        later.push_back(o);
      }
    }
    pending.swap(later);
  }
  for (const auto* o : pending) {
    out.push_back(*o);  // a parent that never appeared: its request fails and says so
  }
  // Filters: per qdisc in the order of their u32 tables (the kernel numbers them in creation order),
  // then by handle (u32 keeps a table's nodes sorted by handle anyway).
  std::map<std::tuple<uint32_t, uint32_t, uint32_t>, uint32_t> tableOfGroup;
  for (const auto& o : below) {
    if (isU32Table(o)) {
      tableOfGroup.emplace(filterGroup(o), o.handle);
    }
  }
  std::vector<TcObject> filters;
  for (const auto& o : below) {
    if (o.type == TcObjectType::kFilter && !isPriorityEntry(o) && !isU32Table(o)) {
      filters.push_back(o);
    }
  }
  const auto key = [&](const TcObject& o) {
    auto t = tableOfGroup.find(filterGroup(o));
    const uint32_t table = t == tableOfGroup.end() ? std::numeric_limits<uint32_t>::max() : t->second;
    return std::make_tuple(o.parent & 0xFFFF0000, table, o.parent, o.info, o.handle);
  };
  std::stable_sort(filters.begin(), filters.end(),
                   [&](const TcObject& a, const TcObject& b) { return key(a) < key(b); });
  out.insert(out.end(), filters.begin(), filters.end());
  return out;
}

bool sameTree(const std::vector<TcObject>& a, const std::vector<TcObject>& b) {
  if (a.size() != b.size()) {
    return false;
  }
  const auto canonical = [](const std::vector<TcObject>& objects) {
    std::vector<TcObject> out;
    for (const auto& o : objects) {
      TcObject c = o;
      c.options = comparable(o.type, o.kind, o.options);
      out.push_back(std::move(c));
    }
    std::sort(out.begin(), out.end(), [](const TcObject& x, const TcObject& y) {
      return std::tie(x.type, x.parent, x.info, x.handle, x.kind, x.options) <
             std::tie(y.type, y.parent, y.info, y.handle, y.kind, y.options);
    });
    return out;
  };
  return canonical(a) == canonical(b);
}

bool sameQdiscOptions(std::string_view kind, std::span<const uint8_t> a, std::span<const uint8_t> b) {
  return comparable(TcObjectType::kQdisc, kind, a) == comparable(TcObjectType::kQdisc, kind, b);
}

tl::expected<std::vector<uint8_t>, std::error_code> buildDumpClassesRequest(int ifindex) {
  tcmsg tcm{};
  tcm.tcm_family = AF_UNSPEC;
  tcm.tcm_ifindex = ifindex;
  return message(RTM_GETTCLASS, NLM_F_REQUEST | NLM_F_DUMP, tcm, {});
}

tl::expected<std::vector<uint8_t>, std::error_code> buildDumpFiltersRequest(int ifindex, uint32_t parent) {
  tcmsg tcm{};
  tcm.tcm_family = AF_UNSPEC;
  tcm.tcm_ifindex = ifindex;
  tcm.tcm_parent = parent;
  return message(RTM_GETTFILTER, NLM_F_REQUEST | NLM_F_DUMP, tcm, {});
}

tl::expected<std::vector<uint8_t>, std::error_code> buildRestoreObjectRequest(int ifindex, const TcObject& object) {
  if (object.kind.empty() || object.chain != 0) {
    return fail(EINVAL);
  }
  Bytes options = restoreOptions(object.type, object.kind, object.options);
  if (options.size() + object.kind.size() + 64 > std::numeric_limits<uint16_t>::max()) {
    return fail(EINVAL);
  }
  tcmsg tcm{};
  tcm.tcm_family = AF_UNSPEC;
  tcm.tcm_ifindex = ifindex;
  tcm.tcm_handle = object.handle;
  tcm.tcm_parent = object.parent;
  tcm.tcm_info = object.type == TcObjectType::kFilter ? object.info : 0;
  std::vector<std::pair<uint16_t, Bytes>> attrs;
  Bytes kind(object.kind.begin(), object.kind.end());
  kind.push_back(0);
  attrs.emplace_back(TCA_KIND, std::move(kind));
  if (!options.empty()) {
    attrs.emplace_back(TCA_OPTIONS, std::move(options));
  }
  const uint16_t type = object.type == TcObjectType::kQdisc   ? RTM_NEWQDISC
                        : object.type == TcObjectType::kClass ? RTM_NEWTCLASS
                                                              : RTM_NEWTFILTER;
  return message(type, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, tcm, attrs);
}

tl::expected<DumpedTcObject, std::error_code> parseTcObjectMessage(std::span<const uint8_t> bytes) {
  const size_t fixed = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(tcmsg));
  if (bytes.size() < fixed) {
    return fail(EPROTO);
  }
  nlmsghdr h{};
  std::memcpy(&h, bytes.data(), sizeof(h));
  if (h.nlmsg_len < fixed || h.nlmsg_len > bytes.size()) {
    return fail(EPROTO);
  }
  DumpedTcObject out;
  switch (h.nlmsg_type) {
    case RTM_NEWQDISC:
      out.object.type = TcObjectType::kQdisc;
      break;
    case RTM_NEWTCLASS:
      out.object.type = TcObjectType::kClass;
      break;
    case RTM_NEWTFILTER:
      out.object.type = TcObjectType::kFilter;
      break;
    default:
      return fail(EPROTO);
  }
  tcmsg tcm{};
  std::memcpy(&tcm, bytes.data() + NLMSG_HDRLEN, sizeof(tcm));
  out.ifindex = tcm.tcm_ifindex;
  out.object.handle = tcm.tcm_handle;
  out.object.parent = tcm.tcm_parent;
  out.object.info = out.object.type == TcObjectType::kFilter ? tcm.tcm_info : 0;
  const auto attrs = std::span<const uint8_t>(bytes.data() + fixed, h.nlmsg_len - fixed);
  auto parsed = attributes(attrs);
  if (!parsed) {
    return fail(EPROTO);
  }
  bool kindSeen = false;
  for (const auto& a : *parsed) {
    const uint8_t* payload = attrs.data() + a.at + sizeof(nlattr);
    if (a.type == TCA_KIND) {
      const auto* text = reinterpret_cast<const char*>(payload);
      out.object.kind.assign(text, strnlen(text, a.len));
      kindSeen = !out.object.kind.empty();
    } else if (a.type == TCA_OPTIONS) {
      out.object.options.assign(payload, payload + a.len);
    } else if (a.type == TCA_CHAIN) {
      out.object.chain = u32At(attrs, a).value_or(0);
    }
  }
  if (!kindSeen) {
    return fail(EPROTO);
  }
  return out;
}

}  // namespace faultline::kernel
