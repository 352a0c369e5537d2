// Internal to agent/kernel/: reads a small kernel file (/proc, cgroupfs) whole, for the process
// table and the cgroup tree. Not part of the kernel seam's API.
#pragma once

#include <cstddef>
#include <string>
#include <system_error>

#include <tl/expected.hpp>

namespace faultline::kernel {

// The most readWholeFile() keeps by default: /proc/PID/stat, comm and cgroup and cgroupfs files
// are far shorter.
inline constexpr size_t kMaxKernelFileBytes = 64 * 1024;

// The file at path, read with read(2) (EINTR retried) to its end or to maxBytes, whichever comes
// first: the rest is never read, so an endless file cannot grow the agent. Not an ifstream: a
// process that exits while its /proc files are read fails the read with ESRCH, which libstdc++'s
// filebuf turns into an exception (seen in a kill loop). Blocks for the reads; thread-safe.
// errors: open(2)'s or read(2)'s errno (ENOENT, EACCES, ESRCH, ...).
[[nodiscard]] tl::expected<std::string, std::error_code> readWholeFile(const std::string& path,
                                                                       size_t maxBytes = kMaxKernelFileBytes);

}  // namespace faultline::kernel
