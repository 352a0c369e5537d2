// The reports of `faultline gameday`: the summary table, the worst SLI, the Markdown summary and
// the combined JUnit file (checked against tests/junit/junit.xsd with xmllint).
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <doctest/doctest.h>
#include <google/protobuf/util/time_util.h>

#include "controller/experiment/experiment.h"
#include "controller/report/gameday_report.h"

using namespace faultline;
using namespace faultline::controller;
using google::protobuf::util::TimeUtil;

namespace {

google::protobuf::Timestamp at(int64_t ms) {
  return TimeUtil::MillisecondsToTimestamp(1714564800000 + ms);
}

Experiment parsed(const std::string& name) {
  auto e = parseExperiment(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: )" + name + R"(
steadyState:
  probes:
    - name: api
      http: {url: "http://127.0.0.1:8080/"}
method:
  - wait: 1s
)",
                           name + ".yaml");
  REQUIRE(e.has_value());
  return *e;
}

void addMeasure(v1::SloCheck* c, const std::string& sli, double value, const std::string& cmp, double threshold,
                bool ok) {
  auto* m = c->add_measures();
  m->set_sli(sli);
  m->set_value(value);
  m->set_comparison(cmp);
  m->set_threshold(threshold);
  m->set_ok(ok);
}

v1::Run run(const std::string& id, const std::string& experiment, v1::Verdict verdict, int64_t startMs,
            int64_t durationMs) {
  v1::Run r;
  r.set_run_id(id);
  r.set_experiment(experiment);
  r.set_trigger("gameday");
  *r.mutable_started_at() = at(startMs);
  *r.mutable_ended_at() = at(startMs + durationMs);
  r.set_verdict(verdict);
  r.set_reason(verdict == v1::VERDICT_HELD ? "steady state held" : "SLO api-slo violated | p95 too high");
  auto* e = r.add_events();
  *e->mutable_at() = at(startMs + 10);
  e->set_kind("step.wait");
  e->set_message("step 1: wait 1s");
  return r;
}

int xmllint(const std::string& xml, std::string& output) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto file = dir / ("faultline-gameday-" + std::to_string(::getpid()) + ".xml");
  const auto log = dir / ("faultline-gameday-" + std::to_string(::getpid()) + ".log");
  std::ofstream(file) << xml;
  const std::string cmd = "xmllint --noout --schema '" + std::string(FAULTLINE_SOURCE_DIR) +
                          "/tests/junit/junit.xsd' '" + file.string() + "' > '" + log.string() + "' 2>&1";
  const int status = std::system(cmd.c_str());
  std::ifstream in(log);
  output.assign(std::istreambuf_iterator<char>(in), {});
  std::filesystem::remove(file);
  std::filesystem::remove(log);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("game day: the worst SLI is the failed measure furthest past its threshold, else the nearest") {
  v1::Run r = run("r-1", "a", v1::VERDICT_VIOLATED, 0, 1000);
  CHECK(worstSli(r) == "-");
  auto* before = r.add_slo_checks();
  before->set_slo("api-slo");
  before->set_phase("before");
  addMeasure(before, "p95", 40, "<", 100, true);
  addMeasure(before, "errors", 0, "<", 1, true);
  CHECK(worstSli(r) == "p95 40.0ms (< 100ms), SLO api-slo before");
  auto* during = r.add_slo_checks();
  during->set_slo("api-slo");
  during->set_phase("during");
  addMeasure(during, "p95", 150, "<", 100, false);  // 1.5x
  addMeasure(during, "errors", 4, "<", 1, false);   // 4x: the worst
  CHECK(worstSli(r) == "errors 4.0% (< 1%) failed, SLO api-slo during");

  v1::Run probes = run("r-2", "b", v1::VERDICT_HELD, 0, 1000);
  for (int i = 0; i < 4; ++i) {
    auto* s = probes.add_samples();
    s->set_probe(i < 2 ? "api" : "db");
    s->set_ok(i != 3);
    s->set_latency_ms(10.0 * (i + 1));
  }
  CHECK(worstSli(probes) == "probe db: 1 of 2 failed, max 40.0ms");
  CHECK(runDuration(probes) == "1.0s");
  CHECK(runDuration(run("r-3", "c", v1::VERDICT_HELD, 0, 125'400)) == "2m05s");
}

TEST_CASE("game day: the table, the Markdown summary and one JUnit file with a suite per experiment") {
  setenv("TZ", "UTC", 1);
  tzset();
  const Experiment a = parsed("exp-a");
  const Experiment b = parsed("exp-b");
  const Experiment c = parsed("exp-c");
  std::vector<GamedayEntry> entries = {
      {"a.yaml", "exp-a", run("r-a", "exp-a", v1::VERDICT_HELD, 0, 2'000), ""},
      {"b.yaml", "exp-b", run("r-b", "exp-b", v1::VERDICT_VIOLATED, 3'000, 4'500), ""},
      {"c.yaml", "exp-c", {}, "not run: experiment 2 (exp-b) was violated (no --keep-going)"},
  };
  const std::string table = formatGamedayTable(entries);
  CHECK(table ==
        "#  EXPERIMENT  VERDICT   DURATION  WORST SLI  RUN\n"
        "1  exp-a       held      2.0s      -          r-a\n"
        "2  exp-b       violated  4.5s      -          r-b\n"
        "3  exp-c       not run   -         -          -\n");

  const std::string md = formatGamedayMarkdown(entries, "unix:/run/faultline/controller.sock", "violated (exit 1)");
  CHECK(md.rfind("# Game day of 2024-05-01T12:00:00+00:00\n", 0) == 0);
  CHECK(has(md, "- result: **violated (exit 1)**\n"));
  CHECK(has(md, "- experiments: 2 of 3 run\n"));
  CHECK(has(md, "| 1 | exp-a | held | 2.0s | - | `r-a` |\n"));
  CHECK(has(md, "| 2 | exp-b | violated | 4.5s | - | `r-b` |\n"));
  CHECK(has(md, "| 3 | exp-c | not run | - | - | - |\n"));
  CHECK(has(md, "- verdict: **violated**: SLO api-slo violated \\| p95 too high\n"));
  CHECK(has(md, "- not run: experiment 2 (exp-b) was violated (no --keep-going)\n"));
  CHECK(has(md, "## 3. exp-c\n"));
  CHECK(has(md, "- timeline: `faultline show r-b --controller unix:/run/faultline/controller.sock`\n"));

  REQUIRE_MESSAGE(std::system("xmllint --version > /dev/null 2>&1") == 0,
                  "xmllint is missing: scripts/deps installs it (Debian libxml2-utils)");
  const std::string xml = formatGamedayJUnit(entries, {&a, &b, &c}, "runner-1");
  std::string output;
  CHECK_MESSAGE(xmllint(xml, output) == 0, output, "\n", xml);
  CHECK(has(xml, "\n<testsuites>\n"));
  CHECK(has(xml, R"(<testsuite package="faultline.gameday" id="0" name="exp-a" )"));
  CHECK(has(xml, R"(<testsuite package="faultline.gameday" id="1" name="exp-b" )"));
  CHECK(has(xml, R"(<testsuite package="faultline.gameday" id="2" name="exp-c" )"));
  CHECK(has(xml, R"x(<skipped message="not run: experiment 2 (exp-b) was violated (no --keep-going)"/>)x"));
  CHECK(xml.find("<?xml") == xml.rfind("<?xml"));  // one prolog
}
