// The userspace packet queue (agent/faults/network/packet_queue.h) on this machine's kernel, with real UDP
// packets between two network namespaces the test creates: veth0 in A (10.78.1.1, fd78:1::1), its
// peer in B (.2 / ::2). A's egress to B is steered to the queue with iptables-legacy (a test tool
// only; the agent's own steering is agent/kernel/packet_steering.h):
//   -t mangle -A OUTPUT -o veth0 -d B -m mark --mark kInjectedMark -j RETURN
//   -t mangle -A OUTPUT -o veth0 -d B -j NFQUEUE --queue-num N --queue-bypass
// A sender thread in A stamps each datagram with its sequence number and send time; a receiver
// thread in B records arrival times (one clock: both are this process), so the one-way delay is
// measured directly. Needs root; the namespaces die with the test.
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/faults/network/packet_queue.h"
#include "agent/kernel/packet_steering.h"
#include "tests/support/netns.h"
#include "tests/support/paused_child.h"
#include "tests/support/veth_peers.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

using testing::sh;

constexpr uint16_t kQueue = kernel::kQueueBase + 7;
constexpr uint16_t kPort = 9977;
constexpr size_t kPayload = 1000;

struct Arrival {
  uint32_t seq = 0;
  double delayMs = 0;
  bool intact = true;   // payload as sent
  int flippedBits = 0;  // bits that differ from what was sent
};

// The byte at offset i of datagram seq (after the 12-byte header of seq and send time).
uint8_t patternByte(uint32_t seq, size_t i) {
  return static_cast<uint8_t>((seq * 131 + i * 7) & 0xff);
}

class QueueNamespaces : public testing::PeerNetnsFixture {
 public:
  QueueNamespaces() : PeerNetnsFixture({"10.78.1.1/24", "fd78:1::1/64"}, {"10.78.1.2/24", "fd78:1::2/64"}) {}

  // Steers A's egress to B's address (v4 or v6) into kQueue.
  void steer(bool v6) {
    const std::string tool = v6 ? "ip6tables-legacy" : "iptables-legacy";
    const std::string to = v6 ? "fd78:1::2" : "10.78.1.2";
    inNetns(fmt::format("{} -t mangle -A OUTPUT -o veth0 -d {} -m mark --mark {:#x} -j RETURN", tool, to,
                        kernel::kInjectedMark));
    inNetns(fmt::format("{} -t mangle -A OUTPUT -o veth0 -d {} -j NFQUEUE --queue-num {} --queue-bypass", tool, to,
                        kQueue));
  }

  // egress: as the driver opens a queue its rules steer egress packets to (all of these tests').
  std::unique_ptr<PacketQueue> open(const Impairment& impairment, bool egress = true) {
    auto q = PacketQueue::open(netns_, kQueue, impairment, egress, 1234);
    REQUIRE_MESSAGE(q.has_value(), (q ? std::string() : q.error().second));
    return std::move(*q);
  }

