// RecordStore on SQLite3 (C API). Schema and example queries: docs/operations.md.
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <mutex>
#include <optional>
#include <sstream>
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "controller/store/schedules.h"
#include "controller/store/store.h"

namespace faultline::controller {
namespace {

using google::protobuf::util::TimeUtil;

// The schema, one step per version: step i takes the database from user_version i to i + 1.
// Never edit a step that has shipped; add a new one (e.g. "ALTER TABLE runs ADD COLUMN ...").
// Timestamps are integer microseconds since the Unix epoch (UTC).
constexpr std::array<std::string_view, 7> kMigrations = {
    R"sql(
CREATE TABLE runs (
  run_id      TEXT PRIMARY KEY NOT NULL,
  experiment  TEXT NOT NULL,
  file_sha256 TEXT NOT NULL,
  trigger     TEXT NOT NULL,
  started_at  INTEGER NOT NULL,
  ended_at    INTEGER,
  verdict     TEXT,
  reason      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX runs_by_started_at ON runs (started_at);
CREATE TABLE events (
  run_id  TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
  seq     INTEGER NOT NULL,
  at      INTEGER NOT NULL,
  host    TEXT NOT NULL DEFAULT '',
  kind    TEXT NOT NULL,
  message TEXT NOT NULL DEFAULT '',
  verdict TEXT,
  PRIMARY KEY (run_id, seq)
);
CREATE TABLE samples (
  run_id     TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
  at         INTEGER NOT NULL,
  probe      TEXT NOT NULL,
  phase      TEXT NOT NULL,
  ok         INTEGER NOT NULL,
  latency_ms REAL NOT NULL,
  detail     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX samples_by_run ON samples (run_id, at);
)sql",
    // 2: probe values, kinds and guards; SLO checks (measures: JSON [{sli, value, comparison, threshold, ok}]).
    R"sql(
ALTER TABLE samples ADD COLUMN value REAL;
ALTER TABLE samples ADD COLUMN kind TEXT NOT NULL DEFAULT '';
ALTER TABLE samples ADD COLUMN guard INTEGER NOT NULL DEFAULT 0;
CREATE TABLE slo_checks (
  run_id    TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
  at        INTEGER NOT NULL,
  slo       TEXT NOT NULL,
  probe     TEXT NOT NULL,
  phase     TEXT NOT NULL,
  ok        INTEGER NOT NULL,
  samples   INTEGER NOT NULL,
  burn_rate REAL NOT NULL DEFAULT 0,
  objective TEXT NOT NULL DEFAULT '',
  measures  TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX slo_checks_by_run ON slo_checks (run_id, at);
)sql",
    // 3: a step.skew event's start time (microseconds since the epoch) and skew (nanoseconds).
    R"sql(
ALTER TABLE events ADD COLUMN start_at INTEGER;
ALTER TABLE events ADD COLUMN skew_ns INTEGER;
)sql",
    // 4: a fault.* event's fault id; the process that records a run (ownerOf(): two controllers or
    // run --local may share one file, and only a dead owner's unfinished run was interrupted).
    R"sql(
ALTER TABLE events ADD COLUMN fault_id TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
)sql",
    // 5: schedules (the experiment's content, not its path; variables a JSON object, blackouts and
    // only_if JSON arrays of strings) and their fires (outcome started, skipped or missed; manual:
    // run-now); a scheduled run's schedule and fire time.
    R"sql(
ALTER TABLE runs ADD COLUMN schedule TEXT NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN fire_at INTEGER;
CREATE INDEX runs_by_schedule ON runs (schedule, started_at);
CREATE TABLE schedules (
  name                 TEXT PRIMARY KEY NOT NULL,
  experiment           BLOB NOT NULL,
  file_name            TEXT NOT NULL DEFAULT '',
  experiment_sha256    TEXT NOT NULL,
  cron                 TEXT NOT NULL,
  timezone             TEXT NOT NULL DEFAULT '',
  variables            TEXT NOT NULL DEFAULT '{}',
  concurrency          TEXT NOT NULL DEFAULT 'forbid',
  starting_deadline_ms INTEGER NOT NULL DEFAULT 0,
  jitter_ms            INTEGER NOT NULL DEFAULT 0,
  blackouts            TEXT NOT NULL DEFAULT '[]',
  only_if              TEXT NOT NULL DEFAULT '[]',
  paused               INTEGER NOT NULL DEFAULT 0,
  created_at           INTEGER NOT NULL,
  updated_at           INTEGER NOT NULL
);
CREATE TABLE fires (
  id         INTEGER PRIMARY KEY AUTOINCREMENT,
  schedule   TEXT NOT NULL,
  planned_at INTEGER NOT NULL,
  fire_at    INTEGER NOT NULL,
  outcome    TEXT NOT NULL,
  run_id     TEXT NOT NULL DEFAULT '',
  reason     TEXT NOT NULL DEFAULT '',
  manual     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX fires_by_schedule ON fires (schedule, planned_at);
)sql",
    // 6: honest statistics and recovery: a sample's method step; an SLO check judged on too few
    // samples (not_enough_data, min_samples; each measure's sample count is in its JSON as
    // "samples"); a step.recovered event's time to recover (nanoseconds).
    R"sql(
ALTER TABLE samples ADD COLUMN step TEXT NOT NULL DEFAULT '';
ALTER TABLE slo_checks ADD COLUMN not_enough_data INTEGER NOT NULL DEFAULT 0;
ALTER TABLE slo_checks ADD COLUMN min_samples INTEGER NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN recovery_ns INTEGER;
)sql",
    // 7: a fault.* event's agent id; fault.ended's fault kind, end reason and applied time (µs).
    R"sql(
ALTER TABLE events ADD COLUMN agent_id TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN fault_kind TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN end_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN applied_at INTEGER;
)sql",
};

// This process as a run's owner: "HOSTNAME BOOT_ID PID STARTTIME" (STARTTIME: field 22 of
// /proc/PID/stat, clock ticks since boot), so that a pid reused after a reboot or by another
// process is not taken for it.
std::string processStart(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');  // the comm field may hold spaces and parentheses
  if (close == std::string::npos) {
    return "";
  }
  std::istringstream fields(stat.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22 && fields >> field; ++i) {
    if (i == 22) {
      return field;
    }
  }
  return "";
}

std::string bootId() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(in, id);
  return id;
}

std::string hostName() {
  std::array<char, 256> name{};
  return ::gethostname(name.data(), name.size() - 1) == 0 ? std::string(name.data()) : std::string();
}

std::string ownerOf(pid_t pid) {
  return fmt::format("{} {} {} {}", hostName(), bootId(), pid, processStart(pid));
}

// Whether the owner of an unfinished run is gone: no owner recorded (a file from before version
// 4), this host rebooted since, or its process is no longer running. A run another host owns is
// not judged (false): that host's controller finishes it.
bool ownerGone(const std::string& owner) {
  std::istringstream in(owner);
  std::string host, boot, start;
  long pid = 0;
  if (!(in >> host >> boot >> pid)) {
    return true;
  }
  in >> start;
  if (host != hostName()) {
    return false;
  }
  if (boot != bootId()) {
    return true;
  }
  return processStart(static_cast<pid_t>(pid)) != start || start.empty();
}

constexpr int kSchemaVersion = static_cast<int>(kMigrations.size());
constexpr int kBusyTimeoutMs = 5000;
constexpr unsigned kDefaultListLimit = 20;
// Runs pruneRuns() deletes per transaction.
constexpr std::int64_t kPruneBatch = 256;

