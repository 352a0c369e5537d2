#include "controller/server/local_socket.h"

#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/server.h>
#include <grpcpp/server_posix.h>
#include <spdlog/spdlog.h>

namespace faultline::controller {
namespace {

std::runtime_error failure(const std::string& what, const std::string& path, int err) {
  return std::runtime_error(fmt::format("--socket {}: {}: {}", path, what, std::strerror(err)));
}

sockaddr_un address(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path) {
    throw std::runtime_error(fmt::format("--socket {}: {} bytes, more than the {} a Unix socket path may have", path,
                                         path.size(), sizeof a.sun_path - 1));
  }
  std::memcpy(a.sun_path, path.data(), path.size());
  return a;
}

// True when something accepts connections on the socket at path (a live controller).
bool someoneListens(const std::string& path) {
  const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    return false;
  }
  const auto a = address(path);
  // Non-blocking: a full backlog gives EAGAIN, which still means a listener.
  const int rc = ::connect(fd, reinterpret_cast<const sockaddr*>(&a), sizeof a);
  const int err = errno;
  ::close(fd);
  return rc == 0 || err == EAGAIN || err == EINPROGRESS;
}

// Whether this process may chown a file it owns to gid: root, or a member of the group.
bool mayGiveToGroup(gid_t gid) {
  if (::geteuid() == 0 || ::getegid() == gid) {
    return true;
  }
  const int n = ::getgroups(0, nullptr);
  std::vector<gid_t> groups(static_cast<size_t>(std::max(n, 0)));
  const int got = n > 0 ? ::getgroups(n, groups.data()) : 0;
  return std::find(groups.begin(), groups.begin() + std::max(got, 0), gid) != groups.begin() + std::max(got, 0);
}

}  // namespace

LocalSocket::LocalSocket(std::string path, std::string group) : path_(std::move(path)), group_(std::move(group)) {}

LocalSocket::~LocalSocket() {
  stop();
}

void LocalSocket::bind() {
  const auto a = address(path_);
  const auto dir = std::filesystem::path(path_).parent_path();
  if (!dir.empty()) {
    std::error_code ec;
    if (std::filesystem::create_directories(dir, ec); ec) {
      throw std::runtime_error(fmt::format("--socket {}: cannot create {}: {}", path_, dir.string(), ec.message()));
    }
  }
  struct stat st {};
  if (::lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      throw std::runtime_error(
          fmt::format("--socket {}: something that is not a socket is there; remove it or name another path", path_));
    }
    if (someoneListens(path_)) {
      throw std::runtime_error(
          fmt::format("--socket {}: another process listens on it (a controller running?)", path_));
    }
    ::unlink(path_.c_str());  // left by a controller that did not stop cleanly
  }
  listenFd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (listenFd_ < 0) {
    throw failure("socket", path_, errno);
  }
  // Bound with no access for anyone but the owner, then opened to the group: no moment where
  // another user may connect with a wider mode.
  const mode_t old = ::umask(0177);
  const int rc = ::bind(listenFd_, reinterpret_cast<const sockaddr*>(&a), sizeof a);
  const int err = errno;
  ::umask(old);
  if (rc != 0) {
    throw failure("bind", path_, err);
  }
  bound_ = true;
  std::vector<char> buffer(16 * 1024);
  group grp{};
  group* found = nullptr;
  if (!group_.empty()) {
    ::getgrnam_r(group_.c_str(), &grp, buffer.data(), buffer.size(), &found);
  }
  if (found != nullptr && !mayGiveToGroup(found->gr_gid)) {
    // A controller running as its own user (the systemd unit's User=faultline) that is not in the
    // group cannot chown to it: it serves with mode 0600 instead of refusing to start.
    spdlog::warn(
        "Control API on {} with mode 0600: this process (uid {}) is not in group '{}' (--socket-group), so it cannot "
        "give it the socket; only this user and root may connect (add the user to the group, or name its own group)",
        path_, ::geteuid(), group_);
  } else if (found != nullptr) {
    if (::chown(path_.c_str(), static_cast<uid_t>(-1), found->gr_gid) != 0) {
      throw failure(fmt::format("cannot give it to group {}", group_), path_, errno);
    }
    if (::chmod(path_.c_str(), 0660) != 0) {
      throw failure("chmod 0660", path_, errno);
    }
    spdlog::info("Control API on {} (mode 0660, group {})", path_, group_);
  } else if (group_.empty()) {
    spdlog::info("Control API on {} (mode 0600: this user and root only)", path_);
  } else {
    spdlog::warn(
        "Control API on {} with mode 0600: no group '{}' on this host (--socket-group), so only this user and root "
        "may connect",
        path_, group_);
  }
  if (::listen(listenFd_, 64) != 0) {
    throw failure("listen", path_, errno);
  }
  wakeFd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wakeFd_ < 0) {
    throw failure("eventfd", path_, errno);
  }
}

void LocalSocket::start(grpc::Server& server) {
  thread_ = std::thread([this, &server] { acceptLoop(server); });
}

void LocalSocket::acceptLoop(grpc::Server& server) {
  for (;;) {
    pollfd fds[2] = {{listenFd_, POLLIN, 0}, {wakeFd_, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) {
        continue;
      }
      spdlog::error("--socket {}: poll: {}; no more local connections", path_, std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) {
      return;
    }
    const int fd = ::accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno == EMFILE || errno == ENFILE) {
        spdlog::warn("--socket {}: accept: {}", path_, std::strerror(errno));
        ::usleep(100'000);
      }
      continue;
    }
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      ::close(fd);
      continue;
    }
    {
      std::lock_guard lock(mutex_);
      peers_[fd] = cred.uid;
    }
    grpc::AddInsecureChannelFromFd(&server, fd);  // gRPC owns and closes fd from here
  }
}

void LocalSocket::stop() {
  if (thread_.joinable()) {
    const uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(wakeFd_, &one, sizeof one);
    thread_.join();
  }
  if (listenFd_ >= 0) {
    ::close(listenFd_);
    listenFd_ = -1;
  }
  if (bound_) {
    ::unlink(path_.c_str());  // only the file this object made
    bound_ = false;
  }
  if (wakeFd_ >= 0) {
    ::close(wakeFd_);
    wakeFd_ = -1;
  }
}

std::optional<uid_t> LocalSocket::uidOf(const std::string& peer) const {
  if (peer.rfind("fd:", 0) != 0) {
    return std::nullopt;
  }
  int fd = 0;
  try {
    size_t used = 0;
    fd = std::stoi(peer.substr(3), &used);
    if (used != peer.size() - 3) {
      return std::nullopt;
    }
  } catch (const std::exception&) {
    return std::nullopt;
  }
  std::lock_guard lock(mutex_);
  auto it = peers_.find(fd);
  if (it == peers_.end()) {
    return std::nullopt;
  }
  return it->second;
}

}  // namespace faultline::controller
