// The run's reports: the JUnit XML (checked against tests/junit/junit.xsd with xmllint), the JSON
// journal, and the fault windows and SLIs of `faultline show`.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <doctest/doctest.h>
#include <google/protobuf/util/time_util.h>
#include <nlohmann/json.hpp>

#include "controller/experiment/experiment.h"
#include "controller/report/run_format.h"

using namespace faultline;
using namespace faultline::controller;
using google::protobuf::util::TimeUtil;

namespace {

const std::string kYaml = R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: checkout-latency
steadyState:
  every: 1s
  probes:
    - name: api
      http: {url: "http://127.0.0.1:8080/"}
    - name: db
      guard: true
      tcp: {address: "127.0.0.1:5432"}
  slos:
    - name: api-slo
      probe: api
      objective: p99 < 300ms and errors < 1% over 30s
method:
  - fault: {name: slow, type: network.delay, duration: 30s, target: {interface: eth0}, delay: 100ms}
  - wait: 5s
)";

google::protobuf::Timestamp at(int64_t ms) {
  return TimeUtil::MillisecondsToTimestamp(1714564800000 + ms);
}

void addEvent(v1::Run& run, int64_t ms, const std::string& host, const std::string& kind, const std::string& msg) {
  auto* e = run.add_events();
  e->set_run_id(run.run_id());
  *e->mutable_at() = at(ms);
  e->set_host(host);
  e->set_kind(kind);
  e->set_message(msg);
}

void addSample(v1::Run& run, int64_t ms, const std::string& probe, const std::string& phase, bool ok, double latency) {
  auto* s = run.add_samples();
  *s->mutable_at() = at(ms);
  s->set_probe(probe);
  s->set_phase(phase);
  s->set_ok(ok);
  s->set_latency_ms(latency);
  s->set_detail(ok ? "200" : "status 503, expected 200 <&>");
}

void addCheck(v1::Run& run, int64_t ms, const std::string& phase, bool ok, double p99) {
  auto* c = run.add_slo_checks();
  *c->mutable_at() = at(ms);
  c->set_slo("api-slo");
  c->set_probe("api");
  c->set_objective("p99 < 300ms and errors < 1% over 30s");
  c->set_phase(phase);
  c->set_ok(ok);
  c->set_samples(3);
  auto* m = c->add_measures();
  m->set_sli("p99");
  m->set_value(p99);
  m->set_comparison("<");
  m->set_threshold(300);
  m->set_ok(p99 < 300);
}

