// netem faults through the agent against a kernel that has sch_netem: Debian's kernel under QEMU
// (scripts/vm-run; see tests/vm/README.md). Two named network namespaces joined by a veth pair;
// the agent (SystemDrivers, the real rtnetlink driver) puts netem on the end in fl-vm-a and ping
// measures what it does from there. Needs root.
//
// Runs in the guest: meson's vm-netem test starts it through scripts/vm-run. Run directly on a
// host, it skips (with a message) when the kernel has no netem qdisc, as the build machines' lacks.
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <utility>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/session/agent.h"
#include "tests/support/netns.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;

namespace {

constexpr const char* kNetnsA = "fl-vm-a";
constexpr const char* kNetnsB = "fl-vm-b";
constexpr const char* kNetnsPathA = "/var/run/netns/fl-vm-a";
constexpr const char* kIfA = "fl-va";  // the veth end in fl-vm-a: the faults go on its egress
constexpr const char* kIfB = "fl-vb";
constexpr const char* kAddrB = "10.99.0.2";

using testing::sh;

std::string run(const std::string& command) {
  auto r = sh(command);
  REQUIRE_MESSAGE(r.status == 0, command, ": ", r.output);
  return r.output;
}

// scripts/vm-run's init creates this in the guest's fresh /run before it runs the command.
bool inVmGuest() {
  return ::access("/run/faultline-vm/cmd.sh", F_OK) == 0;
}

// True (after a MESSAGE saying why) when this is not the vm-run guest and the kernel cannot create
// a netem qdisc. In the guest the test never skips: a missing netem there is a failure.
bool skipWithoutNetem() {
  if (inVmGuest()) {
    return false;
  }
  if (kernel::probeQdiscSupport().netem) {
    return false;
  }
  MESSAGE(
      "skipped: not in the scripts/vm-run guest, and this kernel cannot create a netem qdisc "
      "(no sch_netem, or not root); run it with `scripts/vm-run -- BUILD/tests/vm_tests` or "
      "`meson test -C BUILD --suite vm vm-netem`");
  return true;
}

// Two named namespaces, fl-vm-a (10.99.0.1/24 on fl-va) and fl-vm-b (10.99.0.2/24 on fl-vb),
// joined by a veth pair, lo up in both. Removed on destruction (with the veth pair).
class NetnsPair {
 public:
  NetnsPair() {
    run(fmt::format("ip netns add {}", kNetnsA));
    run(fmt::format("ip netns add {}", kNetnsB));
    run(fmt::format("ip -n {} link add {} type veth peer name {} netns {}", kNetnsA, kIfA, kIfB, kNetnsB));
    run(fmt::format("ip -n {} addr add 10.99.0.1/24 dev {}", kNetnsA, kIfA));
    run(fmt::format("ip -n {} addr add {}/24 dev {}", kNetnsB, kAddrB, kIfB));
    for (const auto* ns : {kNetnsA, kNetnsB}) {
      run(fmt::format("ip -n {} link set lo up", ns));
    }
    run(fmt::format("ip -n {} link set {} up", kNetnsA, kIfA));
    run(fmt::format("ip -n {} link set {} up", kNetnsB, kIfB));
    // Resolves the neighbour before any fault, so loss cannot eat the ARP exchange.
    run(fmt::format("ip netns exec {} ping -c 1 -W 5 -q {}", kNetnsA, kAddrB));
  }
  NetnsPair(const NetnsPair&) = delete;
  NetnsPair& operator=(const NetnsPair&) = delete;

  // The root qdisc of fl-va, read back over rtnetlink.
  static kernel::QdiscInfo rootA() {
    auto table = kernel::openQdiscTable(kNetnsPathA);
    REQUIRE_MESSAGE(table.has_value(), (table ? "" : table.error().message()));
    auto root = (*table)->root(kIfA);
    REQUIRE_MESSAGE(root.has_value(), (root ? "" : root.error().message()));
    REQUIRE(root->has_value());
    return **root;
  }

