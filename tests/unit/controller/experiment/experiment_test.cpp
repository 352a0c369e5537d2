#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/faults/spec.h"
#include "controller/experiment/experiment.h"
#include "controller/probes/probe.h"

using namespace faultline;
using namespace faultline::controller;
using namespace std::chrono_literals;

namespace {

std::string allDiagnostics(const std::vector<Diagnostic>& diagnostics) {
  std::string out;
  for (const Diagnostic& d : diagnostics) {
    out += format(d) + "\n";
  }
  return out;
}

// The diagnostics of a file that must not parse.
std::vector<Diagnostic> errorsOf(const std::string& yaml) {
  auto result = parseExperiment(yaml, "bad.yaml");
  REQUIRE_FALSE(result.has_value());
  return result.error();
}

bool hasDiagnostic(const std::vector<Diagnostic>& diagnostics, const std::string& field, int line,
                   const std::string& phrase) {
  for (const Diagnostic& d : diagnostics) {
    if (d.field == field && d.line == line && d.message.find(phrase) != std::string::npos) {
      return true;
    }
  }
  return false;
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string repeat(const std::string& text, size_t times) {
  std::string out;
  out.reserve(text.size() * times);
  for (size_t i = 0; i < times; ++i) {
    out += text;
  }
  return out;
}

const FaultStep& faultAt(const Experiment& e, size_t i) {
  REQUIRE(i < e.method.size());
  REQUIRE(std::holds_alternative<FaultStep>(e.method[i]));
  return std::get<FaultStep>(e.method[i]);
}

const WaitStep& waitAt(const Experiment& e, size_t i) {
  REQUIRE(i < e.method.size());
  REQUIRE(std::holds_alternative<WaitStep>(e.method[i]));
  return std::get<WaitStep>(e.method[i]);
}

// Lines 1-4; the cases below start at line 5.
constexpr const char* kHeader =
    "apiVersion: faultline/v1\n"
    "kind: Experiment\n"
    "metadata:\n"
    "  name: t\n";

constexpr const char* kFullFile = R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: quickstart
  description: free text
targets:
  selector: {role: demo, zone: "b"}
  mode: count(3)
steadyState:
  every: 500ms
  probes:
    - name: demo-http
      http:
        url: http://10.77.0.1:8080/
        expectStatus: 204
        maxLatency: 300ms
        timeout: 2s
    - name: defaults
      http:
        url: http://[::1]:9000/healthz
method:
  - fault:
      name: slow-link
      type: network.bandwidth
      duration: 5s
      target: {interface: veth-svc, netns: /var/run/netns/fl-qs-svc}
      rate: 1mbit
      burst: 32kb
      limit: 64kib
  - wait: 1s
  - fault:
      type: network.delay
      duration: 1.5s
      target: {interface: veth-svc}
      delay: 100ms
      jitter: 10ms
      correlation: 25
  - fault:
      type: network.loss
      duration: 5s
      target: {interface: veth-svc}
      percent: 30%
      correlation: 0
  - fault:
      type: process.kill
      duration: 1s
      process: {name: faultline-demo}
      signal: TERM
  - fault:
      type: process.kill
      duration: 2m
      process: {pid: 1234}
)";

}  // namespace

TEST_CASE("a full experiment parses into exact values") {
  auto result = parseExperiment(kFullFile, "full.yaml");
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  const Experiment& e = *result;
  CHECK(e.name == "quickstart");
  CHECK(e.description == "free text");
  CHECK(e.targets.selector == std::map<std::string, std::string>{{"role", "demo"}, {"zone", "b"}});
  CHECK(e.targets.mode == TargetMode::kCount);
  CHECK(e.targets.n == 3);

  CHECK(e.hypothesis.every == 500ms);
  REQUIRE(e.hypothesis.probes.size() == 2);
  CHECK(e.hypothesis.probes[0].name == "demo-http");
  CHECK(e.hypothesis.probes[0].http.url == "http://10.77.0.1:8080/");
  CHECK(e.hypothesis.probes[0].http.expectStatus == std::vector<int>{204});
  CHECK(e.hypothesis.probes[0].http.maxLatency == 300ms);
  CHECK(e.hypothesis.probes[0].http.timeout == 2s);
  CHECK(e.hypothesis.probes[1].http.expectStatus == std::vector<int>{200});  // defaults
  CHECK(e.hypothesis.probes[1].http.maxLatency == 1s);
  CHECK(e.hypothesis.probes[1].http.timeout == 2s);

  REQUIRE(e.method.size() == 6);
  const FaultStep& bandwidth = faultAt(e, 0);
  CHECK(bandwidth.name == "slow-link");
  CHECK(bandwidth.duration == 5s);
  REQUIRE(bandwidth.spec.has_network_bandwidth());
  CHECK(bandwidth.spec.network_bandwidth().rate_bps() == 1'000'000);
  CHECK(bandwidth.spec.network_bandwidth().burst_bytes() == 32 * 1024);
  CHECK(bandwidth.spec.network_bandwidth().limit_bytes() == 64 * 1024);
  CHECK(bandwidth.spec.network_bandwidth().target().interface() == "veth-svc");
  CHECK(bandwidth.spec.network_bandwidth().target().netns() == "/var/run/netns/fl-qs-svc");

  CHECK(waitAt(e, 1).duration == 1s);

  const FaultStep& delay = faultAt(e, 2);
  CHECK(delay.name == "network.delay");  // default: the type
  CHECK(delay.duration == 1500ms);
  REQUIRE(delay.spec.has_network_delay());
  CHECK(toMicros(delay.spec.network_delay().delay()) == 100ms);
  CHECK(toMicros(delay.spec.network_delay().jitter()) == 10ms);
  CHECK(delay.spec.network_delay().correlation() == 25.0);
  CHECK(delay.spec.network_delay().target().netns().empty());

  const FaultStep& loss = faultAt(e, 3);
  REQUIRE(loss.spec.has_network_loss());
  CHECK(loss.spec.network_loss().percent() == 30.0);
  CHECK(loss.spec.network_loss().correlation() == 0.0);

  const FaultStep& killByName = faultAt(e, 4);
  REQUIRE(killByName.spec.has_process_kill());
  CHECK(killByName.spec.process_kill().process().name() == "faultline-demo");
  CHECK(killByName.spec.process_kill().signal() == "TERM");
  CHECK(killByName.duration == 1s);

  const FaultStep& killByPid = faultAt(e, 5);
  CHECK(killByPid.spec.process_kill().process().pid() == 1234);
  CHECK(killByPid.spec.process_kill().signal() == "SIGKILL");  // default
  CHECK(killByPid.duration == 120s);
}

TEST_CASE("defaults of a minimal experiment") {
  auto result = parseExperiment(std::string(kHeader) + "method:\n  - wait: 250ms\n", "min.yaml");
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  CHECK(result->targets.selector.empty());
  CHECK(result->targets.mode == TargetMode::kAll);
  CHECK(result->hypothesis.probes.empty());
  CHECK(result->hypothesis.every == 1s);
  CHECK(waitAt(*result, 0).duration == 250ms);
}

TEST_CASE("steps keep the order of the file") {
  const std::string yaml = std::string(kHeader) +
                           "method:\n"
                           "  - wait: 3s\n"
                           "  - fault: {type: process.kill, duration: 1s, process: {pid: 42}}\n"
                           "  - wait: 1s\n"
                           "  - fault: {type: network.loss, duration: 2s, target: {interface: eth0}, percent: 1}\n"
                           "  - wait: 2s\n";
  auto result = parseExperiment(yaml, "order.yaml");
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  REQUIRE(result->method.size() == 5);
  CHECK(waitAt(*result, 0).duration == 3s);
  CHECK(faultAt(*result, 1).spec.has_process_kill());
  CHECK(waitAt(*result, 2).duration == 1s);
  CHECK(faultAt(*result, 3).spec.has_network_loss());
  CHECK(waitAt(*result, 4).duration == 2s);
}

