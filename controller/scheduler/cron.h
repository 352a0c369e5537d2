// The pure time logic of schedules: cron expressions, time zones, blackout windows, jitter.
// Nothing here reads a clock, sleeps or keeps state between calls: every "now" is an argument,
// so the scheduler (and its tests, with a fake clock) decide what time it is.
// Times are std::chrono::sys_seconds (UTC instants, whole seconds); wall-clock times are local
// to a date::time_zone from the system tz database (Debian's date/tz reads /usr/share/zoneinfo).
// All functions are thread-safe: the parsed values are immutable, and date/tz's database is
// loaded once and read-only afterwards. docs/schedules.md ("Cron and blackouts") is the user's
// description of the same rules.
#pragma once

#include <date/tz.h>

#include <bitset>
#include <chrono>
#include <cstddef>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <string_view>

namespace faultline::controller::scheduler {

// Longest cron expression or blackout spec accepted, in bytes.
inline constexpr std::size_t kMaxSpecLength = 256;

// A bad cron expression, zone name or blackout spec. what() is one line that names the field,
// the value and what is accepted (e.g. "minute: 61 is out of range 0-59"); column is the 1-based
// byte column in the text where the problem starts (0 when it concerns the whole text, e.g. an
// unknown zone name or an over-long spec).
struct CronError : std::runtime_error {
  CronError(const std::string& message, std::size_t column) : std::runtime_error(message), column(column) {}
  std::size_t column;
};

// A cron expression, Vixie cron's syntax:
//   [second] minute hour day-of-month month day-of-week
// Five fields, or six with a leading seconds field; fields are separated by spaces or tabs.
// Each field is a comma-separated list of `*`, `N`, `N-M`, each optionally followed by `/STEP`
// (`*/5`, `1-30/2`, `10/15` = 10-max/15). Ranges: second 0-59, minute 0-59, hour 0-23,
// day-of-month 1-31, month 1-12 or JAN-DEC, day-of-week 0-7 or SUN-SAT (0 and 7 are Sunday);
// names are case-insensitive. `?` is accepted in place of `*` in the two day fields.
// Macros: @yearly, @annually (0 0 1 1 *), @monthly (0 0 1 * *), @weekly (0 0 * * 0),
// @daily, @midnight (0 0 * * *), @hourly (0 * * * *).
// Day rule (Vixie cron): when both day-of-month and day-of-week are restricted (neither field
// starts with `*`), a day matches if EITHER matches; otherwise both must match.
// Fields are evaluated on the local wall clock of the zone given to next().
class CronExpression {
 public:
  // Throws CronError (with the column of the offending field or character) for: an empty or
  // over-long (> kMaxSpecLength) text, a wrong number of fields, an unknown macro or name, a
  // value out of its field's range, a reversed range (5-1), a step of 0 or beyond the range,
  // a non-printable byte.
  [[nodiscard]] static CronExpression parse(std::string_view text);

  // The first fire time strictly after `after`, in `zone` (nullptr means UTC).
  // DST: a local time that does not exist (spring forward, e.g. 02:30 on the change day in
  // Europe/Berlin) fires once at the first valid instant after the gap (03:00 local); a local
  // time that exists twice (fall back) fires once, at its first occurrence. A step over the
  // hours (`0 */1 * * *`) thus never fires twice in one repeated hour; a seconds or minutes
  // pattern inside the repeated hour fires in its first occurrence only.
  // nullopt when no time matches within about 5 years after `after` (e.g. "0 0 30 2 *"), and
  // when `after` is before 1970 or after 9999-01-01.
  // Cost: walks by fields (day, then hour, minute, second), not by seconds: microseconds.
  [[nodiscard]] std::optional<std::chrono::sys_seconds> next(std::chrono::sys_seconds after,
                                                             const date::time_zone* zone) const;

