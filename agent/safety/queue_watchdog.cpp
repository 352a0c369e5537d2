#include "agent/safety/queue_watchdog.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

extern char** environ;  // NOLINT: posix_spawn's environment

namespace faultline::agent {
namespace {

// The watchdog's end of the pipe in its process.
constexpr int kPipeFd = 3;

// Set by runQueueWatchdogIfAsked(): this executable's main() runs the watchdog when asked, so
// /proc/self/exe may be spawned as one (an executable that does not would run its own main).
std::atomic<bool> dispatchReady{false};

char backendLetter(kernel::SteeringBackend backend) {
  return backend == kernel::SteeringBackend::kNftables ? 'n' : 'x';
}

// Runs fn in network namespace netns ("" = the current one) on this (single-threaded) process.
template <typename Fn>
void inNetns(const std::string& netns, Fn fn) {
  if (netns.empty()) {
    fn();
    return;
  }
  const int own = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  const int target = ::open(netns.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (own >= 0 && target >= 0 && ::setns(target, CLONE_NEWNET) == 0) {
    fn();
    ::setns(own, CLONE_NEWNET);
  }
  for (const int fd : {own, target}) {
    if (fd >= 0) {
      ::close(fd);
    }
  }
}

// The queue's packets waiting for a verdict and the last packet id it gave out, from
// /proc/net/netfilter/nfnetlink_queue (queue_number peer_portid queue_total copy_mode copy_range
// queue_dropped user_dropped id_sequence 1) of the namespace.
std::optional<std::pair<uint32_t, uint32_t>> queueState(const std::string& netns, uint16_t queue) {
  std::optional<std::pair<uint32_t, uint32_t>> state;
  inNetns(netns, [&] {
    std::ifstream file("/proc/thread-self/net/netfilter/nfnetlink_queue");
    std::string line;
    while (std::getline(file, line)) {
      std::istringstream in(line);
      uint32_t number = 0, portid = 0, total = 0, mode = 0, range = 0, dropped = 0, userDropped = 0, sequence = 0;
      if (in >> number >> portid >> total >> mode >> range >> dropped >> userDropped >> sequence && number == queue) {
        state = std::pair{total, sequence};
      }
    }
  });
  return state;
}

// Accepts every packet waiting in queue (bound by the agent's socket agentFd): a batch verdict
// NF_ACCEPT up to the queue's last id, sent on the agent's own socket (the kernel takes verdicts
// only from the socket bound to the queue). Words for what it did.
std::string releaseQueue(pid_t agent, int agentFd, const std::string& netns, uint16_t queue) {
  const auto state = queueState(netns, queue);
  if (!state) {
    return fmt::format("queue {} is not bound", queue);
  }
  if (state->first == 0) {
    return fmt::format("queue {} had no packet waiting", queue);
  }
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, agent, 0));
  if (pidfd < 0) {
    return fmt::format("cannot release queue {}: pidfd_open: {}", queue, std::strerror(errno));
  }
  const int fd = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, agentFd, 0));
  const int e = errno;
  ::close(pidfd);
  if (fd < 0) {
    return fmt::format("cannot release queue {}: pidfd_getfd: {}", queue, std::strerror(e));
  }
  std::array<char, 256> buffer{};
  nlmsghdr* message = nfq_nlmsg_put(buffer.data(), NFQNL_MSG_VERDICT_BATCH, queue);
  nfq_nlmsg_verdict_put(message, static_cast<int>(state->second), NF_ACCEPT);
  sockaddr_nl kernel{};
  kernel.nl_family = AF_NETLINK;
  const ssize_t sent =
      ::sendto(fd, message, message->nlmsg_len, 0, reinterpret_cast<const sockaddr*>(&kernel), sizeof(kernel));
  const int sendError = errno;
  ::close(fd);
  if (sent < 0) {
    return fmt::format("cannot release queue {}: {}", queue, std::strerror(sendError));
  }
  return fmt::format("{} packet(s) waiting in queue {} accepted", state->first, queue);
}

