// faultline schedule add|list|show|pause|resume|rm|run-now: the controller's schedules
// (docs/schedules.md), over the Schedule RPCs of the Control API.
#include <iostream>

#include <fmt/chrono.h>
#include <fmt/format.h>

#include "agent/faults/spec.h"
#include "controller/cli/command.h"
#include "controller/cli/schedule_file.h"
#include "controller/report/run_format.h"
#include "controller/scheduler/cron.h"

namespace faultline::controller::cli {
namespace {

// t on the wall clock of the schedule's zone ("2026-12-07 03:00:00 CET"); UTC when the zone is
// unknown here.
std::string timeText(const google::protobuf::Timestamp& t, const std::string& zone) {
  const std::chrono::sys_seconds s{std::chrono::seconds{t.seconds()}};
  try {
    return date::format("%Y-%m-%d %H:%M:%S %Z", date::make_zoned(scheduler::findZone(zone), s));
  } catch (const std::exception&) {
    return fmt::format("{:%Y-%m-%d %H:%M:%S} UTC", s);
  }
}

std::string durationText(const google::protobuf::Duration& d) {
  const int64_t ms = d.seconds() * 1000 + d.nanos() / 1'000'000;
  if (ms == 0) {
    return "none";
  }
  return formatDuration(std::chrono::milliseconds{ms});
}

std::string verdictText(v1::Verdict v) {
  return v == v1::VERDICT_UNSPECIFIED ? "" : std::string(verdictWord(v));
}

void printStatus(const v1::ScheduleStatus& st, bool full) {
  const auto& s = st.schedule();
  std::cout << fmt::format("schedule {}{}\n", s.name(), s.paused() ? " (paused)" : "");
  std::cout << fmt::format("  cron:        {}{}\n", s.cron(),
                           s.timezone().empty() ? " (UTC)" : " (" + s.timezone() + ")");
  std::cout << fmt::format("  experiment:  {} sha256 {}\n", s.file_name(), s.experiment_sha256());
  std::cout << fmt::format("  concurrency: {}; starting deadline {}; jitter {}\n", s.concurrency(),
                           durationText(s.starting_deadline()), durationText(s.jitter()));
  for (const auto& b : s.blackouts()) {
    std::cout << fmt::format("  blackout:    {}\n", b);
  }
  for (const auto& p : s.only_if()) {
    std::cout << fmt::format("  only if:     probe {} passes\n", p);
  }
  for (const auto& [k, v] : s.variables()) {
    std::cout << fmt::format("  var:         {}={}\n", k, v);
  }
  if (!st.error().empty()) {
    std::cout << fmt::format("  error:       {} (it does not fire)\n", st.error());
  }
  if (!full) {
    return;
  }
  std::cout << "  next fires:\n";
  if (st.next_fires().empty()) {
    std::cout << (s.paused() ? "    none while paused\n" : "    none\n");
  }
  for (int i = 0; i < st.next_fires_size(); ++i) {
    const std::string blackout = i < st.next_fire_blackouts_size() ? st.next_fire_blackouts(i) : "";
    std::cout << fmt::format("    {}{}\n", timeText(st.next_fires(i), s.timezone()),
                             blackout.empty() ? "" : fmt::format("  skipped: in blackout window '{}'", blackout));
  }
  std::cout << "  last fires (newest first):\n";
  if (st.fires().empty()) {
    std::cout << "    none yet\n";
  }
  for (const auto& f : st.fires()) {
    std::string what = f.outcome();
    if (f.outcome() == "started") {
      what += " run " + f.run_id();
      if (f.verdict() != v1::VERDICT_UNSPECIFIED) {
        what += ": " + verdictText(f.verdict());
      }
    }
    if (!f.reason().empty()) {
      what += ": " + f.reason();
    }
    std::cout << fmt::format("    {} {}\n", timeText(f.fire_at(), s.timezone()), what);
  }
}

// Exit code of an RPC's status for the schedule commands.
int call(const std::string& what, const std::string& address, const grpc::Status& s) {
  return s.ok() ? 0 : rpcError(what, address, s);
}

class ScheduleCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    auto* cmd = app.add_subcommand("schedule", "run experiments on a cron timetable (docs/schedules.md)");
    cmd->require_subcommand(1);
    auto common = [&](CLI::App* sub) {
      sub->add_option("--controller", address_, kControllerHelp)->capture_default_str();
      addTokenOption(sub, tokenFile_);
    };
    add_ = cmd->add_subcommand("add", "create or replace a schedule (the file's content is stored, not its path)");
    add_->add_option("FILE", spec_.file, "experiment file")->required();
    add_->add_option("--name", spec_.name, "the schedule's name: [a-z0-9][a-z0-9._-]*")->required();
    add_->add_option("--cron", spec_.cron,
                     "cron expression: 5 fields, or 6 with seconds first; @hourly, @daily, @weekly, @monthly")
        ->required();
    add_->add_option("--timezone", spec_.timezone, "IANA zone of the cron fields and blackouts (default UTC)");
    add_->add_option("--var", spec_.vars, kVarHelp);
    add_->add_option("--concurrency", spec_.concurrency,
                     "forbid: skip a fire while a run of the schedule is active; allow; replace: abort it first")
        ->capture_default_str();
    add_->add_option("--starting-deadline", spec_.startingDeadline,
                     "a fire missed while the controller was down runs at its start only if at most this old "
                     "(e.g. 10m; default: never)");
    add_->add_option("--jitter", spec_.jitter, "move each fire by a random amount in [0, D) (e.g. 30m)");
    add_->add_option("--blackout", spec_.blackouts,
                     "a window in which no run starts: 'Fri 16:00 - Mon 08:00', 'daily 22:00 - 06:00', "
                     "'2026-12-24 - 2026-12-27' (repeatable)");
    add_->add_option("--only-if", spec_.onlyIf,
                     "NAME of a probe of the experiment's steadyState that must pass before each fire, or the fire is "
                     "skipped (repeatable)");
    common(add_);
    list_ = cmd->add_subcommand("list", "list the schedules");
    common(list_);
    for (auto [sub, name, help] :
         {std::tuple{&show_, "show", "a schedule, its next five fires and its last fires"},
          std::tuple{&pause_, "pause", "stop a schedule's fires until resume"},
          std::tuple{&resume_, "resume", "fire again from now on (no catch-up)"},
          std::tuple{&rm_, "rm", "delete a schedule and its fires (its runs stay)"},
          std::tuple{&runNow_, "run-now", "fire a schedule now (concurrency, only-if apply)"}}) {
      *sub = cmd->add_subcommand(name, help);
      (*sub)->add_option("NAME", name_, "schedule name")->required();
      common(*sub);
    }
    return cmd;
  }

