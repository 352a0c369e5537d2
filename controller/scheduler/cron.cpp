#include "controller/scheduler/cron.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string>
#include <vector>

namespace faultline::controller::scheduler {
namespace {

using std::chrono::days;
using std::chrono::hours;
using std::chrono::minutes;
using std::chrono::seconds;
using std::chrono::sys_seconds;
using LocalSeconds = date::local_seconds;

// How far next() looks before it gives up: 5 years and a day (a Feb 29 is at most 8 years
// apart, e.g. 2096 to 2104, but the common "0 0 29 2 *" is at most 4).
constexpr days kHorizon{5 * 366 + 1};
// The instants next() answers for (see there).
constexpr sys_seconds kEarliest{date::sys_days{date::year{1970} / 1 / 1}.time_since_epoch()};
constexpr sys_seconds kLatest{date::sys_days{date::year{9999} / 1 / 1}.time_since_epoch()};
// The longest zone name accepted; the longest in the IANA database is 32 bytes.
constexpr std::size_t kMaxZoneName = 64;

constexpr std::array<std::string_view, 12> kMonthNames = {"jan", "feb", "mar", "apr", "may", "jun",
                                                          "jul", "aug", "sep", "oct", "nov", "dec"};
constexpr std::array<std::string_view, 7> kSundayFirst = {"sun", "mon", "tue", "wed", "thu", "fri", "sat"};
constexpr std::array<std::string_view, 7> kMondayFirst = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

// Checks the bytes and the length shared by cron expressions and blackouts; returns the text
// without surrounding blanks and the column of its first byte in the original.
std::pair<std::string_view, std::size_t> trimmed(std::string_view text, std::string_view what) {
  if (text.size() > kMaxSpecLength) {
    throw CronError(std::string(what) + ": " + std::to_string(text.size()) + " bytes, longer than the " +
                        std::to_string(kMaxSpecLength) + " accepted",
                    0);
  }
  for (std::size_t i = 0; i < text.size(); ++i) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c != '\t' && (c < 0x20 || c > 0x7e)) {
      constexpr char kHex[] = "0123456789abcdef";
      throw CronError(std::string(what) + ": byte 0x" + kHex[c >> 4] + kHex[c & 15] + " at column " +
                          std::to_string(i + 1) + " is not accepted; accepted: printable ASCII, spaces and tabs",
                      i + 1);
    }
  }
  std::size_t begin = text.find_first_not_of(" \t");
  if (begin == std::string_view::npos) {
    throw CronError(std::string(what) + ": empty", 0);
  }
  std::size_t end = text.find_last_not_of(" \t");
  return {text.substr(begin, end - begin + 1), begin + 1};
}

// ---- cron fields ----

struct FieldSpec {
  std::string_view name;
  int min;
  int max;                                  // the highest value written (day-of-week: 7, another Sunday)
  int starMax;                              // the highest value '*' and N/STEP stand for (day-of-week: 6)
  bool dayField = false;                    // accepts '?' for '*'
  const std::string_view* names = nullptr;  // lower-case, names[i] is the value min + i
  std::size_t nameCount = 0;
};

constexpr FieldSpec kSecond{"second", 0, 59, 59};
constexpr FieldSpec kMinute{"minute", 0, 59, 59};
constexpr FieldSpec kHour{"hour", 0, 23, 23};
constexpr FieldSpec kDayOfMonth{"day-of-month", 1, 31, 31, true};
constexpr FieldSpec kMonth{"month", 1, 12, 12, false, kMonthNames.data(), kMonthNames.size()};
constexpr FieldSpec kDayOfWeek{"day-of-week", 0, 7, 6, true, kSundayFirst.data(), kSundayFirst.size()};

std::string capitalized(std::string_view name) {
  std::string out(name);
  out[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(out[0])));
  return out;
}

