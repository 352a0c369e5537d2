#include "agent/safety/queue_watchdog.h"
#include "controller/cli/cli.h"

int main(int argc, char** argv) {
  // `faultline run --local` runs the agent, and its userspace driver's watchdog, in this process.
  if (auto watchdog = faultline::agent::runQueueWatchdogIfAsked(argc, argv)) {
    return *watchdog;
  }
  return faultline::controller::cliMain(argc, argv);
}
