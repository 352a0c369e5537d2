#include "controller/report/run_format.h"

#include <time.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <optional>
#include <string_view>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>
#include <nlohmann/json.hpp>

namespace faultline::controller {
std::string oneLine(std::string_view text) {
  std::string out(text);
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      c = ' ';
    }
  }
  return out;
}

namespace {

using google::protobuf::util::TimeUtil;

constexpr std::size_t kShaPrefix = 12;
constexpr std::size_t kReasonWidth = 60;

bool isSet(const google::protobuf::Timestamp& t) {
  return t.seconds() != 0 || t.nanos() != 0;
}

std::int64_t toMicros(const google::protobuf::Timestamp& t) {
  return TimeUtil::TimestampToMicroseconds(t);
}

// Width on a terminal, approximated by the number of UTF-8 code points.
std::size_t displayWidth(std::string_view text) {
  return static_cast<std::size_t>(
      std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xc0) != 0x80; }));
}

std::string padRight(std::string_view text, std::size_t width) {
  std::string out(text);
  const std::size_t w = displayWidth(text);
  if (w < width) {
    out.append(width - w, ' ');
  }
  return out;
}

std::string padLeft(std::string_view text, std::size_t width) {
  const std::size_t w = displayWidth(text);
  std::string out;
  if (w < width) {
    out.append(width - w, ' ');
  }
  out.append(text);
  return out;
}

// At most maxWidth code points; a cut text ends in "...".
std::string truncate(std::string_view text, std::size_t maxWidth) {
  if (displayWidth(text) <= maxWidth) {
    return std::string(text);
  }
  std::size_t points = 0;
  std::size_t end = 0;
  for (; end < text.size(); ++end) {
    if ((static_cast<unsigned char>(text[end]) & 0xc0) != 0x80) {
      if (points == maxWidth - 3) {
        break;
      }
      ++points;
    }
  }
  return std::string(text.substr(0, end)) + "...";
}

// Joins columns with two spaces and drops trailing blanks.
std::string joinColumns(const std::vector<std::string>& columns) {
  std::string line;
  for (std::size_t i = 0; i < columns.size(); ++i) {
    if (i > 0) {
      line += "  ";
    }
    line += columns[i];
  }
  line.erase(line.find_last_not_of(' ') + 1);
  return line + "\n";
}

// Local time, ISO 8601 with the offset: 2024-05-01T14:00:00.250+02:00 (withMillis) or without.
std::string localIso(const google::protobuf::Timestamp& t, bool withMillis) {
  const std::int64_t us = toMicros(t);
  std::int64_t secs = us / 1'000'000;
  std::int64_t frac = us % 1'000'000;
  if (frac < 0) {
    frac += 1'000'000;
    --secs;
  }
  const auto tt = static_cast<time_t>(secs);
  struct tm tm {};
  if (localtime_r(&tt, &tm) == nullptr) {
    return fmt::format("@{}", secs);
  }
  const long offsetMin = tm.tm_gmtoff / 60;
  const long absMin = std::labs(offsetMin);
  std::string out = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                                tm.tm_hour, tm.tm_min, tm.tm_sec);
  if (withMillis) {
    out += fmt::format(".{:03}", frac / 1000);
  }
  out += fmt::format("{}{:02}:{:02}", offsetMin < 0 ? '-' : '+', absMin / 60, absMin % 60);
  return out;
}

// Signed seconds with milliseconds, truncated toward zero: "+1.250", "-0.500".
std::string relativeSeconds(std::int64_t us) {
  const char sign = us < 0 ? '-' : '+';
  const std::int64_t ms = (us < 0 ? -us : us) / 1000;
  return fmt::format("{}{}.{:03}", sign, ms / 1000, ms % 1000);
}

int phaseRank(const std::string& phase) {
  if (phase == "before") {
    return 0;
  }
  if (phase == "during") {
    return 1;
  }
  if (phase == "after") {
    return 2;
  }
  return 3;
}

struct PhaseStats {
  std::size_t failed = 0;
  std::size_t samples = 0;
  std::vector<double> latencies;  // of the successful samples only
};

// The latencies of one probe in one phase and step of the run ("during" of step "2").
struct LatencySummary {
  std::string probe;
  std::string phase;
  std::string step;
  std::size_t samples = 0;
  std::size_t failed = 0;
  std::size_t ok = 0;  // the successful samples the percentiles stand on
  std::optional<double> p50, p90, p99, max;
};

// "\nrecovery\n" and one line per fault step's step.recovered or step.not_recovered event; "" when
// the run has none.
std::string formatRecovery(const v1::Run& run) {
  std::string out;
  for (const auto& e : run.events()) {
    if (e.kind() == "step.recovered" || e.kind() == "step.not_recovered") {
      out += oneLine(e.message()) + "\n";
    }
  }
  return out.empty() ? out : "\nrecovery (from a step's revert until every SLO held again)\n" + out;
}

