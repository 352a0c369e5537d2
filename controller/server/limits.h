// Bounds on what arrives over gRPC at the controller: the Hello and FaultReports of agents
// (AgentGateway) and the requests of the CLI (Control). Every string, list and map a peer sends has
// one here; a message over a bound is refused with INVALID_ARGUMENT naming the field, its size and
// the limit, before anything of it is kept or logged. gRPC's own cap on a whole message (4 MiB by
// default) still applies on top. Log lines quote remote strings through forLog().
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "controller/experiment/experiment.h"
#include "faultline/v1/agent_gateway.pb.h"
#include "faultline/v1/control.pb.h"

namespace faultline::controller {

// Ids: fault ids, run ids. Ours are far shorter (a run id is 32 hex digits; a fault id
// RUN/STEP/AGENT, the agent id at most agent::kMaxAgentIdBytes, agent::checkAgentId()).
inline constexpr size_t kMaxIdBytes = 128;
// A hostname: a DNS name is at most 253 bytes.
inline constexpr size_t kMaxHostnameBytes = 255;
// An agent's version and kernel release (uname -r is at most 64 bytes).
inline constexpr size_t kMaxVersionBytes = 128;
// Labels of one agent: how many, and all keys and values together (40 agents sending 3.5 MB of
// labels each took the controller from 63 to 333 MB).
inline constexpr size_t kMaxLabels = 64;
inline constexpr size_t kMaxLabelBytes = 16 * 1024;
// Faults an agent may say it holds in its Hello.
inline constexpr size_t kMaxHeldFaults = 4096;
// A FaultReport's error and detail, each; and the processes it lists.
inline constexpr size_t kMaxReportTextBytes = 64 * 1024;
inline constexpr size_t kMaxReportProcesses = 4096;
// An experiment file sent with SubmitRun or PlanRun: kMaxExperimentBytes (1 MiB,
// controller/experiment/experiment.h), checked here before the parser sees it. Its name:
inline constexpr size_t kMaxFileNameBytes = 4096;
// A run's trigger (cli, schedule, ci, or a CI system's own word).
inline constexpr size_t kMaxTriggerBytes = 64;
// Variables of a run: how many, and each name and value.
inline constexpr size_t kMaxVariables = 256;
inline constexpr size_t kMaxVariableNameBytes = 128;
inline constexpr size_t kMaxVariableValueBytes = 64 * 1024;
// Runs one ListRuns may return (the CLI's --limit); without events and samples a run is small.
inline constexpr unsigned kMaxListRuns = 1000;
// The reason given with AbortRun or Halt (it goes into the record).
inline constexpr size_t kMaxReasonBytes = 1024;
// A schedule (ApplySchedule): its name ([a-z0-9][a-z0-9._-]*), its cron and each blackout
// (cron.h's kMaxSpecLength), its zone name, how many blackouts and only-if probes, each probe
// name; its starting deadline and jitter. Its experiment, file name and variables: as SubmitRun's.
inline constexpr size_t kMaxScheduleNameBytes = 63;
inline constexpr size_t kMaxCronBytes = 256;
inline constexpr size_t kMaxTimezoneBytes = 64;
inline constexpr size_t kMaxBlackouts = 32;
inline constexpr size_t kMaxOnlyIf = 16;
inline constexpr size_t kMaxProbeNameBytes = 128;
inline constexpr std::chrono::hours kMaxStartingDeadline{7 * 24};
inline constexpr std::chrono::hours kMaxJitter{24};
// The most of a remote string a log line quotes.
inline constexpr size_t kMaxLoggedBytes = 200;

// The first bound a message breaks, in words ("Hello.labels: 70 entries, more than the 64
// accepted"), or nullopt when it keeps them all. Thread-safe.
[[nodiscard]] std::optional<std::string> overLimits(const v1::Hello& hello);
[[nodiscard]] std::optional<std::string> overLimits(const v1::FaultReport& report);
[[nodiscard]] std::optional<std::string> overLimits(const v1::SubmitRunRequest& request);
// ListRuns: the limit (kMaxListRuns), the trigger (kMaxTriggerBytes), a known verdict.
[[nodiscard]] std::optional<std::string> overLimits(const v1::ListRunsRequest& request);
// Every bound above and the accepted words and ranges (name, concurrency, durations); the
// experiment's own validity, the cron, zone and blackouts are checked by their parsers.
[[nodiscard]] std::optional<std::string> overLimits(const v1::Schedule& schedule);
// One string (a run_id, a reason) against its limit, in the same words.
[[nodiscard]] std::optional<std::string> overLimit(std::string_view field, std::string_view text, size_t limit);

// text for a log line: its first kMaxLoggedBytes, then "... (N bytes)" when it is longer.
[[nodiscard]] std::string forLog(std::string_view text);

}  // namespace faultline::controller
