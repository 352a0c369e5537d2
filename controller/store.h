// The record of every run, in SQLite: runs, events per host with timestamps, probe samples.
// Schema in docs/operations.md. Thread-safe (one connection behind a mutex); every write is
// its own transaction, so a record survives a crash of the controller up to its last event.
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
  virtual void finishRun(const std::string& runId, v1::Verdict verdict, const std::string& reason,
                         const google::protobuf::Timestamp& endedAt) = 0;
  // The run with its events and samples in time order; nullopt-like error ENOENT when unknown.
  [[nodiscard]] virtual tl::expected<v1::Run, std::error_code> getRun(const std::string& runId) = 0;
  // Newest first, without events and samples.
  [[nodiscard]] virtual std::vector<v1::Run> listRuns(unsigned limit) = 0;
};

// Opens (creating if needed) the database at path, in WAL mode.
// errors: std::system_error with the SQLite message when the file cannot be opened or migrated.
[[nodiscard]] std::unique_ptr<RecordStore> openSqliteStore(const std::string& path);

}  // namespace faultline::controller
