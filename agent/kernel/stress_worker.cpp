#include "agent/kernel/stress_worker.h"

#include <fcntl.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <thread>

#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

namespace faultline::kernel {
namespace {

[[noreturn]] void runWorker(int gate, const StressWork& work) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  ::prctl(PR_SET_NAME, work.kind == StressWork::Kind::kCpu ? "faultline-cpu" : "faultline-mem");
  char go = 0;
  ssize_t n = 0;
  do {
    n = ::read(gate, &go, 1);
  } while (n < 0 && errno == EINTR);
  if (n != 1 || go != 'g') {
    ::_exit(0);
  }
  // Drop every inherited descriptor: the agent's sockets, and its undo journal, whose flock(2)
  // a worker would otherwise share and keep after the agent died.
  if (::syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
    for (int fd = 3; fd < 4096; ++fd) {
      ::close(fd);
    }
  }
  if (work.kind == StressWork::Kind::kCpu) {
    volatile unsigned long spin = 0;
    for (;;) {
      spin = spin + 1;
    }
  }
  void* memory = ::mmap(nullptr, work.bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) {
    ::_exit(3);
  }
  const long page = ::sysconf(_SC_PAGESIZE);
  auto* bytes = static_cast<volatile unsigned char*>(memory);
  for (uint64_t at = 0; at < work.bytes; at += static_cast<uint64_t>(page)) {
    bytes[at] = 1;
  }
  for (;;) {
    ::pause();
  }
}

}  // namespace

tl::expected<HeldWorker, std::error_code> forkStressWorker(const StressWork& work) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return tl::unexpected(std::error_code(errno, std::generic_category()));
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    const std::error_code error(errno, std::generic_category());
    ::close(fds[0]);
    ::close(fds[1]);
    return tl::unexpected(error);
  }
  if (pid == 0) {
    ::close(fds[1]);
    runWorker(fds[0], work);
  }
  ::close(fds[0]);
  return HeldWorker{pid, fds[1]};
}

void releaseWorker(HeldWorker& worker, bool start) {
  if (worker.gate < 0) {
    return;
  }
  if (start) {
    const char go = 'g';
    ssize_t n = 0;
    do {
      n = ::write(worker.gate, &go, 1);
    } while (n < 0 && errno == EINTR);
  }
  ::close(worker.gate);
  worker.gate = -1;
}

bool reapWorker(pid_t pid, int timeoutMs) {
  for (int waited = 0;; ++waited) {
    const pid_t r = ::waitpid(pid, nullptr, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) {
      return true;
    }
    if (waited >= timeoutMs) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void killWorkers(const std::vector<pid_t>& pids) {
  for (pid_t pid : pids) {
    ::kill(pid, SIGKILL);
  }
}

}  // namespace faultline::kernel