// The values a field accepts, for error messages: "0-59", "1-12 or Jan-Dec (any case)".
std::string accepted(const FieldSpec& spec) {
  std::string out = std::to_string(spec.min) + "-" + std::to_string(spec.max);
  if (spec.names != nullptr) {
    out += " or " + capitalized(spec.names[0]) + "-" + capitalized(spec.names[spec.nameCount - 1]) + " (any case)";
  }
  return out;
}

// One field's text with its 1-based column in the whole expression.
struct Token {
  std::string_view text;
  std::size_t column;
};

class FieldParser {
 public:
  FieldParser(const FieldSpec& spec, Token token) : spec_(spec), token_(token) {}

  // The set of values, as bits (bit v for value v; day-of-week 7 folded onto 0).
  std::vector<bool> parse() {
    std::vector<bool> bits(static_cast<std::size_t>(spec_.max) + 1, false);
    std::size_t pos = 0;
    const std::string_view text = token_.text;
    while (true) {
      std::size_t comma = text.find(',', pos);
      std::string_view item = text.substr(pos, comma == std::string_view::npos ? std::string_view::npos : comma - pos);
      if (item.empty()) {
        fail(pos,
             "empty list item; accepted: a value, a range N-M, '*', each with an optional /STEP, separated by ','");
      }
      parseItem(item, pos, bits);
      if (comma == std::string_view::npos) {
        break;
      }
      pos = comma + 1;
    }
    if (spec_.max > spec_.starMax && bits[7]) {  // day-of-week: 7 is Sunday, 0
      bits[0] = true;
      bits[7] = false;
    }
    return bits;
  }

 private:
  [[noreturn]] void fail(std::size_t offset, const std::string& message) const {
    throw CronError(std::string(spec_.name) + ": " + message, token_.column + offset);
  }

  // A number or a name at text[pos...]; advances pos.
  int value(std::string_view item, std::size_t base, std::size_t& pos) const {
    std::size_t start = pos;
    if (pos < item.size() && std::isdigit(static_cast<unsigned char>(item[pos]))) {
      while (pos < item.size() && std::isdigit(static_cast<unsigned char>(item[pos]))) {
        ++pos;
      }
      std::string_view digits = item.substr(start, pos - start);
      if (digits.size() > 3) {
        fail(base + start, std::string(digits) + " is out of range " + accepted(spec_));
      }
      int v = std::stoi(std::string(digits));
      if (v < spec_.min || v > spec_.max) {
        fail(base + start, std::string(digits) + " is out of range " + accepted(spec_));
      }
      return v;
    }
    while (pos < item.size() && std::isalpha(static_cast<unsigned char>(item[pos]))) {
      ++pos;
    }
    std::string_view word = item.substr(start, pos - start);
    if (word.empty()) {
      std::string_view rest = item.substr(start);
      fail(base + start, "expected a value at '" + std::string(rest.empty() ? "end of field" : rest.substr(0, 1)) +
                             "'; accepted " + accepted(spec_) + ", '*', ranges N-M, steps /N, lists");
    }
    if (spec_.names != nullptr) {
      std::string w = lower(word);
      for (std::size_t i = 0; i < spec_.nameCount; ++i) {
        if (w == spec_.names[i]) {
          return spec_.min + static_cast<int>(i);
        }
      }
    }
    fail(base + start, "unknown name '" + std::string(word) + "'; accepted " + accepted(spec_));
  }

