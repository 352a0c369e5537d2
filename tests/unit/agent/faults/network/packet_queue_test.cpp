// The userspace netem model (agent/faults/network/packet_queue.h): seeded, so ratios and spreads are checked over
// many packets against what tc-netem(8) promises; and impairmentFromSpec()'s conversions and
// refusals. No kernel (the queue itself is tested in tests/kernel/agent/faults/network/packet_queue_test.cpp).
#include <cmath>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/network/netem_dist.h"
#include "agent/faults/network/packet_queue.h"
#include "agent/faults/spec.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;

namespace {

constexpr int kPackets = 200'000;
constexpr size_t kLength = 1000;

struct Counts {
  int dropped = 0;
  int duplicated = 0;
  int corrupted = 0;
  int reordered = 0;
  int lossAfterLoss = 0;  // packets dropped right after a dropped one
  std::vector<double> holdsMs;
  std::vector<int> reorderedAt;
};

Counts run(const Impairment& impairment, uint64_t seed = 7, int packets = kPackets) {
  ImpairmentModel model(impairment, seed);
  Counts c;
  bool previousLost = false;
  for (int i = 0; i < packets; ++i) {
    const auto d = model.next(kLength);
    if (d.drop) {
      ++c.dropped;
      c.lossAfterLoss += previousLost ? 1 : 0;
      previousLost = true;
      CHECK_FALSE(d.duplicate);
      continue;
    }
    previousLost = false;
    c.duplicated += d.duplicate ? 1 : 0;
    if (d.corruptBit) {
      ++c.corrupted;
      REQUIRE(*d.corruptBit < kLength * 8);
    }
    if (d.reordered) {
      ++c.reordered;
      c.reorderedAt.push_back(i);
      CHECK(d.hold.count() == 0);
    } else {
      c.holdsMs.push_back(std::chrono::duration<double, std::milli>(d.hold).count());
    }
  }
  return c;
}

double ratio(int n, int of = kPackets) {
  return static_cast<double>(n) / of;
}

struct Spread {
  double mean = 0;
  double deviation = 0;
  double min = 0;
};

Spread spread(const std::vector<double>& v) {
  Spread s{0, 0, v.empty() ? 0 : v.front()};
  for (double x : v) {
    s.mean += x;
    s.min = std::min(s.min, x);
  }
  s.mean /= static_cast<double>(v.size());
  for (double x : v) {
    s.deviation += (x - s.mean) * (x - s.mean);
  }
  s.deviation = std::sqrt(s.deviation / static_cast<double>(v.size()));
  return s;
}

v1::FaultSpec delaySpec(std::chrono::milliseconds delay, std::chrono::milliseconds jitter = 0ms) {
  v1::FaultSpec spec;
  auto* d = spec.mutable_network_delay();
  d->mutable_target()->set_interface("veth0");
  *d->mutable_delay() = toProto(delay);
  *d->mutable_jitter() = toProto(jitter);
  return spec;
}

}  // namespace

TEST_CASE("packet queue model: random loss drops its percent of packets, and nothing else is touched") {
  Impairment imp;
  imp.lossPercent = 30;
  const auto c = run(imp);
  CHECK(ratio(c.dropped) == doctest::Approx(0.30).epsilon(0.01));
  CHECK(c.duplicated == 0);
  CHECK(c.corrupted == 0);
  CHECK(c.reordered == 0);
  for (double ms : c.holdsMs) {
    REQUIRE(ms == 0);
  }
  // Without correlation a loss does not make the next one likelier.
  CHECK(ratio(c.lossAfterLoss, c.dropped) == doctest::Approx(0.30).epsilon(0.03));
}

TEST_CASE("packet queue model: loss correlation makes losses come in runs (netem's get_crandom)") {
  Impairment imp;
  imp.lossPercent = 30;
  imp.lossCorrelation = 75;
  const auto c = run(imp);
  const double marginal = ratio(c.dropped);
  const double afterLoss = ratio(c.lossAfterLoss, c.dropped);
  INFO("loss ", marginal, ", loss after a loss ", afterLoss);
  // As in netem, correlating the uniform draws also narrows them around their mean, so fewer fall
  // below the loss threshold: the loss rate is lower than asked (tc-netem(8) warns of this).
  CHECK(marginal > 0.01);
  CHECK(marginal < 0.30);
  CHECK(afterLoss > 0.30);
  CHECK(afterLoss > 5 * marginal);
}

