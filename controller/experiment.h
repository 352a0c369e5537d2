// Experiment files, format v1 (YAML, apiVersion: faultline/v1): parsing and validation.
// The format is documented in docs/experiments.md.
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <tl/expected.hpp>

#include "faultline/v1/faults.pb.h"

namespace faultline::controller {

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
// "FILE:LINE:COLUMN: FIELD: MESSAGE", or "FILE:LINE:COLUMN: MESSAGE" when field is empty.
[[nodiscard]] std::string format(const Diagnostic& d);

struct Targets {
  std::map<std::string, std::string> selector;  // agent labels that must all match; empty = every agent
  // all (count == nullopt) or count(n): the first n matching agents in agent-id order.
  std::optional<unsigned> count;
};

struct HttpProbe {
  std::string url;  // http://HOST[:PORT]/PATH (no TLS in v1)
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
// every fault. Never partially succeeds: either every field is valid or every error found is
// returned (at least one), sorted by line and column; a YAML syntax error is returned alone.
// fileName is used in diagnostics only. Pure function of its input: no I/O, thread-safe.
[[nodiscard]] tl::expected<Experiment, std::vector<Diagnostic>> parseExperiment(std::string_view yaml,
                                                                                const std::string& fileName);

}  // namespace faultline::controller
