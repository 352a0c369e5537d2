#include <grp.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <google/protobuf/util/message_differencer.h>
#include <google/protobuf/util/time_util.h>
#include <sqlite3.h>

#include "controller/report/run_format.h"
#include "controller/store/store.h"

using namespace faultline;
using namespace faultline::controller;
using google::protobuf::util::MessageDifferencer;
using google::protobuf::util::TimeUtil;

namespace {

// 2024-05-01T12:00:00Z
constexpr std::int64_t kStartUs = 1714564800LL * 1'000'000;

google::protobuf::Timestamp at(std::int64_t offsetMs) {
  return TimeUtil::MicrosecondsToTimestamp(kStartUs + offsetMs * 1000);
}

// A temporary directory from mkdtemp, removed with everything in it at the end of the scope.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "faultline-store-XXXXXX").string();
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
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Sets TZ for the scope so that local times print the same everywhere.
class ScopedTz {
 public:
  explicit ScopedTz(const char* tz) {
    if (const char* old = getenv("TZ")) {
      old_ = old;
    }
    setenv("TZ", tz, 1);
    tzset();
  }
  ~ScopedTz() {
    if (old_) {
      setenv("TZ", old_->c_str(), 1);
    } else {
      unsetenv("TZ");
    }
    tzset();
  }
  ScopedTz(const ScopedTz&) = delete;
  ScopedTz& operator=(const ScopedTz&) = delete;

