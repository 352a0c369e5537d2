#include "controller/scheduler/scheduler.h"

#include <algorithm>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "controller/experiment/experiment.h"
#include "controller/scheduler/cron.h"  // jitter()

namespace faultline::controller::scheduler {
namespace {

using google::protobuf::util::TimeUtil;
using std::chrono::duration_cast;
using std::chrono::floor;
using std::chrono::milliseconds;
using std::chrono::seconds;
using std::chrono::sys_seconds;
using TimePoint = std::chrono::system_clock::time_point;

// A missed-fire walk stops counting after this many fires (a seconds schedule down for days).
constexpr unsigned kMaxMissedWalk = 100'000;

google::protobuf::Timestamp timestampOf(TimePoint t) {
  return TimeUtil::MicrosecondsToTimestamp(duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count());
}

TimePoint timePointOf(const google::protobuf::Timestamp& t) {
  return TimePoint{duration_cast<TimePoint::duration>(std::chrono::microseconds{TimeUtil::TimestampToMicroseconds(t)})};
}

milliseconds millisOf(const google::protobuf::Duration& d) {
  return milliseconds{TimeUtil::DurationToMilliseconds(d)};
}

std::string timeText(TimePoint t) {
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}Z", floor<seconds>(t));
}

std::string durationText(milliseconds d) {
  if (d.count() % 1000 == 0) {
    return fmt::format("{}s", d.count() / 1000);
  }
  return fmt::format("{}ms", d.count());
}

}  // namespace

Scheduler::Scheduler(ScheduleStore& store, RunLauncher& launcher, ProbeRunner& probes, Clock& clock,
                     TimetableFactory timetables, SchedulerOptions options)
    : store_(store),
      launcher_(launcher),
      probes_(probes),
      clock_(clock),
      timetables_(std::move(timetables)),
      options_(options),
      random_(options.seed ? *options.seed : std::random_device{}()),
      startedAt_(clock.now()) {}

Scheduler::~Scheduler() {
  stop();
}

void Scheduler::recover() {
  std::lock_guard lock(mutex_);
  const unsigned unstarted = store_.missUnstartedFires(
      "the controller stopped after this fire was recorded and before its run started; not run again");
  if (unstarted > 0) {
    spdlog::warn(
        "{} scheduled fire(s) were recorded but their runs never started (controller stopped): recorded as "
        "missed",
        unstarted);
  }
  for (auto& [name, entry] : entries_) {
    entry.timetable.reset();  // every schedule is planned again, with its missed fires
  }
  loadLocked(true);
  recovered_ = true;
}

void Scheduler::reload() {
  // Never waits for mutex_: a fire holds it through its only-if probes, and reload() is called on
  // the gRPC server's threads (apply, pause, resume, delete), which a slow probe froze for every
  // caller and agent (attacker trial, issue 16). tick() reloads first thing.
  reloadPending_ = true;
  wake_.notify_all();
}

void Scheduler::loadLocked(bool catchUp) {
  const auto now = clock_.now();
  std::map<std::string, Entry> next;
  for (auto& s : store_.listSchedules()) {
    Entry entry;
    auto old = entries_.find(s.name());
    if (old != entries_.end()) {
      entry.activeRuns = std::move(old->second.activeRuns);
      if (old->second.schedule.updated_at() == s.updated_at() && old->second.timetable) {
        // Unchanged: keep its plan.
        entry.timetable = std::move(old->second.timetable);
        entry.nextPlanned = old->second.nextPlanned;
        entry.nextFireAt = old->second.nextFireAt;
        entry.schedule = std::move(s);
        next.emplace(entry.schedule.name(), std::move(entry));
        continue;
      }
    }
    entry.schedule = std::move(s);
    try {
      entry.timetable = timetables_(entry.schedule);
    } catch (const std::exception& e) {
      entry.error = e.what();
      spdlog::error("schedule {}: {}; it does not fire", entry.schedule.name(), entry.error);
    }
    if (entry.timetable && !entry.schedule.paused()) {
      // A schedule applied since this scheduler was made fires from now on; older ones make up
      // for what was missed before.
      if (catchUp && timePointOf(entry.schedule.updated_at()) < startedAt_) {
        catchUpLocked(entry, now);
      } else {
        planNextLocked(entry, floor<seconds>(now));
      }
    }
    next.emplace(entry.schedule.name(), std::move(entry));
  }
  entries_ = std::move(next);
}

