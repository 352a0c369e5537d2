// Text views of run records for the CLI: `faultline show RUN_ID` and `faultline runs`.
// Pure functions of their input, except that wall-clock times are printed in the process's
// local time zone (TZ), as ISO 8601 with the UTC offset. Control characters in recorded
// text (messages come from remote hosts) are replaced by spaces, so one record is one line.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "controller/experiment/experiment.h"
#include "faultline/v1/agent_gateway.pb.h"
#include "faultline/v1/control.pb.h"

namespace faultline::controller {

// Names of the variables given with --secret-var.
using SecretNames = std::set<std::string>;

// How reports name an agent: its id, with its hostname in parentheses where the two differ
// ("web-1", "agent-b (vm)"; several agents may share a host). An empty id (records from before
// events carried it) gives the hostname alone.
[[nodiscard]] std::string agentName(std::string_view agentId, std::string_view hostname);

// The end reasons of fault.ended, one per fault of a run (docs/operations.md, "Events").
inline constexpr std::string_view kEndExpired = "expired";    // ran its whole duration
inline constexpr std::string_view kEndReverted = "reverted";  // the run ended it early (a stop condition, a failure)
inline constexpr std::string_view kEndAborted = "aborted";    // the run was aborted (faultline abort, Ctrl-C)
inline constexpr std::string_view kEndHalted = "halted";      // faultline halt
inline constexpr std::string_view kEndLease = "lease";        // its agent heard nothing for its lease
inline constexpr std::string_view kEndLost = "lost";          // it ended or changed without faultline asking
inline constexpr std::string_view kEndFailed = "failed";      // never applied, or its revert was not confirmed

// held, violated, not steady, aborted, error; running while there is no verdict yet.
[[nodiscard]] std::string verdictWord(v1::Verdict verdict);
// The record's event kind for a fault report's state: fault.applied, fault.reverted,
// fault.expired, fault.failed ("fault.report" for an unset state).
[[nodiscard]] std::string faultEventKind(v1::FaultState state);

// The run's header (id, experiment, trigger, first 12 characters of the file's sha256, start,
// end, duration, verdict: held, violated, not steady, aborted, error or running, reason), its
// events in time order as "+SECONDS.mmm  AGENT  KIND  MESSAGE" relative to the start (AGENT:
// agentName(), "-" for run-level events),
// the faults' windows per agent ("AGENT STEP FROM TO HELD END": each fault.applied to its
// fault.ended, END its reason; in older records the next fault.reverted, fault.expired or
// fault.failed), per probe, phase and method step (in the order they first appear: before,
// during of step 1, wait of step 2, ..., settle, after) the number of samples, the failed ones,
// and the p50, p90, p99 (nearest rank) and maximum latency in ms of the successful samples ("-"
// when there is none), per SLO and phase the number of checks, the failed ones and the SLIs of
// the first failed check (else the last), and each fault step's time to recover (its
// step.recovered or step.not_recovered event). Ends with a newline.
[[nodiscard]] std::string formatTimeline(const v1::Run& run);

// The JSON journal of a run (--journal FILE): {"format": "faultline-journal/v1", "run": {id,
// trigger, startedAt, endedAt}, "experiment": {name, file, sha256 (of the file as written), yaml
// (the text that ran: every ${NAME} replaced by its --var value, except variables whose name
// isSecretVariableName() says is a secret, and those in secretNames: those stay ${NAME}), variables: [{name, value} or
// {name, redacted: true} for a secret, by name]}, "hosts": [host names from the events],
// "agents": [{id, hostname} of the agents the events name], "targets": [the targets.resolved
// messages], "events": [{at, host, kind, message, verdict?, startAt? and skewMs? (step.skew: the
// start time sent and the spread, milliseconds), recoveryMs? (step.recovered,
// step.not_recovered), faultId? and agentId? (fault.* events), faultKind, endReason, appliedAt
// (null when it never applied) and endedAt (fault.ended)}], "samples": [{at, probe, kind, phase,
// ok, latencyMs, detail, guard, step, value?}], "slis": [{at, slo, probe, objective, phase, ok,
// samples, burnRate, notEnoughData, minSamples, measures: [{sli, value, comparison, threshold, ok,
// samples}]}], "latencies": [{probe, phase, step, samples, failed, p50Ms, p90Ms, p99Ms, maxMs} as
// in the timeline, null without a successful sample], "recovery": [{message, recovered, ms}],
// "verdict": {verdict, reason, exitCode}}. Times are RFC 3339 UTC. Invalid
// UTF-8 in recorded text is replaced (U+FFFD). Ends with a newline.
[[nodiscard]] std::string formatJournal(const v1::Run& run, const std::string& fileName,
                                        const std::string& experimentYaml, const Variables& vars = {},
                                        const SecretNames& secretNames = {});

// True when a --var's value must not be written to reports: its name contains SECRET, TOKEN,
// PASS (PASSWORD, PASSWD, DB_PASS), KEY (APIKEY, SSH_KEY) or CREDENTIAL, in any case. A secret
// with another name is marked with --secret-var (SecretNames).
[[nodiscard]] bool isSecretVariableName(std::string_view name);

// text with every control character (newlines and ESC included) made a space: one record, one
// line, and no terminal escape sequences from recorded text (it comes from remote hosts).
[[nodiscard]] std::string oneLine(std::string_view text);

// text with the value of every variable that is secret (named in secretNames, or by
// isSecretVariableName()) replaced by ${NAME}; empty values are left alone.
[[nodiscard]] std::string redactSecrets(std::string text, const Variables& vars, const SecretNames& secretNames = {});

// JUnit XML (--junit FILE) in the form of the Apache Ant JUnit schema (tests/junit/junit.xsd): one
// <testsuite> named after the experiment; one <testcase> per hypothesis check (classname
// EXPERIMENT.steadyState, per phase before/during/after: each probe no SLO covers, and guards,
// failed when any of its samples failed; each SLO, failed when any check over at least its minSamples failed, skipped
// when none had enough samples, failed then before the method) and per method step (classname EXPERIMENT.method; the
// step the run ended in carries the verdict and reason as a failure, or as an error for an execution error; steps never
// started are skipped). The events go to <system-out>; each fault step's time to recover is a property
// faultline.recovery.step-N (its step.recovered or step.not_recovered message). hostname: where the run was started
// ("localhost" when empty).
[[nodiscard]] std::string formatJUnit(const v1::Run& run, const Experiment& experiment, const std::string& hostname);

// text for an XML attribute or element: & < > " ' as entities, control characters other than tab,
// newline and carriage return (which XML 1.0 does not allow) as spaces.
[[nodiscard]] std::string xmlEscape(std::string_view text);

// A header line, then one line per run in the given order: id, start (local, seconds),
// experiment, trigger, verdict, reason (cut to 60 characters with "..."). "no runs\n" if empty.
[[nodiscard]] std::string formatRunList(const std::vector<v1::Run>& runs);

}  // namespace faultline::controller
