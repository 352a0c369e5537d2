#include "controller/experiment/experiment.h"
#include "controller/experiment/url.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <sstream>
#include <type_traits>
#include <utility>

#include <fmt/format.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "agent/faults/spec.h"
#include "common/regex.h"

namespace faultline::controller {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using std::chrono::nanoseconds;

using KeyList = std::span<const std::string_view>;

constexpr std::array<std::string_view, 6> kRootKeys{"apiVersion", "kind",        "metadata",
                                                    "targets",    "steadyState", "method"};
constexpr std::array<std::string_view, 2> kMetadataKeys{"name", "description"};
constexpr std::array<std::string_view, 2> kTargetsKeys{"selector", "mode"};
constexpr std::array<std::string_view, 3> kSteadyStateKeys{"every", "probes", "slos"};
constexpr std::array<std::string_view, 6> kProbeKeys{"name", "guard", "http", "tcp", "command", "prometheus"};
constexpr std::array<std::string_view, 4> kProbeKindKeys{"http", "tcp", "command", "prometheus"};
constexpr std::array<std::string_view, 8> kHttpKeys{"url",          "method",    "headers",    "body",
                                                    "expectStatus", "bodyMatch", "maxLatency", "timeout"};
constexpr std::array<std::string_view, 3> kTcpKeys{"address", "maxLatency", "timeout"};
constexpr std::array<std::string_view, 5> kCommandKeys{"argv", "shell", "expectExit", "stdoutMatch", "timeout"};
constexpr std::array<std::string_view, 4> kPrometheusKeys{"url", "query", "expect", "timeout"};
constexpr std::array<std::string_view, 4> kSloKeys{"name", "probe", "objective", "maxBurnRate"};
constexpr std::array<std::string_view, 7> kHttpMethods{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
constexpr std::array<std::string_view, 4> kStepKeys{"fault", "wait", "probe", "parallel"};
constexpr std::array<std::string_view, 3> kParallelMemberKeys{"fault", "wait", "probe"};
constexpr std::array<std::string_view, 4> kNetworkTargetKeys{"interface", "netns", "direction", "match"};
constexpr std::array<std::string_view, 5> kMatchKeys{"destination", "source", "destinationPorts", "sourcePorts",
                                                     "protocol"};
constexpr std::array<std::string_view, 4> kGilbertElliottKeys{"p", "r", "badLoss", "goodLoss"};
constexpr std::array<std::string_view, 8> kProcessKeys{"pid",     "name",        "cmdline", "cgroup",
                                                       "pidfile", "systemdUnit", "count",   "percent"};

constexpr std::array<std::string_view, 10> kDelayKeys{"name",   "type",        "duration",     "target", "delay",
                                                      "jitter", "correlation", "distribution", "rate",   "limit"};
constexpr std::array<std::string_view, 8> kLossKeys{"name",    "type",        "duration",       "target",
                                                    "percent", "correlation", "gilbertElliott", "limit"};
constexpr std::array<std::string_view, 8> kBandwidthKeys{"name", "type",  "duration", "target",
                                                         "rate", "burst", "limit",    "latency"};
constexpr std::array<std::string_view, 6> kProbabilityKeys{"name",   "type",    "duration",
                                                           "target", "percent", "correlation"};
constexpr std::array<std::string_view, 8> kReorderKeys{"name",    "type",        "duration", "target",
                                                       "percent", "correlation", "delay",    "gap"};
constexpr std::array<std::string_view, 4> kPartitionKeys{"name", "type", "duration", "target"};
constexpr std::array<std::string_view, 6> kKillKeys{"name", "type", "duration", "process", "signal", "every"};
constexpr std::array<std::string_view, 4> kPauseKeys{"name", "type", "duration", "process"};
constexpr std::array<std::string_view, 5> kStressCpuKeys{"name", "type", "duration", "workers", "load"};
constexpr std::array<std::string_view, 4> kStressMemoryKeys{"name", "type", "duration", "bytes"};
constexpr std::array<std::string_view, 7> kSqueezeKeys{"name", "type",       "duration", "cgroup",
                                                       "cpus", "memoryHigh", "pidsMax"};
// Every key some fault type accepts: the candidates when the type itself is missing or wrong.
constexpr std::array<std::string_view, 25> kAnyFaultKeys{
    "name",    "type",  "duration", "target",  "delay",   "jitter",     "correlation", "distribution",   "percent",
    "rate",    "burst", "limit",    "latency", "process", "signal",     "every",       "gilbertElliott", "gap",
    "workers", "load",  "bytes",    "cgroup",  "cpus",    "memoryHigh", "pidsMax"};

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

struct FaultType {
  std::string_view name;
  FaultKind kind;
  KeyList keys;
};

constexpr std::array<FaultType, 12> kFaultTypes{{
    {"network.delay", FaultKind::kDelay, kDelayKeys},
    {"network.loss", FaultKind::kLoss, kLossKeys},
    {"network.bandwidth", FaultKind::kBandwidth, kBandwidthKeys},
    {"network.duplicate", FaultKind::kDuplicate, kProbabilityKeys},
    {"network.corrupt", FaultKind::kCorrupt, kProbabilityKeys},
    {"network.reorder", FaultKind::kReorder, kReorderKeys},
    {"network.partition", FaultKind::kPartition, kPartitionKeys},
    {"process.kill", FaultKind::kKill, kKillKeys},
    {"process.pause", FaultKind::kPause, kPauseKeys},
    {"stress.cpu", FaultKind::kStressCpu, kStressCpuKeys},
    {"stress.memory", FaultKind::kStressMemory, kStressMemoryKeys},
    {"cgroup.squeeze", FaultKind::kSqueeze, kSqueezeKeys},
}};
constexpr std::string_view kFaultTypeNames =
    "network.delay, network.loss, network.bandwidth, network.duplicate, network.corrupt, network.reorder, "
    "network.partition, process.kill, process.pause, stress.cpu, stress.memory, cgroup.squeeze";

constexpr std::string_view kDurationHint = "a duration such as 500ms, 1.5s or 2m";
constexpr nanoseconds kMaxStep = 1h;
constexpr nanoseconds kMinEvery = 50ms;

// yaml-cpp's node tree takes about 500 bytes a node: a 1 MiB file of "[a,a,a,..." would take
// 250 MB. An experiment at its limits (1000 steps, 100 probes) has about 25000 nodes.
constexpr size_t kMaxYamlNodes = 50'000;
constexpr size_t kMaxDiagnostics = 100;

bool contains(KeyList keys, std::string_view key) {
  return std::find(keys.begin(), keys.end(), key) != keys.end();
}

std::string joinKeys(KeyList keys) {
  std::string out;
  for (std::string_view k : keys) {
    if (!out.empty()) {
      out += ", ";
    }
    out += k;
  }
  return out;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

// Edit distance ignoring case (so "expectstatus" is 0 away from "expectStatus"), where swapping
// two adjacent letters counts as one edit (optimal string alignment: "nmae" is 1 from "name").
size_t editDistance(std::string_view a, std::string_view b) {
  const std::string x = lower(a);
  const std::string y = lower(b);
  std::vector<std::vector<size_t>> d(x.size() + 1, std::vector<size_t>(y.size() + 1));
  for (size_t i = 0; i <= x.size(); ++i) {
    d[i][0] = i;
  }
  for (size_t j = 0; j <= y.size(); ++j) {
    d[0][j] = j;
  }
  for (size_t i = 1; i <= x.size(); ++i) {
    for (size_t j = 1; j <= y.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (x[i - 1] == y[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && x[i - 1] == y[j - 2] && x[i - 2] == y[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[x.size()][y.size()];
}

// " (did you mean 'x'?)" for the nearest candidate within 1 edit (words up to 4 letters) or 2
// edits (longer words); "" when nothing is that close.
std::string suggestion(std::string_view word, KeyList candidates) {
  const size_t allowed = word.size() <= 4 ? 1 : 2;
  std::string_view best;
  size_t bestDistance = allowed + 1;
  for (std::string_view c : candidates) {
    const size_t d = editDistance(word, c);
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best.empty() ? std::string{} : fmt::format(" (did you mean '{}'?)", best);
}

std::string childPath(const std::string& parent, std::string_view key) {
  return parent.empty() ? std::string(key) : fmt::format("{}.{}", parent, key);
}

// A value to check and where to point at it. A null value's own mark is where yaml-cpp saw the
// next token (often the next line), so for `key:` with nothing after it the key's mark is used.
struct Field {
  YAML::Node value;
  YAML::Mark mark;
  std::string path;
};

struct Entry {
  std::string key;
  YAML::Node keyNode;
  Field field;
};

// A map whose keys were read once, in file order; lookups never go through yaml-cpp's
// operator[], which would insert missing keys.
struct MapNode {
  Field self;
  std::vector<Entry> entries;
  std::map<std::string, size_t, std::less<>> index;  // key -> position in entries

  [[nodiscard]] const Entry* find(std::string_view key) const {
    const auto it = index.find(key);
    return it == index.end() ? nullptr : &entries[it->second];
  }
};

// Splits "1.5mbit" into 1.5 and "mbit" (the unit lower-cased); nullopt when there is no number.
std::optional<std::pair<double, std::string>> splitNumber(std::string_view text) {
  size_t unitAt = 0;
  while (unitAt < text.size() && (std::isdigit(static_cast<unsigned char>(text[unitAt])) || text[unitAt] == '.')) {
    ++unitAt;
  }
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + unitAt, value);
  if (unitAt == 0 || ec != std::errc{} || end != text.data() + unitAt) {
    return std::nullopt;
  }
  return std::pair{value, lower(text.substr(unitAt))};
}

bool isExperimentName(std::string_view s) {
  if (s.empty() || s.size() > 63 || s.front() == '-') {
    return false;
  }
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; });
}

// Where the value at a dotted path below a map is (its key's place when it has no value); the
// map's own place when the path is not in the file.
YAML::Mark markOf(const Field& map, const std::string& dotted) {
  YAML::Mark mark = map.mark;
  // yaml-cpp's Node::operator= writes through to the document: rebind with reset() only.
  YAML::Node node(map.value);
  size_t start = 0;
  while (start <= dotted.size() && node.IsMap()) {
    const size_t dot = std::min(dotted.find('.', start), dotted.size());
    const std::string key = dotted.substr(start, dot - start);
    bool found = false;
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == key) {
        mark = it->second.IsNull() ? it->first.Mark() : it->second.Mark();
        node.reset(it->second);
        found = true;
        break;
      }
    }
    if (!found) {
      break;
    }
    start = dot + 1;
  }
  return mark;
}

// Where validateFaultSpec()'s field lives in the experiment file, relative to the fault map.
std::string filePathOfSpecField(const v1::FaultSpec& spec, const std::string& field) {
  if (field == "interface" || field == "netns" || field == "direction" || field == "match" ||
      field.rfind("match.", 0) == 0 || field.rfind("netns.", 0) == 0) {
    return "target." + field;
  }
  if (spec.kind_case() == v1::FaultSpec::kProcessKill && (field == "pid" || field == "name")) {
    return "process." + field;
  }
  if (spec.kind_case() == v1::FaultSpec::kStressCpu && field == "load") {
    return "load";
  }
  return field;
}

// A selector field validateFaultSpec() rejected ("process.pid", ...), replaced by a valid value.
bool neutraliseSelector(v1::ProcessSelector& s, const std::string& field) {
  if (field == "process.count" || field == "process.percent") {
    s.clear_count();
    s.clear_percent();
    return true;
  }
  if (field.rfind("process.", 0) == 0) {
    s.set_name("x");
    return true;
  }
  return false;
}

// Replaces the field validateFaultSpec() rejected by a valid value, so that the next call reports
// the next problem; false when the field is not one it knows (the caller stops there).
bool neutralise(v1::FaultSpec& spec, const std::string& field) {
  v1::NetworkTarget* target = nullptr;
  switch (spec.kind_case()) {
    case v1::FaultSpec::kNetworkDelay: {
      auto* d = spec.mutable_network_delay();
      target = d->mutable_target();
      if (field == "delay") {
        *d->mutable_delay() = toProto(kMaxStep);
        return true;
      }
      if (field == "jitter") {
        d->clear_jitter();
        return true;
      }
      if (field == "correlation") {
        d->set_correlation(0);
        return true;
      }
      if (field == "distribution") {
        d->clear_distribution();
        return true;
      }
      if (field == "rate") {
        d->clear_rate_bps();
        return true;
      }
      break;
    }
    case v1::FaultSpec::kNetworkLoss: {
      auto* l = spec.mutable_network_loss();
      target = l->mutable_target();
      if (field == "percent") {
        l->set_percent(l->has_gilbert_elliott() ? 0 : 100);
        return true;
      }
      if (field == "correlation") {
        l->set_correlation(0);
        return true;
      }
      if (field == "gilbertElliott.p") {
        l->mutable_gilbert_elliott()->set_p(1);
        return true;
      }
      if (field == "gilbertElliott.r") {
        l->mutable_gilbert_elliott()->set_r(1);
        return true;
      }
      if (field == "gilbertElliott.badLoss") {
        l->mutable_gilbert_elliott()->set_bad_loss(100);
        return true;
      }
      if (field == "gilbertElliott.goodLoss") {
        l->mutable_gilbert_elliott()->set_good_loss(0);
        return true;
      }
      break;
    }
    case v1::FaultSpec::kNetworkBandwidth: {
      auto* b = spec.mutable_network_bandwidth();
      target = b->mutable_target();
      if (field == "rate") {
        b->set_rate_bps(1'000'000);
        return true;
      }
      if (field == "latency") {
        b->clear_latency();
        return true;
      }
      break;
    }
    case v1::FaultSpec::kNetworkDuplicate:
    case v1::FaultSpec::kNetworkCorrupt: {
      const bool duplicate = spec.kind_case() == v1::FaultSpec::kNetworkDuplicate;
      target = duplicate ? spec.mutable_network_duplicate()->mutable_target()
                         : spec.mutable_network_corrupt()->mutable_target();
      if (field == "percent" || field == "correlation") {
        const double value = field == "percent" ? 100 : 0;
        if (duplicate) {
          field == "percent" ? spec.mutable_network_duplicate()->set_percent(value)
                             : spec.mutable_network_duplicate()->set_correlation(value);
        } else {
          field == "percent" ? spec.mutable_network_corrupt()->set_percent(value)
                             : spec.mutable_network_corrupt()->set_correlation(value);
        }
        return true;
      }
      break;
    }
    case v1::FaultSpec::kNetworkReorder: {
      auto* o = spec.mutable_network_reorder();
      target = o->mutable_target();
      if (field == "percent") {
        o->set_percent(100);
        return true;
      }
      if (field == "correlation") {
        o->set_correlation(0);
        return true;
      }
      if (field == "delay") {
        *o->mutable_delay() = toProto(kMaxStep);
        return true;
      }
      if (field == "gap") {
        o->clear_gap();
        return true;
      }
      break;
    }
    case v1::FaultSpec::kNetworkPartition:
      target = spec.mutable_network_partition()->mutable_target();
      break;
    case v1::FaultSpec::kProcessKill: {
      auto* k = spec.mutable_process_kill();
      if (field == "pid") {
        k->set_pid(2);
        return true;
      }
      if (field == "name") {
        k->set_name("x");
        return true;
      }
      if (field == "signal") {
        k->clear_signal();
        return true;
      }
      if (field == "every") {
        k->clear_every();
        return true;
      }
      return neutraliseSelector(*k->mutable_process(), field);
    }
    case v1::FaultSpec::kProcessPause:
      return neutraliseSelector(*spec.mutable_process_pause()->mutable_process(), field);
    case v1::FaultSpec::kStressCpu: {
      auto* c = spec.mutable_stress_cpu();
      if (field == "workers") {
        c->set_workers(1);
        return true;
      }
      if (field == "load") {
        c->set_load_percent(100);
        return true;
      }
      return false;
    }
    case v1::FaultSpec::kStressMemory:
      if (field == "bytes") {
        spec.mutable_stress_memory()->set_bytes(uint64_t{1} << 20);
        return true;
      }
      return false;
    case v1::FaultSpec::kCgroupSqueeze: {
      auto* q = spec.mutable_cgroup_squeeze();
      if (field == "cgroup") {
        q->set_cgroup("/x");
        return true;
      }
      if (field == "cpus") {
        q->set_cpus(1);
        return true;
      }
      if (field == "memoryHigh") {
        q->set_memory_high_bytes(uint64_t{1} << 30);
        return true;
      }
      if (field == "pidsMax") {
        q->set_pids_max(100);
        return true;
      }
      return false;
    }
    default:
      return false;
  }
  if (target != nullptr && field == "interface") {
    target->set_interface("lo");
    return true;
  }
  if (target != nullptr && field == "netns") {
    target->clear_netns();
    return true;
  }
  if (target != nullptr && field.rfind("netns.", 0) == 0) {
    target->clear_netns_process();
    return true;
  }
  if (target != nullptr && field == "direction") {
    target->clear_direction();
    return true;
  }
  if (target != nullptr && (field == "match" || field.rfind("match.", 0) == 0)) {
    target->clear_match();  // one report per match: the rest of it is not checked again
    return true;
  }
  return false;
}

class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)) {}

  Experiment parse(const YAML::Node& root);

  // Keeps the first kMaxDiagnostics errors and drops the rest.
  void error(const YAML::Mark& mark, std::string field, std::string message) {
    if (full()) {
      return;
    }
    Diagnostic d;
    d.file = file_;
    if (mark.line >= 0) {
      d.line = mark.line + 1;
      d.column = mark.column + 1;
    }
    d.field = std::move(field);
    d.message = std::move(message);
    diagnostics_.push_back(std::move(d));
  }

  [[nodiscard]] std::vector<Diagnostic> takeDiagnostics() { return std::move(diagnostics_); }

 private:
  void typeError(const Field& f, std::string_view accepted);
  std::optional<MapNode> openMap(const Field& f, std::string_view accepted);
  void rejectUnknown(const MapNode& m, KeyList accepted);
  std::optional<Field> require(const MapNode& m, std::string_view key, std::string_view accepted);
  std::optional<Field> lookup(const MapNode& m, std::string_view key) const;

  std::optional<std::string> scalar(const Field& f, std::string_view accepted);
  // A whole number from min to max. Errors name the text as written: "'-1' is out of range
  // (accepted: 1..1024, a number of workers)"; a number too long for 64 bits is out of range too.
  std::optional<long long> integer(const Field& f, long long min, long long max, std::string_view what);
  std::optional<nanoseconds> duration(const Field& f);
  std::optional<nanoseconds> durationIn(const Field& f, nanoseconds min, nanoseconds max, std::string_view range,
                                        bool wholeMillis);
  std::optional<double> percent(const Field& f);
  std::optional<uint64_t> rate(const Field& f);
  std::optional<uint32_t> size(const Field& f);

  void parseMetadata(const Field& f, Experiment& out);
  void parseTargets(const Field& f, Targets& out);
  void parseSteadyState(const Field& f, Hypothesis& out);
  std::optional<Probe> parseProbe(const Field& f, std::map<std::string, int>& namesSeen);
  void parseHttpProbe(const Field& f, HttpProbe& out);
  void parseTcpProbe(const Field& f, TcpProbe& out);
  void parseCommandProbe(const Field& f, CommandProbe& out);
  void parsePrometheusProbe(const Field& f, PrometheusProbe& out);
  void parseLatencies(const MapNode& h, milliseconds* maxLatency, milliseconds& timeout);
  std::optional<std::string> regex(const Field& f);
  std::optional<Slo> parseSlo(const Field& f, const std::vector<Probe>& probes, std::map<std::string, int>& namesSeen);
  void parseMethod(const Field& f, std::vector<Step>& out);
  // One step of method (nested false) or of a parallel group (nested true: no parallel inside).
  std::optional<Step> parseStep(const Field& f, bool nested);
  // After the whole file is read: every probe step names a probe of steadyState.
  void checkProbeSteps(const Hypothesis& hypothesis);
  std::optional<FaultStep> parseFault(const Field& f);
  std::optional<v1::NetworkTarget> parseNetworkTarget(const MapNode& fault);
  std::optional<v1::TrafficMatch> parseMatch(const Field& f);
  std::optional<v1::GilbertElliott> parseGilbertElliott(const Field& f);
  std::optional<uint32_t> packets(const Field& f);
  std::vector<Field> scalarList(const Field& f, std::string_view accepted);
  std::optional<v1::ProcessSelector> parseProcess(const MapNode& fault);
  std::optional<v1::ProcessSelector> parseSelector(const Field& f, std::string_view accepted);
  std::optional<uint64_t> bytes64(const Field& f);
  std::optional<double> number(const Field& f, std::string_view accepted);
  void checkFaultKeys(const MapNode& m, const FaultType* type);
  void validateSpec(v1::FaultSpec spec, const MapNode& fault, size_t faultErrorsFrom);

  // Loops over the file's lists and maps stop once this holds: aliases can make one big map
  // count many times, and nothing more would be reported anyway.
  [[nodiscard]] bool full() const { return diagnostics_.size() >= kMaxDiagnostics; }

  std::string file_;
  std::vector<Diagnostic> diagnostics_;
  std::vector<std::pair<std::string, Field>> probeSteps_;  // probe name, where the step names it
};

void Parser::typeError(const Field& f, std::string_view accepted) {
  switch (f.value.Type()) {
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      error(f.mark, f.path, fmt::format("has no value; accepted: {}", accepted));
      return;
    case YAML::NodeType::Scalar:
      error(f.mark, f.path, fmt::format("wrong type: got the value '{}'; accepted: {}", f.value.Scalar(), accepted));
      return;
    case YAML::NodeType::Sequence:
      error(f.mark, f.path, fmt::format("wrong type: got a list; accepted: {}", accepted));
      return;
    case YAML::NodeType::Map:
      error(f.mark, f.path, fmt::format("wrong type: got a map; accepted: {}", accepted));
      return;
  }
}

std::optional<MapNode> Parser::openMap(const Field& f, std::string_view accepted) {
  if (!f.value.IsMap()) {
    typeError(f, accepted);
    return std::nullopt;
  }
  MapNode m{f, {}, {}};
  for (auto it = f.value.begin(); it != f.value.end() && !full(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) {
      error(key.Mark(), f.path, fmt::format("a key is not a string; accepted: {}", accepted));
      continue;
    }
    const std::string name = key.Scalar();
    const std::string path = childPath(f.path, name);
    if (const Entry* first = m.find(name)) {
      error(key.Mark(), path,
            fmt::format("duplicate key '{}' (first at line {}); accepted: each key once", name,
                        first->keyNode.Mark().line + 1));
      continue;
    }
    m.index.emplace(name, m.entries.size());
    m.entries.push_back(Entry{name, key, Field{value, value.IsNull() ? key.Mark() : value.Mark(), path}});
  }
  return m;
}

void Parser::rejectUnknown(const MapNode& m, KeyList accepted) {
  for (const Entry& e : m.entries) {
    if (full()) {
      return;
    }
    if (!contains(accepted, e.key)) {
      error(
          e.keyNode.Mark(), e.field.path,
          fmt::format("unknown key '{}'{}; accepted here: {}", e.key, suggestion(e.key, accepted), joinKeys(accepted)));
    }
  }
}

std::optional<Field> Parser::require(const MapNode& m, std::string_view key, std::string_view accepted) {
  if (const Entry* e = m.find(key)) {
    return e->field;
  }
  error(m.self.mark, childPath(m.self.path, key), fmt::format("is required; accepted: {}", accepted));
  return std::nullopt;
}

std::optional<Field> Parser::lookup(const MapNode& m, std::string_view key) const {
  if (const Entry* e = m.find(key)) {
    return e->field;
  }
  return std::nullopt;
}

std::optional<std::string> Parser::scalar(const Field& f, std::string_view accepted) {
  if (!f.value.IsScalar()) {
    typeError(f, accepted);
    return std::nullopt;
  }
  return f.value.Scalar();
}

std::optional<long long> Parser::integer(const Field& f, long long min, long long max, std::string_view what) {
  const std::string accepted = fmt::format("{}..{}, {}", min, max, what);
  auto text = scalar(f, fmt::format("a whole number {}", accepted));
  if (!text) {
    return std::nullopt;
  }
  const auto outOfRange = [&] {
    error(f.mark, f.path, fmt::format("{} is out of range (accepted: {})", *text, accepted));
  };
  long long value = 0;
  const char* first = text->data();
  const char* last = text->data() + text->size();
  // from_chars takes '-' but not '+'; YAML users write both.
  if (text->size() > 1 && text->front() == '+') {
    ++first;
  }
  auto [end, ec] = std::from_chars(first, last, value);
  if (ec == std::errc::result_out_of_range && end == last) {
    outOfRange();
    return std::nullopt;
  }
  if (text->empty() || ec != std::errc{} || end != last) {
    error(f.mark, f.path, fmt::format("'{}' is not a whole number; accepted: {}", *text, accepted));
    return std::nullopt;
  }
  if (value < min || value > max) {
    outOfRange();
    return std::nullopt;
  }
  return value;
}

std::optional<nanoseconds> Parser::duration(const Field& f) {
  auto text = scalar(f, kDurationHint);
  if (!text) {
    return std::nullopt;
  }
  auto d = parseDuration(*text);
  if (!d) {
    error(f.mark, f.path, d.error());
    return std::nullopt;
  }
  return *d;
}

std::optional<nanoseconds> Parser::durationIn(const Field& f, nanoseconds min, nanoseconds max, std::string_view range,
                                              bool wholeMillis) {
  auto d = duration(f);
  if (!d) {
    return std::nullopt;
  }
  if (*d < min || *d > max) {
    error(f.mark, f.path, fmt::format("{} is out of range; accepted: {}", f.value.Scalar(), range));
    return std::nullopt;
  }
  if (wholeMillis && *d % 1ms != 0ns) {
    error(
        f.mark, f.path,
        fmt::format("{} is not a whole number of milliseconds; accepted: {} in steps of 1ms", f.value.Scalar(), range));
    return std::nullopt;
  }
  return d;
}

std::optional<double> Parser::percent(const Field& f) {
  constexpr std::string_view accepted = "a percentage: a number from 0 to 100 such as 30 or 2.5 (30% is also accepted)";
  auto text = scalar(f, accepted);
  if (!text) {
    return std::nullopt;
  }
  std::string_view number = *text;
  if (!number.empty() && number.back() == '%') {
    number.remove_suffix(1);
  }
  double value = 0;
  auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), value);
  if (number.empty() || ec != std::errc{} || end != number.data() + number.size()) {
    error(f.mark, f.path, fmt::format("'{}' is not a percentage; accepted: {}", *text, accepted));
    return std::nullopt;
  }
  return value;  // the range is checked by validateFaultSpec()
}

