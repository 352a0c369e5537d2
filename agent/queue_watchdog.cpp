#include "agent/queue_watchdog.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <sstream>
#include <tuple>
#include <vector>

#include <fmt/format.h>
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

// The watchdog process: reads heartbeats and slots from kPipeFd until it ends.
int watch(pid_t agent, std::chrono::milliseconds grace) {
  using Clock = std::chrono::steady_clock;
  std::set<std::tuple<char, int, std::string>> tracked;  // backend letter, slot, netns
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
          in >> op >> backend >> slot;
          std::string netns;
          std::getline(in >> std::ws, netns);
          if ((op == '+' || op == '-') && (backend == 'n' || backend == 'x') && slot >= 0) {
            if (op == '+') {
              tracked.emplace(backend, slot, netns);
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
    for (const auto& [backend, slot, netns] : tracked) {
      const auto b = backend == 'n' ? kernel::SteeringBackend::kNftables : kernel::SteeringBackend::kXtables;
      const std::string where = netns.empty() ? "the agent's network namespace" : netns;
      auto steering = kernel::openPacketSteering(b, netns);
      std::string outcome;
      if (!steering) {
        outcome = fmt::format("cannot open {}: {}", where, steering.error().message());
      } else if (auto removed = (*steering)->remove(static_cast<uint16_t>(slot)); !removed) {
        outcome = fmt::format("cannot remove them: {}", removed.error().second);
      } else {
        outcome = "removed, traffic flows";
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

}  // namespace

tl::expected<std::unique_ptr<QueueWatchdog>, std::pair<std::error_code, std::string>> QueueWatchdog::start(
    std::chrono::milliseconds grace) {
  const auto failed = [](int e, const std::string& what) {
    return tl::unexpected(
        std::pair{std::error_code(e, std::generic_category()),
                  fmt::format("cannot start the packet queue's watchdog: {}: {}", what, std::strerror(e))});
  };
  if (!dispatchReady.load()) {
    return failed(ENOEXEC, "this executable's main() does not call runQueueWatchdogIfAsked()");
  }
  int fds[2] = {-1, -1};
  if (::pipe2(fds, O_CLOEXEC) != 0) {
    return failed(errno, "pipe");
  }
  // dup2 onto kPipeFd clears close-on-exec there, unless the read end is kPipeFd already.
  if (fds[0] == kPipeFd) {
    const int moved = ::fcntl(fds[0], F_DUPFD_CLOEXEC, 10);
    ::close(fds[0]);
    fds[0] = moved;
  }
  ::fcntl(fds[1], F_SETFL, ::fcntl(fds[1], F_GETFL) | O_NONBLOCK);
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
  return std::unique_ptr<QueueWatchdog>(new QueueWatchdog(fds[1], pid));
}

QueueWatchdog::QueueWatchdog(int pipe, pid_t pid) : pipe_(pipe), pid_(pid) {
  heartbeat_ = std::thread([this] {
    std::unique_lock lock(wakeMutex_);
    while (!stopping_.load()) {
      send(".\n");
      wake_.wait_for(lock, kHeartbeat, [this] { return stopping_.load(); });
    }
  });
}

QueueWatchdog::~QueueWatchdog() {
  {
    std::lock_guard lock(wakeMutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  heartbeat_.join();
  ::close(pipe_);  // the watchdog reads the end and exits
  int status = 0;
  ::waitpid(pid_, &status, 0);
}

void QueueWatchdog::track(const std::string& netns, kernel::SteeringBackend backend, uint16_t slot) {
  send(fmt::format("+ {} {} {}\n", backendLetter(backend), slot, netns));
}

void QueueWatchdog::untrack(const std::string& netns, kernel::SteeringBackend backend, uint16_t slot) {
  send(fmt::format("- {} {} {}\n", backendLetter(backend), slot, netns));
}

void QueueWatchdog::send(const std::string& line) {
  std::lock_guard lock(mutex_);
  const ssize_t n = ::write(pipe_, line.data(), line.size());
  if (n != static_cast<ssize_t>(line.size()) && line != ".\n") {
    spdlog::warn("packet queue watchdog: cannot tell it '{}': {}", line.substr(0, line.size() - 1),
                 n < 0 ? std::strerror(errno) : "written in part");
  }
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

}  // namespace faultline::agent