// The watchdog process: reads heartbeats and slots from kPipeFd until it ends.
int watch(pid_t agent, std::chrono::milliseconds grace) {
  using Clock = std::chrono::steady_clock;
  std::map<std::tuple<char, int, std::string>, int> tracked;  // backend letter, slot, netns: queue fd
  auto lastBeat = Clock::now();
  std::string pending;
  std::array<char, 4096> buffer{};
  for (;;) {
    pollfd p{.fd = kPipeFd, .events = POLLIN, .revents = 0};
    const int ready = ::poll(&p, 1, 100);
    if (ready < 0 && errno != EINTR) {
      return 1;
    }
    if (ready > 0) {
      const ssize_t n = ::read(kPipeFd, buffer.data(), buffer.size());
      if (n == 0) {
        return 0;  // the agent exited or died: the kernel passes the queues' packets
      }
      if (n > 0) {
        lastBeat = Clock::now();  // any line proves the agent ran
        pending.append(buffer.data(), static_cast<size_t>(n));
        size_t end = 0;
        while ((end = pending.find('\n')) != std::string::npos) {
          const std::string line = pending.substr(0, end);
          pending.erase(0, end + 1);
          std::istringstream in(line);
          char op = 0;
          char backend = 0;
          int slot = -1;
          int queueFd = -1;
          in >> op >> backend >> slot >> queueFd;
          std::string netns;
          std::getline(in >> std::ws, netns);
          if ((op == '+' || op == '-') && (backend == 'n' || backend == 'x') && slot >= 0) {
            if (op == '+') {
              tracked[{backend, slot, netns}] = queueFd;
            } else {
              tracked.erase({backend, slot, netns});
            }
          }
        }
      }
    }
    if (::kill(agent, 0) != 0 && errno == ESRCH) {
      return 0;
    }
    const auto silent = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - lastBeat);
    if (tracked.empty() || silent < grace) {
      continue;
    }
    for (const auto& [key, queueFd] : tracked) {
      const auto& [backend, slot, netns] = key;
      const auto b = backend == 'n' ? kernel::SteeringBackend::kNftables : kernel::SteeringBackend::kXtables;
      const std::string where = netns.empty() ? "the agent's network namespace" : netns;
      auto steering = kernel::openPacketSteering(b, netns);
      std::string outcome;
      if (!steering) {
        outcome = fmt::format("cannot open {}: {}", where, steering.error().message());
      } else if (auto removed = (*steering)->remove(static_cast<uint16_t>(slot)); !removed) {
        outcome = fmt::format("cannot remove them: {}", removed.error().second);
      } else {
        outcome =
            removed->left.empty() ? "removed" : fmt::format("removed but for: {}", fmt::join(removed->left, "; "));
        if (queueFd >= 0) {
          outcome += "; " + releaseQueue(agent, queueFd, netns, static_cast<uint16_t>(kernel::kQueueBase + slot));
        }
        outcome += "; traffic flows";
      }
      std::fprintf(stderr,
                   "faultline watchdog: agent %d has not run for %lld ms (stopped, or under a debugger) while its "
                   "packet queue held faults: faultline's %s rules of slot %d in %s: %s\n",
                   static_cast<int>(agent), static_cast<long long>(silent.count()),
                   std::string(kernel::steeringBackendName(b)).c_str(), slot, where.c_str(), outcome.c_str());
    }
    tracked.clear();
  }
}

// Spawns the watchdog process; its pipe's write end and pid.
tl::expected<std::pair<int, pid_t>, std::pair<std::error_code, std::string>> spawnWatchdog(
    std::chrono::milliseconds grace) {
  const auto failed = [](int e, const std::string& what) {
    return tl::unexpected(
        std::pair{std::error_code(e, std::generic_category()),
                  fmt::format("cannot start the packet queue's watchdog: {}: {}", what, std::strerror(e))});
  };
  if (!dispatchReady.load()) {
    return failed(ENOEXEC, "this executable's main() does not call runQueueWatchdogIfAsked()");
  }
  // A socket pair, not a pipe: the agent's sends use MSG_NOSIGNAL, so a watchdog that died costs
  // the agent no SIGPIPE.
  int fds[2] = {-1, -1};
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return failed(errno, "socketpair");
  }
  // dup2 onto kPipeFd clears close-on-exec there, unless the read end is kPipeFd already.
  if (fds[0] == kPipeFd) {
    const int moved = ::fcntl(fds[0], F_DUPFD_CLOEXEC, 10);
    ::close(fds[0]);
    fds[0] = moved;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[0], kPipeFd);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  sigset_t defaults;
  sigemptyset(&defaults);
  for (const int s : {SIGTERM, SIGINT, SIGHUP, SIGPIPE}) {
    sigaddset(&defaults, s);
  }
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  // A session of its own: a terminal's Ctrl-Z (SIGTSTP to the foreground group) stops the agent only.
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  const std::string self = fmt::format("{}", ::getpid());
  const std::string graceMs = fmt::format("{}", grace.count());
  std::string arg(kWatchdogArgument);
  std::string exe = "/proc/self/exe";
  std::vector<char*> argv{exe.data(), arg.data(), const_cast<char*>(self.c_str()), const_cast<char*>(graceMs.c_str()),
                          nullptr};
  pid_t pid = -1;
  const int e = ::posix_spawn(&pid, "/proc/self/exe", &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(fds[0]);
  if (e != 0) {
    ::close(fds[1]);
    return failed(e, "posix_spawn /proc/self/exe");
  }
  return std::pair{fds[1], pid};
}

}  // namespace

