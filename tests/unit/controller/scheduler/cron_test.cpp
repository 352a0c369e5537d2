// Cron expressions against expected fire times: UTC and two DST zones (both changes each),
// Feb 29, Vixie cron's day-of-month OR day-of-week rule, the seconds field, names, macros; bad
// expressions with their column; zone names; jitter's bounds; next()'s speed.
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "controller/scheduler/cron.h"

using namespace faultline::controller::scheduler;
using std::chrono::sys_seconds;

namespace {

// "2026-03-29T01:00:00Z" as an instant (date::parse is not used: g++ 12 warns inside it).
sys_seconds at(const std::string& iso) {
  int y = 0, mo = 0, d = 0, h = 0, mi = 0, s = 0;
  REQUIRE_MESSAGE(std::sscanf(iso.c_str(), "%4d-%2d-%2dT%2d:%2d:%2dZ", &y, &mo, &d, &h, &mi, &s) == 6,
                  "bad time in the test: ", iso);
  const date::year_month_day day{date::year{y}, date::month{static_cast<unsigned>(mo)},
                                 date::day{static_cast<unsigned>(d)}};
  REQUIRE(day.ok());
  return date::sys_days{day} + std::chrono::hours{h} + std::chrono::minutes{mi} + std::chrono::seconds{s};
}

std::string iso(sys_seconds t) {
  return date::format("%FT%TZ", t);
}

// The next `expected.size()` fire times after `after`, as UTC text ("none" when next() gives up).
std::vector<std::string> fires(const std::string& expr, const std::string& zone, const std::string& after,
                               std::size_t count) {
  CronExpression e = CronExpression::parse(expr);
  const date::time_zone* z = findZone(zone);
  std::vector<std::string> out;
  sys_seconds t = at(after);
  for (std::size_t i = 0; i < count; ++i) {
    auto n = e.next(t, z);
    if (!n) {
      out.push_back("none");
      break;
    }
    CHECK_MESSAGE(*n > t, expr, " went backwards");
    out.push_back(iso(*n));
    t = *n;
  }
  return out;
}

struct Case {
  const char* expr;
  const char* zone;
  const char* after;
  std::vector<std::string> expected;  // UTC; the local time in the comment
};

void checkTable(const std::vector<Case>& cases) {
  for (const Case& c : cases) {
    CAPTURE(c.expr);
    CAPTURE(c.zone);
    CAPTURE(c.after);
    CHECK(fires(c.expr, c.zone, c.after, c.expected.size()) == c.expected);
  }
}

std::size_t errorColumn(const std::string& expr, std::string* message = nullptr) {
  try {
    (void)CronExpression::parse(expr);
  } catch (const CronError& e) {
    if (message != nullptr) {
      *message = e.what();
    }
    return e.column;
  }
  FAIL("no error for: ", expr);
  return 999;
}

}  // namespace

TEST_CASE("cron: next fire times in UTC") {
  checkTable({
      {"*/5 * * * *", "UTC", "2026-01-01T00:00:00Z", {"2026-01-01T00:05:00Z", "2026-01-01T00:10:00Z"}},
      {"*/5 * * * *", "UTC", "2026-01-01T00:02:30Z", {"2026-01-01T00:05:00Z"}},
      // strictly after: a fire time given as `after` is not returned again
      {"0 * * * *", "UTC", "2026-01-01T01:00:00Z", {"2026-01-01T02:00:00Z"}},
      {"59 23 31 12 *", "UTC", "2026-12-31T23:59:00Z", {"2027-12-31T23:59:00Z"}},
      // 2026-01-02 is a Friday
      {"0 9 * * MON-FRI", "UTC", "2026-01-02T10:00:00Z", {"2026-01-05T09:00:00Z", "2026-01-06T09:00:00Z"}},
      {"15,45 8-10/2 * * *",
       "UTC",
       "2026-01-01T08:50:00Z",
       {"2026-01-01T10:15:00Z", "2026-01-01T10:45:00Z", "2026-01-02T08:15:00Z"}},
      // N/STEP runs from N to the field's end
      {"10/20 * * * *",
       "UTC",
       "2026-01-01T00:00:00Z",
       {"2026-01-01T00:10:00Z", "2026-01-01T00:30:00Z", "2026-01-01T00:50:00Z", "2026-01-01T01:10:00Z"}},
      {"0 0 31 * *", "UTC", "2026-01-31T00:00:00Z", {"2026-03-31T00:00:00Z", "2026-05-31T00:00:00Z"}},
      // the month's last days: tabs between fields are blanks too
      {"0\t0\t28-31\t2\t*", "UTC", "2026-01-01T00:00:00Z", {"2026-02-28T00:00:00Z", "2027-02-28T00:00:00Z"}},
  });
}

