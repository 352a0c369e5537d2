// The crash soak as a benchmark: N times (default 500), in a fresh network namespace (veth pair;
// every other iteration a pre-existing tbf 8001: root), a child Agent with an undo journal applies
// and reverts network.bandwidth faults in a loop until it is SIGKILLed after a random 0-30 ms;
// revertAllFaults() (what `faultline-agent revert-all` runs, confined to that namespace) recovers,
// and the root qdiscs are compared with a snapshot taken before. Prints iterations, kills, leaked
// objects (must be 0) and the time taken; exits 1 when anything leaked. Needs root.
// Then N/5 resource iterations: a child Agent pauses processes (cgroup freeze and SIGSTOP) and,
// where cgroup v2 has cpu and pids, squeezes a cgroup and runs stress.cpu, until SIGKILLed after
// 0-200 ms; recovery must thaw, continue, restore and remove everything (see crash_soak.h).
// Usage: crash_soak [N [SEED]] (SEED: random when not given; printed, to repeat a run).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <random>
#include <string>

#include <fmt/format.h>

#include "tests/support/crash_soak.h"

namespace soak = faultline::testing::soak;

int main(int argc, char** argv) {
  if (::geteuid() != 0) {
    std::cerr << "crash_soak needs root (network namespaces, veth pairs, qdiscs)\n";
    return 2;
  }
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 500;
  const uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : std::random_device{}();
  std::cout << fmt::format("crash soak: {} iterations, seed {}", iterations, seed) << std::endl;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> delayMicros(0, 30'000);
  std::string pattern = (std::filesystem::temp_directory_path() / "faultline-soak-bench-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    std::cerr << "cannot create a state directory in " << std::filesystem::temp_directory_path() << "\n";
    return 2;
  }
  const std::filesystem::path stateDir = pattern;

  const auto started = std::chrono::steady_clock::now();
  soak::Totals totals;
  size_t errors = 0;
  for (int i = 0; i < iterations; ++i) {
    const auto delay = std::chrono::microseconds{delayMicros(rng)};
    const auto it = soak::crashIteration(i % 2 == 1, delay, stateDir);
    if (!it.error.empty()) {
      ++errors;
      std::cout << fmt::format("iteration {} (kill after {} us): could not run: {}", i, delay.count(), it.error)
                << std::endl;
      continue;
    }
    totals.add(it);
    for (const auto& line : it.leaked) {
      std::cout << fmt::format("iteration {} (kill after {} us, pre-existing root {}): leaked: {}", i, delay.count(),
                               it.preexistingRoot, line)
                << std::endl;
    }
  }
  const auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - started);
  std::cout << fmt::format(
                   "iterations {}, kills {} ({} with a faultline root in place), apply+revert cycles {}, journal "
                   "entries reverted {}, leftovers removed by the scan {}, setup errors {}, leaked objects {}, "
                   "time {:.1f} s ({:.1f} ms per iteration)",
                   iterations, totals.kills, totals.inPlace, totals.cycles, totals.journalEntriesReverted,
                   totals.leftoversRemoved, errors, totals.leaked, took.count(),
                   iterations > 0 ? took.count() * 1000 / iterations : 0.0)
            << std::endl;

  // The resource soak: process.pause (freeze and SIGSTOP), and where the cgroup v2 hierarchy has
  // cpu and pids, cgroup.squeeze and stress.cpu; a fifth as many iterations (each forks children).
  const int resourceIterations = std::max(1, iterations / 5);
  std::uniform_int_distribution<int> resourceDelay(0, 200'000);
  const auto resourceStarted = std::chrono::steady_clock::now();
  soak::ResourceTotals resource;
  size_t resourceErrors = 0;
  for (int i = 0; i < resourceIterations; ++i) {
    const auto delay = std::chrono::microseconds{resourceDelay(rng)};
    const auto it =
        soak::resourceCrashIteration(delay, stateDir, fmt::format("faultline-bench-soak-{}-{}", ::getpid(), i));
    if (!it.error.empty()) {
      ++resourceErrors;
      std::cout << fmt::format("resource iteration {}: could not run: {}", i, it.error) << std::endl;
      continue;
    }
    resource.add(it);
    for (const auto& line : it.leaked) {
      std::cout << fmt::format("resource iteration {} (kill after {} us): leaked: {}", i, delay.count(), line)
                << std::endl;
    }
  }
  const auto resourceTook = std::chrono::duration<double>(std::chrono::steady_clock::now() - resourceStarted);
  std::cout << fmt::format(
                   "resource iterations {} (squeeze and stress in the loop: {}), kills with a cgroup frozen "
                   "{}, with a process stopped {}, apply+revert cycles {}, journal entries reverted {}, setup "
                   "errors {}, leaked objects {}, time {:.1f} s",
                   resourceIterations, resource.squeezed ? "yes" : "no", resource.frozen, resource.stopped,
                   resource.cycles, resource.journalEntriesReverted, resourceErrors, resource.leaked,
                   resourceTook.count())
            << std::endl;
  std::error_code ec;
  std::filesystem::remove_all(stateDir, ec);
  return totals.leaked == 0 && errors == 0 && resource.leaked == 0 && resourceErrors == 0 ? 0 : 1;
}