std::optional<uint64_t> Parser::rate(const Field& f) {
  constexpr std::string_view accepted =
      "bits per second with a unit bit, kbit, mbit, gbit or tbit (x1000, as in tc(8)), e.g. 1mbit";
  auto text = scalar(f, accepted);
  if (!text) {
    return std::nullopt;
  }
  auto number = splitNumber(*text);
  if (!number) {
    error(f.mark, f.path, fmt::format("'{}' is not a rate; accepted: {}", *text, accepted));
    return std::nullopt;
  }
  const auto& [value, unit] = *number;
  static constexpr std::array<std::pair<std::string_view, double>, 5> kUnits{
      {{"bit", 1}, {"kbit", 1e3}, {"mbit", 1e6}, {"gbit", 1e9}, {"tbit", 1e12}}};
  for (const auto& [name, multiplier] : kUnits) {
    if (unit == name) {
      const double bits = value * multiplier;
      if (bits > 9e18) {  // llround() would overflow
        error(f.mark, f.path, fmt::format("{} is out of range; accepted: 8bit to 1tbit", *text));
        return std::nullopt;
      }
      return static_cast<uint64_t>(std::llround(bits));  // the range is checked by validateFaultSpec()
    }
  }
  if (unit.empty()) {
    error(f.mark, f.path, fmt::format("'{}' has no unit; accepted: {}", *text, accepted));
  } else if (unit == "bps" || unit == "kbps" || unit == "mbps" || unit == "gbps" || unit == "tbps") {
    error(f.mark, f.path,
          fmt::format("'{}' is bytes per second in tc(8); accepted: {} (1mbps is 8mbit)", *text, accepted));
  } else {
    error(f.mark, f.path, fmt::format("'{}' has an unknown unit '{}'; accepted: {}", *text, unit, accepted));
  }
  return std::nullopt;
}