TEST_CASE("cron: Feb 29 and dates that never come") {
  checkTable({
      {"0 0 29 2 *", "UTC", "2027-01-01T00:00:00Z", {"2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"}},
      {"0 0 29 2 *", "Europe/Berlin", "2027-01-01T00:00:00Z", {"2028-02-28T23:00:00Z"}},
      {"0 0 30 2 *", "UTC", "2026-01-01T00:00:00Z", {"none"}},
      {"0 0 31 4,6,9,11 *", "UTC", "2026-01-01T00:00:00Z", {"none"}},
  });
}

TEST_CASE("cron: day-of-month OR day-of-week when both are restricted (Vixie cron)") {
  checkTable({
      // the 13th or any Friday: Fri Jan 2, Fri Jan 9, Tue Jan 13, Fri Jan 16
      {"0 0 13 * FRI",
       "UTC",
       "2026-01-01T00:00:00Z",
       {"2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z", "2026-01-13T00:00:00Z", "2026-01-16T00:00:00Z"}},
      // day-of-week '*': the 13th only
      {"0 0 13 * *", "UTC", "2026-01-01T00:00:00Z", {"2026-01-13T00:00:00Z", "2026-02-13T00:00:00Z"}},
      {"0 0 13 * ?", "UTC", "2026-01-01T00:00:00Z", {"2026-01-13T00:00:00Z"}},
      // day-of-month starts with '*' (a step is still '*'): both must match. Days 1, 11, 21, 31 that
      // are Fridays: the first is Fri 2026-05-01
      {"0 0 */10 * FRI", "UTC", "2026-01-01T00:00:00Z", {"2026-05-01T00:00:00Z"}},
      // day-of-month restricted, day-of-week '*': every day of the list
      {"0 0 1,15 * *", "UTC", "2026-01-01T00:00:00Z", {"2026-01-15T00:00:00Z", "2026-02-01T00:00:00Z"}},
  });
}

TEST_CASE("cron: the seconds field") {
  CHECK(CronExpression::parse("*/15 * * * * *").hasSeconds());
  CHECK_FALSE(CronExpression::parse("* * * * *").hasSeconds());
  CHECK(CronExpression::parse(" */15  * * * * * ").text() == " */15  * * * * * ");
  checkTable({
      {"*/15 * * * * *",
       "UTC",
       "2026-01-01T00:00:00Z",
       {"2026-01-01T00:00:15Z", "2026-01-01T00:00:30Z", "2026-01-01T00:00:45Z", "2026-01-01T00:01:00Z"}},
      {"30 0 12 * * *", "UTC", "2026-01-01T12:00:30Z", {"2026-01-02T12:00:30Z"}},
      {"* * * * * *", "UTC", "2026-12-31T23:59:59Z", {"2027-01-01T00:00:00Z", "2027-01-01T00:00:01Z"}},
      // five fields fire at second 0
      {"* * * * *", "UTC", "2026-01-01T00:00:01Z", {"2026-01-01T00:01:00Z"}},
  });
}

