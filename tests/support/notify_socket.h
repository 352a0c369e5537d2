// Test support: a Unix datagram socket standing in for systemd's NOTIFY_SOCKET (sd_notify(3)),
// bound in a fresh directory that is removed with it. For the test's own process (setNotifyEnv())
// or for a child started with env().
#pragma once

#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <doctest/doctest.h>

extern char** environ;

namespace faultline::testing {

class NotifySocket {
 public:
  NotifySocket() {
    char tmpl[] = "/tmp/faultline-notify-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/notify.sock";
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path_.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::bind(fd_, reinterpret_cast<const sockaddr*>(&a), sizeof a) == 0);
  }
  ~NotifySocket() {
    if (setEnv_) {
      ::unsetenv("NOTIFY_SOCKET");
      ::unsetenv("WATCHDOG_USEC");
    }
    ::close(fd_);
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }

  // Sets NOTIFY_SOCKET (and WATCHDOG_USEC when watchdogUsec is not empty) in this process until
  // the destructor unsets them.
  void setNotifyEnv(const std::string& watchdogUsec = "") {
    setEnv_ = true;
    ::setenv("NOTIFY_SOCKET", path_.c_str(), 1);
    if (!watchdogUsec.empty()) {
      ::setenv("WATCHDOG_USEC", watchdogUsec.c_str(), 1);
    }
  }
  // This process's environment plus NOTIFY_SOCKET (and WATCHDOG_USEC), for a child's envp.
  [[nodiscard]] std::vector<std::string> env(const std::string& watchdogUsec = "") const {
    std::vector<std::string> out;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry = *e;
      if (entry.rfind("NOTIFY_SOCKET=", 0) != 0 && entry.rfind("WATCHDOG_", 0) != 0) {
        out.push_back(entry);
      }
    }
    out.push_back("NOTIFY_SOCKET=" + path_);
    if (!watchdogUsec.empty()) {
      out.push_back("WATCHDOG_USEC=" + watchdogUsec);
    }
    return out;
  }

  // The next datagram within timeout; "" when none came.
  std::string next(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) {
      return "";
    }
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
  }
  // The first datagram that starts with prefix within timeout (others are dropped); "" if none.
  std::string nextStarting(const std::string& prefix, std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < until) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      auto m = next(std::max(left, std::chrono::milliseconds{1}));
      if (m.rfind(prefix, 0) == 0 && !m.empty()) {
        return m;
      }
    }
    return "";
  }
  // How many datagrams equal to text arrive within window (others are dropped).
  int count(const std::string& text, std::chrono::milliseconds window) {
    int n = 0;
    const auto until = std::chrono::steady_clock::now() + window;
    while (std::chrono::steady_clock::now() < until) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (next(std::max(left, std::chrono::milliseconds{1})) == text) {
        ++n;
      }
    }
    return n;
  }
  // Drops what has arrived so far.
  void drain() {
    while (!next(std::chrono::milliseconds{0}).empty()) {
    }
  }

 private:
  std::string dir_;
  std::string path_;
  int fd_ = -1;
  bool setEnv_ = false;
};

}  // namespace faultline::testing
