// Network fault specs: validation tables, the experiment parser's network keys, the netem
// distribution tables and the netem queue limit. No kernel.
#include <cmath>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include <arpa/inet.h>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/network/netem_dist.h"
#include "agent/faults/network/traffic_match.h"
#include "agent/faults/spec.h"
#include "controller/engine/capabilities.h"
#include "controller/engine/engine.h"
#include "controller/experiment/experiment.h"
#include "tests/fakes/fake_qdisc_table.h"

using namespace faultline;
using namespace std::chrono_literals;

namespace {

v1::FaultSpec delaySpec() {
  v1::FaultSpec spec;
  auto* d = spec.mutable_network_delay();
  d->mutable_target()->set_interface("veth0");
  *d->mutable_delay() = toProto(100ms);
  return spec;
}

// The field validateFaultSpec() names, "" when the spec is valid.
std::string invalidField(const v1::FaultSpec& spec) {
  auto r = validateFaultSpec(spec);
  return r ? "" : r.error().field;
}

std::string invalidMessage(const v1::FaultSpec& spec) {
  auto r = validateFaultSpec(spec);
  return r ? "" : r.error().message;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

// Lines 1-4 header, then one fault step at line 6 ("  - fault:"), its keys from line 7.
std::string withFault(const std::string& keys) {
  return "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: t\nmethod:\n  - fault:\n" + keys;
}

std::string diagnostics(const std::vector<controller::Diagnostic>& ds) {
  std::string out;
  for (const auto& d : ds) {
    out += controller::format(d) + "\n";
  }
  return out;
}

const v1::FaultSpec& onlyFault(const controller::Experiment& e) {
  REQUIRE(e.method.size() == 1);
  REQUIRE(std::holds_alternative<controller::FaultStep>(e.method[0]));
  return std::get<controller::FaultStep>(e.method[0]).spec;
}

}  // namespace

TEST_CASE("network validation table: each bad field is named with what is accepted") {
  struct Case {
    const char* what;
    std::function<void(v1::FaultSpec&)> change;
    std::string field;
    std::string phrase;
  };
  const std::vector<Case> cases = {
      {"valid", [](v1::FaultSpec&) {}, "", ""},
      {"interface default is accepted",
       [](v1::FaultSpec& s) { s.mutable_network_delay()->mutable_target()->set_interface("default"); }, "", ""},
      {"direction both only for partition",
       [](v1::FaultSpec& s) { s.mutable_network_delay()->mutable_target()->set_direction(v1::DIRECTION_BOTH); },
       "direction", "network.partition only"},
      {"unknown direction value",
       [](v1::FaultSpec& s) {
         s.mutable_network_delay()->mutable_target()->set_direction(static_cast<v1::Direction>(9));
       },
       "direction", "egress or ingress"},
      {"bad CIDR",
       [](v1::FaultSpec& s) {
         s.mutable_network_delay()->mutable_target()->mutable_match()->add_destination_cidrs("10.0.0.300/8");
       },
       "match.destination", "not an address"},
      {"host bits set",
       [](v1::FaultSpec& s) {
         s.mutable_network_delay()->mutable_target()->mutable_match()->add_destination_cidrs("10.1.2.3/8");
       },
       "match.destination", "10.0.0.0/8"},
      {"prefix too long for IPv4",
       [](v1::FaultSpec& s) {
         s.mutable_network_delay()->mutable_target()->mutable_match()->add_source_cidrs("10.0.0.0/33");
       },
       "match.source", "/0 to /32"},
      {"mixed families",
       [](v1::FaultSpec& s) {
         auto* m = s.mutable_network_delay()->mutable_target()->mutable_match();
         m->add_destination_cidrs("10.0.0.0/8");
         m->add_source_cidrs("2001:db8::/32");
       },
       "match.source", "one family"},
      {"port 0",
       [](v1::FaultSpec& s) {
         auto* m = s.mutable_network_delay()->mutable_target()->mutable_match();
         m->set_protocol(v1::PROTOCOL_TCP);
         m->add_destination_ports(0);
       },
       "match.destinationPorts", "1 to 65535"},
      {"ports without protocol",
       [](v1::FaultSpec& s) { s.mutable_network_delay()->mutable_target()->mutable_match()->add_source_ports(53); },
       "match.protocol", "tcp or udp"},
      {"ports with icmp",
       [](v1::FaultSpec& s) {
         auto* m = s.mutable_network_delay()->mutable_target()->mutable_match();
         m->set_protocol(v1::PROTOCOL_ICMP);
         m->add_destination_ports(80);
       },
       "match.protocol", "icmp has no ports"},
      {"distribution without jitter",
       [](v1::FaultSpec& s) { s.mutable_network_delay()->set_distribution(v1::DELAY_DISTRIBUTION_PARETO); },
       "distribution", "jitter is 0"},
      {"unknown distribution",
       [](v1::FaultSpec& s) {
         *s.mutable_network_delay()->mutable_jitter() = toProto(10ms);
         s.mutable_network_delay()->set_distribution(static_cast<v1::DelayDistribution>(42));
       },
       "distribution", "uniform, normal, pareto, paretonormal"},
      {"correlation over 100", [](v1::FaultSpec& s) { s.mutable_network_delay()->set_correlation(100.5); },
       "correlation", "≤ 100"},
      {"netem rate too low", [](v1::FaultSpec& s) { s.mutable_network_delay()->set_rate_bps(4); }, "rate",
       "8bit to 1tbit"},
      {"keepOrder without jitter", [](v1::FaultSpec& s) { s.mutable_network_delay()->set_keep_order(true); },
       "keepOrder", "jitter is 0"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto spec = delaySpec();
    c.change(spec);
    CHECK(invalidField(spec) == c.field);
    CHECK(contains(invalidMessage(spec), c.phrase));
  }
}

TEST_CASE("loss: random or Gilbert-Elliott, never both; GE ranges") {
  v1::FaultSpec spec;
  auto* l = spec.mutable_network_loss();
  l->mutable_target()->set_interface("eth0");
  auto* ge = l->mutable_gilbert_elliott();
  ge->set_p(1);
  ge->set_r(25);
  ge->set_bad_loss(100);
  CHECK(invalidField(spec).empty());
  l->set_percent(5);
  CHECK(invalidField(spec) == "percent");
  CHECK(contains(invalidMessage(spec), "either percent"));
  l->set_percent(0);
  ge->set_p(0);
  CHECK(invalidField(spec) == "gilbertElliott.p");
  ge->set_p(1);
  ge->set_good_loss(101);
  CHECK(invalidField(spec) == "gilbertElliott.goodLoss");
  ge->set_good_loss(0);
  ge->set_r(-1);
  CHECK(invalidField(spec) == "gilbertElliott.r");
}

TEST_CASE("duplicate, corrupt, reorder, partition, bandwidth rules") {
  v1::FaultSpec dup;
  dup.mutable_network_duplicate()->mutable_target()->set_interface("eth0");
  CHECK(invalidField(dup) == "percent");
  dup.mutable_network_duplicate()->set_percent(2);
  CHECK(invalidField(dup).empty());
  dup.mutable_network_duplicate()->set_correlation(-5);
  CHECK(invalidField(dup) == "correlation");

  v1::FaultSpec corrupt;
  corrupt.mutable_network_corrupt()->mutable_target()->set_interface("eth0");
  corrupt.mutable_network_corrupt()->set_percent(100.01);
  CHECK(invalidField(corrupt) == "percent");

  v1::FaultSpec reorder;
  auto* o = reorder.mutable_network_reorder();
  o->mutable_target()->set_interface("eth0");
  o->set_percent(25);
  CHECK(invalidField(reorder) == "delay");
  CHECK(contains(invalidMessage(reorder), "is required"));
  *o->mutable_delay() = toProto(10ms);
  CHECK(invalidField(reorder).empty());
  o->set_gap(2'000'000);
  CHECK(invalidField(reorder) == "gap");

  v1::FaultSpec partition;
  auto* p = partition.mutable_network_partition();
  p->mutable_target()->set_interface("eth0");
  p->mutable_target()->set_direction(v1::DIRECTION_BOTH);
  CHECK(invalidField(partition).empty());
  CHECK(faultKindName(partition) == "network.partition");
  CHECK(networkTarget(partition) == &partition.network_partition().target());

  v1::FaultSpec bw;
  auto* b = bw.mutable_network_bandwidth();
  b->mutable_target()->set_interface("eth0");
  b->set_rate_bps(1'000'000);
  *b->mutable_latency() = toProto(50ms);
  CHECK(invalidField(bw).empty());
  b->set_limit_bytes(10000);
  CHECK(invalidField(bw) == "latency");
}

TEST_CASE("CIDRs: v4, v6, bare addresses") {
  auto v4 = parseCidr("192.0.2.0/24");
  REQUIRE(v4.has_value());
  CHECK(v4->family == AF_INET);
  CHECK(v4->prefixLength == 24);
  CHECK(v4->address[0] == 192);
  auto host = parseCidr("192.0.2.7");
  REQUIRE(host.has_value());
  CHECK(host->prefixLength == 32);
  auto v6 = parseCidr("2001:db8::/32");
  REQUIRE(v6.has_value());
  CHECK(v6->family == AF_INET6);
  CHECK(v6->prefixLength == 32);
  CHECK(parseCidr("::1")->prefixLength == 128);
  CHECK_FALSE(parseCidr("2001:db8::1/32").has_value());
  CHECK(contains(parseCidr("2001:db8::1/32").error(), "2001:db8::/32"));
  CHECK_FALSE(parseCidr("10.0.0.0/").has_value());
  CHECK_FALSE(parseCidr("eth0").has_value());
}

TEST_CASE("parser: every network key lands in the spec") {
  const std::string yaml = withFault(
      "      type: network.delay\n"
      "      duration: 5s\n"
      "      target:\n"
      "        interface: default\n"
      "        direction: egress\n"
      "        match:\n"
      "          destination: [10.0.0.0/8, 192.0.2.7]\n"
      "          source: 172.16.0.0/12\n"
      "          protocol: tcp\n"
      "          destinationPorts: [80, 443]\n"
      "          sourcePorts: 8080\n"
      "      delay: 100ms\n"
      "      jitter: 20ms\n"
      "      correlation: 25\n"
      "      distribution: paretonormal\n"
      "      rate: 10mbit\n"
      "      limit: 20000\n");
  auto result = controller::parseExperiment(yaml, "net.yaml");
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : diagnostics(result.error())));
  const auto& d = onlyFault(*result).network_delay();
  CHECK(d.target().interface() == "default");
  CHECK(d.target().direction() == v1::DIRECTION_EGRESS);
  const auto& m = d.target().match();
  REQUIRE(m.destination_cidrs_size() == 2);
  CHECK(m.destination_cidrs(1) == "192.0.2.7");
  CHECK(m.source_cidrs(0) == "172.16.0.0/12");
  CHECK(m.protocol() == v1::PROTOCOL_TCP);
  REQUIRE(m.destination_ports_size() == 2);
  CHECK(m.destination_ports(1) == 443);
  CHECK(m.source_ports(0) == 8080);
  CHECK(toMicros(d.jitter()) == 20ms);
  CHECK(d.distribution() == v1::DELAY_DISTRIBUTION_PARETONORMAL);
  CHECK(d.rate_bps() == 10'000'000);
  CHECK(d.limit_packets() == 20000);
}

