// doctest main for tests that need root: exits 77 (meson's "skipped") for anyone else.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>

#include "agent/safety/queue_watchdog.h"

int main(int argc, char** argv) {
  // The userspace driver's watchdog is this executable again (/proc/self/exe).
  if (auto watchdog = faultline::agent::runQueueWatchdogIfAsked(argc, argv)) {
    return *watchdog;
  }
  if (::geteuid() != 0) {
    std::fprintf(stderr, "%s needs root (network namespaces, veth pairs, qdiscs): skipped\n", argv[0]);
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
