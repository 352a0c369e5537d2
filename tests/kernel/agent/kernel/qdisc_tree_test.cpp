// A whole egress tc tree (root, classes, leaf qdiscs, u32 filters) saved by NetworkFaultDriver,
// replaced by a fault and put back on revert, compared dump for dump with what was there before;
// against this machine's kernel, in a network namespace the test creates. Needs root.
#include <linux/pkt_sched.h>

#include <algorithm>
#include <regex>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/kernel/qdisc_tree.h"
#include "tests/support/netns.h"
#include "tests/support/text.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;

namespace {

using testing::contains;

// Everything tc shows of an interface's egress tree, without statistics.
struct Shown {
  std::string qdiscs, classes, filters;
  friend bool operator==(const Shown&, const Shown&) = default;
};

class TreeFixture : public testing::NetnsFixture {
 public:
  struct Dump {
    kernel::QdiscInfo root;
    std::vector<kernel::TcObject> below;
  };

  Dump dump(const std::string& ifname = "veth0") {
    auto table = kernel::openQdiscTable(netns_);
    REQUIRE(table.has_value());
    auto r = (*table)->root(ifname);
    REQUIRE(r.has_value());
    REQUIRE(r->has_value());
    auto below = (*table)->dumpTree(ifname);
    REQUIRE_MESSAGE(below.has_value(), (below ? "" : below.error().message()));
    return {**r, *below};
  }

  // tc lists qdiscs in the order of the kernel's hash chain, which depends on the order they were
  // added: compared as sorted lines.
  static std::string sortedLines(const std::string& text) {
    std::vector<std::string> lines;
    size_t at = 0;
    while (at < text.size()) {
      const size_t end = std::min(text.find('\n', at), text.size());
      lines.push_back(text.substr(at, end - at));
      at = end + 1;
    }
    std::sort(lines.begin(), lines.end());
    std::string out;
    for (const auto& l : lines) {
      out += l + "\n";
    }
    return out;
  }

  Shown shown(const std::string& ifname = "veth0", const std::string& filterParents = "1: 1:1") {
    // htb's direct_packets_stat counts packets (IPv6 router solicitations, ...), not configuration.
    static const std::regex kCounter("direct_packets_stat \\d+");
    Shown s{std::regex_replace(sortedLines(inNetns("tc qdisc show dev " + ifname)), kCounter, ""),
            inNetns("tc class show dev " + ifname), ""};
    std::string parents = filterParents;
    size_t at = 0;
    while (at < parents.size()) {
      const size_t end = std::min(parents.find(' ', at), parents.size());
      s.filters += inNetns(fmt::format("tc filter show dev {} parent {}", ifname, parents.substr(at, end - at)));
      at = end + 1;
    }
    return s;
  }

  // Options compared byte for byte, with the counters the kernel keeps in them (u32's hit counts,
  // htb's direct_pkts) left out by sameTree(); the root's options compared raw.
  void checkSame(const Dump& before, const Dump& after) {
    CHECK(after.root.kind == before.root.kind);
    CHECK(after.root.handle == before.root.handle);
    CHECK(kernel::sameQdiscOptions(before.root.kind, after.root.options, before.root.options));
    CHECK(after.below.size() == before.below.size());
    CHECK(kernel::sameTree(before.below, after.below));
    for (const auto& o : before.below) {
      if (o.type == kernel::TcObjectType::kFilter && o.kind == "u32") {
        continue;  // its hit counters (TCA_U32_PCNT) differ; sameTree compared the rest
      }
      bool found = false;
      for (const auto& a : after.below) {
        found = found || a == o;
      }
      CHECK_MESSAGE(found, kernel::tcObjectText(o), " came back with other bytes");
    }
  }

  v1::FaultSpec bandwidthSpec(const std::string& ifname = "veth0") const {
    v1::FaultSpec spec;
    auto* b = spec.mutable_network_bandwidth();
    b->mutable_target()->set_interface(ifname);
    b->mutable_target()->set_netns(netns_);
    b->set_rate_bps(1'000'000);
    return spec;
  }