std::optional<uint32_t> Parser::size(const Field& f) {
  constexpr std::string_view accepted =
      "bytes with a unit b, kb, mb, gb (x1024, as in tc(8)) or kib, mib, gib, e.g. 32kb";
  auto text = scalar(f, accepted);
  if (!text) {
    return std::nullopt;
  }
  auto number = splitNumber(*text);
  if (!number) {
    error(f.mark, f.path, fmt::format("'{}' is not a size; accepted: {}", *text, accepted));
    return std::nullopt;
  }
  const auto& [value, unit] = *number;
  static constexpr std::array<std::pair<std::string_view, double>, 7> kUnits{{{"b", 1},
                                                                              {"kb", 1024.0},
                                                                              {"kib", 1024.0},
                                                                              {"mb", 1024.0 * 1024},
                                                                              {"mib", 1024.0 * 1024},
                                                                              {"gb", 1024.0 * 1024 * 1024},
                                                                              {"gib", 1024.0 * 1024 * 1024}}};
  for (const auto& [name, multiplier] : kUnits) {
    if (unit == name) {
      const double bytes = std::round(value * multiplier);
      if (bytes < 1 || bytes > std::numeric_limits<uint32_t>::max()) {
        error(f.mark, f.path,
              fmt::format("{} is out of range; accepted: from 1b to 4294967295b (just under 4gib)", *text));
        return std::nullopt;
      }
      return static_cast<uint32_t>(bytes);
    }
  }
  if (unit.empty()) {
    error(f.mark, f.path, fmt::format("'{}' has no unit; accepted: {}", *text, accepted));
  } else {
    error(f.mark, f.path, fmt::format("'{}' has an unknown unit '{}'; accepted: {}", *text, unit, accepted));
  }
  return std::nullopt;
}

Experiment Parser::parse(const YAML::Node& root) {
  Experiment exp;
  const Field rootField{root, root.Mark(), ""};
  auto m = openMap(rootField, "a map with the keys apiVersion, kind, metadata, targets, steadyState, method");
  if (!m) {
    return exp;
  }
  rejectUnknown(*m, kRootKeys);
  if (auto f = require(*m, "apiVersion", "faultline/v1")) {
    if (auto v = scalar(*f, "faultline/v1"); v && *v != "faultline/v1") {
      error(f->mark, f->path, fmt::format("'{}' is not supported; accepted: faultline/v1", *v));
    }
  }
  if (auto f = require(*m, "kind", "Experiment")) {
    if (auto v = scalar(*f, "Experiment"); v && *v != "Experiment") {
      error(f->mark, f->path, fmt::format("'{}' is not supported; accepted: Experiment", *v));
    }
  }
  if (auto f = require(*m, "metadata", "a map with name and optionally description")) {
    parseMetadata(*f, exp);
  }
  if (auto f = lookup(*m, "targets")) {
    parseTargets(*f, exp.targets);
  }
  if (auto f = lookup(*m, "steadyState")) {
    parseSteadyState(*f, exp.hypothesis);
  }
  if (auto f = require(*m, "method", "a list of at least one step (fault, wait, probe or parallel)")) {
    parseMethod(*f, exp.method);
  }
  checkProbeSteps(exp.hypothesis);
  return exp;
}

void Parser::parseMetadata(const Field& f, Experiment& out) {
  auto m = openMap(f, "a map with name and optionally description");
  if (!m) {
    return;
  }
  rejectUnknown(*m, kMetadataKeys);
  constexpr std::string_view nameRule = "1-63 characters of a-z, 0-9 and '-', not starting with '-'";
  if (auto name = require(*m, "name", nameRule)) {
    if (auto v = scalar(*name, nameRule)) {
      if (isExperimentName(*v)) {
        out.name = *v;
      } else {
        error(name->mark, name->path, fmt::format("'{}' is not a valid name; accepted: {}", *v, nameRule));
      }
    }
  }
  if (auto description = lookup(*m, "description")) {
    if (auto v = scalar(*description, "free text")) {
      out.description = *v;
    }
  }
}

void Parser::parseTargets(const Field& f, Targets& out) {
  auto m = openMap(f, "a map with selector and mode");
  if (!m) {
    return;
  }
  rejectUnknown(*m, kTargetsKeys);
  if (auto selector = lookup(*m, "selector")) {
    constexpr std::string_view accepted = "a map of agent label to value, e.g. {role: demo}";
    if (auto labels = openMap(*selector, accepted)) {
      for (const Entry& e : labels->entries) {
        if (full()) {
          break;
        }
        if (e.key.empty()) {
          error(e.keyNode.Mark(), e.field.path, fmt::format("a label name is empty; accepted: {}", accepted));
          continue;
        }
        if (auto v = scalar(e.field, "a label value (a string)")) {
          out.selector[e.key] = *v;
        }
      }
    }
  }
  if (auto mode = lookup(*m, "mode")) {
    constexpr std::string_view accepted =
        "all, count(N) or random(N) with N >= 1, or percent(P) with P more than 0 and at most 100, written without "
        "spaces, e.g. count(2), percent(25)";
    if (auto v = scalar(*mode, accepted)) {
      const std::string_view text = *v;
      const auto argumentOf = [&](std::string_view prefix) -> std::optional<std::string_view> {
        if (text.size() > prefix.size() + 1 && text.substr(0, prefix.size()) == prefix && text.back() == ')') {
          return text.substr(prefix.size(), text.size() - prefix.size() - 1);
        }
        return std::nullopt;
      };
      const auto countOf = [&](std::string_view digits) -> std::optional<unsigned> {
        unsigned n = 0;
        auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), n);
        if (ec != std::errc{} || end != digits.data() + digits.size()) {
          error(mode->mark, mode->path, fmt::format("'{}' is not a mode; accepted: {}", text, accepted));
          return std::nullopt;
        }
        if (n == 0) {
          error(mode->mark, mode->path, fmt::format("'{}' is out of range; accepted: {}", text, accepted));
          return std::nullopt;
        }
        return n;
      };
      if (text == "all") {
        out.mode = TargetMode::kAll;
      } else if (auto count = argumentOf("count(")) {
        if (auto n = countOf(*count)) {
          out.mode = TargetMode::kCount;
          out.n = *n;
        }
      } else if (auto random = argumentOf("random(")) {
        if (auto n = countOf(*random)) {
          out.mode = TargetMode::kRandom;
          out.n = *n;
        }
      } else if (auto pct = argumentOf("percent(")) {
        std::string_view number = *pct;
        if (!number.empty() && number.back() == '%') {
          number.remove_suffix(1);
        }
        double p = 0;
        auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), p);
        if (number.empty() || ec != std::errc{} || end != number.data() + number.size() || !std::isfinite(p)) {
          error(mode->mark, mode->path, fmt::format("'{}' is not a mode; accepted: {}", text, accepted));
        } else if (p <= 0 || p > 100) {
          error(mode->mark, mode->path, fmt::format("'{}' is out of range; accepted: {}", text, accepted));
        } else {
          out.mode = TargetMode::kPercent;
          out.percent = p;
        }
      } else {
        static constexpr std::array<std::string_view, 4> kModes{"all", "count", "random", "percent"};
        const std::string_view word = text.substr(0, text.find('('));
        error(mode->mark, mode->path,
              fmt::format("'{}' is not a mode{}; accepted: {}", text, suggestion(word, kModes), accepted));
      }
    }
  }
}

void Parser::parseSteadyState(const Field& f, Hypothesis& out) {
  auto m = openMap(f, "a map with every, probes and slos");
  if (!m) {
    return;
  }
  rejectUnknown(*m, kSteadyStateKeys);
  if (auto every = lookup(*m, "every")) {
    if (auto d = durationIn(*every, kMinEvery, kMaxStep, "from 50ms to 1h", true)) {
      out.every = std::chrono::duration_cast<milliseconds>(*d);
    }
  }
  constexpr std::string_view probesAccepted =
      "a list of at least one probe, each with a name and one of http, tcp, command, prometheus";
  auto probes = require(*m, "probes", probesAccepted);
  if (!probes) {
    return;
  }
  if (!probes->value.IsSequence()) {
    typeError(*probes, probesAccepted);
    return;
  }
  if (probes->value.size() == 0) {
    error(probes->mark, probes->path, fmt::format("is empty; accepted: {}", probesAccepted));
    return;
  }
  if (probes->value.size() > kMaxProbes) {
    error(probes->mark, probes->path,
          fmt::format("has {} probes; accepted: at most {} probes per experiment", probes->value.size(), kMaxProbes));
    return;
  }
  std::map<std::string, int> namesSeen;
  for (size_t i = 0; i < probes->value.size() && !full(); ++i) {
    const YAML::Node item = std::as_const(probes->value)[i];
    const Field itemField{item, item.IsNull() ? probes->mark : item.Mark(), fmt::format("{}[{}]", probes->path, i)};
    if (auto probe = parseProbe(itemField, namesSeen)) {
      out.probes.push_back(std::move(*probe));
    }
  }
  if (auto slos = lookup(*m, "slos")) {
    constexpr std::string_view slosAccepted = "a list of SLOs, each with name, probe and objective";
    if (!slos->value.IsSequence()) {
      typeError(*slos, slosAccepted);
      return;
    }
    std::map<std::string, int> sloNames;
    for (size_t i = 0; i < slos->value.size() && !full(); ++i) {
      const YAML::Node item = std::as_const(slos->value)[i];
      const Field itemField{item, item.IsNull() ? slos->mark : item.Mark(), fmt::format("{}[{}]", slos->path, i)};
      if (auto slo = parseSlo(itemField, out.probes, sloNames)) {
        out.slos.push_back(std::move(*slo));
      }
    }
  }
}

