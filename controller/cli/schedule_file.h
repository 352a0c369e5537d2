// What `faultline schedule add` and `faultline apply` share: a schedule from command-line flags or
// from a `kind: Schedule` file (docs/schedules.md, "Schedule files"), and the ApplySchedule call.
// Internal to controller/cli/.
#pragma once

#include <string>
#include <vector>

#include <tl/expected.hpp>

#include "common/diagnostic.h"
#include "faultline/v1/control.grpc.pb.h"

namespace faultline::controller::cli {

// The flags of `schedule add`, as given.
struct ScheduleFlags {
  std::string file;  // the experiment file
  std::string name;
  std::string cron;
  std::string timezone;
  std::vector<std::string> vars;  // NAME=VALUE
  std::string concurrency = "forbid";
  std::string startingDeadline;  // a duration ("10m"); "" = none
  std::string jitter;            // a duration; "" = none
  std::vector<std::string> blackouts;
  std::vector<std::string> onlyIf;  // probe names
};

// The schedule the flags describe, with the experiment file's content read (bounded); an error
// naming the flag or the file. The controller checks the rest (cron, zone, blackouts, experiment).
[[nodiscard]] tl::expected<v1::Schedule, std::string> buildSchedule(const ScheduleFlags& flags);

// A schedule's starting deadline or jitter: parseDuration()'s units (us, ms, s, m, h) and days
// ("7d", a whole number), to whole milliseconds; an error saying what is accepted.
[[nodiscard]] tl::expected<google::protobuf::Duration, std::string> parseScheduleDuration(const std::string& text);

// Parses a `kind: Schedule` file (text, at most kMaxExperimentBytes, named path in diagnostics):
// apiVersion faultline/v1, metadata.name, spec (cron, timezone, concurrency, startingDeadline,
// jitter, blackouts, onlyIf, vars, and experiment: an inline mapping OR experimentFile: a path
// relative to the schedule file's folder, read bounded). Every problem is returned with its
// file:line:column; none when the schedule is good as far as the file goes.
[[nodiscard]] tl::expected<v1::Schedule, std::vector<Diagnostic>> parseScheduleFile(const std::string& text,
                                                                                    const std::string& path);

// ApplySchedule; prints "schedule NAME created|updated|unchanged" and returns 0, or prints the
// error and returns rpcError()'s code.
int applySchedule(v1::Control::Stub& stub, const std::string& address, const v1::Schedule& schedule);

}  // namespace faultline::controller::cli