  // An htb root with nested classes, leaf qdiscs and u32 filters at the root and at an inner class.
  void buildHtbTree() {
    for (const std::string cmd : {
             "tc qdisc replace dev veth0 root handle 1: htb default 20 r2q 5",
             "tc class add dev veth0 parent 1: classid 1:1 htb rate 100mbit ceil 200mbit burst 20k",
             "tc class add dev veth0 parent 1:1 classid 1:10 htb rate 30mbit ceil 100mbit prio 1",
             "tc class add dev veth0 parent 1:1 classid 1:20 htb rate 70mbit quantum 3000",
             "tc qdisc add dev veth0 parent 1:10 handle 10: pfifo limit 77",
             "tc qdisc add dev veth0 parent 1:20 handle 20: bfifo limit 30000",
             "tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip dst 10.9.0.0/16 match ip dport "
             "5201 0xffff flowid 1:10",
             "tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip protocol 17 0xff flowid 1:20",
             "tc filter add dev veth0 parent 1: protocol ipv6 prio 2 u32 match ip6 dst fd00::/8 flowid 1:10",
             "tc filter add dev veth0 parent 1:1 protocol ip prio 5 u32 match ip tos 0x10 0xff flowid 1:10",
         }) {
      const auto r = testing::sh(fmt::format("nsenter --net={} {}", netns_, cmd));
      REQUIRE_MESSAGE(r.status == 0, cmd, ": ", r.output);
    }
  }

  NetworkFaultDriver driver{kernel::openQdiscTable};
};

}  // namespace

TEST_CASE_FIXTURE(TreeFixture, "an htb tree with classes, leaf qdiscs and u32 filters comes back dump for dump") {
  buildHtbTree();
  const auto before = dump();
  const auto shownBefore = shown();
  // What the dump holds: 3 classes, 2 leaf qdiscs, and filters (priority entries, u32 tables, nodes).
  int classes = 0;
  int qdiscs = 0;
  int nodes = 0;
  for (const auto& o : before.below) {
    classes += o.type == kernel::TcObjectType::kClass ? 1 : 0;
    qdiscs += o.type == kernel::TcObjectType::kQdisc ? 1 : 0;
    nodes += o.type == kernel::TcObjectType::kFilter && (o.handle & 0xFFF) != 0 ? 1 : 0;
  }
  CHECK(classes == 3);
  CHECK(qdiscs == 2);
  CHECK(nodes == 4);

  for (const bool matched : {false, true}) {
    CAPTURE(matched);
    auto spec = bandwidthSpec();
    if (matched) {
      spec.mutable_network_bandwidth()->mutable_target()->mutable_match()->add_destination_cidrs("10.1.2.0/24");
    }
    nlohmann::json record;
    auto applied = driver.apply(spec, [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
      record = r;
      return {};
    });
    REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
    REQUIRE(record.contains("below"));
    CHECK(record["below"].size() == before.below.size());
    const auto during = inNetns("tc class show dev veth0");
    CHECK_FALSE_MESSAGE(contains(during, "class htb 1:10"), during);

    auto reverted = (*applied)->revert();
    REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
    checkSame(before, dump());
    const auto shownAfter = shown();
    CHECK_MESSAGE(shownAfter.qdiscs == shownBefore.qdiscs, shownAfter.qdiscs);
    CHECK_MESSAGE(shownAfter.classes == shownBefore.classes, shownAfter.classes);
    CHECK_MESSAGE(shownAfter.filters == shownBefore.filters, shownAfter.filters);
  }
}

TEST_CASE_FIXTURE(TreeFixture, "crash recovery puts the whole tree back from the undo record alone") {
  buildHtbTree();
  const auto before = dump();
  const auto shownBefore = shown();
  nlohmann::json record;
  {
    auto applied = driver.apply(bandwidthSpec(), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
      record = r;
      return {};
    });
    REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
    // The agent dies here: the applied fault is dropped without a revert.
  }
  CHECK(dump().root.handle == kFaultlineRootHandle);
  // Through the journal's JSON text, as a restarted agent reads it.
  const auto reread = nlohmann::json::parse(record.dump());
  auto recovered = NetworkFaultDriver::revertRecord(reread, kernel::openQdiscTable);
  REQUIRE_MESSAGE(recovered.has_value(), (recovered ? "" : recovered.error().message));
  checkSame(before, dump());
  CHECK(shown() == shownBefore);

  // A crash during that recovery, after the root was back but before the whole tree was: the
  // next recovery adds what is missing (a leaf qdisc and a u32 node here).
  inNetns("tc filter del dev veth0 parent 1: protocol ip prio 1 handle 800::801 u32");
  inNetns("tc qdisc del dev veth0 parent 1:20 handle 20:");
  CHECK_FALSE(kernel::sameTree(before.below, dump().below));
  auto again = NetworkFaultDriver::revertRecord(reread, kernel::openQdiscTable);
  REQUIRE_MESSAGE(again.has_value(), (again ? "" : again.error().message));
  checkSame(before, dump());
  CHECK(shown() == shownBefore);
}