void Scheduler::planNextLocked(Entry& entry, sys_seconds after) {
  entry.nextPlanned = entry.timetable->next(after);
  if (entry.nextPlanned) {
    entry.nextFireAt = TimePoint{*entry.nextPlanned} + jitter(millisOf(entry.schedule.jitter()), random_);
  }
}

void Scheduler::catchUpLocked(Entry& entry, TimePoint now) {
  const auto& s = entry.schedule;
  const auto last = store_.lastPlanned(s.name());
  sys_seconds cursor = floor<seconds>(timePointOf(last ? *last : s.created_at()));
  const auto nowSeconds = floor<seconds>(now);
  std::optional<sys_seconds> latest;
  unsigned missed = 0;
  for (auto t = entry.timetable->next(cursor); t && *t <= nowSeconds; t = entry.timetable->next(*t)) {
    latest = t;
    if (++missed >= kMaxMissedWalk) {
      // Count no further: find the latest from near now.
      auto from = nowSeconds - std::max(duration_cast<seconds>(millisOf(s.starting_deadline())), seconds{3600});
      for (auto u = entry.timetable->next(std::max(from, *t)); u && *u <= nowSeconds; u = entry.timetable->next(*u)) {
        latest = u;
      }
      break;
    }
  }
  if (latest) {
    const auto deadline = millisOf(s.starting_deadline());
    const auto late = duration_cast<milliseconds>(now - TimePoint{*latest});
    const std::string count =
        missed >= kMaxMissedWalk ? fmt::format("more than {}", kMaxMissedWalk) : fmt::format("{}", missed);
    if (deadline.count() > 0 && late <= deadline) {
      spdlog::info(
          "schedule {}: {} fire(s) missed while the controller was down or starting; running the latest ({}) now",
          s.name(), count, timeText(TimePoint{*latest}));
      fireLocked(entry, *latest, now, false, true);
    } else {
      v1::ScheduleFire f;
      f.set_schedule(s.name());
      *f.mutable_planned_at() = timestampOf(TimePoint{*latest});
      *f.mutable_fire_at() = timestampOf(TimePoint{*latest});
      f.set_outcome("missed");
      f.set_reason(
          fmt::format("{} fire(s) missed while the controller was down or starting; the latest, at {}, is {} old, {}",
                      count, timeText(TimePoint{*latest}), durationText(late),
                      deadline.count() > 0 ? "more than the starting deadline of " + durationText(deadline)
                                           : std::string("and the schedule has no starting deadline")));
      store_.recordFire(f);
      countFire("missed", "past_deadline");
      spdlog::warn("schedule {}: {}", s.name(), f.reason());
    }
    planNextLocked(entry, std::max(*latest, nowSeconds));
  } else {
    planNextLocked(entry, std::max(cursor, nowSeconds));
  }
}