std::optional<Slo> Parser::parseSlo(const Field& f, const std::vector<Probe>& probes,
                                    std::map<std::string, int>& namesSeen) {
  auto m = openMap(f, "a map with name, probe, objective and optionally maxBurnRate");
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kSloKeys);
  std::string name;
  if (auto n = require(*m, "name", "a name unique among the SLOs")) {
    if (auto v = scalar(*n, "a name unique among the SLOs")) {
      if (v->empty()) {
        error(n->mark, n->path, "is empty; accepted: a name unique among the SLOs");
      } else if (auto [it, inserted] = namesSeen.emplace(*v, n->mark.line + 1); !inserted) {
        error(n->mark, n->path,
              fmt::format("duplicate SLO name '{}' (first used at line {}); accepted: a name unique among the SLOs", *v,
                          it->second));
      }
      name = *v;
    }
  }
  std::string probeName;
  const Probe* probe = nullptr;
  if (auto pf = require(*m, "probe", "the name of a probe of this steady state")) {
    if (auto v = scalar(*pf, "the name of a probe of this steady state")) {
      probeName = *v;
      std::vector<std::string_view> names;
      for (const auto& p : probes) {
        names.push_back(p.name);
        if (p.name == *v) {
          probe = &p;
        }
      }
      if (probe == nullptr) {
        error(pf->mark, pf->path,
              fmt::format("no probe is named '{}'{}; accepted: one of the probes' names: {}", *v, suggestion(*v, names),
                          joinKeys(names)));
      }
    }
  }
  std::optional<Slo> slo;
  if (auto of = require(*m, "objective", "e.g. 'p99 < 300ms and errors < 1% over 30s'")) {
    if (auto v = scalar(*of, "e.g. 'p99 < 300ms and errors < 1% over 30s'")) {
      auto parsed = parseObjective(*v);
      if (!parsed) {
        error(of->mark, of->path, parsed.error());
      } else {
        slo = std::move(*parsed);
        for (const auto& t : slo->terms) {
          if (t.sli == SliKind::kValue && probe != nullptr && probe->kind != ProbeKind::kPrometheus) {
            error(of->mark, of->path,
                  fmt::format("'{}' is the value of a prometheus probe, and probe '{}' is a {} probe; accepted: "
                              "latency (p50, p90, p95, p99, max) and errors for {} probes",
                              t.name, probe->name, probeKindName(probe->kind), probeKindName(probe->kind)));
          }
        }
      }
    }
  }
  if (auto burn = lookup(*m, "maxBurnRate")) {
    constexpr std::string_view accepted = "a number above 0, e.g. 10 (abort when errors burn the budget 10x too fast)";
    if (auto v = scalar(*burn, accepted)) {
      double rate = 0;
      auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), rate);
      if (v->empty() || ec != std::errc{} || end != v->data() + v->size() || !(rate > 0)) {
        error(burn->mark, burn->path, fmt::format("'{}' is not a burn rate; accepted: {}", *v, accepted));
      } else if (slo) {
        const bool hasBudget = std::any_of(slo->terms.begin(), slo->terms.end(), [](const SloTerm& t) {
          return t.sli == SliKind::kErrors && t.threshold > 0 &&
                 (t.comparison == Comparison::kLess || t.comparison == Comparison::kLessEqual);
        });
        if (!hasBudget) {
          error(burn->mark, burn->path,
                "needs an error budget: an objective with a term 'errors < N%' and N above 0; accepted: add one to "
                "objective, or remove maxBurnRate");
        } else {
          slo->maxBurnRate = rate;
        }
      }
    }
  }
  if (!slo) {
    return std::nullopt;
  }
  slo->name = name;
  slo->probe = probeName;
  return slo;
}

// Reads a comparison at the start of text ("<", "<=", ">", ">=", "==", "!="), and skips it.
std::optional<Comparison> takeComparison(std::string_view& text) {
  static constexpr std::array<std::pair<std::string_view, Comparison>, 6> kOps{{{"<=", Comparison::kLessEqual},
                                                                                {">=", Comparison::kGreaterEqual},
                                                                                {"==", Comparison::kEqual},
                                                                                {"!=", Comparison::kNotEqual},
                                                                                {"<", Comparison::kLess},
                                                                                {">", Comparison::kGreater}}};
  for (const auto& [op, c] : kOps) {
    if (text.substr(0, op.size()) == op) {
      text.remove_prefix(op.size());
      return c;
    }
  }
  return std::nullopt;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) {
    s.remove_prefix(1);
  }
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
    s.remove_suffix(1);
  }
  return s;
}

std::optional<double> plainNumber(std::string_view text) {
  double v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || !std::isfinite(v)) {
    return std::nullopt;
  }
  return v;
}

// "< 0.8" for a prometheus probe's expect.
tl::expected<std::pair<Comparison, double>, std::string> parseExpectation(std::string_view text) {
  constexpr std::string_view accepted = "a comparison and a number, e.g. '< 0.8', '>= 100' (<, <=, >, >=, ==, !=)";
  std::string_view rest = trim(text);
  auto c = takeComparison(rest);
  if (!c) {
    return tl::unexpected(fmt::format("'{}' does not start with a comparison; accepted: {}", text, accepted));
  }
  auto v = plainNumber(trim(rest));
  if (!v) {
    return tl::unexpected(fmt::format("'{}' has no number after the comparison; accepted: {}", text, accepted));
  }
  return std::pair{*c, *v};
}

std::optional<Probe> Parser::parseProbe(const Field& f, std::map<std::string, int>& namesSeen) {
  auto m = openMap(f, "a map with name and one of http, tcp, command, prometheus");
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kProbeKeys);
  Probe probe;
  if (auto name = require(*m, "name", "a name unique among the probes")) {
    if (auto v = scalar(*name, "a name unique among the probes")) {
      if (v->empty()) {
        error(name->mark, name->path, "is empty; accepted: a name unique among the probes");
      } else if (auto [it, inserted] = namesSeen.emplace(*v, name->mark.line + 1); !inserted) {
        error(name->mark, name->path,
              fmt::format("duplicate probe name '{}' (first used at line {}); accepted: a name unique among the probes",
                          *v, it->second));
      }
      probe.name = *v;
    }
  }
  if (auto guard = lookup(*m, "guard")) {
    if (auto v = scalar(*guard, "true or false")) {
      if (*v == "true") {
        probe.guard = true;
      } else if (*v != "false") {
        error(guard->mark, guard->path, fmt::format("'{}' is not a boolean; accepted: true or false", *v));
      }
    }
  }
  std::vector<const Entry*> kinds;
  for (const Entry& e : m->entries) {
    if (contains(kProbeKindKeys, e.key)) {
      kinds.push_back(&e);
    }
  }
  if (kinds.empty()) {
    error(m->self.mark, childPath(m->self.path, "http"),
          "a probe needs one kind; accepted: one of http, tcp, command, prometheus");
    return probe;
  }
  if (kinds.size() > 1) {
    error(kinds[1]->keyNode.Mark(), kinds[1]->field.path,
          fmt::format("a probe has one kind, and this one already has {}; accepted: one of http, tcp, command, "
                      "prometheus (use two probes)",
                      kinds[0]->key));
    return probe;
  }
  const Field& spec = kinds[0]->field;
  if (kinds[0]->key == "http") {
    probe.kind = ProbeKind::kHttp;
    parseHttpProbe(spec, probe.http);
  } else if (kinds[0]->key == "tcp") {
    probe.kind = ProbeKind::kTcp;
    parseTcpProbe(spec, probe.tcp);
  } else if (kinds[0]->key == "command") {
    probe.kind = ProbeKind::kCommand;
    parseCommandProbe(spec, probe.command);
  } else {
    probe.kind = ProbeKind::kPrometheus;
    parsePrometheusProbe(spec, probe.prometheus);
  }
  return probe;
}

// maxLatency (when the probe has one) and timeout: each from 1ms to 1h, timeout >= maxLatency.
void Parser::parseLatencies(const MapNode& h, milliseconds* maxLatency, milliseconds& timeout) {
  bool latenciesValid = true;
  auto maxField = maxLatency != nullptr ? lookup(h, "maxLatency") : std::nullopt;
  if (maxField) {
    if (auto d = durationIn(*maxField, 1ms, kMaxStep, "from 1ms to 1h", true)) {
      *maxLatency = std::chrono::duration_cast<milliseconds>(*d);
    } else {
      latenciesValid = false;
    }
  }
  auto timeoutField = lookup(h, "timeout");
  if (timeoutField) {
    if (auto d = durationIn(*timeoutField, 1ms, kMaxStep, "from 1ms to 1h", true)) {
      timeout = std::chrono::duration_cast<milliseconds>(*d);
    } else {
      latenciesValid = false;
    }
  }
  if (maxLatency != nullptr && latenciesValid && timeout < *maxLatency) {
    const Field& at = timeoutField ? *timeoutField : *maxField;  // one was given: the defaults are in order
    error(at.mark, at.path,
          fmt::format("timeout {}{} is shorter than maxLatency {}; accepted: a timeout at least as long as maxLatency",
                      formatDuration(timeout), timeoutField ? "" : " (the default)", formatDuration(*maxLatency)));
  }
}

std::optional<std::string> Parser::regex(const Field& f) {
  const std::string accepted = fmt::format("{}, searched anywhere in the text", kRegexAccepted);
  auto v = scalar(f, accepted);
  if (!v) {
    return std::nullopt;
  }
  if (auto compiled = Regex::compile(*v, RegexAnchors::kLineEnds); !compiled) {
    error(f.mark, f.path, fmt::format("{}; accepted: {}", compiled.error(), accepted));
    return std::nullopt;
  }
  return v;
}

void Parser::parseHttpProbe(const Field& f, HttpProbe& out) {
  auto h =
      openMap(f, "a map with url and optionally method, headers, body, expectStatus, bodyMatch, maxLatency, timeout");
  if (!h) {
    return;
  }
  rejectUnknown(*h, kHttpKeys);
  constexpr std::string_view urlAccepted = "http://HOST[:PORT][/PATH], e.g. http://10.77.0.1:8080/";
  if (auto url = require(*h, "url", urlAccepted)) {
    if (auto v = scalar(*url, urlAccepted)) {
      // The prober's own parser: what passes here is what the prober accepts.
      if (auto parsed = parseHttpUrl(*v); !parsed) {
        error(url->mark, url->path, parsed.error());
      }
      out.url = *v;
    }
  }
  if (auto method = lookup(*h, "method")) {
    if (auto v = scalar(*method, joinKeys(kHttpMethods))) {
      if (!contains(kHttpMethods, *v)) {
        error(method->mark, method->path,
              fmt::format("'{}' is not a method{}; accepted: {}", *v, suggestion(*v, kHttpMethods),
                          joinKeys(kHttpMethods)));
      } else {
        out.method = *v;
      }
    }
  }
  if (auto headers = lookup(*h, "headers")) {
    constexpr std::string_view accepted = "a map of header names to values, e.g. {Authorization: Bearer T}";
    if (auto hm = openMap(*headers, accepted)) {
      for (const Entry& e : hm->entries) {
        const bool token = !e.key.empty() && std::all_of(e.key.begin(), e.key.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) ||
                 std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
        });
        if (!token) {
          error(e.keyNode.Mark(), e.field.path,
                fmt::format("'{}' is not a header name; accepted: letters, digits and !#$%&'*+-.^_`|~", e.key));
          continue;
        }
        if (auto v = scalar(e.field, accepted)) {
          if (v->find_first_of("\r\n") != std::string::npos) {
            error(e.field.mark, e.field.path, "has a line break; accepted: a value on one line");
            continue;
          }
          out.headers.emplace_back(e.key, *v);
        }
      }
    }
  }
  if (auto body = lookup(*h, "body")) {
    if (auto v = scalar(*body, "the request body as text")) {
      out.body = *v;
    }
  }
  if (auto status = lookup(*h, "expectStatus")) {
    constexpr std::string_view accepted =
        "an HTTP status code from 100 to 599, a class such as 2xx, or a list of them, e.g. [200, 204]";
    std::vector<Field> items;
    if (status->value.IsSequence()) {
      for (size_t i = 0; i < status->value.size(); ++i) {
        const YAML::Node item = std::as_const(status->value)[i];
        items.push_back(
            Field{item, item.IsNull() ? status->mark : item.Mark(), fmt::format("{}[{}]", status->path, i)});
      }
      if (items.empty()) {
        error(status->mark, status->path, fmt::format("is empty; accepted: {}", accepted));
      }
    } else {
      items.push_back(*status);
    }
    std::vector<int> codes;
    bool valid = true;
    for (const Field& item : items) {
      auto v = scalar(item, accepted);
      if (!v) {
        valid = false;
        continue;
      }
      if (v->size() == 3 && v->at(0) >= '1' && v->at(0) <= '5' && lower(v->substr(1)) == "xx") {
        const int base = (v->at(0) - '0') * 100;
        for (int c = base; c < base + 100; ++c) {
          codes.push_back(c);
        }
        continue;
      }
      long long code = 0;
      auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), code);
      if (v->empty() || ec != std::errc{} || end != v->data() + v->size()) {
        error(item.mark, item.path, fmt::format("'{}' is not a status; accepted: {}", *v, accepted));
        valid = false;
      } else if (code < 100 || code > 599) {
        error(item.mark, item.path, fmt::format("{} is out of range; accepted: {}", code, accepted));
        valid = false;
      } else {
        codes.push_back(static_cast<int>(code));
      }
    }
    if (valid && !codes.empty()) {
      std::sort(codes.begin(), codes.end());
      codes.erase(std::unique(codes.begin(), codes.end()), codes.end());
      out.expectStatus = std::move(codes);
    }
  }
  if (auto match = lookup(*h, "bodyMatch")) {
    out.bodyMatch = regex(*match);
  }
  parseLatencies(*h, &out.maxLatency, out.timeout);
}