TEST_CASE_FIXTURE(TreeFixture, "an mq root with a handle on a multi-queue veth, with a child per queue") {
  const auto made = testing::sh(
      fmt::format("nsenter --net={} ip link add mq0 numtxqueues 4 type veth peer name mq1 numtxqueues 4", netns_));
  REQUIRE_MESSAGE(made.status == 0, made.output);
  inNetns("ip link set mq0 up");
  inNetns("ip link set mq1 up");
  inNetns("tc qdisc replace dev mq0 root handle 1: mq");
  inNetns("tc qdisc replace dev mq0 parent 1:2 handle 12: pfifo limit 33");
  inNetns("tc qdisc replace dev mq0 parent 1:4 handle 14: tbf rate 5mbit burst 10kb latency 20ms");
  const auto before = dump("mq0");
  const auto qdiscsBefore = sortedLines(inNetns("tc qdisc show dev mq0"));
  CHECK_MESSAGE(contains(qdiscsBefore, "qdisc pfifo 12: parent 1:2"), qdiscsBefore);

  auto applied = driver.apply(bandwidthSpec("mq0"));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK_FALSE(contains(inNetns("tc qdisc show dev mq0"), "pfifo 12:"));
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  checkSame(before, dump("mq0"));
  CHECK(sortedLines(inNetns("tc qdisc show dev mq0")) == qdiscsBefore);
}

TEST_CASE_FIXTURE(TreeFixture, "a tbf root with a child qdisc is restored with the child") {
  inNetns("tc qdisc add dev veth0 root handle 7: tbf rate 2mbit burst 10kb latency 50ms");
  inNetns("tc qdisc add dev veth0 parent 7:1 handle 10: pfifo limit 50");
  const auto before = dump();
  const auto qdiscsBefore = sortedLines(inNetns("tc qdisc show dev veth0"));
  auto applied = driver.apply(bandwidthSpec());
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  checkSame(before, dump());
  CHECK(sortedLines(inNetns("tc qdisc show dev veth0")) == qdiscsBefore);
}

TEST_CASE_FIXTURE(TreeFixture, "a tree with a part faultline cannot restore is refused, naming it, and left intact") {
  buildHtbTree();
  inNetns("tc filter add dev veth0 parent 1: prio 9 handle 2: protocol ip u32 divisor 256");
  const auto shownBefore = shown();
  auto applied = driver.apply(bandwidthSpec());
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::not_supported);
  CHECK_MESSAGE(contains(applied.error().message,
                         "interface veth0 has the root qdisc htb 1:, and its filter u32 2:0:0 parent 1: prio 9 "
                         "protocol 0x0800 is a u32 hashing table (divisor > 1), which faultline cannot restore"),
                applied.error().message);
  CHECK_MESSAGE(contains(applied.error().message, "nothing was changed"), applied.error().message);
  CHECK(shown() == shownBefore);

  // A filter with an action (act_mirred here).
  inNetns("tc filter del dev veth0 parent 1: prio 9");
  inNetns(
      "tc filter add dev veth0 parent 1: protocol ip prio 7 u32 match ip dst 10.8.0.0/16 action mirred egress "
      "redirect dev veth1");
  const auto withAction = shown();
  applied = driver.apply(bandwidthSpec());
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::not_supported);
  CHECK_MESSAGE(contains(applied.error().message, "prio 7 protocol 0x0800 has actions or police"),
                applied.error().message);
  CHECK(shown() == withAction);
}
