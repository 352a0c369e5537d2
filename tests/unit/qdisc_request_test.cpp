// Golden bytes of the rtnetlink requests QdiscTable sends, and the dump parser on good and bad
// buffers. Bytes are little-endian (netlink uses host order; these tests run on x86-64/arm64).
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
