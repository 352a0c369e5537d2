// faultline gameday: several experiment files run in order through a controller, each as a run of
// trigger "gameday"; a summary table, one JUnit file and a Markdown summary for the notes.
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <iostream>
#include <mutex>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "agent/session/runtime.h"
#include "controller/cli/command.h"
#include "controller/engine/engine.h"
#include "controller/report/gameday_report.h"
#include "controller/report/run_format.h"

namespace faultline::controller::cli {
namespace {

// The trigger every run of a game day is recorded with: `faultline runs --trigger gameday`.
constexpr const char* kGamedayTrigger = "gameday";
// The most files one game day takes (each is read whole and kept parsed until the end).
constexpr std::size_t kMaxGamedayFiles = 100;

struct GamedayOptions {
  std::vector<std::string> files;
  std::string controller = kDefaultController;
  std::string tokenFile;
  bool keepGoing = false;
  std::string junit;
  std::string summary;
  std::vector<std::string> vars;
  std::vector<std::string> secretVars;
};

struct Loaded {
  std::string file;
  std::string yaml;
  Experiment experiment;
};

// Watches runId to its end, printing each event with the experiment's number. The verdict, or
// VERDICT_UNSPECIFIED when the stream broke before run.finished (error set).
v1::Verdict watch(v1::Control::Stub& stub, const std::string& runId, std::size_t number, std::string& error) {
  grpc::ClientContext ctx;
  addCredentials(ctx);
  v1::WatchRunRequest req;
  req.set_run_id(runId);
  auto reader = stub.WatchRun(&ctx, req);
  v1::RunEvent e;
  v1::Verdict verdict = v1::VERDICT_UNSPECIFIED;
  while (reader->Read(&e)) {
    const std::string agent = agentName(e.agent_id(), e.host());
    std::cout << fmt::format("[{}] {}  {:<16} {:<15} {}", number, clock(e.at()), e.kind(), agent.empty() ? "-" : agent,
                             e.message())
              << std::endl;
    if (e.kind() == "run.finished") {
      verdict = e.verdict();
    }
  }
  const auto status = reader->Finish();
  if (!status.ok() && verdict == v1::VERDICT_UNSPECIFIED) {
    error = fmt::format("watching run {}: {}", runId, status.error_message());
  }
  return verdict;
}

int gamedayCommand(const GamedayOptions& o) {
  if (o.files.size() > kMaxGamedayFiles) {
    std::cerr << fmt::format("faultline gameday: {} files, more than the {} accepted\n", o.files.size(),
                             kMaxGamedayFiles);
    return kExitUsage;
  }
  Variables vars;
  SecretNames secrets;
  if (auto bad = parseVariableOptions(o.vars, o.secretVars, vars, secrets); !bad.empty()) {
    std::cerr << "faultline gameday: " << bad << "\n";
    return kExitUsage;
  }
  // Every file is read and checked before the first run: a typo in the third must not end a game
  // day after the first two ran.
  std::vector<Loaded> loaded;
  bool invalid = false;
  for (const auto& file : o.files) {
    std::string error;
    std::string yaml = readFile(file, error);
    if (!error.empty()) {
      std::cerr << "faultline gameday: " << error << "\n";
      invalid = true;
      continue;
    }
    auto parsed = parseExperiment(yaml, file, vars);
    if (!parsed) {
      for (const auto& d : parsed.error()) {
        std::cerr << redactSecrets(format(d), vars, secrets) << "\n";
      }
      invalid = true;
      continue;
    }
    loaded.push_back({file, std::move(yaml), std::move(*parsed)});
  }
  if (invalid) {
    std::cerr << "faultline gameday: nothing was run (every file is checked first)\n";
    return kExitUsage;
  }

  std::vector<GamedayEntry> entries;
  for (const auto& l : loaded) {
    entries.push_back({l.file, l.experiment.name, {}, ""});
  }
  auto stub = controlStub(o.controller);
  SignalCatcher signals;
  std::mutex currentMutex;
  std::string current;  // the run in progress, for the signal thread
  std::atomic<bool> interrupted{false};
  signals.onSignal([&](int sig, int count) {
    interrupted = true;
    std::string runId;
    {
      std::lock_guard lock(currentMutex);
      runId = current;
    }
    if (count > 1 || runId.empty()) {
      std::cerr << "faultline gameday: stopping; no further experiment starts\n";
      return;
    }
    std::cerr << fmt::format("\nfaultline gameday: SIG{}: aborting run {}; no further experiment starts\n",
                             sigabbrev_np(sig), runId);
    grpc::ClientContext actx;
    addCredentials(actx);
    actx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds{5});
    v1::AbortRunRequest areq;
    areq.set_run_id(runId);
    areq.set_reason(fmt::format("faultline gameday received SIG{}", sigabbrev_np(sig)));
    v1::AbortRunResponse aresp;
    (void)stub->AbortRun(&actx, areq, &aresp);
  });

