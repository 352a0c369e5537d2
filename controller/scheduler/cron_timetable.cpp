// cronTimetable(): the scheduler's Timetable on cron.h (kept apart from scheduler.cpp so that a
// scheduler with a timetable of its own, as in tests, needs nothing of the tz database).
#include <fmt/format.h>

#include "controller/scheduler/cron.h"
#include "controller/scheduler/scheduler.h"

namespace faultline::controller::scheduler {
namespace {

using std::chrono::sys_seconds;

// Runs parse(); a CronError comes back naming what was parsed, its text and the column, e.g.
// "cron '61 * * * *', column 1: minute: 61 is out of range 0-59".
// (Control characters of the text are shown as '?': it comes from a caller.)
template <typename Parse>
auto withContext(std::string_view what, std::string text, Parse parse) {
  try {
    return parse();
  } catch (const CronError& e) {
    for (char& c : text) {
      if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
        c = '?';
      }
    }
    throw CronError(e.column > 0 ? fmt::format("{} '{}', column {}: {}", what, text, e.column, e.what())
                                 : fmt::format("{} '{}': {}", what, text, e.what()),
                    e.column);
  }
}

class CronTimetable final : public Timetable {
 public:
  explicit CronTimetable(const v1::Schedule& s)
      : cron_(withContext("cron", s.cron(), [&] { return CronExpression::parse(s.cron()); })),
        zone_(findZone(s.timezone())) {
    for (const auto& b : s.blackouts()) {
      blackouts_.push_back(withContext("blackout", b, [&] { return Blackout::parse(b); }));
    }
  }
  std::optional<sys_seconds> next(sys_seconds after) const override { return cron_.next(after, zone_); }
  std::optional<std::string> blackoutAt(sys_seconds at) const override {
    for (const auto& b : blackouts_) {
      if (b.contains(at, zone_)) {
        return b.text();
      }
    }
    return std::nullopt;
  }

 private:
  CronExpression cron_;
  const date::time_zone* zone_;
  std::vector<Blackout> blackouts_;
};

}  // namespace

std::unique_ptr<Timetable> cronTimetable(const v1::Schedule& schedule) {
  return std::make_unique<CronTimetable>(schedule);
}

}  // namespace faultline::controller::scheduler
