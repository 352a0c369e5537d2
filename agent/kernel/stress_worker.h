// Stress workers: processes the agent forks that burn CPU or hold resident memory. A worker is
// held at a gate after fork() until release(), so the caller can first move it into its cgroup.
// The child only makes async-signal-safe calls (the agent is multi-threaded). It dies with the
// thread that forked it (PR_SET_PDEATHSIG SIGKILL), closes every descriptor it inherited (so it
// never holds the agent's journal lock or sockets) and is named faultline-cpu or faultline-mem.
#pragma once

#include <vector>

#include <cstdint>
#include <system_error>

#include <sys/types.h>
#include <tl/expected.hpp>

namespace faultline::kernel {

struct StressWork {
  enum class Kind { kCpu, kMemory } kind = Kind::kCpu;
  uint64_t bytes = 0;  // kMemory: anonymous memory to map and write, page by page
};

struct HeldWorker {
  pid_t pid = -1;
  int gate = -1;  // write end of the gate pipe; closed by release()
};

// errors: fork's or pipe's errno (EAGAIN, ENOMEM).
[[nodiscard]] tl::expected<HeldWorker, std::error_code> forkStressWorker(const StressWork& work);
// Lets the worker start (or, with start false, exit at once without working).
void releaseWorker(HeldWorker& worker, bool start = true);
// waitpid without blocking past timeoutMs; true when reaped.
bool reapWorker(pid_t pid, int timeoutMs);
// SIGKILLs each of pids (a stress cgroup's members on kernels before 5.14, which have no
// cgroup.kill); a pid already gone is skipped. Does not wait.
void killWorkers(const std::vector<pid_t>& pids);

}  // namespace faultline::kernel
