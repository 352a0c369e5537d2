// The whole-tree save and restore (agent/kernel/qdisc_tree.h): golden bytes of its requests, the
// dump parser, what is refused, the order of restore, and the options sent back.
#include <arpa/inet.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>

#include <cstring>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/kernel/qdisc_table.h"
#include "agent/kernel/qdisc_tree.h"

using namespace faultline::kernel;

namespace {

using Bytes = std::vector<uint8_t>;

// One attribute: header (length, type) and payload, padded to 4 bytes.
Bytes attr(uint16_t type, const Bytes& payload) {
  Bytes out(4);
  const auto len = static_cast<uint16_t>(4 + payload.size());
  std::memcpy(out.data(), &len, 2);
  std::memcpy(out.data() + 2, &type, 2);
  out.insert(out.end(), payload.begin(), payload.end());
  out.resize((out.size() + 3) & ~size_t{3}, 0);
  return out;
}

Bytes u32(uint32_t v) {
  Bytes out(4);
  std::memcpy(out.data(), &v, 4);
  return out;
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes out;
  for (const auto& p : parts) {
    out.insert(out.end(), p.begin(), p.end());
  }
  return out;
}

constexpr uint32_t kIpInfo = (1u << 16) | 0x0008;  // prio 1, htons(ETH_P_IP)

TcObject u32Node(uint32_t parent, uint32_t info, uint32_t table, uint32_t node, Bytes extra = {}) {
  return TcObject{TcObjectType::kFilter,
                  "u32",
                  table | node,
                  parent,
                  info,
                  0,
                  cat({attr(TCA_U32_CLASSID, u32(0x00010010)), attr(TCA_U32_HASH, u32(table)), extra})};
}

TcObject u32Table(uint32_t parent, uint32_t info, uint32_t table, uint32_t divisor = 1) {
  return TcObject{TcObjectType::kFilter, "u32", table, parent, info, 0, attr(TCA_U32_DIVISOR, u32(divisor))};
}

TcObject priorityEntry(uint32_t parent, uint32_t info) {
  return TcObject{TcObjectType::kFilter, "u32", 0, parent, info, 0, {}};
}

TcObject htbClass(uint32_t id, uint32_t parent) {
  return TcObject{TcObjectType::kClass, "htb", id, parent, 0, 0, attr(TCA_HTB_PARMS, Bytes(44, 1))};
}

const QdiscInfo kHtbRoot{"htb", 0x00010000, 0xFFFFFFFF, {}};

}  // namespace

TEST_CASE("class and filter dump requests match the bytes tc sends") {
  // clang-format off
  const Bytes classes = {
      0x24, 0x00, 0x00, 0x00,  // nlmsg_len 36
      0x2a, 0x00,              // RTM_GETTCLASS
      0x01, 0x03,              // NLM_F_REQUEST | NLM_F_DUMP
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq, port
      0x00, 0x00, 0x00, 0x00,  // tcm_family AF_UNSPEC
      0x02, 0x00, 0x00, 0x00,  // tcm_ifindex 2
      0x00, 0x00, 0x00, 0x00,  // tcm_handle
      0x00, 0x00, 0x00, 0x00,  // tcm_parent
      0x00, 0x00, 0x00, 0x00,  // tcm_info
  };
  const Bytes filters = {
      0x24, 0x00, 0x00, 0x00,
      0x2e, 0x00,              // RTM_GETTFILTER
      0x01, 0x03,
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00,
      0x02, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00,
      0x10, 0x00, 0x01, 0x00,  // tcm_parent 1:10
      0x00, 0x00, 0x00, 0x00,
  };
  // clang-format on
  CHECK(*buildDumpClassesRequest(2) == classes);
  CHECK(*buildDumpFiltersRequest(2, 0x00010010) == filters);
}

