// Test support: shell commands and a network namespace that dies with the test process.
//
// The namespace is held by a paused child process (PR_SET_PDEATHSIG = SIGKILL), so it and the
// veth pair inside it vanish even when the test crashes: nothing can leak onto the host.
// Needs root.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "tests/support/netns_holder.h"
#include "tests/support/veth_peers.h"

namespace faultline::testing {

// A network namespace with a veth pair (veth0, veth1), both up, for doctest cases.
class NetnsFixture {
 public:
  NetnsFixture() {
    REQUIRE_MESSAGE(holder_.error().empty(), holder_.error());
    netns_ = holder_.path();
  }
  // An agent the test killed mid-fault (or whose revert was refused) leaves its pin of this
  // namespace in /run/faultline-agent/netns: remove those, and only those, so the namespace goes.
  ~NetnsFixture() {
    struct stat ours {};
    if (netns_.empty() || ::stat(netns_.c_str(), &ours) != 0) {
      return;
    }
    std::error_code ec;
    for (std::filesystem::directory_iterator it("/run/faultline-agent/netns", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      struct stat pin {};
      const std::string path = it->path().string();
      if (::stat(path.c_str(), &pin) == 0 && pin.st_dev == ours.st_dev && pin.st_ino == ours.st_ino) {
        ::umount2(path.c_str(), MNT_DETACH);
        ::unlink(path.c_str());
      }
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
  NetnsHolder holder_;
  std::string netns_;
};

// Two namespaces joined by a veth pair (joinPeers()): A, the fixture's own, with veth0 and
// aAddresses; B, peer_, with the other end as peer0, bAddresses and lo up.
class PeerNetnsFixture : public NetnsFixture {
 public:
  PeerNetnsFixture(const std::vector<std::string>& aAddresses, const std::vector<std::string>& bAddresses) {
    REQUIRE_MESSAGE(peer_.error().empty(), peer_.error());
    const std::string joined = joinPeers(holder_, peer_, aAddresses, bAddresses);
    REQUIRE_MESSAGE(joined.empty(), joined);
  }

 protected:
  NetnsHolder peer_;
};

}  // namespace faultline::testing