TEST_CASE("cron: month and day names, 0 and 7 are Sunday") {
  checkTable({
      // Sundays of January and March at noon; 2026-01-04 is a Sunday
      {"0 12 * jan,MAR sun", "UTC", "2026-01-01T00:00:00Z", {"2026-01-04T12:00:00Z", "2026-01-11T12:00:00Z"}},
      {"0 12 * Jan,Mar Sun", "UTC", "2026-01-26T00:00:00Z", {"2026-03-01T12:00:00Z"}},
      {"0 0 * * 7", "UTC", "2026-01-01T00:00:00Z", {"2026-01-04T00:00:00Z"}},
      {"0 0 * * 0", "UTC", "2026-01-01T00:00:00Z", {"2026-01-04T00:00:00Z"}},
      // 5-7 is Friday to Sunday; from Saturday 2026-01-03
      {"0 0 * * 5-7",
       "UTC",
       "2026-01-03T00:00:00Z",
       {"2026-01-04T00:00:00Z", "2026-01-09T00:00:00Z", "2026-01-10T00:00:00Z"}},
      {"0 0 1 JUN-AUG/2 *", "UTC", "2026-01-01T00:00:00Z", {"2026-06-01T00:00:00Z", "2026-08-01T00:00:00Z"}},
  });
}

TEST_CASE("cron: macros") {
  checkTable({
      {"@yearly", "UTC", "2026-06-01T00:00:00Z", {"2027-01-01T00:00:00Z"}},
      {"@annually", "UTC", "2026-06-01T00:00:00Z", {"2027-01-01T00:00:00Z"}},
      {"@monthly", "UTC", "2026-01-31T12:00:00Z", {"2026-02-01T00:00:00Z"}},
      // 2026-01-01 is a Thursday: the next Sunday is the 4th
      {"@weekly", "UTC", "2026-01-01T00:00:00Z", {"2026-01-04T00:00:00Z"}},
      {"@daily", "UTC", "2026-01-01T00:00:00Z", {"2026-01-02T00:00:00Z"}},
      {"@midnight", "UTC", "2026-01-01T00:00:00Z", {"2026-01-02T00:00:00Z"}},
      {"@HOURLY", "UTC", "2026-01-01T00:59:59Z", {"2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"}},
      // midnight in Berlin (CET, UTC+1)
      {"@daily", "Europe/Berlin", "2026-01-01T00:00:00Z", {"2026-01-01T23:00:00Z"}},
  });
  CHECK(CronExpression::parse("@daily").text() == "@daily");
  CHECK_FALSE(CronExpression::parse("@daily").hasSeconds());
}

// Europe/Berlin 2026: 2026-03-29 02:00 CET -> 03:00 CEST (01:00 UTC); 2026-10-25 03:00 CEST ->
// 02:00 CET (01:00 UTC), so 02:00-02:59 comes twice.
TEST_CASE("cron: Europe/Berlin spring forward, the missing 02:30 runs once at 03:00") {
  checkTable({
      // 02:30 CET on the 28th, 03:00 CEST on the 29th (the first instant after the gap), then 02:30 CEST
      {"30 2 * * *",
       "Europe/Berlin",
       "2026-03-27T12:00:00Z",
       {"2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"}},
      // every hour: 01:00 CET, then 02:00 (missing) and 03:00 are one instant, fired once, then 04:00 CEST
      {"0 * * * *",
       "Europe/Berlin",
       "2026-03-28T23:30:00Z",
       {"2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"}},
      // several missing times (02:00, 02:15, 02:30, 02:45) all become the one fire at 03:00
      {"*/15 2 * * *", "Europe/Berlin", "2026-03-29T00:30:00Z", {"2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"}},
      {"0 30 2 * * *", "Europe/Berlin", "2026-03-29T00:00:00Z", {"2026-03-29T01:00:00Z"}},
      {"0 3 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", {"2026-03-29T01:00:00Z", "2026-03-30T01:00:00Z"}},
  });
}

TEST_CASE("cron: Europe/Berlin fall back, the repeated 02:30 runs once") {
  checkTable({
      // 02:30 CEST (the first of the two), then 02:30 CET the next day
      {"30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", {"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"}},
      // from inside the second 02:00-02:59 (02:10 CET): today's 02:30 already ran
      {"30 2 * * *", "Europe/Berlin", "2026-10-25T01:10:00Z", {"2026-10-26T01:30:00Z"}},
      // every hour: 02:00 CEST, then 03:00 CET; the second 02:00 (CET) does not fire again
      {"0 * * * *",
       "Europe/Berlin",
       "2026-10-24T23:30:00Z",
       {"2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z", "2026-10-25T03:00:00Z"}},
  });
}