  int run() override {
    if (!checkControllerAddress(address_) || !loadToken(tokenFile_)) {
      return kExitUsage;
    }
    auto stub = controlStub(address_);
    if (*add_) {
      auto schedule = buildSchedule(spec_);
      if (!schedule) {
        std::cerr << "faultline schedule add: " << schedule.error() << "\n";
        return kExitUsage;
      }
      return applySchedule(*stub, address_, *schedule);
    }
    if (*list_) {
      auto ctx = contextWithDeadline(std::chrono::seconds{10});
      v1::ListSchedulesResponse resp;
      if (auto s = stub->ListSchedules(ctx.get(), {}, &resp); !s.ok()) {
        return rpcError("listing schedules", address_, s);
      }
      if (resp.schedules().empty()) {
        std::cout << "no schedules\n";
      }
      std::cout << fmt::format("{:<24} {:<22} {:<16} {:<8} {}\n", "NAME", "CRON", "TIMEZONE", "STATE", "NEXT FIRE");
      for (const auto& st : resp.schedules()) {
        const auto& s = st.schedule();
        std::cout << fmt::format("{:<24} {:<22} {:<16} {:<8} {}\n", s.name(), s.cron(),
                                 s.timezone().empty() ? "UTC" : s.timezone(), s.paused() ? "paused" : "active",
                                 !st.error().empty()       ? "error: " + st.error()
                                 : st.next_fires().empty() ? "-"
                                                           : timeText(st.next_fires(0), s.timezone()));
      }
      return 0;
    }
    v1::ScheduleNameRequest req;
    req.set_name(name_);
    auto ctx = contextWithDeadline(std::chrono::seconds{10});
    if (*show_) {
      v1::GetScheduleRequest get;
      get.set_name(name_);
      v1::ScheduleStatus st;
      if (auto s = stub->GetSchedule(ctx.get(), get, &st); !s.ok()) {
        return rpcError("reading schedule " + name_, address_, s);
      }
      printStatus(st, true);
      return 0;
    }
    if (*pause_ || *resume_) {
      v1::ScheduleStatus st;
      const bool pause = pause_->parsed();
      auto s = pause ? stub->PauseSchedule(ctx.get(), req, &st) : stub->ResumeSchedule(ctx.get(), req, &st);
      if (!s.ok()) {
        return rpcError((pause ? "pausing schedule " : "resuming schedule ") + name_, address_, s);
      }
      std::cout << fmt::format("schedule {} {}\n", name_, pause ? "paused" : "resumed");
      return 0;
    }
    if (*rm_) {
      v1::DeleteScheduleResponse resp;
      if (auto s = stub->DeleteSchedule(ctx.get(), req, &resp); !s.ok()) {
        return rpcError("deleting schedule " + name_, address_, s);
      }
      std::cout << fmt::format("schedule {} deleted\n", name_);
      return 0;
    }
    if (*runNow_) {
      auto longCtx = contextWithDeadline(std::chrono::seconds{120});  // only-if probes, a replace's wait
      v1::ScheduleFire fire;
      if (auto s = stub->RunScheduleNow(longCtx.get(), req, &fire); !s.ok()) {
        return rpcError("firing schedule " + name_, address_, s);
      }
      if (fire.outcome() == "started") {
        std::cout << fmt::format("schedule {}: started run {} (faultline show {})\n", name_, fire.run_id(),
                                 fire.run_id());
        return 0;
      }
      std::cout << fmt::format("schedule {}: {}: {}\n", name_, fire.outcome(), fire.reason());
      return 1;
    }
    return kExitUsage;
  }

