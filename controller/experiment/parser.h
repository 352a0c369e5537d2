// INTERNAL to controller/experiment/, not part of the public API (that is experiment.h): what the
// files of the experiment parser share. parseExperiment() is split along the format's own
// sections, one file each, all members of one Parser:
//   experiment.cpp       loading the document (size and node limits, YAML errors), ${NAME}
//                        variables, the root map, parseExperiment()
//   metadata.cpp         metadata and targets
//   steady_state.cpp     steadyState: probes (http, tcp, command, prometheus) and SLOs
//   protocol_probes.cpp  the redis, postgres, grpc and dns probes, addresses, value checks
//   method.cpp           method: steps, parallel groups, and a fault step's type, name and duration
//   network_faults.cpp   the fields of network.* faults (target, match, Gilbert-Elliott, rates, sizes)
//   process_faults.cpp   the fields of process.* faults (process selectors)
//   resource_faults.cpp  the fields of stress.* and cgroup.squeeze faults
//   fields.cpp           values every section reads: whole numbers, durations, percentages; unknown keys
//   diagnostics.cpp      hints ("did you mean") and validateFaultSpec()'s errors placed in the file
// Field walking and diagnostics themselves are common/yaml_fields.h. Nothing outside this folder
// includes this header.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/yaml_fields.h"
#include "controller/experiment/experiment.h"
#include "faultline/v1/faults.pb.h"

namespace faultline::controller::detail {

using std::chrono::milliseconds;
using std::chrono::nanoseconds;
using yaml::childPath;
using yaml::contains;
using yaml::Entry;
using yaml::Field;
using yaml::joinKeys;
using yaml::KeyList;
using yaml::MapNode;

// The longest wait, sampling period, probe timeout or SLO window.
inline constexpr nanoseconds kMaxStep = std::chrono::hours{1};
// parseExperiment() reports at most this many errors (then "stopped checking after 100 errors").
inline constexpr size_t kMaxDiagnostics = 100;

enum class FaultKind {
  kDelay,
  kLoss,
  kBandwidth,
  kDuplicate,
  kCorrupt,
  kReorder,
  kPartition,
  kKill,
  kPause,
  kStressCpu,
  kStressMemory,
  kSqueeze
};

// A fault type as written in `type:`, and the keys its map accepts.
struct FaultType {
  std::string_view name;
  FaultKind kind;
  KeyList keys;
};

// diagnostics.cpp
[[nodiscard]] std::string lower(std::string_view s);
// " (did you mean 'x'?)" for the nearest candidate within 1 edit (words up to 4 letters) or 2
// edits (longer words), ignoring case; "" when nothing is that close.
[[nodiscard]] std::string suggestion(std::string_view word, KeyList candidates);

// steady_state.cpp: "< 0.8" (a prometheus probe's expect, a number check) into its comparison and
// number; the error says what is accepted.
[[nodiscard]] tl::expected<std::pair<Comparison, double>, std::string> parseExpectation(std::string_view text);

// steady_state.cpp: why text is not a JSON Pointer (RFC 6901), or nullopt when it is one.
[[nodiscard]] std::optional<std::string> jsonPointerError(std::string_view text);

// fields.cpp: why text cannot name a probe, an SLO or a step (they appear in events, `show` and
// reports): more than kMaxLabelNameBytes, or a control character (a newline, ESC); "" when it can.
inline constexpr std::size_t kMaxLabelNameBytes = 128;
[[nodiscard]] std::string labelNameProblem(std::string_view text);

// fields.cpp: splits "1.5mbit" into 1.5 and "mbit" (the unit lower-cased); nullopt when there is no number.
[[nodiscard]] std::optional<std::pair<double, std::string>> splitNumber(std::string_view text);

// Reads one experiment document. Each member reports what it rejects (error(), at most
// kMaxDiagnostics) and returns what it could read; parseExperiment() keeps the result only when
// nothing was reported. Not thread-safe: one Parser per parse.
class Parser : public yaml::FieldReader {
 public:
  explicit Parser(std::string file) : FieldReader(std::move(file), kMaxDiagnostics) {}

  // experiment.cpp: the root map and every section below it.
  Experiment parse(const YAML::Node& root);

 private:
  // fields.cpp
  // Reports the keys of m that are not in accepted, with a hint when one is close.
  void rejectUnknown(const MapNode& m, KeyList accepted);
  // A whole number from min to max. Errors name the text as written: "'-1' is out of range
  // (accepted: 1..1024, a number of workers)"; a number too long for 64 bits is out of range too.
  std::optional<long long> integer(const Field& f, long long min, long long max, std::string_view what);
  std::optional<nanoseconds> duration(const Field& f);
  std::optional<nanoseconds> durationIn(const Field& f, nanoseconds min, nanoseconds max, std::string_view range,
                                        bool wholeMillis);
  std::optional<double> percent(const Field& f);

