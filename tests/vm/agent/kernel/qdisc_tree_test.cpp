// Whole-tree restore on a kernel with sch_prio, sch_netem, sch_fq_codel and sch_codel (Debian's,
// in the scripts/vm-run guest): a prio root with its bands' children and u32 filters, a netem
// fault over an htb root, and fq_codel/codel roots whose dumped times the kernel rounds down.
// Each is dumped, replaced by a fault, restored on revert and dumped again. Run on a host whose
// kernel lacks those qdiscs, each case skips with a message. Needs root.
#include <regex>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/kernel/qdisc_tree.h"
#include "tests/support/netns.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;

namespace {

class VmTreeFixture : public testing::NetnsFixture {
 public:
  struct Dump {
    kernel::QdiscInfo root;
    std::vector<kernel::TcObject> below;
  };

  // False (after saying why) when the kernel cannot create a root of kind here.
  bool has(const std::string& kind) {
    const auto r = testing::sh(fmt::format("nsenter --net={} tc qdisc replace dev veth1 root handle 9: {}", netns_,
                                           kind == "prio" ? "prio bands 3" : kind));
    (void)testing::sh(fmt::format("nsenter --net={} tc qdisc del dev veth1 root", netns_));
    if (r.status != 0) {
      MESSAGE("skipped: this kernel cannot create a ", kind, " qdisc (", r.output,
              "); run it in the guest: scripts/vm-run -- BUILD/tests/vm_tests");
    }
    return r.status == 0;
  }

  Dump dump() {
    auto table = kernel::openQdiscTable(netns_);
    REQUIRE(table.has_value());
    auto r = (*table)->root("veth0");
    REQUIRE(r.has_value());
    REQUIRE(r->has_value());
    auto below = (*table)->dumpTree("veth0");
    REQUIRE_MESSAGE(below.has_value(), (below ? "" : below.error().message()));
    return {**r, *below};
  }

  // What tc shows, without htb's direct_packets_stat (a packet counter, not configuration).
  std::string shown(const std::string& filterParent) {
    static const std::regex kCounter("direct_packets_stat \\d+");
    return std::regex_replace(inNetns("tc qdisc show dev veth0"), kCounter, "") + inNetns("tc class show dev veth0") +
           inNetns("tc filter show dev veth0 parent " + filterParent);
  }

  v1::FaultSpec delaySpec(bool matched) const {
    v1::FaultSpec spec;
    auto* d = spec.mutable_network_delay();
    d->mutable_target()->set_interface("veth0");
    d->mutable_target()->set_netns(netns_);
    *d->mutable_delay() = toProto(20ms);
    if (matched) {
      d->mutable_target()->mutable_match()->add_destination_cidrs("10.7.0.0/16");
    }
    return spec;
  }

  // Applies a delay fault (with and without a match), reverts it, and compares every dump.
  void faultAndCompare(const std::string& filterParent) {
    const auto before = dump();
    const auto shownBefore = shown(filterParent);
    for (const bool matched : {false, true}) {
      CAPTURE(matched);
      auto applied = driver.apply(delaySpec(matched));
      REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
      CHECK(dump().root.handle == kFaultlineRootHandle);
      auto reverted = (*applied)->revert();
      REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
      const auto after = dump();
      CHECK(after.root.kind == before.root.kind);
      CHECK(after.root.handle == before.root.handle);
      CHECK(kernel::sameQdiscOptions(before.root.kind, after.root.options, before.root.options));
      CHECK(kernel::sameTree(before.below, after.below));
      CHECK(shown(filterParent) == shownBefore);
    }
  }

  NetworkFaultDriver driver{kernel::openQdiscTable};
};

}  // namespace

TEST_CASE_FIXTURE(VmTreeFixture, "a prio root with children on its bands and u32 filters comes back exactly") {
  if (!has("prio")) {
    return;
  }
  inNetns("tc qdisc replace dev veth0 root handle 1: prio bands 4 priomap 1 2 2 2 1 2 0 0 1 1 1 1 1 1 1 1");
  inNetns("tc qdisc add dev veth0 parent 1:1 handle 10: pfifo limit 40");
  inNetns("tc qdisc add dev veth0 parent 1:3 handle 30: tbf rate 5mbit burst 10kb latency 30ms");
  inNetns("tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip dst 10.9.0.0/16 flowid 1:3");
  inNetns("tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip dport 53 0xffff flowid 1:1");
  faultAndCompare("1:");
}

