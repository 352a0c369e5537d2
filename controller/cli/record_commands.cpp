// faultline runs and faultline show: the recorded runs, from the controller or a record file.
#include <iostream>

#include <fmt/format.h>

#include "controller/cli/command.h"
#include "controller/report/run_format.h"
#include "controller/store/schedules.h"
#include "controller/store/store.h"

namespace faultline::controller::cli {
namespace {

// Runs f on the record file at db, opened read-only (nothing is created or changed). A missing
// file, or one that is not a faultline record file, exits 4; any other failure 3.
template <typename F>
int withStore(const std::string& db, F f) {
  try {
    auto store = openSqliteStore(db, StoreMode::ReadOnly);
    return f(*store);
  } catch (const std::system_error& e) {
    std::cerr << "faultline: " << e.what() << "\n";
    const auto code = e.code();
    return code == std::errc::no_such_file_or_directory || code == std::errc::invalid_argument ||
                   code == std::errc::is_a_directory
               ? kExitUsage
               : kExitError;
  } catch (const std::exception& e) {
    std::cerr << "faultline: " << e.what() << "\n";
    return kExitError;
  }
}

int runsCommand(const std::string& address, const std::string& db, unsigned limit, const std::string& schedule) {
  if (!db.empty()) {
    return withStore(db, [&](RecordStore& store) {
      if (!schedule.empty()) {
        // The SQLite store keeps the schedules too (controller/store/schedules.h).
        auto* schedules = dynamic_cast<ScheduleStore*>(&store);
        std::cout << formatRunList(schedules ? schedules->listRunsOfSchedule(schedule, limit) : std::vector<v1::Run>{});
        return 0;
      }
      std::cout << formatRunList(store.listRuns(limit));
      return 0;
    });
  }
  auto stub = controlStub(address);
  auto ctx = contextWithDeadline(std::chrono::seconds{5});
  v1::ListRunsRequest req;
  req.set_limit(limit);
  req.set_schedule(schedule);
  v1::ListRunsResponse resp;
  if (auto s = stub->ListRuns(ctx.get(), req, &resp); !s.ok()) {
    return rpcError("listing runs", address, s);
  }
  std::cout << formatRunList({resp.runs().begin(), resp.runs().end()});
  return 0;
}

int showCommand(const std::string& runId, const std::string& address, const std::string& db) {
  if (!db.empty()) {
    return withStore(db, [&](RecordStore& store) {
      auto run = store.getRun(runId);
      if (!run) {
        std::cerr << fmt::format("faultline: no run with id '{}' in {}\n", runId, db);
        return kExitUsage;
      }
      std::cout << formatTimeline(*run);
      return 0;
    });
  }
  auto stub = controlStub(address);
  auto ctx = contextWithDeadline(std::chrono::seconds{5});
  v1::GetRunRequest req;
  req.set_run_id(runId);
  v1::Run run;
  if (auto s = stub->GetRun(ctx.get(), req, &run); !s.ok()) {
    return rpcError("reading run " + runId, address, s);
  }
  std::cout << formatTimeline(run);
  return 0;
}

class RunsCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    auto* cmd = app.add_subcommand("runs", "list recorded runs, newest first");
    auto* ctrl = cmd->add_option("--controller", address_, kControllerHelp)->capture_default_str();
    addTokenOption(cmd, tokenFile_);
    cmd->add_option("--db", db_, "read a record file directly instead (e.g. the one of --local)")->excludes(ctrl);
    cmd->add_option("--limit", limit_, "how many runs")->capture_default_str();
    cmd->add_option("--schedule", schedule_, "only the runs of this schedule (faultline schedule list)");
    return cmd;
  }
  int run() override {
    return checkControllerAddress(address_) && loadToken(tokenFile_) ? runsCommand(address_, db_, limit_, schedule_)
                                                                     : kExitUsage;
  }

 private:
  std::string address_ = kDefaultController;
  std::string tokenFile_;
  std::string db_;
  unsigned limit_ = 20;
  std::string schedule_;
};

class ShowCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    auto* cmd = app.add_subcommand("show", "print the recorded timeline of a run");
    cmd->add_option("RUN_ID", runId_, "run id, as printed by run and runs")->required();
    auto* ctrl = cmd->add_option("--controller", address_, kControllerHelp)->capture_default_str();
    addTokenOption(cmd, tokenFile_);
    cmd->add_option("--db", db_, "read a record file directly instead (e.g. the one of --local)")->excludes(ctrl);
    return cmd;
  }
  int run() override {
    return checkControllerAddress(address_) && loadToken(tokenFile_) ? showCommand(runId_, address_, db_) : kExitUsage;
  }

 private:
  std::string runId_;
  std::string address_ = kDefaultController;
  std::string tokenFile_;
  std::string db_;
};

}  // namespace

std::unique_ptr<Command> makeRunsCommand() {
  return std::make_unique<RunsCommand>();
}

std::unique_ptr<Command> makeShowCommand() {
  return std::make_unique<ShowCommand>();
}

}  // namespace faultline::controller::cli