 private:
  ScheduleFlags spec_;
  std::string name_;
  std::string address_ = kDefaultController;
  std::string tokenFile_;
  CLI::App* add_ = nullptr;
  CLI::App* list_ = nullptr;
  CLI::App* show_ = nullptr;
  CLI::App* pause_ = nullptr;
  CLI::App* resume_ = nullptr;
  CLI::App* rm_ = nullptr;
  CLI::App* runNow_ = nullptr;
};

// faultline apply FILE: a `kind: Schedule` file, created or updated by name (idempotent).
class ApplyCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    auto* cmd = app.add_subcommand(
        "apply", "create or update the schedule of a `kind: Schedule` file; prints created, updated or unchanged");
    cmd->add_option("FILE", file_, "schedule file (YAML, docs/schedules.md)")->required();
    cmd->add_option("--controller", address_, kControllerHelp)->capture_default_str();
    addTokenOption(cmd, tokenFile_);
    return cmd;
  }
  int run() override {
    if (!checkControllerAddress(address_) || !loadToken(tokenFile_)) {
      return kExitUsage;
    }
    std::string error;
    const std::string text = readFile(file_, error);
    if (!error.empty()) {
      std::cerr << "faultline apply: " << error << "\n";
      return kExitUsage;
    }
    auto schedule = parseScheduleFile(text, file_);
    if (!schedule) {
      for (const auto& d : schedule.error()) {
        std::cerr << format(d) << "\n";
      }
      return kExitUsage;
    }
    auto stub = controlStub(address_);
    return applySchedule(*stub, address_, *schedule);
  }

 private:
  std::string file_;
  std::string address_ = kDefaultController;
  std::string tokenFile_;
};

}  // namespace

int applySchedule(v1::Control::Stub& stub, const std::string& address, const v1::Schedule& schedule) {
  auto ctx = contextWithDeadline(std::chrono::seconds{10});
  v1::ApplyScheduleRequest req;
  *req.mutable_schedule() = schedule;
  v1::ApplyScheduleResponse resp;
  if (auto s = stub.ApplySchedule(ctx.get(), req, &resp); !s.ok()) {
    return call("applying schedule " + schedule.name(), address, s);
  }
  std::cout << fmt::format("schedule {} {}\n", schedule.name(), resp.result());
  return 0;
}

tl::expected<v1::Schedule, std::string> buildSchedule(const ScheduleFlags& flags) {
  v1::Schedule s;
  std::string error;
  const std::string content = readFile(flags.file, error);
  if (!error.empty()) {
    return tl::unexpected(error);
  }
  s.set_name(flags.name);
  s.set_experiment(content);
  s.set_file_name(flags.file);
  s.set_cron(flags.cron);
  s.set_timezone(flags.timezone);
  Variables vars;
  if (auto bad = parseVariables(flags.vars, vars); !bad.empty()) {
    return tl::unexpected(bad);
  }
  s.mutable_variables()->insert(vars.begin(), vars.end());
  s.set_concurrency(flags.concurrency);
  for (auto [text, field, out] :
       {std::tuple{&flags.startingDeadline, "--starting-deadline", s.mutable_starting_deadline()},
        std::tuple{&flags.jitter, "--jitter", s.mutable_jitter()}}) {
    if (text->empty()) {
      continue;
    }
    auto d = parseScheduleDuration(*text);
    if (!d) {
      return tl::unexpected(fmt::format("{}: {}", field, d.error()));
    }
    *out = *d;
  }
  for (const auto& b : flags.blackouts) {
    s.add_blackouts(b);
  }
  for (const auto& p : flags.onlyIf) {
    s.add_only_if(p);
  }
  return s;
}

std::unique_ptr<Command> makeScheduleCommand() {
  return std::make_unique<ScheduleCommand>();
}

std::unique_ptr<Command> makeApplyCommand() {
  return std::make_unique<ApplyCommand>();
}

}  // namespace faultline::controller::cli
