// Diagnostics of an experiment file beyond a field's own checks: the "did you mean" hint, and
// validateFaultSpec()'s errors, each reported once at its field's place in the file.
#include "controller/experiment/parser.h"

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "agent/faults/spec.h"

namespace faultline::controller {

using namespace detail;

namespace {

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
      if (field == "keepOrder") {
        d->clear_keep_order();
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
      if (field == "mechanism") {
        spec.mutable_process_pause()->clear_mechanism();
        return true;
      }
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

}  // namespace

namespace detail {

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
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

}  // namespace detail

// Runs validateFaultSpec() until it passes, so every field it rejects is reported once, at the
// field's place in the file. A field the parser already reported (diagnostics from
// faultErrorsFrom on) was left unset in the spec: what validateFaultSpec says of it is dropped.
void Parser::validateSpec(v1::FaultSpec spec, const MapNode& fault, size_t faultErrorsFrom) {
  const size_t parserErrorsEnd = diagnostics().size();
  // A selector the parser already complained about (an unknown key in process: ...) is left empty,
  // and validateFaultSpec() then reports "process.pid": the parser's error says more.
  const std::string selectorPath = childPath(fault.self.path, "process");
  const auto alreadyReported = [&](const std::string& path) {
    const bool inSelector = path.rfind(selectorPath + ".", 0) == 0;
    for (size_t i = faultErrorsFrom; i < parserErrorsEnd; ++i) {
      const std::string& reported = diagnostics()[i].field;
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
    // jitter is compared with the delay, keepOrder needs the jitter: after a bad delay (jitter) that
    // says nothing.
    const auto wasReported = [&](const char* other) {
      return std::find(reported.begin(), reported.end(), other) != reported.end();
    };
    const bool afterBadDelay =
        (field == "jitter" && wasReported("delay")) || (field == "keepOrder" && wasReported("jitter"));
    if (const std::string path = childPath(fault.self.path, relative); !alreadyReported(path) && !afterBadDelay) {
      error(mark, path, r.error().message);
    }
    if (!neutralise(spec, field)) {
      return;
    }
  }
}

}  // namespace faultline::controller
