// Time to inject and revert one network fault, N times (default 1000), through the agent's driver
// (NetworkFaultDriver over rtnetlink) and through the tc command line, in the same run, on the
// same veth pair in a throwaway network namespace. Prints median, p99 and the ratio per path.
// Fault: netem delay 100ms where the kernel has sch_netem (the VM tier), else tbf 1mbit.
// tc path: `tc qdisc replace dev veth0 root handle fa17: ...` then `tc qdisc del dev veth0 root`,
// each one posix_spawn of tc (no shell), as a tc-based tool runs it. The benchmark moves itself into
// the namespace first, so both paths work in their own namespace (no setns, no nsenter). Needs root.
// Usage: inject_latency [N]
#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "tests/support/netns_holder.h"

using namespace faultline;
using Clock = std::chrono::steady_clock;

namespace {

struct Summary {
  double medianUs = 0;
  double p99Us = 0;
};

Summary summarize(std::vector<double> us) {
  std::sort(us.begin(), us.end());
  const auto at = [&](double q) { return us[std::min(us.size() - 1, static_cast<size_t>(q * us.size()))]; };
  return {at(0.5), at(0.99)};
}

// Runs tc with args (posix_spawnp, no shell); true when it exits 0.
bool runTc(std::vector<std::string> args) {
  args.insert(args.begin(), "tc");
  std::vector<char*> argv;
  for (auto& a : args) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);
  pid_t pid = 0;
  if (::posix_spawnp(&pid, "tc", nullptr, nullptr, argv.data(), environ) != 0) {
    return false;
  }
  int status = 0;
  return ::waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

double micros(Clock::duration d) {
  return std::chrono::duration<double, std::micro>(d).count();
}

}  // namespace

int main(int argc, char** argv) {
  if (::geteuid() != 0) {
    std::cerr << "inject_latency needs root (a network namespace, a veth pair, qdiscs)\n";
    return 2;
  }
  const int n = argc > 1 ? std::atoi(argv[1]) : 1000;
  testing::NetnsHolder ns;
  if (!ns.error().empty()) {
    std::cerr << "cannot set up the namespace: " << ns.error() << "\n";
    return 2;
  }
  const int nsFd = ::open(ns.path().c_str(), O_RDONLY | O_CLOEXEC);
  if (nsFd < 0 || ::setns(nsFd, CLONE_NEWNET) != 0) {
    std::cerr << "cannot enter " << ns.path() << "\n";
    return 2;
  }
  ::close(nsFd);
  const bool netem = kernel::probeQdiscSupport().netem;
  v1::FaultSpec spec;
  std::string tcArgs;
  std::vector<std::string> tcKind;
  if (netem) {
    auto* d = spec.mutable_network_delay();
    d->mutable_target()->set_interface("veth0");

    *d->mutable_delay() = toProto(std::chrono::milliseconds{100});
    d->set_limit_packets(1000);
    tcArgs = "netem delay 100ms limit 1000";
    tcKind = {"netem", "delay", "100ms", "limit", "1000"};
  } else {
    auto* b = spec.mutable_network_bandwidth();
    b->mutable_target()->set_interface("veth0");

    b->set_rate_bps(1'000'000);
    tcArgs = "tbf rate 1mbit burst 3028 limit 6250";
    tcKind = {"tbf", "rate", "1mbit", "burst", "3028", "limit", "6250"};
  }
  agent::NetworkFaultDriver driver(kernel::openQdiscTable);
  std::vector<double> driverUs;
  std::vector<double> tcUs;
  for (int i = 0; i < n; ++i) {
    const auto start = Clock::now();
    auto applied = driver.apply(spec);
    if (!applied) {
      std::cerr << "driver apply failed: " << applied.error().message << "\n";
      return 1;
    }
    if (auto r = (*applied)->revert(); !r) {
      std::cerr << "driver revert failed: " << r.error().message << "\n";
      return 1;
    }
    driverUs.push_back(micros(Clock::now() - start));
  }
  std::vector<std::string> add = {"qdisc", "replace", "dev", "veth0", "root", "handle", "fa17:"};
  add.insert(add.end(), tcKind.begin(), tcKind.end());
  const std::vector<std::string> del = {"qdisc", "del", "dev", "veth0", "root"};
  for (int i = 0; i < n; ++i) {
    const auto start = Clock::now();
    if (!runTc(add) || !runTc(del)) {
      std::cerr << "tc failed: tc " << fmt::format("{}", fmt::join(add, " ")) << "\n";
      return 1;
    }
    tcUs.push_back(micros(Clock::now() - start));
  }
  const auto d = summarize(driverUs);
  const auto t = summarize(tcUs);
  std::cout << fmt::format("inject+revert of {} on veth0 in a throwaway namespace, N = {}\n", tcArgs, n);
  std::cout << fmt::format("{:<32} {:>12} {:>12}\n", "path", "median (us)", "p99 (us)");
  std::cout << fmt::format("{:<32} {:>12.0f} {:>12.0f}\n", "NetworkFaultDriver (rtnetlink)", d.medianUs, d.p99Us);
  std::cout << fmt::format("{:<32} {:>12.0f} {:>12.0f}\n", "tc command line (2 tc processes)", t.medianUs, t.p99Us);
  std::cout << fmt::format("ratio tc / driver: median {:.1f}x, p99 {:.1f}x\n", t.medianUs / d.medianUs,
                           t.p99Us / d.p99Us);
  return 0;
}