TEST_CASE("bad files: each error names the field, the line and what is wrong") {
  struct Case {
    const char* what;
    std::string yaml;
    std::string field;
    int line;
    std::string phrase;
  };
  const std::string h = kHeader;
  const std::string wait = "method:\n  - wait: 1s\n";
  const std::string probe =
      "steadyState:\n"   // 5
      "  probes:\n"      // 6
      "    - name: p\n"  // 7
      "      http:\n";   // 8
  const std::vector<Case> cases = {
      {"unknown key", h + "colour: red\n" + wait, "colour", 5, "unknown key 'colour'"},
      {"unknown key lists what is accepted", h + "colour: red\n" + wait, "colour", 5,
       "accepted here: apiVersion, kind, metadata, variables, targets, steadyState, method"},
      {"misspelt key gets a suggestion", h + probe + "        url: http://a/\n        expectStaus: 200\n" + wait,
       "steadyState.probes[0].http.expectStaus", 10, "did you mean 'expectStatus'?"},
      {"misspelt top-level key", h + "metod:\n  - wait: 1s\n", "metod", 5, "did you mean 'method'?"},
      {"wrong type: list for a duration", h + "method:\n  - wait: [1s]\n", "method[0].wait", 6, "wrong type"},
      {"wrong type: scalar for a map", h + "targets: everything\n" + wait, "targets", 5, "wrong type"},
      {"wrong type: text for a status", h + probe + "        url: http://a/\n        expectStatus: ok\n" + wait,
       "steadyState.probes[0].http.expectStatus", 10, "'ok' is not a status"},
      {"missing required key points at the parent map",
       "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  description: x\n" + wait, "metadata.name", 4,
       "is required"},
      {"missing method", h, "method", 1, "is required"},
      {"probe step naming no probe", h + probe + "        url: http://a/\nmethod:\n  - probe: q\n", "method[0].probe",
       11, "no probe named 'q' in steadyState.probes (did you mean 'p'?); accepted: p"},
      {"two kinds in one step", h + "method:\n  - {wait: 1s, probe: x}\n", "method[0]", 6, "has both wait and probe"},
      {"nested parallel", h + "method:\n  - parallel:\n    - parallel: [{wait: 1s}]\n",
       "method[0].parallel[0].parallel", 7, "unknown key 'parallel'"},
      {"empty parallel", h + "method:\n  - parallel: []\n", "method[0].parallel", 6, "is empty"},
      {"misspelt step", h + "method:\n  - paralel: [{wait: 1s}]\n", "method[0].paralel", 6, "did you mean 'parallel'?"},
      {"percent out of range",
       h + "method:\n  - fault:\n      type: network.loss\n      duration: 1s\n      target: {interface: eth0}\n"
           "      percent: 150\n",
       "method[0].fault.percent", 10, "out of range"},
      {"jitter greater than delay",
       h + "method:\n  - fault:\n      type: network.delay\n      duration: 1s\n      target: {interface: eth0}\n"
           "      delay: 10ms\n      jitter: 20ms\n",
       "method[0].fault.jitter", 11, "up to the delay (10ms)"},
      {"reorder is not a v1 key",
       h + "method:\n  - fault:\n      type: network.delay\n      duration: 1s\n      target: {interface: eth0}\n"
           "      delay: 10ms\n      reorder: 25\n",
       "method[0].fault.reorder", 11, "unknown key 'reorder'"},
      {"key of another fault type",
       h + "method:\n  - fault:\n      type: network.delay\n      duration: 1s\n      target: {interface: eth0}\n"
           "      delay: 10ms\n      percent: 5\n",
       "method[0].fault.percent", 11,
       "belongs to network.loss, network.duplicate, network.corrupt, network.reorder, not to network.delay"},
      {"https is refused", h + probe + "        url: https://a/\n" + wait, "steadyState.probes[0].http.url", 9,
       "https"},
      {"both pid and name",
       h + "method:\n  - fault:\n      type: process.kill\n      duration: 1s\n      process: {pid: 12, name: x}\n",
       "method[0].fault.process", 9, "both pid and name"},
      {"count(0)", h + "targets:\n  mode: count(0)\n" + wait, "targets.mode", 6, "out of range"},
      {"unknown mode", h + "targets:\n  mode: some\n" + wait, "targets.mode", 6, "not a mode"},
      {"misspelt mode", h + "targets:\n  mode: randon(2)\n" + wait, "targets.mode", 6, "did you mean 'random'?"},
      {"random(0)", h + "targets:\n  mode: random(0)\n" + wait, "targets.mode", 6, "out of range"},
      {"percent(0)", h + "targets:\n  mode: percent(0)\n" + wait, "targets.mode", 6, "out of range"},
      {"percent(101)", h + "targets:\n  mode: percent(101)\n" + wait, "targets.mode", 6, "out of range"},
      {"percent(x)", h + "targets:\n  mode: percent(x)\n" + wait, "targets.mode", 6, "not a mode"},
      {"syntax error", h + "method:\n  - wait: [1s\n", "", 7, "YAML syntax error"},
      {"a probe name with a terminal escape",
       h + "steadyState:\n  probes:\n    - name: \"p\\e[2J\"\n      http: {url: http://a/}\n" + wait,
       "steadyState.probes[0].name", 7, "has a control character (0x1b) at byte 2; accepted: a name unique among"},
      {"a step name with a newline",
       h + "method:\n  - fault:\n      name: \"a\\nFAKE run.finished\"\n      type: process.kill\n      duration: "
           "1s\n      process: {pid: 12}\n",
       "method[0].fault.name", 7, "has a control character (0x0a) at byte 2"},
      {"duplicate probe name",
       h + probe + "        url: http://a/\n    - name: p\n      http: {url: http://b/}\n" + wait,
       "steadyState.probes[1].name", 10, "duplicate probe name 'p' (first used at line 7)"},
      {"empty method", h + "method: []\n", "method", 5, "is empty"},
      {"method without value", h + "method:\n", "method", 5, "has no value"},
      {"empty probes", h + "steadyState:\n  probes: []\n" + wait, "steadyState.probes", 6, "is empty"},
      {"every below 50ms", h + "steadyState:\n  every: 10ms\n  probes: [{name: a, http: {url: http://a/}}]\n" + wait,
       "steadyState.every", 6, "from 50ms to 1h"},
      {"timeout shorter than maxLatency", h + probe + "        url: http://a/\n        maxLatency: 3s\n" + wait,
       "steadyState.probes[0].http.maxLatency", 10, "timeout 2s (the default) is shorter than maxLatency 3s"},
      {"duration without unit", h + "method:\n  - wait: 5\n", "method[0].wait", 6, "has no known unit"},
      {"wait of zero", h + "method:\n  - wait: 0s\n", "method[0].wait", 6, "out of range"},
      {"fault over an hour", h + "method:\n  - fault: {type: process.kill, duration: 2h, process: {pid: 9}}\n",
       "method[0].fault.duration", 6, "from 1ms to 1h (default 60s)"},
      {"rate without unit",
       h + "method:\n  - fault: {type: network.bandwidth, duration: 1s, target: {interface: eth0}, rate: 1000}\n",
       "method[0].fault.rate", 6, "has no unit"},
      {"rate in bytes per second",
       h + "method:\n  - fault: {type: network.bandwidth, duration: 1s, target: {interface: eth0}, rate: 1mbps}\n",
       "method[0].fault.rate", 6, "bytes per second"},
      {"burst with a bit unit",
       h + "method:\n  - fault: {type: network.bandwidth, duration: 1s, target: {interface: eth0}, rate: 1mbit, "
           "burst: 32kbit}\n",
       "method[0].fault.burst", 6, "unknown unit 'kbit'"},
      {"unknown fault type gets a suggestion", h + "method:\n  - fault: {type: network.dealy, duration: 1s}\n",
       "method[0].fault.type", 6, "did you mean 'network.delay'?"},
      {"bad interface name from validateFaultSpec",
       h + "method:\n  - fault:\n      type: network.loss\n      duration: 1s\n"
           "      target: {interface: this-name-is-too-long}\n      percent: 5\n",
       "method[0].fault.target.interface", 9, "not a Linux interface name"},
      {"pid 1 is protected", h + "method:\n  - fault: {type: process.kill, duration: 1s, process: {pid: 1}}\n",
       "method[0].fault.process.pid", 6, "pid 1 is never a target"},
      {"unknown signal",
       h + "method:\n  - fault: {type: process.kill, duration: 1s, process: {name: x}, signal: SIGNOPE}\n",
       "method[0].fault.signal", 6, "not a signal"},
      {"step with fault and wait", h + "method:\n  - wait: 1s\n    fault: {type: process.kill}\n", "method[0]", 6,
       "both fault and wait"},
      {"wrong apiVersion", "apiVersion: faultline/v2\nkind: Experiment\nmetadata: {name: a}\n" + wait, "apiVersion", 1,
       "accepted: faultline/v1"},
      {"bad experiment name", "apiVersion: faultline/v1\nkind: Experiment\nmetadata: {name: Quick Start}\n" + wait,
       "metadata.name", 3, "not a valid name"},
      {"duplicate key", h + "method:\n  - wait: 1s\nmethod:\n  - wait: 2s\n", "method", 7,
       "duplicate key 'method' (first at line 5)"},
      {"two documents", h + wait + "---\nkind: Experiment\n", "", 8, "one experiment per file"},
      {"empty file", "# nothing here\n", "", 1, "the file is empty"},
      {"selector value is a map", h + "targets:\n  selector: {role: {a: b}}\n" + wait, "targets.selector.role", 6,
       "wrong type"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    const std::vector<Diagnostic> diagnostics = errorsOf(c.yaml);
    const std::string text = allDiagnostics(diagnostics);
    CAPTURE(text);
    CHECK(hasDiagnostic(diagnostics, c.field, c.line, c.phrase));
  }
}

TEST_CASE("all errors are collected, not just the first") {
  const std::string yaml =
      "apiVersion: faultline/v1\n"                     // 1
      "kind: Experimnet\n"                             // 2
      "metadata:\n"                                    // 3
      "  name: ok\n"                                   // 4
      "method:\n"                                      // 5
      "  - fault:\n"                                   // 6
      "      type: network.delay\n"                    // 7
      "      duration: 1s\n"                           // 8
      "      target: {interface: eth0}\n"              // 9
      "      delay: 0s\n"                              // 10
      "      correlation: 101\n"                       // 11
      "  - wait: soon\n"                               // 12
      "  - fault:\n"                                   // 13
      "      type: network.loss\n"                     // 14
      "      duration: 1s\n"                           // 15
      "      target: {interface: eth0, netns: rel}\n"  // 16
      "      percent: 0\n";                            // 17
  const std::vector<Diagnostic> d = errorsOf(yaml);
  CAPTURE(allDiagnostics(d));
  CHECK(hasDiagnostic(d, "kind", 2, "accepted: Experiment"));
  CHECK(hasDiagnostic(d, "method[0].fault.delay", 10, "out of range"));
  CHECK(hasDiagnostic(d, "method[0].fault.correlation", 11, "out of range"));
  CHECK(hasDiagnostic(d, "method[1].wait", 12, "not a duration"));
  CHECK(hasDiagnostic(d, "method[2].fault.target.netns", 16, "absolute path"));
  CHECK(hasDiagnostic(d, "method[2].fault.percent", 17, "out of range"));
  CHECK(d.size() == 6);
}

TEST_CASE("a fault with a malformed field is still validated, without repeating that field") {
  const std::string yaml = std::string(kHeader) +
                           "method:\n"                             // 5
                           "  - fault:\n"                          // 6
                           "      type: network.delay\n"           // 7
                           "      duration: 1s\n"                  // 8
                           "      target: {interface: \"a:b\"}\n"  // 9
                           "      delay: 2h\n"                     // 10
                           "      correlation: lots\n"             // 11
                           "  - fault:\n"                          // 12
                           "      type: process.kill\n"            // 13
                           "      duration: 1s\n"                  // 14
                           "      process: {pid: abc}\n"           // 15
                           "      signal: NOPE\n";                 // 16
  const std::vector<Diagnostic> d = errorsOf(yaml);
  CAPTURE(allDiagnostics(d));
  CHECK(hasDiagnostic(d, "method[0].fault.target.interface", 9, "not a Linux interface name"));
  CHECK(hasDiagnostic(d, "method[0].fault.delay", 10, "out of range"));
  CHECK(hasDiagnostic(d, "method[0].fault.correlation", 11, "not a percentage"));
  CHECK(hasDiagnostic(d, "method[1].fault.process.pid", 15, "not a whole number"));
  CHECK(hasDiagnostic(d, "method[1].fault.signal", 16, "not a signal"));
  CHECK(d.size() == 5);
}

TEST_CASE("diagnostics carry file, line, column and format as FILE:LINE:COLUMN: FIELD: MESSAGE") {
  auto result = parseExperiment(std::string(kHeader) + "method:\n  - wait: 5\n", "exp.yaml");
  REQUIRE_FALSE(result.has_value());
  REQUIRE(result.error().size() == 1);
  const Diagnostic& d = result.error().front();
  CHECK(d.file == "exp.yaml");
  CHECK(d.line == 6);
  CHECK(d.column == 11);
  CHECK(d.field == "method[0].wait");
  CHECK(format(d) == "exp.yaml:6:11: method[0].wait: " + d.message);
  CHECK(format(Diagnostic{"f.yaml", 3, 4, "", "YAML syntax error: x"}) == "f.yaml:3:4: YAML syntax error: x");
}

TEST_CASE("every file in experiments/ parses") {
  const std::filesystem::path dir = std::filesystem::path(FAULTLINE_SOURCE_DIR) / "experiments";
  int files = 0;
  std::set<std::string> kinds;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") {
      continue;
    }
    ++files;
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    // quickstart.yaml takes the quickstart's PID as RUN (faultline run --var RUN=PID).
    auto result = parseExperiment(text.str(), entry.path().string(), Variables{{"RUN", "4242"}});
    CHECK_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
    if (!result) {
      continue;
    }
    const auto note = [&](const FaultStep& f) {
      kinds.insert(std::string(faultKindName(f.spec)));
      if (f.spec.has_process_kill() && f.spec.process_kill().process().count() > 0) {
        kinds.insert("process.kill with count");
      }
    };
    for (const auto& step : result->method) {
      if (const auto* f = std::get_if<FaultStep>(&step)) {
        note(*f);
      } else if (const auto* p = std::get_if<ParallelStep>(&step)) {
        for (const auto& member : p->steps) {
          if (const auto* pf = std::get_if<FaultStep>(&member)) {
            note(*pf);
          }
        }
      }
    }
  }
  CHECK(files >= 6);
  // An example for every kind of process and resource fault (issue 4).
  for (const char* kind :
       {"process.kill with count", "process.pause", "stress.cpu", "stress.memory", "cgroup.squeeze"}) {
    CHECK_MESSAGE(kinds.count(kind) == 1, kind);
  }
}