TEST_CASE_FIXTURE(VmTreeFixture, "a netem fault over an htb root: the htb tree comes back exactly") {
  if (!has("netem")) {
    return;
  }
  inNetns("tc qdisc replace dev veth0 root handle 1: htb default 20");
  inNetns("tc class add dev veth0 parent 1: classid 1:1 htb rate 100mbit");
  inNetns("tc class add dev veth0 parent 1:1 classid 1:10 htb rate 40mbit ceil 100mbit");
  inNetns("tc class add dev veth0 parent 1:1 classid 1:20 htb rate 60mbit");
  inNetns("tc qdisc add dev veth0 parent 1:10 handle 10: netem delay 5ms");
  inNetns("tc qdisc add dev veth0 parent 1:20 handle 20: fq_codel target 4999us interval 99999us");
  inNetns("tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip dst 10.9.0.0/16 flowid 1:10");
  faultAndCompare("1:");
}

TEST_CASE_FIXTURE(VmTreeFixture, "fq_codel and codel roots come back byte for byte despite the µs rounding") {
  if (!has("fq_codel") || !has("codel")) {
    return;
  }
  for (const std::string qdisc :
       {"fq_codel target 4999us interval 99999us ce_threshold 1234us limit 2048 flows 256 quantum 1400 ecn", "fq_codel",
        "codel target 1us interval 1001us ce_threshold 777us limit 300", "codel target 5ms interval 100ms"}) {
    CAPTURE(qdisc);
    inNetns("tc qdisc replace dev veth0 root handle 3: " + qdisc);
    const auto before = dump();
    auto applied = driver.apply(delaySpec(false));
    REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
    auto reverted = (*applied)->revert();
    REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
    const auto after = dump();
    CHECK(after.root.kind == before.root.kind);
    CHECK(after.root.handle == 0x00030000);
    CHECK(after.root.options == before.root.options);  // byte for byte
    inNetns("tc qdisc del dev veth0 root");
  }
}

TEST_CASE_FIXTURE(VmTreeFixture, "direction both over an htb root: the ingress path goes, the htb tree comes back") {
  if (!has("netem")) {
    return;
  }
  inNetns("tc qdisc replace dev veth0 root handle 1: htb default 20");
  inNetns("tc class add dev veth0 parent 1: classid 1:1 htb rate 100mbit");
  inNetns("tc class add dev veth0 parent 1:1 classid 1:10 htb rate 40mbit ceil 100mbit");
  inNetns("tc class add dev veth0 parent 1:1 classid 1:20 htb rate 60mbit");
  inNetns("tc qdisc add dev veth0 parent 1:10 handle 10: pfifo limit 50");
  inNetns("tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip dst 10.9.0.0/16 flowid 1:10");
  const auto before = dump();
  const auto shownBefore = shown("1:");
  const auto links = inNetns("ip -o link show");
  v1::FaultSpec spec;
  auto* p = spec.mutable_network_partition();
  p->mutable_target()->set_interface("veth0");
  p->mutable_target()->set_netns(netns_);
  p->mutable_target()->set_direction(v1::DIRECTION_BOTH);
  p->mutable_target()->mutable_match()->add_destination_cidrs("10.7.0.0/16");
  auto applied = driver.apply(spec);
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK(dump().root.handle == kFaultlineRootHandle);
  CHECK(inNetns("ip -o link show type ifb").find("flt-ifb") != std::string::npos);
  CHECK(inNetns("tc qdisc show dev veth0 ingress").find("qdisc ingress ffff:") != std::string::npos);
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  const auto after = dump();
  CHECK(after.root.kind == "htb");
  CHECK(after.root.handle == before.root.handle);
  CHECK(kernel::sameTree(before.below, after.below));
  CHECK(shown("1:") == shownBefore);
  CHECK(inNetns("ip -o link show") == links);
  CHECK(inNetns("tc qdisc show dev veth0 ingress").empty());
}
