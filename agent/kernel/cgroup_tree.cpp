#include "agent/kernel/cgroup_tree.h"
#include "agent/kernel/whole_file.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <fstream>
#include <iterator>
#include <thread>

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <fmt/format.h>

#include "common/unique_fd.h"

namespace faultline::kernel {
namespace {

std::error_code lastError() {
  return {errno, std::generic_category()};
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '\\' && i + 3 < text.size()) {
      int value = 0;
      bool octal = true;
      for (size_t k = 1; k <= 3; ++k) {
        if (i + k >= text.size() || text[i + k] < '0' || text[i + k] > '7') {
          octal = false;
          break;
        }
        value = value * 8 + (text[i + k] - '0');
      }
      if (octal) {
        out.push_back(static_cast<char>(value));
        i += 3;
        continue;
      }
    }
    out.push_back(text[i]);
  }
  return out;
}

std::vector<std::string_view> splitSpaces(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t at = 0;
  while (at < line.size()) {
    while (at < line.size() && line[at] == ' ') {
      ++at;
    }
    const size_t end = std::min(line.find(' ', at), line.size());
    if (end > at) {
      fields.push_back(line.substr(at, end - at));
    }
    at = end;
  }
  return fields;
}

std::optional<std::string> readFile(const std::string& path, std::error_code& error) {
  auto text = readWholeFile(path);
  if (!text) {
    error = text.error();
    return std::nullopt;
  }
  return std::move(*text);
}

class FsCgroupTree final : public CgroupTree {
 public:
  // mount: the path its files are reached through; foundAt: where it was found, in words (empty:
  // mount); held: a detached mount's descriptor, kept open while the tree lives.
  explicit FsCgroupTree(std::string mount, std::string foundAt = {}, UniqueFd held = {})
      : mount_(std::move(mount)), foundAt_(std::move(foundAt)), held_(std::move(held)) {
    while (mount_.size() > 1 && mount_.back() == '/') {
      mount_.pop_back();
    }
    if (foundAt_.empty()) {
      foundAt_ = mount_;
    }
  }

  const std::string& mountPoint() const override { return mount_; }
  std::string foundAt() const override { return foundAt_; }

  tl::expected<std::string, std::error_code> selfCgroup() override {
    std::error_code error;
    auto text = readFile("/proc/self/cgroup", error);
    if (!text) {
      return tl::unexpected(error);
    }
    auto path = cgroup2PathOf(*text);
    if (!path) {
      return tl::unexpected(std::make_error_code(std::errc::not_supported));
    }
    return *path;
  }

  tl::expected<std::string, std::error_code> read(const std::string& cgroup, const std::string& file) override {
    std::error_code error;
    auto text = readFile(dir(cgroup) + "/" + file, error);
    if (!text) {
      return tl::unexpected(error);
    }
    while (!text->empty() && text->back() == '\n') {
      text->pop_back();
    }
    return *text;
  }

  tl::expected<void, std::error_code> write(const std::string& cgroup, const std::string& file,
                                            const std::string& value) override {
    const int fd = ::open((dir(cgroup) + "/" + file).c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
      return tl::unexpected(lastError());
    }
    ssize_t n = 0;
    do {
      n = ::write(fd, value.data(), value.size());
    } while (n < 0 && errno == EINTR);
    const auto error = lastError();
    ::close(fd);
    if (n < 0) {
      return tl::unexpected(error);
    }
    return {};
  }

  tl::expected<void, std::error_code> create(const std::string& cgroup) override {
    if (::mkdir(dir(cgroup).c_str(), 0755) != 0) {
      return tl::unexpected(lastError());
    }
    return {};
  }

  tl::expected<void, std::error_code> remove(const std::string& cgroup) override {
    if (::rmdir(dir(cgroup).c_str()) != 0) {
      return tl::unexpected(lastError());
    }
    return {};
  }

