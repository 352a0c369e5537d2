#include "common/service_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include <spdlog/spdlog.h>

namespace faultline::service {
namespace {

// One datagram to $NOTIFY_SOCKET (a path, or '@' for an abstract socket), sent with MSG_DONTWAIT:
// written by hand because libsystemd's sd_notify() sends with a blocking sendmsg(), and a service
// manager (or anyone who set NOTIFY_SOCKET) that does not read its socket then held SIGTERM's
// shutdown for good (attacker trial, issue 16). The protocol is one datagram of NAME=VALUE lines.
// 0 when sent; else -errno (-ENOENT: no NOTIFY_SOCKET; -EAGAIN: its queue is full, dropped).
int sendDatagram(std::string_view state) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') {
    return -ENOENT;
  }
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  const size_t length = std::strlen(path);
  if ((path[0] != '/' && path[0] != '@') || length >= sizeof(address.sun_path)) {
    return -EINVAL;
  }
  std::memcpy(address.sun_path, path, length);
  if (path[0] == '@') {
    address.sun_path[0] = '\0';
  }
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    return -errno;
  }
  const auto addressLength = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + length);
  const ssize_t sent = ::sendto(fd, state.data(), state.size(), MSG_DONTWAIT | MSG_NOSIGNAL,
                                reinterpret_cast<const sockaddr*>(&address), addressLength);
  const int error = sent < 0 ? errno : 0;
  ::close(fd);
  return -error;
}

bool send(std::string_view head, std::string_view status) {
  std::string state(head);
  status = status.substr(0, status.find('\n'));
  if (!status.empty()) {
    state += state.empty() ? "" : "\n";
    state += "STATUS=";
    state += status;
  }
  const int rc = sendDatagram(state);
  if (rc < 0 && rc != -ENOENT) {
    spdlog::debug("notify ({}): {}", head, std::strerror(-rc));
  }
  return rc == 0;
}

}  // namespace

bool notifying() {
  return std::getenv("NOTIFY_SOCKET") != nullptr;
}

bool notifyReady(std::string_view status) {
  return send("READY=1", status);
}

bool notifyStatus(std::string_view status) {
  return send("", status);
}

bool notifyStopping(std::string_view status) {
  return send("STOPPING=1", status);
}

Heartbeat::Heartbeat(std::string name)
    : name_(std::move(name)), last_(std::chrono::steady_clock::now().time_since_epoch().count()) {}

void Heartbeat::beat() noexcept {
  last_.store(std::chrono::steady_clock::now().time_since_epoch().count(), std::memory_order_relaxed);
}

std::chrono::steady_clock::duration Heartbeat::age() const noexcept {
  const std::chrono::steady_clock::time_point last{
      std::chrono::steady_clock::duration{last_.load(std::memory_order_relaxed)}};
  return std::chrono::steady_clock::now() - last;
}

std::optional<std::chrono::microseconds> watchdogTimeout() {
  uint64_t usec = 0;
  if (::sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
    return std::nullopt;
  }
  return std::chrono::microseconds{usec};
}

Watchdog::Watchdog(std::vector<const Heartbeat*> heartbeats)
    : heartbeats_(std::move(heartbeats)), timeout_(watchdogTimeout()) {
  if (timeout_ && notifying()) {
    spdlog::info("watchdog: WATCHDOG=1 every {} ms while the loops go round", (*timeout_ / 2).count() / 1000);
    thread_ = std::thread([this] { loop(); });
  }
}

Watchdog::~Watchdog() {
  stop();
}

std::chrono::milliseconds Watchdog::beatEvery(std::chrono::milliseconds fallback) const {
  if (!timeout_) {
    return fallback;
  }
  const auto quarter = std::chrono::duration_cast<std::chrono::milliseconds>(*timeout_ / 4);
  return std::max(std::chrono::milliseconds{10}, std::min(fallback, quarter));
}

void Watchdog::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  stopped_.notify_all();
  std::lock_guard join(joinMutex_);  // a second caller waits for the first's join to be done
  if (thread_.joinable()) {
    thread_.join();
  }
}

void Watchdog::loop() {
  const auto period = *timeout_ / 2;
  const Heartbeat* hung = nullptr;
  std::unique_lock lock(mutex_);
  while (!stopped_.wait_for(lock, period, [this] { return stopping_; })) {
    const Heartbeat* stale = nullptr;
    for (const auto* h : heartbeats_) {
      if (h->age() >= period) {
        stale = h;
        break;
      }
    }
    if (stale == nullptr) {
      hung = nullptr;
      sendDatagram("WATCHDOG=1");
    } else if (stale != hung) {
      hung = stale;
      spdlog::warn("watchdog: the {} has not gone round for {} ms; no WATCHDOG=1 until it does", stale->name(),
                   std::chrono::duration_cast<std::chrono::milliseconds>(stale->age()).count());
    }
  }
}

}  // namespace faultline::service