TEST_CASE("restore request of a u32 filter: handle, parent, prio and protocol, options without the counters") {
  const auto pcnt = attr(TCA_U32_PCNT, Bytes(16, 0x77));
  const auto node = u32Node(0x00010000, kIpInfo, 0x80000000, 0x800, pcnt);
  // clang-format off
  const Bytes golden = {
      0x40, 0x00, 0x00, 0x00,  // nlmsg_len 64
      0x2c, 0x00,              // RTM_NEWTFILTER
      0x05, 0x06,              // NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00,  // tcm_family
      0x02, 0x00, 0x00, 0x00,  // tcm_ifindex 2
      0x00, 0x08, 0x00, 0x80,  // tcm_handle 800::800
      0x00, 0x00, 0x01, 0x00,  // tcm_parent 1:
      0x08, 0x00, 0x01, 0x00,  // tcm_info: protocol htons(0x0800), prio 1
      0x08, 0x00, 0x01, 0x00, 'u', '3', '2', 0x00,  // TCA_KIND
      0x14, 0x00, 0x02, 0x00,                       // TCA_OPTIONS, 20 bytes
      0x08, 0x00, 0x01, 0x00, 0x10, 0x00, 0x01, 0x00,  // TCA_U32_CLASSID 1:10
      0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x80,  // TCA_U32_HASH 800:
  };
  // clang-format on
  auto request = buildRestoreObjectRequest(2, node);
  REQUIRE(request.has_value());
  CHECK(*request == golden);
}

TEST_CASE("restore request of an htb child qdisc puts the version back to 3") {
  tc_htb_glob glob{};
  glob.version = 0x30011;
  glob.rate2quantum = 10;
  glob.defcls = 0x20;
  glob.direct_pkts = 5;
  Bytes raw(sizeof(glob));
  std::memcpy(raw.data(), &glob, sizeof(glob));
  const TcObject child{TcObjectType::kQdisc, "htb", 0x00020000, 0x00010010, 0, 0, attr(TCA_HTB_INIT, raw)};
  auto request = buildRestoreObjectRequest(2, child);
  REQUIRE(request.has_value());
  // clang-format off
  const Bytes golden = {
      0x48, 0x00, 0x00, 0x00,  // nlmsg_len 72
      0x24, 0x00,              // RTM_NEWQDISC
      0x05, 0x06,              // NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00,
      0x02, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x02, 0x00,  // tcm_handle 2:
      0x10, 0x00, 0x01, 0x00,  // tcm_parent 1:10
      0x00, 0x00, 0x00, 0x00,  // tcm_info (qdiscs: 0)
      0x08, 0x00, 0x01, 0x00, 'h', 't', 'b', 0x00,
      0x1c, 0x00, 0x02, 0x00,  // TCA_OPTIONS, 28 bytes
      0x18, 0x00, 0x02, 0x00,  // TCA_HTB_INIT
      0x03, 0x00, 0x00, 0x00,  // version 3 (dumped: 0x30011)
      0x0a, 0x00, 0x00, 0x00,  // rate2quantum
      0x20, 0x00, 0x00, 0x00,  // defcls 0x20
      0x00, 0x00, 0x00, 0x00,  // debug
      0x05, 0x00, 0x00, 0x00,  // direct_pkts (ignored by htb_init)
  };
  // clang-format on
  CHECK(*request == golden);
  // The root goes through the same correction.
  auto root = buildRestoreRootRequest(2, QdiscInfo{"htb", 0x00010000, 0xFFFFFFFF, attr(TCA_HTB_INIT, raw)});
  REQUIRE(root.has_value());
  uint32_t version = 0;
  std::memcpy(&version, root->data() + root->size() - 20, 4);
  CHECK(version == 3);
  CHECK(buildRestoreObjectRequest(2, TcObject{TcObjectType::kClass, "", 1, 1, 0, 0, {}}).error() ==
        std::errc::invalid_argument);
  auto chained = priorityEntry(0x00010000, kIpInfo);
  chained.kind = "u32";
  chained.chain = 3;
  CHECK(buildRestoreObjectRequest(2, chained).error() == std::errc::invalid_argument);
}

