// Process selection for process faults (process.kill, process.pause): which processes of this host
// a v1::ProcessSelector picks, through the ProcessTable seam.
//
// Matching: pid (that process); name (exact: comm, the executable's base name, or argv[0]'s base
// name, so names longer than comm's 15 bytes match); cmdline (RE2 regex, common/regex.h, searched in the
// command line); cgroup (the process's cgroup v2 path is it or below it); systemd_unit (a
// component of the process's cgroup path, v2 or the hybrid name=systemd one, equals the unit;
// "nginx" means nginx.service); pidfile (the pid it holds). Then count(n) or percent(p) keeps that
// many matches, chosen at random with the caller's generator.
//
// Never chosen: processes that have exited (zombies, state Z or X), pid 1, kernel threads, the calling process (the
// agent) and its ancestors, and any process whose name matches a ProtectedName (sshd always, plus the policy's list).
// Protected matches are listed in the result for the report.
#pragma once

#include <random>
#include <string>
#include <vector>

#include <tl/expected.hpp>

#include "agent/faults/fault.h"
#include "agent/kernel/process_table.h"
#include "faultline/v1/faults.pb.h"

namespace faultline::agent {

// A process name that is never chosen, and the rule that protects it (for reports), e.g.
// {"nginx", "policy /etc/faultline/policy.yaml:9 (processes.protect: nginx)"}. The name matches
// like a name selector's: comm, the executable's base name, or argv[0]'s base name.
struct ProtectedName {
  std::string name;
  std::string rule;
};

// Protected on every agent, whatever the policy says.
inline constexpr const char* kAlwaysProtectedName = "sshd";

struct ProcessSelection {
  std::vector<kernel::ProcessInfo> chosen;  // in pid order
  std::vector<std::string> skipped;         // protected matches: "pid 7 (sshd -D) is protected by ..."
  size_t matched = 0;                       // unprotected matches before count/percent
  size_t searched = 0;                      // processes looked at
};

// The selector in words for reports and errors, e.g. "name 'nginx'", "cgroup /a/b, count 2".
[[nodiscard]] std::string describeSelector(const v1::ProcessSelector& selector);

// process.kill's selector: its process field, else the older pid/name fields.
[[nodiscard]] v1::ProcessSelector selectorOf(const v1::ProcessKill& kill);

// Whether p's names (comm, executable base name, argv[0] base name) include name.
[[nodiscard]] bool processNameMatches(const kernel::ProcessInfo& p, std::string_view name);

// "pid 42 (nginx -g daemon off;)"; "[comm]" stands for an empty command line.
[[nodiscard]] std::string describeProcess(const kernel::ProcessInfo& p);
[[nodiscard]] std::string commandLineOf(const kernel::ProcessInfo& p);

class ProcessPicker {
 public:
  // processes and rng must outlive the selector. protect: names protected in addition to sshd.
  // self: the agent's pid (getpid() in production).
  ProcessPicker(kernel::ProcessTable& processes, std::vector<ProtectedName> protect, std::mt19937_64& rng, pid_t self);

  // selector must have passed validation (validateFaultSpec). Reads the process table once.
  // errors (message starts with faultKind): ESRCH when nothing unprotected matches (naming what
  // was searched and which protected processes were skipped); EPERM when a pid or pidfile names a
  // protected process; the pidfile's read error.
  [[nodiscard]] tl::expected<ProcessSelection, FaultError> select(const v1::ProcessSelector& selector,
                                                                  std::string_view faultKind);

  [[nodiscard]] const std::vector<ProtectedName>& protectedNames() const { return protect_; }

 private:
  kernel::ProcessTable& processes_;
  std::vector<ProtectedName> protect_;
  std::mt19937_64& rng_;
  pid_t self_;
};

}  // namespace faultline::agent
