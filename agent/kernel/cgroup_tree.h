// The seam between cgroup faults and the cgroup v2 filesystem.
//
// Paths ("cgroup") are from the v2 hierarchy's root: "/" or "/system.slice/nginx.service"; file
// names are the kernel's (cgroup.procs, cgroup.freeze, cpu.max, ...). The mount point is found in
// /proc/self/mountinfo, never assumed: /sys/fs/cgroup on pure v2 hosts, /sys/fs/cgroup/unified
// on hybrid ones; when this mount namespace hides it (`ip netns exec` mounts a fresh sysfs on
// /sys), through pid 1's mount namespace (see openCgroupTree()). Not thread-safe; every call is a few file system calls
// (microseconds) except waitEvent, which blocks up to its timeout.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <sys/types.h>
#include <tl/expected.hpp>

namespace faultline::kernel {

// The mount point of the first cgroup2 file system in a /proc/PID/mountinfo text (see proc(5):
// field 5 is the mount point, the field after " - " the type; octal escapes such as \040 are
// decoded). nullopt when there is none (a cgroup v1-only host).
[[nodiscard]] std::optional<std::string> findCgroup2Mount(std::string_view mountinfo);

// The v2 path in a /proc/PID/cgroup text (the "0::PATH" line); nullopt when absent.
[[nodiscard]] std::optional<std::string> cgroup2PathOf(std::string_view procCgroup);

// The parent of a cgroup path ("/a/b" -> "/a", "/a" -> "/", "/" -> "/").
[[nodiscard]] std::string parentCgroup(std::string_view cgroup);

class CgroupTree {
 public:
  virtual ~CgroupTree() = default;
  // The path its files are reached through, e.g. /sys/fs/cgroup/unified (or /proc/1/root/...,
  // /proc/self/fd/N: see openCgroupTree()).
  [[nodiscard]] virtual const std::string& mountPoint() const = 0;
  // Where it was found, for people: the mount point, and how it is reached when this mount
  // namespace hides it, e.g. "/sys/fs/cgroup (pid 1's mount namespace; hidden in this one, reached
  // through a detached cgroup2 mount)".
  [[nodiscard]] virtual std::string foundAt() const { return mountPoint(); }
  // The calling process's cgroup (from /proc/self/cgroup).
  [[nodiscard]] virtual tl::expected<std::string, std::error_code> selfCgroup() = 0;
  // The file's contents without the final newline. errors: ENOENT (no such cgroup or file:
  // e.g. a controller not enabled), EACCES.
  [[nodiscard]] virtual tl::expected<std::string, std::error_code> read(const std::string& cgroup,
                                                                        const std::string& file) = 0;
  // Writes value in one write(2). errors: the kernel's (EINVAL a bad value, EBUSY, ENOENT,
  // EOPNOTSUPP, EACCES).
  [[nodiscard]] virtual tl::expected<void, std::error_code> write(const std::string& cgroup, const std::string& file,
                                                                  const std::string& value) = 0;
  // mkdir. errors: EEXIST, ENOENT (no parent), EACCES.
  [[nodiscard]] virtual tl::expected<void, std::error_code> create(const std::string& cgroup) = 0;
  // rmdir. errors: EBUSY (it still holds processes or children), ENOENT.
  [[nodiscard]] virtual tl::expected<void, std::error_code> remove(const std::string& cgroup) = 0;
  // The names of the child cgroups. errors: ENOENT.
  [[nodiscard]] virtual tl::expected<std::vector<std::string>, std::error_code> children(const std::string& cgroup) = 0;
  // cgroup.procs, parsed. errors: ENOENT.
  [[nodiscard]] virtual tl::expected<std::vector<pid_t>, std::error_code> procs(const std::string& cgroup) = 0;
  // Waits until cgroup.events has "key value" (e.g. "frozen 1", "populated 0"); false on timeout.
  // errors: the read's.
  [[nodiscard]] virtual tl::expected<bool, std::error_code> waitEvent(const std::string& cgroup, const std::string& key,
                                                                      const std::string& value,
                                                                      std::chrono::milliseconds timeout) = 0;
};

// The host's cgroup v2 hierarchy: the cgroup2 mount of /proc/self/mountinfo; when this mount
// namespace has none but pid 1's has (/proc/1/mountinfo: `ip netns exec` hides /sys/fs/cgroup),
// that mount through /proc/1/root when this process may follow it, else a detached cgroup2 mount
// (fsopen/fsmount, CAP_SYS_ADMIN: no mount table changes; the tree holds its descriptor).
// errors: EOPNOTSUPP when neither namespace has a cgroup2 mount (a cgroup v1-only host); the
// mountinfo read's; the detached mount's (EPERM, ENOSYS before Linux 5.2).
[[nodiscard]] tl::expected<std::unique_ptr<CgroupTree>, std::error_code> openCgroupTree();
// The hierarchy an undo record names (its "mount") when that path is a cgroup2 mount now, else
// openCgroupTree()'s; nullptr when there is none.
[[nodiscard]] std::unique_ptr<CgroupTree> openCgroupTreeFor(const std::string& recordedMount);
// Why openCgroupTree() failed, in words, from its error.
[[nodiscard]] std::string cgroupTreeMissingWhy(std::error_code error);
// The hierarchy mounted at mountPoint (tests).
[[nodiscard]] std::unique_ptr<CgroupTree> openCgroupTreeAt(std::string mountPoint);

// The sentence for a v1-only host, naming the fault kind that needs v2.
[[nodiscard]] std::string cgroupV2MissingMessage(std::string_view faultKind);

}  // namespace faultline::kernel
