// Traffic matching on this machine's kernel: faultline's htb + u32 tree with a tbf leaf, real
// pings between two network namespaces (veth0 in A, its peer in B): the matched destination is
// throttled while a second destination on the same interface is not; IPv4 and IPv6; the tree
// removed and the root put back on revert. Needs root.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <linux/pkt_sched.h>

#include <regex>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "common/unique_fd.h"
#include "tests/support/netns.h"
#include "tests/support/text.h"

using namespace faultline;
using namespace faultline::agent;

namespace {

using testing::contains;
using testing::sh;

// veth0 in A (the fixture's namespace) with 10.77.1.1, 10.77.2.1, fd77:1::1, fd77:2::1; its peer
// in B with .2 / ::2 of each.
class TwoNamespaces : public testing::PeerNetnsFixture {
 public:
  TwoNamespaces()
      : PeerNetnsFixture({"10.77.1.1/24", "10.77.2.1/24", "fd77:1::1/64", "fd77:2::1/64"},
                         {"10.77.1.2/24", "10.77.2.2/24", "fd77:1::2/64", "fd77:2::2/64"}) {}

  struct Pings {
    int received = 0;
    double avgMs = 0;
  };

  // count pings of 1000 bytes, 10 ms apart, from A to address: replies and their average rtt.
  Pings ping(const std::string& address, int count = 5) {
    auto r = sh(fmt::format("nsenter --net={} ping -q -n -c {} -i 0.01 -s 1000 -W 3 {}", netns_, count, address));
    std::smatch m;
    static const std::regex kReceived(R"((\d+) received)");
    REQUIRE_MESSAGE(std::regex_search(r.output, m, kReceived), r.output);
    Pings out{std::stoi(m[1]), 0};
    static const std::regex kRtt(R"(= [\d.]+/([\d.]+)/)");
    if (std::regex_search(r.output, m, kRtt)) {
      out.avgMs = std::stod(m[1]);
    }
    return out;
  }

  // network.bandwidth at 8 kbit/s (1000 bytes/s, bucket and queue 1600 bytes) on veth0 for match.
  v1::FaultSpec throttle(const v1::TrafficMatch& match) const {
    v1::FaultSpec spec;
    auto* b = spec.mutable_network_bandwidth();
    b->mutable_target()->set_interface("veth0");
    b->mutable_target()->set_netns(netns_);
    *b->mutable_target()->mutable_match() = match;
    b->set_rate_bps(8000);
    b->set_burst_bytes(1600);
    b->set_limit_bytes(1600);
    return spec;
  }

  std::optional<kernel::QdiscInfo> root() {
    auto table = kernel::openQdiscTable(netns_);
    REQUIRE(table.has_value());
    auto r = (*table)->root("veth0");
    REQUIRE(r.has_value());
    return *r;
  }

  NetworkFaultDriver driver{kernel::openQdiscTable};
};

}  // namespace

TEST_CASE_FIXTURE(TwoNamespaces, "a matched IPv4 destination is throttled, a second destination is not") {
  REQUIRE(ping("10.77.1.2").received == 5);  // the link works before the fault
  v1::TrafficMatch match;
  match.add_destination_cidrs("10.77.1.2/32");
  auto applied = driver.apply(throttle(match));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const auto during = root();
  REQUIRE(during.has_value());
  CHECK(during->kind == "htb");
  CHECK(during->handle == kFaultlineRootHandle);
  const auto filters = inNetns("tc filter show dev veth0");
  CHECK_MESSAGE(contains(filters, "flowid fa17:1"), filters);
  CHECK_MESSAGE(contains(filters, "match 0a4d0102/ffffffff at 16"), filters);
  CHECK_MESSAGE(contains(inNetns("tc qdisc show dev veth0"), "qdisc tbf fa18: parent fa17:1"),
                inNetns("tc qdisc show dev veth0"));

  const auto matched = ping("10.77.1.2");
  const auto unmatched = ping("10.77.2.2");
  MESSAGE("matched 10.77.1.2: rtt avg " << matched.avgMs << " ms; unmatched 10.77.2.2: rtt avg " << unmatched.avgMs
                                        << " ms");
  // 1000 bytes/s: each 1028-byte request waits about 1 s for tokens (ping retries what tbf drops).
  CHECK(matched.avgMs >= 300.0);
  CHECK(unmatched.received == 5);
  CHECK(unmatched.avgMs < 50.0);

  REQUIRE((*applied)->revert().has_value());
  const auto after = root();
  REQUIRE(after.has_value());
  CHECK(after->handle == 0);
  CHECK(inNetns("tc filter show dev veth0").empty());
  CHECK(ping("10.77.1.2").avgMs < 50.0);
}

TEST_CASE_FIXTURE(TwoNamespaces, "IPv6 and protocol matching: only ICMPv6 to the matched prefix is throttled") {
  REQUIRE(ping("fd77:1::2").received == 5);
  v1::TrafficMatch match;
  match.add_destination_cidrs("fd77:1::/64");
  match.set_protocol(v1::PROTOCOL_ICMP);
  auto applied = driver.apply(throttle(match));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const auto matched = ping("fd77:1::2");
  const auto unmatched = ping("fd77:2::2");
  const auto ipv4 = ping("10.77.1.2");
  MESSAGE("rtt avg: matched fd77:1::2 " << matched.avgMs << " ms; unmatched fd77:2::2 " << unmatched.avgMs
                                        << " ms; IPv4 10.77.1.2 " << ipv4.avgMs << " ms");
  CHECK(matched.avgMs >= 300.0);
  CHECK(unmatched.received == 5);
  CHECK(unmatched.avgMs < 50.0);
  CHECK(ipv4.received == 5);
  CHECK(ipv4.avgMs < 50.0);
  REQUIRE((*applied)->revert().has_value());
  CHECK(root()->handle == 0);
}

