#include "agent/kernel/whole_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace faultline::kernel {

tl::expected<std::string, std::error_code> readWholeFile(const std::string& path, size_t maxBytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return tl::unexpected(std::error_code(errno, std::generic_category()));
  }
  std::string text;
  char buf[4096];
  while (text.size() < maxBytes) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      const std::error_code error(errno, std::generic_category());
      ::close(fd);
      return tl::unexpected(error);
    }
    if (n == 0) {
      break;
    }
    text.append(buf, std::min(static_cast<size_t>(n), maxBytes - text.size()));
  }
  ::close(fd);
  return text;
}

}  // namespace faultline::kernel