// Nearest rank: the value at rank ceil(p/100 * n) of the n sorted values.
double nearestRank(const std::vector<double>& sorted, double p) {
  const auto rank = static_cast<std::size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<std::size_t>(rank, 1, sorted.size()) - 1];
}

// Per probe, and per phase and step in the order they first appear: samples, failed samples, and
// the percentiles of the successful samples' latencies (failed samples have none of their own).
std::vector<LatencySummary> latencySummaries(const v1::Run& run) {
  std::map<std::string, std::vector<std::pair<std::pair<std::string, std::string>, PhaseStats>>> stats;
  for (const auto& sample : run.samples()) {
    auto& segments = stats[oneLine(sample.probe())];
    const std::pair<std::string, std::string> key{oneLine(sample.phase()), oneLine(sample.step())};
    auto it = std::find_if(segments.begin(), segments.end(), [&](const auto& kv) { return kv.first == key; });
    if (it == segments.end()) {
      segments.emplace_back(key, PhaseStats{});
      it = std::prev(segments.end());
    }
    ++it->second.samples;
    if (sample.ok()) {
      it->second.latencies.push_back(sample.latency_ms());
    } else {
      ++it->second.failed;
    }
  }
  std::vector<LatencySummary> out;
  for (auto& [probe, segments] : stats) {
    for (auto& [key, s] : segments) {
      LatencySummary l;
      l.probe = probe;
      l.phase = key.first;
      l.step = key.second;
      l.samples = s.samples;
      l.failed = s.failed;
      l.ok = s.latencies.size();
      std::sort(s.latencies.begin(), s.latencies.end());
      if (!s.latencies.empty()) {
        l.p50 = nearestRank(s.latencies, 50);
        l.p90 = nearestRank(s.latencies, 90);
        l.p99 = nearestRank(s.latencies, 99);
        l.max = s.latencies.back();
      }
      out.push_back(std::move(l));
    }
  }
  return out;
}

// Rows of cells printed as columns: the first `leftColumns` left-aligned, the rest right-aligned.
std::string table(const std::vector<std::vector<std::string>>& rows, std::size_t leftColumns) {
  std::vector<std::size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], displayWidth(row[i]));
    }
  }
  std::string out;
  for (const auto& row : rows) {
    std::vector<std::string> columns;
    for (std::size_t i = 0; i < row.size(); ++i) {
      // The last column is free text: not padded.
      columns.push_back(i + 1 == row.size() && i >= leftColumns ? row[i]
                        : i < leftColumns                       ? padRight(row[i], widths[i])
                                                                : padLeft(row[i], widths[i]));
    }
    out += joinColumns(columns);
  }
  return out;
}

// Each fault.applied opens a window and the fault's fault.ended closes it (END: its reason); in
// records from before fault.ended, the next fault.reverted, fault.expired or fault.failed of the
// same fault. Labelled with the fault's step, from its id ("RUN/STEP/AGENT"), and its agent
// (agentName()). Records from before events carried the fault id: per host, labelled with the
// last step.fault before it.
std::string formatFaultWindows(const v1::Run& run) {
  const std::int64_t start = toMicros(run.started_at());
  std::vector<const v1::RunEvent*> events;
  for (const auto& e : run.events()) {
    events.push_back(&e);
  }
  std::stable_sort(events.begin(), events.end(),
                   [](const v1::RunEvent* a, const v1::RunEvent* b) { return toMicros(a->at()) < toMicros(b->at()); });
  struct Window {
    std::string host;
    std::string faultId;
    std::string step;
    std::int64_t from = 0;
    std::optional<std::int64_t> to;
    std::string end;
  };
  const auto stepOf = [](const std::string& faultId) -> std::optional<std::string> {
    const auto first = faultId.find('/');
    const auto last = faultId.rfind('/');
    if (first == std::string::npos || last <= first + 1) {
      return std::nullopt;
    }
    return "step " + faultId.substr(first + 1, last - first - 1);
  };
  std::vector<Window> windows;
  std::string step = "-";
  const bool hasEnds =
      std::any_of(events.begin(), events.end(), [](const v1::RunEvent* e) { return e->kind() == "fault.ended"; });
  for (const auto* e : events) {
    const std::string host = oneLine(agentName(e->agent_id(), e->host()));
    if (e->kind() == "step.fault") {
      step = oneLine(e->message().substr(0, e->message().find(':')));
    } else if (e->kind() == "fault.applied") {
      windows.push_back(Window{host, e->fault_id(), oneLine(stepOf(e->fault_id()).value_or(step)),
                               toMicros(e->at()) - start, std::nullopt, ""});
    } else if (hasEnds ? e->kind() == "fault.ended"
                       : e->kind() == "fault.reverted" || e->kind() == "fault.expired" || e->kind() == "fault.failed") {
      for (auto& w : windows) {
        const bool same = e->fault_id().empty() || w.faultId.empty() ? w.host == host : w.faultId == e->fault_id();
        if (same && !w.to) {
          w.to = toMicros(e->at()) - start;
          w.end = hasEnds ? oneLine(e->end_reason()) : e->kind().substr(6);
          break;
        }
      }
    }
  }
  if (windows.empty()) {
    return "(none)\n";
  }
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"AGENT", "STEP", "FROM", "TO", "HELD", "END"});
  for (const auto& w : windows) {
    rows.push_back({w.host.empty() ? "-" : w.host, w.step, relativeSeconds(w.from), w.to ? relativeSeconds(*w.to) : "-",
                    w.to ? relativeSeconds(*w.to - w.from).substr(1) + "s" : "-", w.to ? w.end : "no end recorded"});
  }
  return table(rows, 2);
}

