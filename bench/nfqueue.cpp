// The userspace packet queue (agent/faults/network/packet_queue.h) with real UDP packets between two throwaway
// network namespaces (veth0 in A, its peer in B; A's egress to B steered to the queue with
// iptables-legacy's NFQUEUE target, --queue-bypass, after a RETURN for the queue's own packets):
//  - throughput: a sender in A sends 64-byte datagrams as fast as it can through the delay path
//    (delay 1 ms): packets/s sent, released by the queue (egress: each held packet orphaned, sent again
//    through the raw socket after the hold, as the agent does) and received in
//    B; once with sender, receiver and the queue's thread on one CPU, once with the queue's thread
//    alone on that CPU and the sender and receiver on another.
//  - delay error: a paced sender at 1k, 10k and 50k packets/s, delay 100 ms; the one-way delay of
//    each datagram (stamped by the sender right before sendto(), and by the kernel on receipt,
//    SO_TIMESTAMPNS; one clock) minus 100 ms,
//    p50 / p99 / max, and the packets lost.
// Needs root. Usage: nfqueue [SECONDS_PER_RATE (default 3)] [CPU for the throughput run (default 0)]
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "agent/faults/network/packet_queue.h"
#include "agent/kernel/packet_steering.h"
#include "tests/support/netns_holder.h"
#include "tests/support/veth_peers.h"

using namespace faultline;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

constexpr uint16_t kQueue = kernel::kQueueBase + 9;
constexpr uint16_t kPort = 9979;

using testing::realNs;

struct Run {
  uint64_t sent = 0;
  std::vector<double> delaysMs;  // one-way, per received datagram
  double seconds = 0;            // from the first send to the last one
};

// Sends from A to B for duration at rate packets/s (0: as fast as possible), then waits settle.
Run traffic(const std::string& a, const std::string& b, size_t bytes, int rate, std::chrono::milliseconds duration,
            std::chrono::milliseconds settle) {
  const auto udp = testing::udpPair(a, b, "10.79.1.2", kPort);
  if (!udp.error.empty()) {
    std::cerr << "nfqueue: cannot open the UDP sockets: " << udp.error << "\n";
    std::exit(1);
  }
  const int rx = udp.receiver.get();
  const int tx = udp.sender.get();
  const int buffer = 32 << 20;
  ::setsockopt(rx, SOL_SOCKET, SO_RCVBUFFORCE, &buffer, sizeof(buffer));
  ::setsockopt(tx, SOL_SOCKET, SO_SNDBUFFORCE, &buffer, sizeof(buffer));
  timeval tick{0, 20'000};
  ::setsockopt(rx, SOL_SOCKET, SO_RCVTIMEO, &tick, sizeof(tick));
  // Arrival is the kernel's receive stamp (CLOCK_REALTIME), so the receiver's own wake-up is not
  // measured; the sender stamps the same clock right before sendto().
  const int one = 1;
  ::setsockopt(rx, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one));

  const auto origin = Clock::now();
  std::atomic<bool> done{false};
  Run run;
  run.delaysMs.reserve(1 << 20);
  std::thread receiver([&] {
    std::vector<uint8_t> d(2048);
    while (!done.load()) {
      const auto [n, arrivedNs] = testing::receiveStamped(rx, d);
      if (n < 8) {
        continue;
      }
      uint64_t sentNs = 0;
      std::memcpy(&sentNs, d.data(), 8);
      run.delaysMs.push_back((static_cast<double>(arrivedNs) - static_cast<double>(sentNs)) / 1e6);
    }
  });
  std::vector<uint8_t> datagram(bytes, 0x5a);
  const auto end = origin + duration;
  const double interval = rate > 0 ? 1e9 / rate : 0;
  for (;;) {
    const auto now = Clock::now();
    if (now >= end) {
      break;
    }
    const auto due =
        rate > 0 ? static_cast<uint64_t>(static_cast<double>((now - origin).count()) / interval) + 1 : run.sent + 64;
    if (run.sent >= due) {
      std::this_thread::sleep_for(std::chrono::nanoseconds(static_cast<int64_t>(interval / 4)));
      continue;
    }
    while (run.sent < due) {
      const uint64_t sentNs = realNs();
      std::memcpy(datagram.data(), &sentNs, 8);
      if (::sendto(tx, datagram.data(), datagram.size(), 0, udp.to.get(), udp.to.length) < 0) {
        break;  // ENOBUFS: the sender outran the queue; try again
      }
      ++run.sent;
    }
  }
  run.seconds = std::chrono::duration<double>(Clock::now() - origin).count();
  std::this_thread::sleep_for(settle);
  done = true;
  receiver.join();
  return run;
}

// CPU time (ns) of this process's threads named faultline-nfq, from /proc/self/task/*/schedstat.
uint64_t queueCpuNs() {
  uint64_t total = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    std::getline(comm, name);
    if (name != "faultline-nfq") {
      continue;
    }
    std::ifstream stat(task.path() / "schedstat");
    uint64_t ns = 0;
    stat >> ns;
    total += ns;
  }
  return total;
}

double quantile(std::vector<double>& v, double q) {
  if (v.empty()) {
    return 0;
  }
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

std::unique_ptr<agent::PacketQueue> openQueue(const std::string& netns, std::chrono::nanoseconds delay) {
  agent::Impairment imp;
  imp.delay = delay;
  imp.limitPackets = 1'000'000;
  auto q =
      agent::PacketQueue::open(netns, kQueue, imp, /*egress=*/true, 1);  // held packets orphaned, as the agent does
  if (!q) {
    std::cerr << "nfqueue: " << q.error().second << "\n";
    std::exit(1);
  }
  return std::move(*q);
}

}  // namespace