TEST_CASE("codel and fq_codel times go back as the µs value the kernel turns into the same 1024 ns units") {
  // The kernel stores t = us * 1000 >> 10 and dumps (t << 10) / 1000: for every µs value a user
  // can set, what restoreOptions() sends for the dump is stored as the same t.
  for (uint32_t us = 0; us <= 300000; us += (us < 5000 ? 1 : 7)) {
    const uint64_t t = uint64_t{us} * 1000 >> 10;
    const auto dumped = static_cast<uint32_t>((t << 10) / 1000);
    for (const std::string kind : {"codel", "fq_codel"}) {
      const auto sent = restoreOptions(TcObjectType::kQdisc, kind, attr(TCA_CODEL_TARGET, u32(dumped)));
      REQUIRE(sent.size() == 8);
      uint32_t value = 0;
      std::memcpy(&value, sent.data() + 4, 4);
      if ((uint64_t{value} * 1000 >> 10) != t) {
        FAIL(fmt::format("{}: {} us dumped as {} went back as {}", kind, us, dumped, value));
      }
    }
  }
  // The three times of fq_codel; limit and flows untouched.
  const Bytes dumped = cat({attr(TCA_FQ_CODEL_TARGET, u32(4999)), attr(TCA_FQ_CODEL_LIMIT, u32(10240)),
                            attr(TCA_FQ_CODEL_INTERVAL, u32(99999)), attr(TCA_FQ_CODEL_CE_THRESHOLD, u32(1233))});
  const Bytes expected = cat({attr(TCA_FQ_CODEL_TARGET, u32(5000)), attr(TCA_FQ_CODEL_LIMIT, u32(10240)),
                              attr(TCA_FQ_CODEL_INTERVAL, u32(100000)), attr(TCA_FQ_CODEL_CE_THRESHOLD, u32(1234))});
  CHECK(restoreOptions(TcObjectType::kQdisc, "fq_codel", dumped) == expected);
  CHECK(restoreOptions(TcObjectType::kQdisc, "pfifo", dumped) == dumped);
}

TEST_CASE("the object parser reads classes and filters and refuses malformed messages") {
  const Bytes options = attr(TCA_HTB_PARMS, Bytes(44, 2));
  Bytes msg(16 + 20, 0);
  const uint16_t type = RTM_NEWTCLASS;
  std::memcpy(msg.data() + 4, &type, 2);
  const int ifindex = 3;
  const uint32_t handle = 0x00010010;
  const uint32_t parent = 0x00010001;
  std::memcpy(msg.data() + 20, &ifindex, 4);
  std::memcpy(msg.data() + 24, &handle, 4);
  std::memcpy(msg.data() + 28, &parent, 4);
  const Bytes body = cat({attr(TCA_KIND, Bytes{'h', 't', 'b', 0}), attr(TCA_OPTIONS, options),
                          attr(TCA_STATS2, Bytes(12, 9)), attr(TCA_CHAIN, u32(0))});
  msg.insert(msg.end(), body.begin(), body.end());
  const auto len = static_cast<uint32_t>(msg.size());
  std::memcpy(msg.data(), &len, 4);
  auto parsed = parseTcObjectMessage(msg);
  REQUIRE(parsed.has_value());
  CHECK(parsed->ifindex == 3);
  CHECK(parsed->object == TcObject{TcObjectType::kClass, "htb", handle, parent, 0, 0, options});

  Bytes filter = msg;
  const uint16_t filterType = RTM_NEWTFILTER;
  std::memcpy(filter.data() + 4, &filterType, 2);
  std::memcpy(filter.data() + 32, &kIpInfo, 4);
  const uint32_t chain = 7;
  std::memcpy(filter.data() + filter.size() - 4, &chain, 4);
  auto f = parseTcObjectMessage(filter);
  REQUIRE(f.has_value());
  CHECK(f->object.type == TcObjectType::kFilter);
  CHECK(f->object.info == kIpInfo);
  CHECK(f->object.chain == 7);

  Bytes link = msg;
  const uint16_t linkType = RTM_NEWLINK;
  std::memcpy(link.data() + 4, &linkType, 2);
  CHECK(parseTcObjectMessage(link).error() == std::errc::protocol_error);
  CHECK(parseTcObjectMessage(Bytes(msg.begin(), msg.begin() + 30)).error() == std::errc::protocol_error);
  Bytes noKind(msg.begin(), msg.begin() + 36);
  const uint32_t shortLen = 36;
  std::memcpy(noKind.data(), &shortLen, 4);
  CHECK(parseTcObjectMessage(noKind).error() == std::errc::protocol_error);
}

