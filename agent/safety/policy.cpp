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
#include "common/yaml_fields.h"

namespace faultline::agent {

using std::chrono::nanoseconds;

namespace {

constexpr std::array<std::string_view, 7> kRootKeys{"maxDuration", "forbidKinds", "interfaces", "netns",
                                                    "processes",   "maxPercent",  "maxDelay"};
constexpr std::array<std::string_view, 2> kInterfaceKeys{"allow", "deny"};
constexpr std::array<std::string_view, 1> kNetnsKeys{"allow"};
constexpr std::array<std::string_view, 4> kProcessKeys{"protect", "maxProcesses", "maxMatches", "protectOwn"};
// netns.allow's word for the agent's own network namespace (a fault that names no netns).
constexpr std::string_view kHostNetns = "host";
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

tl::expected<void, PolicyViolation> Policy::checkNetns(const v1::NetworkTarget& target) const {
  if (!netnsAllow_) {
    return {};
  }
  std::string rule =
      fmt::format("policy {} (netns.allow: [{}])", netnsAllow_->where, fmt::join(netnsAllow_->patterns, ", "));
  if (target.has_netns_process()) {
    std::string message =
        fmt::format("{} refuses a namespace chosen by process ({}): only namespaces named by a listed path are allowed",
                    rule, describeSelector(target.netns_process()));
    return tl::unexpected(PolicyViolation{std::move(rule), std::move(message)});
  }
  const std::string& netns = target.netns();
  const bool allowed =
      std::any_of(netnsAllow_->patterns.begin(), netnsAllow_->patterns.end(), [&](const std::string& p) {
        return netns.empty() ? p == kHostNetns
                             : p != kHostNetns && ::fnmatch(p.c_str(), netns.c_str(), FNM_PATHNAME) == 0;
      });
  if (!allowed) {
    std::string message =
        netns.empty()
            ? fmt::format("{} refuses the agent's own network namespace (list '{}' to allow it)", rule, kHostNetns)
            : fmt::format("{} refuses netns {}: it matches no allowed path", rule, netns);
    return tl::unexpected(PolicyViolation{std::move(rule), std::move(message)});
  }
  return {};
}

ProcessRules Policy::processRules() const {
  ProcessRules rules(protect_);
  if (!protectOwn_ || protectOwn_->value) {
    const std::string rule = protectOwn_ ? fmt::format("policy {} ({})", protectOwn_->where, protectOwn_->text)
                                         : std::string("policy built-in default (processes.protectOwn: true)");
    for (const std::string_view name : kOwnProcessNames) {
      rules.protect.push_back(ProtectedName{std::string(name), fmt::format("{}: faultline's own processes", rule)});
    }
  }
  if (maxProcesses_) {
    rules.limits.maxProcesses = maxProcesses_->value;
    rules.limits.maxProcessesRule = fmt::format("policy {} ({})", maxProcesses_->where, maxProcesses_->text);
  }
  if (maxMatches_) {
    rules.limits.maxMatches = maxMatches_->value;
    rules.limits.maxMatchesRule = fmt::format("policy {} ({})", maxMatches_->where, maxMatches_->text);
  }
  return rules;
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
  if (const v1::NetworkTarget* target = networkTarget(spec); target != nullptr) {
    if (auto ok = checkNetns(*target); !ok) {
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
  if (netnsAllow_) {
    parts.push_back(fmt::format("netns allowed {}", fmt::join(netnsAllow_->patterns, " ")));
  }
  const ProcessRules rules = processRules();
  parts.push_back(fmt::format("maxProcesses {}{}, maxMatches {}{}", rules.limits.maxProcesses,
                              maxProcesses_ ? "" : " (default)", rules.limits.maxMatches,
                              maxMatches_ ? "" : " (default)"));
  if (protectOwn_ && !protectOwn_->value) {
    parts.push_back("faultline's own processes not protected (protectOwn false)");
  }
  if (maxPercent_) {
    parts.push_back(fmt::format("maxPercent {:g}", maxPercent_->value));
  }
  if (maxDelay_) {
    parts.push_back(fmt::format("maxDelay {}", formatDuration(maxDelay_->value)));
  }
  return fmt::format("{}", fmt::join(parts, ", "));
}

// ---- parse ----

class PolicyParser : public yaml::FieldReader {
 public:
  explicit PolicyParser(std::string file) : FieldReader(std::move(file)) { policy_.file_ = this->file(); }

  void parse(const YAML::Node& root) {
    if (!root.IsMap()) {
      error(root.Mark(), "", fmt::format("the file is not a map; accepted: a map with the keys {}", join(kRootKeys)));
      return;
    }
    for (const yaml::Entry& e : knownEntries(Field{root, root.Mark(), ""}, kRootKeys)) {
      const Field& field = e.field;
      const YAML::Node& value = field.value;
      const std::string& path = field.path;
      const std::string where = fmt::format("{}:{}", file(), e.keyNode.Mark().line + 1);
      if (path == "maxDuration") {
        if (auto d = duration(field, kMaxFaultDuration)) {
          policy_.maxDuration_ = Policy::Rule<nanoseconds>{*d, where, "maxDuration: " + value.Scalar()};
        }
      } else if (path == "maxDelay") {
        if (auto d = duration(field, kMaxPolicyDelay)) {
          policy_.maxDelay_ = Policy::Rule<nanoseconds>{*d, where, "maxDelay: " + value.Scalar()};
        }
      } else if (path == "maxPercent") {
        if (auto p = percent(field)) {
          policy_.maxPercent_ = Policy::Rule<double>{*p, where, "maxPercent: " + value.Scalar()};
        }
      } else if (path == "forbidKinds") {
        const std::vector<std::string_view>& kinds = faultKindNames();  // derived from faults.proto
        for (const Field& item : list(field, "fault kinds")) {
          auto text = scalar(item, "a fault kind: " + join(kinds));
          if (!text) {
            continue;
          }
          if (text->empty() || std::find(kinds.begin(), kinds.end(), *text) == kinds.end()) {
            error(item.mark, item.path, fmt::format("'{}' is not a fault kind; accepted: {}", *text, join(kinds)));
            continue;
          }
          policy_.forbidKinds_.push_back(
              Policy::Rule<std::string>{*text, fmt::format("{}:{}", file(), item.mark.line + 1), ""});
        }
      } else if (path == "interfaces") {
        parseInterfaces(field);
      } else if (path == "netns") {
        parseNetns(field);
      } else if (path == "processes") {
        parseProcesses(field);
      }
    }
  }

  tl::expected<Policy, std::vector<PolicyDiagnostic>> finish() {
    if (diagnostics().empty()) {
      return std::move(policy_);
    }
    return tl::unexpected(takeSorted());
  }

 private:
  using Field = yaml::Field;

  // The items of a list, each pointed at by its own mark.
  std::vector<Field> list(const Field& f, std::string_view what) {
    std::vector<Field> out;
    if (!f.value.IsSequence()) {
      typeError(f, fmt::format("a list of {}, e.g. [a, b]", what));
      return out;
    }
    size_t i = 0;
    for (const auto& item : f.value) {
      out.push_back(Field{item, item.Mark(), fmt::format("{}[{}]", f.path, i++)});
    }
    return out;
  }

  std::optional<nanoseconds> duration(const Field& f, nanoseconds max) {
    const std::string range = fmt::format("a duration more than 0 and at most {} (e.g. 10m)", formatDuration(max));
    if (!f.value.IsScalar()) {
      typeError(f, range);
      return std::nullopt;
    }
    auto d = parseDuration(f.value.Scalar());
    if (!d) {
      error(f.mark, f.path, d.error());
      return std::nullopt;
    }
    if (*d <= nanoseconds{0} || *d > max) {
      error(f.mark, f.path, fmt::format("{} is out of range; accepted: {}", f.value.Scalar(), range));
      return std::nullopt;
    }
    return *d;
  }

  std::optional<double> percent(const Field& f) {
    constexpr std::string_view accepted = "a percentage from 0 to 100 such as 20 or 2.5 (20% is also accepted)";
    if (!f.value.IsScalar()) {
      typeError(f, accepted);
      return std::nullopt;
    }
    std::string_view number = f.value.Scalar();
    if (!number.empty() && number.back() == '%') {
      number.remove_suffix(1);
    }
    double v = 0;
    auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), v);
    if (number.empty() || ec != std::errc{} || end != number.data() + number.size() || !std::isfinite(v) || v < 0 ||
        v > 100) {
      error(f.mark, f.path,
            fmt::format("'{}' is not a percentage from 0 to 100; accepted: {}", f.value.Scalar(), accepted));
      return std::nullopt;
    }
    return v;
  }

  std::optional<Policy::Patterns> patterns(const Field& f) {
    constexpr std::string_view accepted =
        "an interface name or glob pattern (fnmatch: *, ?, [...]) of 1-64 bytes without '/', ':' or whitespace, e.g. "
        "eth*";
    Policy::Patterns out;
    out.where = fmt::format("{}:{}", file(), f.mark.line + 1);
    bool ok = f.value.IsSequence();
    for (const Field& item : list(f, "interface names or patterns")) {
      auto text = scalar(item, accepted);
      if (!text) {
        ok = false;
        continue;
      }
      const bool bad = text->empty() || text->size() > 64 || text->find_first_of("/: \t\n") != std::string::npos;
      if (bad) {
        error(item.mark, item.path, fmt::format("'{}' is not an interface pattern; accepted: {}", *text, accepted));
        ok = false;
        continue;
      }
      out.patterns.push_back(*text);
      out.wheres.push_back(fmt::format("{}:{}", file(), item.mark.line + 1));
    }
    if (!ok) {
      return std::nullopt;
    }
    return out;
  }

  void parseInterfaces(const Field& f) {
    if (!f.value.IsMap()) {
      typeError(f, "a map with the keys allow, deny");
      return;
    }
    for (const yaml::Entry& e : knownEntries(f, kInterfaceKeys)) {
      auto p = patterns(e.field);
      if (!p) {
        continue;
      }
      if (e.key == "allow") {
        if (p->patterns.empty()) {
          error(e.field.mark, e.field.path,
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

  void parseNetns(const Field& f) {
    if (!f.value.IsMap()) {
      typeError(f, "a map with the key allow");
      return;
    }
    constexpr std::string_view accepted =
        "an absolute path of a network namespace file or an fnmatch(3) pattern of such paths (* does not cross "
        "'/'), of 1-4096 bytes without '..' or '.' components, e.g. /run/netns/chaos-*; or the word host (the "
        "agent's own namespace)";
    for (const yaml::Entry& e : knownEntries(f, kNetnsKeys)) {
      Policy::Patterns out;
      out.where = fmt::format("{}:{}", file(), e.keyNode.Mark().line + 1);
      bool ok = e.field.value.IsSequence();
      for (const Field& item : list(e.field, "network namespace paths")) {
        auto text = scalar(item, accepted);
        if (!text) {
          ok = false;
          continue;
        }
        const bool path = !text->empty() && text->front() == '/' && text->size() <= 4096 && *text != "/" &&
                          text->back() != '/' && text->find("/../") == std::string::npos && !text->ends_with("/..") &&
                          text->find("/./") == std::string::npos && !text->ends_with("/.") &&
                          text->find('\n') == std::string::npos;
        if (*text != kHostNetns && !path) {
          error(item.mark, item.path, fmt::format("'{}' is not a namespace path; accepted: {}", *text, accepted));
          ok = false;
          continue;
        }
        out.patterns.push_back(*text);
        out.wheres.push_back(fmt::format("{}:{}", file(), item.mark.line + 1));
      }
      if (!ok) {
        continue;
      }
      if (out.patterns.empty()) {
        error(e.field.mark, e.field.path,
              "is empty, which would refuse every network fault; accepted: at least one path, pattern or host "
              "(leave netns.allow out to allow every namespace)");
        continue;
      }
      policy_.netnsAllow_ = std::move(out);
    }
  }

  std::optional<std::size_t> processCount(const Field& f) {
    const std::string accepted = fmt::format("a whole number from 1 to {}", kMaxPolicyProcesses);
    if (!f.value.IsScalar()) {
      typeError(f, accepted);
      return std::nullopt;
    }
    const std::string& text = f.value.Scalar();
    std::size_t v = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || v < 1 || v > kMaxPolicyProcesses) {
      error(f.mark, f.path, fmt::format("'{}' is not a process count; accepted: {}", text, accepted));
      return std::nullopt;
    }
    return v;
  }

  void parseProcesses(const Field& f) {
    if (!f.value.IsMap()) {
      typeError(f, "a map with the keys protect, maxProcesses, maxMatches, protectOwn");
      return;
    }
    constexpr std::string_view accepted =
        "a process name as a kill selector matches it (comm, executable or argv[0] base name), e.g. nginx";
    for (const yaml::Entry& e : knownEntries(f, kProcessKeys)) {
      const std::string where = fmt::format("{}:{}", file(), e.keyNode.Mark().line + 1);
      if (e.key == "maxProcesses" || e.key == "maxMatches") {
        if (auto n = processCount(e.field)) {
          auto& rule = e.key == "maxProcesses" ? policy_.maxProcesses_ : policy_.maxMatches_;
          rule = Policy::Rule<std::size_t>{*n, where, fmt::format("processes.{}: {}", e.key, *n)};
        }
        continue;
      }
      if (e.key == "protectOwn") {
        const std::string& text = e.field.value.IsScalar() ? e.field.value.Scalar() : std::string();
        if (text != "true" && text != "false") {
          error(e.field.mark, e.field.path,
                fmt::format("'{}' is not true or false; accepted: true (the default: never signal or pause "
                            "faultline-agent, its watchdog or faultline) or false",
                            text));
          continue;
        }
        policy_.protectOwn_ = Policy::Rule<bool>{text == "true", where, "processes.protectOwn: " + text};
        continue;
      }
      for (const Field& item : list(e.field, "process names")) {
        auto name = scalar(item, accepted);
        if (!name) {
          continue;
        }
        if (name->empty() || name->find_first_of("/\n") != std::string::npos) {
          error(item.mark, item.path, fmt::format("'{}' is not a process name; accepted: {}", *name, accepted));
          continue;
        }
        policy_.protect_.push_back(ProtectedName{
            *name, fmt::format("policy {}:{} (processes.protect: {})", file(), item.mark.line + 1, *name)});
      }
    }
  }

  Policy policy_;
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
