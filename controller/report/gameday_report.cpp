#include "controller/report/gameday_report.h"

#include <time.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <map>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

namespace faultline::controller {
namespace {

using google::protobuf::util::TimeUtil;

bool isSet(const google::protobuf::Timestamp& t) {
  return t.seconds() != 0 || t.nanos() != 0;
}

std::string unitOf(const std::string& sli) {
  if (sli == "errors") {
    return "%";
  }
  if (sli == "value") {
    return "";
  }
  return "ms";  // p50 ... max: latencies
}

// How far a measure is past its threshold: above 1 when it fails, the closer to 1 the closer it
// came. Equality comparisons count as 1 when failed, 0 when met.
double badness(const v1::SloMeasure& m) {
  const std::string& c = m.comparison();
  const double v = m.value();
  const double t = m.threshold();
  auto ratio = [](double a, double b) {
    if (b == 0) {
      return a > 0 ? 1e9 : 0.0;
    }
    return a / b;
  };
  double r = 0;
  if (c == "<" || c == "<=") {
    r = ratio(v, t);
  } else if (c == ">" || c == ">=") {
    r = ratio(t, v);
  } else {
    r = m.ok() ? 0 : 1;
  }
  // A failed measure ranks above every met one, whatever the ratio (a threshold of 0).
  return m.ok() ? std::min(r, 1.0) : 1.0 + std::max(r, 0.0);
}

std::string localTime(const google::protobuf::Timestamp& t) {
  const auto tt = static_cast<time_t>(t.seconds());
  struct tm tm {};
  if (localtime_r(&tt, &tm) == nullptr) {
    return fmt::format("@{}", t.seconds());
  }
  const long offsetMin = tm.tm_gmtoff / 60;
  const long absMin = std::labs(offsetMin);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}{:02}:{:02}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                     tm.tm_hour, tm.tm_min, tm.tm_sec, offsetMin < 0 ? '-' : '+', absMin / 60, absMin % 60);
}

std::string verdictOf(const GamedayEntry& e) {
  return e.run.run_id().empty() ? std::string("not run") : verdictWord(e.run.verdict());
}

std::vector<std::vector<std::string>> rowsOf(const std::vector<GamedayEntry>& entries) {
  std::vector<std::vector<std::string>> rows;
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    const bool ran = !e.run.run_id().empty();
    rows.push_back({std::to_string(i + 1), oneLine(e.experiment), verdictOf(e), ran ? runDuration(e.run) : "-",
                    ran ? worstSli(e.run) : "-", ran ? oneLine(e.run.run_id()) : "-"});
  }
  return rows;
}

std::string markdownCell(std::string_view text) {
  std::string out;
  for (const char c : oneLine(text)) {
    if (c == '|' || c == '\\' || c == '`' || c == '*' || c == '_' || c == '<' || c == '[') {
      out += '\\';
    }
    out += c;
  }
  return out;
}

}  // namespace

std::string worstSli(const v1::Run& run) {
  const v1::SloCheck* worstCheck = nullptr;
  const v1::SloMeasure* worst = nullptr;
  double worstBadness = -1;
  for (const auto& c : run.slo_checks()) {
    for (const auto& m : c.measures()) {
      const double b = badness(m);
      if (b > worstBadness) {
        worstBadness = b;
        worst = &m;
        worstCheck = &c;
      }
    }
  }
  if (worst != nullptr) {
    const std::string unit = unitOf(worst->sli());
    return oneLine(fmt::format("{} {:.1f}{} ({} {:g}{}){}, SLO {} {}", worst->sli(), worst->value(), unit,
                               worst->comparison(), worst->threshold(), unit, worst->ok() ? "" : " failed",
                               worstCheck->slo(), worstCheck->phase()));
  }
  struct ProbeStats {
    int samples = 0;
    int failed = 0;
    double maxMs = 0;
  };
  std::map<std::string, ProbeStats> probes;
  for (const auto& s : run.samples()) {
    auto& p = probes[s.probe()];
    ++p.samples;
    p.failed += s.ok() ? 0 : 1;
    p.maxMs = std::max(p.maxMs, s.latency_ms());
  }
  if (probes.empty()) {
    return "-";
  }
  auto it = std::max_element(probes.begin(), probes.end(), [](const auto& a, const auto& b) {
    return std::pair(a.second.failed, a.second.maxMs) < std::pair(b.second.failed, b.second.maxMs);
  });
  return oneLine(fmt::format("probe {}: {} of {} failed, max {:.1f}ms", it->first, it->second.failed,
                             it->second.samples, it->second.maxMs));
}

