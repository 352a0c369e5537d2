// Reading a YAML document (yaml-cpp) field by field, with one Diagnostic per problem at its place
// in the file: the field walking the experiment parser (controller/experiment/) and the agent
// policy parser (agent/safety/policy.cpp) share, so both word their errors alike. Nothing here
// knows either format: callers say which keys and values they accept.
#pragma once

#include <cstddef>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/diagnostic.h"

namespace faultline::yaml {

using KeyList = std::span<const std::string_view>;

[[nodiscard]] bool contains(KeyList keys, std::string_view key);
// "a, b, c"
[[nodiscard]] std::string joinKeys(KeyList keys);
// "parent.key", or "key" below the root (parent empty).
[[nodiscard]] std::string childPath(const std::string& parent, std::string_view key);
// "unknown key 'KEY'HINT; accepted here: A, B" (hint: "" or e.g. " (did you mean 'name'?)").
[[nodiscard]] std::string unknownKeyMessage(std::string_view key, std::string_view hint, KeyList accepted);

// A diagnostic at a yaml-cpp mark: its 0-based line and column made 1-based; a mark with line < 0
// (e.g. YAML::Mark::null_mark()) gives line and column 0 (no place in the file).
[[nodiscard]] Diagnostic diagnosticAt(std::string file, const YAML::Mark& mark, std::string field, std::string message);

// A value to check and where to point at it. A null value's own mark is where yaml-cpp saw the
// next token (often the next line), so for `key:` with nothing after it the key's mark is used.
struct Field {
  YAML::Node value;
  YAML::Mark mark;
  std::string path;  // dotted, e.g. "steadyState.probes[0].http.url"; "" for the document
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

// Collects the diagnostics of one file while a parser walks it; each is placed with
// diagnosticAt(). Not thread-safe: one reader per parse.
class FieldReader {
 public:
  // file: the name diagnostics carry. At most maxDiagnostics are kept; the rest are dropped.
  explicit FieldReader(std::string file, size_t maxDiagnostics = std::numeric_limits<size_t>::max())
      : file_(std::move(file)), maxDiagnostics_(maxDiagnostics) {}

  void error(const YAML::Mark& mark, std::string field, std::string message);
  // True once maxDiagnostics are kept: loops over the file's lists and maps stop then (aliases can
  // make one big map count many times, and nothing more would be reported anyway).
  [[nodiscard]] bool full() const { return diagnostics_.size() >= maxDiagnostics_; }

  // "has no value; accepted: ACCEPTED", or "wrong type: got the value 'V'|a list|a map; accepted: ...".
  void typeError(const Field& f, std::string_view accepted);
  // f's entries, each key once, or a type error when f is not a map. Reports keys that are not
  // strings and duplicate keys (at the key); keeps every other key, known or not.
  std::optional<MapNode> openMap(const Field& f, std::string_view accepted);
  // The entries of the map f (which must be a map) whose keys are in accepted, each once; reports
  // keys that are not strings, unknown keys (without a hint) and duplicates, and leaves them out.
  std::vector<Entry> knownEntries(const Field& f, KeyList accepted);
  // The value of key, or "is required; accepted: ACCEPTED" at the map.
  std::optional<Field> require(const MapNode& m, std::string_view key, std::string_view accepted);
  [[nodiscard]] std::optional<Field> lookup(const MapNode& m, std::string_view key) const;
  // The text of a scalar, or a type error.
  std::optional<std::string> scalar(const Field& f, std::string_view accepted);

  [[nodiscard]] const std::string& file() const { return file_; }
  // In the order they were found.
  [[nodiscard]] const std::vector<Diagnostic>& diagnostics() const { return diagnostics_; }
  [[nodiscard]] std::vector<Diagnostic> takeDiagnostics() { return std::move(diagnostics_); }
  // Sorted by line and column; diagnostics at the same place stay in the order found.
  [[nodiscard]] std::vector<Diagnostic> takeSorted();

 private:
  MapNode readKeys(const Field& f, std::string_view notStringAccepted, const KeyList* known);

  std::string file_;
  size_t maxDiagnostics_;
  std::vector<Diagnostic> diagnostics_;
};

}  // namespace faultline::yaml
