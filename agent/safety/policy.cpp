#include "agent/safety/policy.h"

#include <fnmatch.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <span>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include "agent/faults/fault.h"
#include "agent/faults/spec.h"

namespace faultline::agent {

using std::chrono::nanoseconds;

namespace {

constexpr std::array<std::string_view, 6> kRootKeys{"maxDuration", "forbidKinds", "interfaces",
                                                    "processes",   "maxPercent",  "maxDelay"};
constexpr std::array<std::string_view, 2> kInterfaceKeys{"allow", "deny"};
constexpr std::array<std::string_view, 1> kProcessKeys{"protect"};
constexpr std::array<std::string_view, 12> kKinds{
    "network.delay",     "network.loss", "network.bandwidth", "network.duplicate", "network.corrupt", "network.reorder",
    "network.partition", "process.kill", "process.pause",     "stress.cpu",        "stress.memory",   "cgroup.squeeze"};
constexpr std::chrono::hours kMaxPolicyDelay{1};  // the largest delay validateFaultSpec() accepts

std::string join(std::span<const std::string_view> words) {
  return fmt::format("{}", fmt::join(words, ", "));
}

bool interfaceMatches(const std::string& pattern, std::string_view interface) {
  return ::fnmatch(pattern.c_str(), std::string(interface).c_str(), 0) == 0;
}

std::string_view interfaceOf(const v1::FaultSpec& spec) {
  const v1::NetworkTarget* target = networkTarget(spec);
  return target != nullptr ? std::string_view(target->interface()) : std::string_view{};
}

// The share of packets a fault drops, for maxPercent: random loss, the Gilbert-Elliott model's
// long-run loss, or 100 for a partition; nullopt for faults that drop nothing on purpose.
std::optional<double> lossPercentOf(const v1::FaultSpec& spec) {
  if (spec.kind_case() == v1::FaultSpec::kNetworkPartition) {
    return 100.0;
  }
  if (spec.kind_case() != v1::FaultSpec::kNetworkLoss) {
    return std::nullopt;
  }
  const auto& l = spec.network_loss();
  if (!l.has_gilbert_elliott()) {
    return l.percent();
  }
  const auto& ge = l.gilbert_elliott();
  if (ge.p() + ge.r() <= 0) {
    return ge.good_loss();
  }
  return (ge.r() * ge.good_loss() + ge.p() * ge.bad_loss()) / (ge.p() + ge.r());
}

}  // namespace

std::string format(const PolicyDiagnostic& d) {
  const std::string place = d.line > 0 ? fmt::format("{}:{}:{}", d.file, d.line, d.column) : d.file;
  if (d.field.empty()) {
    return fmt::format("{}: {}", place, d.message);
  }
  return fmt::format("{}: {}: {}", place, d.field, d.message);
}

// ---- check ----

tl::expected<void, PolicyViolation> Policy::checkInterface(std::string_view interface) const {
  if (deny_) {
    for (size_t i = 0; i < deny_->patterns.size(); ++i) {
      if (interfaceMatches(deny_->patterns[i], interface)) {
        std::string rule = fmt::format("policy {} (interfaces.deny: {})", deny_->wheres[i], deny_->patterns[i]);
        std::string message = fmt::format("{} refuses interface {}", rule, interface);
        return tl::unexpected(PolicyViolation{std::move(rule), std::move(message)});
      }
    }
  }
  if (allow_) {
    const bool allowed = std::any_of(allow_->patterns.begin(), allow_->patterns.end(),
                                     [&](const std::string& p) { return interfaceMatches(p, interface); });
    if (!allowed) {
      std::string rule =
          fmt::format("policy {} (interfaces.allow: [{}])", allow_->where, fmt::join(allow_->patterns, ", "));
      std::string message = fmt::format("{} refuses interface {}: it matches no allowed name", rule, interface);
      return tl::unexpected(PolicyViolation{std::move(rule), std::move(message)});
    }
  }
  return {};
}

tl::expected<void, PolicyViolation> Policy::check(const v1::FaultSpec& spec, nanoseconds duration) const {
  const std::string_view kind = faultKindName(spec);
  for (const auto& forbidden : forbidKinds_) {
    if (forbidden.value == kind) {
      std::string rule = fmt::format("policy {} (forbidKinds: {})", forbidden.where, forbidden.value);
      std::string message = fmt::format("{} refuses {}", rule, kind);
      return tl::unexpected(PolicyViolation{std::move(rule), std::move(message)});
    }
  }
  if (const std::string_view interface = interfaceOf(spec); !interface.empty()) {
    if (auto ok = checkInterface(interface); !ok) {
      return ok;
    }
  }
  if (const auto loss = lossPercentOf(spec); maxPercent_ && loss && *loss > maxPercent_->value) {
    std::string rule = fmt::format("policy {} ({})", maxPercent_->where, maxPercent_->text);
    std::string message = fmt::format("{} refuses loss {:g}%", rule, *loss);
    return tl::unexpected(PolicyViolation{std::move(rule), std::move(message)});
  }
  const bool delays =
      spec.kind_case() == v1::FaultSpec::kNetworkDelay || spec.kind_case() == v1::FaultSpec::kNetworkReorder;
  if (maxDelay_ && delays) {
    const nanoseconds delay =
        toMicros(spec.has_network_delay() ? spec.network_delay().delay() : spec.network_reorder().delay());
    const nanoseconds jitter = toMicros(spec.network_delay().jitter());
    if (delay + jitter > maxDelay_->value) {
      std::string rule = fmt::format("policy {} ({})", maxDelay_->where, maxDelay_->text);
      std::string message = jitter == nanoseconds{0}
                                ? fmt::format("{} refuses delay {}", rule, formatDuration(delay))
                                : fmt::format("{} refuses delay {} + jitter {} = {}", rule, formatDuration(delay),
                                              formatDuration(jitter), formatDuration(delay + jitter));
      return tl::unexpected(PolicyViolation{std::move(rule), std::move(message)});
    }
  }
  const nanoseconds maxDuration = maxDuration_ ? maxDuration_->value : nanoseconds{kDefaultPolicyMaxDuration};
  if (duration > maxDuration) {
    std::string rule = maxDuration_
                           ? fmt::format("policy {} ({})", maxDuration_->where, maxDuration_->text)
                           : fmt::format("policy built-in default (maxDuration: {})", formatDuration(maxDuration));
    std::string message = fmt::format("{} refuses duration {}", rule, formatDuration(duration));
    if (!maxDuration_) {
      message += fmt::format(" (a policy file's maxDuration can allow up to {})", formatDuration(kMaxFaultDuration));
    }
    return tl::unexpected(PolicyViolation{std::move(rule), std::move(message)});
  }
  return {};
}

std::string Policy::summary() const {
  std::vector<std::string> parts;
  parts.push_back(fmt::format("maxDuration {}{}",
                              formatDuration(maxDuration_ ? maxDuration_->value : kDefaultPolicyMaxDuration),
                              maxDuration_ ? "" : " (default)"));
  if (!forbidKinds_.empty()) {
    std::vector<std::string> kinds;
    for (const auto& k : forbidKinds_) {
      kinds.push_back(k.value);
    }
    parts.push_back(fmt::format("forbidKinds {}", fmt::join(kinds, " ")));
  }
  if (allow_) {
    parts.push_back(fmt::format("interfaces allowed {}", fmt::join(allow_->patterns, " ")));
  }
  if (deny_) {
    parts.push_back(fmt::format("interfaces denied {}", fmt::join(deny_->patterns, " ")));
  }
  std::vector<std::string> names{kAlwaysProtectedName};
  for (const auto& p : protect_) {
    names.push_back(p.name);
  }
  parts.push_back(fmt::format("protect {}", fmt::join(names, " ")));
  if (maxPercent_) {
    parts.push_back(fmt::format("maxPercent {:g}", maxPercent_->value));
  }
  if (maxDelay_) {
    parts.push_back(fmt::format("maxDelay {}", formatDuration(maxDelay_->value)));
  }
  return fmt::format("{}", fmt::join(parts, ", "));
}

// ---- parse ----

class PolicyParser {
 public:
  explicit PolicyParser(std::string file) : file_(std::move(file)) { policy_.file_ = file_; }