TEST_CASE("the complete example in docs/experiments.md parses") {
  std::ifstream in(std::filesystem::path(FAULTLINE_SOURCE_DIR) / "docs" / "experiments.md");
  std::string line;
  std::string yaml;
  bool inBlock = false;
  while (std::getline(in, line)) {
    if (!inBlock && line == "```yaml") {
      inBlock = true;
    } else if (inBlock && line == "```") {
      break;
    } else if (inBlock) {
      yaml += line + "\n";
    }
  }
  REQUIRE_FALSE(yaml.empty());
  auto result = parseExperiment(yaml, "docs/experiments.md");
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  CHECK(result->method.size() == 6);
}

TEST_CASE("the quickstart experiment is what the quickstart expects") {
  std::ifstream in(std::filesystem::path(FAULTLINE_SOURCE_DIR) / "experiments" / "quickstart.yaml");
  std::stringstream text;
  text << in.rdbuf();
  // scripts/quickstart gives its PID as RUN: names no other quickstart running at the same time uses.
  CHECK_FALSE(parseExperiment(text.str(), "quickstart.yaml").has_value());
  auto result = parseExperiment(text.str(), "quickstart.yaml", Variables{{"RUN", "4242"}});
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  const Experiment& e = *result;
  CHECK(e.targets.selector.empty());
  CHECK(e.targets.mode == TargetMode::kAll);
  CHECK(e.hypothesis.every == 250ms);
  REQUIRE(e.hypothesis.probes.size() == 1);
  CHECK(e.hypothesis.probes[0].http.url == "http://10.77.0.1:8080/");
  CHECK(e.hypothesis.probes[0].http.expectStatus == std::vector<int>{200});
  CHECK(e.hypothesis.probes[0].http.maxLatency == 500ms);
  CHECK(e.hypothesis.probes[0].http.timeout == 2s);
  REQUIRE(e.hypothesis.slos.size() == 1);
  CHECK(e.hypothesis.slos[0].probe == "demo-http");
  REQUIRE(e.method.size() == 8);
  const FaultStep& bandwidth = faultAt(e, 0);
  CHECK(bandwidth.spec.network_bandwidth().rate_bps() == 1'000'000);
  CHECK(bandwidth.spec.network_bandwidth().target().interface() == "fl-qs-svc0");
  CHECK(bandwidth.spec.network_bandwidth().target().netns() == "/var/run/netns/fl-qs-svc-4242");
  CHECK(bandwidth.duration == 4s);
  CHECK(waitAt(e, 1).duration == 1s);
  // Delay and loss run on every kernel: netem, or the userspace driver without sch_netem.
  const FaultStep& delay = faultAt(e, 2);
  CHECK(toMicros(delay.spec.network_delay().delay()) == 100ms);
  CHECK(toMicros(delay.spec.network_delay().jitter()) == 10ms);
  CHECK(waitAt(e, 3).duration == 1s);
  const FaultStep& loss = faultAt(e, 4);
  CHECK(loss.spec.network_loss().percent() == doctest::Approx(10));
  CHECK(waitAt(e, 5).duration == 1s);
  const FaultStep& kill = faultAt(e, 6);
  CHECK(kill.spec.process_kill().process().name() == "faultline-demo-4242");
  CHECK(kill.spec.process_kill().signal() == "SIGKILL");
  CHECK(kill.duration == 1s);
  CHECK(waitAt(e, 7).duration == 2s);
}

TEST_CASE("probe URLs: the validator and the prober accept and refuse the same ones, with the same words") {
  struct Row {
    std::string url;
    bool valid;
    std::string phrase;  // in the error of an invalid URL
  };
  // Valid rows point at a closed port of the loopback, so the prober's attempt ends at once.
  const std::vector<Row> rows = {
      {"http://127.0.0.1:1/", true, ""},
      {"http://127.0.0.1:1", true, ""},
      {"HTTP://127.0.0.1:1/healthz?x=1#top", true, ""},
      {"Http://localhost:1/", true, ""},
      {"http://[::1]:1/", true, ""},
      {"http://10.88.0.1:8080:9/", false, "more than one ':PORT'"},
      {"http://[zz]/", false, "'zz' in brackets is not an IPv6 address"},
      {"http://[10.0.0.1]/", false, "is not an IPv6 address"},
      {"http://[::1/", false, "not closed"},
      {"http://[::1]x/", false, "text after the IPv6 address"},
      {"http://[fe80::1%25eth0]/", false, "zone ids"},
      {"http://::1/", false, "no host"},
      {"http://fe80::1/", false, "more than one ':PORT'"},
      {"https://127.0.0.1/", false, "https is not supported"},
      {"HTTPS://127.0.0.1/", false, "https is not supported"},
      {"ftp://127.0.0.1/", false, "does not start with http://"},
      {"127.0.0.1:80/", false, "does not start with http://"},
      {"http://", false, "no host"},
      {"http:///path", false, "no host"},
      {"http://host:0/", false, "port '0' is not a number from 1 to 65535"},
      {"http://host:65536/", false, "port '65536'"},
      {"http://host:+80/", false, "port '+80'"},
      {"http://host:/", false, "the port after ':' is empty"},
      {"http://user@host/", false, "user information"},
      {"http://host/a b", false, "space"},
      {"http://host/caf\xc3\xa9", false, "non-ASCII"},
      {"http://999.1.1.1/", false, "not an IPv4 address"},
      {"http://1.2.3/", false, "not an IPv4 address"},
      {"http://a..b/", false, "empty label"},
      {"http://" + std::string(64, 'a') + ".com/", false, "label of 64 characters"},
      {"http://exa$mple/", false, "the character '$'"},
  };
  auto runner = makeProbeRunner();
  for (const Row& row : rows) {
    CAPTURE(row.url);
    const auto parsed = parseHttpUrl(row.url);
    const std::string yaml = std::string(kHeader) +
                             "steadyState:\n"   // 5
                             "  probes:\n"      // 6
                             "    - name: p\n"  // 7
                             "      http:\n"    // 8
                             "        url: '" +
                             row.url + "'\n" +  // 9
                             "method:\n  - wait: 1s\n";
    const auto validated = parseExperiment(yaml, "url.yaml");
    Probe probe;
    probe.name = "p";
    probe.http.url = row.url;
    probe.http.maxLatency = 500ms;
    probe.http.timeout = 500ms;
    const Sample sample = runner->run(probe);
    CAPTURE(sample.detail);
    if (row.valid) {
      CHECK_MESSAGE(parsed.has_value(), (parsed ? "" : parsed.error()));
      CHECK_MESSAGE(validated.has_value(), (validated ? "" : allDiagnostics(validated.error())));
      CHECK_FALSE(contains(sample.detail, "invalid URL"));  // the prober tried to connect
      continue;
    }
    REQUIRE_FALSE(parsed.has_value());
    const std::string& error = parsed.error();
    CHECK(contains(error, row.phrase));
    CHECK(error.rfind("invalid URL '" + row.url + "': ", 0) == 0);
    CHECK(contains(error, "; accepted: http://HOST[:PORT][/PATH]"));
    REQUIRE_FALSE(validated.has_value());
    REQUIRE(validated.error().size() == 1);
    const Diagnostic& d = validated.error().front();
    CHECK(d.field == "steadyState.probes[0].http.url");
    CHECK(d.line == 9);
    CHECK(d.message == error);
    CHECK_FALSE(sample.ok);
    CHECK(sample.detail == error);
  }
}

