// Blackout windows: weekly (across the week's end), daily (across midnight) and whole dates;
// contains() at the edges, in UTC and in DST zones; the canonical text; bad specs with their column.
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

std::size_t errorColumn(const std::string& spec, std::string* message = nullptr) {
  try {
    (void)Blackout::parse(spec);
  } catch (const CronError& e) {
    if (message != nullptr) {
      *message = e.what();
    }
    return e.column;
  }
  FAIL("no error for: ", spec);
  return 999;
}

}  // namespace

// 2026-01-02 is a Friday, 2026-01-05 a Monday.
TEST_CASE("blackout: weekly window across the week's end, in UTC") {
  Blackout b = Blackout::parse("Fri 16:00 - Mon 08:00");
  CHECK(b.text() == "Fri 16:00 - Mon 08:00");
  const date::time_zone* utc = findZone("UTC");
  CHECK_FALSE(b.contains(at("2026-01-02T15:59:59Z"), utc));
  CHECK(b.contains(at("2026-01-02T16:00:00Z"), utc));
  CHECK(b.contains(at("2026-01-03T12:00:00Z"), utc));  // Saturday
  CHECK(b.contains(at("2026-01-04T23:59:59Z"), utc));  // Sunday night, the week's end
  CHECK(b.contains(at("2026-01-05T00:00:00Z"), utc));  // Monday, after the wrap
  CHECK(b.contains(at("2026-01-05T07:59:59Z"), utc));
  CHECK_FALSE(b.contains(at("2026-01-05T08:00:00Z"), utc));
  CHECK_FALSE(b.contains(at("2026-01-07T12:00:00Z"), utc));  // Wednesday
  CHECK_FALSE(b.contains(at("2026-01-02T00:00:00Z"), utc));  // Friday morning
  // nullptr is UTC
  CHECK(b.contains(at("2026-01-02T16:00:00Z"), nullptr));
}

TEST_CASE("blackout: weekly window in Europe/Berlin is read on the local clock") {
  Blackout b = Blackout::parse("Fri 16:00 - Mon 08:00");
  const date::time_zone* berlin = findZone("Europe/Berlin");
  // January: CET, UTC+1
  CHECK_FALSE(b.contains(at("2026-01-02T14:59:59Z"), berlin));
  CHECK(b.contains(at("2026-01-02T15:00:00Z"), berlin));
  CHECK(b.contains(at("2026-01-05T06:59:59Z"), berlin));
  CHECK_FALSE(b.contains(at("2026-01-05T07:00:00Z"), berlin));
  // July: CEST, UTC+2; 2026-07-03 is a Friday
  CHECK_FALSE(b.contains(at("2026-07-03T13:59:59Z"), berlin));
  CHECK(b.contains(at("2026-07-03T14:00:00Z"), berlin));
}

TEST_CASE("blackout: a window over a DST change (Europe/Berlin, 2026-03-29 02:00 -> 03:00)") {
  Blackout b = Blackout::parse("Sun 01:00 - Sun 03:30");
  const date::time_zone* berlin = findZone("Europe/Berlin");
  CHECK_FALSE(b.contains(at("2026-03-28T23:59:59Z"), berlin));  // 00:59:59 CET
  CHECK(b.contains(at("2026-03-29T00:00:00Z"), berlin));        // 01:00 CET
  CHECK(b.contains(at("2026-03-29T00:59:59Z"), berlin));        // 01:59:59 CET
  CHECK(b.contains(at("2026-03-29T01:00:00Z"), berlin));        // 03:00 CEST, right after the gap
  CHECK(b.contains(at("2026-03-29T01:29:59Z"), berlin));        // 03:29:59 CEST
  CHECK_FALSE(b.contains(at("2026-03-29T01:30:00Z"), berlin));  // 03:30 CEST
  // fall back (2026-10-25 03:00 CEST -> 02:00 CET): both 02:xx occurrences are in a 02:00-02:30 window
  Blackout repeated = Blackout::parse("Sun 02:00 - Sun 02:30");
  CHECK(repeated.contains(at("2026-10-25T00:15:00Z"), berlin));        // 02:15 CEST
  CHECK(repeated.contains(at("2026-10-25T01:15:00Z"), berlin));        // 02:15 CET
  CHECK_FALSE(repeated.contains(at("2026-10-25T01:45:00Z"), berlin));  // 02:45 CET
}

