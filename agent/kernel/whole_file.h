// Internal to agent/kernel/: reads a small kernel file (/proc, cgroupfs) whole, for the process
// table and the cgroup tree. Not part of the kernel seam's API.
#pragma once

#include <cstddef>
#include <string>
#include <system_error>

#include <tl/expected.hpp>

namespace faultline::kernel {

// The whole file at path, read with read(2) to its end (EINTR retried), not with an ifstream: a
// process that exits while its /proc files are read fails the read with ESRCH, which libstdc++'s
// filebuf turns into an exception (seen in a kill loop). Blocks for the reads; thread-safe.
// Keeps at most maxBytes (the rest is not read: nothing reads unbounded input); the default
// fits /proc/PID/stat, comm and cgroup and cgroupfs files, which are far shorter.
// errors: open(2)'s or read(2)'s errno (ENOENT, EACCES, ESRCH, ...).
inline constexpr size_t kMaxKernelFileBytes = 64 * 1024;
[[nodiscard]] tl::expected<std::string, std::error_code> readWholeFile(const std::string& path,
                                                                       size_t maxBytes = kMaxKernelFileBytes);

}  // namespace faultline::kernel