  // Sends count datagrams from A to B at rate packets/s and collects what B receives until
  // settle after the last one was sent. noChecksum: IPv4 UDP without checksum (SO_NO_CHECK), so a
  // corrupted payload reaches the receiver.
  std::vector<Arrival> traffic(bool v6, int count, int rate, std::chrono::milliseconds settle, bool noChecksum = false,
                               const std::function<void()>& whileHeld = {}) {
    const auto udp = testing::udpPair(netns_, peer_.path(), v6 ? "fd78:1::2" : "10.78.1.2", kPort);
    REQUIRE_MESSAGE(udp.error.empty(), udp.error);
    const int rx = udp.receiver.get();
    const int tx = udp.sender.get();
    // Held packets stay charged to the sender's socket (netem orphans them; a queue cannot): room
    // for the delayed ones, so the sender never blocks.
    const int sendBuffer = 16 << 20;
    REQUIRE(::setsockopt(tx, SOL_SOCKET, SO_SNDBUFFORCE, &sendBuffer, sizeof(sendBuffer)) == 0);
    const int one = 1;
    if (noChecksum) {
      REQUIRE(::setsockopt(tx, SOL_SOCKET, SO_NO_CHECK, &one, sizeof(one)) == 0);
    }
    const int buffer = 8 << 20;
    ::setsockopt(rx, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof(buffer));
    timeval tick{0, 20'000};
    ::setsockopt(rx, SOL_SOCKET, SO_RCVTIMEO, &tick, sizeof(tick));
    // Arrival is the kernel's receive time (CLOCK_REALTIME), so the receiver thread's own wake-up
    // is not measured; the sender stamps the same clock right before sendto().
    REQUIRE(::setsockopt(rx, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) == 0);

    const auto origin = Clock::now();
    std::atomic<bool> done{false};
    std::vector<Arrival> arrivals;
    std::thread receiver([&] {
      std::vector<uint8_t> b(65536);
      while (!done.load()) {
        const auto [n, arrivedNs] = testing::receiveStamped(rx, b);
        if (n < 12) {
          continue;
        }
        Arrival a;
        uint64_t sentNs = 0;
        std::memcpy(&a.seq, b.data(), 4);
        std::memcpy(&sentNs, b.data() + 4, 8);
        a.delayMs = (static_cast<double>(arrivedNs) - static_cast<double>(sentNs)) / 1e6;
        for (size_t i = 12; i < static_cast<size_t>(n); ++i) {
          a.flippedBits += __builtin_popcount(b[i] ^ patternByte(a.seq, i));
        }
        a.intact = a.flippedBits == 0 && static_cast<size_t>(n) == kPayload;
        arrivals.push_back(a);
      }
    });
    std::vector<uint8_t> datagram(kPayload);
    const auto interval = std::chrono::nanoseconds(1'000'000'000 / rate);
    for (int i = 0; i < count; ++i) {
      std::this_thread::sleep_until(origin + i * interval);
      const auto seq = static_cast<uint32_t>(i);
      for (size_t k = 12; k < kPayload; ++k) {
        datagram[k] = patternByte(seq, k);
      }
      const uint64_t sentNs = testing::realNs();
      std::memcpy(datagram.data(), &seq, 4);
      std::memcpy(datagram.data() + 4, &sentNs, 8);
      ::sendto(tx, datagram.data(), datagram.size(), 0, udp.to.get(), udp.to.length);
    }
    if (whileHeld) {
      whileHeld();
    }
    std::this_thread::sleep_for(settle);
    done = true;
    receiver.join();
    return arrivals;
  }
};

double quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

// Checks the arrivals of one delayed stream and returns its p99 error in ms: every packet arrived,
// none early.
double delayErrorP99(const std::vector<Arrival>& arrivals, int sent, double delayMs) {
  REQUIRE(static_cast<int>(arrivals.size()) == sent);
  std::vector<double> errors;
  for (const auto& a : arrivals) {
    errors.push_back(a.delayMs - delayMs);
  }
  const double min = quantile(errors, 0);
  const double p50 = quantile(errors, 0.5);
  const double p99 = quantile(errors, 0.99);
  MESSAGE(fmt::format("delay {} ms: error min {:.3f} ms, p50 {:.3f} ms, p99 {:.3f} ms, max {:.3f} ms, load {}", delayMs,
                      min, p50, p99, quantile(errors, 1.0), testing::loadAverage()));
  CHECK(min >= 0);  // never early
  return p99;
}

// The p99 goal (2 ms) is the queue's; a busy CI host adds its own scheduling delay to the release
// thread's wake-up (3 ms was seen once in CI with the queue otherwise right). So a stream is measured
// up to three times and the goal must hold in one of them; a queue that is really late fails all three.
void checkDelayP99(const std::function<double()>& measure) {
  double p99 = 0;
  for (int attempt = 1; attempt <= 3; ++attempt) {
    p99 = measure();
    if (p99 <= 2.0) {
      break;
    }
    MESSAGE(fmt::format("attempt {}: p99 error {:.3f} ms over 2 ms; measuring again", attempt, p99));
  }
  CHECK(p99 <= 2.0);
}

}  // namespace

TEST_CASE_FIXTURE(QueueNamespaces, "packet queue: delay 100 ms at 1,000 packets/s, IPv4, p99 error within 2 ms") {
  steer(false);
  Impairment imp;
  imp.delay = 100ms;
  // egress: held packets are orphaned (the kernel frees them, the queue sends copies at release);
  // not egress: they wait in the kernel for their NF_ACCEPT.
  for (const bool egress : {true, false}) {
    CAPTURE(egress);
    checkDelayP99([&] {
      auto q = open(imp, egress);
      const auto arrivals = traffic(false, 2000, 1000, 300ms);
      const auto stats = q->stats();
      q->stop();
      CHECK(stats.received == 2000);
      CHECK(stats.accepted == 2000);
      CHECK(stats.orphaned == (egress ? 2000 : 0));
      CHECK(stats.sendFailed == 0);
      CHECK(stats.held == 0);
      return delayErrorP99(arrivals, 2000, 100.0);
    });
  }
}

TEST_CASE_FIXTURE(QueueNamespaces, "packet queue: delay 100 ms on IPv6") {
  steer(true);
  Impairment imp;
  imp.delay = 100ms;
  checkDelayP99([&] {
    auto q = open(imp);
    const auto arrivals = traffic(true, 1000, 1000, 300ms);
    const auto stats = q->stats();
    q->stop();
    CHECK(stats.orphaned == 1000);
    CHECK(stats.sendFailed == 0);
    return delayErrorP99(arrivals, 1000, 100.0);
  });
}

TEST_CASE_FIXTURE(QueueNamespaces, "packet queue: loss 30 % drops 25-35 % of 2,000 packets") {
  steer(false);
  Impairment imp;
  imp.lossPercent = 30;
  auto q = open(imp);
  const auto arrivals = traffic(false, 2000, 1000, 200ms);
  const auto stats = q->stats();
  q->stop();
  const double lost = 1.0 - static_cast<double>(arrivals.size()) / 2000.0;
  MESSAGE(fmt::format("lost {:.1f} %", lost * 100));
  CHECK(lost >= 0.25);
  CHECK(lost <= 0.35);
  CHECK(stats.dropped == 2000 - arrivals.size());
  // A loss delays nothing: every arrival is far below any delay fault's time (a scheduling stall
  // on a busy machine took one to 20.1 ms).
  for (const auto& a : arrivals) {
    REQUIRE(a.intact);
    REQUIRE(a.delayMs < 50);
  }
}

TEST_CASE_FIXTURE(QueueNamespaces, "packet queue: duplicate 20 % sends copies through the marked raw sockets") {
  for (const bool v6 : {false, true}) {
    CAPTURE(v6);
    steer(v6);
    Impairment imp;
    imp.duplicatePercent = 20;
    auto q = open(imp, true);
    const auto arrivals = traffic(v6, 2000, 1000, 200ms);
    const auto stats = q->stats();
    q->stop();
    std::map<uint32_t, int> copies;
    for (const auto& a : arrivals) {
      REQUIRE(a.intact);
      ++copies[a.seq];
    }
    CHECK(copies.size() == 2000);  // every packet arrives
    int twice = 0;
    for (const auto& [seq, n] : copies) {
      REQUIRE(n <= 2);  // a copy is never steered (and duplicated) again
      twice += n == 2 ? 1 : 0;
    }
    MESSAGE(fmt::format("{}: duplicated {} of 2000", v6 ? "IPv6" : "IPv4", twice));
    CHECK(twice >= 300);
    CHECK(twice <= 500);
    CHECK(stats.duplicated == static_cast<uint64_t>(twice));
    CHECK(stats.received == 2000);  // the copies did not come back through the queue
  }
}

TEST_CASE_FIXTURE(QueueNamespaces, "packet queue: corrupt 10 % flips one bit of the packet") {
  steer(false);
  Impairment imp;
  imp.corruptPercent = 10;
  auto q = open(imp);
  const auto arrivals = traffic(false, 2000, 1000, 200ms, true);
  const auto stats = q->stats();
  q->stop();
  int corrupted = 0;
  for (const auto& a : arrivals) {
    REQUIRE(a.flippedBits <= 1);
    corrupted += a.flippedBits == 1 ? 1 : 0;
  }
  // A flip in the IP or UDP header (28 of 1028 bytes) makes the receiver drop the packet.
  MESSAGE(fmt::format("corrupted {} by the queue, {} arrived with one bit flipped, {} lost", stats.corrupted, corrupted,
                      2000 - arrivals.size()));
  CHECK(stats.corrupted >= 150);
  CHECK(stats.corrupted <= 250);
  CHECK(corrupted >= 140);
  CHECK(corrupted <= static_cast<int>(stats.corrupted));
  CHECK(arrivals.size() + stats.corrupted >= 2000);
}

TEST_CASE_FIXTURE(QueueNamespaces, "packet queue: reorder 25 % sends packets ahead of held ones") {
  steer(false);
  Impairment imp;
  imp.delay = 20ms;
  imp.reorderPercent = 25;
  imp.gap = 1;
  auto q = open(imp);
  const auto arrivals = traffic(false, 400, 1000, 200ms);
  const auto stats = q->stats();
  q->stop();
  REQUIRE(arrivals.size() == 400);
  int ahead = 0;  // arrived while a packet sent before it was still missing
  uint32_t next = 0;
  std::vector<bool> seen(400, false);
  for (const auto& a : arrivals) {
    seen[a.seq] = true;
    if (a.seq > next) {
      ++ahead;
    }
    while (next < 400 && seen[next]) {
      ++next;
    }
    if (a.delayMs < 10) {
      CHECK(a.delayMs < 5);  // either sent at once or after the delay
    } else {
      CHECK(a.delayMs >= 20);
    }
  }
  MESSAGE(fmt::format("reordered {} by the queue, {} arrived ahead", stats.reordered, ahead));
  CHECK(stats.reordered >= 70);
  CHECK(stats.reordered <= 130);
  CHECK(ahead >= static_cast<int>(stats.reordered) - 5);
  CHECK(ahead <= static_cast<int>(stats.reordered));
}

namespace {

// The impairment of network.delay 20 ms, jitter 15 ms, through the spec path the driver takes.
Impairment jitteredDelay(bool keepOrder) {
  v1::FaultSpec spec;
  auto* d = spec.mutable_network_delay();
  d->mutable_target()->set_interface("veth0");
  d->mutable_delay()->set_nanos(20'000'000);
  d->mutable_jitter()->set_nanos(15'000'000);
  d->set_keep_order(keepOrder);
  auto imp = impairmentFromSpec(spec);
  REQUIRE_MESSAGE(imp.has_value(), (imp ? std::string() : imp.error()));
  CHECK(imp->keepOrder == keepOrder);
  return *imp;
}

// Datagrams that arrived after one with a higher sequence number.
int inversions(const std::vector<Arrival>& arrivals) {
  int count = 0;
  uint32_t highest = 0;
  bool any = false;
  for (const auto& a : arrivals) {
    if (any && a.seq < highest) {
      ++count;
    }
    highest = any ? std::max(highest, a.seq) : a.seq;
    any = true;
  }
  return count;
}

}  // namespace

TEST_CASE_FIXTURE(QueueNamespaces,
                  "packet queue: a 20 ms +- 15 ms jitter reorders UDP datagrams; with keepOrder they arrive in order, "
                  "none early") {
  steer(false);
  constexpr int kCount = 500;  // 1,000 packets/s: 1 ms apart, so a jitter of 15 ms reorders most
  {
    auto q = open(jitteredDelay(false));
    const auto arrivals = traffic(false, kCount, 1000, 200ms);
    q->stop();
    REQUIRE(arrivals.size() == kCount);
    const int reordered = inversions(arrivals);
    MESSAGE(fmt::format("without keepOrder: {} of {} datagrams arrived after a later one", reordered, kCount));
    CHECK(reordered > kCount / 10);
  }
  {
    auto q = open(jitteredDelay(true));
    const auto arrivals = traffic(false, kCount, 1000, 200ms);
    const auto stats = q->stats();
    q->stop();
    REQUIRE(arrivals.size() == kCount);
    CHECK(inversions(arrivals) == 0);
    double minDelay = 1e9;
    for (size_t i = 0; i < arrivals.size(); ++i) {
      CHECK(arrivals[i].seq == i);
      minDelay = std::min(minDelay, arrivals[i].delayMs);
    }
    MESSAGE(fmt::format("with keepOrder: {} of {} held behind an earlier datagram of their flow, least delay {:.3f} ms",
                        stats.keptInOrder, kCount, minDelay));
    CHECK(minDelay >= 5.0);  // delay - jitter: a packet is never sent before its own delay
    CHECK(stats.keptInOrder > kCount / 10);
  }
}

TEST_CASE_FIXTURE(QueueNamespaces, "packet queue: stop() releases every held packet, then traffic flows (bypass)") {
  steer(false);
  Impairment imp;
  imp.delay = 5s;
  auto q = open(imp);
  QueueStats held;
  Clock::time_point stopped;
  const auto first = traffic(false, 100, 1000, 300ms, false, [&] {
    std::this_thread::sleep_for(100ms);
    held = q->stats();
    stopped = Clock::now();
    q->stop();
  });
  CHECK(held.held == 100);
  CHECK(held.orphaned == 100);
  REQUIRE(first.size() == 100);  // none lost
  for (const auto& a : first) {
    CHECK(a.delayMs < 1000);  // released by stop(), long before the 5 s delay
  }
  q->stop();  // idempotent
  const auto after = traffic(false, 100, 1000, 100ms);
  REQUIRE(after.size() == 100);
  for (const auto& a : after) {
    CHECK(a.delayMs < 20);
  }
}

TEST_CASE_FIXTURE(QueueNamespaces, "packet queue: the limit tail-drops, as netem's does") {
  steer(false);
  Impairment imp;
  imp.delay = 300ms;
  imp.limitPackets = 50;
  auto q = open(imp);
  const auto arrivals = traffic(false, 100, 1000, 400ms);
  const auto stats = q->stats();
  q->stop();
  CHECK(stats.overLimit == 50);
  CHECK(arrivals.size() == 50);
}

TEST_CASE_FIXTURE(QueueNamespaces, "packet queue: errors name the namespace and a queue already bound") {
  Impairment imp;
  auto missing = PacketQueue::open("/nonexistent/ns", kQueue, imp, false, 1);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().first == std::errc::no_such_file_or_directory);
  CHECK(missing.error().second.find("/nonexistent/ns") != std::string::npos);

