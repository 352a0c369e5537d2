// Direction ingress and both on this machine's kernel: faultline's ifb, ingress qdisc and mirred
// redirect, with tbf (this kernel has no netem; tests/vm/ measures netem on ingress). Two network
// namespaces joined by a veth pair (veth0 in A, peer0 in B); a timed TCP transfer measures what A
// receives (faulted) against what A sends (not faulted). Revert, crash recovery and revert-all
// leave the interface exactly as found. Needs root.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <boost/asio/io_context.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/safety/journal.h"
#include "agent/safety/recovery.h"
#include "agent/safety/revert_all.h"
#include "agent/session/agent.h"
#include "common/unique_fd.h"
#include "tests/support/check_cost.h"
#include "tests/support/dying_agent.h"
#include "tests/support/netns.h"
#include "tests/support/text.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;

namespace {

using testing::contains;
using testing::sh;

// veth0 in A (the fixture's namespace) with 10.77.1.1, fd77:1::1; its peer peer0 in B with
// 10.77.1.2, 10.77.2.2, fd77:1::2.
class TwoNamespaces : public testing::PeerNetnsFixture {
 public:
  TwoNamespaces()
      : PeerNetnsFixture({"10.77.1.1/24", "10.77.2.1/24", "fd77:1::1/64"},
                         {"10.77.1.2/24", "10.77.2.2/24", "fd77:1::2/64"}) {}

