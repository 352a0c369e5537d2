// Command probe: runs a program per sample with posix_spawn (safe in a threaded process), in its
// own process group, and kills the whole group when the timeout passes.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/regex.h"
#include "controller/probes/http.h"
#include "controller/probes/probe.h"

extern char** environ;

namespace faultline::controller {
namespace {

using Clock = std::chrono::steady_clock;

// Keeps the first kMaxMatchedBytes of what a pipe gives; reads (and drops) the rest.
struct Pipe {
  int fd = -1;
  std::string text;
  bool open() const { return fd >= 0; }
  void readSome() {
    char buffer[4096];
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0) {
      text.append(buffer, std::min(static_cast<size_t>(n), kMaxMatchedBytes - std::min(kMaxMatchedBytes, text.size())));
    } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
      ::close(fd);
      fd = -1;
    }
  }
  ~Pipe() {
    if (fd >= 0) {
      ::close(fd);
    }
  }
};

std::string lastLine(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
    text.pop_back();
  }
  const auto nl = text.rfind('\n');
  std::string line = nl == std::string::npos ? text : text.substr(nl + 1);
  if (line.size() > 200) {
    line = line.substr(0, 200) + "...";
  }
  return line;
}

std::string commandText(const CommandProbe& spec) {
  if (!spec.shell.empty()) {
    return "sh -c '" + spec.shell + "'";
  }
  std::string out;
  for (const auto& a : spec.argv) {
    out += (out.empty() ? "" : " ") + a;
  }
  return out;
}

}  // namespace

Sample runCommandProbe(const CommandProbe& spec) {
  Sample sample;
  std::vector<std::string> args =
      spec.shell.empty() ? spec.argv : std::vector<std::string>{"/bin/sh", "-c", spec.shell};
  if (args.empty()) {
    sample.detail = "no command to run";
    return sample;
  }
  std::vector<char*> argv;
  for (auto& a : args) {
    argv.push_back(a.data());
  }
  argv.push_back(nullptr);

  int out[2];
  int err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    sample.detail = std::string("cannot create a pipe: ") + std::strerror(errno);
    return sample;
  }
  if (::pipe2(err, O_CLOEXEC) != 0) {
    sample.detail = std::string("cannot create a pipe: ") + std::strerror(errno);
    ::close(out[0]);
    ::close(out[1]);
    return sample;
  }
  Pipe stdoutPipe{out[0], {}};
  Pipe stderrPipe{err[0], {}};

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err[1], STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setpgroup(&attr, 0);  // its own process group: the timeout kills all of it
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  sigset_t all;
  sigfillset(&all);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

  const auto start = Clock::now();
  const auto deadline = start + spec.timeout;
  pid_t pid = -1;
  const int spawnError = ::posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(out[1]);
  ::close(err[1]);
  if (spawnError != 0) {
    sample.latency = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
    sample.detail = "cannot start '" + args[0] + "': " + std::strerror(spawnError);
    return sample;
  }

  std::optional<int> status;
  bool timedOut = false;
  while (!status || stdoutPipe.open() || stderrPipe.open()) {
    const auto now = Clock::now();
    if (now >= deadline) {
      timedOut = true;
      break;
    }
    if (!status) {
      int st = 0;
      if (::waitpid(pid, &st, WNOHANG) == pid) {
        status = st;
        continue;
      }
    }
    pollfd fds[2];
    nfds_t n = 0;
    for (Pipe* p : {&stdoutPipe, &stderrPipe}) {
      if (p->open()) {
        fds[n++] = pollfd{p->fd, POLLIN, 0};
      }
    }
    // Wake at least every 10 ms to notice the exit of a program whose pipes a child keeps open.
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
    const int wait = static_cast<int>(std::min<long long>(left + 1, 10));
    if (n == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(wait));
      continue;
    }
    if (::poll(fds, n, wait) > 0) {
      for (nfds_t i = 0; i < n; ++i) {
        if (fds[i].revents != 0) {
          (fds[i].fd == stdoutPipe.fd ? stdoutPipe : stderrPipe).readSome();
        }
      }
    }
  }
  if (timedOut) {
    ::kill(-pid, SIGKILL);  // the whole group: the program and whatever it started
    if (!status) {
      int st = 0;
      while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
      }
    }
    sample.latency = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
    sample.detail = "timeout after " + formatLimit(spec.timeout) + ": " + commandText(spec) +
                    (status ? " exited but processes it started kept its output open; killed its process group"
                            : " killed with its process group");
    return sample;
  }
  sample.latency = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
  const std::string stderrLine = lastLine(stderrPipe.text);
  if (WIFSIGNALED(*status)) {
    sample.detail = "killed by signal " + std::to_string(WTERMSIG(*status)) + " (" + strsignal(WTERMSIG(*status)) + ")";
    return sample;
  }
  const int code = WEXITSTATUS(*status);
  if (code != spec.expectExit) {
    sample.detail = "exit code " + std::to_string(code) + ", expected " + std::to_string(spec.expectExit);
    if (!stderrLine.empty()) {
      sample.detail += " (stderr: " + stderrLine + ")";
    }
    return sample;
  }
  sample.detail = "exit " + std::to_string(code) + " in " + formatLatency(sample.latency);
  if (spec.stdoutMatch) {
    auto re = Regex::compile(*spec.stdoutMatch, RegexAnchors::kLineEnds);
    if (!re) {  // the parser compiled it already
      sample.detail += ", stdoutMatch: " + re.error();
      return sample;
    }
    if (!re->search(stdoutPipe.text)) {
      sample.detail +=
          ", stdout does not match /" + *spec.stdoutMatch + "/ (last line: '" + lastLine(stdoutPipe.text) + "')";
      return sample;
    }
  }
  sample.ok = true;
  return sample;
}

}  // namespace faultline::controller