TEST_CASE("a file over 1 MiB is refused before it is parsed; 1 MiB itself is fine") {
  const std::string yaml = std::string(kHeader) + "method:\n  - wait: 1s\n";
  std::string padded = yaml + "# " + std::string(kMaxExperimentBytes - yaml.size() - 3, 'x') + "\n";
  REQUIRE(padded.size() == kMaxExperimentBytes);
  auto atLimit = parseExperiment(padded, "big.yaml");
  CHECK_MESSAGE(atLimit.has_value(), (atLimit ? "" : allDiagnostics(atLimit.error())));

  padded += "\n";
  auto over = parseExperiment(padded, "big.yaml");
  REQUIRE_FALSE(over.has_value());
  REQUIRE(over.error().size() == 1);
  const Diagnostic& d = over.error().front();
  CHECK(d.line == 0);
  CHECK(d.field.empty());
  CHECK(format(d) == "big.yaml: the file is 1048577 bytes; experiment files are limited to 1 MiB (1048576 bytes)");
  // Even text that is not YAML at all: the size is checked first.
  auto garbage = parseExperiment(std::string(10 * kMaxExperimentBytes, '['), "huge.yaml");
  REQUIRE_FALSE(garbage.has_value());
  REQUIRE(garbage.error().size() == 1);
  CHECK(contains(garbage.error().front().message, "the file is 10485760 bytes"));
}

TEST_CASE("at most 1000 method steps and 100 probes") {
  const std::string wait = "method:\n  - wait: 1s\n";
  auto steps = [](size_t n) { return std::string(kHeader) + "method:\n" + repeat("  - wait: 1ms\n", n); };
  auto probes = [&](size_t n) {
    std::string yaml = std::string(kHeader) + "steadyState:\n  probes:\n";
    for (size_t i = 0; i < n; ++i) {
      yaml += "    - {name: p" + std::to_string(i) + ", http: {url: 'http://10.77.0.1:8080/'}}\n";
    }
    return yaml + wait;
  };
  auto thousand = parseExperiment(steps(kMaxMethodSteps), "steps.yaml");
  REQUIRE_MESSAGE(thousand.has_value(), (thousand ? "" : allDiagnostics(thousand.error())));
  CHECK(thousand->method.size() == 1000);
  auto hundred = parseExperiment(probes(kMaxProbes), "probes.yaml");
  REQUIRE_MESSAGE(hundred.has_value(), (hundred ? "" : allDiagnostics(hundred.error())));
  CHECK(hundred->hypothesis.probes.size() == 100);

  const std::vector<Diagnostic> tooManySteps = errorsOf(steps(kMaxMethodSteps + 1));
  CAPTURE(allDiagnostics(tooManySteps));
  CHECK(tooManySteps.size() == 1);
  CHECK(hasDiagnostic(tooManySteps, "method", 6, "has 1001 steps; accepted: at most 1000 steps"));
  const std::vector<Diagnostic> tooManyProbes = errorsOf(probes(kMaxProbes + 1));
  CAPTURE(allDiagnostics(tooManyProbes));
  CHECK(tooManyProbes.size() == 1);
  CHECK(hasDiagnostic(tooManyProbes, "steadyState.probes", 7, "has 101 probes; accepted: at most 100 probes"));
}