  void parseItem(std::string_view item, std::size_t base, std::vector<bool>& bits) const {
    int lo = spec_.min;
    int hi = spec_.starMax;
    std::size_t pos = 0;
    bool star = false;
    bool range = false;
    if (item[0] == '*' || (item[0] == '?' && spec_.dayField)) {
      star = true;
      pos = 1;
    } else {
      lo = value(item, base, pos);
      hi = lo;
      if (pos < item.size() && item[pos] == '-') {
        ++pos;
        std::size_t hiColumn = pos;
        hi = value(item, base, pos);
        range = true;
        if (hi < lo) {
          fail(base + hiColumn,
               "range " + std::string(item.substr(0, pos)) + " ends before it starts; write N-M with N <= M");
        }
      }
    }
    int step = 1;
    if (pos < item.size() && item[pos] == '/') {
      ++pos;
      std::size_t start = pos;
      while (pos < item.size() && std::isdigit(static_cast<unsigned char>(item[pos]))) {
        ++pos;
      }
      std::string_view digits = item.substr(start, pos - start);
      int maxStep = spec_.starMax - spec_.min;
      if (digits.empty() || digits.size() > 3 || std::stoi(std::string(digits)) < 1 ||
          std::stoi(std::string(digits)) > maxStep) {
        fail(base + start, "step '" + std::string(digits.empty() ? item.substr(start) : digits) +
                               "' is not accepted; a step is a number 1-" + std::to_string(maxStep));
      }
      step = std::stoi(std::string(digits));
      if (!star && !range) {
        hi = spec_.starMax;  // "N/STEP" is N-max/STEP
      }
    }
    if (pos != item.size()) {
      fail(base + pos, "unexpected '" + std::string(item.substr(pos, 1)) +
                           "'; accepted: a value, a range N-M, '*', each with an optional /STEP, separated by ','");
    }
    for (int v = lo; v <= hi; v += step) {
      bits[static_cast<std::size_t>(v)] = true;
    }
  }

  const FieldSpec& spec_;
  Token token_;
};

template <std::size_t N>
std::bitset<N> toBits(const std::vector<bool>& values) {
  std::bitset<N> out;
  for (std::size_t i = 0; i < values.size() && i < N; ++i) {
    out[i] = values[i];
  }
  return out;
}

// The first set bit at or after `from`, or -1.
template <std::size_t N>
int firstAtOrAfter(const std::bitset<N>& bits, int from) {
  for (int i = std::max(from, 0); i < static_cast<int>(N); ++i) {
    if (bits[static_cast<std::size_t>(i)]) {
      return i;
    }
  }
  return -1;
}

struct Macro {
  std::string_view name;
  std::string_view expansion;
};
constexpr std::array<Macro, 7> kMacros = {{{"@yearly", "0 0 1 1 *"},
                                           {"@annually", "0 0 1 1 *"},
                                           {"@monthly", "0 0 1 * *"},
                                           {"@weekly", "0 0 * * 0"},
                                           {"@daily", "0 0 * * *"},
                                           {"@midnight", "0 0 * * *"},
                                           {"@hourly", "0 * * * *"}}};

// The instant a local wall-clock time stands for, under the DST rules of next(): a time in a
// gap is the end of the gap, a repeated time its first occurrence. `skipTo` is set when the
// candidate is a repeated time whose first occurrence is not after `after`: the whole rest of
// the repeated stretch is then behind us, and the search resumes at its local end.
struct Resolved {
  std::optional<sys_seconds> at;
  std::optional<LocalSeconds> skipTo;
};

Resolved resolve(LocalSeconds local, const date::time_zone* zone, sys_seconds after) {
  if (zone == nullptr) {
    sys_seconds at{local.time_since_epoch()};
    return {at > after ? std::optional(at) : std::nullopt, std::nullopt};
  }
  date::local_info info = zone->get_info(local);
  switch (info.result) {
    case date::local_info::unique: {
      sys_seconds at{local.time_since_epoch() - info.first.offset};
      return {at > after ? std::optional(at) : std::nullopt, std::nullopt};
    }
    case date::local_info::nonexistent: {
      sys_seconds at = info.first.end;  // the first valid instant after the gap
      return {at > after ? std::optional(at) : std::nullopt, std::nullopt};
    }
    case date::local_info::ambiguous:
    default: {
      sys_seconds at{local.time_since_epoch() - info.first.offset};
      if (at > after) {
        return {at, std::nullopt};
      }
      // The local end of the repeated stretch: the transition read with the earlier offset.
      return {std::nullopt, LocalSeconds{info.first.end.time_since_epoch() + info.first.offset}};
    }
  }
}

}  // namespace

