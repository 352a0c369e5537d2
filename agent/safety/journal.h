// The agent's durable undo journal: one append-only file, STATE_DIR/journal.jsonl, one JSON object
// per line (the format is in docs/operations.md, "Undo journal").
//
//   {"v":1,"op":"begin","fault_id":"f1","kind":"network.bandwidth","at":MICROS,"undo":{...}}
//       written and synced BEFORE the kernel is touched (undo: the driver's record)
//   {"v":1,"op":"applied","fault_id":"f1","at":MICROS}   after the kernel change
//   {"v":1,"op":"done","fault_id":"f1","at":MICROS}      after a verified revert (or a failed apply)
//
// Every append is followed by fdatasync(); the directory is fsync'ed when the file is created.
// When no entry is open (after open() or after the last done()), the file is truncated.
// Not thread-safe; every call blocks for a disk sync (milliseconds).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>
#include <tl/expected.hpp>

namespace faultline::agent {

// code: the errno of the failed call; message: names the file and what was being done.
struct JournalError {
  std::error_code code;
  std::string message;
};

// A fault begun and not done: its undo record has to be reverted.
struct JournalEntry {
  std::string faultId;
  std::string kind;                 // "network.delay", ...
  std::chrono::microseconds at{0};  // when begin was written, since the Unix epoch
  nlohmann::json undo;              // the driver's record; null when there is nothing to undo
  bool applied = false;             // an "applied" line follows the begin
};

class UndoJournal;

struct OpenedJournal {
  std::unique_ptr<UndoJournal> journal;
  std::vector<JournalEntry> open;     // begun and not done, in file order
  std::vector<std::string> problems;  // lines that did not parse ("line 3: ..."); the rest still count
};

class UndoJournal {
 public:
  static constexpr const char* kFileName = "journal.jsonl";

  // Opens (creating it if needed) stateDir/journal.jsonl, which must already exist as a directory,
  // and reads it. Truncates the file when no entry is open.
  // Holds an exclusive flock(2) on the file while the journal is open: one agent per state
  // directory; waits up to 3 s for it (children of a killed agent may hold it while they die).
  // errors: EBUSY when another process still holds it (another agent, or `faultline
  // run --local`, on the same state directory); else the errno of open/read/write (EACCES,
  // EROFS, ENOTDIR, ENOENT, ...); each with a message naming the path.
  [[nodiscard]] static tl::expected<OpenedJournal, JournalError> open(const std::filesystem::path& stateDir);

  ~UndoJournal();
  UndoJournal(const UndoJournal&) = delete;
  UndoJournal& operator=(const UndoJournal&) = delete;

  [[nodiscard]] tl::expected<void, JournalError> begin(const std::string& faultId, const std::string& kind,
                                                       const nlohmann::json& undo);
  [[nodiscard]] tl::expected<void, JournalError> applied(const std::string& faultId);
  // Closes the entry; truncates the file when it was the last one open.
  [[nodiscard]] tl::expected<void, JournalError> done(const std::string& faultId);

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] size_t openCount() const { return open_.size(); }

 private:
  UndoJournal(int fd, std::filesystem::path path, std::set<std::string> open);
  tl::expected<void, JournalError> append(const nlohmann::ordered_json& line);
  tl::expected<void, JournalError> truncate();

  int fd_;
  std::filesystem::path path_;
  std::set<std::string> open_;  // fault ids begun and not done
};

}  // namespace faultline::agent