  // Seconds to move bytes over TCP from fromNs (bound to source) to toNs listening on destination,
  // timed at the receiver from accept to the last byte.
  double transfer(const std::string& fromNs, const std::string& source, const std::string& toNs,
                  const std::string& destination, size_t bytes) {
    const auto listener = testing::tcpListener(toNs, destination, 0);
    REQUIRE_MESSAGE(listener.error.empty(), listener.error);
    const UniqueFd sender = testing::socketIn(fromNs, listener.at.family, SOCK_STREAM);
    REQUIRE(sender.get() >= 0);
    const auto from = testing::socketAddress(source, 0);
    REQUIRE(from.length > 0);
    REQUIRE(::bind(sender.get(), from.get(), from.length) == 0);
    std::thread send([&] {
      if (::connect(sender.get(), listener.at.get(), listener.at.length) != 0) {
        return;
      }
      std::vector<char> chunk(16384, 'x');
      size_t left = bytes;
      while (left > 0) {
        const ssize_t n = ::send(sender.get(), chunk.data(), std::min(left, chunk.size()), MSG_NOSIGNAL);
        if (n <= 0) {
          return;
        }
        left -= static_cast<size_t>(n);
      }
      ::shutdown(sender.get(), SHUT_WR);
    });
    const UniqueFd conn(::accept(listener.fd.get(), nullptr, nullptr));
    const auto start = std::chrono::steady_clock::now();
    size_t received = 0;
    std::vector<char> buffer(65536);
    while (conn.get() >= 0) {
      const ssize_t n = ::recv(conn.get(), buffer.data(), buffer.size(), 0);
      if (n <= 0) {
        break;
      }
      received += static_cast<size_t>(n);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    send.join();
    REQUIRE(received == bytes);
    return seconds;
  }

  // A receives from B (the faulted direction for ingress) and sends to B.
  double intoA(size_t bytes, const std::string& source = "10.77.1.2", const std::string& to = "10.77.1.1") {
    return transfer(peer_.path(), source, netns_, to, bytes);
  }
  double outOfA(size_t bytes) { return transfer(netns_, "10.77.1.1", peer_.path(), "10.77.1.2", bytes); }

  // network.bandwidth at rateBps on veth0 in A, in direction.
  v1::FaultSpec throttle(v1::Direction direction, uint64_t rateBps) const {
    v1::FaultSpec spec;
    auto* b = spec.mutable_network_bandwidth();
    b->mutable_target()->set_interface("veth0");
    b->mutable_target()->set_netns(netns_);
    b->mutable_target()->set_direction(direction);
    b->set_rate_bps(rateBps);
    return spec;
  }

  // What an SRE would compare: qdiscs, filters and interfaces of A.
  std::string state() {
    return inNetns("tc qdisc show") + inNetns("tc filter show dev veth0 ingress") + inNetns("ip -o link show") +
           inNetns("tc filter show dev veth0");
  }

  NetworkFaultDriver driver{kernel::openQdiscTable};
};

constexpr uint64_t kRate = 4'000'000;  // 4 Mbit/s = 500 kB/s
constexpr size_t kBytes = 400'000;     // ~0.8 s at the rate

}  // namespace

TEST_CASE_FIXTURE(TwoNamespaces,
                  "ingress tbf: what veth0 receives is shaped, what it sends is not; revert leaves it as found") {
  const std::string before = state();
  const double freeIn = intoA(kBytes);
  auto applied = driver.apply(throttle(v1::DIRECTION_INGRESS, kRate));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const std::string ifb = inNetns("ip -o link show type ifb");
  CHECK_MESSAGE(contains(ifb, "flt-ifb"), ifb);
  CHECK_MESSAGE(contains(inNetns("tc qdisc show"), "qdisc ingress ffff: dev veth0 parent ffff:fff1"),
                inNetns("tc qdisc show"));
  CHECK_MESSAGE(contains(inNetns("tc filter show dev veth0 ingress"), "Egress Redirect to device flt-ifb"),
                inNetns("tc filter show dev veth0 ingress"));
  const double in = intoA(kBytes);
  const double out = outOfA(kBytes);
  const double inMbps = static_cast<double>(kBytes) * 8 / in / 1e6;
  const double outMbps = static_cast<double>(kBytes) * 8 / out / 1e6;
  MESSAGE(
      fmt::format("ingress tbf 4 Mbit/s, {} bytes: received {:.3f} s ({:.2f} Mbit/s); sent {:.3f} s ({:.1f} "
                  "Mbit/s); received before the fault {:.3f} s",
                  kBytes, in, inMbps, out, outMbps, freeIn));
  CHECK(inMbps > 2.8);  // within 30 % of the rate
  CHECK(inMbps < 5.2);
  CHECK(out < in / 10);  // the egress direction is not shaped
  REQUIRE((*applied)->revert().has_value());
  CHECK(state() == before);
  CHECK(intoA(kBytes) < in / 10);
}

TEST_CASE_FIXTURE(TwoNamespaces, "both: the egress tree on veth0 and the ingress path, each direction dropped") {
  const std::string before = state();
  v1::FaultSpec spec;
  auto* p = spec.mutable_network_partition();
  p->mutable_target()->set_interface("veth0");
  p->mutable_target()->set_netns(netns_);
  p->mutable_target()->set_direction(v1::DIRECTION_BOTH);
  p->mutable_target()->mutable_match()->add_destination_cidrs("10.77.0.0/16");
  auto applied = driver.apply(spec);
  if (!applied && applied.error().code == std::errc::no_such_file_or_directory) {
    // network.partition is netem loss 100 %: this kernel has no netem (tests/vm/ runs it).
    CHECK(contains(applied.error().message, "sch_netem"));
    CHECK(state() == before);  // the half-built tree and the ingress path are gone
    MESSAGE("skipped the traffic part: this kernel has no sch_netem; checked the roll-back instead");
    return;
  }
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  REQUIRE((*applied)->revert().has_value());
  CHECK(state() == before);
}

TEST_CASE_FIXTURE(TwoNamespaces, "both with tbf (egress tree, ingress path): each direction is shaped") {
  const std::string before = state();
  // Direction both is network.partition's alone (netem, missing here): an egress and an ingress
  // network.bandwidth on the same interface give the same kernel state with tbf.
  auto egress = driver.apply(throttle(v1::DIRECTION_EGRESS, kRate));
  REQUIRE_MESSAGE(egress.has_value(), (egress ? "" : egress.error().message));
  auto ingress = driver.apply(throttle(v1::DIRECTION_INGRESS, kRate));
  REQUIRE_MESSAGE(ingress.has_value(), (ingress ? "" : ingress.error().message));
  const double in = intoA(kBytes);
  const double out = outOfA(kBytes);
  MESSAGE(fmt::format("egress and ingress tbf 4 Mbit/s: received {:.3f} s, sent {:.3f} s", in, out));
  CHECK(static_cast<double>(kBytes) * 8 / in / 1e6 < 5.2);
  CHECK(static_cast<double>(kBytes) * 8 / out / 1e6 < 5.2);
  REQUIRE((*ingress)->revert().has_value());
  REQUIRE((*egress)->revert().has_value());
  CHECK(state() == before);
}

TEST_CASE_FIXTURE(TwoNamespaces, "ingress with a source match: a matched source is shaped, another is not") {
  v1::FaultSpec spec = throttle(v1::DIRECTION_INGRESS, kRate);
  spec.mutable_network_bandwidth()->mutable_target()->mutable_match()->add_source_cidrs("10.77.1.2/32");
  auto applied = driver.apply(spec);
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const double matched = intoA(kBytes, "10.77.1.2", "10.77.1.1");
  const double other = intoA(kBytes, "10.77.2.2", "10.77.2.1");
  MESSAGE(fmt::format("ingress tbf 4 Mbit/s for source 10.77.1.2: {:.3f} s; from 10.77.2.2: {:.3f} s", matched, other));
  CHECK(static_cast<double>(kBytes) * 8 / matched / 1e6 < 5.2);
  CHECK(other < matched / 10);
  REQUIRE((*applied)->revert().has_value());
}

TEST_CASE_FIXTURE(TwoNamespaces, "ingress over IPv6 is shaped too") {
  auto applied = driver.apply(throttle(v1::DIRECTION_INGRESS, kRate));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const double in = intoA(kBytes, "fd77:1::2", "fd77:1::1");
  MESSAGE(fmt::format("ingress tbf 4 Mbit/s over IPv6: {:.3f} s ({:.2f} Mbit/s)", in,
                      static_cast<double>(kBytes) * 8 / in / 1e6));
  CHECK(static_cast<double>(kBytes) * 8 / in / 1e6 < 5.2);
  REQUIRE((*applied)->revert().has_value());
}

TEST_CASE_FIXTURE(TwoNamespaces, "someone's ingress qdisc is refused before any change, and left intact") {
  inNetns("tc qdisc add dev veth0 clsact");
  const std::string before = state();
  auto refused = driver.apply(throttle(v1::DIRECTION_INGRESS, kRate));
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == std::errc::device_or_resource_busy);
  CHECK_MESSAGE(contains(refused.error().message, "already has a clsact qdisc"), refused.error().message);
  CHECK(state() == before);
}