// America/New_York 2026: 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC); 2026-11-01 02:00 EDT ->
// 01:00 EST (06:00 UTC), so 01:00-01:59 comes twice.
TEST_CASE("cron: America/New_York spring forward and fall back") {
  checkTable({
      {"30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", {"2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"}},
      {"0 30 2 * * *", "America/New_York", "2026-03-08T06:00:00Z", {"2026-03-08T07:00:00Z"}},
      // 01:30 EDT on Nov 1 (the first), then 01:30 EST on Nov 2
      {"30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", {"2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"}},
      // inside the repeated hour: the rest of its first occurrence, nothing in the second
      {"*/20 1 * * *", "America/New_York", "2026-11-01T05:30:00Z", {"2026-11-01T05:40:00Z", "2026-11-02T06:00:00Z"}},
      {"0 2 * * *", "America/New_York", "2026-10-31T12:00:00Z", {"2026-11-01T07:00:00Z"}},
      // 09:00 on weekdays across the change: EDT (13:00 UTC) on Fri Oct 30, EST (14:00 UTC) on Mon Nov 2
      {"0 9 * * MON-FRI", "America/New_York", "2026-10-30T00:00:00Z", {"2026-10-30T13:00:00Z", "2026-11-02T14:00:00Z"}},
  });
}

TEST_CASE("cron: bad expressions name the field and the column") {
  std::string message;
  CHECK(errorColumn("61 * * * *", &message) == 1);
  CHECK(message == "minute: 61 is out of range 0-59");
  CHECK(errorColumn("* * * * MON-FOO", &message) == 13);
  CHECK(message == "day-of-week: unknown name 'FOO'; accepted 0-7 or Sun-Sat (any case)");
  CHECK(errorColumn("  61 * * * *") == 3);
  CHECK(errorColumn("* 24 * * *", &message) == 3);
  CHECK(message == "hour: 24 is out of range 0-23");
  CHECK(errorColumn("* * 0 * *", &message) == 5);
  CHECK(message == "day-of-month: 0 is out of range 1-31");
  CHECK(errorColumn("* * * 13 *", &message) == 7);
  CHECK(message == "month: 13 is out of range 1-12 or Jan-Dec (any case)");
  CHECK(errorColumn("* * * JANUARY *") == 7);
  CHECK(errorColumn("* * * * 8") == 9);
  CHECK(errorColumn("60 * * * * *", &message) == 1);
  CHECK(message == "second: 60 is out of range 0-59");
  CHECK(errorColumn("*/0 * * * *", &message) == 3);
  CHECK(message == "minute: step '0' is not accepted; a step is a number 1-59");
  CHECK(errorColumn("*/ * * * *") == 3);
  CHECK(errorColumn("5-1 * * * *", &message) == 3);
  CHECK(message == "minute: range 5-1 ends before it starts; write N-M with N <= M");
  CHECK(errorColumn("* * * * SAT-SUN") == 13);
  CHECK(errorColumn("1,,2 * * * *") == 3);
  CHECK(errorColumn("1-2x * * * *") == 4);
  CHECK(errorColumn("? * * * *") == 1);
  CHECK(errorColumn("99999999999999999999 * * * *") == 1);
  CHECK(errorColumn("* * * *", &message) == 1);
  CHECK(message.find("4 fields; accepted 5") != std::string::npos);
  CHECK(errorColumn("* * * * * * *") == 13);
  CHECK(errorColumn("@fortnightly", &message) == 1);
  CHECK(message.find("@hourly") != std::string::npos);
  CHECK(errorColumn("@daily *") == 1);
  CHECK(errorColumn("") == 0);
  CHECK(errorColumn("   ") == 0);
  CHECK(errorColumn("*\x01 * * * *", &message) == 2);
  CHECK(message.find("0x01") != std::string::npos);
  CHECK(errorColumn("* * * * * \xc3\xa9") == 11);
  CHECK(errorColumn(std::string(kMaxSpecLength + 1, '*'), &message) == 0);
  CHECK(message.find("longer than the 256") != std::string::npos);
}

