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

#include "tests/support/netns_holder.h"

namespace faultline::testing {

// A network namespace with a veth pair (veth0, veth1), both up, for doctest cases.
class NetnsFixture {
 public:
  NetnsFixture() {
    REQUIRE_MESSAGE(holder_.error().empty(), holder_.error());
    netns_ = holder_.path();
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
  NetnsHolder holder_;
  std::string netns_;
};

}  // namespace faultline::testing