TEST_CASE("packet queue model: percent 30 with correlation 75 loses about 3 %, as netem does (docs/experiments.md)") {
  // docs/experiments.md quotes this number: correlated loss is not the percent asked for.
  Impairment imp;
  imp.lossPercent = 30;
  imp.lossCorrelation = 75;
  constexpr int kLossPackets = 100'000;
  for (uint64_t seed : {1, 2, 3}) {
    const auto c = run(imp, seed, kLossPackets);
    const double loss = ratio(c.dropped, kLossPackets);
    INFO("seed ", seed, ": loss ", loss);
    CHECK(loss > 0.025);
    CHECK(loss < 0.040);
  }
  // What the docs point to instead: Gilbert-Elliott {p: 3, r: 7, badLoss: 100} loses 30 %, in runs
  // of 1 / r (about 14 packets) on average.
  Impairment bursty;
  v1::GilbertElliott ge;
  ge.set_p(3);
  ge.set_r(7);
  ge.set_bad_loss(100);
  bursty.gilbertElliott = ge;
  const auto c = run(bursty, 1, kLossPackets);
  const int runs = c.dropped - c.lossAfterLoss;
  INFO("Gilbert-Elliott: loss ", ratio(c.dropped, kLossPackets), ", mean run ", ratio(c.dropped, runs), " packets");
  CHECK(ratio(c.dropped, kLossPackets) == doctest::Approx(0.30).epsilon(0.1));
  CHECK(ratio(c.dropped, runs) == doctest::Approx(1 / 0.07).epsilon(0.1));
}

TEST_CASE("packet queue model: Gilbert-Elliott loss is the bad state's share times its loss") {
  Impairment imp;
  v1::GilbertElliott ge;
  ge.set_p(10);          // good -> bad
  ge.set_r(40);          // bad -> good
  ge.set_bad_loss(100);  // every packet in the bad state
  ge.set_good_loss(0);
  imp.gilbertElliott = ge;
  const auto c = run(imp);
  // Stationary share of the bad state: p / (p + r) = 0.2; mean burst 1 / r = 2.5 packets.
  CHECK(ratio(c.dropped) == doctest::Approx(0.2).epsilon(0.03));
  CHECK(ratio(c.lossAfterLoss, c.dropped) == doctest::Approx(0.6).epsilon(0.03));  // stays bad: 1 - r

  ge.set_bad_loss(50);
  ge.set_good_loss(1);
  imp.gilbertElliott = ge;
  const auto mixed = run(imp);
  CHECK(ratio(mixed.dropped) == doctest::Approx(0.2 * 0.5 + 0.8 * 0.01).epsilon(0.04));
}

TEST_CASE("packet queue model: duplicate and corrupt hit their percent of packets") {
  Impairment imp;
  imp.duplicatePercent = 10;
  imp.corruptPercent = 5;
  const auto c = run(imp);
  CHECK(c.dropped == 0);
  CHECK(ratio(c.duplicated) == doctest::Approx(0.10).epsilon(0.03));
  CHECK(ratio(c.corrupted) == doctest::Approx(0.05).epsilon(0.04));
}

TEST_CASE("packet queue model: a lost packet that was to be duplicated goes once (netem's count)") {
  Impairment imp;
  imp.duplicatePercent = 100;
  imp.lossPercent = 100;
  const auto c = run(imp, 3, 1000);
  CHECK(c.dropped == 0);
  CHECK(c.duplicated == 0);
}

TEST_CASE("packet queue model: corrupt flips bits all over the packet") {
  Impairment imp;
  imp.corruptPercent = 100;
  ImpairmentModel model(imp, 11);
  std::vector<int> perByte(8, 0);
  for (int i = 0; i < 8000; ++i) {
    const auto d = model.next(8);
    REQUIRE(d.corruptBit);
    REQUIRE(*d.corruptBit < 64);
    ++perByte[*d.corruptBit / 8];
  }
  for (int n : perByte) {
    CHECK(n > 850);
    CHECK(n < 1150);
  }
}

TEST_CASE("packet queue model: delay without jitter holds every packet exactly the delay") {
  Impairment imp;
  imp.delay = 100ms;
  const auto c = run(imp, 1, 1000);
  for (double ms : c.holdsMs) {
    REQUIRE(ms == 100.0);
  }
}