TEST_CASE("blackout: weekly windows inside the week and one that wraps almost all of it") {
  const date::time_zone* utc = findZone("UTC");
  Blackout workday = Blackout::parse("Mon 09:00 - Mon 17:00");
  CHECK(workday.contains(at("2026-01-05T09:00:00Z"), utc));
  CHECK(workday.contains(at("2026-01-05T16:59:59Z"), utc));
  CHECK_FALSE(workday.contains(at("2026-01-05T17:00:00Z"), utc));
  CHECK_FALSE(workday.contains(at("2026-01-06T10:00:00Z"), utc));  // Tuesday
  Blackout night = Blackout::parse("Sun 22:00 - Mon 06:00");
  CHECK(night.contains(at("2026-01-04T23:00:00Z"), utc));
  CHECK(night.contains(at("2026-01-05T05:59:59Z"), utc));
  CHECK_FALSE(night.contains(at("2026-01-05T06:00:00Z"), utc));
  CHECK_FALSE(night.contains(at("2026-01-03T23:00:00Z"), utc));  // Saturday
  // everything but Monday 07:00-08:00
  Blackout most = Blackout::parse("Mon 08:00 - Mon 07:00");
  CHECK(most.contains(at("2026-01-05T06:59:59Z"), utc));
  CHECK_FALSE(most.contains(at("2026-01-05T07:00:00Z"), utc));
  CHECK_FALSE(most.contains(at("2026-01-05T07:59:59Z"), utc));
  CHECK(most.contains(at("2026-01-05T08:00:00Z"), utc));
  CHECK(most.contains(at("2026-01-08T12:00:00Z"), utc));
}

TEST_CASE("blackout: daily window across midnight, in summer and winter time") {
  Blackout b = Blackout::parse("daily 22:00 - 06:00");
  CHECK(b.text() == "daily 22:00 - 06:00");
  const date::time_zone* berlin = findZone("Europe/Berlin");
  // July: CEST (UTC+2)
  CHECK_FALSE(b.contains(at("2026-07-01T19:59:59Z"), berlin));
  CHECK(b.contains(at("2026-07-01T20:00:00Z"), berlin));
  CHECK(b.contains(at("2026-07-01T23:00:00Z"), berlin));
  CHECK(b.contains(at("2026-07-02T03:59:59Z"), berlin));
  CHECK_FALSE(b.contains(at("2026-07-02T04:00:00Z"), berlin));
  // January: CET (UTC+1)
  CHECK_FALSE(b.contains(at("2026-01-01T20:59:59Z"), berlin));
  CHECK(b.contains(at("2026-01-01T21:00:00Z"), berlin));
  Blackout lunch = Blackout::parse("DAILY 9:00-17:00");
  CHECK(lunch.text() == "daily 09:00 - 17:00");
  CHECK(lunch.contains(at("2026-01-01T09:00:00Z"), nullptr));
  CHECK_FALSE(lunch.contains(at("2026-01-01T17:00:00Z"), nullptr));
  CHECK_FALSE(lunch.contains(at("2026-01-01T08:59:59Z"), nullptr));
}

TEST_CASE("blackout: whole dates, both inclusive, on the zone's calendar") {
  Blackout b = Blackout::parse("2026-12-24 - 2026-12-27");
  CHECK(b.text() == "2026-12-24 - 2026-12-27");
  const date::time_zone* utc = findZone("UTC");
  CHECK_FALSE(b.contains(at("2026-12-23T23:59:59Z"), utc));
  CHECK(b.contains(at("2026-12-24T00:00:00Z"), utc));
  CHECK(b.contains(at("2026-12-27T23:59:59Z"), utc));
  CHECK_FALSE(b.contains(at("2026-12-28T00:00:00Z"), utc));
  // New York in December: EST (UTC-5)
  const date::time_zone* newYork = findZone("America/New_York");
  CHECK_FALSE(b.contains(at("2026-12-24T04:59:59Z"), newYork));
  CHECK(b.contains(at("2026-12-24T05:00:00Z"), newYork));
  CHECK(b.contains(at("2026-12-28T04:59:59Z"), newYork));
  CHECK_FALSE(b.contains(at("2026-12-28T05:00:00Z"), newYork));
  // one day; no blanks around '-'
  Blackout one = Blackout::parse("2027-01-01-2027-01-01");
  CHECK(one.text() == "2027-01-01 - 2027-01-01");
  CHECK(one.contains(at("2027-01-01T12:00:00Z"), utc));
  CHECK_FALSE(one.contains(at("2027-01-02T00:00:00Z"), utc));
  // case and blanks
  CHECK(Blackout::parse("  fri 16:00-MON 8:00 ").text() == "Fri 16:00 - Mon 08:00");
}

