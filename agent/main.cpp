#include "agent/cli.h"

int main(int argc, char** argv) {
  return faultline::agent::agentMain(argc, argv);
}
