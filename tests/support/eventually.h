// Polling until a condition holds, for tests that wait on another process or thread.
#pragma once

#include <chrono>
#include <functional>
#include <thread>

namespace faultline::testing {

// Calls done every 20 ms until it returns true (true) or timeout passes (done's last answer).
inline bool eventually(const std::function<bool()>& done,
                       std::chrono::milliseconds timeout = std::chrono::milliseconds{10'000}) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (done()) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds{20});
  }
  return done();
}

}  // namespace faultline::testing
