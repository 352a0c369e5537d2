// The scheduler loop: fires the controller's schedules (controller/store/schedules.h) on their
// cron timetables (cron.h) and starts their runs through a RunLauncher (the controller's SubmitRun
// path, trigger "schedule"). docs/schedules.md describes the rules for users.
//
// A fire at planned time P (a cron time) happens at F = P + jitter (uniform in [0, jitter)); then:
//   1. blackout: F in one of the schedule's blackout windows: skipped, the window named;
//   2. concurrency: forbid (default) skips while a run of this schedule is active; allow starts
//      another; replace aborts the active ones, waits until they have finished, then starts;
//   3. only-if: each probe named (a probe of the experiment's steadyState) is sampled once; the
//      first that fails skips the fire with its detail;
//   4. the fire is recorded as started with its run's id BEFORE the run is started, so that a
//      controller killed in between never runs it twice (at the next start the fire is recorded
//      as missed: recover()).
// Every fire is recorded (ScheduleStore::recordFire), whatever its outcome.
// Missed fires (the controller was down): recover() runs at most ONE per schedule, the latest,
// and only if it is at most the schedule's starting deadline old; otherwise the latest is recorded
// as missed, with how many were.
//
// Time comes from an injected Clock; tests drive tick() with a fake one. Thread-safe: every
// public call takes one mutex; tick() holds it while it samples only-if probes (each blocks at
// most its timeout) and while a replace waits for the aborted run.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <tl/expected.hpp>

#include "common/metrics.h"
#include "controller/probes/probe.h"
#include "controller/store/schedules.h"
#include "faultline/v1/control.pb.h"

