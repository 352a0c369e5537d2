// The scheduler loop against a fake clock, a real record file (SQLite in a temporary directory),
// a fake run launcher (runs last as long as the test says) and a fake probe runner. The timetable
// is a fake too ("every N seconds", blackouts as fixed intervals): cron itself is tested in
// cron_test.cpp.
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

#include "controller/scheduler/scheduler.h"
#include "controller/store/schedules.h"
#include "controller/store/store.h"

using namespace faultline;
using namespace faultline::controller;
using namespace faultline::controller::scheduler;
using google::protobuf::util::TimeUtil;
using std::chrono::seconds;
using std::chrono::sys_seconds;
using TimePoint = std::chrono::system_clock::time_point;

namespace {

// 2026-05-01T12:00:00Z
constexpr std::int64_t kStart = 1777636800;

TimePoint t0() {
  return TimePoint{seconds{kStart}};
}

google::protobuf::Timestamp stamp(TimePoint t) {
  return TimeUtil::MicrosecondsToTimestamp(
      std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count());
}

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "faultline-sched-XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

class FakeClock final : public Clock {
 public:
  TimePoint now() override { return now_; }
  void set(TimePoint t) { now_ = t; }
  void advance(std::chrono::milliseconds d) { now_ += d; }

 private:
  TimePoint now_ = t0();
};

// Fires every `period` seconds of the epoch; a blackout is [from, to) in seconds after kStart.
class EveryTimetable final : public Timetable {
 public:
  EveryTimetable(seconds period, std::vector<std::pair<int, int>> blackouts)
      : period_(period), blackouts_(std::move(blackouts)) {}
  std::optional<sys_seconds> next(sys_seconds after) const override {
    const auto n = after.time_since_epoch() / period_;
    return sys_seconds{(n + 1) * period_};
  }
  std::optional<std::string> blackoutAt(sys_seconds at) const override {
    const auto s = (at.time_since_epoch() - seconds{kStart}).count();
    for (const auto& [from, to] : blackouts_) {
      if (s >= from && s < to) {
        return fmt::format("+{}s - +{}s", from, to);
      }
    }
    return std::nullopt;
  }

 private:
  seconds period_;
  std::vector<std::pair<int, int>> blackouts_;
};

// Timetables from the schedule's cron text: "every N" (seconds); blackouts "FROM-TO" seconds
// after kStart.
std::unique_ptr<Timetable> fakeTimetable(const v1::Schedule& s) {
  int period = 0;
  if (sscanf(s.cron().c_str(), "every %d", &period) != 1 || period <= 0) {
    throw std::runtime_error("cron: '" + s.cron() + "' is not 'every N'");
  }
  std::vector<std::pair<int, int>> blackouts;
  for (const auto& b : s.blackouts()) {
    int from = 0;
    int to = 0;
    REQUIRE(sscanf(b.c_str(), "%d-%d", &from, &to) == 2);
    blackouts.emplace_back(from, to);
  }
  return std::make_unique<EveryTimetable>(seconds{period}, blackouts);
}

// Runs last runLength of the fake clock (or until aborted); each is recorded in the record file
// at its start, as the run engine does.
class FakeLauncher final : public RunLauncher {
 public:
  FakeLauncher(FakeClock& clock, RecordStore& records) : clock_(clock), records_(records) {}
  std::string newRunId() override { return fmt::format("run-{}", ++ids_); }
  tl::expected<void, std::string> start(const ScheduledRun& run) override {
    started.push_back(run);
    v1::Run record;
    record.set_run_id(run.runId);
    record.set_experiment("budget-check");
    record.set_trigger("schedule");
    record.set_schedule(run.schedule.name());
    *record.mutable_fire_at() = run.fireAt;
    *record.mutable_started_at() = stamp(clock_.now());
    records_.createRun(record);
    endsAt[run.runId] = clock_.now() + runLength;
    size_t active = 0;
    for (const auto& [id, end] : endsAt) {
      active += isActive(id) ? 1 : 0;
    }
    maxConcurrent = std::max(maxConcurrent, active);
    return {};
  }
  bool active(const std::string& runId) override { return isActive(runId); }
  void abortAndWait(const std::string& runId, const std::string& reason, std::chrono::milliseconds) override {
    aborted.emplace_back(runId, reason);
    endsAt[runId] = clock_.now();
  }

