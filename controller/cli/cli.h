// The faultline command line: run, validate, controller, agents, runs, show.
// Exit codes of run: 0 hypothesis held, 1 violated (or not steady before the method),
// 2 aborted, 3 execution error, 4 invalid file or usage.
#pragma once

namespace faultline::controller {
int cliMain(int argc, char** argv);
}
