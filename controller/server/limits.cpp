#include "controller/server/limits.h"

#include <algorithm>
#include <initializer_list>

#include <fmt/format.h>

#include "agent/session/inject_bounds.h"

namespace faultline::controller {
namespace {

std::optional<std::string> tooMany(std::string_view field, size_t count, size_t limit) {
  if (count <= limit) {
    return std::nullopt;
  }
  return fmt::format("{}: {} entries, more than the {} accepted", field, count, limit);
}

// A string, its field's name and its limit.
struct Bounded {
  std::string_view field;
  std::string_view text;
  size_t limit;
};

std::optional<std::string> firstOver(std::initializer_list<Bounded> strings) {
  for (const auto& s : strings) {
    if (auto e = overLimit(s.field, s.text, s.limit)) {
      return e;
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> overLimit(std::string_view field, std::string_view text, size_t limit) {
  if (text.size() <= limit) {
    return std::nullopt;
  }
  return fmt::format("{}: {} bytes, more than the {} accepted", field, text.size(), limit);
}

std::optional<std::string> overLimits(const v1::Hello& hello) {
  if (auto bad = agent::checkAgentId(hello.agent_id())) {
    return "Hello.agent_id: " + *bad;
  }
  if (auto e = firstOver({{"Hello.hostname", hello.hostname(), kMaxHostnameBytes},
                          {"Hello.version", hello.version(), kMaxVersionBytes},
                          {"Hello.kernel_release", hello.kernel_release(), kMaxVersionBytes}})) {
    return e;
  }
  if (auto e = tooMany("Hello.labels", static_cast<size_t>(hello.labels().size()), kMaxLabels)) {
    return e;
  }
  size_t labelBytes = 0;
  for (const auto& [key, value] : hello.labels()) {
    labelBytes += key.size() + value.size();
  }
  if (labelBytes > kMaxLabelBytes) {
    return fmt::format("Hello.labels: {} bytes of keys and values, more than the {} accepted", labelBytes,
                       kMaxLabelBytes);
  }
  if (auto e = tooMany("Hello.active_faults", static_cast<size_t>(hello.active_faults().size()), kMaxHeldFaults)) {
    return e;
  }
  for (const auto& held : hello.active_faults()) {
    if (auto e = overLimits(held)) {
      return "Hello.active_faults: " + *e;
    }
  }
  return std::nullopt;
}

std::optional<std::string> overLimits(const v1::FaultReport& report) {
  if (auto e = firstOver({{"FaultReport.fault_id", report.fault_id(), kMaxIdBytes},
                          {"FaultReport.error", report.error(), kMaxReportTextBytes},
                          {"FaultReport.detail", report.detail(), kMaxReportTextBytes}})) {
    return e;
  }
  return tooMany("FaultReport.processes", static_cast<size_t>(report.processes().size()), kMaxReportProcesses);
}

std::optional<std::string> overLimits(const v1::SubmitRunRequest& request) {
  if (auto e = firstOver({{"experiment", request.experiment(), kMaxExperimentBytes},
                          {"file_name", request.file_name(), kMaxFileNameBytes},
                          {"trigger", request.trigger(), kMaxTriggerBytes}})) {
    return e;
  }
  if (auto e = tooMany("variables", static_cast<size_t>(request.variables().size()), kMaxVariables)) {
    return e;
  }
  for (const auto& [name, value] : request.variables()) {
    if (auto e = overLimit("variables (a name)", name, kMaxVariableNameBytes)) {
      return e;
    }
    if (auto e = overLimit(fmt::format("variables.{}", name), value, kMaxVariableValueBytes)) {
      return e;
    }
  }
  if (auto e = tooMany("secret_variables", static_cast<size_t>(request.secret_variables().size()), kMaxVariables)) {
    return e;
  }
  for (const auto& name : request.secret_variables()) {
    if (request.variables().count(name) == 0) {
      return fmt::format("secret_variables: '{}' is not a key of variables; accepted: names given in variables",
                         forLog(name));
    }
  }
  return std::nullopt;
}

std::optional<std::string> overLimits(const v1::ListRunsRequest& request) {
  if (request.limit() > kMaxListRuns) {
    return fmt::format("limit: {} runs, more than the {} accepted (0 means 20)", request.limit(), kMaxListRuns);
  }
  if (auto e = overLimit("trigger", request.trigger(), kMaxTriggerBytes)) {
    return e;
  }
  if (auto e = overLimit("schedule", request.schedule(), kMaxScheduleNameBytes)) {
    return e;
  }
  if (!v1::Verdict_IsValid(request.verdict())) {
    return fmt::format("verdict: {} is not a verdict; accepted: the values of faultline.v1.Verdict",
                       static_cast<int>(request.verdict()));
  }
  if (request.only_running() && request.verdict() != v1::VERDICT_UNSPECIFIED) {
    return "only_running: set together with a verdict; a running run has none (leave verdict unset)";
  }
  return std::nullopt;
}

std::optional<std::string> overLimits(const v1::Schedule& s) {
  if (auto e = firstOver({{"name", s.name(), kMaxScheduleNameBytes},
                          {"cron", s.cron(), kMaxCronBytes},
                          {"timezone", s.timezone(), kMaxTimezoneBytes},
                          {"concurrency", s.concurrency(), kMaxTriggerBytes}})) {
    return e;
  }
  const auto nameOk = [](std::string_view n) {
    if (n.empty() || !((n[0] >= 'a' && n[0] <= 'z') || (n[0] >= '0' && n[0] <= '9'))) {
      return false;
    }
    return std::all_of(n.begin(), n.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    });
  };
  if (!nameOk(s.name())) {
    return fmt::format(
        "name: '{}' is not a schedule name; accepted: a lowercase letter or digit, then lowercase "
        "letters, digits, '.', '_', '-' (at most {} bytes)",
        forLog(s.name()), kMaxScheduleNameBytes);
  }
  if (s.cron().empty()) {
    return std::string(
        "cron: missing; accepted: five cron fields (or six with seconds first), or @hourly, @daily, "
        "@weekly, @monthly");
  }
  if (!s.concurrency().empty() && s.concurrency() != "forbid" && s.concurrency() != "allow" &&
      s.concurrency() != "replace") {
    return fmt::format("concurrency: '{}' is not accepted; accepted: forbid, allow, replace", forLog(s.concurrency()));
  }
  const auto checkDuration = [](std::string_view field, const google::protobuf::Duration& d,
                                std::chrono::hours max) -> std::optional<std::string> {
    const auto ms = static_cast<int64_t>(d.seconds()) * 1000 + d.nanos() / 1'000'000;
    if (d.seconds() < 0 || d.nanos() < 0 || d.nanos() % 1'000'000 != 0 ||
        d.seconds() > std::chrono::duration_cast<std::chrono::seconds>(max).count() ||
        ms > std::chrono::duration_cast<std::chrono::milliseconds>(max).count()) {
      const auto h = d.seconds() / 3600, m = d.seconds() % 3600 / 60, sec = d.seconds() % 60;
      return fmt::format("{}: {} is not accepted; accepted: 0 to {}h, whole milliseconds", field,
                         d.nanos() == 0 && d.seconds() >= 0 ? fmt::format("{}h{:02}m{:02}s", h, m, sec)
                                                            : fmt::format("{}s {}ns", d.seconds(), d.nanos()),
                         max.count());
    }
    return std::nullopt;
  };
  if (auto e = checkDuration("--starting-deadline (startingDeadline)", s.starting_deadline(), kMaxStartingDeadline)) {
    return e;
  }
  if (auto e = checkDuration("--jitter (jitter)", s.jitter(), kMaxJitter)) {
    return e;
  }
  if (auto e = tooMany("--blackout (blackouts)", static_cast<size_t>(s.blackouts().size()), kMaxBlackouts)) {
    return e;
  }
  for (const auto& b : s.blackouts()) {
    if (auto e = overLimit("--blackout (blackouts)", b, kMaxCronBytes)) {
      return e;
    }
  }
  if (auto e = tooMany("--only-if (onlyIf)", static_cast<size_t>(s.only_if().size()), kMaxOnlyIf)) {
    return e;
  }
  for (const auto& p : s.only_if()) {
    if (auto e = overLimit("--only-if (onlyIf)", p, kMaxProbeNameBytes)) {
      return e;
    }
  }
  v1::SubmitRunRequest asRun;
  asRun.set_experiment(s.experiment());
  asRun.set_file_name(s.file_name());
  *asRun.mutable_variables() = s.variables();
  return overLimits(asRun);
}

std::string forLog(std::string_view text) {
  if (text.size() <= kMaxLoggedBytes) {
    return std::string(text);
  }
  return fmt::format("{}... ({} bytes)", text.substr(0, kMaxLoggedBytes), text.size());
}

}  // namespace faultline::controller
