// Benchmark and test support without doctest: a program started inside a network namespace, as
// the benches start faultline and faultline-agent next to each other on one machine. Needs root.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace faultline::testing {

// Starts argv (argv[0] a path) in the network namespace at netns (a namespace file), stdout and
// stderr appended to logFile; the child dies with this process (PR_SET_PDEATHSIG = SIGKILL). Returns
// its pid (-1 when fork failed); the caller signals and reaps it. When the namespace, the log or
// the program cannot be opened the child exits with 127.
inline pid_t spawnIn(const std::string& netns, std::vector<std::string> argv, const std::string& logFile) {
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid != 0) {
    return pid;
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  const int ns = ::open(netns.c_str(), O_RDONLY | O_CLOEXEC);
  const int log = ::open(logFile.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (::getppid() != parent || ns < 0 || log < 0 || ::setns(ns, CLONE_NEWNET) != 0) {
    ::_exit(127);
  }
  ::dup2(log, 1);
  ::dup2(log, 2);
  std::vector<char*> args;
  for (auto& a : argv) {
    args.push_back(a.data());
  }
  args.push_back(nullptr);
  ::execv(args[0], args.data());
  ::_exit(127);
}

}  // namespace faultline::testing
