#include "agent/kernel/spec_files.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>

#include <fmt/format.h>

namespace faultline::kernel {
namespace {

std::error_code errnoCode(int e) {
  return {e, std::generic_category()};
}

const char* typeOf(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
      return "a regular file";
    case S_IFDIR:
      return "a directory";
    case S_IFIFO:
      return "a FIFO";
    case S_IFCHR:
      return "a character device";
    case S_IFBLK:
      return "a block device";
    case S_IFSOCK:
      return "a socket";
    case S_IFLNK:
      return "a symbolic link";
    default:
      return "a file of unknown type";
  }
}

// path opened O_PATH (no open() of a device or FIFO runs; symbolic links are followed) and its stat.
struct Located {
  UniqueFd fd;
  struct stat st {};
};

tl::expected<Located, SpecFileError> locate(const std::string& path) {
  Located out;
  out.fd.reset(::open(path.c_str(), O_PATH | O_CLOEXEC));
  if (out.fd.get() < 0 || ::fstat(out.fd.get(), &out.st) != 0) {
    const int e = errno;
    return tl::unexpected(SpecFileError{errnoCode(e), "cannot be opened: " + errnoCode(e).message()});
  }
  return out;
}

// The file behind an O_PATH descriptor, opened for reading without blocking: the same inode, even
// if the path was replaced since.
tl::expected<UniqueFd, SpecFileError> reopen(const Located& at) {
  UniqueFd fd(::open(fmt::format("/proc/self/fd/{}", at.fd.get()).c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  if (fd.get() < 0) {
    const int e = errno;
    return tl::unexpected(SpecFileError{errnoCode(e), "cannot be opened: " + errnoCode(e).message()});
  }
  return fd;
}

}  // namespace

tl::expected<UniqueFd, SpecFileError> openNetnsFile(const std::string& path) {
  constexpr std::string_view accepted =
      "accepted: a network namespace file such as /run/netns/NAME or /proc/PID/ns/net";
  auto at = locate(path);
  if (!at) {
    return tl::unexpected(at.error());
  }
  struct statfs fs {};
  if (!S_ISREG(at->st.st_mode) || ::fstatfs(at->fd.get(), &fs) != 0 ||
      static_cast<unsigned long>(fs.f_type) != NSFS_MAGIC) {
    return tl::unexpected(
        SpecFileError{std::make_error_code(std::errc::invalid_argument),
                      fmt::format("is {}, not a namespace; {}",
                                  S_ISREG(at->st.st_mode) ? "a regular file" : typeOf(at->st.st_mode), accepted)});
  }
  auto fd = reopen(*at);
  if (!fd) {
    return tl::unexpected(fd.error());
  }
  const int type = ::ioctl(fd->get(), NS_GET_NSTYPE);
  if (type != CLONE_NEWNET) {
    return tl::unexpected(
        SpecFileError{std::make_error_code(std::errc::invalid_argument),
                      fmt::format("is a namespace of another kind, not a network namespace; {}", accepted)});
  }
  return fd;
}

tl::expected<std::string, SpecFileError> readSmallRegularFile(const std::string& path, size_t maxBytes) {
  auto at = locate(path);
  if (!at) {
    return tl::unexpected(at.error());
  }
  if (!S_ISREG(at->st.st_mode)) {
    return tl::unexpected(SpecFileError{
        std::make_error_code(std::errc::invalid_argument),
        fmt::format("is {}; accepted: a regular file of at most {} bytes", typeOf(at->st.st_mode), maxBytes)});
  }
  const auto tooLarge = [&](const std::string& size) {
    return SpecFileError{std::make_error_code(std::errc::file_too_large),
                         fmt::format("is {} bytes long; accepted: a regular file of at most {} bytes", size, maxBytes)};
  };
  if (static_cast<size_t>(at->st.st_size) > maxBytes) {
    return tl::unexpected(tooLarge(std::to_string(at->st.st_size)));
  }
  auto fd = reopen(*at);
  if (!fd) {
    return tl::unexpected(fd.error());
  }
  // One byte more than accepted tells a file that grew since fstat.
  std::string text(maxBytes + 1, '\0');
  size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd->get(), text.data() + got, text.size() - got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      const int e = errno;
      return tl::unexpected(SpecFileError{errnoCode(e), "cannot be read: " + errnoCode(e).message()});
    }
    if (n == 0) {
      break;
    }
    got += static_cast<size_t>(n);
  }
  if (got > maxBytes) {
    return tl::unexpected(tooLarge(fmt::format("more than {}", maxBytes)));
  }
  text.resize(got);
  return text;
}

}  // namespace faultline::kernel
