// Values every section of an experiment file reads: whole numbers, durations, percentages; and the
// unknown-key check with its hint.
#include "controller/experiment/parser.h"

#include <cctype>
#include <charconv>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "agent/faults/spec.h"

namespace faultline::controller {

using namespace detail;
using namespace std::chrono_literals;

namespace {

constexpr std::string_view kDurationHint = "a duration such as 500ms, 1.5s or 2m";

}  // namespace

namespace detail {

// Splits "1.5mbit" into 1.5 and "mbit" (the unit lower-cased); nullopt when there is no number.
std::string labelNameProblem(std::string_view text) {
  if (text.size() > kMaxLabelNameBytes) {
    return fmt::format("{} bytes, more than {}", text.size(), kMaxLabelNameBytes);
  }
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      return fmt::format("a control character (0x{:02x}) at byte {}", c, i + 1);
    }
  }
  return "";
}

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

}  // namespace detail

void Parser::rejectUnknown(const MapNode& m, KeyList accepted) {
  for (const Entry& e : m.entries) {
    if (full()) {
      return;
    }
    if (!contains(accepted, e.key)) {
      error(e.keyNode.Mark(), e.field.path, yaml::unknownKeyMessage(e.key, suggestion(e.key, accepted), accepted));
    }
  }
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

}  // namespace faultline::controller
