// The process's side of a systemd Type=notify service (sd_notify(3), libsystemd): READY=1 once it
// serves, STATUS= lines, STOPPING=1 when a stop begins, and WATCHDOG=1 pings from a thread that
// pings only while the loops it watches go round. Without NOTIFY_SOCKET in the environment (not
// started by a service manager that listens) every call does nothing and no thread is started.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace faultline::service {

// Each sends one datagram to $NOTIFY_SOCKET ("READY=1\nSTATUS=status", "STATUS=status",
// "STOPPING=1\nSTATUS=status"); a status with a newline is cut at it. True when it was sent;
// false when there is no NOTIFY_SOCKET or sending failed (logged at debug level: the service
// manager's problem, never the process's; a full queue drops it). Thread-safe; never blocks (MSG_DONTWAIT).
// Whether NOTIFY_SOCKET is set: a service manager listens. Thread-safe (reads the environment).
[[nodiscard]] bool notifying();
bool notifyReady(std::string_view status);
bool notifyStatus(std::string_view status);
bool notifyStopping(std::string_view status);

// A loop's proof of life: the loop calls beat() each time round. Thread-safe (one atomic).
class Heartbeat {
 public:
  // name: the loop's name in the watchdog's log line, e.g. "controller main loop".
  explicit Heartbeat(std::string name);
  void beat() noexcept;
  // Time since the last beat(), or since construction when there was none.
  [[nodiscard]] std::chrono::steady_clock::duration age() const noexcept;
  [[nodiscard]] const std::string& name() const { return name_; }

 private:
  std::string name_;
  std::atomic<std::chrono::steady_clock::rep> last_;
};

// The watchdog timeout the service manager set for this process (WatchdogSec=, passed as
// $WATCHDOG_USEC and, when set, $WATCHDOG_PID naming this pid; sd_watchdog_enabled(3)); nullopt
// when there is none.
[[nodiscard]] std::optional<std::chrono::microseconds> watchdogTimeout();

// Sends WATCHDOG=1 every timeout/2, but only while every heartbeat is younger than timeout/2: a
// loop that hangs (a deadlock, a blocked call) stops the pings, and the service manager kills and
// restarts the process when the timeout passes. A skipped ping is logged (warn) once per hang,
// naming the loop. No thread when watchdogTimeout() is nullopt.
class Watchdog {
 public:
  // heartbeats must outlive this object.
  explicit Watchdog(std::vector<const Heartbeat*> heartbeats);
  ~Watchdog();  // stop()
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // How often a watched loop should beat: fallback, or a quarter of the timeout when that is
  // shorter (at least 10 ms).
  [[nodiscard]] std::chrono::milliseconds beatEvery(std::chrono::milliseconds fallback) const;
  // Stops pinging and joins the thread (when the stop has begun: STOPPING=1 ends systemd's
  // watchdog). Idempotent; thread-safe.
  void stop();

 private:
  void loop();

  std::vector<const Heartbeat*> heartbeats_;
  std::optional<std::chrono::microseconds> timeout_;
  std::mutex mutex_;  // guards stopping_
  std::mutex joinMutex_;
  std::condition_variable stopped_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace faultline::service
