// A FIFO in a fresh temporary directory, for tests that name it where a file is expected (a
// netns, a pidfile), and a way to run a call that might block on it: callWithin() runs the call on
// a thread of its own and, if it has not returned within the limit, opens the FIFO for writing so
// that a reader stuck in open(2) is released (the test then fails on the time, instead of hanging).
#pragma once

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <future>
#include <string>
#include <utility>

#include <doctest/doctest.h>

namespace faultline::testing {

class TempFifo {
 public:
  TempFifo() {
    std::string pattern = (std::filesystem::temp_directory_path() / "faultline-fifo-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    dir_ = pattern;
    path_ = (dir_ / "fifo").string();
    REQUIRE(::mkfifo(path_.c_str(), 0600) == 0);
  }
  ~TempFifo() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  TempFifo(const TempFifo&) = delete;
  TempFifo& operator=(const TempFifo&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }

  // Runs call() on its own thread; returns its result and how long it took. After limit, opens the
  // FIFO for writing (and closes it) so that a call blocked in open(2) for reading returns.
  template <typename Call>
  auto callWithin(std::chrono::milliseconds limit, Call call) {
    const auto start = std::chrono::steady_clock::now();
    auto result = std::async(std::launch::async, [&] {
      auto r = call();
      return std::make_pair(std::move(r), std::chrono::steady_clock::now() - start);
    });
    if (result.wait_for(limit) != std::future_status::ready) {
      const int writer = ::open(path_.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
      if (writer >= 0) {
        ::close(writer);
      }
    }
    return result.get();
  }

 private:
  std::filesystem::path dir_;
  std::string path_;
};

}  // namespace faultline::testing