TEST_CASE("parser: loss models, duplicate, corrupt, reorder, partition, bandwidth latency") {
  struct Case {
    std::string keys;
    std::function<void(const v1::FaultSpec&)> check;
  };
  const std::vector<Case> cases = {
      {"      type: network.loss\n      duration: 1s\n      target: {interface: eth0}\n"
       "      gilbertElliott: {p: 1%, r: 30, badLoss: 90, goodLoss: 0.5}\n",
       [](const v1::FaultSpec& s) {
         const auto& ge = s.network_loss().gilbert_elliott();
         CHECK(s.network_loss().percent() == 0);
         CHECK(ge.p() == 1);
         CHECK(ge.r() == 30);
         CHECK(ge.bad_loss() == 90);
         CHECK(ge.good_loss() == 0.5);
       }},
      {"      type: network.loss\n      duration: 1s\n      target: {interface: eth0}\n"
       "      gilbertElliott: {p: 5}\n",
       [](const v1::FaultSpec& s) {  // tc's defaults: r = 100 - p, 1-h = 100 %, 1-k = 0
         const auto& ge = s.network_loss().gilbert_elliott();
         CHECK(ge.r() == 95);
         CHECK(ge.bad_loss() == 100);
         CHECK(ge.good_loss() == 0);
       }},
      {"      type: network.duplicate\n      duration: 1s\n      target: {interface: eth0}\n"
       "      percent: 2\n      correlation: 30\n",
       [](const v1::FaultSpec& s) {
         CHECK(s.network_duplicate().percent() == 2);
         CHECK(s.network_duplicate().correlation() == 30);
       }},
      {"      type: network.corrupt\n      duration: 1s\n      target: {interface: eth0}\n      percent: 3\n",
       [](const v1::FaultSpec& s) { CHECK(s.network_corrupt().percent() == 3); }},
      {"      type: network.reorder\n      duration: 1s\n      target: {interface: eth0}\n"
       "      percent: 25\n      delay: 10ms\n      gap: 5\n",
       [](const v1::FaultSpec& s) {
         CHECK(s.network_reorder().percent() == 25);
         CHECK(toMicros(s.network_reorder().delay()) == 10ms);
         CHECK(s.network_reorder().gap() == 5);
       }},
      {"      type: network.partition\n      duration: 1s\n"
       "      target: {interface: eth0, direction: both, match: {destination: \"2001:db8::/32\"}}\n",
       [](const v1::FaultSpec& s) {
         CHECK(s.network_partition().target().direction() == v1::DIRECTION_BOTH);
         CHECK(s.network_partition().target().match().destination_cidrs(0) == "2001:db8::/32");
       }},
      {"      type: network.bandwidth\n      duration: 1s\n      target: {interface: eth0}\n"
       "      rate: 1mbit\n      latency: 50ms\n",
       [](const v1::FaultSpec& s) { CHECK(toMicros(s.network_bandwidth().latency()) == 50ms); }},
  };
  for (const auto& c : cases) {
    CAPTURE(c.keys);
    auto result = controller::parseExperiment(withFault(c.keys), "net.yaml");
    REQUIRE_MESSAGE(result.has_value(), (result ? "" : diagnostics(result.error())));
    c.check(onlyFault(*result));
  }
}

