// The faultline-agent command line. Returns the process exit code.
#pragma once

namespace faultline::agent {
int agentMain(int argc, char** argv);
}
