// Command probe: runs a program per sample with posix_spawn (safe in a threaded process), or, to
// run it as another user, fork and only async-signal-safe calls in the child (setgroups, setgid,
// setuid, execve); in its own process group, whose whole is killed when the timeout passes.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstring>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "common/regex.h"
#include "controller/probes/http.h"
#include "controller/probes/probe.h"
#include "controller/probes/protocol.h"

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

// The file execve() runs for name: name itself when it has a '/', else the first executable
// PATH entry (looked up here, in the parent, since the child may call only async-signal-safe
// functions); "" when there is none.
std::string resolveProgram(const std::string& name) {
  if (name.find('/') != std::string::npos) {
    return name;
  }
  const char* path = ::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string dir = dirs.substr(start, end - start);
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
    if (::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    start = end + 1;
  }
  return "";
}

// fork, then in the child: its own process group, stdin /dev/null, stdout and stderr to the
// pipes, default signals, runAs's groups, gid and uid, execve. Returns the pid, or an errno (of
// the fork, or the child's failure to switch user or exec, passed back through a CLOEXEC pipe).
struct Spawned {
  pid_t pid = -1;
  int error = 0;
  const char* step = "";
};
Spawned forkAs(const ProbeUser& runAs, const std::string& program, std::vector<char*>& argv, char** envp, int out,
               int err) {
  const int devNull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devNull < 0) {
    return {-1, errno, "open /dev/null"};
  }
  int report[2];
  if (::pipe2(report, O_CLOEXEC) != 0) {
    const int e = errno;
    ::close(devNull);
    return {-1, e, "pipe"};
  }
  const pid_t pid = ::fork();
  if (pid == 0) {
    struct Failure {
      int error;
      int step;
    };
    auto fail = [&](int step) {
      const Failure f{errno, step};
      [[maybe_unused]] auto n = ::write(report[1], &f, sizeof f);
      ::_exit(127);
    };
    ::setpgid(0, 0);
    if (::dup2(devNull, STDIN_FILENO) < 0 || ::dup2(out, STDOUT_FILENO) < 0 || ::dup2(err, STDERR_FILENO) < 0) {
      fail(0);
    }
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig = 1; sig < NSIG; ++sig) {
      ::sigaction(sig, &dfl, nullptr);
    }
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (::setgroups(runAs.groups.size(), runAs.groups.data()) != 0) {
      fail(1);
    }
    if (::setgid(runAs.gid) != 0) {
      fail(2);
    }
    if (::setuid(runAs.uid) != 0) {
      fail(3);
    }
    ::execve(program.c_str(), argv.data(), envp);
    fail(4);
  }
  const int forkError = errno;
  ::close(report[1]);
  ::close(devNull);
  if (pid < 0) {
    ::close(report[0]);
    return {-1, forkError, "fork"};
  }
  struct {
    int error;
    int step;
  } failure{};
  ssize_t n;
  while ((n = ::read(report[0], &failure, sizeof failure)) < 0 && errno == EINTR) {
  }
  ::close(report[0]);
  if (n == static_cast<ssize_t>(sizeof failure)) {
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    static const char* const kSteps[] = {"redirect", "setgroups", "setgid", "setuid", "exec"};
    return {-1, failure.error, kSteps[failure.step < 0 || failure.step > 4 ? 4 : failure.step]};
  }
  return {pid, 0, ""};
}

// The controller's environment with spec.env set over it (a name given replaces the inherited one).
std::vector<std::string> environmentFor(const CommandProbe& spec) {
  std::vector<std::string> out;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    const std::string_view name = entry.substr(0, entry.find('='));
    const bool replaced =
        std::any_of(spec.env.begin(), spec.env.end(), [&](const auto& kv) { return kv.first == name; });
    if (!replaced) {
      out.emplace_back(entry);
    }
  }
  for (const auto& [name, value] : spec.env) {
    out.push_back(name + "=" + value);
  }
  return out;
}

// The last line of text that is not blank.
std::string lastNonBlankLine(const std::string& text) {
  size_t end = text.size();
  while (end > 0) {
    const size_t nl = end == 0 ? std::string::npos : text.rfind('\n', end - 1);
    const size_t begin = nl == std::string::npos ? 0 : nl + 1;
    const std::string line = text.substr(begin, end - begin);
    if (line.find_first_not_of(" \t\r") != std::string::npos) {
      return line;
    }
    if (nl == std::string::npos) {
      break;
    }
    end = nl;
  }
  return "";
}

}  // namespace

tl::expected<ProbeUser, std::string> lookupProbeUser(const std::string& name) {
  std::vector<char> buffer(64 * 1024);
  passwd pw{};
  passwd* found = nullptr;
  ::getpwnam_r(name.c_str(), &pw, buffer.data(), buffer.size(), &found);
  if (found == nullptr) {
    return tl::unexpected(fmt::format(
        "no user '{}' on this host; accepted: an existing user name (command probes run as it; default: nobody "
        "when the controller runs as root)",
        name));
  }
  ProbeUser user{name, pw.pw_uid, pw.pw_gid, {}};
  int count = 64;
  user.groups.resize(static_cast<size_t>(count));
  while (::getgrouplist(name.c_str(), pw.pw_gid, user.groups.data(), &count) < 0) {
    if (count > 65536) {
      return tl::unexpected(fmt::format("user '{}' is in more than 65536 groups", name));
    }
    user.groups.resize(static_cast<size_t>(count) * 2);
    count *= 2;
  }
  user.groups.resize(static_cast<size_t>(count));
  return user;
}

Sample runCommandProbe(const CommandProbe& spec, const ProbeUser* runAs) {
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
  std::vector<std::string> environment = environmentFor(spec);
  std::vector<char*> envp;
  for (auto& e : environment) {
    envp.push_back(e.data());
  }
  envp.push_back(nullptr);

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

  const auto start = Clock::now();
  const auto deadline = start + spec.timeout;
  pid_t pid = -1;
  if (runAs != nullptr) {
    const std::string program = resolveProgram(args[0]);
    Spawned spawned{-1, ENOENT, "exec"};
    if (!program.empty()) {
      spawned = forkAs(*runAs, program, argv, envp.data(), out[1], err[1]);
    }
    ::close(out[1]);
    ::close(err[1]);
    if (spawned.pid < 0) {
      sample.latency = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
      sample.detail = fmt::format("cannot start '{}' as user {} ({}): {}", args[0], runAs->name, spawned.step,
                                  std::strerror(spawned.error));
      return sample;
    }
    pid = spawned.pid;
  } else {
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

    const int spawnError = ::posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    ::close(out[1]);
    ::close(err[1]);
    if (spawnError != 0) {
      sample.latency = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
      sample.detail = "cannot start '" + args[0] + "': " + std::strerror(spawnError);
      return sample;
    }
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
  if (spec.stdoutNumber) {
    const std::string line = lastNonBlankLine(stdoutPipe.text);
    const auto n = readNumber(line);
    if (!n) {
      sample.detail += ", stdout's last line " + shownValue(line) + " is not a number";
      return sample;
    }
    sample.value = *n;
    if (!compare(*n, spec.stdoutNumber->comparison, spec.stdoutNumber->threshold)) {
      sample.detail +=
          fmt::format(", stdout {}, expected {} {}", formatNumber(*n), comparisonText(spec.stdoutNumber->comparison),
                      formatNumber(spec.stdoutNumber->threshold));
      return sample;
    }
    sample.detail += ", stdout " + formatNumber(*n);
  }
  sample.ok = true;
  return sample;
}

}  // namespace faultline::controller