TEST_CASE("parser: bad network values name the file, line, field and what is accepted") {
  struct Case {
    std::string keys;
    std::string field;
    int line;
    std::string phrase;
  };
  const std::string t = "      duration: 1s\n";  // line 8
  const std::vector<Case> cases = {
      {"      type: network.reorder\n" + t + "      target: {interface: eth0}\n      percent: 25\n",
       "method[0].fault.delay", 7, "reorder works by delaying"},
      {"      type: network.delay\n" + t +
           "      target: {interface: eth0}\n      delay: 10ms\n"
           "      jitter: 1ms\n      distribution: gaussian\n",
       "method[0].fault.distribution", 12, "normal, pareto or paretonormal"},
      {"      type: network.delay\n" + t +
           "      target: {interface: eth0}\n      delay: 10ms\n"
           "      distribution: normal\n",
       "method[0].fault.distribution", 11, "jitter is 0"},
      {"      type: network.delay\n" + t + "      target: {interface: eth0, direction: sideways}\n      delay: 1ms\n",
       "method[0].fault.target.direction", 9, "egress, ingress"},
      {"      type: network.delay\n" + t + "      target: {interface: eth0, direction: both}\n      delay: 1ms\n",
       "method[0].fault.target.direction", 9, "network.partition only"},
      {"      type: network.delay\n" + t +
           "      target:\n        interface: eth0\n        match: {destination: [10.0.0.0/8, 300.1.1.1]}\n"
           "      delay: 1ms\n",
       "method[0].fault.target.match.destination[1]", 11, "not an address"},
      {"      type: network.delay\n" + t +
           "      target:\n        interface: eth0\n        match:\n          destinationPorts: [80]\n"
           "      delay: 1ms\n",
       "method[0].fault.target.match.protocol", 12, "tcp or udp"},
      {"      type: network.delay\n" + t +
           "      target:\n        interface: eth0\n        match:\n          protocol: sctp\n"
           "      delay: 1ms\n",
       "method[0].fault.target.match.protocol", 12, "tcp, udp or icmp"},
      {"      type: network.delay\n" + t +
           "      target:\n        interface: eth0\n        match:\n          protocol: udp\n"
           "          sourcePorts: [70000]\n      delay: 1ms\n",
       "method[0].fault.target.match.sourcePorts[0]", 13, "1..65535"},
      {"      type: network.loss\n" + t +
           "      target: {interface: eth0}\n      percent: 5\n      gilbertElliott: {p: 1}\n",
       "method[0].fault.percent", 10, "either percent"},
      {"      type: network.loss\n" + t + "      target: {interface: eth0}\n      gilbertElliott: {q: 1}\n",
       "method[0].fault.gilbertElliott.q", 10, "accepted here: p, r, badLoss, goodLoss"},
      {"      type: network.duplicate\n" + t + "      target: {interface: eth0}\n      percent: 0\n",
       "method[0].fault.percent", 10, "> 0"},
      {"      type: network.partition\n" + t + "      target: {interface: eth0}\n      percent: 100\n",
       "method[0].fault.percent", 10, "belongs to"},
      {"      type: network.delay\n" + t + "      target: {interface: eth0}\n      delay: 1ms\n      limit: 0\n",
       "method[0].fault.limit", 11, "number of packets"},
      {"      type: network.bandwidth\n" + t +
           "      target: {interface: eth0}\n      rate: 1mbit\n      limit: 10kb\n      latency: 50ms\n",
       "method[0].fault.latency", 12, "one of them"},
      {"      type: network.dupliacte\n" + t + "      target: {interface: eth0}\n", "method[0].fault.type", 7,
       "did you mean 'network.duplicate'?"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.keys);
    auto result = controller::parseExperiment(withFault(c.keys), "bad.yaml");
    REQUIRE_FALSE(result.has_value());
    bool found = false;
    for (const auto& d : result.error()) {
      if (d.field == c.field && d.line == c.line && d.file == "bad.yaml" &&
          d.message.find(c.phrase) != std::string::npos) {
        found = true;
      }
    }
    CHECK_MESSAGE(found, diagnostics(result.error()));
  }
}

TEST_CASE("protocolNumber: the IP protocol of a match, per family, as both drivers' rules use it") {
  CHECK(agent::protocolNumber(v1::PROTOCOL_TCP, AF_INET6) == 6);
  CHECK(agent::protocolNumber(v1::PROTOCOL_UDP, AF_INET) == 17);
  CHECK(agent::protocolNumber(v1::PROTOCOL_ICMP, AF_INET) == 1);
  CHECK(agent::protocolNumber(v1::PROTOCOL_ICMP, AF_INET6) == 58);
  CHECK(agent::protocolNumber(v1::PROTOCOL_UNSPECIFIED, AF_INET) == 0);
}