TEST_CASE_FIXTURE(TwoNamespaces, "filters someone adds to faultline's ingress qdisc survive the revert, with it") {
  auto applied = driver.apply(throttle(v1::DIRECTION_INGRESS, kRate));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  // Someone else's, added during the fault: a redirect elsewhere at its own priority, a plain
  // classifier filter at another, and a node in faultline's own IPv4 priority (800::801).
  inNetns(
      "tc filter add dev veth0 parent ffff: prio 9 protocol ip u32 match ip dst 10.77.9.9/32 "
      "action mirred egress mirror dev lo");
  inNetns("tc filter add dev veth0 parent ffff: prio 10 protocol ipv6 u32 match ip6 dst fd77:9::9/128 classid 1:1");
  inNetns("tc filter add dev veth0 parent ffff: prio 1 protocol ip u32 match ip dst 10.77.8.8/32 classid 1:2");
  const std::string theirs = inNetns("tc filter show dev veth0 ingress");
  REQUIRE_MESSAGE(contains(theirs, "pref 9"), theirs);
  REQUIRE_MESSAGE(contains(theirs, "pref 10"), theirs);
  REQUIRE_MESSAGE(contains(theirs, "800::801"), theirs);
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  const std::string text = (*applied)->describeRevert("end");
  MESSAGE(text);
  CHECK_MESSAGE(contains(text, "which stays for 3 filter(s) that are not faultline's"), text);
  const std::string after = inNetns("tc filter show dev veth0 ingress");
  CHECK_MESSAGE(contains(after, "pref 9"), after);
  CHECK_MESSAGE(contains(after, "pref 10"), after);
  CHECK_MESSAGE(contains(after, "800::801"), after);
  CHECK_MESSAGE(!contains(after, "800::800"), after);  // faultline's IPv4 redirect
  CHECK_MESSAGE(!contains(after, "flt-ifb"), after);
  CHECK_MESSAGE(!contains(after, "pref 2 "), after);  // faultline's IPv6 priority, whole
  CHECK(contains(inNetns("tc qdisc show dev veth0"), "qdisc ingress ffff:"));
  CHECK_FALSE(contains(inNetns("ip -o link show"), "flt-ifb"));
  // Traffic into A flows unshaped again.
  const double in = intoA(kBytes);
  CHECK_MESSAGE(static_cast<double>(kBytes) * 8 / in / 1e6 > 20, in);
  inNetns("tc qdisc del dev veth0 ingress");
}