TEST_CASE("packet queue model: delay mean and spread per distribution") {
  // uniform: [delay - jitter, delay + jitter), deviation jitter / sqrt(3). A table (the host's
  // NAME.dist or the agent's own): delay + jitter x value / 8192, so the delays have the table's mean
  // and deviation scaled by jitter / 8192 (about 0 and jitter; iproute2's pareto.dist has 0.82).
  for (auto distribution :
       {v1::DELAY_DISTRIBUTION_UNSPECIFIED, v1::DELAY_DISTRIBUTION_UNIFORM, v1::DELAY_DISTRIBUTION_NORMAL,
        v1::DELAY_DISTRIBUTION_PARETO, v1::DELAY_DISTRIBUTION_PARETONORMAL}) {
    CAPTURE(distribution);
    Spread expected{100.0, 10.0 / std::sqrt(3.0), 90.0};
    const auto table = delayDistributionTable(distribution).values;
    if (!table.empty()) {
      std::vector<double> ms;
      for (int16_t v : table) {
        ms.push_back(100.0 + 10.0 * v / 8192.0);
      }
      expected = spread(ms);
      CHECK(expected.deviation == doctest::Approx(10.0).epsilon(0.2));
    }
    Impairment imp;
    imp.delay = 100ms;
    imp.jitter = 10ms;
    imp.distribution = distribution;
    const auto s = spread(run(imp).holdsMs);
    CHECK(s.mean == doctest::Approx(expected.mean).epsilon(0.002));
    CHECK(s.deviation == doctest::Approx(expected.deviation).epsilon(0.02));
    CHECK(s.min >= std::max(0.0, expected.min - 0.01));
  }
}

TEST_CASE("packet queue model: a delay never goes negative (jitter as large as the delay)") {
  Impairment imp;
  imp.delay = 5ms;
  imp.jitter = 5ms;
  imp.distribution = v1::DELAY_DISTRIBUTION_PARETO;
  CHECK(spread(run(imp).holdsMs).min >= 0);
}

