// Agent policy: limits the host owner sets on what this agent may do, whatever the controller
// asks (DESIGN.md "Safety model" item 6). Read once from `faultline-agent --policy FILE` at start;
// the format is documented in docs/operations.md ("Agent policy").
//
// Thread-safety: a Policy is immutable after parsePolicy(); const members may be called from any
// thread.
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <tl/expected.hpp>

#include "agent/faults/process/kill_driver.h"
#include "common/diagnostic.h"
#include "faultline/v1/faults.pb.h"

namespace faultline::agent {

// maxDuration when no policy file is given or the file does not set it.
inline constexpr std::chrono::hours kDefaultPolicyMaxDuration{1};
// The names processes.protectOwn (default true) protects: faultline's own executables.
inline constexpr std::array<std::string_view, 2> kOwnProcessNames{"faultline-agent", "faultline"};
// The largest processes.maxProcesses and processes.maxMatches a file may set.
inline constexpr std::size_t kMaxPolicyProcesses = 100000;
// A policy file larger than this is refused before it is parsed.
inline constexpr std::size_t kMaxPolicyBytes = 64 * 1024;

// One error in a policy file (common/diagnostic.h). line and column are 1-based (0 when unknown)
// and point at the offending value, at the key for unknown or duplicate keys. field is the dotted
// path of the key (e.g. "interfaces.deny[1]"); empty for errors about the file as a whole.
using PolicyDiagnostic = Diagnostic;
// format(d): "FILE:LINE:COLUMN: FIELD: MESSAGE" (without ":LINE:COLUMN" when line is 0, without
// "FIELD: " when field is empty).
using faultline::format;

// Why a fault was refused. rule: where the rule is and what it says, e.g.
// "policy /etc/faultline/policy.yaml:7 (maxDuration: 10m)" or "policy built-in default
// (maxDuration: 1h)"; message: the whole sentence for the FAILED report, starting with rule.
struct PolicyViolation {
  std::string rule;
  std::string message;
};

class Policy {
 public:
  // The built-in policy (no file): maxDuration 1h; nothing else beyond what is always protected.
  Policy() = default;

  // Refuses what the policy forbids: a fault kind in forbidKinds, an interface denied or not
  // allowed, a network namespace netns.allow does not list (with netns.allow set: a netns path
  // matching no entry, the agent's own namespace unless `host` is listed, and any namespace chosen
  // by process, which has no path to check before it is resolved), loss above maxPercent, delay +
  // jitter above maxDelay, a duration above maxDuration. How many processes a process fault
  // touches is checked by the process drivers (processRules()), which must see the process table.
  // spec must have passed validateFaultSpec(). Pure: touches nothing.
  [[nodiscard]] tl::expected<void, PolicyViolation> check(const v1::FaultSpec& spec,
                                                          std::chrono::nanoseconds duration) const;

  // The names in processes.protect, each with its rule, for ProcessKillDriver (which adds the
  // always-protected ones: pid 1, the agent, its ancestors, sshd).
  [[nodiscard]] const std::vector<ProtectedName>& protectedProcesses() const { return protect_; }

  // What the process drivers (kill, pause) are given: processes.protect, then, unless
  // processes.protectOwn is false, faultline's own processes by name (kOwnProcessNames: the agent,
  // its watchdog, which runs the agent's executable, and the controller or CLI on this host); and
  // the limits processes.maxProcesses (default kDefaultMaxProcesses) and processes.maxMatches
  // (default kDefaultMaxMatches), each with its rule for errors.
  [[nodiscard]] ProcessRules processRules() const;

  // The file the policy came from; empty for the built-in policy.
  [[nodiscard]] const std::string& file() const { return file_; }
  // One line for the log, e.g. "maxDuration 10m, forbidKinds process.kill, protect nginx".
  [[nodiscard]] std::string summary() const;

 private:
  friend class PolicyParser;

  template <typename T>
  struct Rule {
    T value;
    std::string where;  // "FILE:LINE"
    std::string text;   // the rule as written, e.g. "maxDuration: 10m"
  };
  // Interface name patterns (fnmatch(3) globs).
  struct Patterns {
    std::vector<std::string> patterns;
    std::vector<std::string> wheres;  // where each pattern is
    std::string where;                // where the list is
  };

  [[nodiscard]] tl::expected<void, PolicyViolation> checkInterface(std::string_view interface) const;
  [[nodiscard]] tl::expected<void, PolicyViolation> checkNetns(const v1::NetworkTarget& target) const;

  std::string file_;
  std::optional<Rule<std::chrono::nanoseconds>> maxDuration_;
  std::vector<Rule<std::string>> forbidKinds_;
  std::optional<Patterns> allow_;
  std::optional<Patterns> deny_;
  std::vector<ProtectedName> protect_;
  std::optional<Rule<double>> maxPercent_;
  std::optional<Rule<std::chrono::nanoseconds>> maxDelay_;
  std::optional<Patterns> netnsAllow_;  // absolute paths or globs (FNM_PATHNAME), or "host"
  std::optional<Rule<std::size_t>> maxProcesses_;
  std::optional<Rule<std::size_t>> maxMatches_;
  std::optional<Rule<bool>> protectOwn_;
};

// Parses and validates a whole policy file. Either every key is valid or every error found is
// returned (at least one), sorted by line. An empty file is the built-in policy. fileName is used
// in diagnostics and violations only. Pure function of its input: no I/O.
[[nodiscard]] tl::expected<Policy, std::vector<PolicyDiagnostic>> parsePolicy(std::string_view yaml,
                                                                              const std::string& fileName);

// Reads path (at most kMaxPolicyBytes) and parses it; a file that cannot be read is one
// diagnostic naming the error.
[[nodiscard]] tl::expected<Policy, std::vector<PolicyDiagnostic>> loadPolicy(const std::string& path);

}  // namespace faultline::agent