TEST_CASE_FIXTURE(TwoNamespaces, "an agent killed with an ingress fault: recovery at the next start cleans up") {
  const std::string before = state();
  std::string pattern = (std::filesystem::temp_directory_path() / "faultline-journal-XXXXXX").string();
  REQUIRE(::mkdtemp(pattern.data()) != nullptr);
  const std::filesystem::path stateDir = pattern;
  testing::agentDiesHoldingFault(
      stateDir, [&]() -> FaultDriver& { return driver; }, "crash-in", throttle(v1::DIRECTION_INGRESS, kRate));
  CHECK(contains(inNetns("ip -o link show type ifb"), "flt-ifb"));

  auto journal = openJournalAndRecover(stateDir, kernel::openQdiscTable);
  REQUIRE_MESSAGE(journal.has_value(), (journal ? "" : journal.error().message));
  CHECK((*journal)->openCount() == 0);
  CHECK(state() == before);
  std::error_code ec;
  std::filesystem::remove_all(stateDir, ec);
}

TEST_CASE_FIXTURE(TwoNamespaces, "revert-all without a journal removes faultline's ifb and ingress qdisc only") {
  // Someone's own ifb and ingress redirect on another interface stay.
  inNetns("ip link add ifb-theirs type ifb");
  inNetns("ip link add dummy-in type veth peer name dummy-out");
  inNetns("tc qdisc add dev dummy-in ingress");
  inNetns(
      "tc filter add dev dummy-in parent ffff: protocol ip prio 5 u32 match u32 0 0 action mirred egress "
      "redirect dev ifb-theirs");
  const std::string before = state() + inNetns("tc filter show dev dummy-in ingress");
  auto applied = driver.apply(throttle(v1::DIRECTION_INGRESS, kRate));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const auto report = revertAllFaults(std::filesystem::temp_directory_path() / "faultline-absent-state", {netns_},
                                      kernel::openQdiscTable);
  CHECK(report.clean());
  REQUIRE(report.removed.size() == 1);
  CHECK_MESSAGE(contains(report.removed[0], "ingress qdisc of veth0 deleted, ifb flt-ifb"), report.removed[0]);
  CHECK(state() + inNetns("tc filter show dev dummy-in ingress") == before);
  // The fault's own revert then finds nothing left to do.
  CHECK((*applied)->revert().has_value());
}