  void error(const YAML::Mark& mark, std::string field, std::string message) {
    PolicyDiagnostic d;
    d.file = file_;
    if (mark.line >= 0) {
      d.line = mark.line + 1;
      d.column = mark.column + 1;
    }
    d.field = std::move(field);
    d.message = std::move(message);
    diagnostics_.push_back(std::move(d));
  }

  void parse(const YAML::Node& root) {
    if (!root.IsMap()) {
      error(root.Mark(), "", fmt::format("the file is not a map; accepted: a map with the keys {}", join(kRootKeys)));
      return;
    }
    for (const auto& [key, value, path] : entries(root, "", kRootKeys)) {
      const std::string where = fmt::format("{}:{}", file_, key.Mark().line + 1);
      const YAML::Mark mark = value.IsNull() ? key.Mark() : value.Mark();
      if (path == "maxDuration") {
        if (auto d = duration(value, mark, path, kMaxFaultDuration)) {
          policy_.maxDuration_ = Policy::Rule<nanoseconds>{*d, where, "maxDuration: " + value.Scalar()};
        }
      } else if (path == "maxDelay") {
        if (auto d = duration(value, mark, path, kMaxPolicyDelay)) {
          policy_.maxDelay_ = Policy::Rule<nanoseconds>{*d, where, "maxDelay: " + value.Scalar()};
        }
      } else if (path == "maxPercent") {
        if (auto p = percent(value, mark, path)) {
          policy_.maxPercent_ = Policy::Rule<double>{*p, where, "maxPercent: " + value.Scalar()};
        }
      } else if (path == "forbidKinds") {
        for (const auto& [item, itemPath] : list(value, mark, path, "fault kinds")) {
          auto text = scalar(item, itemPath, "a fault kind: " + join(kKinds));
          if (!text) {
            continue;
          }
          if (std::find(kKinds.begin(), kKinds.end(), *text) == kKinds.end()) {
            error(item.Mark(), itemPath, fmt::format("'{}' is not a fault kind; accepted: {}", *text, join(kKinds)));
            continue;
          }
          policy_.forbidKinds_.push_back(
              Policy::Rule<std::string>{*text, fmt::format("{}:{}", file_, item.Mark().line + 1), ""});
        }
      } else if (path == "interfaces") {
        parseInterfaces(value, mark, path);
      } else if (path == "processes") {
        parseProcesses(value, mark, path);
      }
    }
  }