std::string sloCheckText(const v1::SloCheck& check) {
  std::string out;
  for (const auto& m : check.measures()) {
    const bool percent = m.sli() == "errors";
    const bool latency = !percent && m.sli() != "value" && m.sli() != "throughput" && m.sli() != "saturation";
    const char* unit = latency ? "ms" : percent ? "%" : "";
    // How many samples a latency stands on, when fewer than the window's (the failed ones have
    // none); records from before it was kept have 0.
    const std::string basis = latency && m.samples() > 0 && m.samples() != check.samples()
                                  ? fmt::format(", {} successful", m.samples())
                                  : std::string();
    const std::string value = std::isnan(m.value()) ? std::string("none") : fmt::format("{:.4g}{}", m.value(), unit);
    out += fmt::format("{}{} {} ({} {:g}{}{}){}", out.empty() ? "" : ", ", m.sli(), value, m.comparison(),
                       m.threshold(), unit, basis, m.ok() || check.not_enough_data() ? "" : " FAILED");
  }
  if (check.burn_rate() > 0) {
    out += fmt::format(", burn {:.1f}x", check.burn_rate());
  }
  if (check.not_enough_data()) {
    return fmt::format("not enough data: {} of {} sample(s) ({})", check.samples(), check.min_samples(), out);
  }
  return fmt::format("{} over {} sample(s)", out, check.samples());
}

// Per SLO and phase: checks, failed checks, and the worst (first failed, else last) check.
std::string formatSloSummary(const v1::Run& run) {
  if (run.slo_checks().empty()) {
    return "(none)\n";
  }
  struct Stats {
    std::size_t checks = 0;
    std::size_t failed = 0;
    const v1::SloCheck* shown = nullptr;
  };
  std::map<std::string, std::map<std::pair<int, std::string>, Stats>> stats;
  for (const auto& c : run.slo_checks()) {
    Stats& s = stats[oneLine(c.slo())][{phaseRank(c.phase()), oneLine(c.phase())}];
    ++s.checks;
    const bool failed = !c.ok() && !c.not_enough_data();  // too few samples judges nothing
    if (failed) {
      ++s.failed;
    }
    if (s.shown == nullptr || s.shown->ok() || s.shown->not_enough_data()) {
      s.shown = &c;
    }
  }
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"SLO", "PHASE", "CHECKS", "FAILED", "SLIS (FIRST FAILED, ELSE LAST)"});
  for (const auto& [slo, phases] : stats) {
    for (const auto& [key, s] : phases) {
      rows.push_back(
          {slo, key.second, fmt::format("{}", s.checks), fmt::format("{}", s.failed), oneLine(sloCheckText(*s.shown))});
    }
  }
  return table(rows, 2);
}

}  // namespace

// The enum value's name without "VERDICT_", in lower case with spaces (held, violated, not
// steady, aborted, error); "running" while there is none.
std::string faultEventKind(v1::FaultState state) {
  switch (state) {
    case v1::FAULT_STATE_APPLIED:
      return "fault.applied";
    case v1::FAULT_STATE_REVERTED:
      return "fault.reverted";
    case v1::FAULT_STATE_EXPIRED:
      return "fault.expired";
    case v1::FAULT_STATE_FAILED:
      return "fault.failed";
    default:
      return "fault.report";
  }
}

std::string agentName(std::string_view agentId, std::string_view hostname) {
  if (agentId.empty()) {
    return std::string(hostname);
  }
  if (hostname.empty() || hostname == agentId) {
    return std::string(agentId);
  }
  return fmt::format("{} ({})", agentId, hostname);
}