void Parser::parseTcpProbe(const Field& f, TcpProbe& out) {
  auto t = openMap(f, "a map with address and optionally maxLatency, timeout");
  if (!t) {
    return;
  }
  rejectUnknown(*t, kTcpKeys);
  constexpr std::string_view accepted = "HOST:PORT, e.g. 10.77.0.1:5432, db.internal:5432 or [::1]:5432";
  if (auto address = require(*t, "address", accepted)) {
    if (auto v = scalar(*address, accepted)) {
      // The URL parser checks host and port the same way for every probe.
      auto parsed = parseHttpUrl("http://" + *v);
      const size_t colon = v->rfind(':');
      const size_t bracket = v->rfind(']');
      const bool hasPort = colon != std::string::npos && (bracket == std::string::npos || colon > bracket);
      if (!parsed || !hasPort || v->find_first_of("/?#") != std::string::npos) {
        error(address->mark, address->path, fmt::format("'{}' is not an address; accepted: {}", *v, accepted));
      } else {
        out.host = parsed->host;
        out.port = parsed->port;
      }
    }
  }
  parseLatencies(*t, &out.maxLatency, out.timeout);
}

void Parser::parseCommandProbe(const Field& f, CommandProbe& out) {
  auto c = openMap(f, "a map with argv or shell, and optionally expectExit, stdoutMatch, timeout");
  if (!c) {
    return;
  }
  rejectUnknown(*c, kCommandKeys);
  auto argv = lookup(*c, "argv");
  auto shell = lookup(*c, "shell");
  if (argv && shell) {
    error(shell->mark, shell->path,
          "a command has argv or shell, not both; accepted: argv (a list, run without a shell) or shell (one line "
          "for /bin/sh -c)");
  } else if (!argv && !shell) {
    error(c->self.mark, childPath(c->self.path, "argv"),
          "is required; accepted: argv (a list, run without a shell) or shell (one line for /bin/sh -c)");
  } else if (argv) {
    constexpr std::string_view accepted =
        "a list of at least one word: the program (looked up in PATH) and its arguments";
    if (!argv->value.IsSequence() || argv->value.size() == 0) {
      if (argv->value.IsSequence()) {
        error(argv->mark, argv->path, fmt::format("is empty; accepted: {}", accepted));
      } else {
        typeError(*argv, accepted);
      }
    } else {
      for (size_t i = 0; i < argv->value.size(); ++i) {
        const YAML::Node item = std::as_const(argv->value)[i];
        const Field itemField{item, item.IsNull() ? argv->mark : item.Mark(), fmt::format("{}[{}]", argv->path, i)};
        if (auto v = scalar(itemField, accepted)) {
          if (i == 0 && v->empty()) {
            error(itemField.mark, itemField.path, fmt::format("is empty; accepted: {}", accepted));
          }
          out.argv.push_back(*v);
        }
      }
    }
  } else if (auto v = scalar(*shell, "one line of shell for /bin/sh -c")) {
    if (v->empty()) {
      error(shell->mark, shell->path, "is empty; accepted: one line of shell for /bin/sh -c");
    }
    out.shell = *v;
  }
  if (auto code = lookup(*c, "expectExit")) {
    if (auto v = integer(*code, 0, 255, "an exit code")) {
      out.expectExit = static_cast<int>(*v);
    }
  }
  if (auto match = lookup(*c, "stdoutMatch")) {
    out.stdoutMatch = regex(*match);
  }
  parseLatencies(*c, nullptr, out.timeout);
}

void Parser::parsePrometheusProbe(const Field& f, PrometheusProbe& out) {
  auto p = openMap(f, "a map with url, query, expect and optionally timeout");
  if (!p) {
    return;
  }
  rejectUnknown(*p, kPrometheusKeys);
  constexpr std::string_view urlAccepted =
      "the Prometheus server's http://HOST[:PORT][/PREFIX], e.g. http://10.77.0.1:9090";
  if (auto url = require(*p, "url", urlAccepted)) {
    if (auto v = scalar(*url, urlAccepted)) {
      if (auto parsed = parseHttpUrl(*v); !parsed) {
        error(url->mark, url->path, parsed.error());
      } else if (parsed->target.find('?') != std::string::npos) {
        error(url->mark, url->path,
              fmt::format("'{}' has a query; accepted: {} (the probe adds /api/v1/query?query=...)", *v, urlAccepted));
      }
      out.url = *v;
    }
  }
  if (auto query =
          require(*p, "query", "a PromQL expression that gives one number, e.g. sum(rate(errors_total[1m]))")) {
    if (auto v = scalar(*query, "a PromQL expression")) {
      if (trim(*v).empty()) {
        error(query->mark, query->path, "is empty; accepted: a PromQL expression that gives one number");
      }
      out.query = *v;
    }
  }
  if (auto expect = require(*p, "expect", "a comparison with a number, e.g. '< 0.8'")) {
    if (auto v = scalar(*expect, "a comparison with a number, e.g. '< 0.8'")) {
      if (auto parsed = parseExpectation(*v)) {
        out.comparison = parsed->first;
        out.threshold = parsed->second;
      } else {
        error(expect->mark, expect->path, parsed.error());
      }
    }
  }
  parseLatencies(*p, nullptr, out.timeout);
}

void Parser::parseMethod(const Field& f, std::vector<Step>& out) {
  constexpr std::string_view accepted =
      "a list of at least one step; each step is a map with one key: fault, wait, probe or parallel";
  if (!f.value.IsSequence()) {
    typeError(f, accepted);
    return;
  }
  if (f.value.size() == 0) {
    error(f.mark, f.path, fmt::format("is empty; accepted: {}", accepted));
    return;
  }
  if (f.value.size() > kMaxMethodSteps) {
    error(f.mark, f.path,
          fmt::format("has {} steps; accepted: at most {} steps per experiment", f.value.size(), kMaxMethodSteps));
    return;
  }
  for (size_t i = 0; i < f.value.size() && !full(); ++i) {
    const YAML::Node item = std::as_const(f.value)[i];
    const Field stepField{item, item.IsNull() ? f.mark : item.Mark(), fmt::format("{}[{}]", f.path, i)};
    if (auto step = parseStep(stepField, false)) {
      out.push_back(std::move(*step));
    }
  }
}

std::optional<Step> Parser::parseStep(const Field& stepField, bool nested) {
  const KeyList keys = nested ? KeyList{kParallelMemberKeys} : KeyList{kStepKeys};
  const std::string one =
      nested ? "fault, wait or probe (a parallel group cannot hold another)" : "fault, wait, probe or parallel";
  auto m = openMap(stepField, fmt::format("a map with one key: {}", one));
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, keys);
  std::vector<const Entry*> given;  // in the order of keys, whatever the file's order
  for (std::string_view key : keys) {
    if (const Entry* e = m->find(key)) {
      given.push_back(e);
    }
  }
  if (given.size() > 1) {
    error(m->self.mark, m->self.path,
          fmt::format("has both {} and {}; accepted: exactly one of {} per step", given[0]->key, given[1]->key, one));
    return std::nullopt;
  }
  if (given.empty()) {
    if (m->entries.empty()) {
      error(m->self.mark, m->self.path, fmt::format("is an empty step; accepted: a map with one key: {}", one));
    }
    return std::nullopt;
  }
  const Entry& e = *given.front();
  if (e.key == "wait") {
    if (auto d = durationIn(e.field, 1ms, kMaxStep, "from 1ms to 1h", true)) {
      return Step{WaitStep{std::chrono::duration_cast<milliseconds>(*d)}};
    }
    return std::nullopt;
  }
  if (e.key == "probe") {
    constexpr std::string_view accepted = "the name of a probe in steadyState.probes";
    if (auto v = scalar(e.field, accepted)) {
      if (v->empty()) {
        error(e.field.mark, e.field.path, fmt::format("is empty; accepted: {}", accepted));
        return std::nullopt;
      }
      probeSteps_.emplace_back(*v, e.field);
      return Step{ProbeStep{*v}};
    }
    return std::nullopt;
  }
  if (e.key == "parallel") {
    constexpr std::string_view accepted = "a list of at least one fault, wait or probe step, started together";
    if (!e.field.value.IsSequence()) {
      typeError(e.field, accepted);
      return std::nullopt;
    }
    if (e.field.value.size() == 0) {
      error(e.field.mark, e.field.path, fmt::format("is empty; accepted: {}", accepted));
      return std::nullopt;
    }
    ParallelStep group;
    bool ok = true;
    for (size_t i = 0; i < e.field.value.size() && !full(); ++i) {
      const YAML::Node item = std::as_const(e.field.value)[i];
      const Field member{item, item.IsNull() ? e.field.mark : item.Mark(), fmt::format("{}[{}]", e.field.path, i)};
      auto step = parseStep(member, true);
      if (!step) {
        ok = false;
        continue;
      }
      std::visit(
          [&](auto&& s) {
            using T = std::decay_t<decltype(s)>;
            if constexpr (!std::is_same_v<T, ParallelStep>) {
              group.steps.emplace_back(std::move(s));
            }
          },
          std::move(*step));
    }
    if (!ok) {
      return std::nullopt;
    }
    return Step{std::move(group)};
  }
  if (auto step = parseFault(e.field)) {
    return Step{std::move(*step)};
  }
  return std::nullopt;
}

void Parser::checkProbeSteps(const Hypothesis& hypothesis) {
  std::vector<std::string_view> names;
  for (const Probe& p : hypothesis.probes) {
    names.push_back(p.name);
  }
  for (const auto& [name, at] : probeSteps_) {
    if (std::find(names.begin(), names.end(), name) != names.end()) {
      continue;
    }
    error(
        at.mark, at.path,
        fmt::format("no probe named '{}' in steadyState.probes{}; accepted: {}", name, suggestion(name, names),
                    names.empty() ? std::string("a probe defined in steadyState.probes (none is)") : joinKeys(names)));
  }
}

void Parser::checkFaultKeys(const MapNode& m, const FaultType* type) {
  const KeyList accepted = type != nullptr ? type->keys : KeyList{kAnyFaultKeys};
  for (const Entry& e : m.entries) {
    if (full()) {
      return;
    }
    if (contains(accepted, e.key)) {
      continue;
    }
    std::string owners;
    for (const FaultType& other : kFaultTypes) {
      if (contains(other.keys, e.key)) {
        owners += owners.empty() ? "" : ", ";
        owners += other.name;
      }
    }
    if (!owners.empty()) {
      error(e.keyNode.Mark(), e.field.path,
            fmt::format("'{}' belongs to {}, not to {}; accepted for {}: {}", e.key, owners, type->name, type->name,
                        joinKeys(accepted)));
    } else {
      error(
          e.keyNode.Mark(), e.field.path,
          fmt::format("unknown key '{}'{}; accepted here: {}", e.key, suggestion(e.key, accepted), joinKeys(accepted)));
    }
  }
}