TEST_CASE("cron: zones from the system tz database") {
  CHECK(findZone("Europe/Berlin")->name() == "Europe/Berlin");
  CHECK(findZone("America/New_York")->name() == "America/New_York");
  // "UTC" is a link to Etc/UTC in Debian's tzdata; an empty name is UTC
  CHECK(findZone("UTC")->get_info(at("2026-07-01T00:00:00Z")).offset == std::chrono::seconds{0});
  CHECK(findZone("")->get_info(at("2026-07-01T00:00:00Z")).offset == std::chrono::seconds{0});
  for (const std::string& bad :
       std::vector<std::string>{"Mars/Olympus", "../../etc/passwd", "/etc/localtime", "Europe//Berlin",
                                std::string(100, 'A'), std::string("Europe/Berlin\n")}) {
    CAPTURE(bad);
    try {
      (void)findZone(bad);
      FAIL("accepted");
    } catch (const CronError& e) {
      CHECK(std::string(e.what()).rfind("timezone: '", 0) == 0);
      CHECK(std::string(e.what()).find("IANA zone name") != std::string::npos);
      CHECK(e.column == 0);
    }
  }
  // instants outside 1970..9999 are answered with "none", not with arithmetic beyond the calendar
  CHECK_FALSE(CronExpression::parse("* * * * *").next(sys_seconds{std::chrono::seconds{-1}}, nullptr));
  CHECK_FALSE(CronExpression::parse("* * * * *").next(sys_seconds::max(), findZone("Europe/Berlin")));
  CHECK_FALSE(CronExpression::parse("* * * * *").next(sys_seconds::min(), findZone("Europe/Berlin")));
  // nullptr is UTC for next()
  CHECK(CronExpression::parse("0 0 * * *").next(at("2026-01-01T00:00:00Z"), nullptr) == at("2026-01-02T00:00:00Z"));
}

TEST_CASE("jitter: uniform in [0, max)") {
  std::mt19937_64 generator(16);
  const auto max = std::chrono::milliseconds{5000};
  auto lowest = max;
  auto highest = std::chrono::milliseconds{-1};
  long long sum = 0;
  constexpr int kDraws = 100000;
  for (int i = 0; i < kDraws; ++i) {
    auto d = jitter(max, generator);
    REQUIRE(d >= std::chrono::milliseconds{0});
    REQUIRE(d < max);
    lowest = std::min(lowest, d);
    highest = std::max(highest, d);
    sum += d.count();
  }
  CHECK(lowest < std::chrono::milliseconds{50});
  CHECK(highest >= std::chrono::milliseconds{4950});
  // mean of U[0, 5000): 2499.5 ms; 100,000 draws put it within a few ms
  CHECK(static_cast<double>(sum) / kDraws == doctest::Approx(2499.5).epsilon(0.01));
  CHECK(jitter(std::chrono::milliseconds{0}, generator) == std::chrono::milliseconds{0});
  CHECK(jitter(std::chrono::milliseconds{-5}, generator) == std::chrono::milliseconds{0});
  CHECK(jitter(std::chrono::milliseconds{1}, generator) == std::chrono::milliseconds{0});
}