  tl::expected<Policy, std::vector<PolicyDiagnostic>> finish() {
    if (diagnostics_.empty()) {
      return std::move(policy_);
    }
    std::stable_sort(diagnostics_.begin(), diagnostics_.end(), [](const auto& a, const auto& b) {
      return std::pair{a.line, a.column} < std::pair{b.line, b.column};
    });
    return tl::unexpected(std::move(diagnostics_));
  }

 private:
  struct Entry {
    YAML::Node key;
    YAML::Node value;
    std::string path;
  };
  struct Item {
    YAML::Node value;
    std::string path;
  };

  static std::string child(const std::string& parent, std::string_view key) {
    return parent.empty() ? std::string(key) : fmt::format("{}.{}", parent, key);
  }

  // The map's entries with accepted keys, each once; errors for the others.
  std::vector<Entry> entries(const YAML::Node& map, const std::string& path,
                             std::span<const std::string_view> accepted) {
    std::vector<Entry> out;
    std::map<std::string, int> seen;  // key -> line
    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first;
      if (!key.IsScalar()) {
        error(key.Mark(), path, fmt::format("a key is not a string; accepted: {}", join(accepted)));
        continue;
      }
      const std::string name = key.Scalar();
      const std::string keyPath = child(path, name);
      if (std::find(accepted.begin(), accepted.end(), name) == accepted.end()) {
        error(key.Mark(), keyPath, fmt::format("unknown key '{}'; accepted here: {}", name, join(accepted)));
        continue;
      }
      if (auto first = seen.find(name); first != seen.end()) {
        error(key.Mark(), keyPath,
              fmt::format("duplicate key '{}' (first at line {}); accepted: each key once", name, first->second));
        continue;
      }
      seen.emplace(name, key.Mark().line + 1);
      out.push_back(Entry{key, it->second, keyPath});
    }
    return out;
  }

