// The userspace driver's watchdog (agent/safety/queue_watchdog.h) without a kernel: what it refuses.
// The watchdog at work is tests/kernel/agent/safety/queue_watchdog_test.cpp.
#include <string>
#include <string_view>

#include <doctest/doctest.h>

#include "agent/safety/queue_watchdog.h"

using namespace faultline::agent;

namespace {

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("watchdog: an executable whose main() does not dispatch it refuses to spawn itself as one") {
  // unit_tests' main() does not call runQueueWatchdogIfAsked(): /proc/self/exe would run the tests.
  auto watchdog = QueueWatchdog::start();
  REQUIRE_FALSE(watchdog.has_value());
  CHECK(watchdog.error().first == std::errc::executable_format_error);
  CHECK_MESSAGE(contains(watchdog.error().second, "does not call runQueueWatchdogIfAsked()"), watchdog.error().second);
}
