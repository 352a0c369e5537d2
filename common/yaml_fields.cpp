#include "common/yaml_fields.h"

#include <algorithm>
#include <utility>

#include <fmt/format.h>

namespace faultline::yaml {

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

std::string childPath(const std::string& parent, std::string_view key) {
  return parent.empty() ? std::string(key) : fmt::format("{}.{}", parent, key);
}

std::string unknownKeyMessage(std::string_view key, std::string_view hint, KeyList accepted) {
  return fmt::format("unknown key '{}'{}; accepted here: {}", key, hint, joinKeys(accepted));
}

Diagnostic diagnosticAt(std::string file, const YAML::Mark& mark, std::string field, std::string message) {
  Diagnostic d;
  d.file = std::move(file);
  if (mark.line >= 0) {
    d.line = mark.line + 1;
    d.column = mark.column + 1;
  }
  d.field = std::move(field);
  d.message = std::move(message);
  return d;
}

void FieldReader::error(const YAML::Mark& mark, std::string field, std::string message) {
  if (full()) {
    return;
  }
  diagnostics_.push_back(diagnosticAt(file_, mark, std::move(field), std::move(message)));
}

void FieldReader::typeError(const Field& f, std::string_view accepted) {
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

std::optional<MapNode> FieldReader::openMap(const Field& f, std::string_view accepted) {
  if (!f.value.IsMap()) {
    typeError(f, accepted);
    return std::nullopt;
  }
  return readKeys(f, accepted, nullptr);
}

std::vector<Entry> FieldReader::knownEntries(const Field& f, KeyList accepted) {
  return readKeys(f, joinKeys(accepted), &accepted).entries;
}

MapNode FieldReader::readKeys(const Field& f, std::string_view notStringAccepted, const KeyList* known) {
  MapNode m{f, {}, {}};
  for (auto it = f.value.begin(); it != f.value.end() && !full(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) {
      error(key.Mark(), f.path, fmt::format("a key is not a string; accepted: {}", notStringAccepted));
      continue;
    }
    const std::string name = key.Scalar();
    const std::string path = childPath(f.path, name);
    if (known != nullptr && !contains(*known, name)) {
      error(key.Mark(), path, unknownKeyMessage(name, "", *known));
      continue;
    }
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

std::optional<Field> FieldReader::require(const MapNode& m, std::string_view key, std::string_view accepted) {
  if (const Entry* e = m.find(key)) {
    return e->field;
  }
  error(m.self.mark, childPath(m.self.path, key), fmt::format("is required; accepted: {}", accepted));
  return std::nullopt;
}

std::optional<Field> FieldReader::lookup(const MapNode& m, std::string_view key) const {
  if (const Entry* e = m.find(key)) {
    return e->field;
  }
  return std::nullopt;
}

std::optional<std::string> FieldReader::scalar(const Field& f, std::string_view accepted) {
  if (!f.value.IsScalar()) {
    typeError(f, accepted);
    return std::nullopt;
  }
  return f.value.Scalar();
}

std::vector<Diagnostic> FieldReader::takeSorted() {
  std::vector<Diagnostic> out = std::move(diagnostics_);
  std::stable_sort(out.begin(), out.end(), [](const Diagnostic& a, const Diagnostic& b) {
    return std::pair{a.line, a.column} < std::pair{b.line, b.column};
  });
  return out;
}

}  // namespace faultline::yaml