namespace faultline::controller::scheduler {

class Clock {
 public:
  virtual ~Clock() = default;
  [[nodiscard]] virtual std::chrono::system_clock::time_point now() = 0;
};

// std::chrono::system_clock.
class SystemClock final : public Clock {
 public:
  std::chrono::system_clock::time_point now() override { return std::chrono::system_clock::now(); }
};

// When one schedule fires, and when it may not start a run.
class Timetable {
 public:
  virtual ~Timetable() = default;
  // The first planned time strictly after `after`; nullopt when there is none.
  [[nodiscard]] virtual std::optional<std::chrono::sys_seconds> next(std::chrono::sys_seconds after) const = 0;
  // The text of the blackout window that contains `at`, or nullopt.
  [[nodiscard]] virtual std::optional<std::string> blackoutAt(std::chrono::sys_seconds at) const = 0;
};

// The timetable of a schedule; throws std::exception (CronError for a bad cron, zone or blackout)
// whose what() says what is wrong.
using TimetableFactory = std::function<std::unique_ptr<Timetable>(const v1::Schedule&)>;
// cron.h's CronExpression, findZone and Blackout on the schedule's cron, timezone, blackouts.
[[nodiscard]] std::unique_ptr<Timetable> cronTimetable(const v1::Schedule& schedule);

// A run the scheduler asks for.
struct ScheduledRun {
  std::string runId;  // from RunLauncher::newRunId(), already recorded with the fire
  v1::Schedule schedule;
  google::protobuf::Timestamp fireAt;
};

// Starts and watches runs: the controller's own run path (controller/server/controller.cpp).
class RunLauncher {
 public:
  virtual ~RunLauncher() = default;
  [[nodiscard]] virtual std::string newRunId() = 0;
  // Starts the run and returns at once; an error text when it cannot start (an invalid
  // experiment, the controller shutting down).
  [[nodiscard]] virtual tl::expected<void, std::string> start(const ScheduledRun& run) = 0;
  // True while the run has not finished.
  [[nodiscard]] virtual bool active(const std::string& runId) = 0;
  // Asks the run to abort (its faults are reverted) and waits until it has finished, at most wait.
  virtual void abortAndWait(const std::string& runId, const std::string& reason, std::chrono::milliseconds wait) = 0;
};

// The longest one only-if probe may take (its timeout is cut to this): the scheduler waits for it.
inline constexpr std::chrono::seconds kMaxOnlyIfProbeTime{30};

struct SchedulerOptions {
  // The loop wakes at least this often (to notice a clock step); fires wake it on time.
  std::chrono::milliseconds idle{1000};
  // How long a replace waits for the run it aborts.
  std::chrono::milliseconds replaceWait{60'000};
  // start() waits this long before recover() (agents reconnect first); stop() ends the wait.
  std::chrono::milliseconds startDelay{0};
  // Seed of the jitter's generator; unset: std::random_device.
  std::optional<uint64_t> seed{};
  // faultline_schedule_fires_total{outcome, reason} (the controller's --metrics-listen); null:
  // none. outcome started, skipped or missed; reason "" for started, else one of blackout,
  // concurrency, only_if, start_failed (skipped) or past_deadline (missed). Must outlive the scheduler.
  metrics::CounterFamily* fires = nullptr;
};

class Scheduler {
 public:
  // All references must outlive the scheduler.
  Scheduler(ScheduleStore& store, RunLauncher& launcher, ProbeRunner& probes, Clock& clock,
            TimetableFactory timetables = cronTimetable, SchedulerOptions options = {});
  ~Scheduler();  // stop()
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Once, before tick() or start(): fires recorded as started whose run never began are recorded
  // as missed; then each active (not paused) schedule applied before the scheduler was made has
  // its fires missed since its last recorded one handled as described above (one applied since
  // fires from now on). Loads the schedules.
  void recover();
  // Every fire due at clock.now(), in time order. Blocks for only-if probes and replace waits.
  void tick();
  // A thread that waits options.startDelay, calls recover(), then tick() on time until stop().
  void start();
  // Stops the thread (waits for a tick in progress). Idempotent. Runs already started go on.
  void stop();
  // Re-reads the schedules after a change (apply, pause, resume, delete), at the next tick() or
  // runNow(); returns at once (never waits for a fire in progress). A new, changed or resumed
  // schedule fires from now on (no catch-up of the past).
  void reload();
  // Fires the schedule now (outside its timetable: blackouts do not apply; concurrency and
  // only-if do), recorded as a manual fire. NOT_FOUND-like error text when there is no schedule.
  [[nodiscard]] tl::expected<v1::ScheduleFire, std::string> runNow(const std::string& name);
  // A planned fire time and, when it lands in a blackout window, that window's text (the fire
  // will be recorded as skipped, jitter aside).
  struct PlannedFire {
    std::chrono::sys_seconds at;
    std::optional<std::string> blackout;
  };
  // The next n planned times of a schedule after now (none when paused), or why they cannot be
  // computed (its cron, zone or a blackout refused).
  [[nodiscard]] tl::expected<std::vector<PlannedFire>, std::string> nextFires(const v1::Schedule& schedule, unsigned n);

 private:
  struct Entry {
    v1::Schedule schedule;
    std::unique_ptr<Timetable> timetable;  // null when the schedule's timetable is refused
    std::string error;
    std::optional<std::chrono::sys_seconds> nextPlanned;
    std::chrono::system_clock::time_point nextFireAt{};
    std::vector<std::string> activeRuns;
  };

  void loadLocked(bool catchUp);
  void planNextLocked(Entry& entry, std::chrono::sys_seconds after);
  void catchUpLocked(Entry& entry, std::chrono::system_clock::time_point now);
  // Counts a fire in options_.fires (when set).
  void countFire(const char* outcome, const char* reason);
  v1::ScheduleFire fireLocked(Entry& entry, std::chrono::sys_seconds planned,
                              std::chrono::system_clock::time_point fireAt, bool manual, bool checkBlackout);
  std::optional<std::string> onlyIfFailure(const v1::Schedule& schedule);
  void loop();

  ScheduleStore& store_;
  RunLauncher& launcher_;
  ProbeRunner& probes_;
  Clock& clock_;
  TimetableFactory timetables_;
  SchedulerOptions options_;
  std::mt19937_64 random_;
  std::chrono::system_clock::time_point startedAt_;  // clock.now() when made

  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::atomic<bool> reloadPending_{false};  // reload() asked; tick() and runNow() re-read
  bool recovered_ = false;
  std::map<std::string, Entry> entries_;
  std::thread thread_;
};

}  // namespace faultline::controller::scheduler