// ---- CronExpression ----

CronExpression CronExpression::parse(std::string_view text) {
  auto [body, column] = trimmed(text, "cron expression");
  CronExpression out;
  out.text_ = std::string(text);

  std::string expansion;
  std::string_view fieldsText = body;
  std::size_t fieldsColumn = column;
  if (body[0] == '@') {
    std::string name = lower(body);
    auto macro = std::find_if(kMacros.begin(), kMacros.end(), [&](const Macro& m) { return m.name == name; });
    if (macro == kMacros.end()) {
      throw CronError("cron expression: unknown macro '" + std::string(body) +
                          "'; accepted @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly",
                      column);
    }
    expansion = std::string(macro->expansion);
    fieldsText = expansion;
  }

  std::vector<Token> tokens;
  std::size_t pos = 0;
  while (pos < fieldsText.size()) {
    std::size_t start = fieldsText.find_first_not_of(" \t", pos);
    if (start == std::string_view::npos) {
      break;
    }
    std::size_t end = fieldsText.find_first_of(" \t", start);
    if (end == std::string_view::npos) {
      end = fieldsText.size();
    }
    // A macro's fields have no column of their own: errors in them cannot happen, point at '@'.
    tokens.push_back({fieldsText.substr(start, end - start), expansion.empty() ? fieldsColumn + start : column});
    pos = end;
  }
  if (tokens.size() != 5 && tokens.size() != 6) {
    std::size_t where = tokens.size() > 6 ? tokens[6].column : column;
    throw CronError("cron expression: " + std::to_string(tokens.size()) +
                        " fields; accepted 5 (minute hour day-of-month month day-of-week) or 6 (a leading second "
                        "field), or a macro such as @daily",
                    where);
  }

  std::size_t i = 0;
  out.hasSeconds_ = tokens.size() == 6;
  if (out.hasSeconds_) {
    out.seconds_ = toBits<60>(FieldParser(kSecond, tokens[i++]).parse());
  } else {
    out.seconds_.set(0);
  }
  out.minutes_ = toBits<60>(FieldParser(kMinute, tokens[i++]).parse());
  out.hours_ = toBits<24>(FieldParser(kHour, tokens[i++]).parse());
  Token dom = tokens[i++];
  out.daysOfMonth_ = toBits<32>(FieldParser(kDayOfMonth, dom).parse());
  out.months_ = toBits<13>(FieldParser(kMonth, tokens[i++]).parse());
  Token dow = tokens[i++];
  out.daysOfWeek_ = toBits<7>(FieldParser(kDayOfWeek, dow).parse());
  auto starred = [](std::string_view field) { return field[0] == '*' || field[0] == '?'; };
  out.domRestricted_ = !starred(dom.text);
  out.dowRestricted_ = !starred(dow.text);
  return out;
}

bool CronExpression::matchesDay(const date::year_month_day& day) const {
  bool dom = daysOfMonth_[static_cast<unsigned>(day.day())];
  bool dow = daysOfWeek_[date::weekday(date::sys_days(day)).c_encoding()];
  if (domRestricted_ && dowRestricted_) {
    return dom || dow;  // Vixie cron: either restricted day field
  }
  return dom && dow;
}