TEST_CASE("cron: next() is fast (walks by fields)") {
  const date::time_zone* berlin = findZone("Europe/Berlin");
  const std::vector<CronExpression> expressions = {
      CronExpression::parse("*/5 * * * *"),    CronExpression::parse("0 9 * * MON-FRI"),
      CronExpression::parse("30 2 * * *"),     CronExpression::parse("0 0 29 2 *"),
      CronExpression::parse("*/10 * * * * *"), CronExpression::parse("0 0 13 * FRI"),
      CronExpression::parse("0 0 30 2 *"),  // never: the 5-year horizon each time
  };
  constexpr int kCalls = 10000;
  for (const CronExpression& e : expressions) {
    // starts an hour apart over 14 months, both DST changes of 2026 included
    const sys_seconds first = at("2026-01-01T00:00:00Z");
    int found = 0;
    auto begin = std::chrono::steady_clock::now();
    for (int i = 0; i < kCalls; ++i) {
      const sys_seconds after = first + std::chrono::hours{i};
      auto n = e.next(after, berlin);
      found += n && *n > after ? 1 : 0;
    }
    auto elapsed = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - begin);
    MESSAGE(kCalls, " next() of '", e.text(), "' in Europe/Berlin: ", elapsed.count() / 1000.0, " ms (",
            elapsed.count() / kCalls, " us each)");
    CHECK(found == (e.text() == "0 0 30 2 *" ? 0 : kCalls));
    // generous for a loaded 2-core machine; a walk by seconds would take minutes
    CHECK(elapsed.count() < 5e6);
  }
}

TEST_CASE("cron: random expressions either parse or fail with CronError, and next() ends") {
  // Fields built from random items (values in and beyond the ranges, names, steps), sometimes
  // with a stray piece: every outcome must be a value or a CronError with a column in the text
  // (or one past its end), and next() of every accepted one must answer (fire or none), here
  // from inside New York's repeated hour.
  // valid values per field (minute, hour, day of month, month, day of week; a leading second
  // field uses the minute's), and a few that no field or not every field accepts
  const std::vector<std::vector<std::string>> valid = {{"0", "1", "5", "15", "30", "59"},
                                                       {"0", "2", "9", "12", "23"},
                                                       {"1", "13", "15", "29", "30", "31"},
                                                       {"1", "2", "6", "12", "JAN", "feb", "Dec"},
                                                       {"0", "1", "5", "7", "MON", "fri", "Sun"}};
  const std::vector<std::string> invalid = {"60", "24", "32", "13", "8", "x", "", "JANUARY", "999999", "-1"};
  const std::vector<std::string> strays = {",", "-", "/", "/0", " ", "@daily", "L", "?", "\x01"};
  std::mt19937_64 generator(1616);
  auto pick = [&](const std::vector<std::string>& from) {
    return from[std::uniform_int_distribution<std::size_t>(0, from.size() - 1)(generator)];
  };
  auto chance = [&](int percent) { return std::uniform_int_distribution<int>(1, 100)(generator) <= percent; };
  auto item = [&](std::size_t field) {
    const std::vector<std::string>& from = valid[field];
    std::string out = chance(30) ? "*" : (chance(5) ? pick(invalid) : pick(from));
    if (out != "*" && chance(25)) {
      out += "-" + (chance(5) ? pick(invalid) : pick(from));
    }
    if (chance(20)) {
      out += "/" + (chance(5) ? pick(invalid) : std::string(chance(50) ? "2" : "5"));
    }
    return out;
  };
  const date::time_zone* newYork = findZone("America/New_York");
  const sys_seconds from = at("2026-11-01T05:30:00Z");
  int accepted = 0;
  int fired = 0;
  constexpr int kTries = 20000;
  for (int i = 0; i < kTries; ++i) {
    std::string text;
    const int fields = chance(80) ? 5 : std::uniform_int_distribution<int>(4, 7)(generator);
    for (int f = 0; f < fields; ++f) {
      const std::size_t kind = static_cast<std::size_t>(std::max(0, f - (fields - 5))) % valid.size();
      std::string field = item(kind);
      while (chance(20)) {
        field += "," + item(kind);
      }
      text += (f == 0 ? "" : " ") + field + (chance(3) ? pick(strays) : "");
    }
    CAPTURE(text);
    try {
      CronExpression e = CronExpression::parse(text);
      ++accepted;
      auto n = e.next(from, newYork);
      fired += n ? 1 : 0;
      CHECK((!n || *n > from));
    } catch (const CronError& error) {
      CHECK(error.column >= 1);
      CHECK(error.column <= text.size() + 1);
    }
  }
  MESSAGE(accepted, " of ", kTries, " random expressions parsed, ", fired, " of them fire within 5 years");
  CHECK(accepted > kTries / 20);
}
