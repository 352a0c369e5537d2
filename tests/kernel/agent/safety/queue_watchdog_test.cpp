// The userspace driver's watchdog (agent/safety/queue_watchdog.h) for real: an agent (a child process of
// the test, with the real driver, queue and rules) holds a delay between two namespaces the test
// creates, then is stopped with SIGSTOP, as Ctrl-Z or a debugger would. Matched traffic, held in
// the kernel's queue while nothing serves it, must flow again within the watchdog's grace, and the
// rules must be gone; while the agent runs the watchdog leaves them alone. Needs root.
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/faults/network/nfqueue_driver.h"
#include "agent/faults/network/packet_queue.h"
#include "agent/faults/spec.h"
#include "agent/kernel/packet_steering.h"
#include "agent/safety/queue_watchdog.h"
#include "tests/support/netns.h"
#include "tests/support/paused_child.h"
#include "tests/support/text.h"
#include "tests/support/veth_peers.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;

namespace {

using testing::contains;

// veth0 in A (the fixture's namespace): 10.83.1.1; its peer in B: 10.83.1.2.
class StoppedAgent : public testing::PeerNetnsFixture {
 public:
  StoppedAgent() : PeerNetnsFixture({"10.83.1.1/24"}, {"10.83.1.2/24"}) {}

  // ping from A to B: the output.
  std::string ping(int count, const char* interval = "0.05") {
    return testing::sh(
               fmt::format("nsenter --net={} ping -n -q -c {} -i {} -W 1 10.83.1.2 2>&1", netns_, count, interval))
        .output;
  }

  std::string rules() {
    return inNetns("iptables-legacy -t mangle -S") + inNetns("ip6tables-legacy -t mangle -S") +
           inNetns("nft list ruleset");
  }

  // Starts the agent: a child that applies a delay of 100 ms on veth0 with the watchdog on, says
  // so, and waits to be killed (at the latest when the fixture goes).
  void startAgent() {
    agent_.emplace([this](const testing::PausedChild::Ready& ready) {
      NfqueueFaultDriver driver{kernel::probeSteeringSupport(), kernel::openPacketSteering, PacketQueue::open};
      driver.enableWatchdog(queueWatchdogStarter());
      v1::FaultSpec spec;
      auto* d = spec.mutable_network_delay();
      d->mutable_target()->set_interface("veth0");
      d->mutable_target()->set_netns(netns_);
      *d->mutable_delay() = toProto(100ms);
      auto applied = driver.apply(spec);
      ready(applied ? 1 : 0);
    });
    REQUIRE(agent_->reported() == std::optional<char>{1});
  }

 protected:
  std::optional<testing::PausedChild> agent_;
};

double average(const std::string& pingOutput) {
  std::smatch m;
  static const std::regex rtt(R"(= ([0-9.]+)/([0-9.]+)/)");
  return std::regex_search(pingOutput, m, rtt) ? std::stod(m[2]) : -1;
}

}  // namespace

TEST_CASE_FIXTURE(StoppedAgent,
                  "watchdog: a stopped agent's rules are removed within its grace; a running one's stay") {
  startAgent();
  // Running, for longer than the grace: the delay holds and the rules stay.
  const std::string running = ping(30, "0.1");
  MESSAGE(fmt::format("agent running: avg {:.2f} ms", average(running)));
  CHECK_MESSAGE(average(running) >= 100, running);
  const std::string held = rules();
  CHECK_MESSAGE((contains(held, "FAULTLINE-0") || contains(held, "table inet faultline-0")), held);

  REQUIRE(::kill(agent_->pid(), SIGSTOP) == 0);
  const auto stopped = std::chrono::steady_clock::now();
  // Pings until one comes back; the first ones wait in the kernel's queue, unserved.
  std::string flowing;
  std::chrono::milliseconds after{0};
  for (int i = 0; i < 50; ++i) {
    const auto r = ping(1, "0.2");
    if (contains(r, " 0% packet loss")) {
      flowing = r;
      after = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - stopped);
      break;
    }
  }
  MESSAGE(fmt::format("agent stopped: matched traffic flows again after {} ms (grace {} ms): {}", after.count(),
                      kWatchdogGrace.count(), flowing));
  REQUIRE_FALSE(flowing.empty());
  CHECK(after < kWatchdogGrace + 2s);
  // That one may have waited in the queue (released by the watchdog); a new one goes straight.
  const std::string fresh = ping(3);
  CHECK_MESSAGE(average(fresh) >= 0, fresh);
  CHECK_MESSAGE(average(fresh) < 10, fresh);
  const std::string left = rules();
  CHECK_MESSAGE(!contains(left, "FAULTLINE-0"), left);
  CHECK_MESSAGE(!contains(left, "faultline-0"), left);
  REQUIRE(::kill(agent_->pid(), SIGCONT) == 0);
}

TEST_CASE_FIXTURE(StoppedAgent, "watchdog: a flow that had packets waiting in the stopped agent's queue resumes too") {
  // A UDP sender in A, 1,000 datagrams/s to B: while the agent is stopped its packets wait in the
  // kernel's queue, charged to its socket, until its send buffer is full and sendto() blocks.
  // Removing the rules alone does not free them: the watchdog accepts them too.
  startAgent();
  const auto udp = testing::udpPair(netns_, peer_.path(), "10.83.1.2", 9983);
  REQUIRE_MESSAGE(udp.error.empty(), udp.error);
  const int rx = udp.receiver.get();
  const int tx = udp.sender.get();
  const timeval slice{.tv_sec = 0, .tv_usec = 100000};
  ::setsockopt(rx, SOL_SOCKET, SO_RCVTIMEO, &slice, sizeof(slice));
  ::setsockopt(tx, SOL_SOCKET, SO_SNDTIMEO, &slice, sizeof(slice));
  std::atomic<bool> done{false};
  std::thread sender([&] {
    std::vector<char> payload(1000, 'x');
    while (!done.load()) {
      (void)::sendto(tx, payload.data(), payload.size(), 0, udp.to.get(), udp.to.length);
      std::this_thread::sleep_for(1ms);
    }
  });
  std::vector<std::chrono::steady_clock::time_point> arrivals;
  std::thread receiver([&] {
    std::vector<char> buffer(2048);
    while (!done.load()) {
      if (::recv(rx, buffer.data(), buffer.size(), 0) > 0) {
        arrivals.push_back(std::chrono::steady_clock::now());
      }
    }
  });
  std::this_thread::sleep_for(1s);
  REQUIRE(::kill(agent_->pid(), SIGSTOP) == 0);
  const auto stopped = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(kWatchdogGrace + 2s);
  done = true;
  sender.join();
  receiver.join();
  REQUIRE(::kill(agent_->pid(), SIGCONT) == 0);
  const auto from = stopped + kWatchdogGrace;
  const auto resumed = std::count_if(arrivals.begin(), arrivals.end(), [&](auto t) { return t >= from; });
  const auto before = std::count_if(arrivals.begin(), arrivals.end(), [&](auto t) { return t < stopped; });
  MESSAGE(fmt::format("the same UDP flow: {} datagrams before the stop, {} from the grace's end to 2 s after", before,
                      resumed));
  CHECK(before > 500);
  CHECK(resumed > 1000);  // the ~2 s of datagrams that waited, and the flow going on
}
