// UniqueFd: owns one file descriptor and closes it when destroyed or reset. Movable, not
// copyable; not thread-safe (one owner at a time). The one such wrapper of the project: the kernel
// seam, the drivers and the tests use it alike.
#pragma once

#include <unistd.h>

#include <utility>

namespace faultline {

class UniqueFd {
 public:
  UniqueFd() = default;
  // Takes ownership of fd (-1: none).
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  // Closes the descriptor held, if any (close(2)'s error is ignored: the descriptor is gone
  // either way on Linux), and holds fd instead.
  void reset(int fd = -1) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = fd;
  }
  // The descriptor, still owned; -1 when none.
  [[nodiscard]] int get() const { return fd_; }
  // Gives the descriptor up without closing it; the caller owns it.
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }

 private:
  int fd_ = -1;
};

}  // namespace faultline
