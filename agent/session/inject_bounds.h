// What the agent accepts in an Inject from a controller, before anything else looks at it: sizes
// of the fault id, of every string, list and map of the spec and of the whole message, and the
// start_at against this host's clock. Pure, no kernel call: the agent (agent.cpp) and the Inject
// fuzz target (tests/fuzz/inject_fuzz.cpp) run the same check.
#pragma once

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "faultline/v1/agent_gateway.pb.h"

namespace faultline::agent {

// Bounds on what the agent accepts from a controller (checkInjectBounds()). A fault id is
// "RUN/STEP/AGENT" and names the fault in every log line and report.
inline constexpr std::size_t kMaxFaultIdBytes = 512;
// Any one string of a spec (paths, interface and unit names, regexes, CIDRs): PATH_MAX.
inline constexpr std::size_t kMaxSpecStringBytes = 4096;
// Any one list or map of a spec (ports, CIDRs, selectors).
inline constexpr int kMaxSpecListItems = 256;
// A whole Inject, serialized.
inline constexpr std::size_t kMaxInjectBytes = 64 * 1024;
// A start_at further from this host's clock than these is refused: the controller's clock and
// this host's disagree, and the step would not start together anyway.
inline constexpr std::chrono::seconds kMaxStartAhead{30};
inline constexpr std::chrono::seconds kMaxStartBehind{30};

// An agent id: 1 to kMaxAgentIdBytes bytes of ASCII letters, digits, '.', '_', '-', ':' and '@'
// (any hostname fits), so that a fault id "RUN/STEP/AGENT" (a run id is 32 hex digits) stays within
// what a controller accepts back, and no id carries a terminal control sequence into a log, a
// listing or a report. The agent checks its --id, the controller every Hello.
inline constexpr std::size_t kMaxAgentIdBytes = 64;
// Why id is no agent id ("not an agent id: 65 bytes, more than 64; accepted: ..."; the id itself is
// not repeated: it may hold control characters), nullopt when it is one. Pure.
[[nodiscard]] std::optional<std::string> checkAgentId(std::string_view id);

// Checks an Inject's size bounds (the constants above; the fault id must also be non-empty and
// without control characters) and its start_at against now (system clock). Pure; thread-safe.
// Returns the reason for a refusal, in words that name the bound.
[[nodiscard]] std::optional<std::string> checkInjectBounds(const v1::Inject& inject,
                                                           std::chrono::system_clock::time_point now);

}  // namespace faultline::agent