 private:
  // The first member: built before the constructor's body, so the namespaces go even when a step
  // of it fails; a namespace left over by a crashed run is removed before the body starts.
  struct Cleanup {
    Cleanup() { removeAll(); }
    ~Cleanup() { removeAll(); }
    Cleanup(const Cleanup&) = delete;
    Cleanup& operator=(const Cleanup&) = delete;
    static void removeAll() {
      (void)sh(fmt::format("ip netns del {}", kNetnsA));
      (void)sh(fmt::format("ip netns del {}", kNetnsB));
    }
  };
  Cleanup cleanup_;
};

// The agent with the real drivers, its io_context run on a thread of its own. inject and revert
// are posted to that thread; reports are queued for waitReport.
class AgentThread {
 public:
  AgentThread()
      : agent_(std::make_unique<Agent>(io_, drivers_.router(),
                                       [this](const v1::FaultReport& report) { onReport(report); })),
        work_(boost::asio::make_work_guard(io_)),
        thread_([this] { io_.run(); }) {}
  ~AgentThread() {
    // The agent reverts whatever it still holds, on its own thread.
    boost::asio::post(io_, [this] { agent_.reset(); });
    work_.reset();
    thread_.join();
  }
  AgentThread(const AgentThread&) = delete;
  AgentThread& operator=(const AgentThread&) = delete;

  void inject(v1::Inject inject) {
    boost::asio::post(io_, [this, inject = std::move(inject)] { agent_->inject(inject); });
  }
  void revert(std::string faultId) {
    boost::asio::post(io_, [this, faultId = std::move(faultId)] { agent_->revert(faultId); });
  }

  // The next report, in order of arrival; nullopt after timeout.
  std::optional<v1::FaultReport> waitReport(std::chrono::seconds timeout = 30s) {
    std::unique_lock lock(mutex_);
    if (!arrived_.wait_for(lock, timeout, [this] { return !reports_.empty(); })) {
      return std::nullopt;
    }
    auto report = std::move(reports_.front());
    reports_.pop_front();
    return report;
  }

 private:
  void onReport(const v1::FaultReport& report) {
    {
      std::lock_guard lock(mutex_);
      reports_.push_back(report);
    }
    arrived_.notify_all();
  }

  boost::asio::io_context io_;
  SystemDrivers drivers_;
  std::mutex mutex_;
  std::condition_variable arrived_;
  std::deque<v1::FaultReport> reports_;
  std::unique_ptr<Agent> agent_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::thread thread_;
};

// Waits for the next report and requires it to be faultId in state.
void requireReport(AgentThread& agent, const std::string& faultId, v1::FaultState state) {
  const auto report = agent.waitReport();
  REQUIRE_MESSAGE(report.has_value(), "no report for ", faultId, " within 30 s");
  INFO("report: ", report->ShortDebugString());
  REQUIRE(report->fault_id() == faultId);
  REQUIRE(v1::FaultState_Name(report->state()) == v1::FaultState_Name(state));
}

v1::Inject injectFor(const std::string& faultId, const v1::FaultSpec& spec) {
  v1::Inject inject;
  inject.set_fault_id(faultId);
  inject.set_run_id("vm-netem");
  *inject.mutable_spec() = spec;
  *inject.mutable_duration() = toProto(60s);
  return inject;
}

v1::NetworkTarget targetA() {
  v1::NetworkTarget target;
  target.set_interface(kIfA);
  target.set_netns(kNetnsPathA);
  return target;
}

// What `ping -q` says at the end.
struct PingStats {
  int transmitted = 0;
  int received = 0;
  double minMs = 0;
  double avgMs = 0;
  double maxMs = 0;
  double mdevMs = 0;
  int duplicates = 0;

