// The seam between process faults and the kernel's process table (/proc, pidfd).
// Not thread-safe; calls read /proc and block briefly.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <sys/types.h>
#include <tl/expected.hpp>

#include "agent/kernel/spec_files.h"

namespace faultline::kernel {

struct ProcessInfo {
  pid_t pid = 0;
  pid_t ppid = 0;
  std::string comm;     // /proc/PID/comm: the kernel's name, at most 15 bytes
  std::string exe;      // target of /proc/PID/exe; empty when unreadable (kernel threads)
  std::string cmdline;  // /proc/PID/cmdline with NULs turned into spaces; its first kMaxCmdlineBytes
  bool kernelThread = false;
  // Fields below are filled by list() too; fakes may leave them empty.
  // cgroup v2 path from /proc/PID/cgroup ("0::PATH"), e.g. /system.slice/x.service
  std::string cgroup{};
  std::string systemdCgroup{};       // the name=systemd v1 path on hybrid hosts ("" when absent)
  char state = '?';                  // /proc/PID/stat state: R, S, D, T (stopped), t, Z, ...
  unsigned long long startTime = 0;  // clock ticks after boot; tells a reused pid apart
};

// The most of a command line read from /proc/PID/cmdline (and matched by a cmdline selector): a
// command line can be as long as a quarter of the stack limit; a Java one is tens of KiB.
inline constexpr size_t kMaxCmdlineBytes = 256 * 1024;

class ProcessTable {
 public:
  virtual ~ProcessTable() = default;
  // Every process visible in /proc, in pid order. Processes that exit while being read are skipped.
  [[nodiscard]] virtual std::vector<ProcessInfo> list() = 0;
  // Sends sig through a pidfd (pidfd_open + pidfd_send_signal), so a pid reused after the
  // process exited is never signalled by mistake: when the last list() saw pid, the pidfd's
  // process must have the start time and command line list() saw (start times are 10 ms ticks:
  // a reused pid started in the same tick with the same command line cannot be told apart).
  // errors: ESRCH no such process; EPERM not allowed.
  [[nodiscard]] virtual tl::expected<void, std::error_code> signal(pid_t pid, int sig) = 0;
  // True when the process the last list() saw as pid has exited (or was reaped and its pid
  // reused) within wait; polls its pidfd, so it blocks up to wait.
  [[nodiscard]] virtual bool exited(pid_t pid, std::chrono::milliseconds wait) = 0;
  // The pid in a pidfile: the first line, a decimal number > 0, of a regular file of at most
  // kMaxPidfileBytes (agent/kernel/spec_files.h: a FIFO or device is refused without blocking).
  // errors: the errno of open/read (ENOENT, EACCES); EINVAL when the file is not a regular file or
  // its text is not a pid; EFBIG when it is larger; why says which, in words.
  [[nodiscard]] virtual tl::expected<pid_t, SpecFileError> readPidfile(const std::string& path) = 0;
};

// The table of the caller's pid namespace, read from /proc.
[[nodiscard]] std::unique_ptr<ProcessTable> openProcessTable();

}  // namespace faultline::kernel