  void typeError(const YAML::Node& value, const YAML::Mark& mark, const std::string& path, std::string_view accepted) {
    if (value.IsNull()) {
      error(mark, path, fmt::format("has no value; accepted: {}", accepted));
    } else if (value.IsScalar()) {
      error(mark, path, fmt::format("wrong type: got the value '{}'; accepted: {}", value.Scalar(), accepted));
    } else if (value.IsSequence()) {
      error(mark, path, fmt::format("wrong type: got a list; accepted: {}", accepted));
    } else {
      error(mark, path, fmt::format("wrong type: got a map; accepted: {}", accepted));
    }
  }

  std::optional<std::string> scalar(const YAML::Node& value, const std::string& path, std::string_view accepted) {
    if (!value.IsScalar()) {
      typeError(value, value.Mark(), path, accepted);
      return std::nullopt;
    }
    return value.Scalar();
  }

  std::vector<Item> list(const YAML::Node& value, const YAML::Mark& mark, const std::string& path,
                         std::string_view what) {
    std::vector<Item> out;
    if (!value.IsSequence()) {
      typeError(value, mark, path, fmt::format("a list of {}, e.g. [a, b]", what));
      return out;
    }
    size_t i = 0;
    for (const auto& item : value) {
      out.push_back(Item{item, fmt::format("{}[{}]", path, i++)});
    }
    return out;
  }

  std::optional<nanoseconds> duration(const YAML::Node& value, const YAML::Mark& mark, const std::string& path,
                                      nanoseconds max) {
    const std::string range = fmt::format("a duration more than 0 and at most {} (e.g. 10m)", formatDuration(max));
    if (!value.IsScalar()) {
      typeError(value, mark, path, range);
      return std::nullopt;
    }
    auto d = parseDuration(value.Scalar());
    if (!d) {
      error(mark, path, d.error());
      return std::nullopt;
    }
    if (*d <= nanoseconds{0} || *d > max) {
      error(mark, path, fmt::format("{} is out of range; accepted: {}", value.Scalar(), range));
      return std::nullopt;
    }
    return *d;
  }

