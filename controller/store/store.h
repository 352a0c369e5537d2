// The record of every run, in SQLite: runs, events per host with timestamps, probe samples.
// Schema in docs/operations.md. Thread-safe (one connection behind a mutex); every write is
// its own transaction, so a record survives a crash of the controller up to its last event.
// A store opened StoreMode::ReadOnly throws on every write (see openSqliteStore).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include <tl/expected.hpp>

#include "faultline/v1/control.pb.h"

namespace faultline::controller {

// Which runs listRuns() returns: every field set narrows the list (AND). Bounded by the caller
// (controller/server/limits.h: kMaxListRuns, the trigger's kMaxTriggerBytes).
struct RunFilter {
  unsigned limit = 0;                                // newest first, at most this many; 0 = 20
  std::string trigger;                               // "" = any; else exactly (cli, ci, schedule, gameday, ...)
  std::optional<v1::Verdict> verdict;                // VERDICT_UNSPECIFIED = runs still going (no verdict yet)
  std::optional<google::protobuf::Timestamp> since;  // runs started at or after this time
  std::string schedule;                              // "" = any; else the runs of this schedule
};

// What the controller keeps (`faultline controller --retain-runs N --retain-days D`): a finished
// run is deleted when it is not among the `runs` newest runs (0 = no count limit) or when it ended
// more than `age` ago (zero = no age limit). A run without an end (active, or another live
// controller's on the same file) is never deleted, and counts among the newest.
struct Retention {
  unsigned runs = 0;
  std::chrono::seconds age{0};
  [[nodiscard]] bool keepsAll() const { return runs == 0 && age.count() == 0; }
};

class RecordStore {
 public:
  virtual ~RecordStore() = default;
  // run: run_id, experiment, file_sha256, trigger, started_at are stored; verdict unspecified.
  virtual void createRun(const v1::Run& run) = 0;
  virtual void addEvent(const v1::RunEvent& event) = 0;
  virtual void addSample(const std::string& runId, const v1::ProbeSample& sample) = 0;
  // One evaluation of an SLO (steady state over a window of samples), with its measured SLIs.
  virtual void addSloCheck(const std::string& runId, const v1::SloCheck& check) = 0;
  virtual void finishRun(const std::string& runId, v1::Verdict verdict, const std::string& reason,
                         const google::protobuf::Timestamp& endedAt) = 0;
  // The run with its events, samples and SLO checks in time order; nullopt-like error ENOENT when unknown.
  [[nodiscard]] virtual tl::expected<v1::Run, std::error_code> getRun(const std::string& runId) = 0;
  // Newest first (by start), without events and samples, as filter says; one SELECT with the
  // filter in its WHERE clause (runs_by_started_at orders it).
  [[nodiscard]] virtual std::vector<v1::Run> listRuns(const RunFilter& filter) = 0;
  [[nodiscard]] std::vector<v1::Run> listRuns(unsigned limit) {
    RunFilter filter;
    filter.limit = limit;
    return listRuns(filter);
  }
  // Deletes the runs retention does not keep (see Retention), as of now, each whole: its events,
  // samples, SLO checks and the run in one transaction (at most 256 runs per transaction, so the
  // write lock is never held long). Then, when anything was deleted and the file is in
  // auto_vacuum=INCREMENTAL mode (every file this store creates), returns the freed pages to the
  // file system (PRAGMA incremental_vacuum). Returns how many runs were deleted. Blocks on file
  // I/O; throws std::system_error like the other writes.
  virtual std::uint64_t pruneRuns(const Retention& retention, const google::protobuf::Timestamp& now) = 0;
  // Runs that never ended (their controller stopped or crashed during them): each is finished as
  // VERDICT_ERROR with reason, endedAt and a run.finished event. Returns their ids, oldest first.
  // The controller calls it once at start, before it accepts runs.
  virtual std::vector<std::string> finishInterruptedRuns(const std::string& reason,
                                                         const google::protobuf::Timestamp& endedAt) = 0;
};

enum class StoreMode {
  ReadWrite,  // the controller and `run --local`: creates and migrates the file
  ReadOnly,   // `runs --db`, `show --db`: reads an existing record file and changes nothing
};

// Opens the record file at path (blocks on file I/O; waits up to 5 s for SQLite locks).
// ReadWrite: creates the file if needed (not its directory), switches it to WAL mode and
//   migrates the schema to this faultline's version.
// ReadOnly: opens with SQLITE_OPEN_READONLY; creates no file, migrates nothing, and needs no write
//   access to the file or its directory. When no writer has a WAL-mode file open (no PATH-wal),
//   it is read as immutable, so that SQLite does not create PATH-wal and PATH-shm; when a writer
//   has (PATH-wal and PATH-shm exist), it reads through them, read-only, and sees committed writes.
//   Every write on the returned store throws std::system_error(std::errc::read_only_file_system).
// Every opening runs PRAGMA quick_check first. A writer creates the file 0600 whatever the umask
// (its -wal and -shm follow the file's mode), and narrows an existing one readable by group or
// others to 0600 (with a warning); a reader changes no mode.
// errors: std::system_error, its what() naming the path:
//   - ReadOnly: ENOENT "no record file at PATH" when nothing is there, EISDIR for a directory;
//   - std::errc::invalid_argument "PATH is not a faultline record file (...)": a file that is not
//     an SQLite database, or one without faultline's tables (ReadWrite creates them only in an
//     empty database); the file is left as it was;
//   - std::errc::not_supported: the file's schema version is newer than this faultline's (or, in
//     ReadOnly mode, older: only a writer migrates);
//   - SQLITE_CORRUPT (category "sqlite") "record file PATH is damaged: SQLite's quick_check found:
//     ...": what SQLite found and what to do; nothing was written to the file;
//   - otherwise SQLite's result code (category "sqlite") with its message.
// Writes on the returned store throw std::system_error too (SQLITE_FULL for a full disk, an
// SQLITE_IOERR): callers on gRPC and engine threads catch them (the run engine aborts the run).
[[nodiscard]] std::unique_ptr<RecordStore> openSqliteStore(const std::string& path,
                                                           StoreMode mode = StoreMode::ReadWrite);

}  // namespace faultline::controller