std::string verdictWord(v1::Verdict verdict) {
  if (verdict == v1::VERDICT_UNSPECIFIED || !v1::Verdict_IsValid(verdict)) {
    return "running";
  }
  std::string word = v1::Verdict_Name(verdict).substr(std::string_view("VERDICT_").size());
  for (char& c : word) {
    c = c == '_' ? ' ' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return word;
}

std::string formatTimeline(const v1::Run& run) {
  const std::int64_t start = toMicros(run.started_at());
  std::string out;
  auto field = [&out](std::string_view name, std::string_view value) {
    out += joinColumns({padRight(name, 10), value.empty() ? std::string("-") : oneLine(value)});
  };
  field("run", run.run_id());
  field("experiment", run.experiment());
  field("trigger", run.trigger());
  field("file", run.file_sha256().substr(0, kShaPrefix));
  if (!run.schedule().empty()) {
    field("schedule", run.schedule());
    field("fired", isSet(run.fire_at()) ? localIso(run.fire_at(), true) : "");
  }
  field("started", localIso(run.started_at(), true));
  if (isSet(run.ended_at())) {
    field("ended", localIso(run.ended_at(), true));
    const std::int64_t duration = toMicros(run.ended_at()) - start;
    field("duration", relativeSeconds(duration).substr(duration < 0 ? 0 : 1) + "s");
  } else {
    field("ended", "");
    field("duration", "");
  }
  field("verdict", verdictWord(run.verdict()));
  field("reason", run.reason());

  out += "\nevents\n";
  if (run.events().empty()) {
    out += "(none)\n";
  } else {
    std::vector<const v1::RunEvent*> events;
    for (const auto& event : run.events()) {
      events.push_back(&event);
    }
    std::stable_sort(events.begin(), events.end(), [](const v1::RunEvent* a, const v1::RunEvent* b) {
      return toMicros(a->at()) < toMicros(b->at());
    });
    std::size_t offsetWidth = 0;
    std::size_t hostWidth = 0;
    std::size_t kindWidth = 0;
    const auto hostOf = [](const v1::RunEvent* event) {
      const std::string name = agentName(event->agent_id(), event->host());
      return name.empty() ? std::string("-") : oneLine(name);
    };
    for (const auto* event : events) {
      offsetWidth = std::max(offsetWidth, relativeSeconds(toMicros(event->at()) - start).size());
      hostWidth = std::max(hostWidth, displayWidth(hostOf(event)));
      kindWidth = std::max(kindWidth, displayWidth(oneLine(event->kind())));
    }
    for (const auto* event : events) {
      out += joinColumns({padLeft(relativeSeconds(toMicros(event->at()) - start), offsetWidth),
                          padRight(hostOf(event), hostWidth), padRight(oneLine(event->kind()), kindWidth),
                          oneLine(event->message())});
    }
  }

  out += "\nfaults\n";
  out += formatFaultWindows(run);

  out += "\nprobes\n";
  if (run.samples().empty()) {
    out += "(none)\n";
    out += "\nslos\n" + formatSloSummary(run);
    out += formatRecovery(run);
    return out;
  }
  // Latency percentiles (nearest rank) of the successful samples, per probe, phase and step.
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"PROBE", "PHASE", "STEP", "SAMPLES", "FAILED", "P50 MS", "P90 MS", "P99 MS", "MAX MS"});
  const auto ms = [](const std::optional<double>& v) { return v ? fmt::format("{:.1f}", *v) : std::string("-"); };
  for (const auto& l : latencySummaries(run)) {
    rows.push_back({l.probe, l.phase, l.step.empty() ? "-" : l.step, fmt::format("{}", l.samples),
                    fmt::format("{}", l.failed), ms(l.p50), ms(l.p90), ms(l.p99), ms(l.max)});
  }
  std::vector<std::size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], displayWidth(row[i]));
    }
  }
  for (const auto& row : rows) {
    std::vector<std::string> columns;
    for (std::size_t i = 0; i < row.size(); ++i) {
      columns.push_back(i < 3 ? padRight(row[i], widths[i]) : padLeft(row[i], widths[i]));
    }
    out += joinColumns(columns);
  }
  out += "(percentiles: nearest rank over the successful samples; a failed sample has no latency)\n";
  out += "\nslos\n" + formatSloSummary(run);
  out += formatRecovery(run);
  return out;
}

std::string formatRunList(const std::vector<v1::Run>& runs) {
  if (runs.empty()) {
    return "no runs\n";
  }
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"RUN", "STARTED", "EXPERIMENT", "TRIGGER", "VERDICT", "REASON"});
  for (const auto& run : runs) {
    rows.push_back({oneLine(run.run_id()), localIso(run.started_at(), false), oneLine(run.experiment()),
                    oneLine(run.trigger()), verdictWord(run.verdict()), truncate(oneLine(run.reason()), kReasonWidth)});
  }
  return table(rows, rows.front().size());  // every column left-aligned
}

}  // namespace faultline::controller

