// Test support: shell commands and a network namespace that dies with the test process.
//
// The namespace is held by a paused child process (PR_SET_PDEATHSIG = SIGKILL), so it and the
// veth pair inside it vanish even when the test crashes: nothing can leak onto the host.
// Needs root.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>

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

// A network namespace with a veth pair (veth0, veth1), both up.
class NetnsFixture {
 public:
  NetnsFixture() {
    int ready[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    const pid_t parent = ::getpid();
    child_ = ::fork();
    REQUIRE(child_ >= 0);
    if (child_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent || ::unshare(CLONE_NEWNET) != 0) {
        ::_exit(1);
      }
      const char ok = 1;
      if (::write(ready[1], &ok, 1) != 1) {
        ::_exit(1);
      }
      for (;;) {
        ::pause();
      }
    }
    ::close(ready[1]);
    char ok = 0;
    const bool started = ::read(ready[0], &ok, 1) == 1;
    ::close(ready[0]);
    REQUIRE_MESSAGE(started, "the namespace holder did not start");
    netns_ = fmt::format("/proc/{}/ns/net", child_);
    inNetns("ip link add veth0 type veth peer name veth1");
    inNetns("ip link set veth0 up");
    inNetns("ip link set veth1 up");
  }

  NetnsFixture(const NetnsFixture&) = delete;
  NetnsFixture& operator=(const NetnsFixture&) = delete;

  ~NetnsFixture() {
    if (child_ > 0) {
      ::kill(child_, SIGKILL);
      ::waitpid(child_, nullptr, 0);
    }
  }

  // Runs command inside the namespace; requires it to succeed.
  std::string inNetns(const std::string& command) {
    auto r = sh(fmt::format("nsenter --net={} {}", netns_, command));
    REQUIRE_MESSAGE(r.status == 0, command, ": ", r.output);
    return r.output;
  }

  // /proc/PID/ns/net of the holder.
  [[nodiscard]] const std::string& netns() const { return netns_; }

 protected:
  pid_t child_ = -1;
  std::string netns_;
};

}  // namespace faultline::testing