  [[nodiscard]] double lossPercent() const {
    return transmitted == 0 ? 100.0 : 100.0 * (transmitted - received) / transmitted;
  }
};

// Pings fl-vm-b from fl-vm-a. Exit status 1 (some replies missing) is expected under loss.
PingStats ping(int count, const char* interval) {
  const auto command = fmt::format("ip netns exec {} ping -c {} -i {} -W 2 -q {}", kNetnsA, count, interval, kAddrB);
  const auto r = sh(command);
  INFO(command, ": ", r.output);
  REQUIRE((r.status == 0 || r.status == 1));
  PingStats stats;
  std::smatch m;
  REQUIRE(std::regex_search(r.output, m, std::regex(R"((\d+) packets transmitted, (\d+) received)")));
  stats.transmitted = std::stoi(m[1]);
  stats.received = std::stoi(m[2]);
  if (std::regex_search(r.output, m, std::regex(R"(= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+))"))) {
    stats.minMs = std::stod(m[1]);
    stats.avgMs = std::stod(m[2]);
    stats.maxMs = std::stod(m[3]);
    stats.mdevMs = std::stod(m[4]);
  }
  if (std::regex_search(r.output, m, std::regex(R"(\+(\d+) duplicates)"))) {
    stats.duplicates = std::stoi(m[1]);
  }
  return stats;
}

// Pings an address of fl-vm-b from fl-vm-a (any family).
PingStats pingTo(const std::string& address, int count, const char* interval) {
  const auto command =
      fmt::format("ip netns exec {} ping -n -c {} -i {} -W 2 -q {}", kNetnsA, count, interval, address);
  const auto r = sh(command);
  INFO(command, ": ", r.output);
  REQUIRE((r.status == 0 || r.status == 1));
  PingStats stats;
  std::smatch m;
  REQUIRE(std::regex_search(r.output, m, std::regex(R"((\d+) packets transmitted, (\d+) received)")));
  stats.transmitted = std::stoi(m[1]);
  stats.received = std::stoi(m[2]);
  if (std::regex_search(r.output, m, std::regex(R"(= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+))"))) {
    stats.minMs = std::stod(m[1]);
    stats.avgMs = std::stod(m[2]);
    stats.maxMs = std::stod(m[3]);
    stats.mdevMs = std::stod(m[4]);
  }
  return stats;
}

// Applies spec through the real driver and returns the applied fault; requires success.
std::unique_ptr<AppliedFault> applyDirect(const v1::FaultSpec& spec) {
  NetworkFaultDriver driver(kernel::openQdiscTable);
  auto applied = driver.apply(spec);
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  return std::move(*applied);
}

std::string describe(const PingStats& s) {
  return fmt::format("{}/{} received ({:.1f} % loss), rtt min/avg/max {:.3f}/{:.3f}/{:.3f} ms", s.received,
                     s.transmitted, s.lossPercent(), s.minMs, s.avgMs, s.maxMs);
}

}  // namespace

TEST_CASE("delay") {
  if (skipWithoutNetem()) {
    return;
  }
  NetnsPair pair;
  AgentThread agent;
  const auto before = NetnsPair::rootA();

  v1::FaultSpec spec;
  *spec.mutable_network_delay()->mutable_target() = targetA();
  *spec.mutable_network_delay()->mutable_delay() = toProto(100ms);
  agent.inject(injectFor("vm-delay", spec));
  requireReport(agent, "vm-delay", v1::FAULT_STATE_APPLIED);
  const auto during = NetnsPair::rootA();
  CHECK(during.kind == "netem");
  CHECK(during.handle == kFaultlineRootHandle);

  const auto delayed = ping(20, "0.05");
  MESSAGE("delay 100 ms held: ", describe(delayed));
  CHECK(delayed.received == delayed.transmitted);
  CHECK(delayed.minMs >= 100.0);

  agent.revert("vm-delay");
  requireReport(agent, "vm-delay", v1::FAULT_STATE_REVERTED);
  const auto after = NetnsPair::rootA();
  CHECK(after.kind == before.kind);
  CHECK(after.handle == before.handle);
  CHECK(after.parent == before.parent);
  CHECK(after.options == before.options);

  const auto clear = ping(20, "0.05");
  MESSAGE("delay reverted: ", describe(clear), "; root qdisc ", after.kind, " as before (", before.kind, ")");
  CHECK(clear.received == clear.transmitted);
  CHECK(clear.avgMs < 20.0);
}