std::optional<std::string> Scheduler::onlyIfFailure(const v1::Schedule& s) {
  if (s.only_if().empty()) {
    return std::nullopt;
  }
  const Variables vars(s.variables().begin(), s.variables().end());
  auto parsed = parseExperiment(s.experiment(), s.file_name().empty() ? "experiment.yaml" : s.file_name(), vars);
  if (!parsed) {
    return fmt::format("the experiment is invalid: {}", format(parsed.error().front()));
  }
  for (const auto& name : s.only_if()) {
    const auto& probes = parsed->hypothesis.probes;
    auto it = std::find_if(probes.begin(), probes.end(), [&](const Probe& p) { return p.name == name; });
    if (it == probes.end()) {
      return fmt::format("only-if probe '{}' is not a probe of the experiment's steadyState", name);
    }
    // The scheduler waits for it (other schedules too): at most kMaxOnlyIfProbeTime, whatever the
    // probe's own timeout (up to an hour for a steady-state sample), so a silent endpoint cannot
    // hold the schedules or a shutdown for long.
    Probe bounded = *it;
    for (auto* t :
         {&bounded.http.timeout, &bounded.tcp.timeout, &bounded.command.timeout, &bounded.prometheus.timeout}) {
      *t = std::min(*t, std::chrono::duration_cast<std::chrono::milliseconds>(kMaxOnlyIfProbeTime));
    }
    const Sample sample = probes_.run(bounded);
    if (!sample.ok) {
      return fmt::format("only-if probe '{}' ({}) failed: {}", name, probeKindName(it->kind), sample.detail);
    }
  }
  return std::nullopt;
}

v1::ScheduleFire Scheduler::fireLocked(Entry& entry, sys_seconds planned, TimePoint fireAt, bool manual,
                                       bool checkBlackout) {
  const auto& s = entry.schedule;
  v1::ScheduleFire f;
  f.set_schedule(s.name());
  *f.mutable_planned_at() = timestampOf(TimePoint{planned});
  *f.mutable_fire_at() = timestampOf(fireAt);
  auto skip = [&](std::string reason, const char* code) {
    f.set_outcome("skipped");
    f.set_reason(std::move(reason));
    f.set_id(store_.recordFire(f, manual));
    countFire("skipped", code);
    spdlog::info("schedule {}: fire at {} skipped: {}", s.name(), timeText(fireAt), f.reason());
    return f;
  };
  if (checkBlackout && entry.timetable) {
    if (auto window = entry.timetable->blackoutAt(floor<seconds>(fireAt))) {
      return skip(fmt::format("in blackout window '{}'", *window), "blackout");
    }
  }
  std::erase_if(entry.activeRuns, [&](const std::string& id) { return !launcher_.active(id); });
  const std::string concurrency = s.concurrency().empty() ? "forbid" : s.concurrency();
  if (!entry.activeRuns.empty()) {
    if (concurrency == "forbid") {
      return skip(fmt::format("run {} of this schedule is still active (concurrency forbid)", entry.activeRuns.front()),
                  "concurrency");
    }
    if (concurrency == "replace") {
      for (const auto& id : entry.activeRuns) {
        spdlog::info("schedule {}: aborting run {} (concurrency replace)", s.name(), id);
        launcher_.abortAndWait(id, fmt::format("replaced by the fire of schedule {} at {}", s.name(), timeText(fireAt)),
                               options_.replaceWait);
      }
      std::erase_if(entry.activeRuns, [&](const std::string& id) { return !launcher_.active(id); });
      if (!entry.activeRuns.empty()) {
        return skip(fmt::format("run {} of this schedule did not finish within {} of its abort (concurrency replace)",
                                entry.activeRuns.front(), durationText(options_.replaceWait)),
                    "concurrency");
      }
    }
  }
  if (auto failure = onlyIfFailure(s)) {
    return skip(*failure, "only_if");
  }
  const std::string runId = launcher_.newRunId();
  f.set_outcome("started");
  f.set_run_id(runId);
  f.set_id(store_.recordFire(f, manual));  // on disk before the run starts
  auto started = launcher_.start(ScheduledRun{runId, s, f.fire_at()});
  if (!started) {
    f.set_outcome("skipped");
    f.set_reason(fmt::format("the run could not start: {}", started.error()));
    f.clear_run_id();
    store_.setFireOutcome(f.id(), f.outcome(), f.reason());
    countFire("skipped", "start_failed");
    spdlog::error("schedule {}: {}", s.name(), f.reason());
    return f;
  }
  countFire("started", "");
  entry.activeRuns.push_back(runId);
  spdlog::info("schedule {}: fire at {} started run {}", s.name(), timeText(fireAt), runId);
  return f;
}