TEST_CASE("restore order: classes parent first, then the qdiscs below them, then filters by table") {
  const std::vector<TcObject> dumped = {
      TcObject{TcObjectType::kQdisc, "pfifo", 0x00100000, 0x00010010, 0, 0, {1}},
      htbClass(0x00010010, 0x00010001),
      htbClass(0x00010001, 0x00010000),
      priorityEntry(0x00010000, (2u << 16) | 0xDD86),
      u32Table(0x00010000, (2u << 16) | 0xDD86, 0x80100000),
      u32Node(0x00010000, (2u << 16) | 0xDD86, 0x80100000, 0x800),
      priorityEntry(0x00010000, kIpInfo),
      u32Table(0x00010000, kIpInfo, 0x80000000),
      u32Node(0x00010000, kIpInfo, 0x80000000, 0x801),
      u32Node(0x00010000, kIpInfo, 0x80000000, 0x800),
  };
  CHECK_FALSE(treeRefusal(kHtbRoot, dumped).has_value());
  const auto order = restoreOrder(kHtbRoot, dumped);
  std::vector<std::string> words;
  for (const auto& o : order) {
    words.push_back(tcObjectText(o));
  }
  const std::vector<std::string> expected = {
      "class htb 1:1 parent 1:",
      "class htb 1:10 parent 1:1",
      "qdisc pfifo 10: parent 1:10",
      "filter u32 800:0:800 parent 1: prio 1 protocol 0x0800",
      "filter u32 800:0:801 parent 1: prio 1 protocol 0x0800",
      "filter u32 801:0:800 parent 1: prio 2 protocol 0x86dd",
  };
  CHECK(words == expected);

  // prio's bands and mq's queues come with their qdisc; only what was added below them is sent.
  const QdiscInfo mq{"mq", 0x00010000, 0xFFFFFFFF, {}};
  const std::vector<TcObject> queues = {
      TcObject{TcObjectType::kClass, "mq", 0x00010001, 0xFFFFFFFF, 0, 0, {}},
      TcObject{TcObjectType::kClass, "mq", 0x00010002, 0xFFFFFFFF, 0, 0, {}},
      TcObject{TcObjectType::kQdisc, "pfifo_fast", 0, 0x00010001, 0, 0, {3}},
      TcObject{TcObjectType::kQdisc, "pfifo", 0x00120000, 0x00010002, 0, 0, {4}},
  };
  CHECK_FALSE(treeRefusal(mq, queues).has_value());
  const auto mqOrder = restoreOrder(mq, queues);
  REQUIRE(mqOrder.size() == 1);
  CHECK(tcObjectText(mqOrder[0]) == "qdisc pfifo 12: parent 1:2");
}

