// Test support: what one check costs (a lost() or an inspect(), as the agent's watch pays it about
// once a second), printed by kernel tests; speed goals are not asserted here (bench/ prints those).
#pragma once

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

namespace faultline::testing {

// Runs check count times (>= 2); each must return true (REQUIRE'd: the state checked must not
// change meanwhile). Words: "median M us, p90 N us, p99 P us, max X us over COUNT".
template <typename Check>
std::string checkCost(int count, Check&& check) {
  std::vector<double> micros;
  for (int i = 0; i < count; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const bool ok = check();
    micros.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
    REQUIRE(ok);
  }
  std::sort(micros.begin(), micros.end());
  const auto at = [&](double q) { return micros[static_cast<size_t>(q * (micros.size() - 1))]; };
  return fmt::format("median {:.0f} us, p90 {:.0f} us, p99 {:.0f} us, max {:.0f} us over {}", at(0.5), at(0.9),
                     at(0.99), micros.back(), count);
}

}  // namespace faultline::testing
