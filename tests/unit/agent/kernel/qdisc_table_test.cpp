// Golden bytes of the rtnetlink requests QdiscTable sends, and the dump parser on good and bad
// buffers. Bytes are little-endian (netlink uses host order; these tests run on x86-64/arm64).
#include <arpa/inet.h>

#include <cstring>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/kernel/qdisc_table.h"

using namespace faultline::kernel;
using namespace std::chrono_literals;

namespace {

constexpr int kIfindex = 2;
constexpr uint32_t kHandle = 0xFA170000;

// tc qdisc replace dev <2> root handle fa17: netem delay 100ms 10ms loss 1%
// Byte fixtures are laid out one field per line.
// clang-format off
const std::vector<uint8_t> kNetemGolden = {
    0x4c, 0x00, 0x00, 0x00,  // nlmsg_len 76
    0x24, 0x00,              // RTM_NEWQDISC
    0x05, 0x05,              // NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
    0x00, 0x00, 0x00, 0x00,  // seq (filled in when sent)
    0x00, 0x00, 0x00, 0x00,  // port (filled in when sent)
    0x00, 0x00, 0x00, 0x00,  // tcm_family AF_UNSPEC, padding
    0x02, 0x00, 0x00, 0x00,  // tcm_ifindex 2
    0x00, 0x00, 0x17, 0xfa,  // tcm_handle fa17:
    0xff, 0xff, 0xff, 0xff,  // tcm_parent TC_H_ROOT
    0x00, 0x00, 0x00, 0x00,  // tcm_info
    0x0a, 0x00, 0x01, 0x00,  // TCA_KIND, 10 bytes
    'n', 'e', 't', 'e', 'm', 0x00, 0x00, 0x00,
    0x1c, 0x00, 0x02, 0x00,  // TCA_OPTIONS, 28 bytes: struct tc_netem_qopt
    0x84, 0xd7, 0x17, 0x00,  // latency 1562500 ticks = 100 ms at 64 ns per tick
    0xe8, 0x03, 0x00, 0x00,  // limit 1000 packets (the default)
    0x29, 0x5c, 0x8f, 0x02,  // loss 42949673 = round(1 % of 0xFFFFFFFF)
    0x00, 0x00, 0x00, 0x00,  // gap
    0x00, 0x00, 0x00, 0x00,  // duplicate
    0x5a, 0x62, 0x02, 0x00,  // jitter 156250 ticks = 10 ms
};
// clang-format on

// tc qdisc replace dev <2> root handle fa17: tbf rate 1mbit burst 3028 limit 6250
// Byte fixtures are laid out one field per line.
// clang-format off
const std::vector<uint8_t> kTbfGolden = {
    0x60, 0x00, 0x00, 0x00,  // nlmsg_len 96
    0x24, 0x00, 0x05, 0x05,  // RTM_NEWQDISC, REQUEST | ACK | REPLACE | CREATE
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,  // tcmsg
    0x02, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x17, 0xfa,
    0xff, 0xff, 0xff, 0xff,
    0x00, 0x00, 0x00, 0x00,
    0x08, 0x00, 0x01, 0x00, 't', 'b', 'f', 0x00,  // TCA_KIND
    0x34, 0x00, 0x02, 0x00,                       // TCA_OPTIONS, 52 bytes
    0x28, 0x00, 0x01, 0x00,                       // TCA_TBF_PARMS, struct tc_tbf_qopt
    0x00, 0x01, 0x00, 0x00,                       // rate: cell_log 0, linklayer ethernet, overhead 0
    0x00, 0x00, 0x00, 0x00,                       //       cell_align 0, mpu 0
    0x48, 0xe8, 0x01, 0x00,                       //       125000 bytes/s
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // peakrate: none
    0x6a, 0x18, 0x00, 0x00,                       // limit 6250 bytes
    0x84, 0xc6, 0x05, 0x00,                       // buffer 378500 ticks = 3028 B at 125000 B/s
    0x00, 0x00, 0x00, 0x00,                       // mtu (peak bucket): none
    0x08, 0x00, 0x06, 0x00,                       // TCA_TBF_BURST
    0xd4, 0x0b, 0x00, 0x00,                       // 3028 bytes
};
// clang-format on

// tc qdisc replace dev <2> root handle fa17: netem delay 100ms 10ms 25% loss gemodel 1% 25% 80% 10%
//   duplicate 2% 30% corrupt 3% 40% reorder 5% 50% gap 3 rate 1mbit limit 5000
// TCA_OPTIONS as iproute2 6.1's tc sent it (captured with strace -e sendmsg -xx in a throwaway netns).
// clang-format off
const std::vector<uint8_t> kNetemEveryAttributeGolden = {
    0xa0, 0x00, 0x00, 0x00,  // nlmsg_len 160
    0x24, 0x00, 0x05, 0x05,  // RTM_NEWQDISC, REQUEST | ACK | REPLACE | CREATE
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,  // tcmsg
    0x02, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x17, 0xfa,
    0xff, 0xff, 0xff, 0xff,
    0x00, 0x00, 0x00, 0x00,
    0x0a, 0x00, 0x01, 0x00, 'n', 'e', 't', 'e', 'm', 0x00, 0x00, 0x00,  // TCA_KIND
    0x70, 0x00, 0x02, 0x00,  // TCA_OPTIONS, 112 bytes
    0x84, 0xd7, 0x17, 0x00,  // tc_netem_qopt.latency 100 ms
    0x88, 0x13, 0x00, 0x00,  //   limit 5000
    0x00, 0x00, 0x00, 0x00,  //   loss 0 (the Gilbert-Elliott model below decides)
    0x03, 0x00, 0x00, 0x00,  //   gap 3
    0x52, 0xb8, 0x1e, 0x05,  //   duplicate 2 %
    0x5a, 0x62, 0x02, 0x00,  //   jitter 10 ms
    0x10, 0x00, 0x01, 0x00,  // TCA_NETEM_CORR
    0x00, 0x00, 0x00, 0x40,  //   delay_corr 25 %
    0x00, 0x00, 0x00, 0x00,  //   loss_corr 0
    0xcc, 0xcc, 0xcc, 0x4c,  //   dup_corr 30 % (rounded half to even, as tc does)
    0x0c, 0x00, 0x03, 0x00,  // TCA_NETEM_REORDER
    0xcd, 0xcc, 0xcc, 0x0c,  //   probability 5 %
    0x00, 0x00, 0x00, 0x80,  //   correlation 50 %
    0x0c, 0x00, 0x04, 0x00,  // TCA_NETEM_CORRUPT
    0x7b, 0x14, 0xae, 0x07,  //   probability 3 %
    0x66, 0x66, 0x66, 0x66,  //   correlation 40 %
    0x18, 0x00, 0x05, 0x80,  // TCA_NETEM_LOSS | NLA_F_NESTED
    0x14, 0x00, 0x02, 0x00,  //   NETEM_LOSS_GE, struct tc_netem_gemodel
    0x29, 0x5c, 0x8f, 0x02,  //     p 1 %
    0x00, 0x00, 0x00, 0x40,  //     r 25 %
    0x33, 0x33, 0x33, 0x33,  //     h 20 % (tc's 1-h 80 %: loss in the bad state)
    0x9a, 0x99, 0x99, 0x19,  //     k1 10 % (tc's 1-k: loss in the good state)
    0x14, 0x00, 0x06, 0x00,  // TCA_NETEM_RATE, struct tc_netem_rate
    0x48, 0xe8, 0x01, 0x00,  //   125000 bytes/s
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // overheads, cell size: none
};

// tc qdisc replace dev <2> root handle fa17: netem rate 40gbit (TCA_OPTIONS captured from tc as above)
const std::vector<uint8_t> kNetemRate64Options = {
    0x00, 0x00, 0x00, 0x00, 0xe8, 0x03, 0x00, 0x00,  // qopt: latency 0, limit 1000
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  //   loss, gap
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  //   duplicate, jitter
    0x0c, 0x00, 0x08, 0x00,                          // TCA_NETEM_RATE64
    0x00, 0xf2, 0x05, 0x2a, 0x01, 0x00, 0x00, 0x00,  //   5000000000 bytes/s
    0x14, 0x00, 0x06, 0x00,                          // TCA_NETEM_RATE
    0xff, 0xff, 0xff, 0xff,                          //   rate ~0: see RATE64
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};

// netem delay 1h jitter 1h (beyond the u32 tick fields) with a 4-value distribution table.
const std::vector<uint8_t> kNetemLongDelayOptions = {
    0xff, 0xff, 0xff, 0xff,  // qopt.latency: does not fit, see LATENCY64
    0xe8, 0x03, 0x00, 0x00,  //   limit 1000
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // loss, gap, duplicate
    0xff, 0xff, 0xff, 0xff,  //   jitter: does not fit, see JITTER64
    0x0c, 0x00, 0x0a, 0x00,  // TCA_NETEM_LATENCY64
    0x00, 0xa0, 0xb8, 0x30, 0x46, 0x03, 0x00, 0x00,  //   3600000000000 ns
    0x0c, 0x00, 0x0b, 0x00,  // TCA_NETEM_JITTER64
    0x00, 0xa0, 0xb8, 0x30, 0x46, 0x03, 0x00, 0x00,  //   3600000000000 ns
    0x0c, 0x00, 0x02, 0x00,  // TCA_NETEM_DELAY_DIST, 4 x s16
    0x00, 0x80, 0xff, 0xff, 0x01, 0x00, 0xff, 0x7f,  //   -32768 -1 1 32767
};
// clang-format on

std::string hex(const std::vector<uint8_t>& bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size(); ++i) {
    out += fmt::format("{}{:02x}", i % 16 == 0 ? "\n" : " ", bytes[i]);
  }
  return out;
}

