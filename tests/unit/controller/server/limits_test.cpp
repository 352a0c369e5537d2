// controller/server/limits.h: the bounds on what peers send, checked without a server (the e2e test
// sends over-large messages to a real controller).
#include <string>

#include <doctest/doctest.h>

#include "controller/server/limits.h"

using namespace faultline::controller;
namespace v1 = faultline::v1;

TEST_CASE("a Hello within bounds passes; each bound names the field, the size and the limit") {
  v1::Hello h;
  h.set_agent_id("web-1");
  (*h.mutable_labels())["role"] = "web";
  CHECK_FALSE(overLimits(h).has_value());
  h.set_agent_id(std::string(65, 'a'));
  CHECK(overLimits(h) ==
        "Hello.agent_id: not an agent id: 65 bytes, more than 64; accepted: 1 to 64 ASCII letters, digits, '.', '_', "
        "'-', ':' or '@'");
  // The longest agent id leaves its fault ids (RUN/STEP/AGENT) within what a FaultReport may carry.
  h.set_agent_id(std::string(64, 'a'));
  CHECK_FALSE(overLimits(h).has_value());
  v1::FaultReport report;
  report.set_fault_id(std::string(32, 'f') + "/12.3/" + std::string(64, 'a'));
  CHECK_FALSE(overLimits(report).has_value());
  // No control character (a terminal escape in `faultline agents`), no space, no '/'.
  for (const std::string bad : {std::string("evil\x1b[2J"), std::string("a b"), std::string("a/b"), std::string()}) {
    h.set_agent_id(bad);
    REQUIRE(overLimits(h).has_value());
    CHECK_MESSAGE(overLimits(h)->rfind("Hello.agent_id: not an agent id: ", 0) == 0, *overLimits(h));
    CHECK(overLimits(h)->find('\x1b') == std::string::npos);
  }
  h.set_agent_id("db-2.example.org:agent@rack4_b");
  CHECK_FALSE(overLimits(h).has_value());
  h.set_agent_id("web-1");
  h.set_kernel_release(std::string(200, 'k'));
  CHECK(overLimits(h) == "Hello.kernel_release: 200 bytes, more than the 128 accepted");
  h.clear_kernel_release();
  h.add_active_faults()->set_error(std::string(kMaxReportTextBytes + 1, 'e'));
  CHECK(overLimits(h) == "Hello.active_faults: FaultReport.error: 65537 bytes, more than the 65536 accepted");
}

TEST_CASE("SubmitRun: a secret variable must be one of the variables") {
  v1::SubmitRunRequest r;
  r.set_experiment("apiVersion: faultline/v1\n");
  (*r.mutable_variables())["DB"] = "hunter2";
  r.add_secret_variables("DB");
  CHECK_FALSE(overLimits(r).has_value());
  r.add_secret_variables("OTHER");
  CHECK(overLimits(r) == "secret_variables: 'OTHER' is not a key of variables; accepted: names given in variables");
}

TEST_CASE("SubmitRun: trigger and a variable's value are bounded too") {
  v1::SubmitRunRequest r;
  r.set_experiment("apiVersion: faultline/v1\n");
  r.set_trigger(std::string(65, 't'));
  CHECK(overLimits(r) == "trigger: 65 bytes, more than the 64 accepted");
  r.clear_trigger();
  (*r.mutable_variables())["TOKEN"] = std::string(kMaxVariableValueBytes + 1, 'v');
  CHECK(overLimits(r) == "variables.TOKEN: 65537 bytes, more than the 65536 accepted");
}

TEST_CASE("log lines quote at most 200 bytes of a remote string") {
  CHECK(forLog("host-1") == "host-1");
  const std::string logged = forLog(std::string(5000, 'h'));
  CHECK(logged == std::string(200, 'h') + "... (5000 bytes)");
}

TEST_CASE("ListRuns: the limit, the trigger and the verdict are bounded; running goes without a verdict") {
  v1::ListRunsRequest r;
  CHECK_FALSE(overLimits(r).has_value());
  r.set_limit(1000);
  r.set_trigger(std::string(64, 't'));
  r.set_verdict(v1::VERDICT_VIOLATED);
  CHECK_FALSE(overLimits(r).has_value());
  r.set_limit(1001);
  CHECK(overLimits(r) == "limit: 1001 runs, more than the 1000 accepted (0 means 20)");
  r.set_limit(0);
  r.set_trigger(std::string(65, 't'));
  CHECK(overLimits(r) == "trigger: 65 bytes, more than the 64 accepted");
  r.set_trigger("ci");
  r.set_only_running(true);
  CHECK(overLimits(r) == "only_running: set together with a verdict; a running run has none (leave verdict unset)");
  r.set_verdict(static_cast<v1::Verdict>(99));
  r.set_only_running(false);
  CHECK(overLimits(r) == "verdict: 99 is not a verdict; accepted: the values of faultline.v1.Verdict");
}
