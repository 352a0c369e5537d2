// cronTimetable(): the scheduler's Timetable on cron.h (kept apart from scheduler.cpp so that a
// scheduler with a timetable of its own, as in tests, needs nothing of the tz database).
#include "controller/scheduler/cron.h"
#include "controller/scheduler/scheduler.h"

namespace faultline::controller::scheduler {
namespace {

using std::chrono::sys_seconds;

class CronTimetable final : public Timetable {
 public:
  explicit CronTimetable(const v1::Schedule& s)
      : cron_(CronExpression::parse(s.cron())), zone_(findZone(s.timezone())) {
    for (const auto& b : s.blackouts()) {
      blackouts_.push_back(Blackout::parse(b));
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