// Finds a top-level attribute of type in TCA_OPTIONS payload bytes starting at offset.
bool hasAttr(const std::vector<uint8_t>& options, size_t offset, uint16_t type) {
  while (offset + 4 <= options.size()) {
    uint16_t len = 0;
    uint16_t t = 0;
    std::memcpy(&len, options.data() + offset, 2);
    std::memcpy(&t, options.data() + offset + 2, 2);
    if (len < 4) {
      return false;
    }
    if ((t & 0x3fff) == type) {
      return true;
    }
    offset += (len + 3u) & ~3u;
  }
  return false;
}

}  // namespace

TEST_CASE("netem request: delay 100ms, jitter 10ms, loss 1% matches the golden bytes") {
  NetemParams netem{.delay = 100ms, .jitter = 10ms, .lossPercent = 1.0};
  auto bytes = buildReplaceRootRequest(kIfindex, kHandle, netem);
  REQUIRE(bytes.has_value());
  CHECK_MESSAGE(*bytes == kNetemGolden, "got:", hex(*bytes));
}

TEST_CASE("netem request with every attribute matches the bytes tc sends") {
  NetemParams netem{.delay = 100ms,
                    .jitter = 10ms,
                    .delayCorrelationPercent = 25,
                    .gilbertElliott = GilbertElliottLoss{.p = 1, .r = 25, .badLoss = 80, .goodLoss = 10},
                    .duplicatePercent = 2,
                    .duplicateCorrelationPercent = 30,
                    .corruptPercent = 3,
                    .corruptCorrelationPercent = 40,
                    .reorderPercent = 5,
                    .reorderCorrelationPercent = 50,
                    .gap = 3,
                    .rateBitsPerSecond = 1'000'000,
                    .limitPackets = 5000};
  auto bytes = buildReplaceRootRequest(kIfindex, kHandle, netem);
  REQUIRE(bytes.has_value());
  CHECK_MESSAGE(*bytes == kNetemEveryAttributeGolden, "got:", hex(*bytes));
}