std::optional<sys_seconds> CronExpression::next(sys_seconds after, const date::time_zone* zone) const {
  // date/tz's calendar holds years -32767..32767; a scheduler asks about now, so anything outside
  // 1970..9999 is a caller's mistake, answered with "none" rather than with undefined arithmetic.
  if (after < kEarliest || after > kLatest) {
    return std::nullopt;
  }
  const LocalSeconds start = zone == nullptr ? LocalSeconds{after.time_since_epoch()} : zone->to_local(after);
  const LocalSeconds limit = start + kHorizon;
  LocalSeconds t = start + seconds{1};
  // Each pass either returns, or moves t forward to the next candidate of a coarser field; the
  // counter is a guard against a bug, not a limit a valid expression reaches (about 5 years of
  // matching days at most, a few passes each).
  for (int guard = 0; guard < 200000 && t <= limit; ++guard) {
    const date::local_days day = date::floor<days>(t);
    const date::year_month_day ymd{day};
    if (!months_[static_cast<unsigned>(ymd.month())]) {
      const date::year_month next = date::year_month{ymd.year(), ymd.month()} + date::months{1};
      t = LocalSeconds{date::local_days{next / 1}};
      continue;
    }
    if (!matchesDay(ymd)) {
      t = LocalSeconds{day + days{1}};
      continue;
    }
    date::hh_mm_ss<seconds> tod{t - day};
    int h = firstAtOrAfter(hours_, static_cast<int>(tod.hours().count()));
    if (h < 0) {
      t = LocalSeconds{day + days{1}};
      continue;
    }
    if (h != tod.hours().count()) {
      t = LocalSeconds{day} + hours{h};
      continue;
    }
    int m = firstAtOrAfter(minutes_, static_cast<int>(tod.minutes().count()));
    if (m < 0) {
      t = LocalSeconds{day} + hours{h + 1};
      continue;
    }
    if (m != tod.minutes().count()) {
      t = LocalSeconds{day} + hours{h} + minutes{m};
      continue;
    }
    int s = firstAtOrAfter(seconds_, static_cast<int>(tod.seconds().count()));
    if (s < 0) {
      t = LocalSeconds{day} + hours{h} + minutes{m + 1};
      continue;
    }
    const LocalSeconds candidate = LocalSeconds{day} + hours{h} + minutes{m} + seconds{s};
    Resolved resolved = resolve(candidate, zone, after);
    if (resolved.at) {
      return resolved.at;
    }
    t = resolved.skipTo && *resolved.skipTo > candidate ? *resolved.skipTo : candidate + seconds{1};
  }
  return std::nullopt;
}

// ---- zones ----

const date::time_zone* findZone(std::string_view name) {
  if (name.empty()) {
    return date::locate_zone("Etc/UTC");
  }
  auto bad = [&](const std::string& why) {
    std::string shown(name.substr(0, kMaxZoneName));
    return CronError("timezone: '" + shown + (name.size() > kMaxZoneName ? "...'" : "'") + " " + why +
                         "; accepted: an IANA zone name from /usr/share/zoneinfo such as UTC, Europe/Berlin, "
                         "America/New_York",
                     0);
  };
  if (name.size() > kMaxZoneName) {
    throw bad("is longer than " + std::to_string(kMaxZoneName) + " bytes");
  }
  bool charsOk = std::all_of(name.begin(), name.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '/' || c == '_' || c == '-' || c == '+';
  });
  if (!charsOk || name.front() == '/' || name.back() == '/' || name.find("//") != std::string_view::npos) {
    throw bad("is not a zone name (letters, digits, '/', '_', '-', '+')");
  }
  try {
    return date::locate_zone(name);
  } catch (const std::exception&) {
    throw bad("is not in the system tz database");
  }
}

// ---- Blackout ----

namespace {

constexpr int kMinutesPerDay = 24 * 60;
constexpr int kMinutesPerWeek = 7 * kMinutesPerDay;

constexpr std::string_view kBlackoutForms =
    "accepted: \"Fri 16:00 - Mon 08:00\" (weekly, Mon..Sun), \"daily 22:00 - 06:00\", "
    "\"2026-12-24 - 2026-12-27\" (whole days, inclusive)";

class BlackoutParser {
 public:
  BlackoutParser(std::string_view text, std::size_t column) : text_(text), column_(column) {}