  int worst = 0;
  std::string stopReason;
  for (std::size_t i = 0; i < loaded.size(); ++i) {
    const auto& l = loaded[i];
    if (!stopReason.empty()) {
      entries[i].notRun = stopReason;
      continue;
    }
    std::cout << fmt::format("== {}/{}: {} ({})\n", i + 1, loaded.size(), l.experiment.name, l.file) << std::flush;
    v1::SubmitRunRequest req;
    req.set_experiment(l.yaml);
    req.set_file_name(l.file);
    req.set_trigger(kGamedayTrigger);
    req.mutable_variables()->insert(vars.begin(), vars.end());
    for (const auto& name : secrets) {
      req.add_secret_variables(name);
    }
    v1::SubmitRunResponse resp;
    auto ctx = contextWithDeadline(std::chrono::seconds{10});
    if (auto s = stub->SubmitRun(ctx.get(), req, &resp); !s.ok()) {
      const int code = rpcError("submitting " + l.file, o.controller, s);
      worst = std::max(worst, code == kExitUsage ? kExitError : code);
      entries[i].notRun = fmt::format("not run: the controller refused it: {}", s.error_message());
      stopReason = fmt::format("not run: experiment {} ({}) could not be submitted", i + 1, l.experiment.name);
      continue;
    }
    {
      std::lock_guard lock(currentMutex);
      current = resp.run_id();
    }
    std::string error;
    const v1::Verdict verdict = watch(*stub, resp.run_id(), i + 1, error);
    {
      std::lock_guard lock(currentMutex);
      current.clear();
    }
    // The record, for the table and the reports (also when the watch broke: it may have ended).
    auto gctx = contextWithDeadline(std::chrono::seconds{10});
    v1::GetRunRequest greq;
    greq.set_run_id(resp.run_id());
    v1::Run run;
    if (auto s = stub->GetRun(gctx.get(), greq, &run); !s.ok()) {
      rpcError("reading run " + resp.run_id(), o.controller, s);
      run.Clear();
      run.set_run_id(resp.run_id());
      run.set_experiment(l.experiment.name);
      run.set_verdict(verdict == v1::VERDICT_UNSPECIFIED ? v1::VERDICT_ERROR : verdict);
      run.set_reason(error.empty() ? "its record could not be read" : error);
    } else if (verdict == v1::VERDICT_UNSPECIFIED && run.verdict() == v1::VERDICT_UNSPECIFIED) {
      std::cerr << "faultline gameday: " << error << "\n";
      run.set_verdict(v1::VERDICT_ERROR);  // shown as error: the game day does not know how it ended
      run.set_reason(error);
    }
    const int code = exitCodeFor(run.verdict());
    worst = std::max(worst, code);
    std::cout << fmt::format("== {}/{}: {}: {} (exit {})\n\n", i + 1, loaded.size(), l.experiment.name,
                             verdictWord(run.verdict()), code);
    entries[i].run = std::move(run);
    const v1::Verdict v = entries[i].run.verdict();
    if (interrupted) {
      stopReason = "not run: the game day was interrupted";
    } else if (v == v1::VERDICT_ABORTED || v == v1::VERDICT_ERROR) {
      stopReason = fmt::format("not run: experiment {} ({}) ended {}; a game day always stops there", i + 1,
                               l.experiment.name, verdictWord(v));
    } else if (v != v1::VERDICT_HELD && !o.keepGoing) {
      stopReason =
          fmt::format("not run: experiment {} ({}) was {} (no --keep-going)", i + 1, l.experiment.name, verdictWord(v));
    }
  }
  signals.finish();

