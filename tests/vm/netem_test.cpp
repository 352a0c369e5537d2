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

#include "agent/agent.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/net_driver.h"
#include "agent/spec.h"
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
  if (std::regex_search(r.output, m, std::regex(R"(= ([\d.]+)/([\d.]+)/([\d.]+)/)"))) {
    stats.minMs = std::stod(m[1]);
    stats.avgMs = std::stod(m[2]);
    stats.maxMs = std::stod(m[3]);
  }
  return stats;
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