  [[noreturn]] void fail(const std::string& message) const { failAt(pos_, message); }
  [[noreturn]] void failAt(std::size_t at, const std::string& message) const {
    throw CronError("blackout: " + message + "; " + std::string(kBlackoutForms), column_ + at);
  }

  void blanks() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t')) {
      ++pos_;
    }
  }
  bool atEnd() const { return pos_ >= text_.size(); }
  std::string_view rest() const { return text_.substr(pos_); }

  std::string_view word() {
    std::size_t start = pos_;
    while (pos_ < text_.size() && std::isalpha(static_cast<unsigned char>(text_[pos_]))) {
      ++pos_;
    }
    return text_.substr(start, pos_ - start);
  }

  // Exactly `count` digits as a number.
  int digits(std::size_t count, std::string_view what) {
    std::size_t start = pos_;
    for (std::size_t i = 0; i < count; ++i) {
      if (pos_ >= text_.size() || !std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
        failAt(pos_, "expected " + std::string(what) + " (" + std::to_string(count) + " digits)");
      }
      ++pos_;
    }
    return std::stoi(std::string(text_.substr(start, count)));
  }

  void expect(char c, std::string_view what) {
    if (pos_ >= text_.size() || text_[pos_] != c) {
      fail("expected " + std::string(what));
    }
    ++pos_;
  }

  // HH:MM as minutes since midnight (00:00-23:59; HH may have one digit).
  int clock() {
    std::size_t start = pos_;
    int h = 0;
    if (pos_ + 1 < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_])) && text_[pos_ + 1] == ':') {
      h = digits(1, "an hour");
    } else {
      h = digits(2, "an hour HH:MM");
    }
    expect(':', "':' between hour and minute (HH:MM)");
    int m = digits(2, "minutes HH:MM");
    if (h > 23 || m > 59) {
      failAt(start, "time " + std::string(text_.substr(start, pos_ - start)) + " is out of range 00:00-23:59");
    }
    return h * 60 + m;
  }

  // Mon..Sun (any case) as 0..6.
  int weekday() {
    std::size_t start = pos_;
    std::string w = lower(word());
    for (std::size_t i = 0; i < kMondayFirst.size(); ++i) {
      if (w == lower(kMondayFirst[i])) {
        return static_cast<int>(i);
      }
    }
    failAt(start, "'" + std::string(text_.substr(start, std::max<std::size_t>(pos_ - start, 1))) +
                      "' is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun) nor 'daily' nor a date YYYY-MM-DD");
  }

  date::sys_days dateValue() {
    std::size_t start = pos_;
    int y = digits(4, "a date YYYY-MM-DD");
    expect('-', "'-' in a date YYYY-MM-DD");
    int mo = digits(2, "a month in YYYY-MM-DD");
    expect('-', "'-' in a date YYYY-MM-DD");
    int d = digits(2, "a day in YYYY-MM-DD");
    date::year_month_day ymd{date::year{y}, date::month{static_cast<unsigned>(mo)},
                             date::day{static_cast<unsigned>(d)}};
    if (!ymd.ok() || y < 1970) {
      failAt(start, "date " + std::string(text_.substr(start, pos_ - start)) + " does not exist (or is before 1970)");
    }
    return date::sys_days{ymd};
  }

  void dash() {
    blanks();
    expect('-', "' - ' between the start and the end");
    blanks();
  }

  void end() {
    blanks();
    if (!atEnd()) {
      fail("unexpected '" + std::string(rest().substr(0, 20)) + "' after the end");
    }
  }

  std::size_t pos() const { return pos_; }

 private:
  std::string_view text_;
  std::size_t column_;
  std::size_t pos_ = 0;
};