std::string runDuration(const v1::Run& run) {
  if (!isSet(run.ended_at()) || !isSet(run.started_at())) {
    return "-";
  }
  const std::int64_t ms =
      TimeUtil::TimestampToMilliseconds(run.ended_at()) - TimeUtil::TimestampToMilliseconds(run.started_at());
  if (ms < 0) {
    return "-";
  }
  if (ms < 60'000) {
    return fmt::format("{}.{}s", ms / 1000, (ms % 1000) / 100);
  }
  return fmt::format("{}m{:02}s", ms / 60'000, (ms % 60'000) / 1000);
}

std::string formatGamedayTable(const std::vector<GamedayEntry>& entries) {
  auto rows = rowsOf(entries);
  rows.insert(rows.begin(), {"#", "EXPERIMENT", "VERDICT", "DURATION", "WORST SLI", "RUN"});
  std::vector<std::size_t> widths(rows.front().size(), 0);
  for (const auto& row : rows) {
    for (std::size_t i = 0; i < row.size(); ++i) {
      widths[i] = std::max(widths[i], row[i].size());
    }
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += i + 1 == row.size() ? row[i] : fmt::format("{:<{}}  ", row[i], widths[i]);
    }
    line.erase(line.find_last_not_of(' ') + 1);
    out += line + "\n";
  }
  return out;
}

std::string formatGamedayMarkdown(const std::vector<GamedayEntry>& entries, const std::string& controller,
                                  const std::string& result) {
  google::protobuf::Timestamp start;
  for (const auto& e : entries) {
    if (!e.run.run_id().empty()) {
      start = e.run.started_at();
      break;
    }
  }
  std::string out = "# Game day";
  out += isSet(start) ? fmt::format(" of {}\n\n", localTime(start)) : std::string("\n\n");
  out += fmt::format("- controller: `{}`\n", markdownCell(controller));
  std::size_t ran = 0;
  for (const auto& e : entries) {
    ran += e.run.run_id().empty() ? 0 : 1;
  }
  out += fmt::format("- experiments: {} of {} run\n", ran, entries.size());
  out += fmt::format("- result: **{}**\n\n", markdownCell(result));
  out += "| # | experiment | verdict | duration | worst SLI | run |\n";
  out += "| ---: | --- | --- | ---: | --- | --- |\n";
  for (const auto& row : rowsOf(entries)) {
    out += fmt::format("| {} | {} | {} | {} | {} | {} |\n", row[0], markdownCell(row[1]), row[2], row[3],
                       markdownCell(row[4]), row[5] == "-" ? "-" : "`" + row[5] + "`");
  }
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    out += fmt::format("\n## {}. {}\n\n", i + 1, markdownCell(e.experiment));
    out += fmt::format("- file: `{}`\n", markdownCell(e.file));
    if (e.run.run_id().empty()) {
      out += fmt::format("- {}\n", markdownCell(e.notRun));
      continue;
    }
    out += fmt::format("- verdict: **{}**: {}\n", verdictWord(e.run.verdict()), markdownCell(e.run.reason()));
    out += fmt::format("- started {}, took {}\n", localTime(e.run.started_at()), runDuration(e.run));
    out += fmt::format("- worst SLI: {}\n", markdownCell(worstSli(e.run)));
    out += fmt::format("- timeline: `faultline show {} --controller {}`\n", e.run.run_id(), controller);
  }
  out += "\n## Notes\n\n- what we expected:\n- what happened:\n- follow-ups:\n";
  return out;
}

std::string formatGamedayJUnit(const std::vector<GamedayEntry>& entries,
                               const std::vector<const Experiment*>& experiments, const std::string& hostname) {
  std::string out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n";
  for (std::size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    const std::string attributes = fmt::format(" package=\"faultline.gameday\" id=\"{}\"", i);
    if (e.run.run_id().empty() || i >= experiments.size() || experiments[i] == nullptr) {
      const std::string name = e.experiment.empty() ? e.file : e.experiment;
      out += fmt::format(
          "<testsuite{} name=\"{}\" timestamp=\"1970-01-01T00:00:00\" hostname=\"{}\" tests=\"1\" failures=\"0\" "
          "errors=\"0\" skipped=\"1\" time=\"0.000\">\n  <properties/>\n",
          attributes, xmlEscape(name), xmlEscape(hostname.empty() ? "localhost" : hostname));
      out += fmt::format("  <testcase name=\"run\" classname=\"{}\" time=\"0.000\">\n    <skipped message=\"{}\"/>\n",
                         xmlEscape(name), xmlEscape(e.notRun));
      out += "  </testcase>\n  <system-out></system-out>\n  <system-err></system-err>\n</testsuite>\n";
      continue;
    }
    std::string suite = formatJUnit(e.run, *experiments[i], hostname);
    if (suite.rfind("<?xml", 0) == 0) {
      suite.erase(0, suite.find('\n') + 1);
    }
    const auto open = suite.find("<testsuite");
    if (open != std::string::npos) {
      suite.insert(open + std::string_view("<testsuite").size(), attributes);
    }
    out += suite;
  }
  out += "</testsuites>\n";
  return out;
}

}  // namespace faultline::controller
