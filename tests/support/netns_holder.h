// Test support without doctest (the benchmarks use it too): shell commands, and a network
// namespace held by a paused child process that dies with the test process (PR_SET_PDEATHSIG =
// SIGKILL), so it and the veth pair inside it vanish even when the test crashes. Needs root.
#pragma once

#include <sched.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

#include <fmt/format.h>

#include "tests/support/paused_child.h"

namespace faultline::testing {

struct CommandResult {
  int status = -1;     // exit status, -1 when it did not exit normally
  std::string output;  // stdout and stderr
};

// Runs command with /bin/sh in the C locale (so output parses the same everywhere), capturing
// stdout and stderr.
inline CommandResult sh(const std::string& command) {
  CommandResult result;
  FILE* pipe = ::popen(("LC_ALL=C " + command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) {
    return result;
  }
  std::array<char, 512> chunk{};
  size_t n = 0;
  while ((n = std::fread(chunk.data(), 1, chunk.size(), pipe)) > 0) {
    result.output.append(chunk.data(), n);
  }
  const int status = ::pclose(pipe);
  result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

// A network namespace with veth0 and veth1 up, held by a PausedChild: it dies with this process or
// with this object.
class NetnsHolder {
 public:
  NetnsHolder()
      : holder_([](const PausedChild::Ready& ready) {
          if (::unshare(CLONE_NEWNET) == 0) {
            ready(1);
          }
        }) {
    if (!holder_.reported()) {
      error_ = "the namespace holder did not start";
      return;
    }
    path_ = fmt::format("/proc/{}/ns/net", holder_.pid());
    for (const char* command :
         {"ip link add veth0 type veth peer name veth1", "ip link set veth0 up", "ip link set veth1 up"}) {
      if (!inNetns(command)) {
        return;
      }
    }
  }
  NetnsHolder(const NetnsHolder&) = delete;
  NetnsHolder& operator=(const NetnsHolder&) = delete;

  // Ends the holder now: the namespace goes away with it (tests of a vanished namespace).
  void kill() { holder_.kill(); }

  // Runs command in the namespace; on failure sets error() and returns false.
  bool inNetns(const std::string& command) {
    auto r = sh(fmt::format("nsenter --net={} {}", path_, command));
    if (r.status != 0) {
      error_ = fmt::format("{}: {}", command, r.output);
      return false;
    }
    return true;
  }

  [[nodiscard]] const std::string& path() const { return path_; }
  // The holder's pid (its namespace is the one of path()); -1 once killed.
  [[nodiscard]] pid_t pid() const { return holder_.pid(); }
  [[nodiscard]] const std::string& error() const { return error_; }  // empty when all went well

 private:
  PausedChild holder_;
  std::string path_;
  std::string error_;
};

}  // namespace faultline::testing
