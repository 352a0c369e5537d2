// Schedules and their fires, in the record file next to the runs (docs/schedules.md, schema in
// docs/operations.md). Thread-safe, like the RecordStore: one connection behind a mutex, every
// write its own transaction, so a fire recorded is on disk before its run starts.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "faultline/v1/control.pb.h"

namespace faultline::controller {

enum class ApplyResult { kCreated, kUpdated, kUnchanged };
// "created", "updated", "unchanged"
[[nodiscard]] const char* applyResultWord(ApplyResult result);

class ScheduleStore {
 public:
  virtual ~ScheduleStore() = default;
  // Creates the schedule, or replaces the one of that name. Unchanged when every field a caller
  // gives (all but paused, created_at, updated_at) equals the stored one. An update keeps
  // paused and created_at and the schedule's fires. schedule.experiment_sha256 must be set.
  virtual ApplyResult applySchedule(const v1::Schedule& schedule, const google::protobuf::Timestamp& now) = 0;
  [[nodiscard]] virtual std::optional<v1::Schedule> getSchedule(const std::string& name) = 0;
  // By name.
  [[nodiscard]] virtual std::vector<v1::Schedule> listSchedules() = 0;
  // false when there is no such schedule.
  virtual bool setPaused(const std::string& name, bool paused, const google::protobuf::Timestamp& now) = 0;
  // Deletes the schedule and its fires (its runs stay, naming it); false when there is none.
  virtual bool deleteSchedule(const std::string& name) = 0;
  // Records a fire (id ignored) and returns its id. manual: a run-now fire, which does not count
  // as the schedule's last planned fire.
  virtual int64_t recordFire(const v1::ScheduleFire& fire, bool manual = false) = 0;
  // Changes a recorded fire's outcome and reason (a run that could not be started after all).
  virtual void setFireOutcome(int64_t id, const std::string& outcome, const std::string& reason) = 0;
  // The latest planned_at of the schedule's cron fires (recorded whatever their outcome).
  [[nodiscard]] virtual std::optional<google::protobuf::Timestamp> lastPlanned(const std::string& name) = 0;
  // Newest first, at most limit, each with its run's verdict when the run has one.
  [[nodiscard]] virtual std::vector<v1::ScheduleFire> listFires(const std::string& name, unsigned limit) = 0;
  // Fires recorded as started whose run never reached the record (the controller stopped between
  // the two): recorded as missed with reason. Returns how many. Called once at start.
  virtual unsigned missUnstartedFires(const std::string& reason) = 0;
  // The schedule's runs, newest first, at most limit (0 = 20), without events and samples.
  [[nodiscard]] virtual std::vector<v1::Run> listRunsOfSchedule(const std::string& name, unsigned limit) = 0;
};

// A second connection to the record file at path, opened and migrated as openSqliteStore() does
// (same errors); a ":memory:" path would be a database of its own: use a file.
[[nodiscard]] std::unique_ptr<ScheduleStore> openScheduleStore(const std::string& path);

}  // namespace faultline::controller