// A run stopped in its first step by a violated SLO: the wait step never started.
v1::Run violatedRun() {
  v1::Run run;
  run.set_run_id("r-0001");
  run.set_experiment("checkout-latency");
  run.set_file_sha256(std::string(64, 'f'));
  run.set_trigger("ci");
  *run.mutable_started_at() = at(0);
  *run.mutable_ended_at() = at(12'500);
  run.set_verdict(v1::VERDICT_VIOLATED);
  run.set_reason("steady state violated: SLO api-slo violated while the fault was active: p99 812ms");
  addEvent(run, 0, "", "run.started", "checkout-latency");
  addEvent(run, 10, "", "targets.resolved", "2 host(s): web-1 (a1), web-2 (a2)");
  addEvent(run, 200, "", "step.fault", "step 1: network.delay 'slow' for 30s on 2 host(s)");
  addEvent(run, 250, "web-1", "fault.applied", "netem delay 100ms on eth0");
  addEvent(run, 260, "web-2", "fault.applied", "netem delay 100ms on eth0");
  addEvent(run, 11'000, "", "stop.condition", "steady state violated: SLO api-slo ...");
  addEvent(run, 11'020, "web-1", "fault.reverted", "");
  addEvent(run, 11'030, "web-2", "fault.reverted", "");
  addEvent(run, 12'500, "", "run.finished", "verdict: violated");
  for (int64_t t : {100, 1100, 2100}) {
    addSample(run, t, "api", "before", true, 12);
    addSample(run, t, "db", "before", true, 0.3);
  }
  addSample(run, 1300, "api", "during", true, 110);
  addSample(run, 2300, "api", "during", true, 812);
  addSample(run, 2300, "db", "during", false, 1000);
  addSample(run, 12'000, "api", "after", true, 14);
  addSample(run, 12'000, "db", "after", true, 0.4);
  addCheck(run, 100, "before", true, 12);
  addCheck(run, 1300, "during", true, 110);
  addCheck(run, 2300, "during", false, 812);
  addCheck(run, 12'000, "after", true, 14);
  return run;
}

Experiment parsed() {
  auto e = parseExperiment(kYaml, "checkout.yaml");
  REQUIRE(e.has_value());
  return *e;
}

// xmllint --schema; returns its exit code (0 valid) and keeps its output in `output`.
int xmllint(const std::string& xml, std::string& output) {
  const auto dir = std::filesystem::temp_directory_path();
  const auto file = dir / ("faultline-junit-" + std::to_string(::getpid()) + ".xml");
  const auto log = dir / ("faultline-junit-" + std::to_string(::getpid()) + ".log");
  std::ofstream(file) << xml;
  const std::string schema = std::string(FAULTLINE_SOURCE_DIR) + "/tests/junit/junit.xsd";
  const std::string cmd =
      "xmllint --noout --schema '" + schema + "' '" + file.string() + "' > '" + log.string() + "' 2>&1";
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

TEST_CASE("JUnit report: valid against the JUnit XSD; a test case per hypothesis check and per step") {
  REQUIRE_MESSAGE(std::system("xmllint --version > /dev/null 2>&1") == 0,
                  "xmllint is missing: scripts/deps installs it (Debian libxml2-utils)");
  const std::string xml = formatJUnit(violatedRun(), parsed(), "ci-runner-7");
  std::string output;
  CHECK_MESSAGE(xmllint(xml, output) == 0, output, "\n", xml);
  // 3 phases x (guard db + SLO api-slo) = 6 hypothesis checks, 2 steps.
  CHECK(has(xml, R"x(<testsuite name="checkout-latency" timestamp="2024-05-01T12:00:00" hostname="ci-runner-7" )x"
                 R"x(tests="8" failures="3" errors="0" skipped="1" time="12.500">)x"));
  CHECK(has(xml, R"x(<testcase name="before: probe db (guard)" classname="checkout-latency.steadyState")x"));
  CHECK(has(xml, R"x(<testcase name="during: probe db (guard)")x"));
  CHECK(has(xml, R"x(<failure message="1 of 1 sample(s) failed; first: status 503, expected 200 &lt;&amp;&gt;" )x"
                 R"x(type="violated">)x"));
  CHECK(has(xml, R"x(<testcase name="during: SLO api-slo (p99 &lt; 300ms and errors &lt; 1% over 30s)")x"));
  CHECK(has(xml, R"x(<failure message="violated: p99 812ms (&lt; 300ms) FAILED over 3 sample(s)")x"));
  CHECK(has(xml, R"x(<testcase name="step 1: fault slow" classname="checkout-latency.method" time="12.300">)x"));
  CHECK(has(xml, R"x(<failure message="violated: steady state violated: SLO api-slo)x"));
  CHECK(has(xml, R"x(<testcase name="step 2: wait" classname="checkout-latency.method" time="0.000">)x"));
  CHECK(has(xml, R"x(<skipped message="not started: the run ended first (violated: )x"));
  CHECK(has(xml, R"x(<property name="faultline.run_id" value="r-0001"/>)x"));
}

TEST_CASE("JUnit report: a held run has no failures; the schema check can fail") {
  v1::Run run = violatedRun();
  run.set_verdict(v1::VERDICT_HELD);
  run.set_reason("steady state held");
  run.clear_slo_checks();
  addCheck(run, 100, "before", true, 12);
  addCheck(run, 1300, "during", true, 110);
  addCheck(run, 12'000, "after", true, 14);
  for (auto& s : *run.mutable_samples()) {
    s.set_ok(true);
  }
  addEvent(run, 11'100, "", "step.wait", "step 2: wait 5s");
  const std::string xml = formatJUnit(run, parsed(), "");
  std::string output;
  CHECK_MESSAGE(xmllint(xml, output) == 0, output);
  CHECK(has(xml, R"x(hostname="localhost" tests="8" failures="0" errors="0" skipped="0")x"));
  // The XSD is no rubber stamp: a report without <system-err> or with two outcomes is refused.
  std::string broken = xml;
  broken.erase(broken.find("  <system-err></system-err>\n"), 28);
  CHECK(xmllint(broken, output) != 0);
  CHECK(has(output, "system-err"));
}

TEST_CASE("JUnit report: an execution error is an <error>") {
  v1::Run run = violatedRun();
  run.set_verdict(v1::VERDICT_ERROR);
  run.set_reason("fault slow failed on host web-2: EPERM");
  const std::string xml = formatJUnit(run, parsed(), "h");
  std::string output;
  CHECK_MESSAGE(xmllint(xml, output) == 0, output);
  CHECK(has(xml, R"x(<error message="error: fault slow failed on host web-2: EPERM" type="error">)x"));
}

TEST_CASE("journal: experiment, hosts, every event, every sample, SLIs, verdict") {
  const auto j = nlohmann::json::parse(formatJournal(violatedRun(), "checkout.yaml", kYaml));
  CHECK(j["format"] == "faultline-journal/v1");
  CHECK(j["run"]["id"] == "r-0001");
  CHECK(j["run"]["startedAt"] == "2024-05-01T12:00:00Z");
  CHECK(j["experiment"]["name"] == "checkout-latency");
  CHECK(j["experiment"]["file"] == "checkout.yaml");
  CHECK(j["experiment"]["yaml"] == kYaml);
  CHECK(j["hosts"] == nlohmann::json::array({"web-1", "web-2"}));
  CHECK(j["targets"][0] == "2 host(s): web-1 (a1), web-2 (a2)");
  CHECK(j["events"].size() == 9);
  CHECK(j["events"][8]["kind"] == "run.finished");
  CHECK(j["samples"].size() == 11);
  CHECK(j["samples"][8]["probe"] == "db");
  CHECK(j["samples"][8]["ok"] == false);
  CHECK(j["samples"][8]["latencyMs"] == 1000.0);
  CHECK(j["slis"].size() == 4);
  CHECK(j["slis"][2]["phase"] == "during");
  CHECK(j["slis"][2]["measures"][0]["sli"] == "p99");
  CHECK(j["slis"][2]["measures"][0]["value"] == 812.0);
  CHECK(j["slis"][2]["ok"] == false);
  CHECK(j["verdict"]["verdict"] == "violated");
  CHECK(j["verdict"]["exitCode"] == 1);
}

TEST_CASE("journal: the experiment as it ran, with --var values substituted except secrets") {
  const std::string yaml = "# ${IF} via $${LITERAL}\nname: x\nurl: http://h/?token=${API_TOKEN}&p=${db_password}\n";
  const Variables vars{{"IF", "eth0"}, {"API_TOKEN", "s3cr3t"}, {"db_password", "hunter2"}};
  const std::string text = formatJournal(violatedRun(), "x.yaml", yaml, vars);
  CHECK_FALSE(has(text, "s3cr3t"));
  CHECK_FALSE(has(text, "hunter2"));
  const auto j = nlohmann::json::parse(text);
  CHECK(j["experiment"]["yaml"] ==
        "# eth0 via ${LITERAL}\nname: x\nurl: http://h/?token=${API_TOKEN}&p=${db_password}\n");
  CHECK(j["experiment"]["variables"] == nlohmann::json::parse(R"([{"name": "API_TOKEN", "redacted": true},
                                                                  {"name": "IF", "value": "eth0"},
                                                                  {"name": "db_password", "redacted": true}])"));
  CHECK(isSecretVariableName("MY_Secret_KEY"));
  CHECK_FALSE(isSecretVariableName("TOKE"));
}

TEST_CASE("journal: a --secret-var is redacted whatever its name; DB_PASS and APIKEY are secrets by name") {
  const std::string yaml = "url: http://h/?k=${APIKEY}&p=${DB_PASS}&c=${CUSTOMER}&r=${REGION}\n";
  const Variables vars{{"APIKEY", "k-123456"}, {"DB_PASS", "pw-654321"}, {"CUSTOMER", "acme-4242"}, {"REGION", "eu"}};
  const std::string text = formatJournal(violatedRun(), "x.yaml", yaml, vars, SecretNames{"CUSTOMER"});
  CHECK_FALSE(has(text, "k-123456"));
  CHECK_FALSE(has(text, "pw-654321"));
  CHECK_FALSE(has(text, "acme-4242"));
  const auto j = nlohmann::json::parse(text);
  CHECK(j["experiment"]["yaml"] == "url: http://h/?k=${APIKEY}&p=${DB_PASS}&c=${CUSTOMER}&r=eu\n");
  CHECK(j["experiment"]["variables"] == nlohmann::json::parse(R"([{"name": "APIKEY", "redacted": true},
                                                                  {"name": "CUSTOMER", "redacted": true},
                                                                  {"name": "DB_PASS", "redacted": true},
                                                                  {"name": "REGION", "value": "eu"}])"));
  for (const char* name : {"DB_PASS", "APIKEY", "ssh_key", "aws_credentials", "PASSWD", "api_token"}) {
    CAPTURE(name);
    CHECK(isSecretVariableName(name));
  }
  CHECK_FALSE(isSecretVariableName("REGION"));
  CHECK(redactSecrets("pid acme-4242 in eu, key k-123456", vars, SecretNames{"CUSTOMER"}) ==
        "pid ${CUSTOMER} in eu, key ${APIKEY}");
  CHECK(redactSecrets("acme-4242", vars) == "acme-4242");  // not a secret without --secret-var
}

TEST_CASE("show: the faults' windows and the SLIs") {
  setenv("TZ", "UTC0", 1);
  tzset();
  const std::string text = formatTimeline(violatedRun());
  CHECK(has(text,
            "faults\nAGENT  STEP      FROM       TO     HELD  END\n"
            "web-1  step 1  +0.250  +11.020  10.770s  reverted\n"
            "web-2  step 1  +0.260  +11.030  10.770s  reverted\n"));
  CHECK(has(text,
            "slos\nSLO      PHASE   CHECKS  FAILED  SLIS (FIRST FAILED, ELSE LAST)\n"
            "api-slo  before       1       0  p99 12ms (< 300ms) over 3 sample(s)\n"
            "api-slo  during       2       1  p99 812ms (< 300ms) FAILED over 3 sample(s)\n"
            "api-slo  after        1       0  p99 14ms (< 300ms) over 3 sample(s)\n"));
}

TEST_CASE("show: the faults of a parallel group on one host each get their own step and end") {
  setenv("TZ", "UTC0", 1);
  tzset();
  v1::Run run;
  run.set_run_id("r-0002");
  *run.mutable_started_at() = at(0);
  *run.mutable_ended_at() = at(9'000);
  addEvent(run, 100, "", "step.fault", "step 2.1: network.delay 'slow' for 5s on 1 host(s)");
  addEvent(run, 110, "", "step.fault", "step 2.2: process.pause 'freeze' for 2s on 1 host(s)");
  const auto withId = [&](int64_t ms, const std::string& kind, const std::string& step) {
    addEvent(run, ms, "web-1", kind, "");
    run.mutable_events()->rbegin()->set_fault_id("r-0002/" + step + "/a1");
  };
  withId(150, "fault.applied", "2.1");
  withId(160, "fault.applied", "2.2");
  withId(2'160, "fault.expired", "2.2");  // the pause ends first
  withId(5'150, "fault.expired", "2.1");
  const std::string text = formatTimeline(run);
  CHECK_MESSAGE(has(text,
                    "faults\nAGENT  STEP        FROM      TO    HELD  END\n"
                    "web-1  step 2.1  +0.150  +5.150  5.000s  expired\n"
                    "web-1  step 2.2  +0.160  +2.160  2.000s  expired\n"),
                text);
}

TEST_CASE("show and journal: three agents of one host are named by id; fault.ended closes each window") {
  setenv("TZ", "UTC0", 1);
  tzset();
  v1::Run run;
  run.set_run_id("r-0003");
  *run.mutable_started_at() = at(0);
  *run.mutable_ended_at() = at(3'000);
  addEvent(run, 100, "", "step.fault", "step 1: process.pause 'freeze' for 2s on 3 host(s)");
  const auto faultEvent = [&](int64_t ms, const std::string& agent, const std::string& kind) -> v1::RunEvent& {
    addEvent(run, ms, "vm", kind, "");
    auto& e = *run.mutable_events()->rbegin();
    e.set_fault_id("r-0003/1/" + agent);
    e.set_agent_id(agent);
    return e;
  };
  for (const std::string agent : {"agent-a", "agent-b", "vm"}) {
    faultEvent(150, agent, "fault.applied");
  }
  // agent-a: its own timer first, then the run's revert is confirmed "not held"; one end.
  faultEvent(2'150, "agent-a", "fault.expired");
  faultEvent(2'160, "agent-a", "fault.reverted");
  const auto end = [&](int64_t ms, const std::string& agent, const std::string& reason) {
    auto& e = faultEvent(ms, agent, "fault.ended");
    e.set_fault_kind("process.pause");
    e.set_end_reason(reason);
    *e.mutable_applied_at() = at(150);
  };
  end(2'150, "agent-a", "expired");
  end(2'155, "agent-b", "expired");
  end(900, "vm", "aborted");
  const std::string text = formatTimeline(run);
  CHECK_MESSAGE(has(text,
                    "faults\nAGENT         STEP      FROM      TO    HELD  END\n"
                    "agent-a (vm)  step 1  +0.150  +2.150  2.000s  expired\n"
                    "agent-b (vm)  step 1  +0.150  +2.155  2.005s  expired\n"
                    "vm            step 1  +0.150  +0.900  0.750s  aborted\n"),
                text);
  CHECK_MESSAGE(has(text, "+2.150  agent-a (vm)  fault.ended"), text);

  const auto j = nlohmann::json::parse(formatJournal(run, "x.yaml", "name: x\n"));
  CHECK(j["hosts"] == nlohmann::json::array({"vm"}));
  CHECK(j["agents"] == nlohmann::json::parse(R"([{"id": "agent-a", "hostname": "vm"},
                                                {"id": "agent-b", "hostname": "vm"},
                                                {"id": "vm", "hostname": "vm"}])"));
  size_t ends = 0;
  for (const auto& e : j["events"]) {
    if (e["kind"] == "fault.ended") {
      ++ends;
      CHECK(e["faultKind"] == "process.pause");
      CHECK(e["appliedAt"] == "2024-05-01T12:00:00.150Z");
      CHECK(e["endedAt"] == e["at"]);
      CHECK(e.contains("endReason"));
      CHECK(e["faultId"] == "r-0003/1/" + e["agentId"].get<std::string>());
    }
  }
  CHECK(ends == 3);
  CHECK(agentName("agent-b", "vm") == "agent-b (vm)");
  CHECK(agentName("web-1", "web-1") == "web-1");
  CHECK(agentName("", "web-1") == "web-1");  // a record from before events carried the agent id
}

TEST_CASE("JUnit report: probe steps and a parallel group; each top-level step is one case") {
  std::string yaml = kYaml.substr(0, kYaml.find("method:"));
  yaml +=
      "method:\n"
      "  - probe: api\n"
      "  - parallel:\n"
      "      - fault: {name: slow, type: network.delay, duration: 5s, target: {interface: eth0}, delay: 100ms}\n"
      "      - probe: db\n"
      "      - wait: 5s\n"
      "  - wait: 1s\n";
  auto experiment = parseExperiment(yaml, "parallel.yaml");
  REQUIRE(experiment.has_value());
  v1::Run run;
  run.set_run_id("r-0002");
  run.set_experiment("checkout-latency");
  *run.mutable_started_at() = at(0);
  *run.mutable_ended_at() = at(7'000);
  run.set_verdict(v1::VERDICT_VIOLATED);
  run.set_reason("steady state violated: probe api failed at a probe step of the method: status 503");
  addEvent(run, 100, "", "step.probe", "step 1: probe api");
  addEvent(run, 200, "", "step.parallel", "step 2: 3 step(s) started together");
  addEvent(run, 200, "", "step.fault", "step 2.1: network.delay 'slow' for 5s on 1 host(s)");
  addEvent(run, 210, "", "step.wait", "step 2.3: wait 5s");
  addEvent(run, 460, "", "step.skew", "step 2.1: 1 host(s) applied within 0.000 ms of each other");
  addEvent(run, 6'000, "", "step.wait", "step 3: wait 1s");
  addSample(run, 50, "api", "before", true, 10);
  addSample(run, 50, "db", "before", true, 0.3);
  addSample(run, 110, "api", "step", false, 20);
  addSample(run, 470, "db", "step", true, 0.5);
  addSample(run, 6'900, "api", "after", true, 10);
  addSample(run, 6'900, "db", "after", true, 0.3);
  const std::string xml = formatJUnit(run, *experiment, "h");
  std::string output;
  CHECK_MESSAGE(xmllint(xml, output) == 0, output, "\n", xml);
  // 3 phases x (guard db + SLO api-slo) + step: api and db = 8 hypothesis checks; 3 steps.
  CHECK(has(xml, R"x(tests="11" failures="1" errors="0" skipped="4")x"));
  CHECK(has(xml, R"x(<testcase name="step: probe api" classname="checkout-latency.steadyState")x"));
  CHECK(has(xml, R"x(<testcase name="step: probe db (guard)" classname="checkout-latency.steadyState")x"));
  CHECK(has(xml, R"x(<testcase name="step 1: probe api" classname="checkout-latency.method" time="0.100")x"));
  CHECK(has(xml, R"x(<testcase name="step 2: parallel (3 steps)" classname="checkout-latency.method" time="5.800")x"));
  CHECK(has(xml, R"x(<testcase name="step 3: wait" classname="checkout-latency.method" time="1.000")x"));
}

TEST_CASE("show and journal: p50, p90, p99 and max of the successful samples per fault step; recovery") {
  setenv("TZ", "UTC0", 1);
  tzset();
  v1::Run run;
  run.set_run_id("r-0003");
  run.set_experiment("checkout-latency");
  *run.mutable_started_at() = at(0);
  *run.mutable_ended_at() = at(20'000);
  run.set_verdict(v1::VERDICT_HELD);
  addEvent(run, 100, "", "step.fault", "step 1: network.delay 'slow' for 5s on 1 host(s)");
  addEvent(run, 8'000, "", "step.fault", "step 3: network.delay 'slower' for 5s on 1 host(s)");
  addEvent(run, 7'000, "", "step.recovered", "step 1: recovered 1.9s after its revert (every SLO held again)");
  *run.mutable_events()->rbegin()->mutable_recovery() = TimeUtil::MillisecondsToDuration(1'900);
  addEvent(run, 19'000, "", "step.not_recovered", "step 3: not recovered within the 6s observed after its revert");
  *run.mutable_events()->rbegin()->mutable_recovery() = TimeUtil::MillisecondsToDuration(6'000);
  addSample(run, 0, "api", "before", true, 10);
  // Step 1: latencies 1..10 ms and two failures (a refused connection's 0.2 ms is no latency).
  for (int i = 1; i <= 10; ++i) {
    addSample(run, 100 + i, "api", "during", true, i);
    run.mutable_samples()->rbegin()->set_step("1");
  }
  for (int i = 0; i < 2; ++i) {
    addSample(run, 200 + i, "api", "during", false, 0.2);
    run.mutable_samples()->rbegin()->set_step("1");
  }
  addSample(run, 6'000, "api", "wait", true, 3);
  run.mutable_samples()->rbegin()->set_step("2");
  // Step 3: only failures.
  addSample(run, 8'100, "api", "during", false, 0.1);
  run.mutable_samples()->rbegin()->set_step("3");
  addSample(run, 15'000, "api", "after", true, 20);
  addCheck(run, 300, "during", false, 400);
  run.mutable_slo_checks()->rbegin()->set_not_enough_data(true);
  run.mutable_slo_checks()->rbegin()->set_min_samples(5);

  const std::string text = formatTimeline(run);
  CHECK(has(text,
            "PROBE  PHASE   STEP  SAMPLES  FAILED  P50 MS  P90 MS  P99 MS  MAX MS\n"
            "api    before  -           1       0    10.0    10.0    10.0    10.0\n"
            "api    during  1          12       2     5.0     9.0    10.0    10.0\n"
            "api    wait    2           1       0     3.0     3.0     3.0     3.0\n"
            "api    during  3           1       1       -       -       -       -\n"
            "api    after   -           1       0    20.0    20.0    20.0    20.0\n"));
  CHECK(has(text,
            "recovery (from a step's revert until every SLO held again)\n"
            "step 1: recovered 1.9s after its revert (every SLO held again)\n"
            "step 3: not recovered within the 6s observed after its revert\n"));
  // Too few samples judges nothing: not counted as failed.
  CHECK(has(text, "api-slo  during       1       0  not enough data: 3 of 5 sample(s) (p99 400ms (< 300ms))\n"));

  const auto j = nlohmann::json::parse(formatJournal(run, "x.yaml", kYaml));
  REQUIRE(j["latencies"].size() == 5);
  CHECK(j["latencies"][1] == nlohmann::json::parse(R"({"probe": "api", "phase": "during", "step": "1",
      "samples": 12, "failed": 2, "p50Ms": 5.0, "p90Ms": 9.0, "p99Ms": 10.0, "maxMs": 10.0})"));
  CHECK(j["latencies"][3]["p99Ms"].is_null());
  REQUIRE(j["recovery"].size() == 2);
  CHECK(j["recovery"][0]["recovered"] == true);
  CHECK(j["recovery"][0]["ms"] == 1900.0);
  CHECK(j["recovery"][1]["recovered"] == false);
  CHECK(j["slis"][0]["notEnoughData"] == true);
  CHECK(j["slis"][0]["minSamples"] == 5);
  CHECK(j["samples"][1]["step"] == "1");

  const std::string xml = formatJUnit(run, parsed(), "h");
  std::string output;
  CHECK_MESSAGE(xmllint(xml, output) == 0, output);
  CHECK(has(xml, R"(<property name="faultline.recovery.step-1" value="step 1: recovered 1.9s after its revert)"));
}