// SQLite result codes (extended ones included) as std::error_code.
class SqliteCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "sqlite"; }
  std::string message(int code) const override { return sqlite3_errstr(code); }
  std::error_condition default_error_condition(int code) const noexcept override {
    switch (code & 0xff) {
      case SQLITE_BUSY:
      case SQLITE_LOCKED:
        return std::errc::device_or_resource_busy;
      case SQLITE_NOMEM:
        return std::errc::not_enough_memory;
      case SQLITE_FULL:
        return std::errc::no_space_on_device;
      case SQLITE_PERM:
      case SQLITE_AUTH:
        return std::errc::permission_denied;
      case SQLITE_READONLY:
        return std::errc::read_only_file_system;
      case SQLITE_IOERR:
        return std::errc::io_error;
      default:
        return {code, *this};
    }
  }
};

const std::error_category& sqliteCategory() {
  static const SqliteCategory category;
  return category;
}

// The connection's last error message, with the OS error when SQLite saw one; empty when it
// only repeats the result code's text (std::system_error appends that one).
std::string detailOf(sqlite3* db, int rc) {
  std::string detail;
  if (db != nullptr) {
    const char* msg = sqlite3_errmsg(db);
    if (msg != nullptr && std::strcmp(msg, sqlite3_errstr(rc)) != 0) {
      detail = msg;
    }
    const int osErrno = sqlite3_system_errno(db);
    if (osErrno != 0) {
      detail += fmt::format("{}{}", detail.empty() ? "" : ", ", std::generic_category().message(osErrno));
    }
  }
  return detail;
}

std::system_error sqliteError(sqlite3* db, int rc, std::string_view context) {
  const std::string detail = detailOf(db, rc);
  return std::system_error(std::error_code(rc, sqliteCategory()),
                           detail.empty() ? std::string(context) : fmt::format("{} ({})", context, detail));
}

struct DbCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using Db = std::unique_ptr<sqlite3, DbCloser>;

struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};
using Stmt = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// Resets a prepared statement and its bindings when the scope ends, however it ends.
class StmtUse {
 public:
  explicit StmtUse(const Stmt& stmt) : stmt_(stmt.get()) {}
  ~StmtUse() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  StmtUse(const StmtUse&) = delete;
  StmtUse& operator=(const StmtUse&) = delete;
  sqlite3_stmt* get() const { return stmt_; }

 private:
  sqlite3_stmt* stmt_;
};

std::int64_t toMicros(const google::protobuf::Timestamp& t) {
  return TimeUtil::TimestampToMicroseconds(t);
}

google::protobuf::Timestamp fromMicros(std::int64_t us) {
  return TimeUtil::MicrosecondsToTimestamp(us);
}

// Verdicts are stored as words so that ad-hoc sqlite3 queries read well: the enum value's name
// without "VERDICT_", in lower case (held, violated, not_steady, aborted, error); NULL = none yet.
// Derived from the proto, so a verdict added there is stored without a change here.
std::optional<std::string> storedVerdict(v1::Verdict verdict) {
  if (verdict == v1::VERDICT_UNSPECIFIED || !v1::Verdict_IsValid(verdict)) {
    return std::nullopt;
  }
  std::string word = v1::Verdict_Name(verdict).substr(std::string_view("VERDICT_").size());
  std::transform(word.begin(), word.end(), word.begin(), [](unsigned char c) { return std::tolower(c); });
  return word;
}

v1::Verdict verdictFromWord(std::string_view word) {
  if (word.empty()) {
    return v1::VERDICT_UNSPECIFIED;
  }
  std::string name = "VERDICT_";
  std::transform(word.begin(), word.end(), std::back_inserter(name), [](unsigned char c) { return std::toupper(c); });
  v1::Verdict verdict = v1::VERDICT_UNSPECIFIED;
  if (!v1::Verdict_Parse(name, &verdict)) {
    spdlog::warn("record store: unknown verdict '{}' read as unspecified", word);
    return v1::VERDICT_UNSPECIFIED;
  }
  return verdict;
}

std::string columnText(sqlite3_stmt* stmt, int col) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, col));
  if (text == nullptr) {
    return {};
  }
  return std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(stmt, col)));
}

std::system_error notRecordFile(const std::string& path, std::string_view why) {
  return std::system_error(std::make_error_code(std::errc::invalid_argument),
                           fmt::format("{} is not a faultline record file ({})", path, why));
}

// What the first bytes of a file say about it (https://sqlite.org/fileformat2.html#the_database_header).
struct FileHeader {
  bool sqlite = false;  // starts with "SQLite format 3\0", or is empty (SQLite reads that as an empty database)
  bool wal = false;     // in WAL mode: file format version numbers (bytes 18 and 19) are 2
};

// nullopt when the file cannot be read here (SQLite then reports why).
std::optional<FileHeader> readHeader(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return std::nullopt;
  }
  std::array<char, 20> bytes{};
  in.read(bytes.data(), bytes.size());
  const auto got = static_cast<std::size_t>(in.gcount());
  constexpr std::string_view kMagic("SQLite format 3\0", 16);
  FileHeader header;
  header.sqlite = got == 0 || (got >= kMagic.size() && std::string_view(bytes.data(), kMagic.size()) == kMagic);
  header.wal = got == bytes.size() && header.sqlite && bytes[18] == 2 && bytes[19] == 2;
  return header;
}

// A file: URI for path (absolute, percent-encoded) with the given query.
std::string fileUri(const std::string& path, std::string_view query) {
  std::string uri = "file://";
  for (const unsigned char c : std::filesystem::absolute(path).string()) {
    if (std::isalnum(c) || c == '/' || c == '-' || c == '.' || c == '_' || c == '~') {
      uri += static_cast<char>(c);
    } else {
      uri += fmt::format("%{:02X}", c);
    }
  }
  return fmt::format("{}?{}", uri, query);
}