  std::cout << formatGamedayTable(entries);
  const std::string result = fmt::format("{} (exit {})",
                                         worst == 0   ? "held"
                                         : worst == 1 ? "violated"
                                         : worst == 2 ? "aborted"
                                                      : "error",
                                         worst);
  std::cout << "\ngame day: " << result << "\n";
  bool reportsOk = true;
  if (!o.junit.empty()) {
    std::vector<const Experiment*> experiments;
    for (const auto& l : loaded) {
      experiments.push_back(&l.experiment);
    }
    const std::string xml = redactSecrets(formatGamedayJUnit(entries, experiments, agent::hostName()), vars, secrets);
    if (auto e = writeReport(o.junit, xml); !e.empty()) {
      std::cerr << "faultline gameday: --junit: " << e << "\n";
      reportsOk = false;
    } else {
      std::cout << fmt::format("junit: {}\n", o.junit);
    }
  }
  if (!o.summary.empty()) {
    const std::string md = redactSecrets(formatGamedayMarkdown(entries, o.controller, result), vars, secrets);
    if (auto e = writeReport(o.summary, md); !e.empty()) {
      std::cerr << "faultline gameday: --summary: " << e << "\n";
      reportsOk = false;
    } else {
      std::cout << fmt::format("summary: {}\n", o.summary);
    }
  }
  return !reportsOk && worst == 0 ? kExitError : worst;
}

class GamedayCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    cmd_ = app.add_subcommand(
        "gameday",
        "run several experiment files in order through the controller (trigger gameday), stopping at the first "
        "that is not held unless --keep-going; an aborted or failed (error) run always stops the game day. Prints a "
        "summary table; exit code of the worst verdict: 0 all held, 1 violated, 2 aborted, 3 execution error, 4 "
        "invalid file or usage (nothing run). Role: operator (admin for an experiment with a command probe)");
    cmd_->add_option("FILE", o_.files, "experiment files (YAML), run in the order given; all checked before the first")
        ->required();
    cmd_->add_option("--controller", o_.controller, kControllerHelp)->capture_default_str();
    addTokenOption(cmd_, o_.tokenFile);
    cmd_->add_flag("--keep-going", o_.keepGoing,
                   "run the next experiment after a violated or not steady one (never after aborted or error)");
    cmd_->add_option("--junit", o_.junit,
                     "write one JUnit XML file here at the end: a <testsuite> per experiment (one skipped test case "
                     "for each that did not run)");
    cmd_->add_option("--summary", o_.summary,
                     "write a Markdown summary here at the end: the table and a section per experiment, for "
                     "postmortem or game-day notes");
    cmd_->add_option("--var", o_.vars, std::string(kVarHelp) + "; the same for every file")->allow_extra_args(false);
    cmd_->add_option("--secret-var", o_.secretVars,
                     "NAME=VALUE: as --var, for a secret: its value is never recorded or printed")
        ->allow_extra_args(false);
    return cmd_;
  }
  int run() override {
    if (!checkControllerAddress(o_.controller) || !loadToken(o_.tokenFile)) {
      return kExitUsage;
    }
    spdlog::set_level(spdlog::level::err);
    return gamedayCommand(o_);
  }

 private:
  CLI::App* cmd_ = nullptr;
  GamedayOptions o_;
};

}  // namespace

std::unique_ptr<Command> makeGamedayCommand() {
  return std::make_unique<GamedayCommand>();
}

}  // namespace faultline::controller::cli