TEST_CASE("loss") {
  if (skipWithoutNetem()) {
    return;
  }
  NetnsPair pair;
  AgentThread agent;
  const auto before = NetnsPair::rootA();

  v1::FaultSpec spec;
  *spec.mutable_network_loss()->mutable_target() = targetA();
  spec.mutable_network_loss()->set_percent(30);
  agent.inject(injectFor("vm-loss", spec));
  requireReport(agent, "vm-loss", v1::FAULT_STATE_APPLIED);
  CHECK(NetnsPair::rootA().kind == "netem");

  // 500 packets: the loss count's standard deviation is about 2 points, so [20, 40] is ±5 of them.
  const auto lossy = ping(500, "0.002");
  MESSAGE("loss 30 % held: ", describe(lossy));
  CHECK(lossy.transmitted == 500);
  CHECK(lossy.lossPercent() >= 20.0);
  CHECK(lossy.lossPercent() <= 40.0);

  agent.revert("vm-loss");
  requireReport(agent, "vm-loss", v1::FAULT_STATE_REVERTED);
  const auto after = NetnsPair::rootA();
  CHECK(after.kind == before.kind);
  CHECK(after.handle == before.handle);
  CHECK(after.options == before.options);

  const auto clear = ping(100, "0.002");
  MESSAGE("loss reverted: ", describe(clear));
  CHECK(clear.transmitted == 100);
  CHECK(clear.received == 100);
}

TEST_CASE("delay with jitter and a normal distribution: mean and spread") {
  if (skipWithoutNetem()) {
    return;
  }
  NetnsPair pair;
  v1::FaultSpec spec;
  auto* d = spec.mutable_network_delay();
  *d->mutable_target() = targetA();
  *d->mutable_delay() = toProto(50ms);
  *d->mutable_jitter() = toProto(10ms);
  d->set_distribution(v1::DELAY_DISTRIBUTION_NORMAL);
  auto fault = applyDirect(spec);
  const auto s = ping(200, "0.01");
  MESSAGE("delay 50ms jitter 10ms normal: ", describe(s), ", mdev ", s.mdevMs, " ms");
  // Mean within 5 ms of 50 (TCG timer slack adds ~1-3 ms); spread near 10 ms (ping's mdev).
  CHECK(s.avgMs >= 48.0);
  CHECK(s.avgMs <= 56.0);
  CHECK(s.mdevMs >= 6.0);
  CHECK(s.mdevMs <= 14.0);
  REQUIRE(fault->revert().has_value());
}

TEST_CASE("Gilbert-Elliott loss over 1000 packets") {
  if (skipWithoutNetem()) {
    return;
  }
  NetnsPair pair;
  v1::FaultSpec spec;
  auto* l = spec.mutable_network_loss();
  *l->mutable_target() = targetA();
  auto* ge = l->mutable_gilbert_elliott();
  ge->set_p(10);
  ge->set_r(30);
  ge->set_bad_loss(80);
  ge->set_good_loss(0);
  // Long-run loss of requests: 80 x 10 / (10 + 30) = 20 %. Bursts make the count vary more than
  // independent loss would: ±8 points covers it (stated tolerance).
  auto fault = applyDirect(spec);
  const auto s = ping(1000, "0.002");
  MESSAGE("GE p 10 r 30 badLoss 80: ", describe(s));
  CHECK(s.transmitted == 1000);
  CHECK(s.lossPercent() >= 12.0);
  CHECK(s.lossPercent() <= 28.0);
  REQUIRE(fault->revert().has_value());
}

TEST_CASE("duplicate and corrupt counts") {
  if (skipWithoutNetem()) {
    return;
  }
  NetnsPair pair;
  {
    v1::FaultSpec spec;
    *spec.mutable_network_duplicate()->mutable_target() = targetA();
    spec.mutable_network_duplicate()->set_percent(20);
    auto fault = applyDirect(spec);
    const auto s = ping(1000, "0.002");
    MESSAGE("duplicate 20 %: ", describe(s), ", ", s.duplicates, " duplicates");
    CHECK(s.duplicates >= 150);  // 200 expected, sd ~13
    CHECK(s.duplicates <= 250);
    REQUIRE(fault->revert().has_value());
  }
  {
    v1::FaultSpec spec;
    *spec.mutable_network_corrupt()->mutable_target() = targetA();
    spec.mutable_network_corrupt()->set_percent(20);
    auto fault = applyDirect(spec);
    // A flipped bit fails the ICMP (or IP header) checksum at fl-vm-b: the request is dropped.
    const auto s = ping(1000, "0.002");
    MESSAGE("corrupt 20 %: ", describe(s));
    CHECK(s.lossPercent() >= 15.0);
    CHECK(s.lossPercent() <= 25.0);
    REQUIRE(fault->revert().has_value());
  }
}