  std::optional<double> percent(const YAML::Node& value, const YAML::Mark& mark, const std::string& path) {
    constexpr std::string_view accepted = "a percentage from 0 to 100 such as 20 or 2.5 (20% is also accepted)";
    if (!value.IsScalar()) {
      typeError(value, mark, path, accepted);
      return std::nullopt;
    }
    std::string_view number = value.Scalar();
    if (!number.empty() && number.back() == '%') {
      number.remove_suffix(1);
    }
    double v = 0;
    auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), v);
    if (number.empty() || ec != std::errc{} || end != number.data() + number.size() || !std::isfinite(v) || v < 0 ||
        v > 100) {
      error(mark, path, fmt::format("'{}' is not a percentage from 0 to 100; accepted: {}", value.Scalar(), accepted));
      return std::nullopt;
    }
    return v;
  }

  std::optional<Policy::Patterns> patterns(const YAML::Node& value, const YAML::Mark& mark, const std::string& path) {
    constexpr std::string_view accepted =
        "an interface name or glob pattern (fnmatch: *, ?, [...]) of 1-64 bytes without '/', ':' or whitespace, e.g. "
        "eth*";
    Policy::Patterns out;
    out.where = fmt::format("{}:{}", file_, mark.line + 1);
    bool ok = value.IsSequence();
    for (const auto& [item, itemPath] : list(value, mark, path, "interface names or patterns")) {
      auto text = scalar(item, itemPath, accepted);
      if (!text) {
        ok = false;
        continue;
      }
      const bool bad = text->empty() || text->size() > 64 || text->find_first_of("/: \t\n") != std::string::npos;
      if (bad) {
        error(item.Mark(), itemPath, fmt::format("'{}' is not an interface pattern; accepted: {}", *text, accepted));
        ok = false;
        continue;
      }
      out.patterns.push_back(*text);
      out.wheres.push_back(fmt::format("{}:{}", file_, item.Mark().line + 1));
    }
    if (!ok) {
      return std::nullopt;
    }
    return out;
  }

  void parseInterfaces(const YAML::Node& value, const YAML::Mark& mark, const std::string& path) {
    if (!value.IsMap()) {
      typeError(value, mark, path, "a map with the keys allow, deny");
      return;
    }
    for (const auto& [key, v, keyPath] : entries(value, path, kInterfaceKeys)) {
      const YAML::Mark at = v.IsNull() ? key.Mark() : v.Mark();
      auto p = patterns(v, at, keyPath);
      if (!p) {
        continue;
      }
      if (key.Scalar() == "allow") {
        if (p->patterns.empty()) {
          error(at, keyPath,
                "is empty, which would refuse every interface; accepted: at least one name or pattern "
                "(leave allow out to allow every interface not denied)");
          continue;
        }
        policy_.allow_ = std::move(*p);
      } else {
        policy_.deny_ = std::move(*p);
      }
    }
  }

  void parseProcesses(const YAML::Node& value, const YAML::Mark& mark, const std::string& path) {
    if (!value.IsMap()) {
      typeError(value, mark, path, "a map with the key protect");
      return;
    }
    constexpr std::string_view accepted =
        "a process name as a kill selector matches it (comm, executable or argv[0] base name), e.g. nginx";
    for (const auto& [key, v, keyPath] : entries(value, path, kProcessKeys)) {
      const YAML::Mark at = v.IsNull() ? key.Mark() : v.Mark();
      for (const auto& [item, itemPath] : list(v, at, keyPath, "process names")) {
        auto name = scalar(item, itemPath, accepted);
        if (!name) {
          continue;
        }
        if (name->empty() || name->find_first_of("/\n") != std::string::npos) {
          error(item.Mark(), itemPath, fmt::format("'{}' is not a process name; accepted: {}", *name, accepted));
          continue;
        }
        policy_.protect_.push_back(ProtectedName{
            *name, fmt::format("policy {}:{} (processes.protect: {})", file_, item.Mark().line + 1, *name)});
      }
    }
  }

  std::string file_;
  Policy policy_;
  std::vector<PolicyDiagnostic> diagnostics_;
};

tl::expected<Policy, std::vector<PolicyDiagnostic>> parsePolicy(std::string_view yaml, const std::string& fileName) {
  PolicyParser parser(fileName);
  if (yaml.size() > kMaxPolicyBytes) {
    parser.error(
        YAML::Mark::null_mark(), "",
        fmt::format("the file is {} bytes; policy files are limited to {} bytes", yaml.size(), kMaxPolicyBytes));
    return parser.finish();
  }
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(std::string(yaml));
  } catch (const YAML::Exception& e) {
    parser.error(e.mark, "", fmt::format("YAML syntax error: {}", e.msg));
    return parser.finish();
  }
  if (documents.size() > 1) {
    parser.error(documents[1].Mark(), "",
                 fmt::format("the file holds {} YAML documents; accepted: one policy per file", documents.size()));
    return parser.finish();
  }
  if (!documents.empty() && !documents.front().IsNull()) {
    parser.parse(documents.front());
  }
  return parser.finish();
}

tl::expected<Policy, std::vector<PolicyDiagnostic>> loadPolicy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return tl::unexpected(std::vector<PolicyDiagnostic>{
        PolicyDiagnostic{path, 0, 0, "", fmt::format("cannot read the policy file: {}", std::strerror(errno))}});
  }
  std::string text;
  text.resize(kMaxPolicyBytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (in.bad()) {
    return tl::unexpected(std::vector<PolicyDiagnostic>{
        PolicyDiagnostic{path, 0, 0, "", fmt::format("cannot read the policy file: {}", std::strerror(errno))}});
  }
  return parsePolicy(text, path);
}

}  // namespace faultline::agent