TEST_CASE("parser: a match whose only entries are invalid reports them alone, not an empty match") {
  struct Case {
    std::string match;
    std::string field;
    int column;
    std::string phrase;
  };
  // The match is on line 11; each case has exactly one error.
  const std::vector<Case> cases = {
      {"{destination: [not-a-cidr]}", "method[0].fault.target.match.destination[0]", 31, "not an address"},
      {"{source: 300.1.1.1}", "method[0].fault.target.match.source", 25, "not an address"},
      {"{protocol: sctp}", "method[0].fault.target.match.protocol", 27, "tcp, udp or icmp"},
      {"{protocol: tcp, destinationPorts: [70000]}", "method[0].fault.target.match.destinationPorts[0]", 51,
       "1..65535"},
      // A match written empty is reported once, at the match (target.match, not fault.match).
      {"{}", "method[0].fault.target.match", 16, "it would match all traffic"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.match);
    const std::string keys =
        "      type: network.delay\n      duration: 1s\n"
        "      target:\n        interface: eth0\n        match: " +
        c.match + "\n      delay: 1ms\n";
    auto result = controller::parseExperiment(withFault(keys), "bad.yaml");
    REQUIRE_FALSE(result.has_value());
    const auto& ds = result.error();
    REQUIRE_MESSAGE(ds.size() == 1, diagnostics(ds));
    CHECK(ds[0].file == "bad.yaml");
    CHECK(ds[0].field == c.field);
    CHECK(ds[0].line == 11);
    CHECK(ds[0].column == c.column);
    CHECK_MESSAGE(contains(ds[0].message, c.phrase), ds[0].message);
  }
}

TEST_CASE("distribution files parse; the generated tables have mean 0 and deviation 8192") {
  auto parsed = agent::parseDistributionFile("# comment\n -3 4\n5 # trailing\n");
  REQUIRE(parsed.has_value());
  CHECK(*parsed == std::vector<int16_t>{-3, 4, 5});
  CHECK(contains(agent::parseDistributionFile("1\n2 40000\n").error(), "line 2"));
  CHECK_FALSE(agent::parseDistributionFile("# nothing\n").has_value());

  for (auto d : {v1::DELAY_DISTRIBUTION_NORMAL, v1::DELAY_DISTRIBUTION_PARETO, v1::DELAY_DISTRIBUTION_PARETONORMAL}) {
    CAPTURE(agent::distributionName(d));
    const auto table = agent::generateDelayDistribution(d);
    REQUIRE(table.size() == 4096);
    CHECK(std::is_sorted(table.begin(), table.end()));
    double sum = 0;
    double squares = 0;
    for (int16_t v : table) {
      sum += v;
      squares += static_cast<double>(v) * v;
    }
    const double mean = sum / 4096;
    const double deviation = std::sqrt(squares / 4096 - mean * mean);
    // Clamping the long pareto tail to int16 (4 deviations) pulls mean and deviation in, as in
    // iproute2's own tables (pareto.dist: deviation 6715, paretonormal.dist: 6832).
    CHECK(std::abs(mean) < 800);
    if (d == v1::DELAY_DISTRIBUTION_NORMAL) {
      CHECK(deviation == doctest::Approx(8192).epsilon(0.03));
    } else {
      CHECK(deviation >= 5000);
      CHECK(deviation <= 8500);
    }
  }
  // normal: the median is 0 and the 84th percentile is one deviation.
  const auto normal = agent::generateDelayDistribution(v1::DELAY_DISTRIBUTION_NORMAL);
  CHECK(std::abs(normal[2048]) <= 3);
  CHECK(normal[static_cast<size_t>(0.8413 * 4096)] == doctest::Approx(8192).epsilon(0.01));
  CHECK(agent::generateDelayDistribution(v1::DELAY_DISTRIBUTION_UNIFORM).empty());
}

TEST_CASE("distribution tables come from iproute2's files when present, else are generated") {
  const auto missing = agent::delayDistributionTable(v1::DELAY_DISTRIBUTION_NORMAL, {"/nonexistent-faultline-dir"});
  CHECK(missing.source == "generated");
  CHECK(missing.values == agent::generateDelayDistribution(v1::DELAY_DISTRIBUTION_NORMAL));
  const std::string shipped = "/usr/lib/x86_64-linux-gnu/tc";
  const auto fromFile = agent::delayDistributionTable(v1::DELAY_DISTRIBUTION_NORMAL, {shipped});
  if (fromFile.source == "generated") {
    MESSAGE("skipped the iproute2 comparison: " << shipped << "/normal.dist is not installed (package iproute2)");
    return;
  }
  CHECK(fromFile.source == shipped + "/normal.dist");
  REQUIRE(fromFile.values.size() == 4096);
  // iproute2's table and ours describe the same distribution: close at every decile.
  for (size_t i = 410; i < 4096; i += 410) {
    CAPTURE(i);
    CHECK(std::abs(fromFile.values[i] - missing.values[i]) < 200);
  }
  CHECK(agent::delayDistributionTable(v1::DELAY_DISTRIBUTION_UNIFORM).values.empty());
}