  std::chrono::milliseconds runLength{1000};
  std::vector<ScheduledRun> started;
  std::vector<std::pair<std::string, std::string>> aborted;
  std::map<std::string, TimePoint> endsAt;
  size_t maxConcurrent = 0;

 private:
  bool isActive(const std::string& id) const {
    auto it = endsAt.find(id);
    return it != endsAt.end() && clock_.now() < it->second;
  }
  FakeClock& clock_;
  RecordStore& records_;
  int ids_ = 0;
};

class FakeProbes final : public ProbeRunner {
 public:
  Sample run(const Probe& probe) override {
    ++calls;
    Sample s;
    s.ok = ok;
    s.detail = ok ? "200 in 1ms" : fmt::format("{}: error budget 12% is below 25%", probe.name);
    return s;
  }
  bool ok = true;
  int calls = 0;
};

constexpr const char* kExperiment = R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: budget-check
targets:
  selector: {role: db}
steadyState:
  probes:
    - name: budget
      prometheus:
        url: http://127.0.0.1:9090
        query: error_budget_remaining
        expect: "> 25"
method:
  - wait: 1s
)";

v1::Schedule schedule(const std::string& name, const std::string& cron) {
  v1::Schedule s;
  s.set_name(name);
  s.set_experiment(kExperiment);
  s.set_file_name("budget.yaml");
  s.set_experiment_sha256("ab");
  s.set_cron(cron);
  return s;
}

struct Fixture {
  TempDir dir;
  std::string db = dir.file("faultline.db");
  std::unique_ptr<RecordStore> records = openSqliteStore(db);
  std::unique_ptr<ScheduleStore> store = openScheduleStore(db);
  FakeClock clock;
  FakeLauncher launcher{clock, *records};
  FakeProbes probes;

  std::unique_ptr<Scheduler> scheduler(uint64_t seed = 1) {
    return std::make_unique<Scheduler>(*store, launcher, probes, clock, fakeTimetable, SchedulerOptions{.seed = seed});
  }
  void apply(const v1::Schedule& s) { store->applySchedule(s, stamp(clock.now())); }
  // Fires of a schedule, oldest first.
  std::vector<v1::ScheduleFire> fires(const std::string& name) {
    auto f = store->listFires(name, 1000);
    std::reverse(f.begin(), f.end());
    return f;
  }
  // Advances the clock second by second to t0() + s, ticking each time.
  void runUntil(Scheduler& sched, int s) {
    while (clock.now() < t0() + seconds{s}) {
      clock.advance(seconds{1});
      sched.tick();
    }
  }
};

int64_t secondsAfterStart(const google::protobuf::Timestamp& t) {
  return t.seconds() - kStart;
}
int64_t secondsAfterStart(sys_seconds t) {
  return t.time_since_epoch().count() - kStart;
}

}  // namespace