  auto notNetns = PacketQueue::open("/proc/self/ns/mnt", kQueue, imp, false, 1);
  REQUIRE_FALSE(notNetns);
  CHECK(notNetns.error().first == std::errc::invalid_argument);

  auto q = open(imp);
  auto again = PacketQueue::open(netns_, kQueue, imp, false, 1);
  REQUIRE_FALSE(again);
  CHECK(again.error().first == std::errc::device_or_resource_busy);
  CHECK(again.error().second.find("another program") != std::string::npos);
}

TEST_CASE_FIXTURE(QueueNamespaces, "packet queue: traffic flows after the process serving the queue is killed") {
  steer(false);
  testing::PausedChild child([this](const testing::PausedChild::Ready& ready) {
    Impairment imp;
    imp.delay = 10s;
    auto q = PacketQueue::open(netns_, kQueue, imp, false, 1);
    ready(q ? 1 : 0);
  });
  const auto reap = [&] { child.kill(); };
  REQUIRE_MESSAGE(child.reported() == std::optional<char>{1}, "the child could not bind the queue");
  // Held by the child for 10 s; SIGKILL closes its socket, the kernel unbinds the queue and drops
  // what it held (as a netem qdisc deleted with packets in it).
  const auto held = traffic(false, 20, 1000, 100ms, false, reap);
  CHECK(held.empty());
  const auto after = traffic(false, 100, 1000, 100ms);
  REQUIRE(after.size() == 100);
  for (const auto& a : after) {
    CHECK(a.delayMs < 20);
  }
}