TEST_CASE("netem limit default: packets for delay x rate, at least 1000") {
  CHECK(agent::netemLimitPackets(1ms, 0ms, 1'000'000) == 1000);
  // 100 ms at 10 Gbit/s in 1500-byte packets: 83334 packets.
  CHECK(agent::netemLimitPackets(100ms, 0ms, 0) == 83334);
  CHECK(agent::netemLimitPackets(80ms, 20ms, 0) == 83334);
  CHECK(agent::netemLimitPackets(1s, 0ms, 100'000'000) == 8334);
  CHECK(agent::netemLimitPackets(1h, 1h, 1'000'000'000'000) == 10'000'000);

  v1::NetworkDelay d;
  *d.mutable_delay() = toProto(200ms);
  *d.mutable_jitter() = toProto(10ms);
  d.set_distribution(v1::DELAY_DISTRIBUTION_NORMAL);
  d.set_rate_bps(1'000'000'000);
  auto p = agent::delayParams(d);
  CHECK(p.limitPackets == 17500);
  CHECK(p.delayDistribution.size() == 4096);
  CHECK(p.rateBitsPerSecond == 1'000'000'000);
  d.set_limit_packets(50);
  CHECK(agent::delayParams(d).limitPackets == 50);
}

TEST_CASE("bandwidth latency sizes the tbf limit like tc-tbf(8)") {
  v1::NetworkBandwidth b;
  b.set_rate_bps(8'000'000);  // 1 MB/s
  *b.mutable_latency() = toProto(50ms);
  const auto p = agent::bandwidthParams(b);
  CHECK(p.burstBytes == 10000);          // 10 ms of the rate
  CHECK(p.limitBytes == 50000 + 10000);  // 50 ms of the rate plus the burst
}

TEST_CASE("a matched fault builds htb fa17: + class fa17:1 + the fault below it + u32 filters; revert removes all") {
  auto kernel = std::make_shared<testing::FakeKernel>();
  kernel->addInterface("", "veth0");
  agent::NetworkFaultDriver driver(testing::fakeQdiscOpener(kernel));
  auto spec = delaySpec();
  auto* m = spec.mutable_network_delay()->mutable_target()->mutable_match();
  m->add_destination_cidrs("10.0.0.0/8");
  m->add_destination_cidrs("192.0.2.7");
  m->set_protocol(v1::PROTOCOL_TCP);
  m->add_destination_ports(443);
  nlohmann::json undo;
  auto applied = driver.apply(spec, [&](const nlohmann::json& record) -> tl::expected<void, agent::FaultError> {
    undo = record;
    return {};
  });
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK(undo["qdisc"] == "htb");
  const auto& root = kernel->rootOf("", "veth0");
  REQUIRE(root.has_value());
  CHECK(root->kind == "htb");
  CHECK(root->handle == agent::kFaultlineRootHandle);
  const auto& below = kernel->below[{"", "veth0"}];
  REQUIRE(below.size() == 1);
  CHECK(below[0].kind == "netem");
  CHECK(below[0].handle == agent::kFaultlineLeafHandle);
  CHECK(below[0].parent == agent::kFaultlineClass);
  const auto& tree = kernel->tree[{"", "veth0"}];
  REQUIRE(tree.size() == 7);  // the class, then per destination: a hash table, its ports node, the link
  CHECK(tree[0] == "class fa170001");
  CHECK(tree[1] == "filter prio 3 proto 800 -> 0 keys 0");         // hash table 601:
  CHECK(tree[2] == "filter prio 3 proto 800 -> fa170001 keys 1");  // port, at the IPv4 payload
  CHECK(tree[3] == "filter prio 3 proto 800 -> 0 keys 3");         // destination, protocol, fragment: link
  CHECK(contains((*applied)->describe(), "on matched traffic (6 u32 filters)"));

  REQUIRE((*applied)->revert().has_value());
  CHECK(kernel->rootOf("", "veth0")->handle == 0);
  CHECK_FALSE(kernel->tree.contains({"", "veth0"}));
  CHECK_FALSE(kernel->below.contains({"", "veth0"}));
}

TEST_CASE("a tree that fails half-way is removed before the error is reported") {
  auto kernel = std::make_shared<testing::FakeKernel>();
  kernel->addInterface("", "veth0", kernel::QdiscInfo{"tbf", 0x80010000, testing::kTcRoot, {1, 2, 3}});
  agent::NetworkFaultDriver driver(testing::fakeQdiscOpener(kernel));
  auto spec = delaySpec();
  spec.mutable_network_delay()->mutable_target()->mutable_match()->add_destination_cidrs("10.0.0.0/8");
  kernel->failNextAdd = std::make_error_code(std::errc::no_such_file_or_directory);
  kernel->addsBeforeFailure = 2;  // the class and the netem qdisc go in; the u32 filter fails
  auto applied = driver.apply(spec);
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::no_such_file_or_directory);
  CHECK_MESSAGE(contains(applied.error().message, "u32 filter 1 of 1"), applied.error().message);
  CHECK_MESSAGE(contains(applied.error().message, "modprobe cls_u32"), applied.error().message);
  CHECK_MESSAGE(contains(applied.error().message, "half-built tree was removed"), applied.error().message);
  CHECK_FALSE(applied.error().mayBeChanged);
  const auto& root = kernel->rootOf("", "veth0");
  REQUIRE(root.has_value());
  CHECK(root->kind == "tbf");
  CHECK(root->handle == 0x80010000);
  CHECK(root->options == std::vector<uint8_t>{1, 2, 3});
  CHECK_FALSE(kernel->tree.contains({"", "veth0"}));
}

TEST_CASE("u32 keys of a match: IPv4 prefix, protocol, IHL and fragment guard, ports; IPv6 words") {
  v1::TrafficMatch m;
  m.add_destination_cidrs("10.0.0.0/8");
  m.set_protocol(v1::PROTOCOL_TCP);
  m.add_destination_ports(443);
  auto filters = agent::matchFilters(m, 0xFA170000, 2, 0xFA170001);
  REQUIRE(filters.has_value());
  REQUIRE(filters->size() == 3);  // hash table, ports node in it, link node
  const auto& table = (*filters)[0];
  CHECK(table.divisor == 1);
  CHECK(table.handle == 0x40100000);  // 401: (priority 2 << 9 | 1)
  CHECK(table.keys.empty());
  const auto& ports = (*filters)[1];
  CHECK(ports.table == 0x40100000);
  CHECK(ports.classid == 0xFA170001);
  REQUIRE(ports.keys.size() == 1);
  CHECK(ports.keys[0].value == htonl(443));
  CHECK(ports.keys[0].mask == htonl(0x0000FFFF));
  CHECK(ports.keys[0].offset == 0);  // from the IPv4 payload, wherever IHL puts it
  const auto& link = (*filters)[2];
  CHECK(link.link == 0x40100000);
  CHECK(link.skipIpv4Header);
  CHECK(link.classid == 0);
  const auto& keys = link.keys;
  REQUIRE(keys.size() == 3);
  CHECK(keys[0].value == htonl(0x0A000000));
  CHECK(keys[0].mask == htonl(0xFF000000));
  CHECK(keys[0].offset == 16);
  CHECK(keys[1].value == htonl(0x00060000));
  CHECK(keys[1].offset == 8);
  CHECK(keys[2].mask == htonl(0x00001FFF));  // fragment offset 0
  CHECK(keys[2].offset == 4);
  for (const auto& f : *filters) {
    CHECK(f.protocol == 0x0800);
    CHECK(f.priority == 2);
  }

  v1::TrafficMatch v6;
  v6.add_source_cidrs("2001:db8:1::/48");
  v6.set_protocol(v1::PROTOCOL_ICMP);
  auto f6 = agent::matchFilters(v6, 0xFA170000, 2, 0xFA170001);
  REQUIRE(f6.has_value());
  REQUIRE(f6->size() == 1);
  const auto& k6 = (*f6)[0].keys;
  REQUIRE(k6.size() == 3);  // two words of the /48, next header
  CHECK((*f6)[0].protocol == 0x86DD);
  CHECK(k6[0].offset == 8);
  CHECK(k6[0].value == htonl(0x20010DB8));
  CHECK(k6[1].offset == 12);
  CHECK(k6[1].mask == htonl(0xFFFF0000));
  CHECK(k6[1].value == htonl(0x00010000));
  CHECK(k6[2].value == htonl(58 << 8));  // ICMPv6
  CHECK(k6[2].offset == 4);

  v1::TrafficMatch any;  // protocol alone: both families
  any.set_protocol(v1::PROTOCOL_UDP);
  auto both = agent::matchFilters(any, 0xFA170000, 2, 0xFA170001);
  REQUIRE(both.has_value());
  CHECK(both->size() == 2);

  v1::TrafficMatch big;
  big.set_protocol(v1::PROTOCOL_TCP);
  for (int i = 1; i <= 20; ++i) {
    big.add_destination_ports(static_cast<uint32_t>(i));
    big.add_source_ports(static_cast<uint32_t>(i));
  }
  auto tooMany = agent::matchFilters(big, 0xFA170000, 2, 0xFA170001);
  REQUIRE_FALSE(tooMany.has_value());
  CHECK(contains(tooMany.error(), "800 u32 filters"));
}

TEST_CASE("the controller's own connection is exempted to htb's direct queue") {
  agent::Endpoint controller{*parseCidr("192.0.2.10"), 7443};
  auto filters = agent::exemptFilters({controller}, agent::PeerSide::kDestination, 0xFA170000, 1, 0xFA170000);
  REQUIRE(filters.size() == 3);
  CHECK(filters[0].priority == 1);
  CHECK(filters[1].classid == 0xFA170000);  // hash table, port node, link node (IPv4 with a port)
  CHECK(filters[1].keys.back().value == htonl(7443));
  CHECK(filters[1].keys.back().offset == 0);
  CHECK(filters[2].keys[0].offset == 16);
  CHECK(filters[2].link == filters[0].handle);
  auto back = agent::exemptFilters({controller}, agent::PeerSide::kSource, 0xFA170000, 1, 0xFA170000);
  REQUIRE(back.size() == 3);
  CHECK(back[0].handle != filters[0].handle);  // both sides share priority 1: distinct tables
  CHECK(back[1].keys.back().value == htonl(uint32_t{7443} << 16));
}

TEST_CASE("capabilities: the host and the missing module are named before anything is injected") {
  v1::Capabilities probed;
  probed.set_tc_probed(true);
  probed.set_tbf(true);
  probed.add_qdiscs("tbf");
  probed.add_qdiscs("htb");
  auto spec = delaySpec();
  CHECK(controller::missingModules(spec, probed) == std::vector<std::string>{"sch_netem"});
  v1::FaultSpec bw;
  bw.mutable_network_bandwidth()->mutable_target()->set_interface("eth0");
  bw.mutable_network_bandwidth()->set_rate_bps(1'000'000);
  CHECK(controller::missingModules(bw, probed).empty());
  bw.mutable_network_bandwidth()->mutable_target()->mutable_match()->add_destination_cidrs("10.0.0.0/8");
  CHECK(controller::missingModules(bw, probed) == std::vector<std::string>{"cls_u32"});
  probed.add_classifiers("u32");
  CHECK(controller::missingModules(bw, probed).empty());

  v1::Capabilities old;  // an agent from before the probe lists: netem and tbf flags only
  old.set_netem(true);
  old.set_tbf(true);
  CHECK(controller::missingModules(bw, old).empty());

  controller::FaultStep step{"slow", bw, std::chrono::milliseconds{1000}};
  v1::AgentInfo host;
  host.set_agent_id("a7");
  host.set_hostname("db-7");
  auto noU32 = probed;
  noU32.clear_classifiers();
  *host.mutable_capabilities() = noU32;
  auto why = controller::checkCapabilities({step}, {host});
  REQUIRE(why.has_value());
  CHECK_MESSAGE(contains(*why, "agent a7 (db-7) cannot run network.bandwidth 'slow'"), *why);
  CHECK_MESSAGE(contains(*why, "cls_u32 (CONFIG_NET_CLS_U32; `modprobe cls_u32`)"), *why);
  CHECK_MESSAGE(contains(*why, "nothing was injected"), *why);
  *host.mutable_capabilities() = probed;
  CHECK_FALSE(controller::checkCapabilities({step}, {host}).has_value());
}

TEST_CASE("capabilities: an agent without CAP_NET_ADMIN is named for the privilege, never for modules") {
  // What an agent started under `capsh --drop=cap_net_admin` sends: the privileges it probed, and
  // no traffic control (its probe could not create a qdisc).
  v1::Capabilities caps;
  caps.set_privileges_probed(true);
  caps.add_privileges("CAP_SYS_ADMIN");
  caps.add_privileges("CAP_KILL");
  v1::FaultSpec bw;
  bw.mutable_network_bandwidth()->mutable_target()->set_interface("eth0");
  bw.mutable_network_bandwidth()->set_rate_bps(1'000'000);
  CHECK(controller::missingPrivileges(bw, caps) == std::vector<std::string>{"CAP_NET_ADMIN"});
  CHECK(controller::missingPrivileges(delaySpec(), caps) == std::vector<std::string>{"CAP_NET_ADMIN"});

  controller::FaultStep step{"slow", bw, std::chrono::milliseconds{1000}};
  v1::AgentInfo host;
  host.set_agent_id("a7");
  host.set_hostname("vm");
  *host.mutable_capabilities() = caps;
  auto why = controller::checkCapabilities({step}, {host});
  REQUIRE(why.has_value());
  CHECK_MESSAGE(contains(*why, "agent a7 (vm) cannot run network.bandwidth 'slow': it lacks CAP_NET_ADMIN"), *why);
  CHECK_MESSAGE(contains(*why, "nothing was injected"), *why);
  CHECK_MESSAGE(!contains(*why, "modprobe"), *why);
  CHECK_MESSAGE(!contains(*why, "sch_tbf"), *why);

  // Another network namespace needs CAP_SYS_ADMIN (setns) as well.
  caps.clear_privileges();
  caps.add_privileges("CAP_NET_ADMIN");
  bw.mutable_network_bandwidth()->mutable_target()->set_netns("/run/netns/app");
  CHECK(controller::missingPrivileges(bw, caps) == std::vector<std::string>{"CAP_SYS_ADMIN"});

  // stress.* needs to create a cgroup; process faults need nothing up front.
  v1::FaultSpec cpu;
  cpu.mutable_stress_cpu()->set_workers(1);
  caps.set_cgroup2_mount("/sys/fs/cgroup");
  CHECK(controller::missingPrivileges(cpu, caps) == std::vector<std::string>{"cgroup write access"});
  caps.set_cgroup_writable(true);
  CHECK(controller::missingPrivileges(cpu, caps).empty());
  v1::FaultSpec kill;
  kill.mutable_process_kill()->mutable_process()->set_pid(1234);
  CHECK(controller::missingPrivileges(kill, caps).empty());

  // An agent that did not probe its privileges (an older one) is judged on its modules alone.
  v1::Capabilities old;
  old.set_tbf(true);
  CHECK(controller::missingPrivileges(bw, old).empty());
}

TEST_CASE("capabilities: a dry run is refused as the run would be, naming the host and the module") {
  v1::Capabilities caps;
  caps.set_tc_probed(true);
  caps.set_tbf(true);
  caps.add_qdiscs("tbf");  // no netem
  v1::AgentInfo host;
  host.set_agent_id("a3");
  host.set_hostname("web-3");
  *host.mutable_capabilities() = caps;
  controller::Experiment e;
  e.name = "slow-web";
  e.method.emplace_back(controller::FaultStep{"lag", delaySpec(), std::chrono::milliseconds{1000}});
  auto plan = controller::planRun(e, {host}, 1);
  REQUIRE_FALSE(plan.has_value());
  CHECK_MESSAGE(contains(plan.error(), "agent a3 (web-3) cannot run network.delay 'lag'"), plan.error());
  CHECK_MESSAGE(contains(plan.error(), "sch_netem"), plan.error());
  caps.set_netem(true);
  caps.add_qdiscs("netem");
  *host.mutable_capabilities() = caps;
  plan = controller::planRun(e, {host}, 1);
  REQUIRE_MESSAGE(plan.has_value(), (plan ? "" : plan.error()));
  CHECK(plan->hosts_size() == 1);
}

TEST_CASE("capabilities: on an nfqueue agent netem's kinds need a queue and a backend, not sch_netem") {
  v1::Capabilities caps;
  caps.set_tc_probed(true);
  caps.set_tbf(true);
  caps.add_qdiscs("tbf");
  caps.set_network_driver("nfqueue");
  auto spec = delaySpec();
  spec.mutable_network_delay()->mutable_target()->set_direction(v1::DIRECTION_INGRESS);
  spec.mutable_network_delay()->mutable_target()->mutable_match()->add_destination_cidrs("10.0.0.0/8");
  // Neither the queue nor a backend: both named; no tc module (htb, u32, ifb) is asked for.
  CHECK(controller::missingModules(spec, caps) ==
        std::vector<std::string>{"nfnetlink_queue", "nft_queue or xt_NFQUEUE"});
  caps.add_netfilter("nfnetlink_queue");
  caps.set_steering_backend("xtables");
  CHECK(controller::missingModules(spec, caps).empty());
  CHECK(controller::networkDriverText(caps) == "nfqueue/xtables");
  v1::FaultSpec partition;
  partition.mutable_network_partition()->mutable_target()->set_interface("eth0");
  v1::Capabilities bare;
  bare.set_network_driver("nfqueue");
  // A partition goes through the queue too (no rule may drop once the agent is gone).
  CHECK(controller::missingModules(partition, bare) ==
        std::vector<std::string>{"nfnetlink_queue", "nft_queue or xt_NFQUEUE"});
  bare.add_netfilter("ip_tables");
  bare.add_netfilter("nfnetlink_queue");
  bare.set_steering_backend("xtables");
  CHECK(controller::missingModules(partition, bare).empty());
  // What only netem does is refused before anything is injected: delay's rate, duplicate on ingress.
  auto rated = delaySpec();
  rated.mutable_network_delay()->set_rate_bps(1'000'000);
  CHECK(controller::missingModules(rated, bare) ==
        std::vector<std::string>{"sch_netem (for delay's rate; or use network.bandwidth)"});
  v1::FaultSpec dup;
  dup.mutable_network_duplicate()->mutable_target()->set_interface("eth0");
  dup.mutable_network_duplicate()->set_percent(5);
  CHECK(controller::missingModules(dup, bare).empty());  // egress
  dup.mutable_network_duplicate()->mutable_target()->set_direction(v1::DIRECTION_BOTH);
  CHECK(controller::missingModules(dup, bare) == std::vector<std::string>{"sch_netem (for duplicate on ingress)"});
  controller::FaultStep step{"twice", dup, std::chrono::milliseconds{1000}};
  v1::AgentInfo host;
  host.set_agent_id("a1");
  host.set_hostname("web-1");
  *host.mutable_capabilities() = bare;
  auto why = controller::checkCapabilities({step}, {host});
  REQUIRE(why.has_value());
  CHECK_MESSAGE(contains(*why,
                         "agent a1 (web-1) cannot run network.duplicate 'twice': its kernel lacks sch_netem (for "
                         "duplicate on ingress) (CONFIG_NET_SCH_NETEM;"),
                *why);
  // network.bandwidth stays tc's on either driver.
  v1::FaultSpec bw;
  bw.mutable_network_bandwidth()->mutable_target()->set_interface("eth0");
  bw.mutable_network_bandwidth()->set_rate_bps(1'000'000);
  CHECK(controller::missingModules(bw, bare) == std::vector<std::string>{"sch_tbf"});
  v1::Capabilities netem;
  netem.set_netem(true);
  CHECK(controller::networkDriverText(netem) == "netem");
  CHECK(controller::networkDriverText(v1::Capabilities{}) == "netem (missing)");
}

TEST_CASE("capabilities: netem chosen on a kernel without sch_netem that can queue suggests --network-driver nfqueue") {
  v1::Capabilities caps;
  caps.set_tc_probed(true);
  caps.set_network_driver("netem");
  controller::FaultStep step{"slow", delaySpec(), std::chrono::milliseconds{1000}};
  v1::AgentInfo host;
  host.set_agent_id("a3");
  host.set_hostname("vm-3");
  *host.mutable_capabilities() = caps;
  // No queue either: the suggestion would only be refused in turn.
  auto why = controller::checkCapabilities({step}, {host});
  REQUIRE(why.has_value());
  CHECK_MESSAGE(contains(*why, "its kernel lacks sch_netem"), *why);
  CHECK_FALSE(contains(*why, "--network-driver"));
  for (const char* module : {"ip_tables", "xt_NFQUEUE", "nfnetlink_queue"}) {
    host.mutable_capabilities()->add_netfilter(module);
  }
  why = controller::checkCapabilities({step}, {host});
  REQUIRE(why.has_value());
  CHECK_MESSAGE(contains(*why,
                         "nothing was injected; faultline's userspace driver can run it on this kernel: "
                         "--network-driver nfqueue (or auto, the default)"),
                *why);
}

TEST_CASE("capabilities: direction ingress needs ifb, sch_ingress, cls_u32 and act_mirred, named per host") {
  v1::Capabilities probed;
  probed.set_tc_probed(true);
  probed.set_tbf(true);
  probed.add_qdiscs("tbf");
  probed.add_qdiscs("htb");
  v1::FaultSpec bw;
  bw.mutable_network_bandwidth()->mutable_target()->set_interface("eth0");
  bw.mutable_network_bandwidth()->mutable_target()->set_direction(v1::DIRECTION_INGRESS);
  bw.mutable_network_bandwidth()->set_rate_bps(1'000'000);
  CHECK(controller::missingModules(bw, probed) ==
        std::vector<std::string>{"ifb", "sch_ingress", "cls_u32", "act_mirred"});
  probed.set_ifb(true);
  probed.add_qdiscs("ingress");
  probed.add_classifiers("u32");
  CHECK(controller::missingModules(bw, probed) == std::vector<std::string>{"act_mirred"});
  probed.add_actions("mirred");
  CHECK(controller::missingModules(bw, probed).empty());
  // Egress needs none of them.
  bw.mutable_network_bandwidth()->mutable_target()->set_direction(v1::DIRECTION_EGRESS);
  auto bare = probed;
  bare.set_ifb(false);
  bare.clear_actions();
  CHECK(controller::missingModules(bw, bare).empty());

  bw.mutable_network_bandwidth()->mutable_target()->set_direction(v1::DIRECTION_INGRESS);
  controller::FaultStep step{"slow-in", bw, std::chrono::milliseconds{1000}};
  v1::AgentInfo host;
  host.set_agent_id("a9");
  host.set_hostname("web-9");
  *host.mutable_capabilities() = bare;
  auto why = controller::checkCapabilities({step}, {host});
  REQUIRE(why.has_value());
  CHECK_MESSAGE(contains(*why, "agent a9 (web-9) cannot run network.bandwidth 'slow-in'"), *why);
  CHECK_MESSAGE(contains(*why, "ifb (CONFIG_IFB; `modprobe ifb`)"), *why);
  CHECK_MESSAGE(contains(*why, "act_mirred (CONFIG_NET_ACT_MIRRED; `modprobe act_mirred`)"), *why);
}

TEST_CASE("capabilities: process.pause with mechanism: freeze is refused on a host whose agent found no cgroup v2") {
  v1::FaultSpec spec;
  spec.mutable_process_pause()->mutable_process()->set_name("postgres");
  spec.mutable_process_pause()->set_mechanism(v1::PAUSE_MECHANISM_FREEZE);
  controller::FaultStep step{"stall", spec, std::chrono::milliseconds{1000}};
  v1::AgentInfo host;
  host.set_agent_id("a2");
  host.set_hostname("db-2");
  auto why = controller::checkCapabilities({step}, {host});
  REQUIRE(why.has_value());
  CHECK_MESSAGE(contains(*why,
                         "agent a2 (db-2) cannot run process.pause 'stall' with mechanism: freeze: it found no "
                         "cgroup v2 hierarchy"),
                *why);
  CHECK_MESSAGE(contains(*why, "nothing was injected"), *why);
  host.mutable_capabilities()->set_cgroup2_mount("/sys/fs/cgroup");
  CHECK_FALSE(controller::checkCapabilities({step}, {host}).has_value());
  // Without mechanism: freeze the pause runs anywhere (SIGSTOP without cgroup v2).
  spec.mutable_process_pause()->clear_mechanism();
  host.mutable_capabilities()->clear_cgroup2_mount();
  CHECK_FALSE(
      controller::checkCapabilities({controller::FaultStep{"stall", spec, std::chrono::milliseconds{1000}}}, {host})
          .has_value());
}

TEST_CASE("capabilities: keepOrder without a rate is refused for a netem agent before anything is sent") {
  auto spec = delaySpec();
  spec.mutable_network_delay()->set_keep_order(true);
  controller::FaultStep step{"jittery", spec, std::chrono::milliseconds{1000}};
  v1::AgentInfo host;
  host.set_agent_id("a3");
  host.set_hostname("web-3");
  host.mutable_capabilities()->set_network_driver("netem");
  host.mutable_capabilities()->set_netem(true);
  auto why = controller::checkCapabilities({step}, {host});
  REQUIRE(why.has_value());
  CHECK_MESSAGE(contains(*why,
                         "agent a3 (web-3) cannot run network.delay 'jittery' with keepOrder: true: it injects "
                         "with netem"),
                *why);
  CHECK_MESSAGE(contains(*why, "faultline-agent --network-driver nfqueue"), *why);
  CHECK_MESSAGE(contains(*why, "nothing was injected"), *why);
  // With a rate netem keeps the order: accepted.
  auto rated = spec;
  rated.mutable_network_delay()->set_rate_bps(10'000'000);
  CHECK_FALSE(
      controller::checkCapabilities({controller::FaultStep{"jittery", rated, std::chrono::milliseconds{1000}}}, {host})
          .has_value());
  // The userspace driver keeps each flow in order itself: accepted.
  host.mutable_capabilities()->set_network_driver("nfqueue");
  host.mutable_capabilities()->add_netfilter("nfnetlink_queue");
  host.mutable_capabilities()->set_steering_backend("nftables");
  CHECK_FALSE(controller::checkCapabilities({step}, {host}).has_value());
}
