#include "agent/cli/cli.h"
#include "agent/safety/queue_watchdog.h"

int main(int argc, char** argv) {
  if (auto watchdog = faultline::agent::runQueueWatchdogIfAsked(argc, argv)) {
    return *watchdog;
  }
  return faultline::agent::agentMain(argc, argv);
}
