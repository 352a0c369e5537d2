#include "agent/kernel/process_table.h"
#include "agent/kernel/whole_file.h"
#include "common/unique_fd.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <iterator>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace faultline::kernel {
namespace {

// include/linux/sched.h: "I am a kernel thread".
constexpr unsigned long kPfKthread = 0x00200000;
// kthreadd, the parent of every kernel thread, is pid 2 in every pid namespace that sees it.
constexpr pid_t kKthreadd = 2;

std::error_code lastError() {
  return {errno, std::generic_category()};
}

// The fields of /proc/PID/stat that we need. comm may contain spaces and ')' so the fields after
// it are found from the last ')'.
struct Stat {
  char state = '?';
  pid_t ppid = 0;
  unsigned long flags = 0;
  unsigned long long startTime = 0;  // field 22, clock ticks after boot: tells a reused pid apart
};

template <typename T>
bool parseNumber(std::string_view text, T& out) {
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && end == text.data() + text.size();
}

std::optional<Stat> parseStat(std::string_view text) {
  const auto close = text.rfind(')');
  if (close == std::string_view::npos) {
    return std::nullopt;
  }
  // Fields from 3 (state) on, separated by single spaces.
  std::string_view rest = text.substr(close + 1);
  Stat stat;
  int field = 2;
  size_t at = 0;
  while (at < rest.size()) {
    while (at < rest.size() && rest[at] == ' ') {
      ++at;
    }
    size_t end = rest.find_first_of(" \n", at);
    if (end == std::string_view::npos) {
      end = rest.size();
    }
    if (end == at) {
      break;
    }
    ++field;
    const std::string_view value = rest.substr(at, end - at);
    if (field == 3) {
      stat.state = value.front();
    }
    if (field == 4 && !parseNumber(value, stat.ppid)) {
      return std::nullopt;
    }
    if (field == 9 && !parseNumber(value, stat.flags)) {
      return std::nullopt;
    }
    if (field == 22) {
      if (!parseNumber(value, stat.startTime)) {
        return std::nullopt;
      }
      return stat;
    }
    at = end;
  }
  return std::nullopt;
}

std::optional<Stat> readStat(pid_t pid) {
  auto text = readWholeFile("/proc/" + std::to_string(pid) + "/stat");
  if (!text) {
    return std::nullopt;
  }
  return parseStat(*text);
}

std::string readExe(const std::string& dir) {
  std::string target(4096, '\0');
  const ssize_t n = ::readlink((dir + "/exe").c_str(), target.data(), target.size());
  if (n <= 0) {
    return {};
  }
  target.resize(static_cast<size_t>(n));
  return target;
}

std::string cmdlineToText(std::string raw) {
  while (!raw.empty() && raw.back() == '\0') {
    raw.pop_back();
  }
  std::replace(raw.begin(), raw.end(), '\0', ' ');
  return raw;
}

std::vector<pid_t> listPids() {
  std::vector<pid_t> pids;
  struct CloseDir {
    void operator()(DIR* d) const { ::closedir(d); }
  };
  std::unique_ptr<DIR, CloseDir> dir(::opendir("/proc"));
  if (!dir) {
    return pids;
  }
  while (const dirent* entry = ::readdir(dir.get())) {
    pid_t pid = 0;
    if (parseNumber(std::string_view(entry->d_name), pid) && pid > 0) {
      pids.push_back(pid);
    }
  }
  std::sort(pids.begin(), pids.end());
  return pids;
}

// "0::/a/b" (v2) and "N:name=systemd:/a/b" (the v1 systemd hierarchy of hybrid hosts).
void parseCgroupFile(std::string_view text, std::string& v2, std::string& systemd) {
  while (!text.empty()) {
    auto nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    const auto first = line.find(':');
    if (first == std::string_view::npos) {
      continue;
    }
    const auto second = line.find(':', first + 1);
    if (second == std::string_view::npos) {
      continue;
    }
    const std::string_view controllers = line.substr(first + 1, second - first - 1);
    const std::string_view path = line.substr(second + 1);
    if (line.substr(0, first) == "0" && controllers.empty()) {
      v2 = std::string(path);
    } else if (controllers == "name=systemd") {
      systemd = std::string(path);
    }
  }
}

long pidfdOpen(pid_t pid) {
  return ::syscall(SYS_pidfd_open, pid, 0U);
}

long pidfdSendSignal(int pidfd, int sig) {
  return ::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0U);
}

// Whether the pidfd's process has exited (zombie or reaped): it polls readable then.
bool pidfdExited(int pidfd, std::chrono::milliseconds wait) {
  pollfd p{pidfd, POLLIN, 0};
  int rc = 0;
  do {
    rc = ::poll(&p, 1, static_cast<int>(wait.count()));
  } while (rc < 0 && errno == EINTR);
  return rc > 0;
}

class ProcPinnedProcess final : public PinnedProcess {
 public:
  ProcPinnedProcess(pid_t pid, unsigned long long startTime, UniqueFd pidfd)
      : pid_(pid), startTime_(startTime), pidfd_(std::move(pidfd)) {}

  pid_t pid() const override { return pid_; }
  unsigned long long startTime() const override { return startTime_; }

