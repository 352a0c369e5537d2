// The metadata and targets sections of an experiment file.
#include "controller/experiment/parser.h"

#include <array>
#include <charconv>
#include <cmath>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace faultline::controller {

using namespace detail;

namespace {

constexpr std::array<std::string_view, 2> kMetadataKeys{"name", "description"};
constexpr std::array<std::string_view, 2> kTargetsKeys{"selector", "mode"};
constexpr std::array<std::string_view, 2> kVariableKeys{"description", "secret"};

bool isExperimentName(std::string_view s) {
  if (s.empty() || s.size() > 63 || s.front() == '-') {
    return false;
  }
  return std::all_of(s.begin(), s.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'; });
}

}  // namespace

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

void Parser::parseVariables(const Field& f, Experiment& out) {
  constexpr std::string_view accepted = "a map of variable names to {description, secret: true|false}";
  auto m = openMap(f, accepted);
  if (!m) {
    return;
  }
  if (m->entries.size() > kMaxDeclaredVariables) {
    error(f.mark, f.path,
          fmt::format("declares {} variables; accepted: at most {}", m->entries.size(), kMaxDeclaredVariables));
    return;
  }
  for (const auto& entry : m->entries) {
    if (!isVariableName(entry.key)) {
      error(entry.field.mark, entry.field.path,
            fmt::format("'{}' is not a variable name; accepted: a letter or '_', then letters, digits and '_' (at "
                        "most 64)",
                        entry.key));
      continue;
    }
    DeclaredVariable variable;
    auto v = openMap(entry.field, "a map with description and secret: true|false");
    if (!v) {
      continue;
    }
    rejectUnknown(*v, kVariableKeys);
    if (auto d = lookup(*v, "description")) {
      if (auto text = scalar(*d, "free text")) {
        variable.description = *text;
      }
    }
    if (auto secret = lookup(*v, "secret")) {
      if (auto text = scalar(*secret, "true or false")) {
        if (*text == "true" || *text == "false") {
          variable.secret = *text == "true";
        } else {
          error(secret->mark, secret->path, fmt::format("'{}' is not a boolean; accepted: true or false", *text));
        }
      }
    }
    out.variables.emplace(entry.key, std::move(variable));
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

}  // namespace faultline::controller