TEST_CASE_FIXTURE(TwoNamespaces, "a pre-existing tbf root comes back byte for byte after a matched fault") {
  inNetns("tc qdisc add dev veth0 root handle 8001: tbf rate 100mbit burst 64kb latency 50ms");
  const auto saved = root();
  REQUIRE(saved.has_value());
  v1::TrafficMatch match;
  match.set_protocol(v1::PROTOCOL_UDP);
  match.add_destination_ports(53);
  auto applied = driver.apply(throttle(match));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK(root()->kind == "htb");
  // IPv4: the port at the payload (offset 0 of a table the link node enters at IHL * 4); IPv6 at 40.
  const auto filters = inNetns("tc filter show dev veth0");
  CHECK_MESSAGE(contains(filters, "match 00000035/0000ffff at 0"), filters);
  CHECK_MESSAGE(contains(filters, "offset 0f00>>6 at 0  eat"), filters);
  CHECK_MESSAGE(contains(filters, "match 00000035/0000ffff at 40"), filters);
  REQUIRE((*applied)->revert().has_value());
  const auto after = root();
  REQUIRE(after.has_value());
  CHECK(after->kind == "tbf");
  CHECK(after->handle == saved->handle);
  CHECK(after->options == saved->options);
}

TEST_CASE_FIXTURE(TwoNamespaces, "a second fault on the same interface is refused with EEXIST and changes nothing") {
  v1::TrafficMatch match;
  match.add_destination_cidrs("10.77.1.2");
  auto first = driver.apply(throttle(match));
  REQUIRE_MESSAGE(first.has_value(), (first ? "" : first.error().message));
  const auto during = root();
  auto second = driver.apply(throttle(match));
  REQUIRE_FALSE(second.has_value());
  CHECK(second.error().code == std::errc::file_exists);
  CHECK_MESSAGE(contains(second.error().message, "one network fault per interface"), second.error().message);
  CHECK(root()->options == during->options);
  REQUIRE((*first)->revert().has_value());
}

namespace {

// From a socket in netns: count UDP datagrams to address:port, with 4 bytes of IP options (three NOPs
// and an END: IHL 6) when withOptions. Returns how many the socket accepted.
int sendUdp(const std::string& netns, const char* address, uint16_t port, int count, bool withOptions) {
  const UniqueFd s = testing::socketIn(netns, AF_INET, SOCK_DGRAM);
  REQUIRE(s.get() >= 0);
  const auto to = testing::socketAddress(address, port);
  REQUIRE(to.length > 0);
  const unsigned char options[4] = {1, 1, 1, 0};  // IPOPT_NOOP x3, IPOPT_END
  if (withOptions) {
    REQUIRE(::setsockopt(s.get(), IPPROTO_IP, IP_OPTIONS, options, sizeof(options)) == 0);
  }
  int sent = 0;
  const char payload[64] = {};
  for (int i = 0; i < count; ++i) {
    if (::sendto(s.get(), payload, sizeof(payload), 0, to.get(), to.length) == static_cast<ssize_t>(sizeof(payload))) {
      ++sent;
    }
  }
  return sent;
}

}  // namespace

TEST_CASE_FIXTURE(TwoNamespaces, "a port match sees IPv4 packets with IP options (u32 variable offset)") {
  REQUIRE(ping("10.77.1.2", 1).received == 1);  // neighbour resolved before the fault
  v1::TrafficMatch match;
  match.set_protocol(v1::PROTOCOL_UDP);
  match.add_destination_ports(5353);
  auto spec = throttle(match);
  spec.mutable_network_bandwidth()->set_rate_bps(100'000'000);  // counted, not held back
  spec.mutable_network_bandwidth()->set_burst_bytes(100'000);
  spec.mutable_network_bandwidth()->set_limit_bytes(1'000'000);
  auto applied = driver.apply(spec);
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  // Packets that reached the fault's qdisc fa18: (only matched traffic goes there).
  const auto faulted = [&] {
    const auto shown = inNetns("tc -s qdisc show dev veth0");
    static const std::regex kSent(R"(qdisc tbf fa18:[^\n]*\n\s*Sent \d+ bytes (\d+) pkt)");
    std::smatch m;
    REQUIRE_MESSAGE(std::regex_search(shown, m, kSent), shown);
    return std::stoi(m[1]);
  };
  const int start = faulted();
  struct Case {
    uint16_t port;
    bool options;
    int expected;
  };
  for (const Case c : {Case{5353, true, 20}, Case{5353, false, 20}, Case{5354, true, 0}, Case{5354, false, 0}}) {
    CAPTURE(c.port);
    CAPTURE(c.options);
    const int before = faulted();
    REQUIRE(sendUdp(netns_, "10.77.1.2", c.port, 20, c.options) == 20);
    CHECK(faulted() - before == c.expected);
  }
  MESSAGE("packets through the fault: " << faulted() - start << " of 80 sent (40 matched, 20 with IP options)");
  REQUIRE((*applied)->revert().has_value());
  CHECK(root()->handle == 0);
}
