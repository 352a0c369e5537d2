// The userspace network driver's watchdog: a process of its own that removes faultline's packet
// steering when the agent serving the queues stops running while it holds faults.
//
// The queue fails open when the agent exits or dies (the kernel unbinds it; the rules bypass), but
// not when the agent is alive and does not run: stopped (SIGSTOP, Ctrl-Z of `faultline run
// --local`), under a debugger, or starved. Then every matched packet waits in the kernel's queue
// (up to its length, limit + 4096 packets) and matched traffic stops, whatever the fault was.
// netem, in the kernel, goes on without the agent; the queue cannot.
//
// So the agent spawns a watchdog (this same executable, /proc/self/exe, with kWatchdogArgument, in
// a session of its own so a terminal's Ctrl-Z does not stop it too) when its first queued fault is
// applied. Over a pipe the agent sends a heartbeat every kHeartbeat from a thread of its own, and
// the slots it steers (tracked when the rules are installed, untracked when removed). When no
// heartbeat arrived for grace (default kWatchdogGrace) while slots are tracked, the watchdog
// removes their rules (PacketSteering::remove(), as revert-all does), so no new packet is
// steered, and releases the packets already waiting in each queue: it takes the agent's queue
// socket (pidfd_getfd(2), Linux >= 5.6) and sends one batch verdict NF_ACCEPT up to the queue's
// last packet id (/proc/net/netfilter/nfnetlink_queue in the namespace). Left in the kernel,
// those packets stay charged to their senders' sockets and stall every flow that had one there
// (TCP does not retransmit a segment still in a host queue) for as long as the agent is stopped.
// It says what it did on stderr. When the agent runs again its watch (AppliedFault::lost()) finds
// the rules gone and the run ends (exit 3); its own verdicts for released packets are refused by
// the kernel (ENOENT), harmlessly. The agent restarts a watchdog that exited (killed) and tells
// the new one every tracked slot. At the pipe's end (the agent exited or died) the
// watchdog exits: the kernel passes the queue's packets and the next start's recovery removes the
// rules. Not covered: a watchdog frozen with the agent (a frozen cgroup holds both), and a queue
// thread stuck while the rest of the agent runs.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>

#include <tl/expected.hpp>

#include "agent/faults/network/nfqueue_driver.h"
#include "agent/kernel/packet_steering.h"

namespace faultline::agent {

// argv[1] of the watchdog process; argv[2] the agent's pid, argv[3] grace in milliseconds.
inline constexpr std::string_view kWatchdogArgument = "--faultline-queue-watchdog";
inline constexpr std::chrono::milliseconds kWatchdogGrace{2000};
inline constexpr std::chrono::milliseconds kHeartbeat{200};

class QueueWatchdog final : public SteeringWatchdog {
 public:
  // Spawns the watchdog (posix_spawn of /proc/self/exe) and starts the heartbeat thread.
  // errors: ENOEXEC when this executable's main() has not called runQueueWatchdogIfAsked() (it
  // would not run the watchdog); the pipe's or posix_spawn's errno; with words.
  [[nodiscard]] static tl::expected<std::unique_ptr<QueueWatchdog>, std::pair<std::error_code, std::string>> start(
      std::chrono::milliseconds grace = kWatchdogGrace);
  // Stops the heartbeat and closes the pipe: the watchdog exits without touching anything.
  ~QueueWatchdog() override;
  QueueWatchdog(const QueueWatchdog&) = delete;
  QueueWatchdog& operator=(const QueueWatchdog&) = delete;

  // slot's rules of backend in netns ("" = the agent's own namespace, else a namespace file that
  // stays valid while tracked, e.g. a pin) are installed / removed. Thread-safe; a write the pipe
  // refuses is logged (the watchdog then does not know the slot).
  // queueFd: the agent's netlink socket bound to the slot's queue (kQueueBase + slot), -1 none.
  void track(const std::string& netns, kernel::SteeringBackend backend, uint16_t slot, int queueFd) override;
  void untrack(const std::string& netns, kernel::SteeringBackend backend, uint16_t slot) override;

  [[nodiscard]] pid_t pid() const { return pid_; }

 private:
  QueueWatchdog(int pipe, pid_t pid, std::chrono::milliseconds grace);
  bool send(const std::string& line);
  void restartIfGone();

  int pipe_;
  pid_t pid_;
  std::chrono::milliseconds grace_;
  std::map<std::string, std::string> tracked_;  // key: backend slot netns; value: the "+" line
  std::mutex mutex_;
  std::atomic<bool> stopping_{false};
  std::mutex wakeMutex_;
  std::condition_variable wake_;
  std::thread heartbeat_;
};

// First thing in main() of every executable that may run the userspace driver: when argv[1] is
// kWatchdogArgument, runs the watchdog on file descriptor 3 (the pipe's read end) and returns
// its exit code; nullopt otherwise. Until it is called, QueueWatchdog::start() refuses.
[[nodiscard]] std::optional<int> runQueueWatchdogIfAsked(int argc, char** argv);

// The starter NfqueueFaultDriver::enableWatchdog() takes: QueueWatchdog::start(grace).
[[nodiscard]] WatchdogStarter queueWatchdogStarter(std::chrono::milliseconds grace = kWatchdogGrace);

}  // namespace faultline::agent