 private:
  std::optional<std::string> old_;
};

v1::Run makeRun(const std::string& id, std::int64_t startOffsetMs, const std::string& experiment = "checkout-latency") {
  v1::Run run;
  run.set_run_id(id);
  run.set_experiment(experiment);
  run.set_file_sha256("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
  run.set_trigger("cli");
  *run.mutable_started_at() = at(startOffsetMs);
  return run;
}

v1::RunEvent makeEvent(const std::string& runId, std::int64_t offsetMs, const std::string& host,
                       const std::string& kind, const std::string& message,
                       v1::Verdict verdict = v1::VERDICT_UNSPECIFIED) {
  v1::RunEvent event;
  event.set_run_id(runId);
  *event.mutable_at() = at(offsetMs);
  event.set_host(host);
  event.set_kind(kind);
  event.set_message(message);
  event.set_verdict(verdict);
  return event;
}

v1::ProbeSample makeSample(std::int64_t offsetMs, const std::string& probe, const std::string& phase, bool ok,
                           double latencyMs, const std::string& detail = "") {
  v1::ProbeSample sample;
  *sample.mutable_at() = at(offsetMs);
  sample.set_probe(probe);
  sample.set_phase(phase);
  sample.set_ok(ok);
  sample.set_latency_ms(latencyMs);
  sample.set_detail(detail);
  return sample;
}

// The fixture run of the timeline test, complete with verdict: what getRun should return.
v1::Run fixtureRun() {
  v1::Run run = makeRun("r-0001", 0);
  *run.mutable_ended_at() = at(90'500);
  run.set_verdict(v1::VERDICT_VIOLATED);
  run.set_reason("p99 latency 812 ms > 500 ms");
  *run.add_events() = makeEvent("r-0001", 0, "", "run.started", "checkout-latency");
  *run.add_events() = makeEvent("r-0001", 1'250, "web-1", "fault.applied", "network.delay 100ms on eth0");
  *run.add_events() = makeEvent("r-0001", 1'250, "web-22", "fault.applied", "network.delay 100ms on eth0");
  *run.add_events() = makeEvent("r-0001", 61'250, "web-1", "fault.reverted", "");
  *run.add_events() = makeEvent("r-0001", 90'500, "", "run.finished", "violated", v1::VERDICT_VIOLATED);
  *run.add_samples() = makeSample(-1'000, "checkout", "before", true, 12.0, "200 in 12ms");
  *run.add_samples() = makeSample(-500, "checkout", "before", true, 15.0);
  *run.add_samples() = makeSample(-200, "checkout", "before", true, 11.0);
  *run.add_samples() = makeSample(10'000, "checkout", "during", true, 310.5);
  *run.add_samples() = makeSample(20'000, "checkout", "during", false, 812.0, "timeout after 2s");
  *run.add_samples() = makeSample(30'000, "checkout", "during", false, 900.4);
  *run.add_samples() = makeSample(40'000, "checkout", "during", true, 120.0);
  *run.add_samples() = makeSample(80'000, "checkout", "after", true, 14.0);
  *run.add_samples() = makeSample(10'000, "cart", "during", true, 5.0);
  return run;
}

// Writes a run through the store the way the engine does (events and samples one by one).
void record(RecordStore& store, const v1::Run& run) {
  v1::Run header = run;
  header.clear_events();
  header.clear_samples();
  header.clear_ended_at();
  header.clear_verdict();
  header.clear_reason();
  store.createRun(header);
  for (const auto& event : run.events()) {
    store.addEvent(event);
  }
  for (const auto& sample : run.samples()) {
    store.addSample(run.run_id(), sample);
  }
  if (run.verdict() != v1::VERDICT_UNSPECIFIED) {
    store.finishRun(run.run_id(), run.verdict(), run.reason(), run.ended_at());
  }
}

std::vector<std::string> linesOf(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    lines.push_back(line);
  }
  return lines;
}

// The fixture's samples sorted by time (stable), as getRun returns them.
v1::Run sortedSamples(v1::Run run) {
  std::stable_sort(run.mutable_samples()->begin(), run.mutable_samples()->end(),
                   [](const v1::ProbeSample& a, const v1::ProbeSample& b) {
                     return TimeUtil::TimestampToMicroseconds(a.at()) < TimeUtil::TimestampToMicroseconds(b.at());
                   });
  return run;
}

// Every file in a directory with its bytes: shows that nothing was created, removed or changed.
std::map<std::string, std::string> snapshot(const std::filesystem::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    std::ifstream in(entry.path(), std::ios::binary);
    std::ostringstream bytes;
    bytes << in.rdbuf();
    files[entry.path().filename().string()] = bytes.str();
  }
  return files;
}

std::vector<std::string> namesOf(const std::map<std::string, std::string>& files) {
  std::vector<std::string> names;
  for (const auto& [name, bytes] : files) {
    names.push_back(name);
  }
  return names;
}

// An SQLite database that is not faultline's, written with the C API and closed.
void writeForeignDatabase(const std::string& path, const char* journalMode) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  const std::string sql = fmt::format(
      "PRAGMA journal_mode = {}; CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT); "
      "INSERT INTO notes (text) VALUES ('keep me');",
      journalMode);
  CHECK(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_close(db) == SQLITE_OK);
}

// Drops the effective user and group to nobody (65534) for the scope when running as root, for
// whom permission bits do not apply; does nothing for any other user, who is bound by them anyway.
class Unprivileged {
 public:
  Unprivileged() {
    if (geteuid() != 0) {
      return;
    }
    groups_.resize(static_cast<size_t>(getgroups(0, nullptr)));
    REQUIRE(getgroups(static_cast<int>(groups_.size()), groups_.data()) == static_cast<int>(groups_.size()));
    gid_ = getegid();
    REQUIRE(setgroups(0, nullptr) == 0);
    REQUIRE(setegid(65534) == 0);
    REQUIRE(seteuid(65534) == 0);
    dropped_ = true;
  }
  ~Unprivileged() {
    if (dropped_) {
      // Restoring root cannot fail here (the saved user id is 0); if it did, later tests would show it.
      (void)seteuid(0);
      (void)setegid(gid_);
      (void)setgroups(groups_.size(), groups_.data());
    }
  }
  Unprivileged(const Unprivileged&) = delete;
  Unprivileged& operator=(const Unprivileged&) = delete;

 private:
  bool dropped_ = false;
  gid_t gid_ = 0;
  std::vector<gid_t> groups_;
};

// Sets a path's permissions for the scope and restores them at its end (so TempDir can clean up).
class ScopedMode {
 public:
  ScopedMode(std::filesystem::path path, std::filesystem::perms mode)
      : path_(std::move(path)), old_(std::filesystem::status(path_).permissions()) {
    std::filesystem::permissions(path_, mode);
  }
  ~ScopedMode() {
    std::error_code ec;
    std::filesystem::permissions(path_, old_, ec);
  }
  ScopedMode(const ScopedMode&) = delete;
  ScopedMode& operator=(const ScopedMode&) = delete;

 private:
  std::filesystem::path path_;
  std::filesystem::perms old_;
};

}  // namespace

TEST_CASE("record store: a run with events and samples round-trips in time order") {
  TempDir dir;
  auto store = openSqliteStore(dir.file("runs.db"));
  v1::Run run = fixtureRun();
  run.clear_ended_at();
  run.clear_verdict();
  run.clear_reason();
  // Events arrive out of order: the store hands them back by time, ties in arrival order.
  v1::Run written = run;
  std::swap(*written.mutable_events(2), *written.mutable_events(3));
  record(*store, written);

  auto got = store->getRun("r-0001");
  REQUIRE(got.has_value());
  v1::Run expected = sortedSamples(run);
  std::string diff;
  MessageDifferencer differencer;
  differencer.ReportDifferencesToString(&diff);
  CHECK_MESSAGE(differencer.Compare(expected, *got), diff);
  CHECK(got->verdict() == v1::VERDICT_UNSPECIFIED);
  CHECK_FALSE(got->has_ended_at());
  REQUIRE(got->events_size() == 5);
  CHECK(got->events(1).host() == "web-1");
  CHECK(got->events(2).host() == "web-22");
  CHECK(got->events(4).verdict() == v1::VERDICT_VIOLATED);
  CHECK(got->samples(0).detail() == "200 in 12ms");
  CHECK(got->samples(0).latency_ms() == 12.0);
}

TEST_CASE("record store: a step.skew event keeps its start time and skew") {
  TempDir dir;
  auto store = openSqliteStore(dir.file("runs.db"));
  v1::Run run = fixtureRun();
  store->createRun(run);
  v1::RunEvent skew;
  skew.set_run_id(run.run_id());
  *skew.mutable_at() = TimeUtil::MicrosecondsToTimestamp(1'714'564'800'500'000);
  skew.set_kind("step.skew");
  skew.set_message("step 1: 3 host(s) applied within 1.142 ms of each other");
  *skew.mutable_start_at() = TimeUtil::MicrosecondsToTimestamp(1'714'564'800'250'000);
  *skew.mutable_skew() = TimeUtil::NanosecondsToDuration(1'142'337);
  store->addEvent(skew);
  auto got = store->getRun(run.run_id());
  REQUIRE(got.has_value());
  const v1::RunEvent* found = nullptr;
  for (const auto& e : got->events()) {
    if (e.kind() == "step.skew") {
      found = &e;
    } else {
      CHECK_FALSE(e.has_skew());
      CHECK_FALSE(e.has_start_at());
    }
  }
  REQUIRE(found != nullptr);
  REQUIRE(found->has_skew());
  CHECK(TimeUtil::DurationToNanoseconds(found->skew()) == 1'142'337);
  REQUIRE(found->has_start_at());
  CHECK(TimeUtil::TimestampToMicroseconds(found->start_at()) == 1'714'564'800'250'000);
}

TEST_CASE("record store: a fault event keeps its fault id (show labels each fault's window by it)") {
  TempDir dir;
  auto store = openSqliteStore(dir.file("runs.db"));
  v1::Run run = fixtureRun();
  store->createRun(run);
  v1::RunEvent applied;
  applied.set_run_id(run.run_id());
  *applied.mutable_at() = TimeUtil::MicrosecondsToTimestamp(1'714'564'800'600'000);
  applied.set_host("web-1");
  applied.set_kind("fault.applied");
  applied.set_fault_id(run.run_id() + "/2.1/a1");
  store->addEvent(applied);
  auto got = store->getRun(run.run_id());
  REQUIRE(got.has_value());
  int withId = 0;
  for (const auto& e : got->events()) {
    if (e.kind() == "fault.applied" && e.host() == "web-1" && e.fault_id() == run.run_id() + "/2.1/a1") {
      ++withId;
    }
  }
  CHECK(withId == 1);
}

TEST_CASE("record store: fault.ended keeps its agent id, fault kind, end reason and applied time (schema 7)") {
  TempDir dir;
  auto store = openSqliteStore(dir.file("runs.db"));
  v1::Run run = fixtureRun();
  store->createRun(run);
  v1::RunEvent ended;
  ended.set_run_id(run.run_id());
  *ended.mutable_at() = TimeUtil::MicrosecondsToTimestamp(1'714'564'805'600'000);
  ended.set_host("vm");
  ended.set_kind("fault.ended");
  ended.set_fault_id(run.run_id() + "/1/agent-b");
  ended.set_agent_id("agent-b");
  ended.set_fault_kind("process.pause");
  ended.set_end_reason("expired");
  *ended.mutable_applied_at() = TimeUtil::MicrosecondsToTimestamp(1'714'564'800'600'000);
  store->addEvent(ended);
  v1::RunEvent never = ended;  // a fault that never applied has no applied time
  never.set_fault_id(run.run_id() + "/1/agent-c");
  never.set_agent_id("agent-c");
  never.set_end_reason("failed");
  never.clear_applied_at();
  store->addEvent(never);
  auto got = store->getRun(run.run_id());
  REQUIRE(got.has_value());
  std::map<std::string, v1::RunEvent> byAgent;
  for (const auto& e : got->events()) {
    if (e.kind() == "fault.ended") {
      byAgent[e.agent_id()] = e;
    }
  }
  REQUIRE(byAgent.size() == 2);
  const auto& b = byAgent["agent-b"];
  CHECK(b.host() == "vm");
  CHECK(b.fault_id() == run.run_id() + "/1/agent-b");
  CHECK(b.fault_kind() == "process.pause");
  CHECK(b.end_reason() == "expired");
  REQUIRE(b.has_applied_at());
  CHECK(TimeUtil::TimestampToMicroseconds(b.applied_at()) == 1'714'564'800'600'000);
  CHECK(byAgent["agent-c"].end_reason() == "failed");
  CHECK_FALSE(byAgent["agent-c"].has_applied_at());
}

TEST_CASE("record store: finishRun sets verdict, reason and end") {
  TempDir dir;
  auto store = openSqliteStore(dir.file("runs.db"));
  store->createRun(makeRun("r-1", 0));
  store->finishRun("r-1", v1::VERDICT_ABORTED, "halted by alice", at(5'000));
  auto got = store->getRun("r-1");
  REQUIRE(got.has_value());
  CHECK(got->verdict() == v1::VERDICT_ABORTED);
  CHECK(got->reason() == "halted by alice");
  CHECK(TimeUtil::TimestampToMicroseconds(got->ended_at()) == kStartUs + 5'000'000);
  CHECK(TimeUtil::TimestampToMicroseconds(got->started_at()) == kStartUs);

  CHECK_THROWS_AS(store->finishRun("r-nope", v1::VERDICT_HELD, "", at(1)), std::system_error);
}

TEST_CASE("record store: runs a stopped controller left without an end are finished as errors, once") {
  TempDir dir;
  // The controller that recorded them is a child process that exits ("crashes"): two runs never end.
  const pid_t controller = ::fork();
  REQUIRE(controller >= 0);
  if (controller == 0) {
    auto store = openSqliteStore(dir.file("runs.db"));
    store->createRun(makeRun("r-done", 0));
    store->finishRun("r-done", v1::VERDICT_HELD, "held", at(1'000));
    store->createRun(makeRun("r-cut-1", 2'000));
    store->createRun(makeRun("r-cut-2", 3'000));
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(controller, &status, 0) == controller);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  auto store = openSqliteStore(dir.file("runs.db"));
  // A run of a controller that is still running (here: this process) on the same file is not
  // interrupted: two controllers, or two run --local, may share one record file.
  store->createRun(makeRun("r-live", 4'000));
  const auto ids = store->finishInterruptedRuns("interrupted: controller stopped", at(9'000));
  CHECK(ids == std::vector<std::string>{"r-cut-1", "r-cut-2"});
  auto live = store->getRun("r-live");
  REQUIRE(live.has_value());
  CHECK(live->verdict() == v1::VERDICT_UNSPECIFIED);
  CHECK(live->events_size() == 0);
  for (const auto& id : ids) {
    auto got = store->getRun(id);
    REQUIRE(got.has_value());
    CHECK(got->verdict() == v1::VERDICT_ERROR);
    CHECK(got->reason() == "interrupted: controller stopped");
    CHECK(TimeUtil::TimestampToMicroseconds(got->ended_at()) == kStartUs + 9'000'000);
    REQUIRE(got->events_size() >= 1);
    CHECK(got->events(got->events_size() - 1).kind() == "run.finished");
    CHECK(got->events(got->events_size() - 1).verdict() == v1::VERDICT_ERROR);
  }
  auto done = store->getRun("r-done");
  REQUIRE(done.has_value());
  CHECK(done->verdict() == v1::VERDICT_HELD);
  CHECK(done->events_size() == 0);
  CHECK(store->finishInterruptedRuns("again", at(10'000)).empty());
}

TEST_CASE("record store: every verdict round-trips and is stored as a word") {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  {
    auto store = openSqliteStore(path);
    const auto* verdicts = v1::Verdict_descriptor();
    for (int i = 0; i < verdicts->value_count(); ++i) {
      const auto verdict = static_cast<v1::Verdict>(verdicts->value(i)->number());
      const std::string id = fmt::format("r-{}", verdicts->value(i)->number());
      store->createRun(makeRun(id, i));
      store->finishRun(id, verdict, "", at(i + 1));
      auto got = store->getRun(id);
      REQUIRE(got.has_value());
      CHECK_MESSAGE(got->verdict() == verdict, v1::Verdict_Name(verdict));
    }
  }
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "SELECT verdict FROM runs WHERE run_id = 'r-1'", -1, &stmt, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(stmt) == SQLITE_ROW);
  CHECK(std::string(reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0))) == "held");
  sqlite3_finalize(stmt);
  REQUIRE(sqlite3_prepare_v2(db, "SELECT verdict IS NULL FROM runs WHERE run_id = 'r-0'", -1, &stmt, nullptr) ==
          SQLITE_OK);
  REQUIRE(sqlite3_step(stmt) == SQLITE_ROW);
  CHECK(sqlite3_column_int(stmt, 0) == 1);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
}

TEST_CASE("record store: writes that break the schema throw") {
  TempDir dir;
  auto store = openSqliteStore(dir.file("runs.db"));
  store->createRun(makeRun("r-1", 0));
  CHECK_THROWS_AS(store->createRun(makeRun("r-1", 10)), std::system_error);  // duplicate id
  CHECK_THROWS_AS(store->addEvent(makeEvent("r-unknown", 0, "", "run.started", "")), std::system_error);
  CHECK_THROWS_AS(store->addSample("r-unknown", makeSample(0, "p", "before", true, 1.0)), std::system_error);
  // The store is still usable afterwards.
  store->addEvent(makeEvent("r-1", 0, "", "run.started", ""));
  CHECK(store->getRun("r-1")->events_size() == 1);
}

TEST_CASE("record store: listRuns is newest first and honours the limit") {
  TempDir dir;
  auto store = openSqliteStore(dir.file("runs.db"));
  for (int i = 0; i < 25; ++i) {
    // Written out of start order.
    const int n = (i * 7) % 25;
    v1::Run run = makeRun(fmt::format("r-{:02}", n), n * 1000);
    store->createRun(run);
    store->addEvent(makeEvent(run.run_id(), n * 1000, "", "run.started", ""));
  }
  auto runs = store->listRuns(0);
  REQUIRE(runs.size() == 20);
  CHECK(runs.front().run_id() == "r-24");
  CHECK(runs.back().run_id() == "r-05");
  for (const auto& run : runs) {
    CHECK(run.events_size() == 0);
    CHECK(run.samples_size() == 0);
  }
  auto three = store->listRuns(3);
  REQUIRE(three.size() == 3);
  CHECK(three[0].run_id() == "r-24");
  CHECK(three[1].run_id() == "r-23");
  CHECK(three[2].run_id() == "r-22");
  CHECK(store->listRuns(100).size() == 25);
}

TEST_CASE("record store: an unknown run is ENOENT") {
  TempDir dir;
  auto store = openSqliteStore(dir.file("runs.db"));
  auto got = store->getRun("r-missing");
  REQUIRE_FALSE(got.has_value());
  CHECK(got.error() == std::make_error_code(std::errc::no_such_file_or_directory));
}

TEST_CASE("record store: a reopened database keeps everything") {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  const v1::Run run = fixtureRun();
  {
    auto store = openSqliteStore(path);
    record(*store, run);
    store->createRun(makeRun("r-0002", 100'000));
  }
  auto store = openSqliteStore(path);
  auto got = store->getRun("r-0001");
  REQUIRE(got.has_value());
  CHECK(MessageDifferencer::Equals(sortedSamples(run), *got));
  auto runs = store->listRuns(0);
  REQUIRE(runs.size() == 2);
  CHECK(runs[0].run_id() == "r-0002");
  // New events continue the sequence after a reopen.
  store->addEvent(makeEvent("r-0001", 90'500, "", "note", "after reopen"));
  got = store->getRun("r-0001");
  REQUIRE(got.has_value());
  REQUIRE(got->events_size() == 6);
  CHECK(got->events(5).kind() == "note");
}

TEST_CASE("record store: opening a path in a missing directory throws with the path") {
  TempDir dir;
  const std::string path = dir.file("no/such/dir/runs.db");
  try {
    auto store = openSqliteStore(path);
    FAIL("opened " << path);
  } catch (const std::system_error& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);
    CHECK(e.code().category().name() == std::string("sqlite"));
  }
}

TEST_CASE("record store: a database from a newer faultline is refused") {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  { auto store = openSqliteStore(path); }
  // Bump user_version as a later schema would.
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "PRAGMA user_version = 999", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
  try {
    auto store = openSqliteStore(path);
    FAIL("opened a schema 999 database");
  } catch (const std::system_error& e) {
    CHECK(std::string(e.what()).find(path) != std::string::npos);
    CHECK(std::string(e.what()).find("999") != std::string::npos);
  }
}

TEST_CASE("record store read-only: a missing file is ENOENT and is not created") {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  try {
    auto store = openSqliteStore(path, StoreMode::ReadOnly);
    FAIL("opened " << path);
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::make_error_code(std::errc::no_such_file_or_directory));
    CHECK(std::string(e.what()).find("no record file at " + path) != std::string::npos);
  }
  CHECK(snapshot(dir.path()).empty());
}

TEST_CASE("record store read-only: a foreign SQLite database is refused and left byte for byte") {
  TempDir dir;
  const std::string path = dir.file("other.db");
  const char* journalMode = "DELETE";
  SUBCASE("rollback journal") {
    journalMode = "DELETE";
  }
  SUBCASE("WAL, closed by its writer") {
    journalMode = "WAL";
  }
  CAPTURE(journalMode);
  writeForeignDatabase(path, journalMode);
  const auto before = snapshot(dir.path());
  REQUIRE(namesOf(before) == std::vector<std::string>{"other.db"});
  try {
    auto store = openSqliteStore(path, StoreMode::ReadOnly);
    FAIL("opened " << path);
  } catch (const std::system_error& e) {
    CHECK(std::string(e.what()).find(path + " is not a faultline record file") != std::string::npos);
    CHECK(e.code() == std::make_error_code(std::errc::invalid_argument));
  }
  CHECK(snapshot(dir.path()) == before);
  // The controller's read-write open does not take it over either.
  try {
    auto store = openSqliteStore(path);
    FAIL("opened " << path << " read-write");
  } catch (const std::system_error& e) {
    CHECK(std::string(e.what()).find(path + " is not a faultline record file") != std::string::npos);
  }
  CHECK(snapshot(dir.path()) == before);
}

TEST_CASE("record store read-only: a file that is not an SQLite database is refused and left alone") {
  TempDir dir;
  const std::string path = dir.file("notes.db");
  std::string text;
  SUBCASE("text") {
    text = "apiVersion: faultline/v1\nkind: Experiment\n";
  }
  SUBCASE("empty") {
    text = "";
  }
  { std::ofstream(path, std::ios::binary) << text; }
  const auto before = snapshot(dir.path());
  try {
    auto store = openSqliteStore(path, StoreMode::ReadOnly);
    FAIL("opened " << path);
  } catch (const std::system_error& e) {
    CHECK(std::string(e.what()).find(path + " is not a faultline record file") != std::string::npos);
  }
  CHECK(snapshot(dir.path()) == before);
  if (!text.empty()) {  // an empty file is an empty database, which read-write opens and fills
    try {
      auto store = openSqliteStore(path);
      FAIL("opened " << path << " read-write");
    } catch (const std::system_error& e) {
      CHECK(std::string(e.what()).find(path + " is not a faultline record file") != std::string::npos);
    }
    CHECK(snapshot(dir.path()) == before);
  }
}

TEST_CASE("record store read-only: reads what a writer recorded, creates nothing, and every write throws") {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  const v1::Run run = fixtureRun();
  {
    auto writer = openSqliteStore(path);
    record(*writer, run);
  }
  const auto before = snapshot(dir.path());
  REQUIRE(namesOf(before) == std::vector<std::string>{"runs.db"});  // the writer removed -wal and -shm

  auto store = openSqliteStore(path, StoreMode::ReadOnly);
  auto got = store->getRun("r-0001");
  REQUIRE(got.has_value());
  CHECK(MessageDifferencer::Equals(sortedSamples(run), *got));
  REQUIRE(store->listRuns(0).size() == 1);
  auto missing = store->getRun("r-missing");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error() == std::make_error_code(std::errc::no_such_file_or_directory));

  const auto readOnly = std::make_error_code(std::errc::read_only_file_system);
  const auto throwsReadOnly = [&](auto write) {
    try {
      write();
      return false;
    } catch (const std::system_error& e) {
      return e.code() == readOnly && std::string(e.what()).find("read-only") != std::string::npos;
    }
  };
  CHECK(throwsReadOnly([&] { store->createRun(makeRun("r-0002", 1)); }));
  CHECK(throwsReadOnly([&] { store->addEvent(makeEvent("r-0001", 1, "", "note", "")); }));
  CHECK(throwsReadOnly([&] { store->addSample("r-0001", makeSample(1, "p", "after", true, 1.0)); }));
  CHECK(throwsReadOnly([&] { store->finishRun("r-0001", v1::VERDICT_HELD, "", at(1)); }));
  store.reset();
  CHECK(snapshot(dir.path()) == before);
}

TEST_CASE("record store read-only: a 0444 file in a directory the reader cannot write") {
  // As root the reader runs as nobody, so that the permission bits apply to it.
  TempDir top;
  std::filesystem::permissions(top.path(), std::filesystem::perms::owner_all | std::filesystem::perms::group_read |
                                               std::filesystem::perms::group_exec |
                                               std::filesystem::perms::others_read |
                                               std::filesystem::perms::others_exec);
  const std::filesystem::path dir = top.path() / "records";
  std::filesystem::create_directory(dir);
  const std::string path = (dir / "runs.db").string();
  const v1::Run run = fixtureRun();
  const auto readOnlyDir = std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec |
                           std::filesystem::perms::group_read | std::filesystem::perms::group_exec |
                           std::filesystem::perms::others_read | std::filesystem::perms::others_exec;
  const auto readOnlyFile =
      std::filesystem::perms::owner_read | std::filesystem::perms::group_read | std::filesystem::perms::others_read;

  // Reads r-0001 and the run r-last, whose event is the writer's last write, as the reader.
  const auto readAll = [&] {
    Unprivileged reader;
    auto store = openSqliteStore(path, StoreMode::ReadOnly);
    auto got = store->getRun("r-0001");
    REQUIRE(got.has_value());
    CHECK(MessageDifferencer::Equals(sortedSamples(run), *got));
    auto last = store->getRun("r-last");
    REQUIRE(last.has_value());
    CHECK(last->events_size() == 1);
    CHECK(store->listRuns(0).size() == 2);
  };
  const auto writeAll = [&](RecordStore& writer) {
    record(writer, run);
    writer.createRun(makeRun("r-last", 100'000));
    writer.addEvent(makeEvent("r-last", 100'000, "", "run.started", "last"));
  };

  SUBCASE("no writer: the file alone") {
    {
      auto writer = openSqliteStore(path);
      writeAll(*writer);
    }
    ScopedMode file(path, readOnlyFile);
    ScopedMode directory(dir, readOnlyDir);
    const auto before = snapshot(dir);
    REQUIRE(namesOf(before) == std::vector<std::string>{"runs.db"});
    readAll();
    CHECK(snapshot(dir) == before);
  }
  SUBCASE("a writer has it open: its -wal and -shm hold the last writes") {
    auto writer = openSqliteStore(path);
    writeAll(*writer);
    ScopedMode file(path, readOnlyFile);
    // The writer made its -wal and -shm 0600, as the file: an admin who lets another user read
    // the record opens them too.
    ScopedMode wal(path + "-wal", readOnlyFile);
    ScopedMode shm(path + "-shm", readOnlyFile);
    ScopedMode directory(dir, readOnlyDir);
    const auto before = snapshot(dir);
    REQUIRE(namesOf(before) == std::vector<std::string>{"runs.db", "runs.db-shm", "runs.db-wal"});
    readAll();
    const auto after = snapshot(dir);
    REQUIRE(namesOf(after) == namesOf(before));
    CHECK(after.at("runs.db") == before.at("runs.db"));
    CHECK(after.at("runs.db-wal") == before.at("runs.db-wal"));
  }
  SUBCASE("a writer died and left its -wal and -shm") {
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      try {
        auto writer = openSqliteStore(path);
        writeAll(*writer);
        _exit(0);  // without closing: the -wal and -shm stay, as after a crash
      } catch (...) {
        _exit(1);
      }
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    ScopedMode file(path, readOnlyFile);
    // The writer made its -wal and -shm 0600, as the file: an admin who lets another user read
    // the record opens them too.
    ScopedMode wal(path + "-wal", readOnlyFile);
    ScopedMode shm(path + "-shm", readOnlyFile);
    ScopedMode directory(dir, readOnlyDir);
    const auto before = snapshot(dir);
    REQUIRE(namesOf(before) == std::vector<std::string>{"runs.db", "runs.db-shm", "runs.db-wal"});
    readAll();
    const auto after = snapshot(dir);
    REQUIRE(namesOf(after) == namesOf(before));
    CHECK(after.at("runs.db") == before.at("runs.db"));
    CHECK(after.at("runs.db-wal") == before.at("runs.db-wal"));
  }
}

TEST_CASE("record store read-only: a database from a newer faultline is refused") {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  { auto store = openSqliteStore(path); }
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  REQUIRE(sqlite3_exec(db, "PRAGMA user_version = 999", nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
  try {
    auto store = openSqliteStore(path, StoreMode::ReadOnly);
    FAIL("opened a schema 999 database");
  } catch (const std::system_error& e) {
    CHECK(e.code() == std::make_error_code(std::errc::not_supported));
    CHECK(std::string(e.what()).find(path) != std::string::npos);
    CHECK(std::string(e.what()).find("999") != std::string::npos);
  }
}

TEST_CASE("formatTimeline: header, events relative to the start, probe summary") {
  ScopedTz tz("UTC0");
  const std::vector<std::string> expected = {
      "run         r-0001",
      "experiment  checkout-latency",
      "trigger     cli",
      "file        0123456789ab",
      "started     2024-05-01T12:00:00.000+00:00",
      "ended       2024-05-01T12:01:30.500+00:00",
      "duration    90.500s",
      "verdict     violated",
      "reason      p99 latency 812 ms > 500 ms",
      "",
      "events",
      " +0.000  -       run.started     checkout-latency",
      " +1.250  web-1   fault.applied   network.delay 100ms on eth0",
      " +1.250  web-22  fault.applied   network.delay 100ms on eth0",
      "+61.250  web-1   fault.reverted",
      "+90.500  -       run.finished    violated",
      "",
      "faults",
      "AGENT   STEP    FROM       TO     HELD  END",
      "web-1   -     +1.250  +61.250  60.000s  reverted",
      "web-22  -     +1.250        -        -  no end recorded",
      "",
      "probes",
      "PROBE     PHASE   STEP  SAMPLES  FAILED  P50 MS  P90 MS  P99 MS  MAX MS",
      "cart      during  -           1       0     5.0     5.0     5.0     5.0",
      "checkout  before  -           3       0    12.0    15.0    15.0    15.0",
      // The two failed samples (812 ms, 900.4 ms) are errors, not latencies.
      "checkout  during  -           4       2   120.0   310.5   310.5   310.5",
      "checkout  after   -           1       0    14.0    14.0    14.0    14.0",
      "(percentiles: nearest rank over the successful samples; a failed sample has no latency)",
      "",
      "slos",
      "(none)",
  };
  // Events given out of order are printed in time order.
  v1::Run run = fixtureRun();
  std::swap(*run.mutable_events(0), *run.mutable_events(4));
  CHECK(linesOf(formatTimeline(run)) == expected);
}

TEST_CASE("formatTimeline: a running run, control characters, a local offset") {
  ScopedTz tz("CET-1CEST,M3.5.0,M10.5.0/3");
  v1::Run run = makeRun("r-2", 0);
  *run.add_events() = makeEvent("r-2", -500, "db\x1b[2J", "probe.failed", "line one\nline two");
  const auto lines = linesOf(formatTimeline(run));
  REQUIRE(lines.size() == 21);
  CHECK(lines[4] == "started     2024-05-01T14:00:00.000+02:00");
  CHECK(lines[5] == "ended       -");
  CHECK(lines[6] == "duration    -");
  CHECK(lines[7] == "verdict     running");
  CHECK(lines[8] == "reason      -");
  CHECK(lines[11] == "-0.500  db [2J  probe.failed  line one line two");
  CHECK(lines[13] == "faults");
  CHECK(lines[14] == "(none)");
  CHECK(lines[16] == "probes");
  CHECK(lines[17] == "(none)");
  CHECK(lines[19] == "slos");
  CHECK(lines[20] == "(none)");
}

TEST_CASE("formatRunList: one line per run, reasons cut") {
  ScopedTz tz("UTC0");
  v1::Run held = makeRun("r-0002", 60'000, "dns-loss");
  held.set_trigger("schedule");
  held.set_verdict(v1::VERDICT_HELD);
  v1::Run violated = makeRun("r-0001", 0);
  violated.set_verdict(v1::VERDICT_VIOLATED);
  violated.set_reason(std::string(70, 'x'));
  const std::vector<std::string> expected = {
      "RUN     STARTED                    EXPERIMENT        TRIGGER   VERDICT   REASON",
      "r-0002  2024-05-01T12:01:00+00:00  dns-loss          schedule  held",
      "r-0001  2024-05-01T12:00:00+00:00  checkout-latency  cli       violated  " + std::string(57, 'x') + "...",
  };
  CHECK(linesOf(formatRunList({held, violated})) == expected);
  CHECK(formatRunList({}) == "no runs\n");
}

TEST_CASE("record store: SLO checks with their SLIs, and probe values, kinds and guards, read back") {
  auto store = openSqliteStore(":memory:");
  store->createRun(makeRun("r-slo", 0));
  v1::ProbeSample sample;
  *sample.mutable_at() = TimeUtil::MillisecondsToTimestamp(1714564800000);
  sample.set_probe("cpu");
  sample.set_phase("during");
  sample.set_ok(true);
  sample.set_latency_ms(3.5);
  sample.set_detail("0.25 < 0.8");
  sample.set_kind("prometheus");
  sample.set_guard(true);
  sample.set_value(0.25);
  store->addSample("r-slo", sample);
  sample.clear_value();
  sample.set_kind("http");
  sample.set_guard(false);
  store->addSample("r-slo", sample);

  v1::SloCheck check;
  *check.mutable_at() = TimeUtil::MillisecondsToTimestamp(1714564801000);
  check.set_slo("api");
  check.set_probe("web");
  check.set_objective("p99 < 300ms and errors < 1%");
  check.set_phase("during");
  check.set_ok(false);
  check.set_samples(12);
  check.set_burn_rate(8.5);
  auto* m = check.add_measures();
  m->set_sli("p99");
  m->set_value(412.5);
  m->set_comparison("<");
  m->set_threshold(300);
  m->set_ok(false);
  m = check.add_measures();
  m->set_sli("errors");
  m->set_value(8.5);
  m->set_comparison("<");
  m->set_threshold(1);
  m->set_ok(false);
  store->addSloCheck("r-slo", check);

  auto run = store->getRun("r-slo");
  REQUIRE(run.has_value());
  REQUIRE(run->samples_size() == 2);
  CHECK(run->samples(0).has_value());
  CHECK(run->samples(0).value() == 0.25);
  CHECK(run->samples(0).kind() == "prometheus");
  CHECK(run->samples(0).guard());
  CHECK_FALSE(run->samples(1).has_value());
  REQUIRE(run->slo_checks_size() == 1);
  CHECK(google::protobuf::util::MessageDifferencer::Equals(run->slo_checks(0), check));
}

TEST_CASE("record store: a schema 1 file is migrated to 2; its samples keep their values") {
  TempDir dir;
  const std::string path = dir.file("v1.db");
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(path.c_str(), &db) == SQLITE_OK);
  const char* v1 = R"sql(
CREATE TABLE runs (run_id TEXT PRIMARY KEY NOT NULL, experiment TEXT NOT NULL, file_sha256 TEXT NOT NULL,
  trigger TEXT NOT NULL, started_at INTEGER NOT NULL, ended_at INTEGER, verdict TEXT, reason TEXT NOT NULL DEFAULT '');
CREATE INDEX runs_by_started_at ON runs (started_at);
CREATE TABLE events (run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE, seq INTEGER NOT NULL,
  at INTEGER NOT NULL, host TEXT NOT NULL DEFAULT '', kind TEXT NOT NULL, message TEXT NOT NULL DEFAULT '',
  verdict TEXT, PRIMARY KEY (run_id, seq));
CREATE TABLE samples (run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE, at INTEGER NOT NULL,
  probe TEXT NOT NULL, phase TEXT NOT NULL, ok INTEGER NOT NULL, latency_ms REAL NOT NULL, detail TEXT NOT NULL DEFAULT '');
CREATE INDEX samples_by_run ON samples (run_id, at);
INSERT INTO runs VALUES ('old', 'e', 'sha', 'cli', 1, 2, 'held', 'fine');
INSERT INTO samples VALUES ('old', 1, 'web', 'before', 1, 4.5, '200 in 4.5ms');
PRAGMA user_version = 1;
)sql";
  REQUIRE(sqlite3_exec(db, v1, nullptr, nullptr, nullptr) == SQLITE_OK);
  sqlite3_close(db);
  auto store = openSqliteStore(path);
  auto run = store->getRun("old");
  REQUIRE(run.has_value());
  REQUIRE(run->samples_size() == 1);
  CHECK(run->samples(0).latency_ms() == 4.5);
  CHECK(run->samples(0).kind().empty());
  CHECK_FALSE(run->samples(0).has_value());
  CHECK(run->slo_checks_size() == 0);
}

namespace {

// Sets the process's umask for the scope.
class ScopedUmask {
 public:
  explicit ScopedUmask(mode_t mask) : old_(::umask(mask)) {}
  ~ScopedUmask() { ::umask(old_); }
  ScopedUmask(const ScopedUmask&) = delete;
  ScopedUmask& operator=(const ScopedUmask&) = delete;

 private:
  mode_t old_;
};

mode_t modeOf(const std::string& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

// A record file of about 150 KB: 40 runs with 30 events each, written and closed (checkpointed).
std::string bigRecordFile(const TempDir& dir) {
  const std::string path = dir.file("records.db");
  auto store = openSqliteStore(path);
  for (int r = 0; r < 40; ++r) {
    const std::string id = fmt::format("r-{:04}", r);
    store->createRun(makeRun(id, r * 1000));
    for (int e = 0; e < 30; ++e) {
      store->addEvent(
          makeEvent(id, r * 1000 + e, "web-1", "probe.ok", std::string(100, static_cast<char>('a' + e % 26))));
    }
  }
  return path;
}

}  // namespace

TEST_CASE("record store: a new record file and its -wal and -shm are 0600 whatever the umask") {
  TempDir dir;
  const std::string path = dir.file("records.db");
  {
    ScopedUmask open(0);  // SQLite alone made the file 0644 here (its default mode, past the umask)
    auto store = openSqliteStore(path);
    store->createRun(makeRun("r-1", 0));
    CHECK(modeOf(path) == 0600);
    CHECK(modeOf(path + "-wal") == 0600);
    CHECK(modeOf(path + "-shm") == 0600);
  }
  CHECK(modeOf(path) == 0600);
}

TEST_CASE("record store: an existing record file readable by others is narrowed to 0600 when a writer opens it") {
  TempDir dir;
  const std::string path = dir.file("records.db");
  openSqliteStore(path)->createRun(makeRun("r-1", 0));
  REQUIRE(::chmod(path.c_str(), 0644) == 0);
  {
    auto reader = openSqliteStore(path, StoreMode::ReadOnly);  // a reader changes nothing
    CHECK(reader->getRun("r-1").has_value());
  }
  CHECK(modeOf(path) == 0644);
  auto store = openSqliteStore(path);
  CHECK(modeOf(path) == 0600);
  CHECK(store->getRun("r-1").has_value());
}

TEST_CASE("record store: 16 KB of garbage in the file's middle is refused at open, by a writer and by a reader") {
  TempDir dir;
  const std::string path = bigRecordFile(dir);
  const auto size = std::filesystem::file_size(path);
  REQUIRE(size > 64 * 1024);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(size / 2 / 4096 * 4096));
    std::string garbage(16 * 1024, '\0');
    for (size_t i = 0; i < garbage.size(); ++i) {
      garbage[i] = static_cast<char>((i * 131 + 17) % 251);
    }
    f.write(garbage.data(), static_cast<std::streamsize>(garbage.size()));
  }
  const auto damaged = [&] {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }();
  for (const auto mode : {StoreMode::ReadWrite, StoreMode::ReadOnly}) {
    CAPTURE(static_cast<int>(mode));
    try {
      (void)openSqliteStore(path, mode);
      FAIL("a damaged record file was opened");
    } catch (const std::system_error& e) {
      const std::string what = e.what();
      CHECK(e.code().category().name() == std::string("sqlite"));
      CHECK(e.code().value() == SQLITE_CORRUPT);
      CHECK(what.find(fmt::format("record file {} is damaged: SQLite's quick_check found: ", path)) !=
            std::string::npos);
      CHECK(what.find("Nothing was changed") != std::string::npos);
      CHECK(what.find(fmt::format("sqlite3 {} .recover", path)) != std::string::npos);
    }
    // Left as it was: no migration, no WAL switch, no write.
    std::ifstream in(path, std::ios::binary);
    CHECK(std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>()) == damaged);
  }
}

TEST_CASE("record store: an intact file passes quick_check at open") {
  TempDir dir;
  const std::string path = bigRecordFile(dir);
  auto store = openSqliteStore(path);
  CHECK(store->listRuns(100).size() == 40);
  CHECK(openSqliteStore(path, StoreMode::ReadOnly)->getRun("r-0039")->events_size() == 30);
}

namespace {

// A finished run of trigger and verdict that started at startMs and ended 1 s later, with an
// event, a sample and an SLO check (the rows retention must delete with it).
void finishedRun(RecordStore& store, const std::string& id, std::int64_t startMs, const std::string& trigger = "cli",
                 v1::Verdict verdict = v1::VERDICT_HELD) {
  v1::Run run = makeRun(id, startMs);
  run.set_trigger(trigger);
  store.createRun(run);
  store.addEvent(makeEvent(id, startMs, "", "run.started", ""));
  store.addSample(id, makeSample(startMs + 10, "demo", "before", true, 1.0));
  v1::SloCheck check;
  *check.mutable_at() = at(startMs + 20);
  check.set_slo("slo");
  check.set_probe("demo");
  check.set_phase("before");
  check.set_ok(true);
  store.addSloCheck(id, check);
  store.finishRun(id, verdict, "", at(startMs + 1'000));
}

// Rows of table (events, samples, slo_checks, runs) that belong to runId, read with sqlite3 itself.
int rowsOf(const std::string& path, const std::string& table, const std::string& runId) {
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  const std::string sql = fmt::format("SELECT COUNT(*) FROM {} WHERE run_id = ?1", table);
  REQUIRE(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK);
  sqlite3_bind_text(stmt, 1, runId.c_str(), -1, SQLITE_TRANSIENT);
  REQUIRE(sqlite3_step(stmt) == SQLITE_ROW);
  const int n = sqlite3_column_int(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return n;
}

RunFilter runFilter(unsigned limit, const std::string& trigger, std::optional<v1::Verdict> verdict = std::nullopt,
                    std::optional<google::protobuf::Timestamp> since = std::nullopt) {
  RunFilter f;
  f.limit = limit;
  f.trigger = trigger;
  f.verdict = verdict;
  f.since = since;
  return f;
}

Retention keep(unsigned runs, std::chrono::seconds age = std::chrono::seconds{0}) {
  Retention r;
  r.runs = runs;
  r.age = age;
  return r;
}

std::vector<std::string> idsOf(const std::vector<v1::Run>& runs) {
  std::vector<std::string> ids;
  for (const auto& r : runs) {
    ids.push_back(r.run_id());
  }
  return ids;
}

}  // namespace

TEST_CASE("record store: listRuns filters by trigger, verdict and start time, newest first, within the limit") {
  TempDir dir;
  auto store = openSqliteStore(dir.file("runs.db"));
  finishedRun(*store, "r-1", 1'000, "ci", v1::VERDICT_HELD);
  finishedRun(*store, "r-2", 2'000, "ci", v1::VERDICT_VIOLATED);
  finishedRun(*store, "r-3", 3'000, "gameday", v1::VERDICT_VIOLATED);
  finishedRun(*store, "r-4", 4'000, "cli", v1::VERDICT_NOT_STEADY);
  finishedRun(*store, "r-5", 5'000, "ci", v1::VERDICT_VIOLATED);
  store->createRun(makeRun("r-6", 6'000));  // still running

  CHECK(idsOf(store->listRuns(runFilter(0, "ci"))) == std::vector<std::string>{"r-5", "r-2", "r-1"});
  CHECK(idsOf(store->listRuns(runFilter(0, "", v1::VERDICT_VIOLATED))) ==
        std::vector<std::string>{"r-5", "r-3", "r-2"});
  CHECK(idsOf(store->listRuns(runFilter(0, "ci", v1::VERDICT_VIOLATED))) == std::vector<std::string>{"r-5", "r-2"});
  CHECK(idsOf(store->listRuns(runFilter(0, "", v1::VERDICT_NOT_STEADY))) == std::vector<std::string>{"r-4"});
  CHECK(idsOf(store->listRuns(runFilter(0, "", v1::VERDICT_UNSPECIFIED))) == std::vector<std::string>{"r-6"});
  CHECK(idsOf(store->listRuns(runFilter(0, "", std::nullopt, at(3'000)))) ==
        std::vector<std::string>{"r-6", "r-5", "r-4", "r-3"});  // at or after
  CHECK(idsOf(store->listRuns(runFilter(2, "", v1::VERDICT_VIOLATED))) == std::vector<std::string>{"r-5", "r-3"});
  CHECK(store->listRuns(runFilter(0, "schedule")).empty());
  // A read-only store filters the same way.
  auto reader = openSqliteStore(dir.file("runs.db"), StoreMode::ReadOnly);
  CHECK(idsOf(reader->listRuns(runFilter(0, "gameday"))) == std::vector<std::string>{"r-3"});
}

TEST_CASE("record store: retention keeps the N newest runs and deletes the others whole, never a running one") {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  auto store = openSqliteStore(path);
  store->createRun(makeRun("r-00", 0));  // the oldest, still running: kept whatever the rule
  for (int i = 1; i <= 9; ++i) {
    finishedRun(*store, fmt::format("r-{:02}", i), i * 1'000);
  }
  CHECK(store->pruneRuns(Retention{}, at(100'000)) == 0);  // keeps all
  CHECK(store->listRuns(100).size() == 10);

  CHECK(store->pruneRuns(keep(4), at(100'000)) == 5);  // r-01 to r-05; r-00 has no end
  CHECK(idsOf(store->listRuns(100)) == std::vector<std::string>{"r-09", "r-08", "r-07", "r-06", "r-00"});
  for (const char* table : {"runs", "events", "samples", "slo_checks"}) {
    CAPTURE(table);
    CHECK(rowsOf(path, table, "r-05") == 0);
    CHECK(rowsOf(path, table, "r-01") == 0);
    CHECK(rowsOf(path, table, "r-06") == 1);  // a kept run keeps all of its rows
  }
  CHECK(store->getRun("r-01").error() == std::errc::no_such_file_or_directory);
  CHECK(store->pruneRuns(keep(4), at(100'000)) == 0);  // idempotent
}

TEST_CASE("record store: retention by age deletes runs that ended more than D ago, whole; a running one stays") {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  auto store = openSqliteStore(path);
  using std::chrono::hours;
  const std::int64_t day = 24LL * 3600 * 1000;
  store->createRun(makeRun("running", -10 * day));  // started 10 days ago, no end
  finishedRun(*store, "old-1", -9 * day);
  finishedRun(*store, "old-2", -8 * day);
  finishedRun(*store, "recent", -2 * day);
  finishedRun(*store, "today", -1'000'000);
  CHECK(store->pruneRuns(keep(0, hours{24 * 7}), at(0)) == 2);
  CHECK(idsOf(store->listRuns(100)) == std::vector<std::string>{"today", "recent", "running"});
  for (const char* table : {"runs", "events", "samples", "slo_checks"}) {
    CAPTURE(table);
    CHECK(rowsOf(path, table, "old-1") == 0);
    CHECK(rowsOf(path, table, "old-2") == 0);
    CHECK(rowsOf(path, table, "recent") == 1);
  }
  // Both rules: a run goes when either says so.
  CHECK(store->pruneRuns(keep(1, std::chrono::hours{24 * 30}), at(0)) == 1);
  CHECK(idsOf(store->listRuns(100)) == std::vector<std::string>{"today", "running"});
}

TEST_CASE("record store: a new file is in incremental auto_vacuum mode and pruning gives pages back") {
  TempDir dir;
  const std::string path = dir.file("runs.db");
  auto store = openSqliteStore(path);
  const std::string big(200'000, 'x');
  for (int i = 0; i < 20; ++i) {
    const std::string id = fmt::format("r-{:02}", i);
    finishedRun(*store, id, i * 1'000);
    store->addEvent(makeEvent(id, i * 1'000 + 500, "", "note", big));
  }
  auto pages = [&](const char* pragma) {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    REQUIRE(sqlite3_prepare_v2(db, pragma, -1, &stmt, nullptr) == SQLITE_OK);
    REQUIRE(sqlite3_step(stmt) == SQLITE_ROW);
    const int n = sqlite3_column_int(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return n;
  };
  CHECK(pages("PRAGMA auto_vacuum") == 2);
  const int before = pages("PRAGMA page_count");
  CHECK(store->pruneRuns(keep(2), at(100'000)) == 18);
  CHECK(pages("PRAGMA freelist_count") == 0);  // incremental_vacuum returned them
  CHECK(pages("PRAGMA page_count") < before / 4);
  CHECK(store->getRun("r-19")->events_size() == 2);
}
