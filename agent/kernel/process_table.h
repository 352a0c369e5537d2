// The seam between process faults and the kernel's process table (/proc, pidfd).
// Not thread-safe; calls read /proc and block briefly.
#pragma once

#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include <sys/types.h>
#include <tl/expected.hpp>

namespace faultline::kernel {

struct ProcessInfo {
  pid_t pid = 0;
  pid_t ppid = 0;
  std::string comm;     // /proc/PID/comm: the kernel's name, at most 15 bytes
  std::string exe;      // target of /proc/PID/exe; empty when unreadable (kernel threads)
  std::string cmdline;  // /proc/PID/cmdline with NULs turned into spaces
  bool kernelThread = false;
};

class ProcessTable {
 public:
  virtual ~ProcessTable() = default;
  // Every process visible in /proc, in pid order. Processes that exit while being read are skipped.
  [[nodiscard]] virtual std::vector<ProcessInfo> list() = 0;
  // Sends sig through a pidfd (pidfd_open + pidfd_send_signal), so a pid reused after the
  // process exited is never signalled by mistake.
  // errors: ESRCH no such process; EPERM not allowed.
  [[nodiscard]] virtual tl::expected<void, std::error_code> signal(pid_t pid, int sig) = 0;
};

// The table of the caller's pid namespace, read from /proc.
[[nodiscard]] std::unique_ptr<ProcessTable> openProcessTable();

}  // namespace faultline::kernel