std::optional<FaultStep> Parser::parseFault(const Field& f) {
  auto m = openMap(f, "a map with type, duration and the fault's parameters");
  if (!m) {
    return std::nullopt;
  }
  const size_t errorsBefore = diagnostics_.size();
  const FaultType* type = nullptr;
  if (auto t = require(*m, "type", kFaultTypeNames)) {
    if (auto v = scalar(*t, kFaultTypeNames)) {
      for (const FaultType& candidate : kFaultTypes) {
        if (candidate.name == *v) {
          type = &candidate;
        }
      }
      if (type == nullptr) {
        std::vector<std::string_view> kNames;
        for (const FaultType& known : kFaultTypes) {
          kNames.push_back(known.name);
        }
        error(t->mark, t->path,
              fmt::format("unknown fault type '{}'{}; accepted: {}", *v, suggestion(*v, kNames), kFaultTypeNames));
      }
    }
  }
  checkFaultKeys(*m, type);

  FaultStep step;
  if (auto name = lookup(*m, "name")) {
    if (auto v = scalar(*name, "a name for events and records")) {
      if (v->empty()) {
        error(name->mark, name->path, "is empty; accepted: a name for events and records, or leave it out");
      }
      step.name = *v;
    }
  }
  step.duration = kDefaultFaultDuration;
  if (auto d = lookup(*m, "duration")) {
    if (auto v = durationIn(*d, 1ms, kMaxFaultDuration, "from 1ms to 1h (default 60s)", true)) {
      step.duration = std::chrono::duration_cast<milliseconds>(*v);
    }
  }
  if (type == nullptr) {
    return std::nullopt;
  }
  if (step.name.empty()) {
    step.name = std::string(type->name);
  }

  switch (type->kind) {
    case FaultKind::kDelay: {
      auto* d = step.spec.mutable_network_delay();
      if (auto target = parseNetworkTarget(*m)) {
        *d->mutable_target() = std::move(*target);
      }
      if (auto delay = require(*m, "delay", "a duration more than 0 and at most 1h, e.g. 100ms")) {
        if (auto v = duration(*delay)) {
          *d->mutable_delay() = toProto(*v);
        }
      }
      if (auto jitter = lookup(*m, "jitter")) {
        if (auto v = duration(*jitter)) {
          *d->mutable_jitter() = toProto(*v);
        }
      }
      if (auto correlation = lookup(*m, "correlation")) {
        if (auto v = percent(*correlation)) {
          d->set_correlation(*v);
        }
      }
      if (auto distribution = lookup(*m, "distribution")) {
        constexpr std::string_view accepted = "uniform, normal, pareto or paretonormal";
        if (auto v = scalar(*distribution, accepted)) {
          static constexpr std::array<std::pair<std::string_view, v1::DelayDistribution>, 4> kDistributions{
              {{"uniform", v1::DELAY_DISTRIBUTION_UNIFORM},
               {"normal", v1::DELAY_DISTRIBUTION_NORMAL},
               {"pareto", v1::DELAY_DISTRIBUTION_PARETO},
               {"paretonormal", v1::DELAY_DISTRIBUTION_PARETONORMAL}}};
          const auto it = std::find_if(kDistributions.begin(), kDistributions.end(),
                                       [&](const auto& known) { return known.first == *v; });
          if (it == kDistributions.end()) {
            error(distribution->mark, distribution->path,
                  fmt::format("unknown distribution '{}'; accepted: {}", *v, accepted));
          } else {
            d->set_distribution(it->second);
          }
        }
      }
      if (auto r = lookup(*m, "rate")) {
        if (auto v = rate(*r)) {
          d->set_rate_bps(*v);
        }
      }
      if (auto limit = lookup(*m, "limit")) {
        if (auto v = packets(*limit)) {
          d->set_limit_packets(*v);
        }
      }
      break;
    }
    case FaultKind::kLoss: {
      auto* l = step.spec.mutable_network_loss();
      if (auto target = parseNetworkTarget(*m)) {
        *l->mutable_target() = std::move(*target);
      }
      auto ge = lookup(*m, "gilbertElliott");
      if (ge) {
        if (auto model = parseGilbertElliott(*ge)) {
          *l->mutable_gilbert_elliott() = std::move(*model);
        }
      }
      auto p = ge ? lookup(*m, "percent")
                  : require(*m, "percent", "a percentage more than 0 and at most 100, e.g. 30, or gilbertElliott");
      if (p) {
        if (auto v = percent(*p)) {
          l->set_percent(*v);
        }
      }
      if (auto correlation = lookup(*m, "correlation")) {
        if (auto v = percent(*correlation)) {
          l->set_correlation(*v);
        }
      }
      if (auto limit = lookup(*m, "limit")) {
        if (auto v = packets(*limit)) {
          l->set_limit_packets(*v);
        }
      }
      break;
    }
    case FaultKind::kBandwidth: {
      auto* b = step.spec.mutable_network_bandwidth();
      if (auto target = parseNetworkTarget(*m)) {
        *b->mutable_target() = std::move(*target);
      }
      if (auto r = require(*m, "rate", "bits per second with a unit bit, kbit, mbit, gbit or tbit, e.g. 1mbit")) {
        if (auto v = rate(*r)) {
          b->set_rate_bps(*v);
        }
      }
      if (auto burst = lookup(*m, "burst")) {
        if (auto v = size(*burst)) {
          b->set_burst_bytes(*v);
        }
      }
      if (auto limit = lookup(*m, "limit")) {
        if (auto v = size(*limit)) {
          b->set_limit_bytes(*v);
        }
      }
      if (auto latency = lookup(*m, "latency")) {
        if (auto v = duration(*latency)) {
          *b->mutable_latency() = toProto(*v);
        }
      }
      break;
    }
    case FaultKind::kDuplicate:
    case FaultKind::kCorrupt:
    case FaultKind::kReorder: {
      std::optional<v1::NetworkTarget> target = parseNetworkTarget(*m);
      double percentValue = 0;
      double correlationValue = 0;
      if (auto p = require(*m, "percent", "a percentage more than 0 and at most 100, e.g. 5")) {
        if (auto v = percent(*p)) {
          percentValue = *v;
        }
      }
      if (auto correlation = lookup(*m, "correlation")) {
        if (auto v = percent(*correlation)) {
          correlationValue = *v;
        }
      }
      if (type->kind == FaultKind::kDuplicate) {
        auto* d = step.spec.mutable_network_duplicate();
        *d->mutable_target() = target.value_or(v1::NetworkTarget{});
        d->set_percent(percentValue);
        d->set_correlation(correlationValue);
      } else if (type->kind == FaultKind::kCorrupt) {
        auto* c = step.spec.mutable_network_corrupt();
        *c->mutable_target() = target.value_or(v1::NetworkTarget{});
        c->set_percent(percentValue);
        c->set_correlation(correlationValue);
      } else {
        auto* o = step.spec.mutable_network_reorder();
        *o->mutable_target() = target.value_or(v1::NetworkTarget{});
        o->set_percent(percentValue);
        o->set_correlation(correlationValue);
        if (auto delay = require(*m, "delay",
                                 "a duration more than 0 and at most 1h, e.g. 10ms (reorder works by delaying the "
                                 "packets it does not pick)")) {
          if (auto v = duration(*delay)) {
            *o->mutable_delay() = toProto(*v);
          }
        }
        if (auto gap = lookup(*m, "gap")) {
          if (auto v = integer(*gap, 0, 1'000'000, "a number of packets")) {
            o->set_gap(static_cast<uint32_t>(*v));
          }
        }
      }
      break;
    }
    case FaultKind::kPartition: {
      auto* p = step.spec.mutable_network_partition();
      if (auto target = parseNetworkTarget(*m)) {
        *p->mutable_target() = std::move(*target);
      }
      break;
    }
    case FaultKind::kKill: {
      auto* k = step.spec.mutable_process_kill();
      if (auto process = parseProcess(*m)) {
        *k->mutable_process() = std::move(*process);
      }
      k->set_signal("SIGKILL");
      if (auto signal = lookup(*m, "signal")) {
        if (auto v = scalar(*signal, "a signal name such as SIGKILL or TERM, or a number")) {
          k->set_signal(*v);
        }
      }
      if (auto every = lookup(*m, "every")) {
        if (auto v = durationIn(*every, 100ms, 1h, "from 100ms to 1h", true)) {
          *k->mutable_every() = toProto(*v);
        }
      }
      break;
    }
    case FaultKind::kPause: {
      if (auto process = parseProcess(*m)) {
        *step.spec.mutable_process_pause()->mutable_process() = std::move(*process);
      } else {
        step.spec.mutable_process_pause();
      }
      break;
    }
    case FaultKind::kStressCpu: {
      auto* c = step.spec.mutable_stress_cpu();
      c->set_workers(1);
      if (auto workers = lookup(*m, "workers")) {
        if (auto v = integer(*workers, 1, kMaxStressWorkers, "a number of worker processes")) {
          c->set_workers(static_cast<uint32_t>(*v));
        }
      }
      c->set_load_percent(100);
      if (auto load = lookup(*m, "load")) {
        if (auto v = percent(*load)) {
          c->set_load_percent(*v);
        }
      }
      break;
    }
    case FaultKind::kStressMemory: {
      auto* mem = step.spec.mutable_stress_memory();
      if (auto b = require(*m, "bytes", "a size from 1mib to 1tib, e.g. 512mib")) {
        if (auto v = bytes64(*b)) {
          mem->set_bytes(*v);
        }
      }
      break;
    }
    case FaultKind::kSqueeze: {
      auto* q = step.spec.mutable_cgroup_squeeze();
      if (auto c = require(*m, "cgroup", "a cgroup v2 path such as /system.slice/orders.service")) {
        if (auto v = scalar(*c, "a cgroup v2 path such as /system.slice/orders.service")) {
          q->set_cgroup(*v);
        }
      }
      if (auto cpus = lookup(*m, "cpus")) {
        if (auto v = number(*cpus, "a number of CPUs from 0.01 to 1024, e.g. 0.5")) {
          q->set_cpus(*v);
        }
      }
      if (auto high = lookup(*m, "memoryHigh")) {
        if (auto v = bytes64(*high)) {
          q->set_memory_high_bytes(*v);
        }
      }
      if (auto pids = lookup(*m, "pidsMax")) {
        if (auto v = integer(*pids, 1, kMaxPidsMax, "a number of processes (the kernel's pids.max limit)")) {
          q->set_pids_max(static_cast<uint64_t>(*v));
        }
      }
      if (!q->has_cpus() && !q->has_memory_high_bytes() && !q->has_pids_max() &&
          (lookup(*m, "cpus") || lookup(*m, "memoryHigh") || lookup(*m, "pidsMax"))) {
        // A limit was given but its value was refused (and reported): a placeholder keeps
        // validateFaultSpec() from also saying that no limit was given.
        q->set_pids_max(1);
      }
      break;
    }
  }
  validateSpec(step.spec, *m, errorsBefore);
  return step;
}

std::optional<v1::NetworkTarget> Parser::parseNetworkTarget(const MapNode& fault) {
  constexpr std::string_view accepted =
      "a map with interface and optionally netns, direction and match, e.g. {interface: eth0}";
  auto f = require(fault, "target", accepted);
  if (!f) {
    return std::nullopt;
  }
  auto m = openMap(*f, accepted);
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kNetworkTargetKeys);
  v1::NetworkTarget target;
  constexpr std::string_view interfaceAccepted =
      "a Linux interface name such as eth0, or default (the interface of the default route)";
  if (auto interface = require(*m, "interface", interfaceAccepted)) {
    if (auto v = scalar(*interface, interfaceAccepted)) {
      target.set_interface(*v);
    }
  }
  if (auto netns = lookup(*m, "netns")) {
    constexpr std::string_view netnsAccepted =
        "a path such as /var/run/netns/NAME or /proc/PID/ns/net, or the processes whose namespace it is, "
        "e.g. {pid: 4242}, {name: nginx} or {systemdUnit: orders}";
    if (netns->value.IsMap()) {
      if (auto selector = parseSelector(*netns, netnsAccepted)) {
        *target.mutable_netns_process() = std::move(*selector);
      }
    } else if (auto v = scalar(*netns, netnsAccepted)) {
      if (v->empty()) {
        // "" (e.g. an empty --var) must not silently mean the agent's own namespace.
        error(netns->mark, netns->path,
              fmt::format("is empty; accepted: {}; leave netns out for the agent's own namespace", netnsAccepted));
      } else {
        target.set_netns(*v);
      }
    }
  }
  if (auto direction = lookup(*m, "direction")) {
    constexpr std::string_view directionAccepted = "egress, ingress, or both (network.partition only)";
    if (auto v = scalar(*direction, directionAccepted)) {
      if (*v == "egress") {
        target.set_direction(v1::DIRECTION_EGRESS);
      } else if (*v == "ingress") {
        target.set_direction(v1::DIRECTION_INGRESS);
      } else if (*v == "both") {
        target.set_direction(v1::DIRECTION_BOTH);
      } else {
        error(direction->mark, direction->path,
              fmt::format("unknown direction '{}'; accepted: {}", *v, directionAccepted));
      }
    }
  }
  if (auto match = lookup(*m, "match")) {
    if (auto parsed = parseMatch(*match)) {
      *target.mutable_match() = std::move(*parsed);
    }
  }
  return target;
}

// A scalar or a list of scalars.
std::vector<Field> Parser::scalarList(const Field& f, std::string_view accepted) {
  std::vector<Field> out;
  if (f.value.IsScalar()) {
    out.push_back(f);
    return out;
  }
  if (!f.value.IsSequence()) {
    typeError(f, accepted);
    return out;
  }
  size_t i = 0;
  for (auto it = f.value.begin(); it != f.value.end() && !full(); ++it, ++i) {
    Field item{*it, it->Mark(), fmt::format("{}[{}]", f.path, i)};
    if (!it->IsScalar()) {
      typeError(item, accepted);
      continue;
    }
    out.push_back(std::move(item));
  }
  return out;
}

std::optional<v1::TrafficMatch> Parser::parseMatch(const Field& f) {
  constexpr std::string_view accepted =
      "a map with destination, source (CIDRs), destinationPorts, sourcePorts and protocol, e.g. "
      "{destination: 10.0.0.0/8, protocol: tcp, destinationPorts: [443]}";
  auto m = openMap(f, accepted);
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kMatchKeys);
  v1::TrafficMatch match;
  constexpr std::string_view cidrAccepted =
      "an IPv4 or IPv6 address or prefix, or a list of them, e.g. 10.0.0.0/8 or [192.0.2.7, 2001:db8::/32]";
  for (const auto& [key, list] : {std::pair{"destination", match.mutable_destination_cidrs()},
                                  std::pair{"source", match.mutable_source_cidrs()}}) {
    if (auto cidrs = lookup(*m, key)) {
      for (const Field& item : scalarList(*cidrs, cidrAccepted)) {
        if (auto parsed = parseCidr(item.value.Scalar()); !parsed) {
          error(item.mark, item.path, parsed.error());
        } else {
          list->Add(std::string(item.value.Scalar()));
        }
      }
    }
  }
  constexpr std::string_view portAccepted = "a port from 1 to 65535, or a list of them, e.g. [80, 443]";
  for (const auto& [key, list] : {std::pair{"destinationPorts", match.mutable_destination_ports()},
                                  std::pair{"sourcePorts", match.mutable_source_ports()}}) {
    if (auto ports = lookup(*m, key)) {
      for (const Field& item : scalarList(*ports, portAccepted)) {
        if (auto v = integer(item, 1, 65535, "a port")) {
          list->Add(static_cast<uint32_t>(*v));
        }
      }
    }
  }
  if (auto protocol = lookup(*m, "protocol")) {
    constexpr std::string_view protocolAccepted = "tcp, udp or icmp";
    if (auto v = scalar(*protocol, protocolAccepted)) {
      if (*v == "tcp") {
        match.set_protocol(v1::PROTOCOL_TCP);
      } else if (*v == "udp") {
        match.set_protocol(v1::PROTOCOL_UDP);
      } else if (*v == "icmp") {
        match.set_protocol(v1::PROTOCOL_ICMP);
      } else {
        error(protocol->mark, protocol->path, fmt::format("unknown protocol '{}'; accepted: {}", *v, protocolAccepted));
      }
    }
  }
  return match;
}

