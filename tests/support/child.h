// Test support: child processes a test starts (killed and reaped on destruction) and a copy of
// sleep(1) under a 20-byte name.
#pragma once

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace faultline::testing {

namespace fs = std::filesystem;

// A started child; killed and reaped on destruction unless wait() already reaped it.
class Child {
 public:
  Child(const std::string& path, std::vector<std::string> argv) {
    std::vector<char*> args;
    for (auto& a : argv) {
      args.push_back(a.data());
    }
    args.push_back(nullptr);
    const int rc = ::posix_spawn(&pid_, path.c_str(), nullptr, nullptr, args.data(), environ);
    REQUIRE_MESSAGE(rc == 0, "posix_spawn ", path, ": ", std::strerror(rc));
    // posix_spawn returns when the kernel releases the vfork parent, which is before the new
    // image's argv (and comm) are in place: wait until /proc shows the whole command line.
    std::string expected;
    for (const auto& a : argv) {
      expected += a;
      expected.push_back('\0');
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (readCmdline() != expected && !exited()) {
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "child ", pid_, " never showed its argv");
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  [[nodiscard]] pid_t pid() const { return pid_; }

  // True once the child has ended (it is not reaped).
  [[nodiscard]] bool exited() const {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid_;
  }

  [[nodiscard]] std::string readCmdline() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/cmdline", std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }

  // Reaps the child; returns its wait status.
  int wait() {
    int status = 0;
    REQUIRE(::waitpid(pid_, &status, 0) == pid_);
    pid_ = -1;
    return status;
  }

 private:
  pid_t pid_ = -1;
};

// A copy of sleep(1) under a 20-byte name in a fresh directory, removed afterwards.
class LongNamedSleep {
 public:
  LongNamedSleep() {
    std::string pattern = (fs::temp_directory_path() / "faultline-proc-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    dir_ = pattern;
    name_ = "flt-sleeper-" + std::to_string(100000000 + ::getpid() % 100000000).substr(1);  // 12 + 8 bytes
    path_ = dir_ / name_;
    fs::copy_file(sleepBinary(), path_);
    fs::permissions(path_, fs::perms::owner_all);
  }
  LongNamedSleep(const LongNamedSleep&) = delete;
  LongNamedSleep& operator=(const LongNamedSleep&) = delete;
  ~LongNamedSleep() {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  static std::string sleepBinary() { return fs::exists("/usr/bin/sleep") ? "/usr/bin/sleep" : "/bin/sleep"; }

  [[nodiscard]] const std::string& name() const { return name_; }
  [[nodiscard]] std::string path() const { return path_.string(); }

 private:
  fs::path dir_;
  fs::path path_;
  std::string name_;
};

}  // namespace faultline::testing
