// Delay distribution tables for netem (tc-netem(8) "distribution"): the tables iproute2 ships
// (NAME.dist in its tc library folder), or the agent's own when the host has none.
//
// A table lists values in units of jitter / 8192 (NETEM_DIST_SCALE); netem adds
// jitter x value / 8192 to the delay, for a value drawn from the table at random. So the values
// of a table have mean about 0 and standard deviation about 8192. Loading is thread-safe; a
// table is read once and kept.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <tl/expected.hpp>

#include "faultline/v1/faults.pb.h"

namespace faultline::agent {

struct DelayTable {
  std::vector<int16_t> values;  // empty for uniform (netem needs no table)
  std::string source;           // the file read, or "generated"
};

// Folders searched for NAME.dist, in order: $TC_LIB_DIR, /usr/lib/x86_64-linux-gnu/tc,
// /usr/lib/aarch64-linux-gnu/tc, /usr/lib64/tc, /usr/lib/tc, /lib/tc.
[[nodiscard]] std::vector<std::string> defaultDistributionDirs();

// The table of a distribution: the first NAME.dist found in dirs that parses, else
// generateDelayDistribution(). Uniform (and unspecified): no table.
[[nodiscard]] DelayTable delayDistributionTable(v1::DelayDistribution distribution,
                                                const std::vector<std::string>& dirs = defaultDistributionDirs());

// The agent's own table of 4096 values: normal (inverse normal CDF at the midpoints of 4096
// equal-probability bins), pareto (shape 3, standardized to mean 0 and deviation 1), or
// paretonormal (the quantiles of 0.25 normal + 0.75 pareto, standardized); each scaled by 8192
// and clamped to int16. Pure.
[[nodiscard]] std::vector<int16_t> generateDelayDistribution(v1::DelayDistribution distribution);

// Parses a NAME.dist file: whitespace-separated integers in [-32768, 32767], '#' starts a
// comment to the end of the line; 1-16384 values. errors: what is wrong and where (line).
[[nodiscard]] tl::expected<std::vector<int16_t>, std::string> parseDistributionFile(std::string_view text);

// "normal", "pareto", "paretonormal", "uniform".
[[nodiscard]] std::string_view distributionName(v1::DelayDistribution distribution);

}  // namespace faultline::agent