int main(int argc, char** argv) {
  if (::geteuid() != 0) {
    std::cerr << "nfqueue needs root (network namespaces, veth pairs, iptables)\n";
    return 77;
  }
  const int seconds = argc > 1 ? std::atoi(argv[1]) : 3;
  const int cpu = argc > 2 ? std::atoi(argv[2]) : 0;
  testing::NetnsHolder a;
  testing::NetnsHolder b;
  if (!a.error().empty() || !b.error().empty()) {
    std::cerr << "nfqueue: " << a.error() << b.error() << "\n";
    return 1;
  }
  if (const std::string joined = testing::joinPeers(a, b, {"10.79.1.1/24"}, {"10.79.1.2/24"}); !joined.empty()) {
    std::cerr << "nfqueue: " << joined << "\n";
    return 1;
  }
  for (const std::string& c :
       {// The queue's own packets pass, as the agent's steering rules let them (kInjectedMark).
        fmt::format("iptables-legacy -t mangle -A OUTPUT -o veth0 -d 10.79.1.2 -m mark --mark {:#x} -j RETURN",
                    kernel::kInjectedMark),
        fmt::format(
            "iptables-legacy -t mangle -A OUTPUT -o veth0 -d 10.79.1.2 -j NFQUEUE --queue-num {} --queue-bypass",
            kQueue)}) {
    if (!a.inNetns(c)) {
      std::cerr << "nfqueue: " << a.error() << "\n";
      return 1;
    }
  }
  const auto duration = std::chrono::milliseconds(seconds * 1000);

  std::cout << fmt::format("nfqueue: {} s per row, UDP over veth between two namespaces, kernel {}\n\n", seconds,
                           testing::sh("uname -r").output.substr(0, testing::sh("uname -r").output.find('\n')));

  // Throughput through the delay path. sched_setaffinity(0, ...) pins the calling thread only;
  // threads inherit it when created. Shared: sender, receiver and the queue's thread on one CPU.
  // Alone: the queue's thread on that CPU, sender and receiver on another (when there is one).
  cpu_set_t all;
  ::sched_getaffinity(0, sizeof(all), &all);
  const auto pin = [](int c) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(c, &one);
    ::sched_setaffinity(0, sizeof(one), &one);
  };
  int other = -1;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (c != cpu && CPU_ISSET(c, &all)) {
      other = c;
      break;
    }
  }
  std::cout << "throughput through the delay path (delay 1 ms, 64-byte datagrams, sender as fast as it can):\n";
  std::cout << fmt::format("  {:<48} {:>12} {:>12} {:>12} {:>12} {:>14}\n", "placement", "sent/s", "released/s",
                           "received/s", "queue CPU", "per core/s");
  for (const bool alone : {false, true}) {
    if (alone && other < 0) {
      break;
    }
    pin(cpu);  // the queue's thread, created next, inherits it
    auto q = openQueue(a.path(), 1ms);
    if (alone) {
      pin(other);  // sender (this thread) and receiver (created by traffic())
    }
    const uint64_t cpuBefore = queueCpuNs();
    auto run = traffic(a.path(), b.path(), 64, 0, duration, 500ms);
    const auto stats = q->stats();
    const double cpuSeconds = static_cast<double>(queueCpuNs() - cpuBefore) / 1e9;
    q->stop();
    ::sched_setaffinity(0, sizeof(all), &all);
    const std::string placement = alone ? fmt::format("queue on CPU {}, sender + receiver on CPU {}", cpu, other)
                                        : fmt::format("queue + sender + receiver on CPU {}", cpu);
    // The queue thread's capacity: packets it released per second of its own CPU time (its
    // thread runs the verdicts' kernel work too: reinjection and the veth transmit).
    std::cout << fmt::format("  {:<48} {:>12.0f} {:>12.0f} {:>12.0f} {:>11.0f} % {:>14.0f}\n", placement,
                             static_cast<double>(run.sent) / run.seconds,
                             static_cast<double>(stats.accepted) / run.seconds,
                             static_cast<double>(run.delaysMs.size()) / run.seconds, 100.0 * cpuSeconds / run.seconds,
                             static_cast<double>(stats.accepted) / cpuSeconds);
  }
  std::cout << "\n";

  std::cout << "delay error versus requested (delay 100 ms, 200-byte datagrams, unpinned):\n";
  std::cout << fmt::format("  {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n", "packets/s", "sent", "lost", "p50 ms",
                           "p99 ms", "max ms");
  for (int rate : {1000, 10'000, 50'000}) {
    auto q = openQueue(a.path(), 100ms);
    auto run = traffic(a.path(), b.path(), 200, rate, duration, 500ms);
    q->stop();
    std::vector<double> errors;
    errors.reserve(run.delaysMs.size());
    for (double d : run.delaysMs) {
      errors.push_back(d - 100.0);
    }
    const double p50 = quantile(errors, 0.5);
    const double p99 = quantile(errors, 0.99);
    const double max = quantile(errors, 1.0);
    std::cout << fmt::format("  {:>10} {:>10} {:>10} {:>10.3f} {:>10.3f} {:>10.3f}\n", rate, run.sent,
                             run.sent - run.delaysMs.size(), p50, p99, max);
  }
  return 0;
}