void Scheduler::countFire(const char* outcome, const char* reason) {
  if (options_.fires != nullptr) {
    options_.fires->with({outcome, reason}).inc();
  }
}

void Scheduler::tick() {
  std::lock_guard lock(mutex_);
  if (!recovered_) {
    loadLocked(true);
    recovered_ = true;
    reloadPending_ = false;
  } else if (reloadPending_.exchange(false)) {
    loadLocked(false);
  }
  const auto now = clock_.now();
  for (;;) {
    // The entry whose fire is due first.
    Entry* due = nullptr;
    for (auto& [name, e] : entries_) {
      if (e.timetable && !e.schedule.paused() && e.nextPlanned && e.nextFireAt <= now &&
          (due == nullptr || e.nextFireAt < due->nextFireAt)) {
        due = &e;
      }
    }
    if (due == nullptr) {
      return;
    }
    const auto planned = *due->nextPlanned;
    const auto fireAt = due->nextFireAt;
    try {
      fireLocked(*due, planned, fireAt, false, true);
    } catch (const std::exception& e) {
      spdlog::error("schedule {}: fire at {}: {}", due->schedule.name(), timeText(fireAt), e.what());
    }
    planNextLocked(*due, std::max(planned, floor<seconds>(fireAt)));
  }
}

tl::expected<v1::ScheduleFire, std::string> Scheduler::runNow(const std::string& name) {
  std::lock_guard lock(mutex_);
  if (reloadPending_.exchange(false)) {
    loadLocked(false);
  }
  auto it = entries_.find(name);
  if (it == entries_.end()) {
    loadLocked(false);
    it = entries_.find(name);
    if (it == entries_.end()) {
      return tl::unexpected(fmt::format("no schedule named '{}'", name));
    }
  }
  const auto now = clock_.now();
  return fireLocked(it->second, floor<seconds>(now), now, true, false);
}

tl::expected<std::vector<Scheduler::PlannedFire>, std::string> Scheduler::nextFires(const v1::Schedule& schedule,
                                                                                    unsigned n) {
  std::unique_ptr<Timetable> timetable;
  try {
    timetable = timetables_(schedule);
  } catch (const std::exception& e) {
    return tl::unexpected(std::string(e.what()));
  }
  std::vector<PlannedFire> out;
  if (schedule.paused()) {
    return out;
  }
  auto t = timetable->next(floor<seconds>(clock_.now()));
  for (; t && out.size() < n; t = timetable->next(*t)) {
    out.push_back(PlannedFire{*t, timetable->blackoutAt(*t)});
  }
  return out;
}

void Scheduler::start() {
  thread_ = std::thread([this] {
    {
      std::unique_lock lock(mutex_);
      if (wake_.wait_for(lock, options_.startDelay, [this] { return stopping_; })) {
        return;
      }
    }
    try {
      recover();
    } catch (const std::exception& e) {
      spdlog::error("scheduler: recovery of missed fires failed: {}", e.what());
    }
    loop();
  });
}

void Scheduler::stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
  }
}

void Scheduler::loop() {
  for (;;) {
    {
      std::unique_lock lock(mutex_);
      if (stopping_) {
        return;
      }
      auto wait = std::chrono::duration_cast<milliseconds>(options_.idle);
      const auto now = clock_.now();
      for (const auto& [name, e] : entries_) {
        if (e.timetable && !e.schedule.paused() && e.nextPlanned) {
          wait = std::min(wait, std::max(milliseconds{0}, duration_cast<milliseconds>(e.nextFireAt - now)));
        }
      }
      if (wait.count() > 0) {
        wake_.wait_for(lock, wait);
      }
      if (stopping_) {
        return;
      }
    }
    try {
      tick();
    } catch (const std::exception& e) {
      spdlog::error("scheduler: {}", e.what());
    }
  }
}

}  // namespace faultline::controller::scheduler