TEST_CASE("YAML that would exhaust memory or the stack is one error with its place") {
  SUBCASE("more nodes than any experiment needs") {
    const std::vector<Diagnostic> d = errorsOf(std::string(kHeader) + "method: [" + repeat("1,", 60'000) + "1]\n");
    REQUIRE(d.size() == 1);
    CHECK(d.front().line == 5);
    CHECK(d.front().column > 1);
    CHECK(contains(d.front().message, "more than 50000 YAML nodes"));
  }
  SUBCASE("brackets nested deeper than yaml-cpp's limit, closed") {
    const std::vector<Diagnostic> d =
        errorsOf(std::string(kHeader) + "method: " + std::string(1000, '[') + std::string(1000, ']') + "\n");
    REQUIRE(d.size() == 1);
    CHECK(d.front().line == 5);
    CHECK(d.front().column > 0);
    CHECK(contains(d.front().message, "YAML syntax error: lists and maps nested"));
  }
  SUBCASE("brackets nested deeper than yaml-cpp's limit, never closed") {
    const std::vector<Diagnostic> d = errorsOf(std::string(kHeader) + "method: " + std::string(500'000, '{') + "\n");
    REQUIRE(d.size() == 1);
    CHECK(d.front().line > 0);
    CHECK(contains(d.front().message, "YAML syntax error"));
  }
}

TEST_CASE("errors stop after 100, so an alias cannot multiply the work") {
  // One map of 2000 unknown keys, used as each of 1000 steps: two million errors unchecked.
  std::string keys;
  for (int i = 0; i < 2000; ++i) {
    keys += (i == 0 ? "" : ", ") + fmt::format("k{}: 1", i);
  }
  const std::string yaml = std::string(kHeader) + "x: &m {" + keys + "}\nmethod:\n" + repeat("  - *m\n", 1000);
  const std::vector<Diagnostic> d = errorsOf(yaml);
  REQUIRE(d.size() == 101);
  CHECK(d.back().line == 0);
  CHECK(format(d.back()) == "bad.yaml: stopped checking after 100 errors");
}

TEST_CASE("--var: ${NAME} is replaced anywhere in the file; $${ is a literal ${") {
  const std::string yaml = std::string(kHeader) +
                           "  description: cost $${NOT_A_VAR} and ${WHO}\n"  // 5
                           "targets:\n"                                      // 6
                           "  selector: {${LABEL}: ${ROLE}}\n"               // 7
                           "method:\n"                                       // 8
                           "  - wait: ${WAIT}\n";                            // 9
  const Variables vars{{"WHO", "ops"}, {"LABEL", "role"}, {"ROLE", "demo"}, {"WAIT", "250ms"}};
  auto result = parseExperiment(yaml, "vars.yaml", vars);
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  CHECK(result->description == "cost ${NOT_A_VAR} and ops");
  CHECK(result->targets.selector == std::map<std::string, std::string>{{"role", "demo"}});
  CHECK(waitAt(*result, 0).duration == 250ms);
}

TEST_CASE("--var: values that would grow the file past 1 MiB stop the substitution with an error") {
  std::string yaml = std::string(kHeader) + "  description: \"";
  for (int i = 0; i < 20'000; ++i) {
    yaml += "${X}";
  }
  yaml += "\"\nmethod:\n  - wait: 1s\n";
  auto result = parseExperiment(yaml, "big.yaml", Variables{{"X", std::string(100'000, 'x')}});
  REQUIRE_FALSE(result.has_value());
  REQUIRE(result.error().size() == 1);
  CHECK(result.error()[0].line == 5);
  CHECK(contains(result.error()[0].message, "would exceed the 1 MiB"));
}

TEST_CASE("--var: an undefined or malformed reference is an error at its ${, with a suggestion") {
  const std::string yaml = std::string(kHeader) +
                           "targets:\n"                     // 5
                           "  selector: {role: ${ROLF}}\n"  // 6
                           "method:\n"                      // 7
                           "  - wait: ${1x}\n"              // 8
                           "  - wait: ${OPEN\n";            // 9
  auto result = parseExperiment(yaml, "vars.yaml", Variables{{"ROLE", "demo"}});
  REQUIRE_FALSE(result.has_value());
  const auto& errors = result.error();
  REQUIRE(errors.size() == 3);
  CHECK(format(errors[0]) ==
        "vars.yaml:6:20: undefined variable 'ROLF' (did you mean 'ROLE'?); defined: ROLE; give it with --var "
        "ROLF=VALUE (write $${ for a literal ${)");
  CHECK(errors[1].line == 8);
  CHECK(errors[1].column == 11);
  CHECK(contains(errors[1].message, "'${1x}' is not a variable reference"));
  CHECK(errors[2].line == 9);
  CHECK(contains(errors[2].message, "without a closing '}'"));
}

TEST_CASE("--var: errors after substitution point at the place in the file as written") {
  // A value with a newline and one longer than its reference shift the substituted text; the
  // diagnostics must still name the line and column of the original file.
  const std::string yaml = std::string(kHeader) +
                           "  description: ${LONG}\n"  // 5
                           "method:\n"                 // 6
                           "  - wait: ${W}\n"          // 7
                           "  - wait: 5x\n";           // 8
  auto result = parseExperiment(yaml, "vars.yaml", Variables{{"LONG", "\"a\n  b c d e f\""}, {"W", "7"}});
  REQUIRE_FALSE(result.has_value());
  const auto& errors = result.error();
  REQUIRE(errors.size() == 2);
  CHECK(errors[0].field == "method[0].wait");
  CHECK(errors[0].line == 7);
  CHECK(errors[0].column == 11);  // the ${ of ${W}
  CHECK(errors[1].field == "method[1].wait");
  CHECK(errors[1].line == 8);
  CHECK(errors[1].column == 11);
}

TEST_CASE("targets.mode: all, count(n), random(n), percent(p)") {
  const auto modeOf = [](const std::string& mode) {
    auto r = parseExperiment(std::string(kHeader) + "targets: {mode: " + mode + "}\nmethod:\n  - wait: 1s\n", "m.yaml");
    REQUIRE_MESSAGE(r.has_value(), (r ? "" : allDiagnostics(r.error())));
    return r->targets;
  };
  CHECK(modeOf("all").mode == TargetMode::kAll);
  CHECK(modeOf("count(4)").mode == TargetMode::kCount);
  CHECK(modeOf("count(4)").n == 4);
  CHECK(modeOf("random(2)").mode == TargetMode::kRandom);
  CHECK(modeOf("random(2)").n == 2);
  CHECK(modeOf("percent(12.5)").mode == TargetMode::kPercent);
  CHECK(modeOf("percent(12.5)").percent == 12.5);
  CHECK(modeOf("percent(100%)").percent == 100);
  CHECK(modeText(modeOf("percent(12.5)")) == "percent(12.5)");
  CHECK(modeText(modeOf("random(2)")) == "random(2)");
}

TEST_CASE("method: probe steps, parallel groups, and the default fault duration") {
  const std::string yaml = std::string(kHeader) +
                           "steadyState:\n"
                           "  probes: [{name: web, http: {url: 'http://a/'}}]\n"
                           "method:\n"
                           "  - probe: web\n"
                           "  - parallel:\n"
                           "      - fault: {type: process.kill, process: {name: x}}\n"
                           "      - fault: {type: network.loss, duration: 2s, target: {interface: eth0}, percent: 5}\n"
                           "      - wait: 90s\n"
                           "      - probe: web\n"
                           "  - fault: {type: process.kill, duration: 5s, process: {pid: 9}}\n";
  auto result = parseExperiment(yaml, "steps.yaml");
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  const auto& method = result->method;
  REQUIRE(method.size() == 3);
  REQUIRE(std::holds_alternative<ProbeStep>(method[0]));
  CHECK(std::get<ProbeStep>(method[0]).probe == "web");
  REQUIRE(std::holds_alternative<ParallelStep>(method[1]));
  const auto& group = std::get<ParallelStep>(method[1]).steps;
  REQUIRE(group.size() == 4);
  REQUIRE(std::holds_alternative<FaultStep>(group[0]));
  CHECK(std::get<FaultStep>(group[0]).duration == kDefaultFaultDuration);
  CHECK(kDefaultFaultDuration == 60s);
  CHECK(std::get<FaultStep>(group[1]).duration == 2s);
  CHECK(std::get<WaitStep>(group[2]).duration == 90s);
  CHECK(std::get<ProbeStep>(group[3]).probe == "web");
  CHECK(faultAt(*result, 2).duration == 5s);
}

TEST_CASE("process, stress and cgroup faults parse into their specs") {
  const std::string yaml = std::string(kHeader) +
                           "method:\n"
                           "  - fault: {type: process.kill, duration: 30s, process: {systemdUnit: orders, count: 1}, "
                           "signal: TERM, every: 10s}\n"
                           "  - fault: {type: process.pause, duration: 5s, process: {cmdline: 'java .*orders', "
                           "percent: 50}}\n"
                           "  - fault: {type: stress.cpu, duration: 1m, workers: 2, load: 80}\n"
                           "  - fault: {type: stress.memory, duration: 1m, bytes: 512mib}\n"
                           "  - fault: {type: cgroup.squeeze, duration: 1m, cgroup: /system.slice/orders.service, "
                           "cpus: 0.5, memoryHigh: 256mib, pidsMax: 64}\n"
                           "  - fault: {type: process.kill, duration: 1s, process: {pidfile: /run/x.pid}}\n";
  auto result = parseExperiment(yaml, "resources.yaml");
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  const auto& kill = faultAt(*result, 0).spec.process_kill();
  CHECK(kill.process().systemd_unit() == "orders");
  CHECK(kill.process().count() == 1);
  CHECK(kill.signal() == "TERM");
  CHECK(kill.every().seconds() == 10);
  const auto& pause = faultAt(*result, 1).spec.process_pause();
  CHECK(pause.process().cmdline() == "java .*orders");
  CHECK(pause.process().percent() == 50);
  CHECK(faultAt(*result, 2).spec.stress_cpu().workers() == 2);
  CHECK(faultAt(*result, 2).spec.stress_cpu().load_percent() == 80);
  CHECK(faultAt(*result, 3).spec.stress_memory().bytes() == uint64_t{512} << 20);
  const auto& squeeze = faultAt(*result, 4).spec.cgroup_squeeze();
  CHECK(squeeze.cgroup() == "/system.slice/orders.service");
  CHECK(squeeze.cpus() == 0.5);
  CHECK(squeeze.memory_high_bytes() == uint64_t{256} << 20);
  CHECK(squeeze.pids_max() == 64);
  CHECK(faultAt(*result, 5).spec.process_kill().process().pidfile() == "/run/x.pid");
}

TEST_CASE("process.pause mechanism: freeze and auto parse; another word is refused with what is accepted") {
  const std::string yaml = std::string(kHeader) +
                           "method:\n"
                           "  - fault: {type: process.pause, duration: 5s, process: {name: db}, mechanism: freeze}\n"
                           "  - fault: {type: process.pause, duration: 5s, process: {name: db}, mechanism: auto}\n"
                           "  - fault: {type: process.pause, duration: 5s, process: {name: db}}\n";
  auto result = parseExperiment(yaml, "pause.yaml");
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  CHECK(faultAt(*result, 0).spec.process_pause().mechanism() == v1::PAUSE_MECHANISM_FREEZE);
  CHECK(faultAt(*result, 1).spec.process_pause().mechanism() == v1::PAUSE_MECHANISM_AUTO);
  CHECK(faultAt(*result, 2).spec.process_pause().mechanism() == v1::PAUSE_MECHANISM_AUTO);
  const auto d = errorsOf(std::string(kHeader) +
                          "method:\n"
                          "  - fault: {type: process.pause, duration: 5s, process: {name: db}, mechanism: sigstop}\n");
  const int line = static_cast<int>(std::count(kHeader, kHeader + std::strlen(kHeader), '\n')) + 2;
  CHECK_MESSAGE(hasDiagnostic(d, "method[0].fault.mechanism", line,
                              "unknown pause mechanism 'sigstop'; accepted: auto (the default: cgroup freeze where a "
                              "process owns its cgroup, else SIGSTOP) or freeze"),
                d.front().line, ": ", d.front().field, ": ", d.front().message);
}

TEST_CASE("process, stress and cgroup faults: errors name the field, the value and what is accepted") {
  const std::string h = kHeader;
  const auto d = errorsOf(h +
                          "method:\n"
                          "  - fault: {type: process.pause, duration: 1s, process: {cmdline: '(['}}\n"
                          "  - fault: {type: stress.cpu, duration: 1s, workers: 0}\n"
                          "  - fault: {type: stress.memory, duration: 1s, bytes: 12parsecs}\n"
                          "  - fault: {type: cgroup.squeeze, duration: 1s, cgroup: /a}\n"
                          "  - fault: {type: process.kill, duration: 1s, process: {name: x, cgroup: /a}}\n"
                          "  - fault: {type: process.kill, duration: 1s, process: {name: x}, every: 1ms}\n");
  const auto text = allDiagnostics(d);
  CAPTURE(text);
  CHECK(hasDiagnostic(d, "method[0].fault.process.cmdline", 6, "is not a valid regular expression"));
  CHECK(hasDiagnostic(d, "method[1].fault.workers", 7, "0 is out of range"));
  CHECK(hasDiagnostic(d, "method[2].fault.bytes", 8, "unknown unit"));
  CHECK(hasDiagnostic(d, "method[3].fault.cpus", 9, "no limit to squeeze"));
  CHECK(hasDiagnostic(d, "method[4].fault.process", 10, "has both name and cgroup"));
  CHECK(hasDiagnostic(d, "method[5].fault.every", 11, "out of range"));
}

TEST_CASE("integer fields: a negative or too large value is reported as written, with the accepted range") {
  const std::string h = kHeader;
  const auto d = errorsOf(h +
                          "method:\n"
                          "  - fault: {type: stress.cpu, duration: 1s, workers: -1}\n"                          // 6
                          "  - fault: {type: cgroup.squeeze, duration: 1s, cgroup: /a, pidsMax: -3}\n"          // 7
                          "  - fault: {type: cgroup.squeeze, duration: 1s, cgroup: /a, pidsMax: 4294967296}\n"  // 8
                          "  - fault: {type: stress.cpu, duration: 1s, workers: 99999999999999999999}\n"        // 9
                          "  - fault: {type: process.kill, duration: 1s, process: {pid: -5}}\n"                 // 10
                          "  - fault: {type: process.pause, duration: 1s, process: {name: x, count: 0}}\n"      // 11
                          "  - fault: {type: stress.cpu, duration: 1s, workers: 1025}\n"                        // 12
                          "  - fault: {type: stress.cpu, duration: 1s, workers: 2.5}\n");                       // 13
  const auto text = allDiagnostics(d);
  CAPTURE(text);
  CHECK(hasDiagnostic(d, "method[0].fault.workers", 6, "-1 is out of range (accepted: 1..1024, "));
  CHECK(hasDiagnostic(d, "method[1].fault.pidsMax", 7, "-3 is out of range (accepted: 1..4194304, "));
  CHECK(hasDiagnostic(d, "method[2].fault.pidsMax", 8, "4294967296 is out of range (accepted: 1..4194304, "));
  CHECK(hasDiagnostic(d, "method[3].fault.workers", 9, "99999999999999999999 is out of range (accepted: 1..1024, "));
  CHECK(hasDiagnostic(d, "method[4].fault.process.pid", 10, "-5 is out of range (accepted: 2..4194304, "));
  CHECK(hasDiagnostic(d, "method[5].fault.process.count", 11, "0 is out of range (accepted: 1..4194304, "));
  CHECK(hasDiagnostic(d, "method[6].fault.workers", 12, "1025 is out of range (accepted: 1..1024, "));
  CHECK(hasDiagnostic(d, "method[7].fault.workers", 13, "'2.5' is not a whole number; accepted: 1..1024, "));
  CHECK(d.size() == 8);
  CHECK(contains(text, "bad.yaml:6:"));
  for (const Diagnostic& one : d) {
    CHECK(one.column > 1);
  }
}

TEST_CASE("a mistyped process selector key gets a did-you-mean and the current key list, and nothing else") {
  const std::string h = kHeader;
  const auto d = errorsOf(h +
                          "method:\n"
                          "  - fault: {type: process.kill, duration: 1s, process: {nmae: x}}\n");
  const auto text = allDiagnostics(d);
  CAPTURE(text);
  REQUIRE(d.size() == 1);
  CHECK(d[0].field == "method[0].fault.process.nmae");
  CHECK(contains(d[0].message, "unknown key 'nmae' (did you mean 'name'?)"));
  CHECK(contains(d[0].message, "pid, name, cmdline, cgroup, pidfile, systemdUnit, count, percent"));
}

TEST_CASE("probes of every kind, with their options") {
  const std::string yaml =
      std::string(kHeader) +
      "steadyState:\n"
      "  every: 500ms\n"
      "  probes:\n"
      "    - name: api\n"
      "      http:\n"
      "        url: http://10.77.0.1:8080/orders\n"
      "        method: POST\n"
      "        headers: {Authorization: Bearer t, X-Trace: '1'}\n"
      "        body: '{\"item\": 1}'\n"
      "        expectStatus: [201, 2xx, 404]\n"
      "        bodyMatch: '\"id\": *[0-9]+'\n"
      "    - name: db\n"
      "      guard: true\n"
      "      tcp: {address: '[::1]:5432', maxLatency: 50ms, timeout: 1s}\n"
      "    - name: replicas\n"
      "      command: {argv: [kubectl, get, pods], expectExit: 0, stdoutMatch: Running, timeout: 3s}\n"
      "    - name: queue\n"
      "      command: {shell: 'test $(wc -l < /tmp/q) -lt 10'}\n"
      "    - name: cpu\n"
      "      prometheus: {url: 'http://10.77.0.1:9090', query: 'max(cpu)', expect: '<= 0.8'}\n"
      "  slos:\n"
      "    - name: api-slo\n"
      "      probe: api\n"
      "      objective: p99 < 300ms and errors < 1% over 20s\n"
      "      maxBurnRate: 10\n"
      "    - name: saturation\n"
      "      probe: cpu\n"
      "      objective: saturation < 0.9\n"
      "method:\n  - wait: 1s\n";
  auto result = parseExperiment(yaml, "probes.yaml");
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  const auto& probes = result->hypothesis.probes;
  REQUIRE(probes.size() == 5);
  CHECK(probes[0].kind == ProbeKind::kHttp);
  CHECK(probes[0].http.method == "POST");
  CHECK(probes[0].http.headers ==
        std::vector<std::pair<std::string, std::string>>{{"Authorization", "Bearer t"}, {"X-Trace", "1"}});
  CHECK(probes[0].http.body == "{\"item\": 1}");
  REQUIRE(probes[0].http.expectStatus.size() == 101);  // 200-299 and 404; 201 once
  CHECK(probes[0].http.expectStatus.front() == 200);
  CHECK(probes[0].http.expectStatus.back() == 404);
  CHECK(probes[0].http.bodyMatch == std::optional<std::string>("\"id\": *[0-9]+"));
  CHECK_FALSE(probes[0].guard);
  CHECK(probes[1].kind == ProbeKind::kTcp);
  CHECK(probes[1].guard);
  CHECK(probes[1].tcp.host == "::1");
  CHECK(probes[1].tcp.port == 5432);
  CHECK(probes[1].tcp.maxLatency == 50ms);
  CHECK(probes[2].kind == ProbeKind::kCommand);
  CHECK(probes[2].command.argv == std::vector<std::string>{"kubectl", "get", "pods"});
  CHECK(probes[2].command.stdoutMatch == std::optional<std::string>("Running"));
  CHECK(probes[2].command.timeout == 3s);
  CHECK(probes[3].command.shell == "test $(wc -l < /tmp/q) -lt 10");
  CHECK(probes[3].command.argv.empty());
  CHECK(probes[3].command.timeout == 5s);
  CHECK(probes[4].kind == ProbeKind::kPrometheus);
  CHECK(probes[4].prometheus.query == "max(cpu)");
  CHECK(probes[4].prometheus.comparison == Comparison::kLessEqual);
  CHECK(probes[4].prometheus.threshold == 0.8);
  const auto& slos = result->hypothesis.slos;
  REQUIRE(slos.size() == 2);
  CHECK(slos[0].name == "api-slo");
  CHECK(slos[0].probe == "api");
  CHECK(slos[0].window == 20s);
  CHECK(slos[0].maxBurnRate == std::optional<double>(10));
  REQUIRE(slos[0].terms.size() == 2);
  CHECK(slos[0].terms[0].sli == SliKind::kP99);
  CHECK(slos[0].terms[0].threshold == 300);
  CHECK(slos[0].terms[1].sli == SliKind::kErrors);
  CHECK(slos[0].terms[1].threshold == 1);
  CHECK(slos[1].window == 30s);  // the default
  CHECK(slos[1].terms[0].sli == SliKind::kValue);
  CHECK(slos[1].terms[0].name == "saturation");
}

TEST_CASE("parseObjective: terms, units, window, and what is refused") {
  auto slo =
      parseObjective("p50 <= 20ms and p95 < 1.5s and max < 2s and errors <= 0.5% and throughput > 100/s over 1m");
  REQUIRE_MESSAGE(slo.has_value(), (slo ? "" : slo.error()));
  REQUIRE(slo->terms.size() == 5);
  CHECK(slo->terms[0].comparison == Comparison::kLessEqual);
  CHECK(slo->terms[0].threshold == 20);
  CHECK(slo->terms[1].threshold == 1500);
  CHECK(slo->terms[2].sli == SliKind::kMaxLatency);
  CHECK(slo->terms[3].threshold == 0.5);
  CHECK(slo->terms[4].sli == SliKind::kThroughput);
  CHECK(slo->terms[4].comparison == Comparison::kGreater);
  CHECK(slo->terms[4].threshold == 100);
  CHECK(slo->window == 60s);
  for (const auto& [text, phrase] :
       std::vector<std::pair<std::string, std::string>>{{"p98 < 3ms", "'p98' is not an SLI"},
                                                        {"p99 300ms", "has no comparison"},
                                                        {"p99 < 300", "is not a latency"},
                                                        {"errors < 150%", "not a percentage from 0 to 100"},
                                                        {"p99 < 3ms and", "ends with 'and'"},
                                                        {"p99 < 3ms over 10", "window '10'"},
                                                        {"p99 < 3ms over 500ms", "out of range"},
                                                        {"", "has no term"},
                                                        {"value > lots", "is not a number"}}) {
    CAPTURE(text);
    auto bad = parseObjective(text);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().find(phrase) != std::string::npos);
    CHECK(bad.error().find("accepted: terms 'SLI OP VALUE'") != std::string::npos);
  }
}

TEST_CASE("bad probes and SLOs: file, line, column, field") {
  const std::string h = kHeader;
  const std::string wait = "method:\n  - wait: 1s\n";
  const std::string ss = "steadyState:\n  probes:\n";  // lines 5, 6; probes from line 7
  struct Case {
    const char* what;
    std::string yaml;
    std::string field;
    int line;
    std::string phrase;
  };
  const std::vector<Case> cases = {
      {"no kind", h + ss + "    - name: p\n" + wait, "steadyState.probes[0].http", 7, "a probe needs one kind"},
      {"two kinds", h + ss + "    - name: p\n      http: {url: http://a/}\n      tcp: {address: 'a:1'}\n" + wait,
       "steadyState.probes[0].tcp", 9, "already has http"},
      {"unknown method", h + ss + "    - name: p\n      http: {url: http://a/, method: GETT}\n" + wait,
       "steadyState.probes[0].http.method", 8, "did you mean 'GET'?"},
      {"status out of range", h + ss + "    - name: p\n      http: {url: http://a/, expectStatus: [200, 700]}\n" + wait,
       "steadyState.probes[0].http.expectStatus[1]", 8, "700 is out of range"},
      {"bad regex", h + ss + "    - name: p\n      http: {url: http://a/, bodyMatch: '(('}\n" + wait,
       "steadyState.probes[0].http.bodyMatch", 8, "not a valid regular expression"},
      {"header with a line break",
       h + ss + "    - name: p\n      http: {url: http://a/, headers: {A: \"x\\ny\"}}\n" + wait,
       "steadyState.probes[0].http.headers.A", 8, "line break"},
      {"tcp without port", h + ss + "    - name: p\n      tcp: {address: db.internal}\n" + wait,
       "steadyState.probes[0].tcp.address", 8, "is not an address; accepted: HOST:PORT"},
      {"tcp v6 without port", h + ss + "    - name: p\n      tcp: {address: '[::1]'}\n" + wait,
       "steadyState.probes[0].tcp.address", 8, "is not an address"},
      {"command with argv and shell", h + ss + "    - name: p\n      command: {argv: [true], shell: 'true'}\n" + wait,
       "steadyState.probes[0].command.shell", 8, "not both"},
      {"command with neither", h + ss + "    - name: p\n      command: {timeout: 1s}\n" + wait,
       "steadyState.probes[0].command.argv", 8, "is required"},
      {"empty argv", h + ss + "    - name: p\n      command: {argv: []}\n" + wait, "steadyState.probes[0].command.argv",
       8, "is empty"},
      {"exit code out of range", h + ss + "    - name: p\n      command: {argv: ['true'], expectExit: 256}\n" + wait,
       "steadyState.probes[0].command.expectExit", 8, "out of range"},
      {"prometheus without expect",
       h + ss + "    - name: p\n      prometheus: {url: 'http://a:9090', query: up}\n" + wait,
       "steadyState.probes[0].prometheus.expect", 8, "is required"},
      {"prometheus bad expect",
       h + ss + "    - name: p\n      prometheus: {url: 'http://a:9090', query: up, expect: 'about 3'}\n" + wait,
       "steadyState.probes[0].prometheus.expect", 8, "does not start with a comparison"},
      {"guard not boolean", h + ss + "    - name: p\n      guard: yes please\n      http: {url: http://a/}\n" + wait,
       "steadyState.probes[0].guard", 8, "not a boolean"},
      {"SLO of an unknown probe",
       h + ss +
           "    - name: api\n      http: {url: http://a/}\n  slos:\n    - {name: s, probe: apl, objective: p99 < "
           "1s}\n" +
           wait,
       "steadyState.slos[0].probe", 10, "no probe is named 'apl' (did you mean 'api'?)"},
      {"SLO with a bad objective",
       h + ss +
           "    - name: api\n      http: {url: http://a/}\n  slos:\n    - {name: s, probe: api, objective: p99 < "
           "fast}\n" +
           wait,
       "steadyState.slos[0].objective", 10, "is not a latency"},
      {"value of an http probe",
       h + ss +
           "    - name: api\n      http: {url: http://a/}\n  slos:\n    - {name: s, probe: api, objective: value < "
           "1}\n" +
           wait,
       "steadyState.slos[0].objective", 10, "is a probe's value, and probe 'api' (http) reads none"},
      {"burn rate without budget",
       h + ss +
           "    - name: api\n      http: {url: http://a/}\n  slos:\n    - {name: s, probe: api, objective: p99 < 1s, "
           "maxBurnRate: 5}\n" +
           wait,
       "steadyState.slos[0].maxBurnRate", 10, "needs an error budget"},
      {"unknown SLO key",
       h + ss +
           "    - name: api\n      http: {url: http://a/}\n  slos:\n    - {name: s, probe: api, objectve: p99 < 1s}\n" +
           wait,
       "steadyState.slos[0].objectve", 10, "did you mean 'objective'?"},
      {"minSamples 0",
       h + ss +
           "    - name: api\n      http: {url: http://a/}\n  slos:\n    - {name: s, probe: api, objective: p99 < 1s, "
           "minSamples: 0}\n" +
           wait,
       "steadyState.slos[0].minSamples", 10, "0 is out of range (accepted: 1..10000"},
      {"a window that cannot hold the default minSamples",
       h + ss +
           "    - name: api\n      http: {url: http://a/}\n  slos:\n    - {name: s, probe: api, objective: errors < "
           "20% over 3s}\n" +
           wait,
       "steadyState.slos[0]", 10,
       "SLO 's': a window of 3s sampled every 1s holds at most 3 sample(s), fewer than minSamples 5 (the default)"},
      {"a window that cannot hold minSamples",
       h + ss +
           "    - name: api\n      http: {url: http://a/}\n  slos:\n    - {name: s, probe: api, objective: errors < "
           "20% over 10s, minSamples: 20}\n" +
           wait,
       "steadyState.slos[0].minSamples", 10, "holds at most 10 sample(s), fewer than minSamples 20;"},
      {"an unknown key of after",
       h + ss + "    - name: api\n      http: {url: http://a/}\n  after: {settle: 1s, windw: 10s}\n" + wait,
       "steadyState.after.windw", 9, "did you mean 'window'?"},
      {"an after window below 1s",
       h + ss + "    - name: api\n      http: {url: http://a/}\n  after: {window: 500ms}\n" + wait,
       "steadyState.after.window", 9, "from 1s to 1h"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.what);
    const auto diagnostics = errorsOf(c.yaml);
    CHECK_MESSAGE(hasDiagnostic(diagnostics, c.field, c.line, c.phrase), allDiagnostics(diagnostics));
    for (const auto& d : diagnostics) {
      CHECK(d.file == "bad.yaml");
      CHECK(d.column > 0);
    }
  }
}

TEST_CASE("a network target's netns may be a path or the processes whose namespace it is") {
  auto parsed = parseExperiment(std::string(kHeader) +
                                    "method:\n"
                                    "  - fault:\n"
                                    "      type: network.delay\n"
                                    "      duration: 1s\n"
                                    "      target: {interface: default, netns: {systemdUnit: orders}}\n"
                                    "      delay: 100ms\n"
                                    "  - fault:\n"
                                    "      type: network.loss\n"
                                    "      duration: 1s\n"
                                    "      target: {interface: eth0, netns: {pid: 4242}}\n"
                                    "      percent: 5\n",
                                "netns.yaml");
  REQUIRE_MESSAGE(parsed.has_value(), (parsed ? "" : allDiagnostics(parsed.error())));
  const auto& delay = faultAt(*parsed, 0).spec.network_delay().target();
  CHECK(delay.interface() == "default");
  CHECK(delay.netns().empty());
  CHECK(delay.netns_process().systemd_unit() == "orders");
  CHECK(faultAt(*parsed, 1).spec.network_loss().target().netns_process().pid() == 4242);
}

TEST_CASE("a netns selector is checked like a process selector, without count or percent") {
  const std::string yaml = std::string(kHeader) +
                           "method:\n"                                                        // 5
                           "  - fault:\n"                                                     // 6
                           "      type: network.loss\n"                                       // 7
                           "      duration: 1s\n"                                             // 8
                           "      target: {interface: eth0, netns: {name: web, count: 1}}\n"  // 9
                           "      percent: 5\n"                                               // 10
                           "  - fault:\n"                                                     // 11
                           "      type: network.loss\n"                                       // 12
                           "      duration: 1s\n"                                             // 13
                           "      target: {interface: eth0, netns: {pid: 1}}\n"               // 14
                           "      percent: 5\n"                                               // 15
                           "  - fault:\n"                                                     // 16
                           "      type: network.loss\n"                                       // 17
                           "      duration: 1s\n"                                             // 18
                           "      target: {interface: eth0, netns: {nmae: web}}\n"            // 19
                           "      percent: 5\n";                                              // 20
  const std::vector<Diagnostic> d = errorsOf(yaml);
  CAPTURE(allDiagnostics(d));
  CHECK(hasDiagnostic(d, "method[0].fault.target.netns.count", 9, "not accepted here"));
  CHECK(hasDiagnostic(d, "method[1].fault.target.netns.pid", 14, "greater than 1"));
  CHECK(hasDiagnostic(d, "method[2].fault.target.netns.nmae", 19, "name"));
}

TEST_CASE("an empty netns (e.g. from an empty --var) is an error, never the agent's own namespace") {
  const std::string yaml = std::string(kHeader) +
                           "method:\n"                                                      // 5
                           "  - fault:\n"                                                   // 6
                           "      type: network.loss\n"                                     // 7
                           "      duration: 1s\n"                                           // 8
                           "      target: {interface: eth0, netns: \"\"}\n"                 // 9
                           "      percent: 5\n"                                             // 10
                           "  - fault:\n"                                                   // 11
                           "      type: network.loss\n"                                     // 12
                           "      duration: 1s\n"                                           // 13
                           "      target: {interface: eth0, netns: /var/run/netns/../x}\n"  // 14
                           "      percent: 5\n"                                             // 15
                           "  - fault:\n"                                                   // 16
                           "      type: network.loss\n"                                     // 17
                           "      duration: 1s\n"                                           // 18
                           "      target: {interface: eth0, netns: /}\n"                    // 19
                           "      percent: 5\n";                                            // 20
  const std::vector<Diagnostic> d = errorsOf(yaml);
  CAPTURE(allDiagnostics(d));
  CHECK(hasDiagnostic(d, "method[0].fault.target.netns", 9, "is empty"));
  CHECK(hasDiagnostic(d, "method[1].fault.target.netns", 14, "not a namespace file's path"));
  CHECK(hasDiagnostic(d, "method[2].fault.target.netns", 19, "not a namespace file's path"));
}

TEST_CASE("regular expressions of 20,000 nested parentheses are refused with the cap, in probes and selectors") {
  const std::string nested = std::string(20000, '(') + "a" + std::string(20000, ')');
  const std::string yaml = std::string(kHeader) +
                           "steadyState:\n"   // 5
                           "  probes:\n"      // 6
                           "    - name: p\n"  // 7
                           "      http: {url: http://a/, bodyMatch: '" +
                           nested +
                           "'}\n"                                                     // 8
                           "    - name: q\n"                                          // 9
                           "      command: {argv: [true], stdoutMatch: '(?<=ok)'}\n"  // 10
                           "method:\n"                                                // 11
                           "  - fault: {type: process.kill, duration: 1s, process: {cmdline: '" +
                           nested + "'}}\n";  // 12
  const std::vector<Diagnostic> d = errorsOf(yaml);
  CAPTURE(allDiagnostics(d).substr(0, 2000));
  CHECK(hasDiagnostic(d, "steadyState.probes[0].http.bodyMatch", 8, "40001 bytes long, more than the 4096 accepted"));
  CHECK(hasDiagnostic(d, "steadyState.probes[1].command.stdoutMatch", 10, "lookaround: RE2 has none"));
  CHECK(hasDiagnostic(d, "method[0].fault.process.cmdline", 12, "40001 bytes long, more than the 4096 accepted"));
}

// `secret: true` in the file (issue 15): the value is a secret whichever flag gives it.
TEST_CASE("variables: declared with description and secret; the secret names are read before substitution") {
  const std::string file = std::string(kHeader) +
                           "variables:\n"
                           "  DB_DSN: {description: the service's database, secret: true}\n"
                           "  REGION: {description: where it runs}\n"
                           "  CUSTOMER:\n"
                           "    secret: true\n"
                           "method:\n"
                           "  - wait: 1s\n";
  auto e = parseExperiment(file, "v.yaml");
  REQUIRE_MESSAGE(e.has_value(), (e ? "" : allDiagnostics(e.error())));
  REQUIRE(e->variables.size() == 3);
  CHECK(e->variables.at("DB_DSN").secret);
  CHECK(e->variables.at("DB_DSN").description == "the service's database");
  CHECK_FALSE(e->variables.at("REGION").secret);
  CHECK(e->variables.at("CUSTOMER").secret);
  CHECK(declaredSecretVariables(file) == std::set<std::string>{"CUSTOMER", "DB_DSN"});
  // A file that does not parse as an experiment still gives its secret names (for redaction).
  const std::string broken = std::string(kHeader) +
                             "variables:\n"
                             "  CUSTOMER: {secret: true}\n"
                             "method: 12\n";
  CHECK(declaredSecretVariables(broken) == std::set<std::string>{"CUSTOMER"});
  CHECK(declaredSecretVariables("{ not yaml").empty());
  CHECK(declaredSecretVariables(std::string(kMaxExperimentBytes + 1, ' ')).empty());
}

TEST_CASE("variables: bad entries name the field, the line and what is accepted") {
  const auto errors = errorsOf(std::string(kHeader) +
                               "variables:\n"
                               "  9LIVES: {secret: true}\n"
                               "  A: {secret: yes please}\n"
                               "  B: {hidden: true}\n"
                               "  C: just text\n"
                               "method:\n"
                               "  - wait: 1s\n");
  INFO(allDiagnostics(errors));
  CHECK(hasDiagnostic(errors, "variables.9LIVES", 6, "is not a variable name"));
  CHECK(hasDiagnostic(errors, "variables.A.secret", 7, "accepted: true or false"));
  CHECK(hasDiagnostic(errors, "variables.B.hidden", 8, "unknown key 'hidden'"));
  CHECK(hasDiagnostic(errors, "variables.C", 9, "description and secret"));
  std::string many = std::string(kHeader) + "variables:\n";
  for (int i = 0; i < 257; ++i) {
    many += fmt::format("  V{}: {{}}\n", i);
  }
  many += "method:\n  - wait: 1s\n";
  CHECK(contains(allDiagnostics(errorsOf(many)), "declares 257 variables; accepted: at most 256"));
}

TEST_CASE("variables: a secret marked only through substitution is refused") {
  const std::string file = std::string(kHeader) +
                           "variables:\n"
                           "  CUSTOMER: {secret: ${HIDE}}\n"
                           "method:\n"
                           "  - wait: 1s\n";
  CHECK(declaredSecretVariables(file).empty());
  auto e = parseExperiment(file, "v.yaml", Variables{{"HIDE", "true"}});
  REQUIRE_FALSE(e.has_value());
  CHECK(contains(allDiagnostics(e.error()), "variables.CUSTOMER: is marked secret only after ${...} substitution"));
  // false through a variable is harmless: nothing is hidden less than the file says.
  CHECK(parseExperiment(file, "v.yaml", Variables{{"HIDE", "false"}}).has_value());
}

// YAML aliases let a small file repeat one large parallel group (attacker trial, issue 16: 167 KB
// made 40 million steps and took the controller to 3 GB): the members count before any is read.
TEST_CASE("method: parallel members count toward the 1000 steps, aliases included, refused before they are read") {
  std::string file = std::string(kHeader) + "method: [&p {parallel: [&w {wait: 1ms}";
  for (int i = 0; i < 3999; ++i) {
    file += ", *w";
  }
  file += "]}";
  for (int i = 0; i < 999; ++i) {
    file += ", *p";
  }
  file += "]\n";
  const auto start = std::chrono::steady_clock::now();
  const auto errors = errorsOf(file);
  const auto took = std::chrono::steady_clock::now() - start;
  INFO(allDiagnostics(errors));
  CHECK(contains(allDiagnostics(errors),
                 "has 4000000 steps counting the members of parallel groups; accepted: at most 1000"));
  CHECK(took < std::chrono::seconds{2});
  // Within the bound, groups still parse.
  CHECK(parseExperiment(std::string(kHeader) + "method:\n  - parallel: [{wait: 1s}, {wait: 2s}]\n  - wait: 1s\n",
                        "ok.yaml")
            .has_value());
}

TEST_CASE("steadyState: minSamples per SLO (default 5) and after: {settle, window}") {
  const auto parsed = parseExperiment(std::string(kHeader) +
                                          "steadyState:\n"
                                          "  every: 200ms\n"
                                          "  probes:\n"
                                          "    - name: api\n"
                                          "      http: {url: http://a/}\n"
                                          "  slos:\n"
                                          "    - {name: fast, probe: api, objective: p99 < 1s over 10s}\n"
                                          "    - {name: strict, probe: api, objective: errors < 1% over 10s, "
                                          "minSamples: 50}\n"
                                          "  after: {settle: 5s, window: 30s}\n"
                                          "method:\n  - wait: 1s\n",
                                      "ok.yaml");
  REQUIRE_MESSAGE(parsed.has_value(), (parsed ? "" : allDiagnostics(parsed.error())));
  REQUIRE(parsed->hypothesis.slos.size() == 2);
  CHECK(parsed->hypothesis.slos[0].minSamples == kDefaultMinSamples);
  CHECK(parsed->hypothesis.slos[1].minSamples == 50);
  CHECK(parsed->hypothesis.afterSettle == 5s);
  REQUIRE(parsed->hypothesis.afterWindow.has_value());
  CHECK(*parsed->hypothesis.afterWindow == 30s);
  const auto plain = parseExperiment(std::string(kHeader) + "method:\n  - wait: 1s\n", "plain.yaml");
  REQUIRE(plain.has_value());
  CHECK(plain->hypothesis.afterSettle == 0ms);
  CHECK_FALSE(plain->hypothesis.afterWindow.has_value());
}

TEST_CASE("load: rate, concurrency and duration of http and tcp probes; the caps per probe and per run") {
  const std::string head =
      "apiVersion: faultline/v1\nkind: Experiment\nmetadata: {name: load}\nsteadyState:\n  probes:\n";
  const std::string tail =
      "  slos:\n    - {name: web-slo, probe: web, objective: errors < 1% and throughput > 190/s and p99 < 50ms}\n"
      "method:\n  - wait: 1s\n";
  auto result = parseExperiment(head +
                                    "    - {name: web, http: {url: 'http://10.0.0.1/', load: {rate: 200/s, "
                                    "concurrency: 16}}}\n"
                                    "    - {name: db, tcp: {address: '10.0.0.2:5432', load: {rate: 12.5, duration: "
                                    "500ms}}}\n"
                                    "    - {name: one, tcp: {address: '10.0.0.2:5432'}}\n" +
                                    tail,
                                "load.yaml");
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  const auto& probes = result->hypothesis.probes;
  REQUIRE(probes[0].http.load.has_value());
  CHECK(probes[0].http.load->rate == 200);
  CHECK(probes[0].http.load->concurrency == 16);
  CHECK(probes[0].http.load->duration == 1s);  // the default
  REQUIRE(probes[1].tcp.load.has_value());
  CHECK(probes[1].tcp.load->rate == 12.5);
  CHECK(probes[1].tcp.load->concurrency == 16);  // the default
  CHECK(probes[1].tcp.load->duration == 500ms);
  CHECK_FALSE(probes[2].tcp.load.has_value());
  const auto& terms = result->hypothesis.slos[0].terms;
  REQUIRE(terms.size() == 3);
  CHECK(terms[1].sli == SliKind::kThroughput);
  CHECK(terms[1].threshold == 190);

  const auto probeLine = [&](const std::string& load) {
    return head + "    - {name: web, http: {url: 'http://10.0.0.1/', load: " + load + "}}\n" + tail;
  };
  struct Case {
    std::string load;
    std::string field;
    std::string phrase;
  };
  for (const auto& c : std::vector<Case>{
           {"{rate: 5001/s}", "steadyState.probes[0].http.load.rate",
            "5001/s is out of range; accepted: requests per second, more than 0 and at most 5000/s per probe"},
           {"{rate: 0}", "steadyState.probes[0].http.load.rate", "0 is out of range"},
           {"{rate: fast}", "steadyState.probes[0].http.load.rate", "'fast' is not a rate"},
           {"{concurrency: 4}", "steadyState.probes[0].http.load.rate", "is required"},
           {"{rate: 10, concurrency: 257}", "steadyState.probes[0].http.load.concurrency", "1..256"},
           {"{rate: 10, concurrency: 0}", "steadyState.probes[0].http.load.concurrency", "1..256"},
           {"{rate: 10, duration: 61s}", "steadyState.probes[0].http.load.duration", "from 100ms to 60s"},
           {"{rate: 10, connections: 4}", "steadyState.probes[0].http.load.connections", "unknown key"},
           {"200", "steadyState.probes[0].http.load", "accepted: a map with rate"},
       }) {
    const auto d = errorsOf(probeLine(c.load));
    INFO(c.load, "\n", allDiagnostics(d));
    CHECK(hasDiagnostic(d, c.field, 6, c.phrase));
  }
  // Five probes of 5000/s each: 25000/s together, above the run's 20000/s.
  std::string five = head;
  for (int i = 0; i < 5; ++i) {
    five += fmt::format("    - {{name: p{}, tcp: {{address: '10.0.0.2:{}', load: {{rate: 5000/s}}}}}}\n", i, 80 + i);
  }
  const auto d = errorsOf(five + "method:\n  - wait: 1s\n");
  INFO(allDiagnostics(d));
  CHECK(hasDiagnostic(d, "steadyState.probes", 6,
                      "the load probes ask for 25000 requests/s together; accepted: at most 20000/s per experiment"));
  // Five probes of concurrency 256: 1280 sockets, above the run's 1024.
  std::string wide = head;
  for (int i = 0; i < 5; ++i) {
    wide += fmt::format("    - {{name: p{}, tcp: {{address: '10.0.0.2:{}', load: {{rate: 10, concurrency: 256}}}}}}\n",
                        i, 80 + i);
  }
  const auto w = errorsOf(wide + "method:\n  - wait: 1s\n");
  INFO(allDiagnostics(w));
  CHECK(hasDiagnostic(w, "steadyState.probes", 6,
                      "the load probes ask for a concurrency of 1280 together; accepted: at most 1024 per experiment"));
}

TEST_CASE("network.delay keepOrder: true or false; it needs a jitter") {
  const auto file = [](const std::string& fault) {
    return std::string(kHeader) +
           "method:\n  - fault: {type: network.delay, duration: 1s, target: {interface: eth0}, " + fault + "}\n";
  };
  auto kept = parseExperiment(file("delay: 100ms, jitter: 50ms, keepOrder: true"), "keep.yaml");
  REQUIRE_MESSAGE(kept.has_value(), (kept ? "" : allDiagnostics(kept.error())));
  CHECK(faultAt(*kept, 0).spec.network_delay().keep_order());
  auto plain = parseExperiment(file("delay: 100ms, jitter: 50ms"), "plain.yaml");
  REQUIRE(plain.has_value());
  CHECK_FALSE(faultAt(*plain, 0).spec.network_delay().keep_order());

  const auto notBoolean = errorsOf(file("delay: 100ms, jitter: 50ms, keepOrder: yes please"));
  CHECK_MESSAGE(hasDiagnostic(notBoolean, "method[0].fault.keepOrder", 6, "is not a boolean; accepted: true or false"),
                allDiagnostics(notBoolean));
  const auto noJitter = errorsOf(file("delay: 100ms, keepOrder: true"));
  CHECK_MESSAGE(hasDiagnostic(noJitter, "method[0].fault.keepOrder", 6, "jitter is 0"), allDiagnostics(noJitter));
  // After a bad jitter the keepOrder check says nothing more.
  const auto badJitter = errorsOf(file("delay: 10ms, jitter: 20ms, keepOrder: true"));
  CHECK(allDiagnostics(badJitter).find("keepOrder") == std::string::npos);
}