  // True when the expression has the leading seconds field (six fields). A five-field
  // expression fires at second 0.
  [[nodiscard]] bool hasSeconds() const { return hasSeconds_; }
  // The text as given to parse() (macros kept as written).
  [[nodiscard]] const std::string& text() const { return text_; }

 private:
  CronExpression() = default;
  bool matchesDay(const date::year_month_day& day) const;

  std::string text_;
  bool hasSeconds_ = false;
  std::bitset<60> seconds_;
  std::bitset<60> minutes_;
  std::bitset<24> hours_;
  std::bitset<32> daysOfMonth_;  // bits 1-31
  std::bitset<13> months_;       // bits 1-12
  std::bitset<7> daysOfWeek_;    // bit 0 = Sunday
  bool domRestricted_ = false;   // day-of-month does not start with '*' (or '?')
  bool dowRestricted_ = false;
};

// The zone named by an IANA name ("Europe/Berlin", "America/New_York", "UTC") from the system tz
// database. An empty name is UTC. Throws CronError (column 0) naming the zone and that IANA names
// from /usr/share/zoneinfo are accepted, for an unknown, over-long (> 64 bytes) or malformed name
// (only letters, digits, '/', '_', '-', '+' are accepted). The pointer stays valid for the
// process's life. The first call in a process lists the tz database's directory (about 4 ms);
// later calls are a lookup in memory (a zone's rules are read on its first use). Nothing is
// opened by the name given: it is looked up in that list.
[[nodiscard]] const date::time_zone* findZone(std::string_view name);

// A window of time in which no scheduled run starts. Forms (times are local HH:MM, 24 h):
//   weekly  "Fri 16:00 - Mon 08:00"  from a day and time of the week to another; wraps over the
//                                    week's end when the end is earlier in the week than the start
//   daily   "daily 22:00 - 06:00"    every day; wraps over midnight when end < start
//   dates   "2026-12-24 - 2026-12-27" whole days, both inclusive (00:00 of the first to 24:00 of
//                                    the last)
// Day names are Mon..Sun (three letters, case-insensitive). A window contains its start and
// excludes its end: [start, end). Spaces around '-' are optional.
class Blackout {
 public:
  // Throws CronError with the column of the offending part and the accepted forms.
  // A window whose start equals its end (empty) is refused.
  [[nodiscard]] static Blackout parse(std::string_view text);

  // True when `at`, read on the wall clock of `zone` (nullptr means UTC), falls in the window.
  // Local times in a DST gap never occur; in a repeated hour both occurrences are judged by
  // their wall clock.
  [[nodiscard]] bool contains(std::chrono::sys_seconds at, const date::time_zone* zone) const;

  // The canonical text ("Fri 16:00 - Mon 08:00", "daily 22:00 - 06:00", "2026-12-24 - 2026-12-27").
  [[nodiscard]] std::string text() const;

 private:
  enum class Kind { kWeekly, kDaily, kDates };
  Blackout() = default;

  Kind kind_ = Kind::kWeekly;
  // kWeekly: minutes since Monday 00:00 (0 .. 7*1440-1); kDaily: minutes since 00:00.
  int startMinute_ = 0;
  int endMinute_ = 0;
  // kDates: the first and last whole day.
  date::sys_days firstDay_{};
  date::sys_days lastDay_{};
};

// A uniform random delay in [0, max), whole milliseconds; zero when max <= 0 ms.
// The caller owns the generator (tests seed it; the scheduler uses one std::mt19937_64 seeded
// from std::random_device). Not thread-safe beyond what the generator is.
template <std::uniform_random_bit_generator Generator>
[[nodiscard]] std::chrono::milliseconds jitter(std::chrono::milliseconds max, Generator& generator) {
  if (max <= std::chrono::milliseconds::zero()) {
    return std::chrono::milliseconds::zero();
  }
  std::uniform_int_distribution<std::chrono::milliseconds::rep> draw(0, max.count() - 1);
  return std::chrono::milliseconds(draw(generator));
}

}  // namespace faultline::controller::scheduler