  tl::expected<std::vector<std::string>, std::error_code> children(const std::string& cgroup) override {
    DIR* d = ::opendir(dir(cgroup).c_str());
    if (d == nullptr) {
      return tl::unexpected(lastError());
    }
    std::vector<std::string> out;
    while (const dirent* entry = ::readdir(d)) {
      const std::string name = entry->d_name;
      if (entry->d_type == DT_DIR && name != "." && name != "..") {
        out.push_back(name);
      }
    }
    ::closedir(d);
    return out;
  }

  tl::expected<std::vector<pid_t>, std::error_code> procs(const std::string& cgroup) override {
    auto text = read(cgroup, "cgroup.procs");
    if (!text) {
      return tl::unexpected(text.error());
    }
    std::vector<pid_t> out;
    std::string_view rest = *text;
    while (!rest.empty()) {
      const auto nl = rest.find('\n');
      const std::string_view line = rest.substr(0, nl);
      pid_t pid = 0;
      if (std::from_chars(line.data(), line.data() + line.size(), pid).ec == std::errc{}) {
        out.push_back(pid);
      }
      rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
    }
    return out;
  }

  tl::expected<bool, std::error_code> waitEvent(const std::string& cgroup, const std::string& key,
                                                const std::string& value, std::chrono::milliseconds timeout) override {
    const std::string want = key + " " + value;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto events = read(cgroup, "cgroup.events");
      if (!events) {
        return tl::unexpected(events.error());
      }
      std::string_view rest = *events;
      while (!rest.empty()) {
        const auto nl = rest.find('\n');
        if (rest.substr(0, nl) == want) {
          return true;
        }
        rest = nl == std::string_view::npos ? std::string_view{} : rest.substr(nl + 1);
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds{1});
    }
  }

 private:
  std::string dir(const std::string& cgroup) const { return cgroup == "/" ? mount_ : mount_ + cgroup; }

  std::string mount_;
  std::string foundAt_;
  UniqueFd held_;
};

// Whether path is the root of a readable cgroup2 file system.
bool isCgroup2(const std::string& path) {
  struct statfs fs {};
  return ::statfs(path.c_str(), &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC &&
         ::access((path + "/cgroup.procs").c_str(), R_OK) == 0;
}

// A cgroup2 mount of the caller's cgroup namespace that no mount namespace holds (fsopen,
// fsconfig, fsmount: Linux 5.2+, CAP_SYS_ADMIN): it changes no mount table and goes away with its
// descriptor. errors: the syscalls' (EPERM, ENOSYS).
tl::expected<UniqueFd, std::error_code> detachedCgroup2Mount() {
  UniqueFd context(static_cast<int>(::syscall(SYS_fsopen, "cgroup2", FSOPEN_CLOEXEC)));
  if (context.get() < 0) {
    return tl::unexpected(lastError());
  }
  if (::syscall(SYS_fsconfig, context.get(), FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) < 0) {
    return tl::unexpected(lastError());
  }
  UniqueFd mount(static_cast<int>(::syscall(SYS_fsmount, context.get(), FSMOUNT_CLOEXEC, 0)));
  if (mount.get() < 0) {
    return tl::unexpected(lastError());
  }
  return mount;
}

}  // namespace

std::optional<std::string> findCgroup2Mount(std::string_view mountinfo) {
  while (!mountinfo.empty()) {
    const auto nl = mountinfo.find('\n');
    const std::string_view line = mountinfo.substr(0, nl);
    mountinfo = nl == std::string_view::npos ? std::string_view{} : mountinfo.substr(nl + 1);
    const auto fields = splitSpaces(line);
    // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER_OPTIONS
    size_t dash = 0;
    for (size_t i = 6; i < fields.size(); ++i) {
      if (fields[i] == "-") {
        dash = i;
        break;
      }
    }
    if (dash == 0 || dash + 1 >= fields.size() || fields.size() < 5) {
      continue;
    }
    if (fields[dash + 1] == "cgroup2") {
      return unescape(fields[4]);
    }
  }
  return std::nullopt;
}