  tl::expected<void, std::error_code> signal(int sig) override {
    // A zombie still takes a signal without error; it has exited all the same.
    if (pidfdExited(pidfd_.get(), std::chrono::milliseconds{0})) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_process));
    }
    if (pidfdSendSignal(pidfd_.get(), sig) < 0) {
      return tl::unexpected(lastError());
    }
    return {};
  }

  bool exited(std::chrono::milliseconds wait) override { return pidfdExited(pidfd_.get(), wait); }

 private:
  const pid_t pid_;
  const unsigned long long startTime_;
  const UniqueFd pidfd_;
};

class ProcProcessTable final : public ProcessTable {
 public:
  std::vector<ProcessInfo> list() override {
    std::vector<ProcessInfo> out;
    startTimes_.clear();
    for (pid_t pid : listPids()) {
      const std::string dir = "/proc/" + std::to_string(pid);
      auto stat = readStat(pid);
      auto comm = readWholeFile(dir + "/comm");
      auto cmdline = readWholeFile(dir + "/cmdline", kMaxCmdlineBytes);
      if (!stat || !comm || !cmdline) {
        continue;  // exited while we read it
      }
      ProcessInfo info;
      info.pid = pid;
      info.ppid = stat->ppid;
      info.comm = std::move(*comm);
      if (!info.comm.empty() && info.comm.back() == '\n') {
        info.comm.pop_back();
      }
      info.exe = readExe(dir);
      info.cmdline = cmdlineToText(std::move(*cmdline));
      info.state = stat->state;
      info.startTime = stat->startTime;
      if (auto cgroup = readWholeFile(dir + "/cgroup")) {
        parseCgroupFile(*cgroup, info.cgroup, info.systemdCgroup);
      }
      info.kernelThread =
          (stat->flags & kPfKthread) != 0 || pid == kKthreadd || (stat->ppid == kKthreadd && info.cmdline.empty());
      startTimes_[pid] = stat->startTime;
      out.push_back(std::move(info));
    }
    return out;
  }

  tl::expected<std::unique_ptr<PinnedProcess>, std::error_code> pin(pid_t pid, unsigned long long startTime) override {
    if (pid <= 0) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_process));
    }
    const long fd = pidfdOpen(pid);
    if (fd < 0) {
      return tl::unexpected(lastError());
    }
    auto pinned = std::make_unique<ProcPinnedProcess>(pid, startTime, UniqueFd(static_cast<int>(fd)));
    // The pidfd holds whoever had pid when it was opened; the start time read after it tells
    // whether that is the process selected (a pid is only reused once its holder is reaped).
    auto now = readStat(pid);
    if (!now || now->startTime != startTime) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_process));
    }
    return pinned;
  }

  tl::expected<void, std::error_code> signal(pid_t pid, int sig) override {
    if (pid <= 0) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_process));
    }
    const long fd = pidfdOpen(pid);
    if (fd < 0) {
      const auto error = lastError();
      if (error.value() == ENOSYS) {
        return killByPid(pid, sig);
      }
      return tl::unexpected(error);
    }
    const int pidfd = static_cast<int>(fd);
    // The pidfd pins one process. If the last list() saw this pid, make sure it is still that
    // process (same start time); a pid reused since then is reported as gone.
    if (auto seen = startTimes_.find(pid); seen != startTimes_.end()) {
      if (!same(pid, seen->second)) {
        ::close(pidfd);
        return tl::unexpected(std::make_error_code(std::errc::no_such_process));
      }
    }
    const long rc = pidfdSendSignal(pidfd, sig);
    const auto error = lastError();
    ::close(pidfd);
    if (rc < 0) {
      return tl::unexpected(error);
    }
    return {};
  }

  bool exited(pid_t pid, std::chrono::milliseconds wait) override {
    const long fd = pidfdOpen(pid);
    if (fd < 0) {
      return errno == ESRCH;
    }
    const int pidfd = static_cast<int>(fd);
    if (auto seen = startTimes_.find(pid); seen != startTimes_.end()) {
      if (!same(pid, seen->second)) {
        ::close(pidfd);
        return true;
      }
    }
    const bool gone = pidfdExited(pidfd, wait);
    ::close(pidfd);
    return gone;
  }

  tl::expected<pid_t, SpecFileError> readPidfile(const std::string& path) override {
    auto text = readSmallRegularFile(path, kMaxPidfileBytes);
    if (!text) {
      return tl::unexpected(text.error());
    }
    std::string line = text->substr(0, text->find('\n'));
    while (!line.empty() && (line.back() == ' ' || line.back() == '\r' || line.back() == '\t')) {
      line.pop_back();
    }
    pid_t pid = 0;
    if (!parseNumber(std::string_view(line), pid) || pid <= 0) {
      return tl::unexpected(
          SpecFileError{std::make_error_code(std::errc::invalid_argument), "has no pid > 0 on its first line"});
    }
    return pid;
  }

 private:
  // Kernels before 5.3 have no pidfd_open.
  static tl::expected<void, std::error_code> killByPid(pid_t pid, int sig) {
    if (::kill(pid, sig) != 0) {
      return tl::unexpected(lastError());
    }
    return {};
  }

  // Whether pid is still the process list() saw: the same start time (10 ms ticks). Its command
  // line is not compared: processes rewrite it (PostgreSQL's set_ps_display, nginx's workers).
  [[nodiscard]] static bool same(pid_t pid, unsigned long long startTime) {
    auto now = readStat(pid);
    return now && now->startTime == startTime;
  }

  std::unordered_map<pid_t, unsigned long long> startTimes_;  // what the last list() saw
};

}  // namespace

std::unique_ptr<ProcessTable> openProcessTable() {
  return std::make_unique<ProcProcessTable>();
}

}  // namespace faultline::kernel
