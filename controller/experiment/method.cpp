// The method section of an experiment file: steps, parallel groups, probe steps, and what every
// fault step has (type, name, duration, its keys); each family's own fields are in
// network_faults.cpp, process_faults.cpp and resource_faults.cpp.
#include "controller/experiment/parser.h"

#include <algorithm>
#include <array>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include <fmt/format.h>

#include "agent/faults/spec.h"

namespace faultline::controller {

using namespace detail;
using namespace std::chrono_literals;

namespace {

constexpr std::array<std::string_view, 4> kStepKeys{"fault", "wait", "probe", "parallel"};
constexpr std::array<std::string_view, 3> kParallelMemberKeys{"fault", "wait", "probe"};
constexpr std::array<std::string_view, 11> kDelayKeys{"name",  "type",   "duration",    "target",
                                                      "delay", "jitter", "correlation", "distribution",
                                                      "rate",  "limit",  "keepOrder"};
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
constexpr std::array<std::string_view, 5> kPauseKeys{"name", "type", "duration", "process", "mechanism"};
constexpr std::array<std::string_view, 5> kStressCpuKeys{"name", "type", "duration", "workers", "load"};
constexpr std::array<std::string_view, 4> kStressMemoryKeys{"name", "type", "duration", "bytes"};
constexpr std::array<std::string_view, 7> kSqueezeKeys{"name", "type",       "duration", "cgroup",
                                                       "cpus", "memoryHigh", "pidsMax"};

// Every key some fault type accepts: the candidates when the type itself is missing or wrong.
constexpr std::array<std::string_view, 27> kAnyFaultKeys{
    "name",    "type",  "duration", "target",  "delay",   "jitter",     "correlation", "distribution",   "percent",
    "rate",    "burst", "limit",    "latency", "process", "signal",     "every",       "gilbertElliott", "gap",
    "workers", "load",  "bytes",    "cgroup",  "cpus",    "memoryHigh", "pidsMax",     "mechanism",      "keepOrder"};

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

}  // namespace

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
  // The members of parallel groups count too, before any step is read: YAML aliases let a small
  // file name one large group a thousand times, and each use is walked again (attacker trial: 167
  // KB made 40 million steps and 3 GB in the controller). Node sizes are O(1) to ask.
  size_t total = 0;
  for (size_t i = 0; i < f.value.size(); ++i) {
    const YAML::Node item = std::as_const(f.value)[i];
    const YAML::Node group = item.IsMap() ? item["parallel"] : YAML::Node();
    total += group && group.IsSequence() ? std::max<size_t>(group.size(), 1) : 1;
  }
  if (total > kMaxMethodSteps) {
    error(f.mark, f.path,
          fmt::format("has {} steps counting the members of parallel groups; accepted: at most {} steps per "
                      "experiment",
                      total, kMaxMethodSteps));
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
      error(e.keyNode.Mark(), e.field.path, yaml::unknownKeyMessage(e.key, suggestion(e.key, accepted), accepted));
    }
  }
}

std::optional<FaultStep> Parser::parseFault(const Field& f) {
  auto m = openMap(f, "a map with type, duration and the fault's parameters");
  if (!m) {
    return std::nullopt;
  }
  const size_t errorsBefore = diagnostics().size();
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
      } else if (const auto why = labelNameProblem(*v); !why.empty()) {
        error(name->mark, name->path,
              fmt::format("has {}; accepted: a name for events and records, at most {} bytes, no control character",
                          why, kMaxLabelNameBytes));
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
    case FaultKind::kDelay:
    case FaultKind::kLoss:
    case FaultKind::kBandwidth:
    case FaultKind::kDuplicate:
    case FaultKind::kCorrupt:
    case FaultKind::kReorder:
    case FaultKind::kPartition:
      parseNetworkFault(type->kind, *m, step.spec);
      break;
    case FaultKind::kKill:
    case FaultKind::kPause:
      parseProcessFault(type->kind, *m, step.spec);
      break;
    case FaultKind::kStressCpu:
    case FaultKind::kStressMemory:
    case FaultKind::kSqueeze:
      parseResourceFault(type->kind, *m, step.spec);
      break;
  }
  validateSpec(step.spec, *m, errorsBefore);
  return step;
}

std::string faultStepText(const FaultStep& f) {
  const std::string_view kind = faultKindName(f.spec);
  return f.name == kind ? std::string(kind) : fmt::format("{} '{}'", kind, f.name);
}

}  // namespace faultline::controller
