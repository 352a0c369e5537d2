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

// The most processes one process fault may signal or pause (after count/percent) when the host's
// policy does not say (processes.maxProcesses).
inline constexpr size_t kDefaultMaxProcesses = 10;
// The most unprotected processes one selector may match (before count/percent narrows it) when the
// policy does not say (processes.maxMatches): a selector broader than this (`cmdline: '.'` on a
// host of 300 processes) is refused even with a small count.
inline constexpr size_t kDefaultMaxMatches = 100;

// How many processes one process fault may touch, and the rule each limit comes from, as errors
// quote it, e.g. "policy built-in default (processes.maxProcesses: 10)".
struct ProcessLimits {
  size_t maxProcesses = kDefaultMaxProcesses;
  std::string maxProcessesRule = "policy built-in default (processes.maxProcesses: 10)";
  size_t maxMatches = kDefaultMaxMatches;
  std::string maxMatchesRule = "policy built-in default (processes.maxMatches: 100)";
};

// What the host's policy tells a process driver (kill, pause): names never chosen (in addition to
// the always protected ones) and the limits. Converts from a protect list alone (default limits).
struct ProcessRules {
  ProcessRules(std::vector<ProtectedName> protectNames = {}, ProcessLimits processLimits = {})  // NOLINT: implicit
      : protect(std::move(protectNames)), limits(std::move(processLimits)) {}
  std::vector<ProtectedName> protect;
  ProcessLimits limits;
};

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

// Refuses a selection that breaks limits, before anything is signalled or paused: more than
// maxMatches unprotected matches, or more than maxProcesses chosen. errors (EPERM, message starting
// with faultKind) say how many matched or were chosen, the limit and its rule, e.g. "process.kill:
// cmdline /./ matches 306 processes, more than the 100 policy built-in default
// (processes.maxMatches: 100) allows one selector to match; nothing was signalled".
[[nodiscard]] tl::expected<void, FaultError> checkProcessLimits(const ProcessSelection& selection,
                                                                const v1::ProcessSelector& selector,
                                                                const ProcessLimits& limits,
                                                                std::string_view faultKind);

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