std::optional<std::string> cgroup2PathOf(std::string_view procCgroup) {
  while (!procCgroup.empty()) {
    const auto nl = procCgroup.find('\n');
    const std::string_view line = procCgroup.substr(0, nl);
    procCgroup = nl == std::string_view::npos ? std::string_view{} : procCgroup.substr(nl + 1);
    if (line.substr(0, 3) == "0::") {
      return std::string(line.substr(3));
    }
  }
  return std::nullopt;
}

std::string parentCgroup(std::string_view cgroup) {
  const auto slash = cgroup.rfind('/');
  if (slash == std::string_view::npos || slash == 0) {
    return "/";
  }
  return std::string(cgroup.substr(0, slash));
}

tl::expected<std::unique_ptr<CgroupTree>, std::error_code> openCgroupTree() {
  std::error_code error;
  auto text = readFile("/proc/self/mountinfo", error);
  if (!text) {
    return tl::unexpected(error);
  }
  if (auto mount = findCgroup2Mount(*text)) {
    return std::make_unique<FsCgroupTree>(*mount);
  }
  // None here; the host's mount namespace (pid 1's) may have one that this one hides: `ip netns
  // exec` mounts a fresh sysfs on /sys, without /sys/fs/cgroup's mounts.
  auto hostText = readFile("/proc/1/mountinfo", error);
  const auto hostMount = hostText ? findCgroup2Mount(*hostText) : std::nullopt;
  if (!hostMount) {
    return tl::unexpected(std::make_error_code(std::errc::not_supported));
  }
  // Through pid 1's root, where this process may follow it (ptrace read access to pid 1)...
  const std::string throughPid1 = "/proc/1/root" + *hostMount;
  if (isCgroup2(throughPid1)) {
    return std::make_unique<FsCgroupTree>(
        throughPid1, fmt::format("{} (pid 1's mount namespace, through /proc/1/root)", *hostMount));
  }
  // ... else a detached mount of the same hierarchy, reached through its descriptor.
  auto detached = detachedCgroup2Mount();
  if (!detached) {
    return tl::unexpected(detached.error());
  }
  const std::string path = "/proc/self/fd/" + std::to_string(detached->get());
  if (!isCgroup2(path)) {
    return tl::unexpected(std::make_error_code(std::errc::not_supported));
  }
  return std::make_unique<FsCgroupTree>(
      path,
      fmt::format("{} (pid 1's mount namespace; hidden in this one, reached through a detached cgroup2 mount)",
                  *hostMount),
      std::move(*detached));
}

std::unique_ptr<CgroupTree> openCgroupTreeFor(const std::string& recordedMount) {
  // A descriptor path (a detached mount of an earlier process) means nothing now.
  if (!recordedMount.empty() && recordedMount.rfind("/proc/", 0) != 0 && isCgroup2(recordedMount)) {
    return openCgroupTreeAt(recordedMount);
  }
  auto tree = openCgroupTree();
  return tree ? std::move(*tree) : nullptr;
}

std::string cgroupTreeMissingWhy(std::error_code error) {
  if (error == std::errc::not_supported) {
    return "no cgroup2 mount in /proc/self/mountinfo nor in pid 1's mount namespace (a cgroup v1-only host)";
  }
  return "pid 1's mount namespace has a cgroup2 mount that this one hides, and it cannot be reached: " +
         error.message();
}

std::unique_ptr<CgroupTree> openCgroupTreeAt(std::string mountPoint) {
  return std::make_unique<FsCgroupTree>(std::move(mountPoint));
}

std::string cgroupV2MissingMessage(std::string_view faultKind) {
  return std::string(faultKind) +
         ": this host has no cgroup v2 hierarchy (no cgroup2 mount in /proc/self/mountinfo nor in pid 1's mount "
         "namespace; cgroup v1 only). "
         "It needs cgroup v2: boot with systemd.unified_cgroup_hierarchy=1, or mount one with "
         "'mount -t cgroup2 none /sys/fs/cgroup/unified'";
}

}  // namespace faultline::kernel