class SqliteRecordStore final : public RecordStore, public ScheduleStore {
 public:
  SqliteRecordStore(std::string path, StoreMode mode) : path_(std::move(path)), readOnly_(mode == StoreMode::ReadOnly) {
    if (readOnly_) {
      openReadOnly();
    } else {
      createPrivate();
      open(path_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
      refuseForeign();
      quickCheck();
      exec("PRAGMA foreign_keys = ON", "cannot enable foreign keys");
      // A new, empty file: pages freed by retention (pruneRuns) go back to the file system with
      // PRAGMA incremental_vacuum. It only takes effect before the first table is created; an
      // older file keeps its mode and reuses its free pages for new runs.
      exec("PRAGMA auto_vacuum = INCREMENTAL", "cannot set auto_vacuum");
      setWal();
      migrate();
    }

    insertRun_ = prepare(
        "INSERT INTO runs (run_id, experiment, file_sha256, trigger, started_at, owner, schedule, fire_at) VALUES (?1, "
        "?2, ?3, ?4, ?5, ?6, ?7, ?8)");
    insertEvent_ = prepare(
        "INSERT INTO events (run_id, seq, at, host, kind, message, verdict, start_at, skew_ns, fault_id, recovery_ns, "
        "agent_id, fault_kind, end_reason, applied_at) VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE "
        "run_id = ?1), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)");
    insertSample_ = prepare(
        "INSERT INTO samples (run_id, at, probe, phase, ok, latency_ms, detail, value, kind, guard, step) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
    insertSloCheck_ = prepare(
        "INSERT INTO slo_checks (run_id, at, slo, probe, phase, ok, samples, burn_rate, objective, measures, "
        "not_enough_data, min_samples) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)");
    selectSloChecks_ = prepare(
        "SELECT at, slo, probe, phase, ok, samples, burn_rate, objective, measures, not_enough_data, min_samples "
        "FROM slo_checks "
        "WHERE run_id = ?1 ORDER BY at, rowid");
    finishRun_ = prepare("UPDATE runs SET ended_at = ?2, verdict = ?3, reason = ?4 WHERE run_id = ?1");
    selectRun_ = prepare(
        "SELECT run_id, experiment, file_sha256, trigger, started_at, ended_at, verdict, reason, schedule, fire_at "
        "FROM runs WHERE run_id = ?1");
    selectEvents_ = prepare(
        "SELECT at, host, kind, message, verdict, start_at, skew_ns, fault_id, recovery_ns, agent_id, fault_kind, "
        "end_reason, applied_at FROM events WHERE run_id = ?1 ORDER BY at, seq");
    selectSamples_ = prepare(
        "SELECT at, probe, phase, ok, latency_ms, detail, value, kind, guard, step FROM samples WHERE run_id = ?1 "
        "ORDER BY at, rowid");
    listRuns_ = prepare(
        "SELECT run_id, experiment, file_sha256, trigger, started_at, ended_at, verdict, reason, schedule, fire_at "
        "FROM runs WHERE (?2 IS NULL OR trigger = ?2) AND (?3 IS NULL OR verdict = ?3) AND (?4 IS NULL OR verdict "
        "IS NULL) AND (?5 IS NULL OR started_at >= ?5) AND (?6 IS NULL OR schedule = ?6) ORDER BY started_at DESC, "
        "rowid DESC LIMIT ?1");
    if (!readOnly_) {
      // Finished runs beyond the ?1 newest (-1: no count limit), or that ended before ?2; oldest first.
      selectPrunable_ = prepare(
          "SELECT run_id FROM runs WHERE ended_at IS NOT NULL AND (ended_at < ?2 OR (?1 >= 0 AND run_id NOT IN "
          "(SELECT run_id FROM runs ORDER BY started_at DESC, rowid DESC LIMIT ?1))) ORDER BY started_at, rowid "
          "LIMIT ?3");
      deleteEvents_ = prepare("DELETE FROM events WHERE run_id = ?1");
      deleteSamples_ = prepare("DELETE FROM samples WHERE run_id = ?1");
      deleteSloChecks_ = prepare("DELETE FROM slo_checks WHERE run_id = ?1");
      deleteRun_ = prepare("DELETE FROM runs WHERE run_id = ?1");
      // A deleted run's fire stays (the scheduler's memory of what it fired: deleting it made a
      // restart run that fire again), without the run id, which missUnstartedFires skips.
      detachFires_ =
          prepare("UPDATE fires SET run_id = '', reason = 'its run was deleted by retention' WHERE run_id = ?1");
      beginImmediate_ = prepare("BEGIN IMMEDIATE");
    }
    selectUnfinished_ = prepare("SELECT run_id, owner FROM runs WHERE ended_at IS NULL ORDER BY started_at, rowid");
    begin_ = prepare("BEGIN");
    commit_ = prepare("COMMIT");
    rollback_ = prepare("ROLLBACK");
  }

  void createRun(const v1::Run& run) override {
    refuseWrite("createRun", run.run_id());
    std::lock_guard lock(mutex_);
    StmtUse use(insertRun_);
    bindText(use, 1, run.run_id());
    bindText(use, 2, run.experiment());
    bindText(use, 3, run.file_sha256());
    bindText(use, 4, run.trigger());
    bindInt(use, 5, toMicros(run.started_at()));
    bindText(use, 6, owner_);
    bindText(use, 7, run.schedule());
    if (run.has_fire_at()) {
      bindInt(use, 8, toMicros(run.fire_at()));
    } else {
      check(sqlite3_bind_null(use.get(), 8), "bind");
    }
    stepWrite(use, "createRun", run.run_id());
  }

  void addEvent(const v1::RunEvent& event) override {
    refuseWrite("addEvent", event.run_id());
    std::lock_guard lock(mutex_);
    StmtUse use(insertEvent_);
    bindText(use, 1, event.run_id());
    bindInt(use, 2, toMicros(event.at()));
    bindText(use, 3, event.host());
    bindText(use, 4, event.kind());
    bindText(use, 5, event.message());
    bindVerdict(use, 6, event.verdict());
    if (event.has_start_at()) {
      bindInt(use, 7, toMicros(event.start_at()));
    } else {
      check(sqlite3_bind_null(use.get(), 7), "bind");
    }
    if (event.has_skew()) {
      bindInt(use, 8, TimeUtil::DurationToNanoseconds(event.skew()));
    } else {
      check(sqlite3_bind_null(use.get(), 8), "bind");
    }
    bindText(use, 9, event.fault_id());
    if (event.has_recovery()) {
      bindInt(use, 10, TimeUtil::DurationToNanoseconds(event.recovery()));
    } else {
      check(sqlite3_bind_null(use.get(), 10), "bind");
    }
    bindText(use, 11, event.agent_id());
    bindText(use, 12, event.fault_kind());
    bindText(use, 13, event.end_reason());
    if (event.has_applied_at()) {
      bindInt(use, 14, toMicros(event.applied_at()));
    } else {
      check(sqlite3_bind_null(use.get(), 14), "bind");
    }
    stepWrite(use, "addEvent", event.run_id());
  }

  void addSample(const std::string& runId, const v1::ProbeSample& sample) override {
    refuseWrite("addSample", runId);
    std::lock_guard lock(mutex_);
    StmtUse use(insertSample_);
    bindText(use, 1, runId);
    bindInt(use, 2, toMicros(sample.at()));
    bindText(use, 3, sample.probe());
    bindText(use, 4, sample.phase());
    bindInt(use, 5, sample.ok() ? 1 : 0);
    check(sqlite3_bind_double(use.get(), 6, sample.latency_ms()), "bind");
    bindText(use, 7, sample.detail());
    if (sample.has_value()) {
      check(sqlite3_bind_double(use.get(), 8, sample.value()), "bind");
    } else {
      check(sqlite3_bind_null(use.get(), 8), "bind");
    }
    bindText(use, 9, sample.kind());
    bindInt(use, 10, sample.guard() ? 1 : 0);
    bindText(use, 11, sample.step());
    stepWrite(use, "addSample", runId);
  }

  void addSloCheck(const std::string& runId, const v1::SloCheck& c) override {
    refuseWrite("addSloCheck", runId);
    nlohmann::json measures = nlohmann::json::array();
    for (const auto& m : c.measures()) {
      measures.push_back({{"sli", m.sli()},
                          {"value", m.value()},
                          {"comparison", m.comparison()},
                          {"threshold", m.threshold()},
                          {"ok", m.ok()},
                          {"samples", m.samples()}});
    }
    const std::string measuresText = measures.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    std::lock_guard lock(mutex_);
    StmtUse use(insertSloCheck_);
    bindText(use, 1, runId);
    bindInt(use, 2, toMicros(c.at()));
    bindText(use, 3, c.slo());
    bindText(use, 4, c.probe());
    bindText(use, 5, c.phase());
    bindInt(use, 6, c.ok() ? 1 : 0);
    bindInt(use, 7, c.samples());
    check(sqlite3_bind_double(use.get(), 8, c.burn_rate()), "bind");
    bindText(use, 9, c.objective());
    bindText(use, 10, measuresText);
    bindInt(use, 11, c.not_enough_data() ? 1 : 0);
    bindInt(use, 12, c.min_samples());
    stepWrite(use, "addSloCheck", runId);
  }

  void finishRun(const std::string& runId, v1::Verdict verdict, const std::string& reason,
                 const google::protobuf::Timestamp& endedAt) override {
    refuseWrite("finishRun", runId);
    std::lock_guard lock(mutex_);
    StmtUse use(finishRun_);
    bindText(use, 1, runId);
    bindInt(use, 2, toMicros(endedAt));
    bindVerdict(use, 3, verdict);
    bindText(use, 4, reason);
    stepWrite(use, "finishRun", runId);
    if (sqlite3_changes(db_.get()) == 0) {
      spdlog::error("record store {}: finishRun: no run {}", path_, runId);
      throw std::system_error(std::make_error_code(std::errc::no_such_file_or_directory),
                              fmt::format("record store {}: finishRun: no run {}", path_, runId));
    }
  }

  tl::expected<v1::Run, std::error_code> getRun(const std::string& runId) override {
    std::lock_guard lock(mutex_);
    ReadTransaction txn(*this);  // one snapshot for the run, its events and its samples
    v1::Run run;
    {
      StmtUse use(selectRun_);
      bindText(use, 1, runId);
      if (!stepRow(use, "getRun")) {
        return tl::unexpected(std::make_error_code(std::errc::no_such_file_or_directory));
      }
      run = readRun(use.get());
    }
    {
      StmtUse use(selectEvents_);
      bindText(use, 1, runId);
      while (stepRow(use, "getRun")) {
        v1::RunEvent* event = run.add_events();
        event->set_run_id(runId);
        *event->mutable_at() = fromMicros(sqlite3_column_int64(use.get(), 0));
        event->set_host(columnText(use.get(), 1));
        event->set_kind(columnText(use.get(), 2));
        event->set_message(columnText(use.get(), 3));
        event->set_verdict(verdictFromWord(columnText(use.get(), 4)));
        if (sqlite3_column_type(use.get(), 5) != SQLITE_NULL) {
          *event->mutable_start_at() = fromMicros(sqlite3_column_int64(use.get(), 5));
        }
        if (sqlite3_column_type(use.get(), 6) != SQLITE_NULL) {
          *event->mutable_skew() = TimeUtil::NanosecondsToDuration(sqlite3_column_int64(use.get(), 6));
        }
        event->set_fault_id(columnText(use.get(), 7));
        if (sqlite3_column_type(use.get(), 8) != SQLITE_NULL) {
          *event->mutable_recovery() = TimeUtil::NanosecondsToDuration(sqlite3_column_int64(use.get(), 8));
        }
        event->set_agent_id(columnText(use.get(), 9));
        event->set_fault_kind(columnText(use.get(), 10));
        event->set_end_reason(columnText(use.get(), 11));
        if (sqlite3_column_type(use.get(), 12) != SQLITE_NULL) {
          *event->mutable_applied_at() = fromMicros(sqlite3_column_int64(use.get(), 12));
        }
      }
    }
    {
      StmtUse use(selectSamples_);
      bindText(use, 1, runId);
      while (stepRow(use, "getRun")) {
        v1::ProbeSample* sample = run.add_samples();
        *sample->mutable_at() = fromMicros(sqlite3_column_int64(use.get(), 0));
        sample->set_probe(columnText(use.get(), 1));
        sample->set_phase(columnText(use.get(), 2));
        sample->set_ok(sqlite3_column_int(use.get(), 3) != 0);
        sample->set_latency_ms(sqlite3_column_double(use.get(), 4));
        sample->set_detail(columnText(use.get(), 5));
        if (sqlite3_column_type(use.get(), 6) != SQLITE_NULL) {
          sample->set_value(sqlite3_column_double(use.get(), 6));
        }
        sample->set_kind(columnText(use.get(), 7));
        sample->set_guard(sqlite3_column_int(use.get(), 8) != 0);
        sample->set_step(columnText(use.get(), 9));
      }
    }
    {
      StmtUse use(selectSloChecks_);
      bindText(use, 1, runId);
      while (stepRow(use, "getRun")) {
        v1::SloCheck* c = run.add_slo_checks();
        *c->mutable_at() = fromMicros(sqlite3_column_int64(use.get(), 0));
        c->set_slo(columnText(use.get(), 1));
        c->set_probe(columnText(use.get(), 2));
        c->set_phase(columnText(use.get(), 3));
        c->set_ok(sqlite3_column_int(use.get(), 4) != 0);
        c->set_samples(static_cast<uint32_t>(sqlite3_column_int64(use.get(), 5)));
        c->set_burn_rate(sqlite3_column_double(use.get(), 6));
        c->set_objective(columnText(use.get(), 7));
        const auto measures = nlohmann::json::parse(columnText(use.get(), 8), nullptr, false);
        if (measures.is_array()) {
          for (const auto& m : measures) {
            if (!m.is_object()) {
              continue;
            }
            auto* out = c->add_measures();
            out->set_sli(m.value("sli", ""));
            out->set_value(m.value("value", 0.0));
            out->set_comparison(m.value("comparison", ""));
            out->set_threshold(m.value("threshold", 0.0));
            out->set_ok(m.value("ok", false));
            out->set_samples(m.value("samples", 0U));
          }
        }
        c->set_not_enough_data(sqlite3_column_int(use.get(), 9) != 0);
        c->set_min_samples(static_cast<uint32_t>(sqlite3_column_int64(use.get(), 10)));
      }
    }
    txn.commit();
    return run;
  }

  std::vector<std::string> finishInterruptedRuns(const std::string& reason,
                                                 const google::protobuf::Timestamp& endedAt) override {
    refuseWrite("finishInterruptedRuns", "");
    std::vector<std::string> ids;
    {
      std::lock_guard lock(mutex_);
      StmtUse use(selectUnfinished_);
      while (stepRow(use, "finishInterruptedRuns")) {
        // Another live controller's (or run --local's) run on this file is not interrupted.
        if (ownerGone(columnText(use.get(), 1))) {
          ids.push_back(columnText(use.get(), 0));
        }
      }
    }
    for (const auto& id : ids) {
      finishRun(id, v1::VERDICT_ERROR, reason, endedAt);
      v1::RunEvent done;
      done.set_run_id(id);
      *done.mutable_at() = endedAt;
      done.set_kind("run.finished");
      done.set_message("verdict: error: " + reason);
      done.set_verdict(v1::VERDICT_ERROR);
      addEvent(done);
    }
    return ids;
  }

  using RecordStore::listRuns;
  std::vector<v1::Run> listRuns(const RunFilter& filter) override {
    std::lock_guard lock(mutex_);
    StmtUse use(listRuns_);
    bindInt(use, 1, filter.limit == 0 ? kDefaultListLimit : filter.limit);
    // NULL parameters match every run (the statement's "?N IS NULL OR ...").
    if (!filter.trigger.empty()) {
      bindText(use, 2, filter.trigger);
    }
    if (filter.verdict) {
      if (const auto word = storedVerdict(*filter.verdict)) {
        bindText(use, 3, *word);
      } else {
        bindInt(use, 4, 1);  // no verdict yet: still running
      }
    }
    if (filter.since) {
      bindInt(use, 5, toMicros(*filter.since));
    }
    if (!filter.schedule.empty()) {
      bindText(use, 6, filter.schedule);
    }
    std::vector<v1::Run> runs;
    while (stepRow(use, "listRuns")) {
      runs.push_back(readRun(use.get()));
    }
    return runs;
  }

  std::uint64_t pruneRuns(const Retention& retention, const google::protobuf::Timestamp& now) override {
    refuseWrite("pruneRuns", "");
    if (retention.keepsAll()) {
      return 0;
    }
    std::lock_guard lock(mutex_);
    const std::int64_t keep = retention.runs == 0 ? -1 : static_cast<std::int64_t>(retention.runs);
    const std::int64_t cutoff =
        retention.age.count() == 0
            ? std::numeric_limits<std::int64_t>::min()
            : toMicros(now) - std::chrono::duration_cast<std::chrono::microseconds>(retention.age).count();
    std::uint64_t deleted = 0;
    for (;;) {
      std::vector<std::string> ids;
      {
        StmtUse use(selectPrunable_);
        bindInt(use, 1, keep);
        bindInt(use, 2, cutoff);
        bindInt(use, 3, kPruneBatch);
        while (stepRow(use, "pruneRuns")) {
          ids.push_back(columnText(use.get(), 0));
        }
      }
      if (ids.empty()) {
        break;
      }
      // Each run whole, every batch in one transaction: a crash leaves a run complete or gone.
      stepControl(beginImmediate_);
      try {
        for (const auto& id : ids) {
          for (const Stmt* stmt : {&deleteEvents_, &deleteSamples_, &deleteSloChecks_, &detachFires_, &deleteRun_}) {
            StmtUse use(*stmt);
            bindText(use, 1, id);
            stepWrite(use, "pruneRuns", id);
          }
        }
        stepControl(commit_);
      } catch (...) {
        StmtUse use(rollback_);
        sqlite3_step(use.get());
        throw;
      }
      deleted += ids.size();
      if (ids.size() < static_cast<std::size_t>(kPruneBatch)) {
        break;
      }
    }
    if (deleted > 0 && autoVacuumMode() == 2) {
      // INCREMENTAL: moves free pages to the end and truncates them; cheap next to a VACUUM
      // (which rewrites the whole file, needs its size again on disk and blocks every write).
      exec("PRAGMA incremental_vacuum", "cannot return freed pages (incremental_vacuum)");
    }
    return deleted;
  }

  // --- ScheduleStore ---

  ApplyResult applySchedule(const v1::Schedule& s, const google::protobuf::Timestamp& now) override {
    refuseWrite("applySchedule", s.name());
    auto existing = getSchedule(s.name());
    if (existing && sameSpec(*existing, s)) {
      return ApplyResult::kUnchanged;
    }
    std::lock_guard lock(mutex_);
    Stmt stmt = prepare(
        "INSERT INTO schedules (name, experiment, file_name, experiment_sha256, cron, timezone, variables, "
        "concurrency, starting_deadline_ms, jitter_ms, blackouts, only_if, paused, created_at, updated_at) VALUES "
        "(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, ?13, ?13) ON CONFLICT (name) DO UPDATE SET "
        "experiment = ?2, file_name = ?3, experiment_sha256 = ?4, cron = ?5, timezone = ?6, variables = ?7, "
        "concurrency = ?8, starting_deadline_ms = ?9, jitter_ms = ?10, blackouts = ?11, only_if = ?12, "
        "updated_at = ?13");
    StmtUse use(stmt);
    bindText(use, 1, s.name());
    check(sqlite3_bind_blob64(use.get(), 2, s.experiment().data(), s.experiment().size(), SQLITE_TRANSIENT), "bind");
    bindText(use, 3, s.file_name());
    bindText(use, 4, s.experiment_sha256());
    bindText(use, 5, s.cron());
    bindText(use, 6, s.timezone());
    nlohmann::json vars = nlohmann::json::object();
    for (const auto& [k, v] : s.variables()) {
      vars[k] = v;
    }
    bindText(use, 7, vars.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    bindText(use, 8, s.concurrency().empty() ? "forbid" : s.concurrency());
    bindInt(use, 9, TimeUtil::DurationToMilliseconds(s.starting_deadline()));
    bindInt(use, 10, TimeUtil::DurationToMilliseconds(s.jitter()));
    bindText(use, 11, stringsJson(s.blackouts()));
    bindText(use, 12, stringsJson(s.only_if()));
    bindInt(use, 13, toMicros(now));
    stepWrite(use, "applySchedule", s.name());
    return existing ? ApplyResult::kUpdated : ApplyResult::kCreated;
  }

  std::optional<v1::Schedule> getSchedule(const std::string& name) override {
    auto all = selectSchedules(name);
    if (all.empty()) {
      return std::nullopt;
    }
    return std::move(all.front());
  }

  std::vector<v1::Schedule> listSchedules() override { return selectSchedules(std::nullopt); }

  bool setPaused(const std::string& name, bool paused, const google::protobuf::Timestamp& now) override {
    refuseWrite("setPaused", name);
    std::lock_guard lock(mutex_);
    Stmt stmt = prepare("UPDATE schedules SET paused = ?2, updated_at = ?3 WHERE name = ?1");
    StmtUse use(stmt);
    bindText(use, 1, name);
    bindInt(use, 2, paused ? 1 : 0);
    bindInt(use, 3, toMicros(now));
    stepWrite(use, "setPaused", name);
    return sqlite3_changes(db_.get()) > 0;
  }

  bool deleteSchedule(const std::string& name) override {
    refuseWrite("deleteSchedule", name);
    std::lock_guard lock(mutex_);
    exec("BEGIN IMMEDIATE", "deleteSchedule");
    try {
      Stmt del = prepare("DELETE FROM schedules WHERE name = ?1");
      StmtUse use(del);
      bindText(use, 1, name);
      stepWrite(use, "deleteSchedule", name);
      const bool found = sqlite3_changes(db_.get()) > 0;
      Stmt fires = prepare("DELETE FROM fires WHERE schedule = ?1");
      StmtUse useFires(fires);
      bindText(useFires, 1, name);
      stepWrite(useFires, "deleteSchedule", name);
      exec("COMMIT", "deleteSchedule");
      return found;
    } catch (...) {
      exec("ROLLBACK", "deleteSchedule");
      throw;
    }
  }

  int64_t recordFire(const v1::ScheduleFire& f, bool manual) override {
    refuseWrite("recordFire", f.schedule());
    std::lock_guard lock(mutex_);
    Stmt stmt = prepare(
        "INSERT INTO fires (schedule, planned_at, fire_at, outcome, run_id, reason, manual) VALUES (?1, ?2, ?3, ?4, "
        "?5, ?6, ?7)");
    StmtUse use(stmt);
    bindText(use, 1, f.schedule());
    bindInt(use, 2, toMicros(f.planned_at()));
    bindInt(use, 3, toMicros(f.fire_at()));
    bindText(use, 4, f.outcome());
    bindText(use, 5, f.run_id());
    bindText(use, 6, f.reason());
    bindInt(use, 7, manual ? 1 : 0);
    stepWrite(use, "recordFire", f.schedule());
    return sqlite3_last_insert_rowid(db_.get());
  }

  void setFireOutcome(int64_t id, const std::string& outcome, const std::string& reason) override {
    refuseWrite("setFireOutcome", "");
    std::lock_guard lock(mutex_);
    Stmt stmt = prepare("UPDATE fires SET outcome = ?2, reason = ?3 WHERE id = ?1");
    StmtUse use(stmt);
    bindInt(use, 1, id);
    bindText(use, 2, outcome);
    bindText(use, 3, reason);
    stepWrite(use, "setFireOutcome", "");
  }

  std::optional<google::protobuf::Timestamp> lastPlanned(const std::string& name) override {
    std::lock_guard lock(mutex_);
    Stmt stmt = prepare("SELECT MAX(planned_at) FROM fires WHERE schedule = ?1 AND manual = 0");
    StmtUse use(stmt);
    bindText(use, 1, name);
    if (!stepRow(use, "lastPlanned") || sqlite3_column_type(use.get(), 0) == SQLITE_NULL) {
      return std::nullopt;
    }
    return fromMicros(sqlite3_column_int64(use.get(), 0));
  }

  std::vector<v1::ScheduleFire> listFires(const std::string& name, unsigned limit) override {
    std::lock_guard lock(mutex_);
    Stmt stmt = prepare(
        "SELECT f.id, f.schedule, f.planned_at, f.fire_at, f.outcome, f.run_id, f.reason, r.verdict FROM fires f "
        "LEFT JOIN runs r ON r.run_id = f.run_id AND f.run_id != '' WHERE f.schedule = ?1 ORDER BY f.fire_at DESC, "
        "f.id DESC LIMIT ?2");
    StmtUse use(stmt);
    bindText(use, 1, name);
    bindInt(use, 2, limit == 0 ? kDefaultListLimit : limit);
    std::vector<v1::ScheduleFire> fires;
    while (stepRow(use, "listFires")) {
      v1::ScheduleFire f;
      f.set_id(sqlite3_column_int64(use.get(), 0));
      f.set_schedule(columnText(use.get(), 1));
      *f.mutable_planned_at() = fromMicros(sqlite3_column_int64(use.get(), 2));
      *f.mutable_fire_at() = fromMicros(sqlite3_column_int64(use.get(), 3));
      f.set_outcome(columnText(use.get(), 4));
      f.set_run_id(columnText(use.get(), 5));
      f.set_reason(columnText(use.get(), 6));
      f.set_verdict(verdictFromWord(columnText(use.get(), 7)));
      fires.push_back(std::move(f));
    }
    return fires;
  }

  unsigned missUnstartedFires(const std::string& reason) override {
    refuseWrite("missUnstartedFires", "");
    std::lock_guard lock(mutex_);
    Stmt stmt = prepare(
        "UPDATE fires SET outcome = 'missed', reason = ?1 WHERE outcome = 'started' AND run_id != '' AND run_id NOT "
        "IN (SELECT run_id FROM runs)");
    StmtUse use(stmt);
    bindText(use, 1, reason);
    stepWrite(use, "missUnstartedFires", "");
    return static_cast<unsigned>(sqlite3_changes(db_.get()));
  }

  std::vector<v1::Run> listRunsOfSchedule(const std::string& name, unsigned limit) override {
    std::lock_guard lock(mutex_);
    Stmt stmt = prepare(
        "SELECT run_id, experiment, file_sha256, trigger, started_at, ended_at, verdict, reason, schedule, fire_at "
        "FROM runs WHERE schedule = ?1 ORDER BY started_at DESC, rowid DESC LIMIT ?2");
    StmtUse use(stmt);
    bindText(use, 1, name);
    bindInt(use, 2, limit == 0 ? kDefaultListLimit : limit);
    std::vector<v1::Run> runs;
    while (stepRow(use, "listRunsOfSchedule")) {
      runs.push_back(readRun(use.get()));
    }
    return runs;
  }

 private:
  static std::string stringsJson(const google::protobuf::RepeatedPtrField<std::string>& items) {
    nlohmann::json a = nlohmann::json::array();
    for (const auto& i : items) {
      a.push_back(i);
    }
    return a.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }

  static void readStrings(const std::string& text, google::protobuf::RepeatedPtrField<std::string>* out) {
    const auto a = nlohmann::json::parse(text, nullptr, false);
    if (a.is_array()) {
      for (const auto& i : a) {
        if (i.is_string()) {
          out->Add(i.get<std::string>());
        }
      }
    }
  }

  // The fields a caller gives, compared.
  static bool sameSpec(const v1::Schedule& a, const v1::Schedule& b) {
    v1::Schedule x = a;
    v1::Schedule y = b;
    for (auto* s : {&x, &y}) {
      s->clear_paused();
      s->clear_created_at();
      s->clear_updated_at();
      // Where the file was read from says nothing of what runs: the same file applied from
      // another directory (a CI job, Argo CD) is unchanged (fresh-user trial, issue 16).
      s->clear_file_name();
      if (s->concurrency().empty()) {
        s->set_concurrency("forbid");
      }
      if (s->has_starting_deadline() && TimeUtil::DurationToMilliseconds(s->starting_deadline()) == 0) {
        s->clear_starting_deadline();
      }
      if (s->has_jitter() && TimeUtil::DurationToMilliseconds(s->jitter()) == 0) {
        s->clear_jitter();
      }
    }
    return google::protobuf::util::MessageDifferencer::Equals(x, y);
  }

  std::vector<v1::Schedule> selectSchedules(const std::optional<std::string>& name) {
    std::lock_guard lock(mutex_);
    Stmt stmt = prepare(fmt::format(
        "SELECT name, experiment, file_name, experiment_sha256, cron, timezone, variables, concurrency, "
        "starting_deadline_ms, jitter_ms, blackouts, only_if, paused, created_at, updated_at FROM schedules {} ORDER "
        "BY name",
        name ? "WHERE name = ?1" : ""));
    StmtUse use(stmt);
    if (name) {
      bindText(use, 1, *name);
    }
    std::vector<v1::Schedule> out;
    while (stepRow(use, "getSchedule")) {
      sqlite3_stmt* st = use.get();
      v1::Schedule s;
      s.set_name(columnText(st, 0));
      const auto* blob = static_cast<const char*>(sqlite3_column_blob(st, 1));
      s.set_experiment(blob ? std::string(blob, static_cast<size_t>(sqlite3_column_bytes(st, 1))) : "");
      s.set_file_name(columnText(st, 2));
      s.set_experiment_sha256(columnText(st, 3));
      s.set_cron(columnText(st, 4));
      s.set_timezone(columnText(st, 5));
      const auto vars = nlohmann::json::parse(columnText(st, 6), nullptr, false);
      if (vars.is_object()) {
        for (const auto& [k, v] : vars.items()) {
          if (v.is_string()) {
            (*s.mutable_variables())[k] = v.get<std::string>();
          }
        }
      }
      s.set_concurrency(columnText(st, 7));
      if (const auto ms = sqlite3_column_int64(st, 8); ms != 0) {
        *s.mutable_starting_deadline() = TimeUtil::MillisecondsToDuration(ms);
      }
      if (const auto ms = sqlite3_column_int64(st, 9); ms != 0) {
        *s.mutable_jitter() = TimeUtil::MillisecondsToDuration(ms);
      }
      readStrings(columnText(st, 10), s.mutable_blackouts());
      readStrings(columnText(st, 11), s.mutable_only_if());
      s.set_paused(sqlite3_column_int(st, 12) != 0);
      *s.mutable_created_at() = fromMicros(sqlite3_column_int64(st, 13));
      *s.mutable_updated_at() = fromMicros(sqlite3_column_int64(st, 14));
      out.push_back(std::move(s));
    }
    return out;
  }

  // A deferred read transaction, rolled back if not committed (on an exception).
  class ReadTransaction {
   public:
    explicit ReadTransaction(SqliteRecordStore& store) : store_(store) { store_.stepControl(store_.begin_); }
    ~ReadTransaction() {
      if (open_) {
        StmtUse use(store_.rollback_);
        sqlite3_step(use.get());
      }
    }
    ReadTransaction(const ReadTransaction&) = delete;
    ReadTransaction& operator=(const ReadTransaction&) = delete;
    void commit() {
      store_.stepControl(store_.commit_);
      open_ = false;
    }

   private:
    SqliteRecordStore& store_;
    bool open_ = true;
  };

  void open(const std::string& name, int flags) {
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2(name.c_str(), &raw, flags, nullptr);
    db_.reset(raw);  // a handle is returned even on failure and must be closed
    if (rc != SQLITE_OK) {
      throw sqliteError(db_.get(), rc, fmt::format("cannot open record store {}", path_));
    }
    sqlite3_extended_result_codes(db_.get(), 1);
    sqlite3_busy_timeout(db_.get(), kBusyTimeoutMs);
  }

  // Read-only, without creating anything: not the file, and not its -wal and -shm, which a
  // read-only connection to a WAL database otherwise creates (and leaves) when no writer has them.
  void openReadOnly() {
    std::error_code ec;
    const auto status = std::filesystem::status(path_, ec);
    if (status.type() == std::filesystem::file_type::not_found) {
      throw std::system_error(std::make_error_code(std::errc::no_such_file_or_directory),
                              fmt::format("no record file at {}", path_));
    }
    if (status.type() == std::filesystem::file_type::directory) {
      throw std::system_error(std::make_error_code(std::errc::is_a_directory),
                              fmt::format("{} is a directory, not a record file", path_));
    }
    const auto header = readHeader(path_);
    if (header && !header->sqlite) {
      throw notRecordFile(path_, "not an SQLite database");
    }
    // Without PATH-wal no writer has the file open, and the main file holds every committed
    // write: it is read as immutable (no locks, no -shm). A writer that starts meanwhile writes
    // to a new PATH-wal, which this read does not see.
    if (header && header->wal && !std::filesystem::exists(path_ + "-wal", ec)) {
      open(fileUri(path_, "immutable=1"), SQLITE_OPEN_READONLY | SQLITE_OPEN_URI);
    } else {
      open(path_, SQLITE_OPEN_READONLY);
    }
    const Schema schema = readSchema();
    if (!schema.hasRuns) {
      throw notRecordFile(path_, "an SQLite database without faultline's tables");
    }
    if (schema.version > kSchemaVersion) {
      throw newerSchema(schema.version);
    }
    quickCheck();
    if (schema.version < kSchemaVersion || !schema.hasEvents || !schema.hasSamples) {
      if (schema.version == 0) {
        throw notRecordFile(path_, "no faultline schema version");
      }
      throw std::system_error(std::make_error_code(std::errc::not_supported),
                              fmt::format("record file {} has schema version {}, older than this faultline's {}; "
                                          "the controller or `faultline run --local` upgrades it when it opens it",
                                          path_, schema.version, kSchemaVersion));
    }
  }

  // The record file and its -wal and -shm (which SQLite creates with the file's mode) are 0600
  // whatever the umask: a record holds what probes saw and what runs were given. A new file is
  // created so; an existing one readable by others (made before this rule) is narrowed to 0600,
  // with a warning. ":memory:" and URIs are left to SQLite.
  void createPrivate() {
    if (path_.empty() || path_ == ":memory:" || path_.rfind("file:", 0) == 0) {
      return;
    }
    // O_NONBLOCK: a FIFO at the path does not hang the open (SQLite then refuses it).
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd >= 0) {
      const int rc = ::fchmod(fd, 0600);
      const int err = errno;
      ::close(fd);
      if (rc != 0) {
        throw std::system_error(err, std::generic_category(), fmt::format("cannot make {} mode 0600", path_));
      }
      return;
    }
    if (errno != EEXIST) {
      return;  // SQLite's open says why (a missing directory, no permission)
    }
    for (const std::string& file : {path_, path_ + "-wal", path_ + "-shm"}) {
      struct stat st {};
      if (::lstat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || (st.st_mode & 077) == 0 ||
          st.st_uid != ::geteuid()) {
        continue;
      }
      if (::chmod(file.c_str(), 0600) == 0) {
        spdlog::warn("record file {} was mode {:04o}, readable by others; now 0600", file, st.st_mode & 07777);
      } else {
        spdlog::warn("record file {} is mode {:04o}, readable by others, and cannot be made 0600: {}", file,
                     st.st_mode & 07777, std::strerror(errno));
      }
    }
  }

  // PRAGMA quick_check: a damaged file (a torn write, bytes overwritten) is refused at open,
  // before anything is written to it, with what SQLite found and what to do.
  void quickCheck() {
    std::string found;
    int rows = 0;
    sqlite3_stmt* raw = nullptr;
    int rc = sqlite3_prepare_v2(db_.get(), "PRAGMA quick_check(20)", -1, &raw, nullptr);
    Stmt stmt(raw);
    if (rc == SQLITE_OK) {
      while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW) {
        const std::string line = columnText(stmt.get(), 0);
        if (line != "ok" && rows++ < 5) {
          found += (found.empty() ? "" : "; ") + line;
        }
      }
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK) {
      const std::string detail = detailOf(db_.get(), rc);
      found +=
          (found.empty() ? "" : "; ") + std::string(sqlite3_errstr(rc)) + (detail.empty() ? "" : " (" + detail + ")");
    }
    if (found.empty()) {
      return;
    }
    throw std::system_error(
        std::error_code(SQLITE_CORRUPT, sqliteCategory()),
        fmt::format("record file {} is damaged: SQLite's quick_check found: {}. Nothing was changed. Restore it from "
                    "a backup, or move it aside (with its -wal and -shm) to start a new one, and salvage what it "
                    "holds with `sqlite3 {} .recover`",
                    path_, found, path_));
  }

  // A database that holds something but never had faultline's schema is someone else's: adding
  // tables to it (and switching it to WAL) would change a file that is not ours.
  void refuseForeign() {
    const Schema schema = readSchema();
    if (schema.version == 0 && schema.objects > 0 && !schema.hasRuns) {
      throw notRecordFile(path_, "an SQLite database with other tables");
    }
  }

  struct Schema {
    int version = 0;  // PRAGMA user_version
    int objects = 0;  // tables, indexes, views and triggers
    bool hasRuns = false;
    bool hasEvents = false;
    bool hasSamples = false;
  };

  Schema readSchema() {
    Schema schema;
    // The first read of the file: where SQLite finds that it is not a database at all.
    const auto fail = [&](int rc) {
      if ((rc & 0xff) == SQLITE_NOTADB) {
        return notRecordFile(path_, sqlite3_errstr(rc));
      }
      return sqliteError(db_.get(), rc, fmt::format("cannot read the schema of {}", path_));
    };
    sqlite3_stmt* raw = nullptr;
    const int prepared = sqlite3_prepare_v2(db_.get(), "SELECT type, name FROM sqlite_master", -1, &raw, nullptr);
    Stmt stmt(raw);
    if (prepared != SQLITE_OK) {
      throw fail(prepared);
    }
    for (;;) {
      const int rc = sqlite3_step(stmt.get());
      if (rc == SQLITE_DONE) {
        break;
      }
      if (rc != SQLITE_ROW) {
        throw fail(rc);
      }
      ++schema.objects;
      if (columnText(stmt.get(), 0) == "table") {
        const std::string name = columnText(stmt.get(), 1);
        schema.hasRuns = schema.hasRuns || name == "runs";
        schema.hasEvents = schema.hasEvents || name == "events";
        schema.hasSamples = schema.hasSamples || name == "samples";
      }
    }
    schema.version = userVersion();
    return schema;
  }

  std::system_error newerSchema(int version) const {
    return std::system_error(std::make_error_code(std::errc::not_supported),
                             fmt::format("record store {} has schema version {}, newer than this faultline's {}", path_,
                                         version, kSchemaVersion));
  }

  void refuseWrite(std::string_view what, std::string_view runId) const {
    if (readOnly_) {
      throw std::system_error(std::make_error_code(std::errc::read_only_file_system),
                              fmt::format("record store {} is open read-only: {} of run {}", path_, what, runId));
    }
  }

  void exec(const char* sql, std::string_view context) {
    const int rc = sqlite3_exec(db_.get(), sql, nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
      throw sqliteError(db_.get(), rc, fmt::format("record store {}: {}", path_, context));
    }
  }

  void setWal() {
    Stmt stmt = prepare("PRAGMA journal_mode = WAL");
    const int rc = sqlite3_step(stmt.get());
    if (rc != SQLITE_ROW) {
      throw sqliteError(db_.get(), rc, fmt::format("cannot switch record store {} to WAL", path_));
    }
    const std::string mode = columnText(stmt.get(), 0);
    if (mode != "wal") {
      // e.g. ":memory:", or a file system without shared memory; the store still works.
      spdlog::warn("record store {}: journal mode is {}, not wal", path_, mode);
    }
  }

  // PRAGMA auto_vacuum: 0 none, 1 full, 2 incremental.
  int autoVacuumMode() {
    Stmt stmt = prepare("PRAGMA auto_vacuum");
    const int rc = sqlite3_step(stmt.get());
    if (rc != SQLITE_ROW) {
      throw sqliteError(db_.get(), rc, fmt::format("cannot read auto_vacuum of {}", path_));
    }
    return sqlite3_column_int(stmt.get(), 0);
  }

  int userVersion() {
    Stmt stmt = prepare("PRAGMA user_version");
    const int rc = sqlite3_step(stmt.get());
    if (rc != SQLITE_ROW) {
      throw sqliteError(db_.get(), rc, fmt::format("cannot read schema version of {}", path_));
    }
    return sqlite3_column_int(stmt.get(), 0);
  }

  // Brings the schema to kSchemaVersion, one step per transaction. BEGIN IMMEDIATE takes the
  // write lock before reading the version, so two processes opening a new file do not both migrate.
  void migrate() {
    for (;;) {
      exec("BEGIN IMMEDIATE", "cannot lock for migration");
      try {
        const int version = userVersion();
        if (version > kSchemaVersion) {
          throw newerSchema(version);
        }
        if (version == kSchemaVersion) {
          exec("COMMIT", "cannot commit");
          return;
        }
        const std::string step(kMigrations[static_cast<std::size_t>(version)]);
        exec(step.c_str(), fmt::format("cannot migrate (schema version {} to {})", version, version + 1));
        exec(fmt::format("PRAGMA user_version = {}", version + 1).c_str(), "cannot migrate");
        exec("COMMIT", "cannot migrate");
        spdlog::info("record store {}: schema version {}", path_, version + 1);
      } catch (...) {
        sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
        throw;
      }
    }
  }

  Stmt prepare(std::string_view sql) {
    sqlite3_stmt* raw = nullptr;
    const int rc = sqlite3_prepare_v3(db_.get(), sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT,
                                      &raw, nullptr);
    Stmt stmt(raw);
    if (rc != SQLITE_OK) {
      throw sqliteError(db_.get(), rc, fmt::format("record store {}: cannot prepare \"{}\"", path_, sql));
    }
    return stmt;
  }

  void check(int rc, std::string_view what) {
    if (rc != SQLITE_OK) {
      auto error = sqliteError(db_.get(), rc, fmt::format("record store {}: {}", path_, what));
      spdlog::error("{}", error.what());
      throw error;
    }
  }

  void bindText(StmtUse& use, int index, std::string_view text) {
    check(sqlite3_bind_text64(use.get(), index, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8), "bind");
  }

  void bindInt(StmtUse& use, int index, std::int64_t value) {
    check(sqlite3_bind_int64(use.get(), index, value), "bind");
  }

  void bindVerdict(StmtUse& use, int index, v1::Verdict verdict) {
    const auto word = storedVerdict(verdict);
    if (word) {
      bindText(use, index, *word);
    } else {
      check(sqlite3_bind_null(use.get(), index), "bind");
    }
  }

  // Runs a write (autocommit: its own transaction); logs and throws when it fails.
  void stepWrite(StmtUse& use, std::string_view what, std::string_view runId) {
    const int rc = sqlite3_step(use.get());
    if (rc != SQLITE_DONE) {
      auto error = sqliteError(db_.get(), rc, fmt::format("record store {}: {} of run {}", path_, what, runId));
      spdlog::error("{}", error.what());
      throw error;
    }
  }

  // true for a row, false at the end.
  bool stepRow(StmtUse& use, std::string_view what) {
    const int rc = sqlite3_step(use.get());
    if (rc == SQLITE_ROW) {
      return true;
    }
    if (rc == SQLITE_DONE) {
      return false;
    }
    auto error = sqliteError(db_.get(), rc, fmt::format("record store {}: {}", path_, what));
    spdlog::error("{}", error.what());
    throw error;
  }

  void stepControl(const Stmt& stmt) {
    StmtUse use(stmt);
    const int rc = sqlite3_step(use.get());
    if (rc != SQLITE_DONE) {
      auto error = sqliteError(db_.get(), rc, fmt::format("record store {}: {}", path_, sqlite3_sql(stmt.get())));
      spdlog::error("{}", error.what());
      throw error;
    }
  }

  // Columns: run_id, experiment, file_sha256, trigger, started_at, ended_at, verdict, reason,
  // schedule, fire_at.
  static v1::Run readRun(sqlite3_stmt* stmt) {
    v1::Run run;
    run.set_run_id(columnText(stmt, 0));
    run.set_experiment(columnText(stmt, 1));
    run.set_file_sha256(columnText(stmt, 2));
    run.set_trigger(columnText(stmt, 3));
    *run.mutable_started_at() = fromMicros(sqlite3_column_int64(stmt, 4));
    if (sqlite3_column_type(stmt, 5) != SQLITE_NULL) {
      *run.mutable_ended_at() = fromMicros(sqlite3_column_int64(stmt, 5));
    }
    run.set_verdict(verdictFromWord(columnText(stmt, 6)));
    run.set_reason(columnText(stmt, 7));
    run.set_schedule(columnText(stmt, 8));
    if (sqlite3_column_type(stmt, 9) != SQLITE_NULL) {
      *run.mutable_fire_at() = fromMicros(sqlite3_column_int64(stmt, 9));
    }
    return run;
  }

  std::string path_;
  bool readOnly_;
  std::mutex mutex_;
  Db db_;  // declared before the statements, so it is closed after they are finalized
  const std::string owner_ = ownerOf(::getpid());
  Stmt insertRun_;
  Stmt insertEvent_;
  Stmt insertSample_;
  Stmt insertSloCheck_;
  Stmt selectSloChecks_;
  Stmt finishRun_;
  Stmt selectUnfinished_;
  Stmt selectRun_;
  Stmt selectEvents_;
  Stmt selectSamples_;
  Stmt listRuns_;
  Stmt selectPrunable_;
  Stmt deleteEvents_;
  Stmt deleteSamples_;
  Stmt deleteSloChecks_;
  Stmt deleteRun_;
  Stmt detachFires_;  // detaches a pruned run's fire (keeps the fire)
  Stmt beginImmediate_;
  Stmt begin_;
  Stmt commit_;
  Stmt rollback_;
};

}  // namespace

std::unique_ptr<RecordStore> openSqliteStore(const std::string& path, StoreMode mode) {
  return std::make_unique<SqliteRecordStore>(path, mode);
}

std::unique_ptr<ScheduleStore> openScheduleStore(const std::string& path) {
  return std::make_unique<SqliteRecordStore>(path, StoreMode::ReadWrite);
}

const char* applyResultWord(ApplyResult result) {
  switch (result) {
    case ApplyResult::kCreated:
      return "created";
    case ApplyResult::kUpdated:
      return "updated";
    case ApplyResult::kUnchanged:
      return "unchanged";
  }
  return "unknown";
}

}  // namespace faultline::controller