tl::expected<std::unique_ptr<QueueWatchdog>, std::pair<std::error_code, std::string>> QueueWatchdog::start(
    std::chrono::milliseconds grace) {
  auto spawned = spawnWatchdog(grace);
  if (!spawned) {
    return tl::unexpected(spawned.error());
  }
  return std::unique_ptr<QueueWatchdog>(new QueueWatchdog(spawned->first, spawned->second, grace));
}

QueueWatchdog::QueueWatchdog(int pipe, pid_t pid, std::chrono::milliseconds grace)
    : pipe_(pipe), pid_(pid), grace_(grace) {
  heartbeat_ = std::thread([this] {
    std::unique_lock lock(wakeMutex_);
    while (!stopping_.load()) {
      restartIfGone();
      send(".\n");
      wake_.wait_for(lock, kHeartbeat, [this] { return stopping_.load(); });
    }
  });
}

// A watchdog that exited (killed: it never exits while the pipe is open) is reaped and replaced,
// and the new one is told every tracked slot.
void QueueWatchdog::restartIfGone() {
  std::lock_guard lock(mutex_);
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) != pid_) {
    return;
  }
  spdlog::warn(
      "packet queue watchdog {} exited ({}); starting another", pid_,
      WIFSIGNALED(status) ? fmt::format("signal {}", WTERMSIG(status)) : fmt::format("status {}", WEXITSTATUS(status)));
  ::close(pipe_);
  auto spawned = spawnWatchdog(grace_);
  if (!spawned) {
    spdlog::error("{}; a stopped agent's faults stay until it runs again", spawned.error().second);
    pipe_ = -1;
    pid_ = -1;
    return;
  }
  pipe_ = spawned->first;
  pid_ = spawned->second;
  for (const auto& [key, line] : tracked_) {
    (void)::send(pipe_, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  }
}

QueueWatchdog::~QueueWatchdog() {
  {
    std::lock_guard lock(wakeMutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  heartbeat_.join();
  if (pipe_ >= 0) {
    ::close(pipe_);  // the watchdog reads the end and exits
  }
  if (pid_ > 0) {
    int status = 0;
    ::waitpid(pid_, &status, 0);
  }
}

void QueueWatchdog::track(const std::string& netns, kernel::SteeringBackend backend, uint16_t slot, int queueFd) {
  const std::string line = fmt::format("+ {} {} {} {}\n", backendLetter(backend), slot, queueFd, netns);
  {
    std::lock_guard lock(mutex_);
    tracked_[fmt::format("{} {} {}", backendLetter(backend), slot, netns)] = line;
  }
  send(line);
}

void QueueWatchdog::untrack(const std::string& netns, kernel::SteeringBackend backend, uint16_t slot) {
  {
    std::lock_guard lock(mutex_);
    tracked_.erase(fmt::format("{} {} {}", backendLetter(backend), slot, netns));
  }
  send(fmt::format("- {} {} -1 {}\n", backendLetter(backend), slot, netns));
}

bool QueueWatchdog::send(const std::string& line) {
  std::lock_guard lock(mutex_);
  if (pipe_ < 0) {
    return false;
  }
  const ssize_t n = ::send(pipe_, line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n != static_cast<ssize_t>(line.size()) && line != ".\n") {
    spdlog::warn("packet queue watchdog: cannot tell it '{}': {}", line.substr(0, line.size() - 1),
                 n < 0 ? std::strerror(errno) : "written in part");
  }
  return n == static_cast<ssize_t>(line.size());
}

std::optional<int> runQueueWatchdogIfAsked(int argc, char** argv) {
  dispatchReady = true;
  if (argc < 4 || argv[1] != kWatchdogArgument) {
    return std::nullopt;
  }
  const long agent = std::strtol(argv[2], nullptr, 10);
  const long grace = std::strtol(argv[3], nullptr, 10);
  if (agent <= 0 || grace <= 0) {
    std::fprintf(stderr, "faultline watchdog: bad arguments\n");
    return 2;
  }
  ::signal(SIGINT, SIG_IGN);  // its own session has no terminal; the agent's end of the pipe rules
  return watch(static_cast<pid_t>(agent), std::chrono::milliseconds(grace));
}

WatchdogStarter queueWatchdogStarter(std::chrono::milliseconds grace) {
  return [grace]() -> tl::expected<std::shared_ptr<SteeringWatchdog>, std::pair<std::error_code, std::string>> {
    auto started = QueueWatchdog::start(grace);
    if (!started) {
      return tl::unexpected(std::move(started.error()));
    }
    return std::shared_ptr<SteeringWatchdog>(std::move(*started));
  };
}

}  // namespace faultline::agent
