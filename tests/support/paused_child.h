// Test and benchmark support without doctest: a forked child that sets something up, tells the
// parent how that went with one byte, and then holds it, paused, until it is killed. The child dies
// with this process (PR_SET_PDEATHSIG = SIGKILL) or with this object (SIGKILL, then reaped), so what
// it holds (a network namespace, a bound queue, an applied fault) goes with it even when the test
// crashes.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <optional>

namespace faultline::testing {

class PausedChild {
 public:
  // ready(byte) sends byte to the parent and pauses until the child is killed: it never returns,
  // so what setUp made stays alive. A setUp that returns without calling it ends the child.
  using Ready = std::function<void(char)>;

  // Forks; the child runs setUp(ready). Returns once the child has called ready() or has ended.
  explicit PausedChild(const std::function<void(const Ready&)>& setUp) {
    int pipeFds[2];
    if (::pipe2(pipeFds, O_CLOEXEC) != 0) {
      return;
    }
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::close(pipeFds[0]);
      if (::getppid() != parent) {
        ::_exit(1);
      }
      setUp([&](char byte) {
        if (::write(pipeFds[1], &byte, 1) != 1) {
          ::_exit(1);
        }
        for (;;) {
          ::pause();
        }
      });
      ::_exit(1);
    }
    ::close(pipeFds[1]);
    char byte = 0;
    if (pid_ > 0 && ::read(pipeFds[0], &byte, 1) == 1) {
      reported_ = byte;
    }
    ::close(pipeFds[0]);
  }
  PausedChild(const PausedChild&) = delete;
  PausedChild& operator=(const PausedChild&) = delete;
  ~PausedChild() { kill(); }

  // The byte the child passed to ready(); nullopt when it could not start or ended before that.
  [[nodiscard]] const std::optional<char>& reported() const { return reported_; }
  // The child's pid; -1 when it could not be forked or is gone (kill()).
  [[nodiscard]] pid_t pid() const { return pid_; }

  // Ends the child now (SIGKILL, a SIGCONT for one the test stopped) and reaps it.
  void kill() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::kill(pid_, SIGCONT);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

 private:
  pid_t pid_ = -1;
  std::optional<char> reported_;
};

}  // namespace faultline::testing
