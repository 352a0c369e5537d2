// Experiment files, format v1 (YAML, apiVersion: faultline/v1): parsing and validation.
// The format is documented in docs/experiments.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <tl/expected.hpp>

#include "faultline/v1/faults.pb.h"

namespace faultline::controller {

// Limits of one experiment file; parseExperiment refuses more. The byte limit keeps a file well
// under the controller's 4 MiB gRPC message limit: a caller reading a file can read at most
// kMaxExperimentBytes + 1 bytes and pass them on, and parseExperiment reports it as too large.
inline constexpr std::size_t kMaxExperimentBytes = 1024 * 1024;  // 1 MiB
inline constexpr std::size_t kMaxMethodSteps = 1000;
inline constexpr std::size_t kMaxProbes = 100;

// One error in an experiment file. line and column are 1-based (0 when unknown); they point at
// the offending value, at the key for unknown or duplicate keys, and at the parent map for a
// missing key. field is the dotted path of the offending key, e.g. "method[2].fault.delay";
// empty for errors about the file as a whole (YAML syntax, empty file, several documents).
struct Diagnostic {
  std::string file;
  int line = 0;
  int column = 0;
  std::string field;
  std::string message;  // what is wrong, the value, and what would be accepted
};
// "FILE:LINE:COLUMN: FIELD: MESSAGE", or "FILE:LINE:COLUMN: MESSAGE" when field is empty;
// without ":LINE:COLUMN" when line is 0 (no place in the file, e.g. a file over the size limit).
[[nodiscard]] std::string format(const Diagnostic& d);

struct Targets {
  std::map<std::string, std::string> selector;  // agent labels that must all match; empty = every agent
  // all (count == nullopt) or count(n): the first n matching agents in agent-id order.
  std::optional<unsigned> count;
};

struct HttpProbe {
  std::string url;  // passed parseHttpUrl() (probe.h): http://HOST[:PORT][/PATH], no TLS in v1
  int expectStatus = 200;
  std::chrono::milliseconds maxLatency{1000};  // a slower answer is a failed sample
  std::chrono::milliseconds timeout{2000};     // no answer by then is a failed sample
};

struct Probe {
  std::string name;
  HttpProbe http;
};

struct Hypothesis {
  std::vector<Probe> probes;
  std::chrono::milliseconds every{1000};  // sampling period while faults are active
};

struct FaultStep {
  std::string name;                       // for events and records; defaults to the fault type
  v1::FaultSpec spec;                     // passed validateFaultSpec()
  std::chrono::milliseconds duration{0};  // > 0: the fault is held this long, then reverted
};

struct WaitStep {
  std::chrono::milliseconds duration{0};
};

using Step = std::variant<FaultStep, WaitStep>;

struct Experiment {
  std::string name;
  std::string description;
  Targets targets;
  Hypothesis hypothesis;
  std::vector<Step> method;
};

// Parses and validates the whole file (docs/experiments.md), including validateFaultSpec() on
// every fault and parseHttpUrl() (probe.h) on every probe URL. Never partially succeeds: either
// every field is valid or every error found is returned (at least one), sorted by line and
// column; a YAML syntax error (nesting deeper than yaml-cpp's limit included) is returned alone,
// and so is a text over kMaxExperimentBytes, which is refused before it is parsed.
// fileName is used in diagnostics only. Pure function of its input: no I/O, thread-safe.
[[nodiscard]] tl::expected<Experiment, std::vector<Diagnostic>> parseExperiment(std::string_view yaml,
                                                                                const std::string& fileName);

}  // namespace faultline::controller