TEST_CASE("scheduler: forbid never starts a second run while one is active, and records the skips") {
  Fixture f;
  f.apply(schedule("every10", "every 10"));
  f.launcher.runLength = std::chrono::milliseconds{25'000};  // outlasts two intervals
  auto sched = f.scheduler();
  sched->recover();
  f.runUntil(*sched, 60);
  // Fires at 10, 20, ..., 60: started at 10 (ends 35), skipped 20 and 30, started 40 (ends 65),
  // skipped 50 and 60.
  CHECK(f.launcher.maxConcurrent == 1);
  REQUIRE(f.launcher.started.size() == 2);
  CHECK(f.launcher.started[0].fireAt.seconds() - kStart == 10);
  CHECK(f.launcher.started[1].fireAt.seconds() - kStart == 40);
  const auto fires = f.fires("every10");
  REQUIRE(fires.size() == 6);
  std::vector<std::string> outcomes;
  for (const auto& fire : fires) {
    outcomes.push_back(fire.outcome());
  }
  CHECK(outcomes == std::vector<std::string>{"started", "skipped", "skipped", "started", "skipped", "skipped"});
  CHECK(fires[0].run_id() == "run-1");
  CHECK(fires[1].reason() == "run run-1 of this schedule is still active (concurrency forbid)");
  CHECK(fires[4].reason() == "run run-2 of this schedule is still active (concurrency forbid)");
}

TEST_CASE("scheduler: allow starts runs side by side; replace aborts the active run first") {
  Fixture f;
  auto allow = schedule("allow", "every 10");
  allow.set_concurrency("allow");
  f.apply(allow);
  auto replace = schedule("replace", "every 10");
  replace.set_concurrency("replace");
  f.apply(replace);
  f.launcher.runLength = std::chrono::milliseconds{25'000};
  auto sched = f.scheduler();
  sched->recover();
  f.runUntil(*sched, 30);
  std::map<std::string, int> started;
  for (const auto& r : f.launcher.started) {
    ++started[r.schedule.name()];
  }
  CHECK(started["allow"] == 3);
  CHECK(started["replace"] == 3);
  // replace: the run of 10 aborted at 20, the run of 20 at 30; each reason names the new fire.
  REQUIRE(f.launcher.aborted.size() == 2);
  CHECK(f.launcher.aborted[0].second == "replaced by the fire of schedule replace at 2026-05-01T12:00:20Z");
  for (const auto& fire : f.fires("replace")) {
    CHECK(fire.outcome() == "started");
  }
}

TEST_CASE("scheduler: a fire in a blackout window is skipped and recorded with the window") {
  Fixture f;
  auto s = schedule("quiet", "every 10");
  s.add_blackouts("15-35");
  f.apply(s);
  auto sched = f.scheduler();
  sched->recover();
  f.runUntil(*sched, 40);
  const auto fires = f.fires("quiet");
  REQUIRE(fires.size() == 4);
  CHECK(fires[0].outcome() == "started");
  CHECK(fires[1].outcome() == "skipped");
  CHECK(fires[1].reason() == "in blackout window '+15s - +35s'");
  CHECK(secondsAfterStart(fires[1].planned_at()) == 20);
  CHECK(fires[2].outcome() == "skipped");
  CHECK(fires[3].outcome() == "started");
  CHECK(f.launcher.started.size() == 2);
}

TEST_CASE("scheduler: fires are counted by outcome and reason in faultline_schedule_fires_total") {
  Fixture f;
  auto s = schedule("quiet", "every 10");
  s.add_blackouts("15-35");
  f.apply(s);
  f.launcher.runLength = std::chrono::milliseconds{15'000};  // the run of 40 outlasts the fire at 50
  metrics::Registry registry;
  auto& fires = registry.counter("faultline_schedule_fires_total", "fires", {"outcome", "reason"});
  Scheduler sched(*f.store, f.launcher, f.probes, f.clock, fakeTimetable, SchedulerOptions{.seed = 1, .fires = &fires});
  sched.recover();
  f.runUntil(sched, 50);
  // 10 started, 20 and 30 in the blackout, 40 started, 50 while 40's run is active.
  CHECK(fires.with({"started", ""}).value() == 2);
  CHECK(fires.with({"skipped", "blackout"}).value() == 2);
  CHECK(fires.with({"skipped", "concurrency"}).value() == 1);
  CHECK(registry.render().find("faultline_schedule_fires_total{outcome=\"skipped\",reason=\"blackout\"} 2\n") !=
        std::string::npos);
}

TEST_CASE("scheduler: the next fires that land in a blackout window name it (show marks them skipped)") {
  Fixture f;
  auto s = schedule("quiet-next", "every 10");
  s.add_blackouts("15-35");
  f.apply(s);
  auto sched = f.scheduler();
  auto next = sched->nextFires(*f.store->getSchedule("quiet-next"), 4);
  REQUIRE(next);
  REQUIRE(next->size() == 4);
  CHECK(secondsAfterStart((*next)[0].at) == 10);
  CHECK_FALSE((*next)[0].blackout);
  CHECK(secondsAfterStart((*next)[1].at) == 20);
  CHECK((*next)[1].blackout == std::optional<std::string>{"+15s - +35s"});
  CHECK((*next)[2].blackout == std::optional<std::string>{"+15s - +35s"});
  CHECK_FALSE((*next)[3].blackout);
}

TEST_CASE("scheduler: jitter moves each fire by [0, jitter), recorded next to the planned time") {
  Fixture f;
  auto s = schedule("jittery", "every 60");
  *s.mutable_jitter() = TimeUtil::SecondsToDuration(20);
  f.apply(s);
  f.launcher.runLength = std::chrono::milliseconds{1000};
  auto sched = f.scheduler(42);
  sched->recover();
  std::set<int64_t> offsets;
  while (f.clock.now() < t0() + seconds{60 * 30}) {
    f.clock.advance(std::chrono::milliseconds{250});
    sched->tick();
  }
  const auto fires = f.fires("jittery");
  REQUIRE(fires.size() >= 29);
  for (const auto& fire : fires) {
    CHECK(fire.outcome() == "started");
    CHECK(secondsAfterStart(fire.planned_at()) % 60 == 0);
    const auto offsetMs =
        TimeUtil::TimestampToMilliseconds(fire.fire_at()) - TimeUtil::TimestampToMilliseconds(fire.planned_at());
    CHECK(offsetMs >= 0);
    CHECK(offsetMs < 20'000 + 250);  // plus at most one tick of the fake clock
    offsets.insert(offsetMs / 1000);
  }
  CHECK(offsets.size() > 5);  // not one fixed offset
  // The run is started at its jittered time: its fire time is what the run records.
  CHECK(f.launcher.started[0].fireAt.seconds() == fires[0].fire_at().seconds());
}

TEST_CASE("scheduler: a failed only-if probe skips the fire with the probe's message") {
  Fixture f;
  auto s = schedule("budget", "every 10");
  s.add_only_if("budget");
  f.apply(s);
  auto sched = f.scheduler();
  sched->recover();
  f.probes.ok = false;
  f.runUntil(*sched, 10);
  f.probes.ok = true;
  f.runUntil(*sched, 20);
  const auto fires = f.fires("budget");
  REQUIRE(fires.size() == 2);
  CHECK(fires[0].outcome() == "skipped");
  CHECK(fires[0].reason() == "only-if probe 'budget' (prometheus) failed: budget: error budget 12% is below 25%");
  CHECK(fires[1].outcome() == "started");
  CHECK(f.probes.calls == 2);
  CHECK(f.launcher.started.size() == 1);

  SUBCASE("a name that is no probe of the experiment skips with that reason") {
    auto bad = schedule("typo", "every 10");
    bad.add_only_if("budgett");
    f.apply(bad);
    sched->reload();
    f.runUntil(*sched, 30);
    const auto typo = f.fires("typo");
    REQUIRE(typo.size() == 1);
    CHECK(typo[0].reason() == "only-if probe 'budgett' is not a probe of the experiment's steadyState");
  }
}

TEST_CASE("scheduler: missed fires across a restart run once within the starting deadline, else are recorded missed") {
  Fixture f;
  auto within = schedule("within", "every 60");
  *within.mutable_starting_deadline() = TimeUtil::SecondsToDuration(300);
  f.apply(within);
  auto late = schedule("late", "every 60");
  *late.mutable_starting_deadline() = TimeUtil::SecondsToDuration(30);
  f.apply(late);
  f.apply(schedule("nodeadline", "every 60"));
  {
    auto sched = f.scheduler();
    sched->recover();
    f.runUntil(*sched, 60);  // each fires once at 60
  }
  CHECK(f.launcher.started.size() == 3);
  // The controller is down from 60 to 400: fires at 120 ... 360 are missed (5 each).
  f.clock.set(t0() + seconds{400});
  f.launcher.started.clear();
  auto sched = f.scheduler();
  sched->recover();
  // within: the latest missed (360) is 40 s old, within 300 s: one run, now.
  REQUIRE(f.launcher.started.size() == 1);
  CHECK(f.launcher.started[0].schedule.name() == "within");
  auto fires = f.fires("within");
  REQUIRE(fires.size() == 2);
  CHECK(fires[1].outcome() == "started");
  CHECK(secondsAfterStart(fires[1].planned_at()) == 360);
  CHECK(secondsAfterStart(fires[1].fire_at()) == 400);
  // late: 40 s is more than 30 s: recorded as missed, once, with how many.
  fires = f.fires("late");
  REQUIRE(fires.size() == 2);
  CHECK(fires[1].outcome() == "missed");
  CHECK(fires[1].reason() ==
        "5 fire(s) missed while the controller was down or starting; the latest, at 2026-05-01T12:06:00Z, is 40s old, "
        "more than "
        "the starting deadline of 30s");
  fires = f.fires("nodeadline");
  REQUIRE(fires.size() == 2);
  CHECK(fires[1].outcome() == "missed");
  // Then each carries on at its next time (420), once.
  f.runUntil(*sched, 420);
  CHECK(f.launcher.started.size() == 4);
  // A second restart right after finds nothing missed.
  f.launcher.started.clear();
  auto again = f.scheduler();
  again->recover();
  CHECK(f.launcher.started.empty());
  fires = f.fires("within");
  REQUIRE(fires.size() == 3);
  for (const auto& fire : fires) {
    CHECK(fire.outcome() == "started");  // each run reached the record: none is taken for a kill
  }
}

TEST_CASE("scheduler: a controller killed between 'fire recorded' and 'run started' never runs that fire twice") {
  Fixture f;
  auto s = schedule("once", "every 60");
  *s.mutable_starting_deadline() = TimeUtil::SecondsToDuration(3600);
  f.apply(s);
  // The kill: the fire is recorded as started with its run id, and the run never reaches the
  // record (as recordFire() then a crash before RunLauncher::start()).
  v1::ScheduleFire fire;
  fire.set_schedule("once");
  *fire.mutable_planned_at() = stamp(t0() + seconds{60});
  *fire.mutable_fire_at() = stamp(t0() + seconds{60});
  fire.set_outcome("started");
  fire.set_run_id("20260501-120100-dead");
  f.store->recordFire(fire);
  f.clock.set(t0() + seconds{70});
  auto sched = f.scheduler();
  sched->recover();
  CHECK(f.launcher.started.empty());  // the fire at 60 is not run again, deadline or not
  auto fires = f.fires("once");
  REQUIRE(fires.size() == 1);
  CHECK(fires[0].outcome() == "missed");
  CHECK(fires[0].reason() ==
        "the controller stopped after this fire was recorded and before its run started; not run again");
  f.runUntil(*sched, 120);
  REQUIRE(f.launcher.started.size() == 1);
  CHECK(secondsAfterStart(f.launcher.started[0].fireAt) == 120);

  SUBCASE("a fire whose run did reach the record stays started") {
    auto next = f.scheduler();
    next->recover();
    fires = f.fires("once");
    CHECK(fires.back().outcome() == "started");
    const auto runs = f.store->listRunsOfSchedule("once", 10);
    REQUIRE(runs.size() == 1);
    CHECK(runs[0].schedule() == "once");
    CHECK(secondsAfterStart(runs[0].fire_at()) == 120);
  }
}

TEST_CASE("scheduler: pause stops fires, resume fires from now on without catching up") {
  Fixture f;
  f.apply(schedule("p", "every 10"));
  auto sched = f.scheduler();
  sched->recover();
  f.runUntil(*sched, 10);
  REQUIRE(f.store->setPaused("p", true, stamp(f.clock.now())));
  sched->reload();
  f.runUntil(*sched, 50);
  CHECK(f.launcher.started.size() == 1);
  REQUIRE(f.store->setPaused("p", false, stamp(f.clock.now())));
  sched->reload();
  f.runUntil(*sched, 60);
  CHECK(f.launcher.started.size() == 2);
  CHECK(f.fires("p").size() == 2);
  auto next = sched->nextFires(*f.store->getSchedule("p"), 5);
  REQUIRE(next);
  REQUIRE(next->size() == 5);
  CHECK((*next)[0].at == sys_seconds{seconds{kStart + 70}});
  CHECK((*next)[4].at == sys_seconds{seconds{kStart + 110}});
}

TEST_CASE("scheduler: run-now fires at once, outside the timetable, and is not the last planned fire") {
  Fixture f;
  f.apply(schedule("now", "every 3600"));
  auto sched = f.scheduler();
  sched->recover();
  f.clock.advance(seconds{5});
  auto fire = sched->runNow("now");
  REQUIRE(fire);
  CHECK(fire->outcome() == "started");
  CHECK(f.launcher.started.size() == 1);
  CHECK_FALSE(f.store->lastPlanned("now").has_value());
  auto second = sched->runNow("now");  // forbid: the first is still active
  REQUIRE(second);
  CHECK(second->outcome() == "skipped");
  CHECK(sched->runNow("nope").error() == "no schedule named 'nope'");
}

TEST_CASE("schedule store: apply is idempotent; an update keeps paused and created_at") {
  Fixture f;
  auto s = schedule("a", "every 10");
  (*s.mutable_variables())["HOST"] = "db1";
  s.add_blackouts("Fri 16:00 - Mon 08:00");
  CHECK(f.store->applySchedule(s, stamp(t0())) == ApplyResult::kCreated);
  CHECK(f.store->applySchedule(s, stamp(t0() + seconds{1})) == ApplyResult::kUnchanged);
  REQUIRE(f.store->setPaused("a", true, stamp(t0() + seconds{2})));
  s.set_cron("every 20");
  CHECK(f.store->applySchedule(s, stamp(t0() + seconds{3})) == ApplyResult::kUpdated);
  const auto got = f.store->getSchedule("a");
  REQUIRE(got);
  CHECK(got->cron() == "every 20");
  CHECK(got->paused());
  CHECK(got->experiment() == kExperiment);
  CHECK(got->variables().at("HOST") == "db1");
  CHECK(got->blackouts(0) == "Fri 16:00 - Mon 08:00");
  CHECK(got->concurrency() == "forbid");
  CHECK(secondsAfterStart(got->created_at()) == 0);
  CHECK(secondsAfterStart(got->updated_at()) == 3);
  CHECK(f.store->deleteSchedule("a"));
  CHECK_FALSE(f.store->deleteSchedule("a"));
  CHECK_FALSE(f.store->getSchedule("a").has_value());
}

// Retention deleted a fire together with its run, and the next start ran that fire again (attacker
// trial, issue 16): the fire now stays, without its run id, and counts as fired.
TEST_CASE("scheduler: a fire whose run retention deleted is not run again after a restart") {
  Fixture f;
  auto s = schedule("once", "every 60");
  *s.mutable_starting_deadline() = TimeUtil::SecondsToDuration(3600);
  f.apply(s);
  auto sched = f.scheduler();
  sched->recover();
  f.runUntil(*sched, 70);
  REQUIRE(f.launcher.started.size() == 1);
  const std::string runId = f.launcher.started[0].runId;
  f.records->finishRun(runId, v1::VERDICT_HELD, "", stamp(f.clock.now()));
  CHECK(f.records->pruneRuns(Retention{.runs = 0, .age = std::chrono::seconds{1}}, stamp(f.clock.now() + seconds{5})) ==
        1);
  auto fires = f.fires("once");
  REQUIRE(fires.size() == 1);
  CHECK(fires[0].outcome() == "started");
  CHECK(fires[0].run_id().empty());
  CHECK(fires[0].reason() == "its run was deleted by retention");
  // A restart before the next fire (at 120): nothing is made up, nothing is marked missed.
  f.clock.set(t0() + seconds{80});
  auto next = f.scheduler();
  next->recover();
  CHECK(f.launcher.started.size() == 1);
  fires = f.fires("once");
  REQUIRE(fires.size() == 1);
  CHECK(fires[0].outcome() == "started");
}

TEST_CASE("scheduler: a refused cron or blackout is named with its text and column") {
  v1::Schedule s;
  s.set_cron("61 * * * *");
  try {
    (void)scheduler::cronTimetable(s);
    FAIL("a minute of 61 was accepted");
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()) == "cron '61 * * * *', column 1: minute: 61 is out of range 0-59");
  }
  s.set_cron("0 3 * * *");
  s.add_blackouts("daily 25:00 - 06:00");
  try {
    (void)scheduler::cronTimetable(s);
    FAIL("a blackout at 25:00 was accepted");
  } catch (const std::exception& e) {
    const std::string message = e.what();
    CHECK(message.rfind("blackout 'daily 25:00 - 06:00', column ", 0) == 0);
    CHECK(message.find("25:00 is out of range 00:00-23:59") != std::string::npos);
  }
}