std::optional<v1::GilbertElliott> Parser::parseGilbertElliott(const Field& f) {
  constexpr std::string_view accepted =
      "a map with p (good to bad), r (bad to good), badLoss and goodLoss, as percentages, e.g. "
      "{p: 1, r: 25, badLoss: 100}";
  auto m = openMap(f, accepted);
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kGilbertElliottKeys);
  v1::GilbertElliott ge;
  ge.set_bad_loss(100);  // tc's default: 1-h = 100 %
  if (auto p = require(*m, "p", "a percentage more than 0 and at most 100: the chance to go from good to bad")) {
    if (auto v = percent(*p)) {
      ge.set_p(*v);
    }
  }
  // tc's default r is 100 - p.
  ge.set_r(100 - ge.p());
  if (auto r = lookup(*m, "r")) {
    if (auto v = percent(*r)) {
      ge.set_r(*v);
    }
  }
  if (auto bad = lookup(*m, "badLoss")) {
    if (auto v = percent(*bad)) {
      ge.set_bad_loss(*v);
    }
  }
  if (auto good = lookup(*m, "goodLoss")) {
    if (auto v = percent(*good)) {
      ge.set_good_loss(*v);
    }
  }
  return ge;
}

std::optional<uint32_t> Parser::packets(const Field& f) {
  auto v = integer(f, 1, std::numeric_limits<uint32_t>::max(), "a number of packets, e.g. 10000");
  if (!v) {
    return std::nullopt;
  }
  return static_cast<uint32_t>(*v);
}

std::optional<v1::ProcessSelector> Parser::parseProcess(const MapNode& fault) {
  constexpr std::string_view accepted =
      "a map with exactly one of pid, name, cmdline, cgroup, systemdUnit, pidfile, and optionally count or "
      "percent, e.g. {name: nginx} or {systemdUnit: orders, count: 1}";
  auto f = require(fault, "process", accepted);
  if (!f) {
    return std::nullopt;
  }
  return parseSelector(*f, accepted);
}

// A process selector map (process: or a network target's netns:).
std::optional<v1::ProcessSelector> Parser::parseSelector(const Field& f, std::string_view accepted) {
  auto m = openMap(f, accepted);
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kProcessKeys);
  static constexpr std::array<std::string_view, 6> kBy{"pid", "name", "cmdline", "cgroup", "systemdUnit", "pidfile"};
  std::vector<std::pair<std::string_view, Field>> given;
  for (auto key : kBy) {
    if (auto v = lookup(*m, key)) {
      given.emplace_back(key, *v);
    }
  }
  if (given.size() > 1) {
    error(m->self.mark, m->self.path,
          fmt::format("has both {} and {}; accepted: {}", given[0].first, given[1].first, accepted));
    return std::nullopt;
  }
  if (given.empty()) {
    if (m->entries.empty() || lookup(*m, "count") || lookup(*m, "percent")) {
      error(m->self.mark, m->self.path,
            fmt::format("has none of pid, name, cmdline, cgroup, systemdUnit, pidfile; accepted: {}", accepted));
    }
    return std::nullopt;
  }
  v1::ProcessSelector selector;
  const auto& [key, field] = given.front();
  if (key == "pid") {
    if (auto v = integer(field, 2, kMaxPidsMax, "a process id greater than 1 (pid 1 is never a target)")) {
      selector.set_pid(static_cast<int32_t>(*v));
    }
  } else if (auto v = scalar(field, "a string")) {
    if (key == "name") {
      selector.set_name(*v);
    } else if (key == "cmdline") {
      selector.set_cmdline(*v);
    } else if (key == "cgroup") {
      selector.set_cgroup(*v);
    } else if (key == "systemdUnit") {
      selector.set_systemd_unit(*v);
    } else {
      selector.set_pidfile(*v);
    }
  }
  if (auto count = lookup(*m, "count")) {
    if (auto v = integer(*count, 1, kMaxPidsMax, "a number of processes")) {
      selector.set_count(static_cast<uint32_t>(*v));
    }
  }
  if (auto p = lookup(*m, "percent")) {
    if (auto v = percent(*p)) {
      if (*v <= 0) {
        error(p->mark, p->path, fmt::format("{:g} is out of range; accepted: more than 0 and at most 100", *v));
      } else {
        selector.set_percent(*v);
      }
    }
  }
  return selector;
}

std::optional<double> Parser::number(const Field& f, std::string_view accepted) {
  auto text = scalar(f, accepted);
  if (!text) {
    return std::nullopt;
  }
  double value = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (text->empty() || ec != std::errc{} || end != text->data() + text->size()) {
    error(f.mark, f.path, fmt::format("'{}' is not a number; accepted: {}", *text, accepted));
    return std::nullopt;
  }
  return value;  // the range is checked by validateFaultSpec()
}

std::optional<uint64_t> Parser::bytes64(const Field& f) {
  constexpr std::string_view accepted =
      "bytes with a unit b, kib, mib, gib, tib (or kb, mb, gb, tb: also x1024), "
      "e.g. 512mib";
  auto text = scalar(f, accepted);
  if (!text) {
    return std::nullopt;
  }
  auto parsed = splitNumber(*text);
  if (!parsed) {
    error(f.mark, f.path, fmt::format("'{}' is not a size; accepted: {}", *text, accepted));
    return std::nullopt;
  }
  const auto& [value, unit] = *parsed;
  static constexpr std::array<std::pair<std::string_view, double>, 9> kUnits{{{"b", 1},
                                                                              {"kb", 0x1p10},
                                                                              {"kib", 0x1p10},
                                                                              {"mb", 0x1p20},
                                                                              {"mib", 0x1p20},
                                                                              {"gb", 0x1p30},
                                                                              {"gib", 0x1p30},
                                                                              {"tb", 0x1p40},
                                                                              {"tib", 0x1p40}}};
  for (const auto& [name, multiplier] : kUnits) {
    if (unit == name) {
      const double bytes = std::round(value * multiplier);
      if (bytes < 1 || bytes > 0x1p60) {
        error(f.mark, f.path, fmt::format("{} is out of range; accepted: from 1b to 1tib", *text));
        return std::nullopt;
      }
      return static_cast<uint64_t>(bytes);
    }
  }
  error(f.mark, f.path,
        unit.empty() ? fmt::format("'{}' has no unit; accepted: {}", *text, accepted)
                     : fmt::format("'{}' has an unknown unit '{}'; accepted: {}", *text, unit, accepted));
  return std::nullopt;
}

// Runs validateFaultSpec() until it passes, so every field it rejects is reported once, at the
// field's place in the file. A field the parser already reported (diagnostics from
// faultErrorsFrom on) was left unset in the spec: what validateFaultSpec says of it is dropped.
void Parser::validateSpec(v1::FaultSpec spec, const MapNode& fault, size_t faultErrorsFrom) {
  const size_t parserErrorsEnd = diagnostics_.size();
  // A selector the parser already complained about (an unknown key in process: ...) is left empty,
  // and validateFaultSpec() then reports "process.pid": the parser's error says more.
  const std::string selectorPath = childPath(fault.self.path, "process");
  const auto alreadyReported = [&](const std::string& path) {
    const bool inSelector = path.rfind(selectorPath + ".", 0) == 0;
    for (size_t i = faultErrorsFrom; i < parserErrorsEnd; ++i) {
      const std::string& reported = diagnostics_[i].field;
      if (reported == path || path.rfind(reported + ".", 0) == 0 || reported.rfind(path + ".", 0) == 0 ||
          (inSelector && reported.rfind(selectorPath + ".", 0) == 0)) {
        return true;
      }
    }
    return false;
  };
  std::vector<std::string> reported;
  for (;;) {
    auto r = validateFaultSpec(spec);
    if (r) {
      return;
    }
    const std::string field = r.error().field;
    if (std::find(reported.begin(), reported.end(), field) != reported.end()) {
      return;
    }
    reported.push_back(field);
    const std::string relative = filePathOfSpecField(spec, field);
    const YAML::Mark mark = markOf(fault.self, relative);
    // jitter is compared with the delay: after a bad delay that comparison says nothing.
    const bool afterBadDelay =
        field == "jitter" && std::find(reported.begin(), reported.end(), "delay") != reported.end();
    if (const std::string path = childPath(fault.self.path, relative); !alreadyReported(path) && !afterBadDelay) {
      error(mark, path, r.error().message);
    }
    if (!neutralise(spec, field)) {
      return;
    }
  }
}

// Counts the nodes of a YAML text from the parser's events, without building them; throws
// TooMany at the first node over kMaxYamlNodes. Aliases count: each use is walked again.
class NodeCounter final : public YAML::EventHandler {
 public:
  struct TooMany {
    YAML::Mark mark;
  };

  void OnDocumentStart(const YAML::Mark& /*mark*/) override {}
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t /*anchor*/) override { count(mark); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t /*anchor*/) override { count(mark); }
  void OnScalar(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t /*anchor*/,
                const std::string& /*value*/) override {
    count(mark);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t /*anchor*/,
                       YAML::EmitterStyle::value /*style*/) override {
    count(mark);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string& /*tag*/, YAML::anchor_t /*anchor*/,
                  YAML::EmitterStyle::value /*style*/) override {
    count(mark);
  }
  void OnMapEnd() override {}

 private:
  void count(const YAML::Mark& mark) {
    if (++nodes_ > kMaxYamlNodes) {
      throw TooMany{mark};
    }
  }

  size_t nodes_ = 0;
};

Diagnostic fileDiagnostic(const std::string& fileName, const YAML::Mark& mark, std::string message) {
  Diagnostic d;
  d.file = fileName;
  if (mark.line >= 0) {
    d.line = mark.line + 1;
    d.column = mark.column + 1;
  }
  d.message = std::move(message);
  return d;
}

Diagnostic syntaxError(const std::string& fileName, const YAML::Exception& e) {
  if (const auto* deep = dynamic_cast<const YAML::DeepRecursion*>(&e)) {
    return fileDiagnostic(fileName, e.mark,
                          fmt::format("YAML syntax error: lists and maps nested {} levels deep, more than yaml-cpp "
                                      "accepts; an experiment needs at most 6 levels",
                                      deep->depth()));
  }
  return fileDiagnostic(fileName, e.mark, fmt::format("YAML syntax error: {}", e.msg));
}

// The documents of the text, or the one error that stops parsing: a syntax error or too many nodes.
tl::expected<std::vector<YAML::Node>, Diagnostic> loadDocuments(std::string_view yaml, const std::string& fileName) {
  const std::string text(yaml);
  try {
    std::istringstream in(text);
    YAML::Parser events(in);
    NodeCounter counter;
    while (events.HandleNextDocument(counter)) {
    }
  } catch (const NodeCounter::TooMany& tooMany) {
    return tl::unexpected(fileDiagnostic(
        fileName, tooMany.mark,
        fmt::format("the file has more than {} YAML nodes (maps, lists, scalars and aliases); accepted: at most {} "
                    "(an experiment with 1000 steps and 100 probes has about 25000)",
                    kMaxYamlNodes, kMaxYamlNodes)));
  } catch (const YAML::Exception& e) {
    return tl::unexpected(syntaxError(fileName, e));
  }
  try {
    return YAML::LoadAll(text);
  } catch (const YAML::Exception& e) {
    return tl::unexpected(syntaxError(fileName, e));
  }
}

tl::expected<Experiment, std::vector<Diagnostic>> parseSubstituted(std::string_view yaml, const std::string& fileName);

}  // namespace

std::string_view sliName(SliKind kind) {
  switch (kind) {
    case SliKind::kP50:
      return "p50";
    case SliKind::kP90:
      return "p90";
    case SliKind::kP95:
      return "p95";
    case SliKind::kP99:
      return "p99";
    case SliKind::kMaxLatency:
      return "max";
    case SliKind::kErrors:
      return "errors";
    case SliKind::kValue:
      return "value";
  }
  return "?";
}

// Here, not in probe.cpp: the parser (and the fuzz target, built from the parser's sources alone)
// names probe kinds in its errors.
std::string_view probeKindName(ProbeKind kind) {
  switch (kind) {
    case ProbeKind::kHttp:
      return "http";
    case ProbeKind::kTcp:
      return "tcp";
    case ProbeKind::kCommand:
      return "command";
    case ProbeKind::kPrometheus:
      return "prometheus";
  }
  return "?";
}