TEST_CASE("reorder: picked packets overtake the delayed ones") {
  if (skipWithoutNetem()) {
    return;
  }
  NetnsPair pair;
  v1::FaultSpec spec;
  auto* o = spec.mutable_network_reorder();
  *o->mutable_target() = targetA();
  o->set_percent(50);
  *o->mutable_delay() = toProto(100ms);
  auto fault = applyDirect(spec);
  // Half the requests go at once (rtt ~0), half after 100 ms: min near 0, max >= 100.
  const auto s = ping(100, "0.01");
  MESSAGE("reorder 50 % delay 100ms: ", describe(s));
  CHECK(s.received == s.transmitted);
  CHECK(s.minMs < 20.0);
  CHECK(s.maxMs >= 100.0);
  CHECK(s.avgMs >= 25.0);  // about 50
  CHECK(s.avgMs <= 80.0);
  REQUIRE(fault->revert().has_value());
}

TEST_CASE("partition and matching: the matched destination is cut, a second one delayed not at all") {
  if (skipWithoutNetem()) {
    return;
  }
  NetnsPair pair;
  run(fmt::format("ip -n {} addr add 10.98.0.1/24 dev {}", kNetnsA, kIfA));
  run(fmt::format("ip -n {} addr add 10.98.0.2/24 dev {}", kNetnsB, kIfB));
  run(fmt::format("ip -n {} -6 addr add fd99::1/64 dev {} nodad", kNetnsA, kIfA));
  run(fmt::format("ip -n {} -6 addr add fd99::2/64 dev {} nodad", kNetnsB, kIfB));
  run(fmt::format("ip netns exec {} ping -c 1 -W 5 -q 10.98.0.2", kNetnsA));
  run(fmt::format("ip netns exec {} ping -c 1 -W 5 -q fd99::2", kNetnsA));
  {
    v1::FaultSpec spec;
    *spec.mutable_network_partition()->mutable_target() = targetA();
    spec.mutable_network_partition()->mutable_target()->mutable_match()->add_destination_cidrs(kAddrB);
    auto fault = applyDirect(spec);
    const auto cut = pingTo(kAddrB, 20, "0.01");
    const auto other = pingTo("10.98.0.2", 20, "0.01");
    MESSAGE("partition of ", std::string(kAddrB), ": ", describe(cut), "; 10.98.0.2: ", describe(other));
    CHECK(cut.received == 0);
    CHECK(other.received == 20);
    REQUIRE(fault->revert().has_value());
  }
  {
    v1::FaultSpec spec;
    auto* d = spec.mutable_network_delay();
    *d->mutable_target() = targetA();
    d->mutable_target()->mutable_match()->add_destination_cidrs("fd99::2/128");
    *d->mutable_delay() = toProto(100ms);
    auto fault = applyDirect(spec);
    const auto matched = pingTo("fd99::2", 20, "0.01");
    const auto v4 = pingTo(kAddrB, 20, "0.01");
    MESSAGE("IPv6 delay 100ms on fd99::2: ", describe(matched), "; IPv4 ", std::string(kAddrB), ": ", describe(v4));
    CHECK(matched.minMs >= 100.0);
    CHECK(v4.avgMs < 20.0);
    REQUIRE(fault->revert().has_value());
  }
  CHECK(NetnsPair::rootA().handle == 0);
}

TEST_CASE("a pre-existing htb-free tbf root is restored with its parameters after a netem fault") {
  if (skipWithoutNetem()) {
    return;
  }
  NetnsPair pair;
  run(fmt::format("ip netns exec {} tc qdisc add dev {} root handle 8001: tbf rate 50mbit burst 32kb latency 40ms",
                  kNetnsA, kIfA));
  const auto saved = NetnsPair::rootA();
  v1::FaultSpec spec;
  *spec.mutable_network_loss()->mutable_target() = targetA();
  spec.mutable_network_loss()->set_percent(10);
  spec.mutable_network_loss()->mutable_target()->mutable_match()->set_protocol(v1::PROTOCOL_ICMP);
  auto fault = applyDirect(spec);
  CHECK(NetnsPair::rootA().kind == "htb");
  REQUIRE(fault->revert().has_value());
  const auto after = NetnsPair::rootA();
  CHECK(after.kind == "tbf");
  CHECK(after.handle == saved.handle);
  CHECK(after.options == saved.options);
  const auto shown = run(fmt::format("ip netns exec {} tc qdisc show dev {}", kNetnsA, kIfA));
  MESSAGE("restored: ", shown);
  CHECK(shown.find("rate 50Mbit") != std::string::npos);
}

