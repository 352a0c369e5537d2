// Text views of run records for the CLI: `faultline show RUN_ID` and `faultline runs`.
// Pure functions of their input, except that wall-clock times are printed in the process's
// local time zone (TZ), as ISO 8601 with the UTC offset. Control characters in recorded
// text (messages come from remote hosts) are replaced by spaces, so one record is one line.
#pragma once

#include <string>
#include <vector>

#include "faultline/v1/control.pb.h"

namespace faultline::controller {

// held, violated, not steady, aborted, error; running while there is no verdict yet.
[[nodiscard]] std::string verdictWord(v1::Verdict verdict);

// The run's header (id, experiment, trigger, first 12 characters of the file's sha256, start,
// end, duration, verdict: held, violated, not steady, aborted, error or running, reason), its
// events in time order as "+SECONDS.mmm  HOST  KIND  MESSAGE" relative to the start (host "-"
// for run-level events),
// and per probe and phase (before, during, after, then any other) the number of samples, the
// failed ones, and the p50 (nearest rank) and maximum latency in ms. Ends with a newline.
[[nodiscard]] std::string formatTimeline(const v1::Run& run);

// A header line, then one line per run in the given order: id, start (local, seconds),
// experiment, trigger, verdict, reason (cut to 60 characters with "..."). "no runs\n" if empty.
[[nodiscard]] std::string formatRunList(const std::vector<v1::Run>& runs);

}  // namespace faultline::controller