TEST_CASE("blackout: bad specs name the column and the accepted forms") {
  std::string message;
  CHECK(errorColumn("Fri 16:00 - Mox 08:00", &message) == 13);
  CHECK(message.find("'Mox' is not a day") != std::string::npos);
  CHECK(message.find("accepted: \"Fri 16:00 - Mon 08:00\"") != std::string::npos);
  CHECK(errorColumn("Funday 16:00 - Mon 08:00") == 1);
  CHECK(errorColumn("Fri 25:00 - Mon 08:00", &message) == 5);
  CHECK(message.find("25:00 is out of range 00:00-23:59") != std::string::npos);
  CHECK(errorColumn("Fri 16:60 - Mon 08:00") == 5);
  CHECK(errorColumn("Fri 16 - Mon 08:00") == 7);
  CHECK(errorColumn("Fri 16:00 Mon 08:00", &message) == 11);
  CHECK(message.find("expected ' - '") != std::string::npos);
  CHECK(errorColumn("Fri 16:00 - Fri 16:00", &message) == 13);
  CHECK(message.find("empty") != std::string::npos);
  CHECK(errorColumn("daily 06:00 - 06:00") == 15);
  CHECK(errorColumn("Fri 16:00 - Mon 08:00 weekly", &message) == 23);
  CHECK(errorColumn("2026-02-30 - 2026-03-01", &message) == 1);
  CHECK(message.find("2026-02-30 does not exist") != std::string::npos);
  CHECK(errorColumn("2026-12-27 - 2026-12-24", &message) == 14);
  CHECK(message.find("before the first") != std::string::npos);
  CHECK(errorColumn("2026-12-24 - 2026-1-27") == 20);  // the byte where two digits were expected
  CHECK(errorColumn("") == 0);
  CHECK(errorColumn(std::string(kMaxSpecLength + 1, ' ')) == 0);
  CHECK(errorColumn("Fri 16:00 - Mon 08:00\n") == 22);
}

TEST_CASE("blackout: random specs either parse or fail with CronError") {
  // The three forms with random parts (in and beyond range, misspelt, missing), sometimes a
  // stray piece: a value whose canonical text parses back to itself, or a CronError with a
  // column in the text (or one past its end).
  const std::vector<std::string> days = {"Mon", "tue", "WED", "Thu", "fri", "Sat", "sun", "Mox", "", "daily"};
  const std::vector<std::string> clocks = {"00:00", "08:00", "9:30", "16:00", "23:59", "24:00", "16:60", "16", ""};
  const std::vector<std::string> dates = {"2026-12-24", "2026-12-27", "2028-02-29", "2027-02-29",
                                          "2026-13-01", "1969-12-31", "2026-1-27",  ""};
  const std::vector<std::string> dashes = {" - ", "-", " -", "  -  ", " ", ""};
  const std::vector<std::string> strays = {"", "", "", "", "", " x", "\t", "-", ":"};
  std::mt19937_64 generator(1617);
  auto pick = [&](const std::vector<std::string>& from) {
    return from[std::uniform_int_distribution<std::size_t>(0, from.size() - 1)(generator)];
  };
  const date::time_zone* berlin = findZone("Europe/Berlin");
  int accepted = 0;
  constexpr int kTries = 20000;
  for (int i = 0; i < kTries; ++i) {
    std::string text;
    switch (i % 3) {
      case 0:
        text = pick(days) + " " + pick(clocks) + pick(dashes) + pick(days) + " " + pick(clocks);
        break;
      case 1:
        text = "daily " + pick(clocks) + pick(dashes) + pick(clocks);
        break;
      default:
        text = pick(dates) + pick(dashes) + pick(dates);
        break;
    }
    text += pick(strays);
    CAPTURE(text);
    try {
      Blackout b = Blackout::parse(text);
      ++accepted;
      CHECK(Blackout::parse(b.text()).text() == b.text());
      (void)b.contains(at("2026-03-29T01:00:00Z"), berlin);
    } catch (const CronError& error) {
      // column 0 only for a blank text (the whole text is the problem)
      CHECK((error.column >= 1 || text.find_first_not_of(" \t") == std::string::npos));
      CHECK(error.column <= text.size() + 1);
    }
  }
  MESSAGE(accepted, " of ", kTries, " random blackout specs parsed");
  CHECK(accepted > kTries / 20);
}