  // metadata.cpp
  void parseMetadata(const Field& f, Experiment& out);
  void parseVariables(const Field& f, Experiment& out);
  void parseTargets(const Field& f, Targets& out);

  // steady_state.cpp
  void parseSteadyState(const Field& f, Hypothesis& out);
  std::optional<Probe> parseProbe(const Field& f, std::map<std::string, int>& namesSeen);
  void parseHttpProbe(const Field& f, HttpProbe& out);
  void parseTcpProbe(const Field& f, TcpProbe& out);
  void parseCommandProbe(const Field& f, CommandProbe& out);
  void parsePrometheusProbe(const Field& f, PrometheusProbe& out);
  void parseJsonCheck(const Field& f, HttpProbe& out);
  void parseCommandEnv(const Field& f, CommandProbe& out);
  void parseLatencies(const MapNode& h, milliseconds* maxLatency, milliseconds& timeout);
  // `load:` of an http or tcp probe (LoadSpec): nullopt after an error.
  std::optional<LoadSpec> parseLoad(const Field& f);
  std::optional<std::string> regex(const Field& f);
  // protocol_probes.cpp
  void parseRedisProbe(const Field& f, RedisProbe& out);
  void parsePostgresProbe(const Field& f, PostgresProbe& out);
  void parseGrpcProbe(const Field& f, GrpcProbe& out);
  void parseDnsProbe(const Field& f, DnsProbe& out);
  // A scalar of at most kMaxProbeText bytes without control characters.
  std::optional<std::string> boundedText(const Field& f, std::string_view accepted, bool allowEmpty);
  // HOST:PORT, checked as the URL parser checks a URL's host and port.
  std::optional<std::pair<std::string, uint16_t>> hostPort(const Field& f, std::string_view accepted);
  // HOST:PORT or unix:/PATH.
  std::optional<ProbeAddress> probeAddress(const Field& f);
  std::optional<NumberCheck> numberCheck(const Field& f);
  std::optional<ValueCheck> valueCheck(const Field& f);
  // every: the probes' sampling period (a window that cannot hold minSamples samples is refused).
  std::optional<Slo> parseSlo(const Field& f, const std::vector<Probe>& probes, std::map<std::string, int>& namesSeen,
                              milliseconds every);
  void parseAfter(const Field& f, Hypothesis& out);

  // method.cpp
  void parseMethod(const Field& f, std::vector<Step>& out);
  // One step of method (nested false) or of a parallel group (nested true: no parallel inside).
  std::optional<Step> parseStep(const Field& f, bool nested);
  // After the whole file is read: every probe step names a probe of steadyState.
  void checkProbeSteps(const Hypothesis& hypothesis);
  std::optional<FaultStep> parseFault(const Field& f);
  void checkFaultKeys(const MapNode& m, const FaultType* type);

  // network_faults.cpp: the fields of a network.* fault map m into spec.
  void parseNetworkFault(FaultKind kind, const MapNode& m, v1::FaultSpec& spec);
  std::optional<v1::NetworkTarget> parseNetworkTarget(const MapNode& fault);
  std::optional<v1::TrafficMatch> parseMatch(const Field& f);
  std::optional<v1::GilbertElliott> parseGilbertElliott(const Field& f);
  std::optional<uint32_t> packets(const Field& f);
  std::vector<Field> scalarList(const Field& f, std::string_view accepted);
  std::optional<uint64_t> rate(const Field& f);
  std::optional<uint32_t> size(const Field& f);

  // process_faults.cpp: the fields of a process.* fault map m into spec.
  void parseProcessFault(FaultKind kind, const MapNode& m, v1::FaultSpec& spec);
  std::optional<v1::ProcessSelector> parseProcess(const MapNode& fault);
  // A process selector map (process: or a network target's netns:).
  std::optional<v1::ProcessSelector> parseSelector(const Field& f, std::string_view accepted);

  // resource_faults.cpp: the fields of a stress.* or cgroup.squeeze fault map m into spec.
  void parseResourceFault(FaultKind kind, const MapNode& m, v1::FaultSpec& spec);
  std::optional<uint64_t> bytes64(const Field& f);
  std::optional<double> number(const Field& f, std::string_view accepted);

  // diagnostics.cpp
  void validateSpec(v1::FaultSpec spec, const MapNode& fault, size_t faultErrorsFrom);

  std::vector<std::pair<std::string, Field>> probeSteps_;  // probe name, where the step names it
};

}  // namespace faultline::controller::detail
