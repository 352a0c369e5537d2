// The userspace network driver on a router: packets this host forwards out of the interface are
// faulted on egress as netem faults them (every packet the interface sends), not only the ones it
// sends itself. Three namespaces the test creates: C (10.81.2.2) -- R (10.81.2.1 | 10.81.1.1,
// forwarding) -- B (10.81.1.2); the fault is on R's veth0, towards B; pings go from C to B, through
// R. Needs root.
#include <regex>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/faults/network/nfqueue_driver.h"
#include "agent/faults/network/packet_queue.h"
#include "agent/faults/spec.h"
#include "agent/kernel/packet_steering.h"
#include "tests/support/netns.h"
#include "tests/support/text.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;

namespace {

// Moves holder's veth1 into the namespace of pid (by its /proc/PID/ns/net path) as name.
void moveVeth1(testing::NetnsHolder& holder, const std::string& to, const std::string& name) {
  const auto start = std::string("/proc/").size();
  const std::string pid = to.substr(start, to.find('/', start) - start);
  for (const std::string& c : {std::string("ip link set veth1 down"), fmt::format("ip link set veth1 name {}", name),
                               fmt::format("ip link set {} netns {}", name, pid)}) {
    REQUIRE_MESSAGE(holder.inNetns(c), holder.error());
  }
}

class Router : public testing::NetnsFixture {
 public:
  Router() {
    REQUIRE_MESSAGE(b_.error().empty(), b_.error());
    REQUIRE_MESSAGE(c_.error().empty(), c_.error());
    moveVeth1(holder_, b_.path(), "b0");
    moveVeth1(c_, netns_, "r1");
    for (const char* cmd : {"ip addr add 10.81.1.1/24 dev veth0", "ip link set r1 up",
                            "ip addr add 10.81.2.1/24 dev r1", "sysctl -qw net.ipv4.ip_forward=1"}) {
      inNetns(cmd);
    }
    for (const char* cmd : {"ip link set b0 up", "ip link set lo up", "ip addr add 10.81.1.2/24 dev b0",
                            "ip route add default via 10.81.1.1"}) {
      REQUIRE_MESSAGE(b_.inNetns(cmd), b_.error());
    }
    for (const char* cmd :
         {"ip link set lo up", "ip addr add 10.81.2.2/24 dev veth0", "ip route add default via 10.81.2.1"}) {
      REQUIRE_MESSAGE(c_.inNetns(cmd), c_.error());
    }
  }

  // ping from C to B, through R: the average round trip in ms (-1: none came back), and the output.
  std::pair<double, std::string> pingThrough(int count = 20) {
    auto r =
        testing::sh(fmt::format("nsenter --net={} ping -n -q -c {} -i 0.05 -W 1 10.81.1.2 2>&1", c_.path(), count));
    std::smatch m;
    static const std::regex rtt(R"(= ([0-9.]+)/([0-9.]+)/)");
    return {std::regex_search(r.output, m, rtt) ? std::stod(m[2]) : -1, r.output};
  }

  v1::FaultSpec onVeth0(v1::FaultSpec spec) {
    auto* t = const_cast<v1::NetworkTarget*>(networkTarget(spec));
    t->set_interface("veth0");
    t->set_netns(netns_);
    return spec;
  }

  NfqueueFaultDriver driver{kernel::probeSteeringSupport(), kernel::openPacketSteering, PacketQueue::open};

 protected:
  testing::NetnsHolder b_;
  testing::NetnsHolder c_;
};

using testing::contains;

}  // namespace

TEST_CASE_FIXTURE(Router, "userspace driver on a router: an egress partition drops forwarded packets too") {
  const auto [before, beforeOut] = pingThrough(5);
  REQUIRE_MESSAGE(before >= 0, beforeOut);
  v1::FaultSpec spec;
  spec.mutable_network_partition()->mutable_target();
  auto applied = driver.apply(onVeth0(spec));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const auto [during, out] = pingThrough(10);
  MESSAGE(fmt::format("C to B through R, R's egress to B partitioned: {}", out.substr(out.find("---"))));
  CHECK_MESSAGE(contains(out, " 100% packet loss"), out);
  REQUIRE((*applied)->revert().has_value());
  const auto [after, afterOut] = pingThrough(5);
  CHECK_MESSAGE(contains(afterOut, " 0% packet loss"), afterOut);
}

TEST_CASE_FIXTURE(Router, "userspace driver on a router: an egress delay delays forwarded packets too") {
  v1::FaultSpec spec;
  *spec.mutable_network_delay()->mutable_delay() = toProto(100ms);
  auto applied = driver.apply(onVeth0(spec));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const auto [during, out] = pingThrough();
  REQUIRE((*applied)->revert().has_value());
  MESSAGE(fmt::format("C to B through R, R's egress to B delayed 100 ms: avg {:.2f} ms", during));
  CHECK_MESSAGE(contains(out, " 0% packet loss"), out);
  CHECK_MESSAGE(during >= 100, out);
  CHECK_MESSAGE(during < 115, out);
}
