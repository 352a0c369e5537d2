#include "controller/cli.h"

int main(int argc, char** argv) {
  return faultline::controller::cliMain(argc, argv);
}
