// The record of every run, in SQLite: runs, events per host with timestamps, probe samples.
// Schema in docs/operations.md. Thread-safe (one connection behind a mutex); every write is
// its own transaction, so a record survives a crash of the controller up to its last event.
// A store opened StoreMode::ReadOnly throws on every write (see openSqliteStore).
#pragma once

#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include <tl/expected.hpp>

#include "faultline/v1/control.pb.h"

namespace faultline::controller {

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
  // Newest first, without events and samples.
  [[nodiscard]] virtual std::vector<v1::Run> listRuns(unsigned limit) = 0;
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
