// The `kind: Schedule` file of `faultline apply` (controller/cli/schedule_file.h): fields read,
// the experiment inline or by a path relative to the file, and every error at its line:column.
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <doctest/doctest.h>

#include "controller/cli/schedule_file.h"

using namespace faultline;
using namespace faultline::controller::cli;

namespace {

std::string errors(const tl::expected<v1::Schedule, std::vector<Diagnostic>>& r) {
  std::string out;
  if (!r) {
    for (const auto& d : r.error()) {
      out += format(d) + "\n";
    }
  }
  return out;
}

}  // namespace

TEST_CASE("schedule file: every field, the experiment inline") {
  const auto r = parseScheduleFile(R"(apiVersion: faultline/v1
kind: Schedule
metadata:
  name: nightly
spec:
  cron: "0 3 * * 1-5"
  timezone: Europe/Berlin
  concurrency: replace
  startingDeadline: 15m
  jitter: 1500ms
  blackouts: ["Fri 16:00 - Mon 08:00"]
  onlyIf: [budget]
  vars: {IFACE: eth0}
  experiment:
    apiVersion: faultline/v1
    kind: Experiment
    metadata: {name: inline}
)",
                                   "/etc/faultline/nightly.yaml");
  REQUIRE_MESSAGE(r, errors(r));
  CHECK(r->name() == "nightly");
  CHECK(r->cron() == "0 3 * * 1-5");
  CHECK(r->timezone() == "Europe/Berlin");
  CHECK(r->concurrency() == "replace");
  CHECK(r->starting_deadline().seconds() == 900);
  CHECK(r->jitter().seconds() == 1);
  CHECK(r->jitter().nanos() == 500'000'000);
  CHECK(r->blackouts(0) == "Fri 16:00 - Mon 08:00");
  CHECK(r->only_if(0) == "budget");
  CHECK(r->variables().at("IFACE") == "eth0");
  CHECK(r->experiment().find("name: inline") != std::string::npos);
  CHECK(r->file_name() == "/etc/faultline/nightly.yaml (spec.experiment, line 15)");
}

TEST_CASE("schedule file: experimentFile is read relative to the schedule file") {
  char tmpl[] = "/tmp/faultline-schedfile-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  std::filesystem::create_directories(dir + "/schedules");
  std::ofstream(dir + "/exp.yaml") << "apiVersion: faultline/v1\n";
  const auto r = parseScheduleFile(
      "apiVersion: faultline/v1\nkind: Schedule\nmetadata: {name: a}\nspec:\n  cron: '@daily'\n  experimentFile: "
      "../exp.yaml\n",
      dir + "/schedules/a.yaml");
  std::filesystem::remove_all(dir);
  REQUIRE_MESSAGE(r, errors(r));
  CHECK(r->experiment() == "apiVersion: faultline/v1\n");
  CHECK(r->file_name() == dir + "/exp.yaml");
}

TEST_CASE("schedule file: errors with file:line:column, every one") {
  const auto r = parseScheduleFile(R"(apiVersion: faultline/v2
kind: Schedule
metadata:
  name: x
spec:
  concurrency: sometimes
  jitter: soon
  bogus: 1
  experiment: {a: 1}
  experimentFile: e.yaml
)",
                                   "s.yaml");
  REQUIRE_FALSE(r);
  const std::string text = errors(r);
  INFO(text);
  CHECK(text.find("s.yaml:1:13: apiVersion: 'faultline/v2' is not accepted; accepted: faultline/v1") !=
        std::string::npos);
  CHECK(text.find("s.yaml:6:16: spec.concurrency: 'sometimes' is not accepted; accepted: forbid, allow, replace") !=
        std::string::npos);
  CHECK(text.find("s.yaml:7:11: spec.jitter:") != std::string::npos);
  CHECK(text.find("s.yaml:8:3: ") != std::string::npos);  // the unknown key
  CHECK(text.find("unknown key 'bogus'") != std::string::npos);
  CHECK(text.find("s.yaml:10:19: spec.experimentFile: given with spec.experiment") != std::string::npos);
  CHECK(text.find("cron") != std::string::npos);  // required
  CHECK(text.find("is required") != std::string::npos);
  const auto kind = parseScheduleFile("apiVersion: faultline/v1\nkind: Experiment\n", "e.yaml");
  CHECK(errors(kind).find("e.yaml:2:7: kind: 'Experiment' is not accepted here") != std::string::npos);
}