TEST_CASE("netem rate of 2^32 bytes/s and more adds TCA_NETEM_RATE64 like tc") {
  auto bytes = buildReplaceRootRequest(kIfindex, kHandle, NetemParams{.rateBitsPerSecond = 40'000'000'000});
  REQUIRE(bytes.has_value());
  auto parsed = parseQdiscMessage(*bytes);
  REQUIRE(parsed.has_value());
  CHECK_MESSAGE(parsed->info.options == kNetemRate64Options, "got:", hex(parsed->info.options));
}

TEST_CASE("netem 1h delay and jitter go in LATENCY64/JITTER64, the table in DELAY_DIST") {
  NetemParams netem{.delay = 1h, .jitter = 1h, .delayDistribution = {-32768, -1, 1, 32767}};
  auto bytes = buildReplaceRootRequest(kIfindex, kHandle, netem);
  REQUIRE(bytes.has_value());
  auto parsed = parseQdiscMessage(*bytes);
  REQUIRE(parsed.has_value());
  CHECK_MESSAGE(parsed->info.options == kNetemLongDelayOptions, "got:", hex(parsed->info.options));
}

TEST_CASE("netem reorder without gap is sent with gap 1, as tc does (the kernel never reorders with gap 0)") {
  auto bytes = buildReplaceRootRequest(kIfindex, kHandle, NetemParams{.delay = 100ms, .reorderPercent = 25});
  REQUIRE(bytes.has_value());
  auto parsed = parseQdiscMessage(*bytes);
  REQUIRE(parsed.has_value());
  // Captured from `tc qdisc replace ... netem delay 100ms reorder 25%`.
  const std::vector<uint8_t> tcOptions = {0x84, 0xd7, 0x17, 0x00, 0xe8, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                          0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                          0x0c, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00};
  CHECK_MESSAGE(parsed->info.options == tcOptions, "got:", hex(parsed->info.options));
}

TEST_CASE("tbf request: 1 Mbit/s, burst 3028, limit 6250 matches the golden bytes") {
  TbfParams tbf{.rateBitsPerSecond = 1'000'000, .burstBytes = 3028, .limitBytes = 6250};
  auto bytes = buildReplaceRootRequest(kIfindex, kHandle, tbf);
  REQUIRE(bytes.has_value());
  CHECK_MESSAGE(*bytes == kTbfGolden, "got:", hex(*bytes));
}

TEST_CASE("netem encodes 100% loss as ~0, correlations, and long delays as 64-bit nanoseconds") {
  NetemParams netem{.delay = 1h, .jitter = 0us, .delayCorrelationPercent = 25, .lossPercent = 100};
  auto bytes = buildReplaceRootRequest(kIfindex, kHandle, netem);
  REQUIRE(bytes.has_value());
  auto parsed = parseQdiscMessage(*bytes);
  REQUIRE(parsed.has_value());
  const auto& options = parsed->info.options;
  REQUIRE(options.size() >= 24);
  uint32_t latency = 0;
  uint32_t loss = 0;
  std::memcpy(&latency, options.data(), 4);
  std::memcpy(&loss, options.data() + 8, 4);
  CHECK(latency == 0xFFFFFFFF);  // does not fit: the kernel reads TCA_NETEM_LATENCY64
  CHECK(loss == 0xFFFFFFFF);
  CHECK(hasAttr(options, 24, 1));         // TCA_NETEM_CORR
  CHECK(hasAttr(options, 24, 10));        // TCA_NETEM_LATENCY64
  CHECK_FALSE(hasAttr(options, 24, 11));  // TCA_NETEM_JITTER64: jitter 0 fits
}

TEST_CASE("tbf above 2^32 bytes/s adds TCA_TBF_RATE64") {
  TbfParams tbf{.rateBitsPerSecond = uint64_t{1} << 40, .burstBytes = 1 << 20, .limitBytes = 1 << 24};
  auto bytes = buildReplaceRootRequest(kIfindex, kHandle, tbf);
  REQUIRE(bytes.has_value());
  auto parsed = parseQdiscMessage(*bytes);
  REQUIRE(parsed.has_value());
  CHECK(hasAttr(parsed->info.options, 0, 4));  // TCA_TBF_RATE64
}

TEST_CASE("parameters that cannot be encoded are EINVAL") {
  CHECK(buildReplaceRootRequest(kIfindex, kHandle, TbfParams{0, 3028, 6250}).error() == std::errc::invalid_argument);
  CHECK(buildReplaceRootRequest(kIfindex, kHandle, TbfParams{1'000'000, 3028, 0}).error() ==
        std::errc::invalid_argument);
  CHECK(buildReplaceRootRequest(kIfindex, kHandle, NetemParams{.lossPercent = 101}).error() ==
        std::errc::invalid_argument);
  CHECK(buildReplaceRootRequest(kIfindex, kHandle, NetemParams{.delay = -1ms}).error() == std::errc::invalid_argument);
  CHECK(buildReplaceRootRequest(kIfindex, kHandle, NetemParams{.reorderPercent = 10}).error() ==
        std::errc::invalid_argument);  // reorder needs a delay
  CHECK(buildReplaceRootRequest(kIfindex, kHandle, NetemParams{.corruptPercent = -1}).error() ==
        std::errc::invalid_argument);
  CHECK(
      buildReplaceRootRequest(kIfindex, kHandle, NetemParams{.gilbertElliott = GilbertElliottLoss{.p = 200}}).error() ==
      std::errc::invalid_argument);
  CHECK(
      buildReplaceRootRequest(
          kIfindex, kHandle, NetemParams{.delay = 1ms, .jitter = 1ms, .delayDistribution = std::vector<int16_t>(16385)})
          .error() == std::errc::invalid_argument);
  CHECK(buildRestoreRootRequest(kIfindex, QdiscInfo{}).error() == std::errc::invalid_argument);
}

TEST_CASE("restore request carries kind, handle and the saved options byte for byte") {
  QdiscInfo saved{"tbf", 0x80010000, 0xFFFFFFFF, {1, 2, 3, 4, 5, 6, 7}};
  auto bytes = buildRestoreRootRequest(kIfindex, saved);
  REQUIRE(bytes.has_value());
  uint16_t flags = 0;
  std::memcpy(&flags, bytes->data() + 6, 2);
  CHECK(flags == 0x0505);
  auto parsed = parseQdiscMessage(*bytes);
  REQUIRE(parsed.has_value());
  CHECK(parsed->ifindex == kIfindex);
  CHECK(parsed->info.kind == "tbf");
  CHECK(parsed->info.handle == 0x80010000);
  CHECK(parsed->info.parent == 0xFFFFFFFF);
  CHECK(parsed->info.options == saved.options);
}

TEST_CASE("delete request names the root of the interface") {
  // Byte fixtures are laid out one field per line.
  // clang-format off
  const std::vector<uint8_t> golden = {
      0x24, 0x00, 0x00, 0x00, 0x25, 0x00, 0x05, 0x00,  // 36 bytes, RTM_DELQDISC, REQUEST | ACK
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // seq, port
      0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,  // family, ifindex 2
      0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff,  // handle 0 (whatever is there), parent root
      0x00, 0x00, 0x00, 0x00,
  };
  // clang-format on
  auto bytes = buildDeleteRootRequest(kIfindex);
  REQUIRE(bytes.has_value());
  CHECK_MESSAGE(*bytes == golden, "got:", hex(*bytes));
}

TEST_CASE("the dump parser reads a qdisc without options and refuses malformed messages") {
  // noqueue 0: root on ifindex 2, as dumped: no TCA_OPTIONS.
  // Byte fixtures are laid out one field per line.
  // clang-format off
  std::vector<uint8_t> noqueue = {
      0x38, 0x00, 0x00, 0x00, 0x24, 0x00, 0x02, 0x00,  // 56 bytes, RTM_NEWQDISC, NLM_F_MULTI
      0x01, 0x00, 0x00, 0x00, 0x99, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff,
      0x02, 0x00, 0x00, 0x00,                          // tcm_info: refcnt 2
      0x0c, 0x00, 0x01, 0x00, 'n', 'o', 'q', 'u', 'e', 'u', 'e', 0x00,
      0x05, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00,  // TCA_HW_OFFLOAD 0
  };
  // clang-format on
  auto good = parseQdiscMessage(noqueue);
  REQUIRE(good.has_value());
  CHECK(good->ifindex == 2);
  CHECK(good->info.kind == "noqueue");
  CHECK(good->info.handle == 0);
  CHECK(good->info.parent == 0xFFFFFFFF);
  CHECK(good->info.options.empty());

  SUBCASE("truncated") {
    std::vector<uint8_t> cut(noqueue.begin(), noqueue.begin() + 30);
    CHECK(parseQdiscMessage(cut).error() == std::errc::protocol_error);
  }
  SUBCASE("length beyond the buffer") {
    std::vector<uint8_t> cut(noqueue.begin(), noqueue.end() - 8);
    CHECK(parseQdiscMessage(cut).error() == std::errc::protocol_error);
  }
  SUBCASE("not a qdisc message") {
    noqueue[4] = 0x10;  // RTM_NEWLINK
    CHECK(parseQdiscMessage(noqueue).error() == std::errc::protocol_error);
  }
  SUBCASE("no kind") {
    noqueue[38] = 0x03;  // TCA_KIND -> TCA_STATS
    CHECK(parseQdiscMessage(noqueue).error() == std::errc::protocol_error);
  }
  SUBCASE("empty") {
    CHECK(parseQdiscMessage({}).error() == std::errc::protocol_error);
  }
}

TEST_CASE("u32 filter request matches the bytes tc sends") {
  // tc filter add dev <2> parent fa17: prio 2 protocol ip u32 match ip dst 10.0.0.0/8
  //   match ip protocol 6 0xff match u8 0x05 0x0f at 0 match ip dport 443 0xffff flowid fa17:1
  // (captured with strace -e sendmsg -xx from iproute2 6.1's tc)
  // clang-format off
  const std::vector<uint8_t> tcBytes = {
      0x8c, 0x00, 0x00, 0x00,  // nlmsg_len 140
      0x2c, 0x00, 0x05, 0x06,  // RTM_NEWTFILTER, REQUEST | ACK | EXCL | CREATE
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00,  // tcmsg: family
      0x02, 0x00, 0x00, 0x00,  //   ifindex 2
      0x00, 0x00, 0x00, 0x00,  //   handle: the kernel picks
      0x00, 0x00, 0x17, 0xfa,  //   parent fa17:
      0x08, 0x00, 0x02, 0x00,  //   info: prio 2, protocol htons(ETH_P_IP)
      0x08, 0x00, 0x01, 0x00, 'u', '3', '2', 0x00,  // TCA_KIND
      0x60, 0x00, 0x02, 0x00,  // TCA_OPTIONS, 96 bytes
      0x08, 0x00, 0x01, 0x00, 0x01, 0x00, 0x17, 0xfa,  // TCA_U32_CLASSID fa17:1
      0x54, 0x00, 0x05, 0x00,  // TCA_U32_SEL
      0x01, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00,  // flags TERMINAL, 4 keys
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0xff, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // dst /8
      0x00, 0xff, 0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // tcp
      0x0f, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // IHL 5
      0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x01, 0xbb, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // dport
  };
  // clang-format on
  const auto be = [](uint32_t v) { return htonl(v); };
  U32Filter filter{.parent = 0xFA170000,
                   .priority = 2,
                   .protocol = 0x0800,
                   .keys = {{be(0x0A000000), be(0xFF000000), 16},
                            {be(0x00060000), be(0x00FF0000), 8},
                            {be(0x05000000), be(0x0F000000), 0},
                            {be(443), be(0x0000FFFF), 20}},
                   .classid = 0xFA170001};
  auto bytes = buildAddU32FilterRequest(kIfindex, filter);
  REQUIRE(bytes.has_value());
  CHECK_MESSAGE(*bytes == tcBytes, "got:", hex(*bytes));
  filter.keys.clear();
  CHECK(buildAddU32FilterRequest(kIfindex, filter).error() == std::errc::invalid_argument);
}

TEST_CASE("htb root request matches the bytes tc sends for `htb default 0`") {
  auto bytes = buildReplaceRootRequest(kIfindex, kHandle, HtbParams{});
  REQUIRE(bytes.has_value());
  auto parsed = parseQdiscMessage(*bytes);
  REQUIRE(parsed.has_value());
  CHECK(parsed->info.kind == "htb");
  // TCA_OPTIONS captured from `tc qdisc replace dev lo root handle fa17: htb default 0`.
  const std::vector<uint8_t> tcOptions = {0x18, 0x00, 0x02, 0x00, 0x03, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00,
                                          0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  CHECK_MESSAGE(parsed->info.options == tcOptions, "got:", hex(parsed->info.options));
}

TEST_CASE("htb class and child qdisc requests") {
  auto cls = buildAddHtbClassRequest(kIfindex, 0xFA170001, HtbClassParams{.rateBitsPerSecond = uint64_t{1} << 40});
  REQUIRE(cls.has_value());
  uint16_t type = 0;
  uint16_t flags = 0;
  std::memcpy(&type, cls->data() + 4, 2);
  std::memcpy(&flags, cls->data() + 6, 2);
  CHECK(type == 40);       // RTM_NEWTCLASS
  CHECK(flags == 0x0605);  // REQUEST | ACK | EXCL | CREATE
  uint32_t handle = 0;
  uint32_t parent = 0;
  std::memcpy(&handle, cls->data() + 24, 4);
  std::memcpy(&parent, cls->data() + 28, 4);
  CHECK(handle == 0xFA170001);
  CHECK(parent == 0xFA170000);
  CHECK(buildAddHtbClassRequest(kIfindex, 0xFA170001, HtbClassParams{}).error() == std::errc::invalid_argument);

  auto child = buildAddQdiscRequest(kIfindex, 0xFA170001, 0xFA180000, TbfParams{1'000'000, 3028, 6250});
  REQUIRE(child.has_value());
  auto parsed = parseQdiscMessage(*child);
  REQUIRE(parsed.has_value());
  CHECK(parsed->info.handle == 0xFA180000);
  CHECK(parsed->info.parent == 0xFA170001);
  auto asRoot = parseQdiscMessage(*buildReplaceRootRequest(kIfindex, 0xFA180000, TbfParams{1'000'000, 3028, 6250}));
  REQUIRE(asRoot.has_value());
  CHECK(parsed->info.options == asRoot->info.options);
  std::memcpy(&flags, child->data() + 6, 2);
  CHECK(flags == 0x0605);  // EXCL: never replaces a qdisc that is there
}

TEST_CASE("u32 hash table, ports node in it and link node at the IPv4 payload match the bytes tc sends") {
  // Captured with strace -e sendmsg -xx from iproute2 6.1's tc:
  //   tc filter add dev <2> parent fa17: prio 3 handle 601: protocol ip u32 divisor 1
  //   tc filter add dev <2> parent fa17: prio 3 protocol ip u32 ht 601: match u16 443 0xffff at 2 flowid fa17:1
  //   tc filter add dev <2> parent fa17: prio 3 protocol ip u32 match ip dst 10.0.0.0/8
  //       match u16 0 0x1fff at 6 link 601: offset at 0 mask 0f00 shift 6 eat
  // clang-format off
  const std::vector<uint8_t> header = {
      0x2c, 0x00, 0x05, 0x06,  // RTM_NEWTFILTER, REQUEST | ACK | EXCL | CREATE
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0x00, 0x00,  // tcmsg: family
      0x02, 0x00, 0x00, 0x00,  //   ifindex 2
  };
  const std::vector<uint8_t> parentInfoKind = {
      0x00, 0x00, 0x17, 0xfa,  //   parent fa17:
      0x08, 0x00, 0x03, 0x00,  //   info: prio 3, protocol htons(ETH_P_IP)
      0x08, 0x00, 0x01, 0x00, 'u', '3', '2', 0x00,  // TCA_KIND
  };
  const auto message = [&](uint32_t length, uint32_t handle, const std::vector<uint8_t>& options) {
    std::vector<uint8_t> out(4);
    std::memcpy(out.data(), &length, 4);
    out.insert(out.end(), header.begin(), header.end());
    std::vector<uint8_t> h(4);
    std::memcpy(h.data(), &handle, 4);
    out.insert(out.end(), h.begin(), h.end());
    out.insert(out.end(), parentInfoKind.begin(), parentInfoKind.end());
    out.insert(out.end(), options.begin(), options.end());
    return out;
  };
  const auto table = message(56, 0x60100000, {
      0x0c, 0x00, 0x02, 0x00,                          // TCA_OPTIONS
      0x08, 0x00, 0x04, 0x00, 0x01, 0x00, 0x00, 0x00,  // TCA_U32_DIVISOR 1
  });
  const auto ports = message(100, 0, {
      0x38, 0x00, 0x02, 0x00,
      0x08, 0x00, 0x01, 0x00, 0x01, 0x00, 0x17, 0xfa,  // TCA_U32_CLASSID fa17:1
      0x08, 0x00, 0x02, 0x00, 0x00, 0x00, 0x10, 0x60,  // TCA_U32_HASH 601:
      0x24, 0x00, 0x05, 0x00,                          // TCA_U32_SEL
      0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,  // TERMINAL, 1 key
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
      0x00, 0x00, 0xff, 0xff, 0x00, 0x00, 0x01, 0xbb, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // dport at 0
  });
  const auto link = message(108, 0, {
      0x40, 0x00, 0x02, 0x00,
      0x08, 0x00, 0x03, 0x00, 0x00, 0x00, 0x10, 0x60,  // TCA_U32_LINK 601:
      0x34, 0x00, 0x05, 0x00,                          // TCA_U32_SEL
      0x0c, 0x06, 0x02, 0x00,                          // VAROFFSET | EAT, shift 6, 2 keys
      0x0f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // offmask 0x0f00, off 0, offoff 0, hoff 0
      0x00, 0x00, 0x00, 0x00,                          // hmask
      0xff, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // dst /8
      0x00, 0x00, 0x1f, 0xff, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // frag 0
  });
  // clang-format on
  const auto be = [](uint32_t v) { return htonl(v); };
  U32Filter t{.parent = 0xFA170000, .priority = 3, .protocol = 0x0800, .keys = {}, .classid = 0};
  t.divisor = 1;
  t.handle = 0x60100000;
  auto tableBytes = buildAddU32FilterRequest(kIfindex, t);
  REQUIRE(tableBytes.has_value());
  CHECK_MESSAGE(*tableBytes == table, "got:", hex(*tableBytes));

  U32Filter p{.parent = 0xFA170000,
              .priority = 3,
              .protocol = 0x0800,
              .keys = {{be(443), be(0x0000FFFF), 0}},
              .classid = 0xFA170001};
  p.table = 0x60100000;
  auto portBytes = buildAddU32FilterRequest(kIfindex, p);
  REQUIRE(portBytes.has_value());
  CHECK_MESSAGE(*portBytes == ports, "got:", hex(*portBytes));

  U32Filter l{.parent = 0xFA170000,
              .priority = 3,
              .protocol = 0x0800,
              .keys = {{be(0x0A000000), be(0xFF000000), 16}, {0, be(0x00001FFF), 4}},
              .classid = 0};
  l.link = 0x60100000;
  l.skipIpv4Header = true;
  auto linkBytes = buildAddU32FilterRequest(kIfindex, l);
  REQUIRE(linkBytes.has_value());
  CHECK_MESSAGE(*linkBytes == link, "got:", hex(*linkBytes));

  t.handle = 0x60100800;  // a node part in a table handle
  CHECK(buildAddU32FilterRequest(kIfindex, t).error() == std::errc::invalid_argument);
  t.handle = 0x80000000;  // the kernel's own range
  CHECK(buildAddU32FilterRequest(kIfindex, t).error() == std::errc::invalid_argument);
}

// The ingress path: the bytes `ip link add flt-ifb1 up type ifb`, `tc qdisc add dev lo ingress`,
// `tc filter add dev lo parent ffff: protocol ip prio 1 u32 match u32 0 0 action mirred egress
// redirect dev flt-ifb1`, `tc qdisc del dev lo ingress` and `ip link del flt-ifb1` send (read with
// strace on Linux 6.18, iproute2 6.1; lo is index 1, the ifb 2).
// clang-format off
const std::vector<uint8_t> kCreateIfbGolden = {
    0x3c, 0x00, 0x00, 0x00,  // nlmsg_len 60
    0x10, 0x00,              // RTM_NEWLINK
    0x05, 0x06,              // NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,  // ifi_family AF_UNSPEC, pad, ifi_type
    0x00, 0x00, 0x00, 0x00,  // ifi_index 0
    0x01, 0x00, 0x00, 0x00,  // ifi_flags IFF_UP
    0x01, 0x00, 0x00, 0x00,  // ifi_change IFF_UP
    0x0d, 0x00, 0x03, 0x00,  // IFLA_IFNAME, 13 bytes
    'f', 'l', 't', '-', 'i', 'f', 'b', '1', 0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x12, 0x00,  // IFLA_LINKINFO, 12 bytes
    0x07, 0x00, 0x01, 0x00,  // IFLA_INFO_KIND, 7 bytes: "ifb" without a NUL, as ip sends it
    'i', 'f', 'b', 0x00,     // (padding)
};
const std::vector<uint8_t> kAddIngressGolden = {
    0x30, 0x00, 0x00, 0x00,  // nlmsg_len 48
    0x24, 0x00, 0x05, 0x06,  // RTM_NEWQDISC, REQUEST | ACK | EXCL | CREATE
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,  // tcm_family
    0x01, 0x00, 0x00, 0x00,  // tcm_ifindex 1
    0x00, 0x00, 0xff, 0xff,  // tcm_handle ffff:
    0xf1, 0xff, 0xff, 0xff,  // tcm_parent ffff:fff1 (TC_H_INGRESS)
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x01, 0x00, 'i', 'n', 'g', 'r', 'e', 's', 's', 0x00,  // TCA_KIND
};
const std::vector<uint8_t> kRedirectGolden = {
    0x8c, 0x00, 0x00, 0x00,  // nlmsg_len 140
    0x2c, 0x00, 0x05, 0x06,  // RTM_NEWTFILTER, REQUEST | ACK | EXCL | CREATE
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,  // tcm_family
    0x01, 0x00, 0x00, 0x00,  // tcm_ifindex 1
    0x00, 0x00, 0x00, 0x00,  // tcm_handle 0: the kernel picks it
    0x00, 0x00, 0xff, 0xff,  // tcm_parent ffff:
    0x08, 0x00, 0x01, 0x00,  // tcm_info: protocol htons(ETH_P_IP), priority 1
    0x08, 0x00, 0x01, 0x00, 'u', '3', '2', 0x00,  // TCA_KIND
    0x60, 0x00, 0x02, 0x00,  // TCA_OPTIONS, 96 bytes
    0x38, 0x00, 0x07, 0x00,  // TCA_U32_ACT, 56 bytes
    0x34, 0x00, 0x01, 0x00,  // action 1, 52 bytes
    0x0b, 0x00, 0x01, 0x00, 'm', 'i', 'r', 'r', 'e', 'd', 0x00, 0x00,  // TCA_ACT_KIND
    0x24, 0x00, 0x02, 0x80,  // TCA_ACT_OPTIONS | NLA_F_NESTED, 36 bytes
    0x20, 0x00, 0x02, 0x00,  // TCA_MIRRED_PARMS, 32 bytes: struct tc_mirred
    0x00, 0x00, 0x00, 0x00,  // index
    0x00, 0x00, 0x00, 0x00,  // capab
    0x04, 0x00, 0x00, 0x00,  // action TC_ACT_STOLEN
    0x00, 0x00, 0x00, 0x00,  // refcnt
    0x00, 0x00, 0x00, 0x00,  // bindcnt
    0x01, 0x00, 0x00, 0x00,  // eaction TCA_EGRESS_REDIR
    0x02, 0x00, 0x00, 0x00,  // ifindex 2 (the ifb)
    0x24, 0x00, 0x05, 0x00,  // TCA_U32_SEL, 36 bytes
    0x01, 0x00, 0x01, 0x00,  // flags TC_U32_TERMINAL, offshift 0, nkeys 1, padding
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,  // key: mask 0
    0x00, 0x00, 0x00, 0x00,  // value 0
    0x00, 0x00, 0x00, 0x00,  // off 0
    0x00, 0x00, 0x00, 0x00,  // offmask 0
};
const std::vector<uint8_t> kDeleteIngressGolden = {
    0x30, 0x00, 0x00, 0x00,  // nlmsg_len 48
    0x25, 0x00, 0x05, 0x00,  // RTM_DELQDISC, REQUEST | ACK
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00,  // tcm_ifindex 1
    0x00, 0x00, 0xff, 0xff,  // tcm_handle ffff:
    0xf1, 0xff, 0xff, 0xff,  // tcm_parent TC_H_INGRESS
    0x00, 0x00, 0x00, 0x00,
    0x0c, 0x00, 0x01, 0x00, 'i', 'n', 'g', 'r', 'e', 's', 's', 0x00,  // TCA_KIND
};
const std::vector<uint8_t> kDeleteLinkGolden = {
    0x20, 0x00, 0x00, 0x00,  // nlmsg_len 32
    0x11, 0x00, 0x05, 0x00,  // RTM_DELLINK, REQUEST | ACK
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x02, 0x00, 0x00, 0x00,  // ifi_index 2
    0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
};
// clang-format on

TEST_CASE("ingress path requests match the bytes ip and tc send") {
  auto ifb = buildCreateIfbRequest("flt-ifb1");
  REQUIRE(ifb.has_value());
  CHECK(*ifb == kCreateIfbGolden);
  auto ingress = buildAddIngressRequest(1);
  REQUIRE(ingress.has_value());
  CHECK(*ingress == kAddIngressGolden);
  auto redirect = buildAddRedirectFilterRequest(1, RedirectFilter{1, 0x0800, "flt-ifb1"}, 2);
  REQUIRE(redirect.has_value());
  CHECK(*redirect == kRedirectGolden);
  auto delIngress = buildDeleteIngressRequest(1);
  REQUIRE(delIngress.has_value());
  CHECK(*delIngress == kDeleteIngressGolden);
  auto delLink = buildDeleteLinkRequest(2);
  REQUIRE(delLink.has_value());
  CHECK(*delLink == kDeleteLinkGolden);
}

TEST_CASE("ingress path requests refuse what cannot be sent") {
  CHECK(buildCreateIfbRequest("").error() == std::errc::invalid_argument);
  CHECK(buildCreateIfbRequest("flt-ifb123456789").error() == std::errc::invalid_argument);  // 16 bytes
  CHECK(buildCreateIfbRequest("flt-ifb12345678").has_value());                              // 15 bytes
  CHECK(buildAddRedirectFilterRequest(1, RedirectFilter{0, 0x0800, "x"}, 2).error() == std::errc::invalid_argument);
  CHECK(buildAddRedirectFilterRequest(1, RedirectFilter{1, 0x0800, "x"}, 0).error() == std::errc::invalid_argument);
}

TEST_CASE("the filter parser reads priority, protocol, handle, kind and mirred target, and refuses malformed ones") {
  // An RTM_NEWTFILTER as the kernel dumps it has the request's layout: read the golden one.
  auto redirect = parseIngressFilter(kRedirectGolden);
  REQUIRE(redirect.has_value());
  CHECK(redirect->redirects == std::vector<int>{2});
  CHECK(redirect->priority == 1);
  CHECK(redirect->protocol == 0x0800);
  CHECK(redirect->kind == "u32");
  // A u32 filter without actions (faultline's match filters) redirects nowhere.
  auto plain = buildAddU32FilterRequest(2, U32Filter{0xFA170000, 3, 0x86DD, {U32Key{0, 0, 0}}, 0xFA170001});
  REQUIRE(plain.has_value());
  auto none = parseIngressFilter(*plain);
  REQUIRE(none.has_value());
  CHECK(none->redirects.empty());
  CHECK(none->priority == 3);
  CHECK(none->protocol == 0x86DD);
  auto truncated = kRedirectGolden;
  truncated.resize(20);
  CHECK(parseIngressFilter(truncated).error() == std::errc::protocol_error);
  auto badLength = kRedirectGolden;
  badLength[0] = 0xff;  // nlmsg_len beyond the buffer
  CHECK(parseIngressFilter(badLength).error() == std::errc::protocol_error);
  auto badParms = kRedirectGolden;
  badParms[72] = 0x08;  // TCA_MIRRED_PARMS of 4 bytes: too short for struct tc_mirred
  CHECK(!parseIngressFilter(badParms).has_value());
}

// clang-format off
// Captured from tc 6.1 with strace: `tc filter del dev d0 parent ffff: prio 1 protocol ip handle
// 800::800 u32` (d0 of index 3 here), and the same without `handle 800::800 u32`.
const std::vector<uint8_t> kDeleteIngressNodeGolden = {
    0x2c, 0x00, 0x00, 0x00,  // nlmsg_len 44
    0x2d, 0x00, 0x05, 0x00,  // RTM_DELTFILTER, REQUEST | ACK
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x03, 0x00, 0x00, 0x00,  // tcm_ifindex 3
    0x00, 0x08, 0x00, 0x80,  // tcm_handle 800::800
    0x00, 0x00, 0xff, 0xff,  // tcm_parent ffff:
    0x08, 0x00, 0x01, 0x00,  // tcm_info: prio 1, protocol ip (network order)
    0x08, 0x00, 0x01, 0x00, 'u', '3', '2', 0x00,  // TCA_KIND
};
const std::vector<uint8_t> kDeleteIngressPriorityGolden = {
    0x24, 0x00, 0x00, 0x00,  // nlmsg_len 36
    0x2d, 0x00, 0x05, 0x00,  // RTM_DELTFILTER, REQUEST | ACK
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
    0x03, 0x00, 0x00, 0x00,  // tcm_ifindex 3
    0x00, 0x00, 0x00, 0x00,  // tcm_handle 0: the whole priority
    0x00, 0x00, 0xff, 0xff,  // tcm_parent ffff:
    0x08, 0x00, 0x01, 0x00,  // tcm_info: prio 1, protocol ip
};
// clang-format on

TEST_CASE("deleting an ingress filter sends the bytes tc sends") {
  auto node = buildDeleteIngressFilterRequest(3, IngressFilter{1, 0x0800, 0x80000800, "u32", {}});
  REQUIRE(node.has_value());
  CHECK(*node == kDeleteIngressNodeGolden);
  auto priority = buildDeleteIngressFilterRequest(3, IngressFilter{1, 0x0800, 0, "u32", {}});
  REQUIRE(priority.has_value());
  CHECK(*priority == kDeleteIngressPriorityGolden);
  CHECK(buildDeleteIngressFilterRequest(3, IngressFilter{0, 0x0800, 0, "u32", {}}).error() ==
        std::errc::invalid_argument);
  CHECK(buildDeleteIngressFilterRequest(3, IngressFilter{1, 0x0800, 5, "", {}}).error() == std::errc::invalid_argument);
}
