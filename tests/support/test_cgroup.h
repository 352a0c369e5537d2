// Test support: a cgroup v2 the test creates under the host's v2 root (found in
// /proc/self/mountinfo) and removes on destruction, even when the test failed: it thaws it, kills
// what is left in it (cgroup.kill, else SIGKILL each), and removes it and its children. Needs root.
#pragma once

#include <csignal>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <unistd.h>

#include "agent/kernel/cgroup_tree.h"

namespace faultline::testing {

class TestCgroup {
 public:
  // path: e.g. "/faultline-test-1234-a"; created now (any existing leftover is removed first).
  TestCgroup(kernel::CgroupTree& tree, std::string path) : tree_(tree), path_(std::move(path)) {
    destroy(path_);
    auto created = tree_.create(path_);
    REQUIRE_MESSAGE(created, "cannot create cgroup ", path_, " in ", tree_.mountPoint(), ": ",
                    created ? "" : created.error().message());
  }
  TestCgroup(const TestCgroup&) = delete;
  TestCgroup& operator=(const TestCgroup&) = delete;
  ~TestCgroup() { destroy(path_); }

  [[nodiscard]] const std::string& path() const { return path_; }

  void add(pid_t pid) {
    auto moved = tree_.write(path_, "cgroup.procs", std::to_string(pid));
    REQUIRE_MESSAGE(moved, "cannot move pid ", pid, " into ", path_);
  }

  // A child cgroup, removed with this one.
  std::string child(const std::string& name) {
    const std::string p = path_ + "/" + name;
    REQUIRE(tree_.create(p));
    return p;
  }

  void destroy(const std::string& cgroup) {
    auto kids = tree_.children(cgroup);
    if (!kids) {
      return;  // not there
    }
    for (const auto& k : *kids) {
      destroy(cgroup + "/" + k);
    }
    (void)tree_.write(cgroup, "cgroup.freeze", "0");
    if (!tree_.write(cgroup, "cgroup.kill", "1")) {
      if (auto procs = tree_.procs(cgroup)) {
        for (pid_t pid : *procs) {
          ::kill(pid, SIGKILL);
        }
      }
    }
    for (int i = 0; i < 500; ++i) {
      if (tree_.remove(cgroup)) {
        return;
      }
      if (auto still = tree_.children(cgroup); !still) {
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

 private:
  kernel::CgroupTree& tree_;
  std::string path_;
};

}  // namespace faultline::testing
