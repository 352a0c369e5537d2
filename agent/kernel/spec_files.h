// Files whose paths come from a fault spec (a target's netns path, a selector's pidfile): opened
// without blocking and without side effects, checked by type before anything reads them, read with
// a bound. A FIFO, a device or a directory named where a namespace or a pidfile belongs is refused
// at once, in words that say what was found and what is accepted; nothing here waits for a writer
// or reads without end.
#pragma once

#include <cstddef>
#include <string>
#include <system_error>

#include <tl/expected.hpp>

#include "common/unique_fd.h"

namespace faultline::kernel {

// The largest pidfile read, in bytes: a pid and a newline take at most 8; daemons write nothing
// else there.
inline constexpr size_t kMaxPidfileBytes = 4096;

// Why a spec's file was refused.
struct SpecFileError {
  std::error_code code;  // errno of open/fstat (ENOENT, EACCES); EINVAL for a wrong type; EFBIG when too large
  std::string why;  // a phrase after the path: "is a FIFO, not a namespace; accepted: ...", "cannot be opened: ..."
};

// Opens path as a network namespace: the path is opened with O_PATH first (a device's open() is
// never called), then, when fstat/fstatfs show an nsfs inode, reopened O_RDONLY | O_NONBLOCK |
// O_CLOEXEC and asked (NS_GET_NSTYPE) that it is a network namespace. The caller owns the
// descriptor. Does not block; thread-safe.
[[nodiscard]] tl::expected<UniqueFd, SpecFileError> openNetnsFile(const std::string& path);

// The text of a regular file of at most maxBytes (a pidfile: kMaxPidfileBytes), opened as
// openNetnsFile() does and read with a bound even if the file grows meanwhile. A FIFO, device,
// socket or directory is refused before it is read. Does not block; thread-safe.
[[nodiscard]] tl::expected<std::string, SpecFileError> readSmallRegularFile(const std::string& path, size_t maxBytes);

}  // namespace faultline::kernel
