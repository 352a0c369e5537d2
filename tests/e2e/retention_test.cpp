// End to end: the controller's retention (--retain-runs, --retain-days) on a real record file:
// applied at start before any call is served, then on its interval; a run without an end (here
// one this live process owns) is never deleted.
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

#include "agent/faults/fault.h"
#include "controller/server/controller.h"
#include "controller/store/store.h"

using namespace faultline;
using namespace std::chrono_literals;
using google::protobuf::util::TimeUtil;

namespace {

google::protobuf::Timestamp daysAgo(double days) {
  return TimeUtil::MicrosecondsToTimestamp(TimeUtil::TimestampToMicroseconds(agent::nowTimestamp()) -
                                           static_cast<int64_t>(days * 86'400e6));
}

void finished(controller::RecordStore& store, const std::string& id, double startedDaysAgo) {
  v1::Run run;
  run.set_run_id(id);
  run.set_experiment("retention");
  run.set_file_sha256(std::string(64, '0'));
  run.set_trigger("cli");
  *run.mutable_started_at() = daysAgo(startedDaysAgo);
  store.createRun(run);
  v1::RunEvent e;
  e.set_run_id(id);
  *e.mutable_at() = run.started_at();
  e.set_kind("run.started");
  store.addEvent(e);
  store.finishRun(id, v1::VERDICT_HELD, "held", daysAgo(startedDaysAgo - 0.001));
}

std::vector<std::string> ids(const std::string& db) {
  std::vector<std::string> out;
  for (const auto& r : controller::openSqliteStore(db, controller::StoreMode::ReadOnly)->listRuns(100)) {
    out.push_back(r.run_id());
  }
  return out;
}

}  // namespace

TEST_CASE("controller retention: old runs deleted at start and on the interval, the N newest and a running one kept") {
  char tmpl[] = "/tmp/faultline-retention-XXXXXX";
  REQUIRE(::mkdtemp(tmpl) != nullptr);
  const std::string dir = tmpl;
  struct Cleanup {
    std::string dir;
    ~Cleanup() { std::filesystem::remove_all(dir); }
  } cleanup{dir};
  const std::string db = dir + "/records.db";
  auto writer = controller::openSqliteStore(db);
  {
    v1::Run running;  // started 20 days ago, no end: its owner (this process) is alive
    running.set_run_id("running");
    running.set_experiment("retention");
    running.set_file_sha256(std::string(64, '0'));
    running.set_trigger("cli");
    *running.mutable_started_at() = daysAgo(20);
    writer->createRun(running);
  }
  for (int i = 0; i < 5; ++i) {
    finished(*writer, fmt::format("old-{}", i), 10 + i);
  }
  finished(*writer, "recent", 1);

  controller::ControllerOptions o{"", db, 15s};
  o.socket = dir + "/control.sock";
  o.retention.runs = 3;
  o.retention.age = std::chrono::hours{24 * 7};
  o.retentionInterval = 1s;
  controller::Controller c(o);
  c.start();
  // At start: the five that ended more than 7 days ago, whole; the running one stays.
  CHECK(ids(db) == std::vector<std::string>{"recent", "running"});

  finished(*writer, "new-1", 0.003);
  finished(*writer, "new-2", 0.002);
  finished(*writer, "new-3", 0.001);
  // On the interval: the 3 newest are kept (new-3, new-2, new-1); recent goes, running stays.
  std::vector<std::string> now;
  for (int i = 0; i < 50; ++i) {
    now = ids(db);
    if (now.size() == 4) {
      break;
    }
    std::this_thread::sleep_for(100ms);
  }
  CHECK(now == std::vector<std::string>{"new-3", "new-2", "new-1", "running"});
  CHECK(writer->getRun("old-0").error() == std::errc::no_such_file_or_directory);
  c.shutdown();  // the retention thread ends with it
}