tl::expected<Slo, std::string> parseObjective(std::string_view text) {
  constexpr std::string_view accepted =
      "terms 'SLI OP VALUE' joined by 'and', then optionally 'over DURATION' (default 30s), e.g. 'p99 < 300ms and "
      "errors < 1% over 30s'; SLI: p50, p90, p95, p99, max (latency: 300ms, 1.5s), errors (percent of failed "
      "samples: 1%), value, throughput or saturation (a prometheus probe's value: a number); OP: <, <=, >, >=, ==, !=";
  const auto fail = [&](const std::string& why) {
    return tl::unexpected(fmt::format("objective '{}': {}; accepted: {}", text, why, accepted));
  };
  Slo slo;
  slo.objective = std::string(trim(text));
  std::string_view rest = slo.objective;
  if (const size_t over = rest.rfind(" over "); over != std::string_view::npos) {
    const std::string_view window = trim(rest.substr(over + 6));
    auto d = parseDuration(window);
    if (!d) {
      return fail(fmt::format("window '{}': {}", window, d.error()));
    }
    if (*d < 1s || *d > kMaxStep || *d % 1ms != 0ns) {
      return fail(fmt::format("window '{}' is out of range (from 1s to 1h, whole milliseconds)", window));
    }
    slo.window = std::chrono::duration_cast<milliseconds>(*d);
    rest = trim(rest.substr(0, over));
  }
  if (rest.empty()) {
    return fail("it has no term");
  }
  if (rest == "and" || (rest.size() > 4 && rest.substr(rest.size() - 4) == " and")) {
    return fail("it ends with 'and'");
  }
  while (!rest.empty()) {
    std::string_view term = rest;
    if (const size_t andAt = rest.find(" and "); andAt != std::string_view::npos) {
      term = rest.substr(0, andAt);
      rest = trim(rest.substr(andAt + 5));
      if (rest.empty()) {
        return fail("it ends with 'and'");
      }
    } else {
      rest = {};
    }
    term = trim(term);
    size_t nameEnd = 0;
    while (nameEnd < term.size() && std::isalnum(static_cast<unsigned char>(term[nameEnd]))) {
      ++nameEnd;
    }
    SloTerm t;
    t.name = lower(term.substr(0, nameEnd));
    static constexpr std::array<std::pair<std::string_view, SliKind>, 9> kSlis{{{"p50", SliKind::kP50},
                                                                                {"p90", SliKind::kP90},
                                                                                {"p95", SliKind::kP95},
                                                                                {"p99", SliKind::kP99},
                                                                                {"max", SliKind::kMaxLatency},
                                                                                {"errors", SliKind::kErrors},
                                                                                {"value", SliKind::kValue},
                                                                                {"throughput", SliKind::kValue},
                                                                                {"saturation", SliKind::kValue}}};
    const auto found = std::find_if(kSlis.begin(), kSlis.end(), [&](const auto& e) { return e.first == t.name; });
    if (found == kSlis.end()) {
      return fail(fmt::format("'{}' is not an SLI", term.substr(0, nameEnd)));
    }
    t.sli = found->second;
    std::string_view tail = trim(term.substr(nameEnd));
    auto c = takeComparison(tail);
    if (!c) {
      return fail(fmt::format("term '{}' has no comparison after {}", term, t.name));
    }
    t.comparison = *c;
    const std::string_view value = trim(tail);
    switch (t.sli) {
      case SliKind::kErrors: {
        std::string_view number = value;
        if (!number.empty() && number.back() == '%') {
          number.remove_suffix(1);
        }
        auto v = plainNumber(number);
        if (!v || *v < 0 || *v > 100) {
          return fail(fmt::format("'{}' in '{}' is not a percentage from 0 to 100", value, term));
        }
        t.threshold = *v;
        break;
      }
      case SliKind::kValue: {
        std::string_view number = value;
        if (t.name == "throughput" && number.size() > 2 && number.substr(number.size() - 2) == "/s") {
          number.remove_suffix(2);
        }
        auto v = plainNumber(trim(number));
        if (!v) {
          return fail(fmt::format("'{}' in '{}' is not a number", value, term));
        }
        t.threshold = *v;
        break;
      }
      default: {
        auto d = parseDuration(value);
        if (!d) {
          return fail(fmt::format("'{}' in '{}' is not a latency: {}", value, term, d.error()));
        }
        t.threshold = std::chrono::duration<double, std::milli>(*d).count();
        break;
      }
    }
    slo.terms.push_back(std::move(t));
  }
  return slo;
}

std::string format(const Diagnostic& d) {
  const std::string place = d.line > 0 ? fmt::format("{}:{}:{}", d.file, d.line, d.column) : d.file;
  if (d.field.empty()) {
    return fmt::format("{}: {}", place, d.message);
  }
  return fmt::format("{}: {}: {}", place, d.field, d.message);
}

std::string modeText(const Targets& t) {
  switch (t.mode) {
    case TargetMode::kAll:
      return "all";
    case TargetMode::kCount:
      return fmt::format("count({})", t.n);
    case TargetMode::kRandom:
      return fmt::format("random({})", t.n);
    case TargetMode::kPercent:
      return fmt::format("percent({})", t.percent);
  }
  return "all";
}

bool isVariableName(std::string_view name) {
  if (name.empty() || name.size() > 64 || std::isdigit(static_cast<unsigned char>(name.front()))) {
    return false;
  }
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

std::string faultStepText(const FaultStep& f) {
  const std::string_view kind = faultKindName(f.spec);
  return f.name == kind ? std::string(kind) : fmt::format("{} '{}'", kind, f.name);
}

namespace {

// 1-based line and column of a byte offset (columns count bytes, as yaml-cpp's marks do).
std::pair<int, int> placeOf(std::string_view text, size_t offset) {
  int line = 1;
  size_t lineStart = 0;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      lineStart = i + 1;
    }
  }
  return {line, static_cast<int>(offset - lineStart) + 1};
}

// The byte offset of a 1-based line and column; text.size() when past the end.
size_t offsetOf(std::string_view text, int line, int column) {
  size_t offset = 0;
  for (int l = 1; l < line; ++l) {
    const size_t nl = text.find('\n', offset);
    if (nl == std::string_view::npos) {
      return text.size();
    }
    offset = nl + 1;
  }
  return std::min(text.size(), offset + static_cast<size_t>(std::max(column, 1) - 1));
}

// Moves a diagnostic about the substituted text to its place in the file as written.
void mapBack(Diagnostic& d, const Substitution& sub, std::string_view original) {
  if (d.line <= 0 || sub.segments.empty()) {
    return;
  }
  const size_t out = offsetOf(sub.text, d.line, d.column);
  size_t in = original.size();
  for (const auto& seg : sub.segments) {
    if (out >= seg.outStart && out < seg.outStart + seg.length) {
      in = seg.literal ? seg.inStart + (out - seg.outStart) : seg.inStart;
      break;
    }
    if (seg.length == 0 && out == seg.outStart) {  // an empty value: its ${
      in = seg.inStart;
      break;
    }
  }
  std::tie(d.line, d.column) = placeOf(original, in);
}

}  // namespace

tl::expected<Substitution, std::vector<Diagnostic>> substituteVariables(std::string_view yaml,
                                                                        const std::string& fileName,
                                                                        const Variables& vars) {
  Substitution sub;
  std::vector<Diagnostic> errors;
  std::vector<std::string_view> names;
  for (const auto& [k, v] : vars) {
    names.push_back(k);
  }
  const std::string defined = names.empty() ? std::string("none") : joinKeys(names);
  size_t copiedFrom = 0;  // start of the literal text not yet copied
  const auto copyLiteral = [&](size_t upTo) {
    if (upTo > copiedFrom) {
      sub.segments.push_back({sub.text.size(), copiedFrom, upTo - copiedFrom, true});
      sub.text.append(yaml.substr(copiedFrom, upTo - copiedFrom));
    }
  };
  const auto fail = [&](size_t at, std::string message) {
    if (errors.size() >= kMaxDiagnostics) {
      return;
    }
    auto [line, column] = placeOf(yaml, at);
    errors.push_back(Diagnostic{fileName, line, column, "", std::move(message)});
  };
  for (size_t at = yaml.find('$'); at != std::string_view::npos; at = yaml.find('$', at)) {
    if (yaml.substr(at, 3) == "$${") {  // escape: a literal ${
      copyLiteral(at);
      sub.segments.push_back({sub.text.size(), at, 2, false});
      sub.text += "${";
      at += 3;
      copiedFrom = at;
      continue;
    }
    if (yaml.substr(at, 2) != "${") {
      ++at;
      continue;
    }
    const size_t close = yaml.find('}', at + 2);
    const size_t lineEnd = yaml.find('\n', at);
    constexpr std::string_view kAccepted =
        "${NAME} with NAME a letter or '_' then letters, digits and '_' (at most 64), given with --var NAME=VALUE; "
        "write $${ for a literal ${";
    if (close == std::string_view::npos || (lineEnd != std::string_view::npos && close > lineEnd)) {
      fail(at, fmt::format("'${{' without a closing '}}' on its line; accepted: {}", kAccepted));
      at += 2;
      continue;
    }
    const std::string_view name = yaml.substr(at + 2, close - at - 2);
    if (!isVariableName(name)) {
      fail(at, fmt::format("'${{{}}}' is not a variable reference; accepted: {}", name, kAccepted));
      at = close + 1;
      continue;
    }
    const auto it = vars.find(std::string(name));
    if (it == vars.end()) {
      fail(at, fmt::format("undefined variable '{}'{}; defined: {}; give it with --var {}=VALUE (write $${{ for a "
                           "literal ${{)",
                           name, suggestion(name, names), defined, name));
      at = close + 1;
      continue;
    }
    if (sub.text.size() + (at - copiedFrom) + it->second.size() > kMaxExperimentBytes) {
      // Stop before the text grows: 20,000 references to a 100 KB value would take gigabytes.
      fail(at, fmt::format("with the --var values substituted, the file would exceed the 1 MiB ({} bytes) limit of "
                           "experiment files; accepted: shorter values or fewer references",
                           kMaxExperimentBytes));
      return tl::unexpected(std::move(errors));
    }
    copyLiteral(at);
    sub.segments.push_back({sub.text.size(), at, it->second.size(), false});
    sub.text += it->second;
    at = close + 1;
    copiedFrom = at;
  }
  if (!errors.empty()) {
    return tl::unexpected(std::move(errors));
  }
  copyLiteral(yaml.size());
  return sub;
}

tl::expected<Experiment, std::vector<Diagnostic>> parseExperiment(std::string_view original,
                                                                  const std::string& fileName, const Variables& vars) {
  if (original.size() > kMaxExperimentBytes) {
    // Checked before yaml-cpp sees the text: its node tree takes far more memory than the file.
    Diagnostic d;
    d.file = fileName;
    d.message = fmt::format("the file is {} bytes; experiment files are limited to 1 MiB ({} bytes)", original.size(),
                            kMaxExperimentBytes);
    return tl::unexpected(std::vector<Diagnostic>{std::move(d)});
  }
  auto substituted = substituteVariables(original, fileName, vars);
  if (!substituted) {
    return tl::unexpected(std::move(substituted.error()));
  }
  auto result = parseSubstituted(substituted->text, fileName);
  if (!result) {
    for (Diagnostic& d : result.error()) {
      mapBack(d, *substituted, original);
    }
  }
  return result;
}

namespace {

tl::expected<Experiment, std::vector<Diagnostic>> parseSubstituted(std::string_view yaml, const std::string& fileName) {
  if (yaml.size() > kMaxExperimentBytes) {
    // Checked before yaml-cpp sees the text: its node tree takes far more memory than the file.
    Diagnostic d;
    d.file = fileName;
    d.message = fmt::format(
        "with its variables substituted the file is {} bytes; experiment files are limited to 1 MiB ({} bytes)",
        yaml.size(), kMaxExperimentBytes);
    return tl::unexpected(std::vector<Diagnostic>{std::move(d)});
  }
  auto loaded = loadDocuments(yaml, fileName);
  if (!loaded) {
    return tl::unexpected(std::vector<Diagnostic>{std::move(loaded.error())});
  }
  const std::vector<YAML::Node>& documents = *loaded;
  Parser parser(fileName);
  if (documents.empty() || (documents.size() == 1 && documents.front().IsNull())) {
    parser.error(YAML::Mark{}, "",
                 "the file is empty; accepted: an experiment with apiVersion: faultline/v1, kind: Experiment, "
                 "metadata and method");
    return tl::unexpected(parser.takeDiagnostics());
  }
  if (documents.size() > 1) {
    parser.error(documents[1].Mark(), "",
                 fmt::format("the file holds {} YAML documents; accepted: one experiment per file", documents.size()));
  }
  Experiment experiment = parser.parse(documents.front());
  std::vector<Diagnostic> diagnostics = parser.takeDiagnostics();
  if (!diagnostics.empty()) {
    std::stable_sort(diagnostics.begin(), diagnostics.end(), [](const Diagnostic& a, const Diagnostic& b) {
      return std::pair{a.line, a.column} < std::pair{b.line, b.column};
    });
    if (diagnostics.size() >= kMaxDiagnostics) {
      diagnostics.push_back(
          Diagnostic{fileName, 0, 0, "", fmt::format("stopped checking after {} errors", kMaxDiagnostics)});
    }
    return tl::unexpected(std::move(diagnostics));
  }
  return experiment;
}

}  // namespace

}  // namespace faultline::controller
