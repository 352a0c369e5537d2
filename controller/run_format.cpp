#include "controller/run_format.h"

#include <time.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string_view>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

namespace faultline::controller {
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

// Control characters (including newlines and ESC) become spaces: one record, one line, and
// no terminal escape sequences from recorded text.
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
  std::vector<double> latencies;
};

}  // namespace

// The enum value's name without "VERDICT_", in lower case with spaces (held, violated, not
// steady, aborted, error); "running" while there is none.
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
    for (const auto* event : events) {
      offsetWidth = std::max(offsetWidth, relativeSeconds(toMicros(event->at()) - start).size());
      hostWidth = std::max(hostWidth, displayWidth(event->host().empty() ? "-" : oneLine(event->host())));
      kindWidth = std::max(kindWidth, displayWidth(oneLine(event->kind())));
    }
    for (const auto* event : events) {
      out += joinColumns({padLeft(relativeSeconds(toMicros(event->at()) - start), offsetWidth),
                          padRight(event->host().empty() ? "-" : oneLine(event->host()), hostWidth),
                          padRight(oneLine(event->kind()), kindWidth), oneLine(event->message())});
    }
  }

  out += "\nprobes\n";
  if (run.samples().empty()) {
    out += "(none)\n";
    return out;
  }
  // probe -> (rank, phase) -> stats; std::map keeps probes by name and phases in order.
  std::map<std::string, std::map<std::pair<int, std::string>, PhaseStats>> stats;
  for (const auto& sample : run.samples()) {
    PhaseStats& s = stats[oneLine(sample.probe())][{phaseRank(sample.phase()), oneLine(sample.phase())}];
    s.latencies.push_back(sample.latency_ms());
    if (!sample.ok()) {
      ++s.failed;
    }
  }
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"PROBE", "PHASE", "SAMPLES", "FAILED", "P50 MS", "MAX MS"});
  for (auto& [probe, phases] : stats) {
    for (auto& [key, s] : phases) {
      std::sort(s.latencies.begin(), s.latencies.end());
      const std::size_t n = s.latencies.size();
      const double p50 = s.latencies[(n + 1) / 2 - 1];  // nearest rank
      rows.push_back({probe, key.second, fmt::format("{}", n), fmt::format("{}", s.failed), fmt::format("{:.1f}", p50),
                      fmt::format("{:.1f}", s.latencies.back())});
    }
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
      columns.push_back(i < 2 ? padRight(row[i], widths[i]) : padLeft(row[i], widths[i]));
    }
    out += joinColumns(columns);
  }
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
      columns.push_back(padRight(row[i], widths[i]));
    }
    out += joinColumns(columns);
  }
  return out;
}

}  // namespace faultline::controller
