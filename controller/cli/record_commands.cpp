// faultline runs and faultline show: the recorded runs, from the controller or a record file.
#include <iostream>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <google/protobuf/util/time_util.h>

#include "agent/faults/fault.h"
#include "agent/faults/spec.h"
#include "controller/cli/command.h"
#include "controller/report/run_format.h"
#include "controller/server/limits.h"
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

// --verdict's words: verdictWord()'s, with "not-steady" for "not steady" and "running" for none yet.
constexpr const char* kVerdictWords = "held, violated, not-steady, aborted, error, running";

std::optional<v1::Verdict> parseVerdictWord(const std::string& word) {
  static const std::map<std::string, v1::Verdict> words = {
      {"held", v1::VERDICT_HELD},       {"violated", v1::VERDICT_VIOLATED}, {"not-steady", v1::VERDICT_NOT_STEADY},
      {"aborted", v1::VERDICT_ABORTED}, {"error", v1::VERDICT_ERROR},       {"running", v1::VERDICT_UNSPECIFIED}};
  auto it = words.find(word);
  return it == words.end() ? std::nullopt : std::optional(it->second);
}

// --since: a time ago (7d, 36h, 90m: runs started since then) or an instant (2026-12-01, a UTC
// midnight; 2026-12-01T08:00:00Z or with an offset: RFC 3339). The start time as a timestamp, or
// what is wrong.
tl::expected<google::protobuf::Timestamp, std::string> parseSince(const std::string& text,
                                                                  const google::protobuf::Timestamp& now) {
  using google::protobuf::util::TimeUtil;
  const std::string accepted =
      "accepted: a time ago (7d, 36h, 90m) or a date or instant (2026-12-01, 2026-12-01T08:00:00Z)";
  if (text.empty() || text.size() > 64) {
    return tl::unexpected(fmt::format("'{}' is not a time; {}", text.substr(0, 64), accepted));
  }
  google::protobuf::Timestamp at;
  if (text.size() == 10 && TimeUtil::FromString(text + "T00:00:00Z", &at)) {
    return at;
  }
  if (TimeUtil::FromString(text, &at)) {
    return at;
  }
  std::chrono::nanoseconds ago{0};
  if (text.size() >= 2 && text.back() == 'd' && text.find_first_not_of("0123456789", 0) == text.size() - 1 &&
      text.size() <= 6) {
    ago = std::chrono::hours{24} * std::stoll(text.substr(0, text.size() - 1));
  } else if (auto d = parseDuration(text); d && d->count() >= 0) {
    ago = *d;
  } else {
    return tl::unexpected(fmt::format("'{}' is not a time; {}", text, accepted));
  }
  return TimeUtil::NanosecondsToTimestamp(TimeUtil::TimestampToNanoseconds(now) - ago.count());
}

struct RunsQuery {
  unsigned limit = 20;
  std::string trigger;
  std::string verdict;
  std::string since;
  std::string schedule;
};

int runsCommand(const std::string& address, const std::string& db, const RunsQuery& q) {
  if (q.limit > kMaxListRuns) {
    std::cerr << fmt::format("faultline runs: --limit {}: more than the {} accepted\n", q.limit, kMaxListRuns);
    return kExitUsage;
  }
  if (q.trigger.size() > kMaxTriggerBytes) {
    std::cerr << fmt::format("faultline runs: --trigger: {} bytes, more than the {} accepted\n", q.trigger.size(),
                             kMaxTriggerBytes);
    return kExitUsage;
  }
  if (q.schedule.size() > kMaxScheduleNameBytes) {
    std::cerr << fmt::format("faultline runs: --schedule: {} bytes, more than the {} accepted\n", q.schedule.size(),
                             kMaxScheduleNameBytes);
    return kExitUsage;
  }
  v1::ListRunsRequest req;
  req.set_limit(q.limit);
  req.set_trigger(q.trigger);
  req.set_schedule(q.schedule);
  RunFilter filter;
  filter.limit = q.limit;
  filter.trigger = q.trigger;
  filter.schedule = q.schedule;
  if (!q.verdict.empty()) {
    const auto verdict = parseVerdictWord(q.verdict);
    if (!verdict) {
      std::cerr << fmt::format("faultline runs: --verdict '{}' is not a verdict; accepted: {}\n", q.verdict,
                               kVerdictWords);
      return kExitUsage;
    }
    filter.verdict = *verdict;
    req.set_verdict(*verdict);
    req.set_only_running(*verdict == v1::VERDICT_UNSPECIFIED);
  }
  if (!q.since.empty()) {
    auto since = parseSince(q.since, agent::nowTimestamp());
    if (!since) {
      std::cerr << "faultline runs: --since " << since.error() << "\n";
      return kExitUsage;
    }
    filter.since = *since;
    *req.mutable_since() = *since;
  }
  if (!db.empty()) {
    return withStore(db, [&](RecordStore& store) {
      std::cout << formatRunList(store.listRuns(filter));
      return 0;
    });
  }
  auto stub = controlStub(address);
  auto ctx = contextWithDeadline(std::chrono::seconds{5});
  v1::ListRunsResponse resp;
  if (auto s = stub->ListRuns(ctx.get(), req, &resp); !s.ok()) {
    return rpcError("listing runs", address, s);
  }
  if (resp.runs().empty() && !q.schedule.empty()) {
    // No runs of a schedule that does not exist is a typo, not an answer.
    v1::GetScheduleRequest get;
    get.set_name(q.schedule);
    v1::ScheduleStatus st;
    auto getCtx = contextWithDeadline(std::chrono::seconds{5});
    if (auto s = stub->GetSchedule(getCtx.get(), get, &st); !s.ok()) {
      return rpcError("listing runs", address, s);
    }
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
    cmd->add_option("--limit", q_.limit, fmt::format("how many runs, at most {}", kMaxListRuns))->capture_default_str();
    cmd->add_option("--trigger", q_.trigger, "only runs started by this trigger: cli, ci, schedule, gameday");
    cmd->add_option("--verdict", q_.verdict, fmt::format("only runs with this verdict: {}", kVerdictWords));
    cmd->add_option("--since", q_.since,
                    "only runs started since a time ago (7d, 36h, 90m) or a date or instant (2026-12-01 is UTC "
                    "midnight; 2026-12-01T08:00:00+01:00)");
    cmd->add_option("--schedule", q_.schedule, "only the runs of this schedule (faultline schedule list)");
    return cmd;
  }
  int run() override {
    return checkControllerAddress(address_) && loadToken(tokenFile_) ? runsCommand(address_, db_, q_) : kExitUsage;
  }

 private:
  std::string address_ = kDefaultController;
  std::string tokenFile_;
  std::string db_;
  RunsQuery q_;
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