namespace faultline::controller {
namespace {

std::string isoUtc(const google::protobuf::Timestamp& t) {
  return isSet(t) ? TimeUtil::ToString(t) : std::string();
}

nlohmann::json eventJson(const v1::RunEvent& e) {
  nlohmann::json j{{"at", isoUtc(e.at())}, {"host", e.host()}, {"kind", e.kind()}, {"message", e.message()}};
  if (e.verdict() != v1::VERDICT_UNSPECIFIED) {
    j["verdict"] = verdictWord(e.verdict());
  }
  if (e.has_start_at()) {
    j["startAt"] = isoUtc(e.start_at());
  }
  if (e.has_skew()) {
    j["skewMs"] = static_cast<double>(google::protobuf::util::TimeUtil::DurationToNanoseconds(e.skew())) / 1e6;
  }
  if (e.has_recovery()) {
    j["recoveryMs"] = static_cast<double>(google::protobuf::util::TimeUtil::DurationToNanoseconds(e.recovery())) / 1e6;
  }
  if (!e.fault_id().empty()) {
    j["faultId"] = e.fault_id();
  }
  if (!e.agent_id().empty()) {
    j["agentId"] = e.agent_id();
  }
  if (e.kind() == "fault.ended") {
    j["faultKind"] = e.fault_kind();
    j["endReason"] = e.end_reason();
    j["appliedAt"] = e.has_applied_at() ? nlohmann::json(isoUtc(e.applied_at())) : nlohmann::json(nullptr);
    j["endedAt"] = isoUtc(e.at());
  }
  return j;
}

// Hosts of the run: the ones named by events, in the order they first appear.
std::vector<std::string> hostsOf(const v1::Run& run) {
  std::vector<std::string> hosts;
  for (const auto& e : run.events()) {
    if (!e.host().empty() && std::find(hosts.begin(), hosts.end(), e.host()) == hosts.end()) {
      hosts.push_back(e.host());
    }
  }
  return hosts;
}

// Agents of the run: [{id, hostname}] of the events that name one, in the order they first appear.
nlohmann::json agentsOf(const v1::Run& run) {
  nlohmann::json agents = nlohmann::json::array();
  std::vector<std::string> seen;
  for (const auto& e : run.events()) {
    if (!e.agent_id().empty() && std::find(seen.begin(), seen.end(), e.agent_id()) == seen.end()) {
      seen.push_back(e.agent_id());
      agents.push_back({{"id", e.agent_id()}, {"hostname", e.host()}});
    }
  }
  return agents;
}

}  // namespace

std::string xmlEscape(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        // XML 1.0 allows no control characters but tab, newline and carriage return.
        out += (u < 0x20 && c != '\t' && c != '\n' && c != '\r') || u == 0x7f ? ' ' : c;
    }
  }
  return out;
}

namespace {

struct TestCase {
  std::string classname;
  std::string name;
  double seconds = 0;
  enum class Outcome { kPassed, kFailed, kError, kSkipped } outcome = Outcome::kPassed;
  std::string message;
  std::string text;
};

TestCase testCase(std::string classname, std::string name) {
  TestCase tc;
  tc.classname = std::move(classname);
  tc.name = std::move(name);
  return tc;
}

double secondsBetween(std::int64_t fromUs, std::int64_t toUs) {
  return toUs > fromUs ? static_cast<double>(toUs - fromUs) / 1e6 : 0;
}

}  // namespace

