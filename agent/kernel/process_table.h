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

// One process pinned from its selection to its last signal: a pidfd opened on its pid and checked
// against the start time the selection saw, so a signal reaches that process or fails, never a
// process that took its pid after it exited. A process that rewrites its command line or its comm
// (PostgreSQL's and nginx's workers, sshd) is still the same process. Holds one file descriptor
// (released by the destructor); not thread-safe.
class PinnedProcess {
 public:
  virtual ~PinnedProcess() = default;
  [[nodiscard]] virtual pid_t pid() const = 0;
  [[nodiscard]] virtual unsigned long long startTime() const = 0;
  // pidfd_send_signal. errors: ESRCH it has exited (a zombie or reaped: nothing was sent); EPERM
  // not allowed.
  [[nodiscard]] virtual tl::expected<void, std::error_code> signal(int sig) = 0;
  // True once it has exited (its pidfd polls readable: a zombie or reaped); polls up to wait, so
  // it blocks up to wait.
  [[nodiscard]] virtual bool exited(std::chrono::milliseconds wait) = 0;
};

class ProcessTable {
 public:
  virtual ~ProcessTable() = default;
  // Every process visible in /proc, in pid order. Processes that exit while being read are skipped.
  [[nodiscard]] virtual std::vector<ProcessInfo> list() = 0;
  // Pins the process that has pid now and started at startTime (ProcessInfo::startTime, field 22
  // of /proc/PID/stat): pidfd_open, then the start time read again. Start times are clock ticks
  // (10 ms): only a pid reused within the tick its first holder started in could be mistaken, which
  // needs the whole pid space to wrap in 10 ms. errors: ESRCH no process has pid now, or the one
  // that has it started at another time (the selected one exited and its pid was reused); EMFILE;
  // ENOSYS a kernel before 5.3 (no pidfd_open).
  [[nodiscard]] virtual tl::expected<std::unique_ptr<PinnedProcess>, std::error_code> pin(
      pid_t pid, unsigned long long startTime) = 0;
  // Sends sig through a pidfd (pidfd_open + pidfd_send_signal), so a pid reused after the
  // process exited is never signalled by mistake: when the last list() saw pid, the pidfd's
  // process must have the start time list() saw (its command line may have changed: processes
  // rewrite it). Prefer pin(), which holds the process from selection to signal.
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