std::string twoDigits(int v) {
  return (v < 10 ? "0" : "") + std::to_string(v);
}
std::string clockText(int minuteOfDay) {
  return twoDigits(minuteOfDay / 60) + ":" + twoDigits(minuteOfDay % 60);
}
std::string dateText(date::sys_days day) {
  date::year_month_day ymd{day};
  return std::to_string(static_cast<int>(ymd.year())) + "-" +
         twoDigits(static_cast<int>(static_cast<unsigned>(ymd.month()))) + "-" +
         twoDigits(static_cast<int>(static_cast<unsigned>(ymd.day())));
}

bool inWindow(int x, int start, int end) {
  return start < end ? (x >= start && x < end) : (x >= start || x < end);
}

}  // namespace

Blackout Blackout::parse(std::string_view text) {
  auto [body, column] = trimmed(text, "blackout");
  BlackoutParser p(body, column);
  Blackout out;
  if (std::isdigit(static_cast<unsigned char>(body[0]))) {
    out.kind_ = Kind::kDates;
    out.firstDay_ = p.dateValue();
    p.dash();
    std::size_t lastColumn = p.pos();
    out.lastDay_ = p.dateValue();
    p.end();
    if (out.lastDay_ < out.firstDay_) {
      p.failAt(lastColumn,
               "the last day " + dateText(out.lastDay_) + " is before the first " + dateText(out.firstDay_));
    }
    return out;
  }
  std::string_view first = p.word();
  if (lower(first) == "daily") {
    out.kind_ = Kind::kDaily;
    p.blanks();
    out.startMinute_ = p.clock();
    p.dash();
    std::size_t endColumn = p.pos();
    out.endMinute_ = p.clock();
    p.end();
    if (out.startMinute_ == out.endMinute_) {
      p.failAt(endColumn, "the window is empty (its end equals its start)");
    }
    return out;
  }
  out.kind_ = Kind::kWeekly;
  p = BlackoutParser(body, column);  // read the first word again, as a day (its error names the forms)
  int startDay = p.weekday();
  p.blanks();
  int startClock = p.clock();
  p.dash();
  std::size_t endColumn = p.pos();
  int endDay = p.weekday();
  p.blanks();
  int endClock = p.clock();
  p.end();
  out.startMinute_ = startDay * kMinutesPerDay + startClock;
  out.endMinute_ = endDay * kMinutesPerDay + endClock;
  if (out.startMinute_ == out.endMinute_) {
    p.failAt(endColumn, "the window is empty (its end equals its start)");
  }
  return out;
}

bool Blackout::contains(sys_seconds at, const date::time_zone* zone) const {
  const LocalSeconds local = zone == nullptr ? LocalSeconds{at.time_since_epoch()} : zone->to_local(at);
  const date::local_days day = date::floor<days>(local);
  const int minuteOfDay = static_cast<int>(date::floor<minutes>(local - day).count());
  switch (kind_) {
    case Kind::kDates: {
      const date::sys_days d{day.time_since_epoch()};
      return d >= firstDay_ && d <= lastDay_;
    }
    case Kind::kDaily:
      return inWindow(minuteOfDay, startMinute_, endMinute_);
    case Kind::kWeekly:
    default: {
      const int mondayFirst = static_cast<int>((date::weekday(day).c_encoding() + 6) % 7);
      return inWindow(mondayFirst * kMinutesPerDay + minuteOfDay, startMinute_, endMinute_);
    }
  }
}

std::string Blackout::text() const {
  switch (kind_) {
    case Kind::kDates:
      return dateText(firstDay_) + " - " + dateText(lastDay_);
    case Kind::kDaily:
      return "daily " + clockText(startMinute_) + " - " + clockText(endMinute_);
    case Kind::kWeekly:
    default:
      return std::string(kMondayFirst[static_cast<std::size_t>(startMinute_ / kMinutesPerDay)]) + " " +
             clockText(startMinute_ % kMinutesPerDay) + " - " +
             std::string(kMondayFirst[static_cast<std::size_t>(endMinute_ / kMinutesPerDay)]) + " " +
             clockText(endMinute_ % kMinutesPerDay);
  }
}

}  // namespace faultline::controller::scheduler