bool isSecretVariableName(std::string_view name) {
  std::string upper(name);
  for (char& c : upper) {
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  for (std::string_view word : {"SECRET", "TOKEN", "PASS", "KEY", "CREDENTIAL"}) {
    if (upper.find(word) != std::string::npos) {
      return true;
    }
  }
  return false;
}

std::string redactSecrets(std::string text, const Variables& vars, const SecretNames& secretNames) {
  for (const auto& [name, value] : vars) {
    if (value.empty() || !(secretNames.contains(name) || isSecretVariableName(name))) {
      continue;
    }
    const std::string reference = "${" + name + "}";
    for (size_t at = text.find(value); at != std::string::npos; at = text.find(value, at + reference.size())) {
      text.replace(at, value.size(), reference);
    }
  }
  return text;
}

std::string formatJournal(const v1::Run& run, const std::string& fileName, const std::string& experimentYaml,
                          const Variables& vars, const SecretNames& secretNames) {
  // The text that ran, with a secret's references left as ${NAME} (a value is inserted as written
  // and never scanned again, so mapping NAME to "${NAME}" keeps the reference).
  Variables shown;
  nlohmann::json variables = nlohmann::json::array();
  for (const auto& [name, value] : vars) {
    if (isSecretVariableName(name) || secretNames.contains(name)) {
      shown[name] = "${" + name + "}";
      variables.push_back({{"name", name}, {"redacted", true}});
    } else {
      shown[name] = value;
      variables.push_back({{"name", name}, {"value", value}});
    }
  }
  auto substituted = substituteVariables(experimentYaml, fileName, shown);
  nlohmann::json j;
  j["format"] = "faultline-journal/v1";
  j["run"] = {{"id", run.run_id()},
              {"trigger", run.trigger()},
              {"startedAt", isoUtc(run.started_at())},
              {"endedAt", isoUtc(run.ended_at())}};
  // The file parsed before the run started, so substitution cannot fail here; if it did, the text
  // as written is the honest record.
  j["experiment"] = {{"name", run.experiment()},
                     {"file", fileName},
                     {"sha256", run.file_sha256()},
                     {"yaml", substituted ? substituted->text : experimentYaml},
                     {"variables", std::move(variables)}};
  nlohmann::json targets = nlohmann::json::array();
  for (const auto& e : run.events()) {
    if (e.kind() == "targets.resolved") {
      targets.push_back(e.message());
    }
  }
  j["hosts"] = hostsOf(run);
  j["agents"] = agentsOf(run);
  j["targets"] = targets;
  j["events"] = nlohmann::json::array();
  for (const auto& e : run.events()) {
    j["events"].push_back(eventJson(e));
  }
  j["samples"] = nlohmann::json::array();
  for (const auto& s : run.samples()) {
    nlohmann::json sample{{"at", isoUtc(s.at())}, {"probe", s.probe()}, {"kind", s.kind()},
                          {"phase", s.phase()},   {"ok", s.ok()},       {"latencyMs", s.latency_ms()},
                          {"detail", s.detail()}, {"guard", s.guard()}, {"step", s.step()}};
    if (s.has_value()) {
      sample["value"] = std::isfinite(s.value()) ? nlohmann::json(s.value()) : nlohmann::json(nullptr);
    }
    j["samples"].push_back(std::move(sample));
  }
  j["slis"] = nlohmann::json::array();
  for (const auto& c : run.slo_checks()) {
    nlohmann::json measures = nlohmann::json::array();
    for (const auto& m : c.measures()) {
      measures.push_back({{"sli", m.sli()},
                          {"value", std::isfinite(m.value()) ? nlohmann::json(m.value()) : nlohmann::json(nullptr)},
                          {"comparison", m.comparison()},
                          {"threshold", m.threshold()},
                          {"ok", m.ok()},
                          {"samples", m.samples()}});
    }
    j["slis"].push_back({{"at", isoUtc(c.at())},
                         {"slo", c.slo()},
                         {"probe", c.probe()},
                         {"objective", c.objective()},
                         {"phase", c.phase()},
                         {"ok", c.ok()},
                         {"samples", c.samples()},
                         {"burnRate", c.burn_rate()},
                         {"notEnoughData", c.not_enough_data()},
                         {"minSamples", c.min_samples()},
                         {"measures", std::move(measures)}});
  }
  j["latencies"] = nlohmann::json::array();
  const auto msOrNull = [](const std::optional<double>& v) { return v ? nlohmann::json(*v) : nlohmann::json(nullptr); };
  for (const auto& l : latencySummaries(run)) {
    j["latencies"].push_back({{"probe", l.probe},
                              {"phase", l.phase},
                              {"step", l.step},
                              {"samples", l.samples},
                              {"failed", l.failed},
                              {"p50Ms", msOrNull(l.p50)},
                              {"p90Ms", msOrNull(l.p90)},
                              {"p99Ms", msOrNull(l.p99)},
                              {"maxMs", msOrNull(l.max)}});
  }
  j["recovery"] = nlohmann::json::array();
  for (const auto& e : run.events()) {
    if (e.kind() == "step.recovered" || e.kind() == "step.not_recovered") {
      j["recovery"].push_back(
          {{"message", e.message()},
           {"recovered", e.kind() == "step.recovered"},
           {"ms", static_cast<double>(google::protobuf::util::TimeUtil::DurationToNanoseconds(e.recovery())) / 1e6}});
    }
  }
  j["verdict"] = {{"verdict", verdictWord(run.verdict())},
                  {"reason", run.reason()},
                  {"exitCode", run.verdict() == v1::VERDICT_HELD                                                  ? 0
                               : run.verdict() == v1::VERDICT_VIOLATED || run.verdict() == v1::VERDICT_NOT_STEADY ? 1
                               : run.verdict() == v1::VERDICT_ABORTED                                             ? 2
                                                                                                                  : 3}};
  // Recorded text comes from remote hosts: invalid UTF-8 is replaced, never a throw.
  return j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string formatJUnit(const v1::Run& run, const Experiment& experiment, const std::string& hostname) {
  const std::int64_t start = toMicros(run.started_at());
  const std::int64_t end = isSet(run.ended_at()) ? toMicros(run.ended_at()) : start;
  const std::string suite = run.experiment().empty() ? std::string("experiment") : run.experiment();
  std::vector<TestCase> cases;

  // Hypothesis checks: per phase, every probe no SLO covers (each sample must pass) and every SLO.
  // Probe steps (phase "step") judge each sample alone, SLO or not: a case per probe they sample.
  static constexpr std::array<std::string_view, 4> kPhases{"before", "during", "after", "step"};
  const auto& h = experiment.hypothesis;
  for (const auto phase : kPhases) {
    const bool stepPhase = phase == "step";
    for (const auto& p : h.probes) {
      const bool covered =
          std::any_of(h.slos.begin(), h.slos.end(), [&](const Slo& slo) { return slo.probe == p.name; });
      if (covered && !p.guard && !stepPhase) {
        continue;
      }
      if (stepPhase && std::none_of(run.samples().begin(), run.samples().end(), [&](const v1::ProbeSample& s) {
            return s.probe() == p.name && s.phase() == phase;
          })) {
        continue;
      }
      TestCase tc =
          testCase(suite + ".steadyState", fmt::format("{}: probe {}{}", phase, p.name, p.guard ? " (guard)" : ""));
      std::size_t n = 0;
      std::size_t failed = 0;
      std::string first;
      std::int64_t from = 0;
      std::int64_t to = 0;
      for (const auto& s : run.samples()) {
        if (s.probe() != p.name || s.phase() != phase) {
          continue;
        }
        const std::int64_t at = toMicros(s.at());
        from = n == 0 ? at : from;
        to = at + static_cast<std::int64_t>(s.latency_ms() * 1000);
        ++n;
        if (!s.ok()) {
          if (first.empty()) {
            first = s.detail();
          }
          ++failed;
        }
      }
      tc.seconds = secondsBetween(from, to);
      if (n == 0) {
        tc.outcome = TestCase::Outcome::kSkipped;
        tc.message = fmt::format("no sample {} the faults (the run ended first)", phase == "during" ? "while" : phase);
      } else if (failed > 0) {
        tc.outcome = TestCase::Outcome::kFailed;
        tc.message = fmt::format("{} of {} sample(s) failed; first: {}", failed, n, first);
      }
      cases.push_back(std::move(tc));
    }
    for (const auto& slo : h.slos) {
      if (stepPhase) {
        break;  // SLOs are judged before, during and after
      }
      TestCase tc = testCase(suite + ".steadyState", fmt::format("{}: SLO {} ({})", phase, slo.name, slo.objective));
      std::size_t n = 0;
      std::size_t judged = 0;  // checks over at least minSamples samples
      const v1::SloCheck* firstFailed = nullptr;
      const v1::SloCheck* last = nullptr;
      for (const auto& c : run.slo_checks()) {
        if (c.slo() == slo.name && c.phase() == phase) {
          ++n;
          last = &c;
          judged += c.not_enough_data() ? 0 : 1;
          if (!c.ok() && !c.not_enough_data() && firstFailed == nullptr) {
            firstFailed = &c;
          }
        }
      }
      if (n > 0 && judged == 0) {
        // Too few samples judges nothing: before the method that is no verified steady state.
        tc.outcome = phase == "before" ? TestCase::Outcome::kFailed : TestCase::Outcome::kSkipped;
        tc.message = sloCheckText(*last);
      } else if (n == 0) {
        tc.outcome = TestCase::Outcome::kSkipped;
        tc.message = fmt::format("no check {} the faults (the run ended first)", phase == "during" ? "while" : phase);
      } else if (firstFailed != nullptr) {
        tc.outcome = TestCase::Outcome::kFailed;
        tc.message = fmt::format("violated: {}", sloCheckText(*firstFailed));
        tc.text = fmt::format("{} check(s); last: {}", n, sloCheckText(*last));
      } else {
        tc.text = fmt::format("{} check(s); last: {}", n, sloCheckText(*last));
      }
      cases.push_back(std::move(tc));
    }
  }

  // Steps: the window of each from its first step.* event ("step N: ..." or, in a parallel
  // group, "step N.M: ...") to the first event of the next step (or the end of the run).
  std::map<std::size_t, std::int64_t> stepStart;  // step number (from 1) -> first event
  const v1::RunEvent* stop = nullptr;
  std::map<std::size_t, const v1::RunEvent*> stepEvent;
  for (const auto& e : run.events()) {
    if (e.kind().rfind("step.", 0) == 0 && e.message().rfind("step ", 0) == 0) {
      std::size_t n = 0;
      std::size_t pos = 5;
      while (pos < e.message().size() && e.message()[pos] >= '0' && e.message()[pos] <= '9') {
        n = n * 10 + static_cast<std::size_t>(e.message()[pos] - '0');
        ++pos;
      }
      const std::int64_t at = toMicros(e.at());
      if (n > 0 && (!stepStart.contains(n) || at < stepStart[n])) {
        stepStart[n] = at;
        stepEvent[n] = &e;
      }
    }
    if (e.kind() == "stop.condition" && stop == nullptr) {
      stop = &e;
    }
  }
  const std::size_t started = stepStart.empty() ? 0 : stepStart.rbegin()->first;
  for (std::size_t i = 0; i < experiment.method.size(); ++i) {
    TestCase tc = testCase(suite + ".method", fmt::format("step {}", i + 1));
    const auto& step = experiment.method[i];
    if (const auto* f = std::get_if<FaultStep>(&step)) {
      tc.name += fmt::format(": fault {}", f->name);
    } else if (std::holds_alternative<WaitStep>(step)) {
      tc.name += ": wait";
    } else if (const auto* p = std::get_if<ProbeStep>(&step)) {
      tc.name += fmt::format(": probe {}", p->probe);
    } else {
      tc.name += fmt::format(": parallel ({} steps)", std::get<ParallelStep>(step).steps.size());
    }
    auto it = stepStart.find(i + 1);
    if (it == stepStart.end()) {
      tc.outcome = TestCase::Outcome::kSkipped;
      tc.message = fmt::format("not started: the run ended first ({}: {})", verdictWord(run.verdict()), run.reason());
      cases.push_back(std::move(tc));
      continue;
    }
    const std::int64_t from = it->second;
    auto next = stepStart.upper_bound(i + 1);
    const std::int64_t to = next != stepStart.end() ? next->second : end;
    tc.seconds = secondsBetween(from, to);
    tc.text = stepEvent[i + 1]->message();
    const bool last = i + 1 == started;
    if (last && run.verdict() != v1::VERDICT_HELD && run.verdict() != v1::VERDICT_UNSPECIFIED) {
      // The step the run was in when it ended early, or the last one of a run that failed after it.
      const bool endedHere = i + 1 < experiment.method.size() || stop != nullptr ||
                             run.verdict() == v1::VERDICT_ERROR || run.verdict() == v1::VERDICT_ABORTED;
      if (endedHere) {
        tc.outcome = run.verdict() == v1::VERDICT_ERROR ? TestCase::Outcome::kError : TestCase::Outcome::kFailed;
        tc.message = fmt::format("{}: {}", verdictWord(run.verdict()), run.reason());
      }
    }
    cases.push_back(std::move(tc));
  }

  std::size_t failures = 0;
  std::size_t errors = 0;
  std::size_t skipped = 0;
  for (const auto& c : cases) {
    failures += c.outcome == TestCase::Outcome::kFailed ? 1 : 0;
    errors += c.outcome == TestCase::Outcome::kError ? 1 : 0;
    skipped += c.outcome == TestCase::Outcome::kSkipped ? 1 : 0;
  }
  // The JUnit schema's timestamp has no time zone: UTC, to the second.
  const std::string timestamp = TimeUtil::ToString(run.started_at()).substr(0, 19);
  std::string out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  out += fmt::format(
      "<testsuite name=\"{}\" timestamp=\"{}\" hostname=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" "
      "skipped=\"{}\" time=\"{:.3f}\">\n",
      xmlEscape(suite), timestamp, xmlEscape(hostname.empty() ? "localhost" : hostname), cases.size(), failures, errors,
      skipped, secondsBetween(start, end));
  out += "  <properties>\n";
  const std::vector<std::pair<std::string, std::string>> properties = {
      {"faultline.run_id", run.run_id()},           {"faultline.trigger", run.trigger()},
      {"faultline.file_sha256", run.file_sha256()}, {"faultline.verdict", verdictWord(run.verdict())},
      {"faultline.reason", run.reason()},
  };
  for (const auto& [k, v] : properties) {
    out += fmt::format("    <property name=\"{}\" value=\"{}\"/>\n", k, xmlEscape(v));
  }
  // Time to recover per fault step: faultline.recovery.step-2 = "step 2: recovered 1.9s after ...".
  for (const auto& e : run.events()) {
    if ((e.kind() == "step.recovered" || e.kind() == "step.not_recovered") && e.message().rfind("step ", 0) == 0) {
      const auto colon = e.message().find(':');
      const std::string label = e.message().substr(5, colon == std::string::npos ? 0 : colon - 5);
      out += fmt::format("    <property name=\"faultline.recovery.step-{}\" value=\"{}\"/>\n", xmlEscape(label),
                         xmlEscape(e.message()));
    }
  }
  out += "  </properties>\n";
  for (const auto& c : cases) {
    out += fmt::format("  <testcase name=\"{}\" classname=\"{}\" time=\"{:.3f}\"", xmlEscape(c.name),
                       xmlEscape(c.classname), c.seconds);
    switch (c.outcome) {
      case TestCase::Outcome::kPassed:
        out += "/>\n";
        continue;
      case TestCase::Outcome::kSkipped:
        out += fmt::format(">\n    <skipped message=\"{}\"/>\n", xmlEscape(c.message));
        break;
      case TestCase::Outcome::kFailed:
        out += fmt::format(">\n    <failure message=\"{}\" type=\"{}\">{}</failure>\n", xmlEscape(c.message),
                           run.verdict() == v1::VERDICT_ABORTED ? "aborted" : "violated", xmlEscape(c.text));
        break;
      case TestCase::Outcome::kError:
        out += fmt::format(">\n    <error message=\"{}\" type=\"error\">{}</error>\n", xmlEscape(c.message),
                           xmlEscape(c.text));
        break;
    }
    out += "  </testcase>\n";
  }
  std::string log;
  for (const auto& e : run.events()) {
    const std::string host = agentName(e.agent_id(), e.host());
    log += fmt::format("{} {} {} {}\n", isoUtc(e.at()), host.empty() ? "-" : host, e.kind(), e.message());
  }
  out += fmt::format("  <system-out>{}</system-out>\n", xmlEscape(log));
  out += "  <system-err></system-err>\n";
  out += "</testsuite>\n";
  return out;
}

}  // namespace faultline::controller
