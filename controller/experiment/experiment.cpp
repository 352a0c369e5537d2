// Loading an experiment document (size and node limits, YAML errors), ${NAME} variables, the root
// map, and parseExperiment(); the sections are in the other files of this folder (parser.h).
#include "controller/experiment/parser.h"

#include <algorithm>
#include <array>
#include <sstream>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

namespace faultline::controller {

using namespace detail;

namespace {

constexpr std::array<std::string_view, 7> kRootKeys{"apiVersion", "kind",        "metadata", "variables",
                                                    "targets",    "steadyState", "method"};

// yaml-cpp's node tree takes about 500 bytes a node: a 1 MiB file of "[a,a,a,..." would take
// 250 MB. An experiment at its limits (1000 steps, 100 probes) has about 25000 nodes.
constexpr size_t kMaxYamlNodes = 50'000;

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
  return yaml::diagnosticAt(fileName, mark, "", std::move(message));
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
  std::vector<Diagnostic> diagnostics = parser.takeSorted();
  if (!diagnostics.empty()) {
    if (diagnostics.size() >= kMaxDiagnostics) {
      diagnostics.push_back(
          Diagnostic{fileName, 0, 0, "", fmt::format("stopped checking after {} errors", kMaxDiagnostics)});
    }
    return tl::unexpected(std::move(diagnostics));
  }
  return experiment;
}

}  // namespace

Experiment Parser::parse(const YAML::Node& root) {
  Experiment exp;
  const Field rootField{root, root.Mark(), ""};
  auto m =
      openMap(rootField, "a map with the keys apiVersion, kind, metadata, variables, targets, steadyState, method");
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
  if (auto f = lookup(*m, "variables")) {
    parseVariables(*f, exp);
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

std::set<std::string> declaredSecretVariables(std::string_view yaml) {
  std::set<std::string> names;
  if (yaml.size() > kMaxExperimentBytes) {
    return names;
  }
  auto loaded = loadDocuments(yaml, "");
  if (!loaded || loaded->empty() || !loaded->front().IsMap()) {
    return names;
  }
  try {
    for (const auto& entry : loaded->front()) {
      if (!entry.first.IsScalar() || entry.first.Scalar() != "variables" || !entry.second.IsMap()) {
        continue;
      }
      for (const auto& variable : entry.second) {
        if (!variable.first.IsScalar() || !variable.second.IsMap() || names.size() >= kMaxDeclaredVariables) {
          continue;
        }
        for (const auto& field : variable.second) {
          if (field.first.IsScalar() && field.first.Scalar() == "secret" && field.second.IsScalar() &&
              field.second.Scalar() == "true") {
            names.insert(variable.first.Scalar());
          }
        }
      }
    }
  } catch (const YAML::Exception&) {
    // best effort: what was found so far
  }
  return names;
}

bool isVariableName(std::string_view name) {
  if (name.empty() || name.size() > 64 || std::isdigit(static_cast<unsigned char>(name.front()))) {
    return false;
  }
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

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
  if (result) {
    // A secret marked only in the substituted text would be missed by the redaction of a file
    // that does not parse (declaredSecretVariables reads the text as written).
    const auto declared = declaredSecretVariables(original);
    for (const auto& [name, variable] : result->variables) {
      if (variable.secret && !declared.contains(name)) {
        Diagnostic d;
        d.file = fileName;
        d.field = "variables." + name;
        d.message =
            "is marked secret only after ${...} substitution; accepted: a variables section written out "
            "in the file, with no ${...} in it";
        return tl::unexpected(std::vector<Diagnostic>{std::move(d)});
      }
    }
  }
  if (result) {
    // A probe's password is a secret: it must come whole from a variable marked secret, so it is
    // redacted wherever the run is recorded or printed, and never written in the file itself.
    std::vector<Diagnostic> errors;
    for (size_t i = 0; i < result->hypothesis.probes.size(); ++i) {
      const Probe& p = result->hypothesis.probes[i];
      const std::optional<std::string>* password = p.kind == ProbeKind::kRedis      ? &p.redis.password
                                                   : p.kind == ProbeKind::kPostgres ? &p.postgres.password
                                                                                    : nullptr;
      if (password == nullptr || !password->has_value()) {
        continue;
      }
      const bool fromSecret = std::any_of(result->variables.begin(), result->variables.end(), [&](const auto& v) {
        const auto value = vars.find(v.first);
        return v.second.secret && value != vars.end() && value->second == **password;
      });
      if (!fromSecret) {
        Diagnostic d;
        d.file = fileName;
        d.field = fmt::format("steadyState.probes[{}].{}.password", i, probeKindName(p.kind));
        d.message =
            "is not the value of a secret variable; accepted: ${NAME} with NAME declared under variables: with "
            "secret: true and given by --secret-var NAME=VALUE (a password written in the file would be recorded)";
        errors.push_back(std::move(d));
      }
    }
    if (!errors.empty()) {
      return tl::unexpected(std::move(errors));
    }
  }
  if (!result) {
    for (Diagnostic& d : result.error()) {
      mapBack(d, *substituted, original);
    }
  }
  return result;
}

}  // namespace faultline::controller