TEST_CASE("packet queue model: delay correlation makes consecutive delays alike") {
  Impairment imp;
  imp.delay = 100ms;
  imp.jitter = 50ms;
  imp.delayCorrelation = 90;
  const auto holds = run(imp, 5, 20'000).holdsMs;
  double step = 0;
  for (size_t i = 1; i < holds.size(); ++i) {
    step += std::abs(holds[i] - holds[i - 1]);
  }
  step /= static_cast<double>(holds.size() - 1);
  // Independent uniform draws over 100 ms differ by 33 ms on average.
  CHECK(step < 15.0);
}

TEST_CASE("packet queue model: reorder with gap sends every gap-th packet at once") {
  Impairment imp;
  imp.delay = 10ms;
  imp.reorderPercent = 100;
  imp.gap = 5;
  const auto c = run(imp, 9, 1000);
  REQUIRE(c.reordered == 200);
  for (size_t i = 0; i < c.reorderedAt.size(); ++i) {
    CHECK(c.reorderedAt[i] == static_cast<int>(5 * i + 4));
  }
  for (double ms : c.holdsMs) {
    REQUIRE(ms == 10.0);
  }

  // 25 % with gap 3: at least 2 delayed packets between two reordered ones.
  imp.reorderPercent = 25;
  imp.gap = 3;
  const auto some = run(imp);
  REQUIRE(some.reordered > 0);
  for (size_t i = 1; i < some.reorderedAt.size(); ++i) {
    REQUIRE(some.reorderedAt[i] - some.reorderedAt[i - 1] >= 3);
  }
  // gap 1: each packet a candidate, 25 % of them picked.
  imp.gap = 1;
  CHECK(ratio(run(imp).reordered) == doctest::Approx(0.25).epsilon(0.02));
  // gap 0: netem does not reorder.
  imp.gap = 0;
  CHECK(run(imp, 9, 1000).reordered == 0);
}

TEST_CASE("packet queue model: the same seed gives the same decisions, another seed others") {
  Impairment imp;
  imp.lossPercent = 50;
  imp.delay = 10ms;
  imp.jitter = 5ms;
  ImpairmentModel a(imp, 42);
  ImpairmentModel b(imp, 42);
  ImpairmentModel c(imp, 43);
  int differ = 0;
  for (int i = 0; i < 1000; ++i) {
    const auto x = a.next(100);
    const auto y = b.next(100);
    const auto z = c.next(100);
    REQUIRE(x.drop == y.drop);
    REQUIRE(x.hold == y.hold);
    differ += (x.drop != z.drop || x.hold != z.hold) ? 1 : 0;
  }
  CHECK(differ > 100);
}

TEST_CASE("impairmentFromSpec: delay, loss, duplicate, corrupt and reorder with netem's defaults") {
  auto spec = delaySpec(100ms, 10ms);
  spec.mutable_network_delay()->set_correlation(25);
  spec.mutable_network_delay()->set_distribution(v1::DELAY_DISTRIBUTION_NORMAL);
  auto delay = impairmentFromSpec(spec);
  REQUIRE_MESSAGE(delay.has_value(), (delay ? std::string() : delay.error()));
  CHECK(delay->delay == 100ms);
  CHECK(delay->jitter == 10ms);
  CHECK(delay->delayCorrelation == 25);
  CHECK(delay->distribution == v1::DELAY_DISTRIBUTION_NORMAL);
  CHECK(delay->limitPackets == netemLimitPackets(100ms, 10ms, 0));  // as the netem driver sizes it
  spec.mutable_network_delay()->set_limit_packets(50);
  CHECK(impairmentFromSpec(spec)->limitPackets == 50);

  v1::FaultSpec loss;
  loss.mutable_network_loss()->mutable_target()->set_interface("veth0");
  loss.mutable_network_loss()->set_percent(30);
  loss.mutable_network_loss()->set_correlation(10);
  auto l = impairmentFromSpec(loss);
  REQUIRE_MESSAGE(l.has_value(), (l ? std::string() : l.error()));
  CHECK(l->lossPercent == 30);
  CHECK(l->lossCorrelation == 10);
  CHECK(l->limitPackets == 1000);
  CHECK(l->delay == 0ns);

  v1::FaultSpec ge;
  ge.mutable_network_loss()->mutable_target()->set_interface("veth0");
  ge.mutable_network_loss()->mutable_gilbert_elliott()->set_p(5);
  ge.mutable_network_loss()->mutable_gilbert_elliott()->set_r(50);
  auto g = impairmentFromSpec(ge);
  REQUIRE_MESSAGE(g.has_value(), (g ? std::string() : g.error()));
  REQUIRE(g->gilbertElliott);
  CHECK(g->gilbertElliott->p() == 5);
  CHECK(g->lossPercent == 0);

  v1::FaultSpec dup;
  dup.mutable_network_duplicate()->mutable_target()->set_interface("veth0");
  dup.mutable_network_duplicate()->set_percent(10);
  CHECK(impairmentFromSpec(dup)->duplicatePercent == 10);

  v1::FaultSpec corrupt;
  corrupt.mutable_network_corrupt()->mutable_target()->set_interface("veth0");
  corrupt.mutable_network_corrupt()->set_percent(2);
  corrupt.mutable_network_corrupt()->set_correlation(5);
  CHECK(impairmentFromSpec(corrupt)->corruptPercent == 2);
  CHECK(impairmentFromSpec(corrupt)->corruptCorrelation == 5);

  v1::FaultSpec reorder;
  reorder.mutable_network_reorder()->mutable_target()->set_interface("veth0");
  reorder.mutable_network_reorder()->set_percent(25);
  *reorder.mutable_network_reorder()->mutable_delay() = toProto(10ms);
  auto r = impairmentFromSpec(reorder);
  REQUIRE_MESSAGE(r.has_value(), (r ? std::string() : r.error()));
  CHECK(r->delay == 10ms);
  CHECK(r->reorderPercent == 25);
  CHECK(r->gap == 1);  // tc's default: every packet a candidate
  reorder.mutable_network_reorder()->set_gap(5);
  CHECK(impairmentFromSpec(reorder)->gap == 5);
}

TEST_CASE("impairmentFromSpec: refuses what the userspace path does not do, naming it") {
  auto rate = delaySpec(100ms);
  rate.mutable_network_delay()->set_rate_bps(1'000'000);
  auto r = impairmentFromSpec(rate);
  REQUIRE_FALSE(r);
  CHECK(r.error().find("rate_bps 1000000 needs sch_netem") != std::string::npos);
  CHECK(r.error().find("network.bandwidth") != std::string::npos);

  v1::FaultSpec partition;
  partition.mutable_network_partition()->mutable_target()->set_interface("veth0");
  auto p = impairmentFromSpec(partition);
  REQUIRE_FALSE(p);
  CHECK(p.error().find("network.partition has no userspace impairment") != std::string::npos);

  v1::FaultSpec bandwidth;
  bandwidth.mutable_network_bandwidth()->mutable_target()->set_interface("veth0");
  bandwidth.mutable_network_bandwidth()->set_rate_bps(1'000'000);
  CHECK_FALSE(impairmentFromSpec(bandwidth));

  auto empty = impairmentFromSpec(v1::FaultSpec{});
  REQUIRE_FALSE(empty);

  // An invalid spec is refused with validateFaultSpec()'s field and words.
  auto jitter = impairmentFromSpec(delaySpec(10ms, 20ms));
  REQUIRE_FALSE(jitter);
  CHECK(jitter.error().rfind("jitter: ", 0) == 0);

  v1::FaultSpec noDelay;
  noDelay.mutable_network_reorder()->mutable_target()->set_interface("veth0");
  noDelay.mutable_network_reorder()->set_percent(25);
  auto nd = impairmentFromSpec(noDelay);
  REQUIRE_FALSE(nd);
  CHECK(nd.error().rfind("delay: ", 0) == 0);
}

namespace {

// A minimal IPv4 header (20 bytes) with protocol and addresses, then the ports.
std::vector<uint8_t> ipv4(uint8_t protocol, uint8_t sourceLast, uint16_t sourcePort, uint16_t destinationPort,
                          uint16_t fragment = 0) {
  std::vector<uint8_t> p(28, 0);
  p[0] = 0x45;
  p[6] = static_cast<uint8_t>(fragment >> 8);
  p[7] = static_cast<uint8_t>(fragment & 0xff);
  p[9] = protocol;
  p[12] = 10, p[13] = 0, p[14] = 0, p[15] = sourceLast;
  p[16] = 10, p[17] = 0, p[18] = 0, p[19] = 9;
  p[20] = static_cast<uint8_t>(sourcePort >> 8), p[21] = static_cast<uint8_t>(sourcePort & 0xff);
  p[22] = static_cast<uint8_t>(destinationPort >> 8), p[23] = static_cast<uint8_t>(destinationPort & 0xff);
  return p;
}

}  // namespace

TEST_CASE("keepOrder's flow: addresses, protocol and ports of IPv4 and IPv6; a later fragment has no ports") {
  const auto key = [](const std::vector<uint8_t>& p) { return flowKey(p.data(), p.size()); };
  const uint64_t udp = key(ipv4(17, 1, 5000, 53));
  CHECK(udp != 0);
  CHECK(key(ipv4(17, 1, 5000, 53)) == udp);  // the same flow
  CHECK(key(ipv4(17, 1, 5001, 53)) != udp);  // another source port
  CHECK(key(ipv4(17, 2, 5000, 53)) != udp);  // another source
  CHECK(key(ipv4(6, 1, 5000, 53)) != udp);   // TCP
  // A later fragment carries no ports: all of them are one flow of the addresses.
  CHECK(key(ipv4(17, 1, 5000, 53, 0x00b9)) == key(ipv4(17, 1, 6000, 80, 0x00b9)));
  std::vector<uint8_t> v6(44, 0);
  v6[0] = 0x60;
  v6[6] = 17;
  v6[23] = 1;
  v6[39] = 2;
  v6[41] = 53;
  const uint64_t udp6 = key(v6);
  v6[41] = 54;
  CHECK(key(v6) != udp6);
  CHECK(flowKey(v6.data(), 10) == 0);  // too short: no flow
}

TEST_CASE("keepOrder: a packet of a flow is released no earlier than the one before it; other flows are not held") {
  using TimePoint = FlowOrder::TimePoint;
  FlowOrder order;
  const TimePoint t0{};
  // Flow 1: the first packet wants 30 ms, the second (1 ms later) only 10 ms: it waits for the first.
  CHECK(order.earliest(1, t0 + 30ms) == t0 + 30ms);
  order.held(1, t0 + 30ms, t0);
  CHECK(order.earliest(1, t0 + 11ms) == t0 + 30ms);
  order.held(1, t0 + 30ms, t0 + 1ms);
  CHECK(order.earliest(1, t0 + 40ms) == t0 + 40ms);  // later anyway: its own time
  // Flow 2 is not held behind flow 1.
  CHECK(order.earliest(2, t0 + 12ms) == t0 + 12ms);
  // Flows whose last packet has gone are forgotten once there are many: memory stays bounded.
  for (uint64_t f = 10; f < 5000; ++f) {
    order.held(f, t0 + 1ms, t0 + 2s);
  }
  CHECK(order.flows() <= 2048);
}
