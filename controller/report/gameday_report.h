// What a game day (`faultline gameday FILE...`) looks like to people and tools: the summary table
// it prints, the Markdown summary for postmortem or game-day notes (--summary), and one JUnit
// file with a <testsuite> per experiment (--junit). Pure functions of their input, except that
// wall-clock times are printed in the process's local time zone (TZ) like run_format.h.
#pragma once

#include <string>
#include <vector>

#include "controller/experiment/experiment.h"
#include "controller/report/run_format.h"
#include "faultline/v1/control.pb.h"

namespace faultline::controller {

// One experiment of a game day, in the order given. A run that was not started (the game day
// stopped before it) has an empty run.run_id() and notRun saying why.
struct GamedayEntry {
  std::string file;        // as given on the command line
  std::string experiment;  // metadata.name
  v1::Run run;             // the finished run's record (events, samples, SLO checks), if it ran
  std::string notRun;      // why it did not run, e.g. "not run: exp-2 was violated (no --keep-going)"
};

// The worst SLI of a run, in words: of its SLO checks, the failed measure furthest past its
// threshold (else the measure closest to it), e.g. "p95 312.4ms (< 100ms), SLO checkout during";
// without SLO checks, the probe with the most failed samples (then the slowest), e.g. "probe demo:
// 3 of 40 failed, max 2012.0ms"; "-" when the run recorded neither.
[[nodiscard]] std::string worstSli(const v1::Run& run);

// A run's duration ("12.3s"; "-" when it has no end).
[[nodiscard]] std::string runDuration(const v1::Run& run);

// The table printed at the end: a header, then one line per entry: #, experiment, verdict ("not
// run" for one that did not run), duration, worst SLI, run id. Ends with a newline.
[[nodiscard]] std::string formatGamedayTable(const std::vector<GamedayEntry>& entries);

// The Markdown summary: a "# Game day" title with the start, the controller and the result, the
// table above as a Markdown table (cells' | escaped), then a section per experiment with its
// verdict, reason and how to read its timeline (`faultline show RUN_ID`). Ends with a newline.
// result: e.g. "violated (exit 1)".
[[nodiscard]] std::string formatGamedayMarkdown(const std::vector<GamedayEntry>& entries, const std::string& controller,
                                                const std::string& result);

// One JUnit XML document (tests/junit/junit.xsd): <testsuites> (the schema allows no attribute there) with, per
// entry in order, the <testsuite> formatJUnit() writes for its run (with package
// "faultline.gameday" and id = its position from 0), or for one that did not run a suite of
// one skipped test case naming why. experiments[i] is entry i's parsed file.
[[nodiscard]] std::string formatGamedayJUnit(const std::vector<GamedayEntry>& entries,
                                             const std::vector<const Experiment*>& experiments,
                                             const std::string& hostname);

}  // namespace faultline::controller
