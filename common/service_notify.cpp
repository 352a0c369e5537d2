#include "common/service_notify.h"

#include <systemd/sd-daemon.h>

#include <cstdlib>
#include <cstring>

#include <spdlog/spdlog.h>

namespace faultline::service {
namespace {

bool send(std::string_view head, std::string_view status) {
  std::string state(head);
  status = status.substr(0, status.find('\n'));
  if (!status.empty()) {
    state += state.empty() ? "" : "\n";
    state += "STATUS=";
    state += status;
  }
  const int rc = ::sd_notify(0, state.c_str());
  if (rc < 0) {
    spdlog::debug("sd_notify({}): {}", head, std::strerror(-rc));
  }
  return rc > 0;
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
      ::sd_notify(0, "WATCHDOG=1");
    } else if (stale != hung) {
      hung = stale;
      spdlog::warn("watchdog: the {} has not gone round for {} ms; no WATCHDOG=1 until it does", stale->name(),
                   std::chrono::duration_cast<std::chrono::milliseconds>(stale->age()).count());
    }
  }
}

}  // namespace faultline::service