TEST_CASE_FIXTURE(TwoNamespaces,
                  "an htb tree on veth0 comes back whole with the ingress path, and after both's roll-back") {
  for (const std::string cmd : {
           "tc qdisc replace dev veth0 root handle 1: htb default 20",
           "tc class add dev veth0 parent 1: classid 1:1 htb rate 100mbit ceil 200mbit",
           "tc class add dev veth0 parent 1:1 classid 1:10 htb rate 30mbit ceil 100mbit",
           "tc class add dev veth0 parent 1:1 classid 1:20 htb rate 70mbit",
           "tc qdisc add dev veth0 parent 1:10 handle 10: pfifo limit 77",
           "tc filter add dev veth0 parent 1: protocol ip prio 1 u32 match ip dst 10.77.1.2/32 flowid 1:10",
       }) {
    inNetns(cmd);
  }
  // htb's direct_packets_stat counts packets, u32's hit counters too: configuration only.
  const auto shown = [&] {
    static const std::regex kCounters("direct_packets_stat \\d+|\\(rule hit \\d+ success \\d+\\)");
    return std::regex_replace(
        state() + inNetns("tc class show dev veth0") + inNetns("tc filter show dev veth0 parent 1:"), kCounters, "");
  };
  const std::string before = shown();
  SUBCASE("egress and ingress faults on the same interface, reverted") {
    auto egress = driver.apply(throttle(v1::DIRECTION_EGRESS, kRate));
    REQUIRE_MESSAGE(egress.has_value(), (egress ? "" : egress.error().message));
    auto ingress = driver.apply(throttle(v1::DIRECTION_INGRESS, kRate));
    REQUIRE_MESSAGE(ingress.has_value(), (ingress ? "" : ingress.error().message));
    CHECK(contains(inNetns("tc qdisc show dev veth0"), "qdisc tbf fa17: root"));
    CHECK(contains(inNetns("ip -o link show type ifb"), "flt-ifb"));
    REQUIRE((*egress)->revert().has_value());
    REQUIRE((*ingress)->revert().has_value());
    CHECK(shown() == before);
  }
  SUBCASE("direction both (network.partition)") {
    v1::FaultSpec spec;
    auto* p = spec.mutable_network_partition();
    p->mutable_target()->set_interface("veth0");
    p->mutable_target()->set_netns(netns_);
    p->mutable_target()->set_direction(v1::DIRECTION_BOTH);
    p->mutable_target()->mutable_match()->add_destination_cidrs("10.77.0.0/16");
    auto applied = driver.apply(spec);
    if (!applied) {
      // This kernel has no netem: the egress tree failed half-built and was rolled back, the htb
      // tree below the saved root included (tests/vm/ applies it where netem exists).
      REQUIRE_MESSAGE(applied.error().code == std::errc::no_such_file_or_directory, applied.error().message);
      CHECK_FALSE(applied.error().mayBeChanged);
      MESSAGE("this kernel has no sch_netem: checked both's roll-back of the htb tree instead of its revert");
    } else {
      CHECK(contains(inNetns("ip -o link show type ifb"), "flt-ifb"));
      REQUIRE((*applied)->revert().has_value());
    }
    CHECK(shown() == before);
  }
}

TEST_CASE_FIXTURE(TwoNamespaces, "lost(): the ifb's root replaced or the ingress qdisc deleted mid-fault is named") {
  const std::string before = state();
  auto applied = driver.apply(throttle(v1::DIRECTION_INGRESS, kRate));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  auto table = kernel::openQdiscTable(netns_);
  REQUIRE(table.has_value());
  auto index = (*table)->interfaceIndex("veth0");
  REQUIRE(index.has_value());
  const std::string ifb = ifbName(*index);
  REQUIRE_MESSAGE(contains(inNetns("ip -o link show"), ifb), inNetns("ip -o link show"));
  MESSAGE(fmt::format("ingress lost(): {}", testing::checkCost(200, [&] { return !(*applied)->lost().has_value(); })));

  SUBCASE("the ifb's root replaced") {
    inNetns(fmt::format("tc qdisc replace dev {} root handle 9: pfifo", ifb));
    const auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK_MESSAGE(contains(*lost, fmt::format("the fault is no longer in place: the root qdisc of the ifb {} is now "
                                              "pfifo 9:, not faultline's tbf fa17: (someone replaced it)",
                                              ifb)),
                  *lost);
  }
  SUBCASE("the interface's ingress qdisc deleted") {
    inNetns("tc qdisc del dev veth0 ingress");
    const auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK_MESSAGE(contains(*lost, fmt::format("veth0 has no ingress qdisc any more (someone deleted it): its received "
                                              "packets no longer go through the ifb {}",
                                              ifb)),
                  *lost);
  }
  SUBCASE("the ifb deleted") {
    inNetns(fmt::format("ip link del {}", ifb));
    const auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK_MESSAGE(contains(*lost, fmt::format("the ifb {} no longer exists", ifb)), *lost);
    // The kernel now shows the redirects' target as gone ("device *"); they are still faultline's.
    CHECK_MESSAGE(contains(inNetns("tc filter show dev veth0 ingress"), "Egress Redirect to device *"),
                  inNetns("tc filter show dev veth0 ingress"));
  }
  // The revert puts back what it can: faultline's ingress qdisc and ifb go, the interface is as found.
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  CHECK(state() == before);
}