TEST_CASE("ingress: netem delay through faultline's ifb, measured by ping RTT; IPv4 and IPv6; both") {
  if (skipWithoutNetem()) {
    return;
  }
  NetnsPair pair;
  run(fmt::format("ip -n {} -6 addr add fd98::1/64 dev {} nodad", kNetnsA, kIfA));
  run(fmt::format("ip -n {} -6 addr add fd98::2/64 dev {} nodad", kNetnsB, kIfB));
  run(fmt::format("ip netns exec {} ping -c 1 -W 5 -q fd98::2", kNetnsA));
  const auto shown = [] {
    return sh(fmt::format("ip netns exec {} tc qdisc show", kNetnsA)).output +
           sh(fmt::format("ip -n {} -o link show", kNetnsA)).output;
  };
  const std::string before = shown();
  {
    // Replies from fl-vm-b arrive on fl-va's ingress: each ping waits 100 ms more.
    v1::FaultSpec spec;
    *spec.mutable_network_delay()->mutable_target() = targetA();
    spec.mutable_network_delay()->mutable_target()->set_direction(v1::DIRECTION_INGRESS);
    *spec.mutable_network_delay()->mutable_delay() = toProto(100ms);
    auto fault = applyDirect(spec);
    const std::string during = shown();
    CHECK_MESSAGE(during.find("flt-ifb") != std::string::npos, during);
    CHECK_MESSAGE(during.find("qdisc ingress ffff:") != std::string::npos, during);
    CHECK(NetnsPair::rootA().handle == 0);  // the egress root is untouched
    const auto v4 = pingTo(kAddrB, 20, "0.05");
    const auto v6 = pingTo("fd98::2", 20, "0.05");
    MESSAGE("ingress delay 100 ms: IPv4 ", describe(v4), "; IPv6 ", describe(v6));
    CHECK(v4.received == 20);
    CHECK(v4.minMs >= 100.0);
    CHECK(v4.avgMs < 150.0);
    CHECK(v6.received == 20);
    CHECK(v6.minMs >= 100.0);
    REQUIRE(fault->revert().has_value());
    CHECK(shown() == before);
    const auto clear = pingTo(kAddrB, 20, "0.05");
    MESSAGE("ingress delay reverted: ", describe(clear));
    CHECK(clear.avgMs < 20.0);
  }
  {
    // both: a partition cuts requests (egress) and replies (ingress); a matched source only.
    v1::FaultSpec spec;
    *spec.mutable_network_partition()->mutable_target() = targetA();
    spec.mutable_network_partition()->mutable_target()->set_direction(v1::DIRECTION_BOTH);
    spec.mutable_network_partition()->mutable_target()->mutable_match()->add_destination_cidrs("fd98::2/128");
    auto fault = applyDirect(spec);
    const auto cut = pingTo("fd98::2", 20, "0.01");
    const auto v4 = pingTo(kAddrB, 20, "0.01");
    MESSAGE("partition both ways of fd98::2: ", describe(cut), "; IPv4 ", describe(v4));
    CHECK(cut.received == 0);
    CHECK(v4.received == 20);
    REQUIRE(fault->revert().has_value());
    CHECK(shown() == before);
  }
  {
    // ingress partition of what fl-vm-b sends: B's pings to A get no answer in B, since A never
    // sees the requests.
    v1::FaultSpec spec;
    *spec.mutable_network_partition()->mutable_target() = targetA();
    spec.mutable_network_partition()->mutable_target()->set_direction(v1::DIRECTION_INGRESS);
    spec.mutable_network_partition()->mutable_target()->mutable_match()->add_source_cidrs(fmt::format("{}/32", kAddrB));
    auto fault = applyDirect(spec);
    const auto r = sh(fmt::format("ip netns exec {} ping -c 10 -i 0.01 -W 1 -q 10.99.0.1", kNetnsB));
    MESSAGE("ingress partition of source ", std::string(kAddrB), ": ", r.output);
    CHECK(r.output.find(" 0 received") != std::string::npos);
    REQUIRE(fault->revert().has_value());
    CHECK(shown() == before);
  }
}