TEST_CASE("tree refusals name the part faultline cannot put back") {
  const auto refusal = [](const QdiscInfo& root, std::vector<TcObject> below) {
    return treeRefusal(root, below).value_or("(restorable)");
  };
  CHECK(refusal(QdiscInfo{"hfsc", 0x00010000, 0xFFFFFFFF, {}}, {}) ==
        "its root qdisc hfsc 1: is a kind faultline cannot save and restore exactly");
  CHECK(refusal(kHtbRoot, {TcObject{TcObjectType::kQdisc, "sfq", 0x00100000, 0x00010010, 0, 0, {}}}) ==
        "its qdisc sfq 10: parent 1:10 is a kind faultline cannot save and restore exactly");
  CHECK(refusal(kHtbRoot, {TcObject{TcObjectType::kQdisc, "drr", 0x00100000, 0x00010010, 0, 0, {}},
                           TcObject{TcObjectType::kClass, "drr", 0x00100001, 0x00100000, 0, 0, {}}}) ==
        "its qdisc drr 10: parent 1:10 is a kind faultline cannot save and restore exactly");
  CHECK(refusal(kHtbRoot, {TcObject{TcObjectType::kFilter, "matchall", 1, 0x00010000, kIpInfo, 0, {}}}) ==
        "its filter matchall 1 parent 1: prio 1 protocol 0x0800 is a matchall filter; faultline restores u32 "
        "filters only (without actions, police, link or hashing tables)");
  CHECK(refusal(kHtbRoot, {u32Table(0x00010000, kIpInfo, 0x80000000),
                           u32Node(0x00010000, kIpInfo, 0x80000000, 0x800, attr(TCA_U32_ACT, Bytes(8, 0)))}) ==
        "its filter u32 800:0:800 parent 1: prio 1 protocol 0x0800 has actions or police, which faultline "
        "cannot restore");
  CHECK(refusal(kHtbRoot, {u32Table(0x00010000, kIpInfo, 0x80000000),
                           u32Node(0x00010000, kIpInfo, 0x80000000, 0x800, attr(TCA_U32_LINK, u32(0x00200000)))}) ==
        "its filter u32 800:0:800 parent 1: prio 1 protocol 0x0800 links to another hash table, which faultline "
        "cannot restore");
  CHECK(refusal(kHtbRoot, {u32Table(0x00010000, kIpInfo, 0x00200000, 256)}) ==
        "its filter u32 2:0:0 parent 1: prio 1 protocol 0x0800 is a u32 hashing table (divisor > 1), which "
        "faultline cannot restore");
  CHECK(refusal(kHtbRoot, {u32Table(0x00010000, kIpInfo, 0x80100000)}) ==
        "its u32 filters below 1: use hash table 801: where 800: was expected (a priority was deleted earlier), "
        "which faultline cannot re-create");
  auto chained = u32Table(0x00010000, kIpInfo, 0x80000000);
  chained.chain = 2;
  CHECK(refusal(kHtbRoot, {chained}) ==
        "its filter u32 800:0:0 parent 1: prio 1 protocol 0x0800 is in chain 2; faultline restores filters in "
        "chain 0 only");
}

TEST_CASE("sameTree ignores dump order and the counters inside options, nothing else") {
  const auto a = u32Node(0x00010000, kIpInfo, 0x80000000, 0x800, attr(TCA_U32_PCNT, Bytes(16, 1)));
  const auto b = u32Node(0x00010000, kIpInfo, 0x80000000, 0x800, attr(TCA_U32_PCNT, Bytes(16, 2)));
  const auto c = htbClass(0x00010001, 0x00010000);
  CHECK(sameTree({a, c}, {c, b}));
  auto other = c;
  other.options.back() ^= 1;
  CHECK_FALSE(sameTree({a, c}, {b, other}));
  CHECK_FALSE(sameTree({a, c}, {b}));
  tc_htb_glob g1{};
  g1.version = 0x30011;
  g1.direct_pkts = 1;
  tc_htb_glob g2 = g1;
  g2.direct_pkts = 99;
  Bytes r1(sizeof(g1));
  Bytes r2(sizeof(g2));
  std::memcpy(r1.data(), &g1, sizeof(g1));
  std::memcpy(r2.data(), &g2, sizeof(g2));
  CHECK(sameQdiscOptions("htb", attr(TCA_HTB_INIT, r1), attr(TCA_HTB_INIT, r2)));
  CHECK_FALSE(sameQdiscOptions("tbf", attr(TCA_HTB_INIT, r1), attr(TCA_HTB_INIT, r2)));
}
