// faultline run: an experiment file against a controller, or --local with an embedded one.
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <google/protobuf/util/time_util.h>
#include <spdlog/spdlog.h>

#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/safety/recovery.h"
#include "agent/session/runtime.h"
#include "agent/session/session.h"
#include "controller/cli/command.h"
#include "controller/engine/capabilities.h"
#include "controller/engine/engine.h"
#include "controller/report/run_format.h"
#include "controller/server/controller.h"
#include "controller/store/store.h"

namespace faultline::controller::cli {
namespace {

// One line per event, every control character a space (oneLine()): a probe or agent name, or a
// server's answer quoted in a message, cannot move the cursor, recolour the terminal or forge a line.
void printEvent(const v1::RunEvent& e) {
  const std::string agent = oneLine(agentName(e.agent_id(), e.host()));
  std::cout << fmt::format("{}  {:<16} {:<15} {}", clock(e.at()), oneLine(e.kind()), agent.empty() ? "-" : agent,
                           oneLine(e.message()))
            << std::endl;
}

int watchRun(v1::Control::Stub& stub, const std::string& address, const std::string& runId) {
  grpc::ClientContext ctx;
  addCredentials(ctx);
  v1::WatchRunRequest req;
  req.set_run_id(runId);
  auto reader = stub.WatchRun(&ctx, req);
  v1::RunEvent e;
  v1::Verdict verdict = v1::VERDICT_UNSPECIFIED;
  std::string reason;
  while (reader->Read(&e)) {
    printEvent(e);
    if (e.kind() == "run.finished") {
      verdict = e.verdict();
    }
  }
  auto status = reader->Finish();
  if (!status.ok() && verdict == v1::VERDICT_UNSPECIFIED) {
    return rpcError("watching run " + runId, address, status);
  }
  std::cout << fmt::format("\nverdict: {}  (run {}, exit {})\n", verdictWord(verdict), runId, exitCodeFor(verdict));
  return exitCodeFor(verdict);
}

// A directory only this user may enter (0700), removed with everything in it.
struct PrivateDir {
  void create() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "faultline-local-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      throw std::system_error(errno, std::generic_category(), "cannot create a private directory in /tmp");
    }
    path = tmpl;
  }
  ~PrivateDir() {
    if (!path.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  }
  std::string path;
};

struct RunOptions {
  std::string file;
  std::string controller;
  std::string tokenFile;
  bool local = false;
  bool dbGiven = false;
  std::string db = "faultline.db";
  std::string trigger = "cli";
  std::vector<std::string> labels;
  std::string stateDir;  // --local: the in-process agent's undo journal; "" = defaultLocalStateDir()
  std::vector<std::string> vars;
  std::vector<std::string> secretVars;  // --secret-var NAME=VALUE
  bool dryRun = false;
  std::string journal;                 // --journal FILE: JSON record of the run
  std::string junit;                   // --junit FILE: JUnit XML for CI
  std::string networkDriver = "auto";  // --local: the in-process agent's --network-driver
};

// Prints what a run would do: the resolved hosts and every fault each would receive.
void printPlanTo(std::ostream& out, const v1::RunPlan& plan) {
  out << fmt::format("dry run of experiment {}: nothing is injected\n", plan.experiment());
  out << fmt::format("targets: {}\n", plan.targets());
  out << "method:\n";
  for (const auto& step : plan.steps()) {
    out << "  " << step << "\n";
  }
  for (const auto& h : plan.hosts()) {
    std::map<std::string, std::string> sorted(h.agent().labels().begin(), h.agent().labels().end());
    std::string labels;
    for (const auto& [k, v] : sorted) {
      labels += fmt::format("{}{}={}", labels.empty() ? "" : ",", k, v);
    }
    out << fmt::format("agent {} (host {}, labels {}, network driver {}): {} fault(s)\n", h.agent().agent_id(),
                       h.agent().hostname().empty() ? "-" : h.agent().hostname(), labels.empty() ? "-" : labels,
                       networkDriverText(h.agent().capabilities()), h.faults_size());
    for (const auto& f : h.faults()) {
      out << fmt::format("  step {:<5} {:<18} {:<20} for {}: {}\n", f.step(), faultKindName(f.spec()), f.name(),
                         formatDuration(toMicros(f.duration())), f.spec().ShortDebugString());
    }
  }
}

// printPlanTo on stdout; a secret variable's value (in a fault's spec, say) is printed as ${NAME}.
void printPlan(const v1::RunPlan& plan, const Variables& vars, const SecretNames& secrets) {
  std::ostringstream text;
  printPlanTo(text, plan);
  std::cout << redactSecrets(text.str(), vars, secrets);
}

// Where `run --local` keeps its agent's undo journal unless --state-dir says otherwise: the same
// place for every run on this host, so a run killed mid-fault is recovered by the next one (or
// by `faultline-agent revert-all --state-dir DIR`).
std::string defaultLocalStateDir() {
  if (::geteuid() == 0) {
    return "/var/lib/faultline/local";
  }
  if (const char* state = std::getenv("XDG_STATE_HOME"); state != nullptr && *state == '/') {
    return std::string(state) + "/faultline/local";
  }
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr && *home == '/' ? home : "/tmp") + "/.local/state/faultline/local";
}

// --journal and --junit: reads the finished run and writes the reports. Returns false when a
// report could not be written (the run's own exit code still stands; the caller reports exit 3).
bool writeReports(v1::Control::Stub& stub, const std::string& address, const std::string& runId, const RunOptions& o,
                  const std::string& yaml, const Variables& vars, const SecretNames& secrets,
                  const Experiment& experiment) {
  if (o.journal.empty() && o.junit.empty()) {
    return true;
  }
  auto ctx = contextWithDeadline(std::chrono::seconds{10});
  v1::GetRunRequest req;
  req.set_run_id(runId);
  v1::Run run;
  if (auto s = stub.GetRun(ctx.get(), req, &run); !s.ok()) {
    rpcError("reading run " + runId + " for its reports", address, s);
    return false;
  }
  bool ok = true;
  if (!o.journal.empty()) {
    if (auto e = writeReport(o.journal, formatJournal(run, o.file, yaml, vars, secrets)); !e.empty()) {
      std::cerr << "faultline: --journal: " << e << "\n";
      ok = false;
    } else {
      std::cout << fmt::format("journal: {}\n", o.journal);
    }
  }
  if (!o.junit.empty()) {
    if (auto e = writeReport(o.junit, redactSecrets(formatJUnit(run, experiment, agent::hostName()), vars, secrets));
        !e.empty()) {
      std::cerr << "faultline: --junit: " << e << "\n";
      ok = false;
    } else {
      std::cout << fmt::format("junit: {}\n", o.junit);
    }
  }
  return ok;
}

int runCommand(const RunOptions& o) {
  if (o.dryRun && (!o.journal.empty() || !o.junit.empty())) {
    std::cerr << "faultline: --dry-run records nothing, so there is no run for "
              << (o.journal.empty() ? "--junit" : "--journal") << " to write; leave it out, or run without --dry-run\n";
    return kExitUsage;
  }
  Variables vars;
  SecretNames secrets;
  if (auto bad = parseVariableOptions(o.vars, o.secretVars, vars, secrets); !bad.empty()) {
    std::cerr << "faultline: " << bad << "\n";
    return kExitUsage;
  }
  std::string error;
  const std::string yaml = readFile(o.file, error);
  if (!error.empty()) {
    std::cerr << "faultline: " << error << "\n";
    return kExitUsage;
  }
  for (const auto& name : declaredSecretVariables(yaml)) {  // `secret: true` in the file's variables
    secrets.insert(name);
  }
  auto parsed = parseExperiment(yaml, o.file, vars);
  if (!parsed) {
    for (const auto& d : parsed.error()) {
      std::cerr << redactSecrets(format(d), vars, secrets) << "\n";  // it quotes values, secrets' too
    }
    return kExitUsage;
  }
  if (o.trigger != "cli" && o.trigger != "ci" && o.trigger != "schedule") {
    std::cerr << "faultline: --trigger '" << o.trigger << "' is not one of cli, ci, schedule\n";
    return kExitUsage;
  }

  agent::SessionOptions so;
  if (o.local) {
    if (auto bad = parseLabels(o.labels, so.labels); !bad.empty()) {
      std::cerr << "faultline: --label: " << bad << "\n";
      return kExitUsage;
    }
  } else if (!o.labels.empty() || o.dbGiven) {
    std::cerr << "faultline: --label and --db go with --local (a controller keeps its own records)\n";
    return kExitUsage;
  } else if (o.networkDriver != "auto") {
    std::cerr << "faultline: --network-driver goes with --local (each faultline-agent has its own)\n";
    return kExitUsage;
  }
  std::string address = o.controller.empty() ? kDefaultController : o.controller;
  if (auto bad = checkAddress(address, false); !bad.empty()) {
    std::cerr << "faultline: --controller: " << bad << "\n";
    return kExitUsage;
  }

  SignalCatcher signals;
  std::unique_ptr<Controller> controller;
  std::unique_ptr<agent::AgentRuntime> localAgent;
  PrivateDir socketDir;
  if (o.local) {
    // The embedded controller listens on a Unix socket (mode 0600) in a directory only this user
    // can enter: no other local user can submit runs to it, and this user is its admin by
    // SO_PEERCRED. Its command probes run as this user (no --probe-user: it is their process).
    try {
      socketDir.create();
      ControllerOptions co{"", o.db, std::chrono::seconds{15}, true};
      co.socket = socketDir.path + "/control.sock";
      co.socketGroup = "";
      address = "unix:" + co.socket;
      controller = std::make_unique<Controller>(std::move(co));
      controller->start();
    } catch (const std::exception& e) {
      std::cerr << "faultline: --local: " << e.what() << "\n";
      return kExitError;
    }
    so.controller = address;
    so.networkDriver = o.networkDriver;
    so.hostname = agent::hostName();
    so.agentId = so.hostname;
    so.labels.emplace("host", so.hostname);
    // The in-process agent journals its faults like faultline-agent, and recovers what a run
    // killed mid-fault (SIGKILL, power loss) left behind before this one starts.
    const std::string stateDir = o.stateDir.empty() ? defaultLocalStateDir() : o.stateDir;
    std::error_code ec;
    std::filesystem::create_directories(stateDir, ec);
    if (ec) {
      std::cerr << "faultline: --local: cannot create the state directory " << stateDir << ": " << ec.message()
                << " (choose one with --state-dir)\n";
      return kExitError;
    }
    std::filesystem::permissions(stateDir, std::filesystem::perms::owner_all, ec);
    // What recovery reverts is recorded in the run it belonged to, when that run is in --db.
    auto journal = agent::openJournalAndRecover(
        stateDir, [](const std::string& netns) { return kernel::openQdiscTable(netns); }, &so.initialReports);
    if (!journal) {
      std::cerr << "faultline: --local: " << journal.error().message << "\n";
      return kExitError;
    }
    for (const auto& r : so.initialReports) {
      std::cerr << fmt::format("faultline: recovered fault {} left by an earlier run: {}\n", r.fault_id(), r.detail());
    }
    localAgent = std::make_unique<agent::AgentRuntime>(so, true, std::move(*journal));
    localAgent->start();
    if (!controller->gateway().waitForAgents(1, std::chrono::seconds{10})) {
      std::cerr << "faultline: --local: the in-process agent did not register within 10s\n";
      return kExitError;
    }
  }

  auto stub = controlStub(address);
  v1::SubmitRunRequest req;
  req.set_experiment(yaml);
  req.set_file_name(o.file);
  req.set_trigger(o.trigger);
  req.mutable_variables()->insert(vars.begin(), vars.end());
  for (const auto& name : secrets) {
    req.add_secret_variables(name);
  }
  if (o.dryRun) {
    v1::RunPlan plan;
    auto pctx = contextWithDeadline(std::chrono::seconds{10});
    const auto s = stub->PlanRun(pctx.get(), req, &plan);
    signals.finish();
    if (localAgent) {
      localAgent->stop("faultline run --dry-run finished");
    }
    if (controller) {
      controller->shutdown();
    }
    if (s.error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
      std::cerr << "faultline: " << redactSecrets(s.error_message(), vars, secrets) << "\n";
      return kExitError;
    }
    if (!s.ok()) {
      return rpcError("planning " + o.file, address, s);
    }
    printPlan(plan, vars, secrets);
    return 0;
  }
  v1::SubmitRunResponse resp;
  auto ctx = contextWithDeadline(std::chrono::seconds{10});
  if (auto s = stub->SubmitRun(ctx.get(), req, &resp); !s.ok()) {
    return rpcError("submitting " + o.file, address, s);
  }
  const std::string runId = resp.run_id();
  std::cout << fmt::format("run {}: {} on {}\n", runId, o.file, o.local ? "this host (--local)" : address);

  signals.onSignal([&](int sig, int count) {
    if (count > 1) {
      std::cerr << "faultline: still reverting; the run ends as soon as every agent confirms\n";
      return;
    }
    std::cerr << fmt::format("\nfaultline: SIG{}: aborting run {} and reverting its faults\n", sigabbrev_np(sig),
                             runId);
    grpc::ClientContext actx;
    addCredentials(actx);
    actx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds{5});
    v1::AbortRunRequest areq;
    areq.set_run_id(runId);
    areq.set_reason(sig == SIGINT ? "interrupted (SIGINT) by the user"
                                  : fmt::format("faultline run received SIG{}", sigabbrev_np(sig)));
    v1::AbortRunResponse aresp;
    (void)stub->AbortRun(&actx, areq, &aresp);
  });

  int code = watchRun(*stub, address, runId);
  signals.finish();
  if (!writeReports(*stub, address, runId, o, yaml, vars, secrets, *parsed) && code == 0) {
    code = kExitError;
  }
  if (localAgent) {
    localAgent->stop("faultline run --local finished");
  }
  if (controller) {
    controller->shutdown();
    std::cout << fmt::format("timeline: faultline show {} --db {}\n", runId, o.db);
  } else {
    std::cout << fmt::format("timeline: faultline show {} --controller {}\n", runId, address);
  }
  return code;
}

class RunCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    cmd_ = app.add_subcommand("run",
                              "run an experiment file and print its events as they happen; exit 0 "
                              "held, 1 violated, 2 aborted, 3 execution error, 4 invalid file or usage");
    cmd_->add_option("FILE", o_.file, "experiment file (YAML, apiVersion: faultline/v1)")->required();
    auto* ctrlOpt = cmd_->add_option("--controller", o_.controller,
                                     fmt::format("{} (default {})", kControllerHelp, kDefaultController));
    addTokenOption(cmd_, o_.tokenFile);
    cmd_->add_flag("--local", o_.local,
                   "run an embedded controller and an in-process agent on this host (records in --db)")
        ->excludes(ctrlOpt);
    cmd_->add_option("--db", o_.db, "record file for --local")->capture_default_str();
    cmd_->add_option("--state-dir", o_.stateDir,
                     fmt::format("with --local: the in-process agent's undo journal (default {}); a run killed "
                                 "mid-fault is reverted by the next run --local on the same directory",
                                 defaultLocalStateDir()))
        ->needs(cmd_->get_option("--local"));
    cmd_->add_option("--trigger", o_.trigger, "who started the run: cli, ci or schedule")->capture_default_str();
    cmd_->add_option("--label", o_.labels, "with --local: a label of the in-process agent, KEY=VALUE (repeatable)")
        ->allow_extra_args(false);
    cmd_->add_option("--network-driver", o_.networkDriver,
                     "with --local: the in-process agent's driver of network.delay, loss, duplicate, corrupt, reorder "
                     "and partition: netem (tc; needs sch_netem), nfqueue (netfilter + a userspace queue) or auto "
                     "(netem where the kernel has it, else nfqueue); as faultline-agent --network-driver")
        ->check(CLI::IsMember({"auto", "netem", "nfqueue"}))
        ->capture_default_str();
    cmd_->add_option("--var", o_.vars, kVarHelp)->allow_extra_args(false);
    cmd_->add_option("--secret-var", o_.secretVars,
                     "NAME=VALUE: as --var, for a secret: its value is never recorded or printed (events, verdict, "
                     "--journal, --junit, --dry-run, the record file show ${NAME}); names with SECRET, TOKEN, PASS, "
                     "KEY or CREDENTIAL are secrets with --var too")
        ->allow_extra_args(false);
    cmd_->add_flag("--dry-run", o_.dryRun,
                   "resolve the targets and print every fault each host would receive; inject nothing, record "
                   "nothing (exit 0, 3 when no host matches, 4 invalid file); not with --journal or --junit. "
                   "With --local, the local agent's crash recovery still runs first");
    cmd_->add_option("--journal", o_.journal,
                     "write the run's JSON journal here when it ends: experiment, hosts, events, probe samples, SLIs, "
                     "verdict");
    cmd_->add_option("--junit", o_.junit,
                     "write a JUnit XML report here when it ends: one test case per hypothesis check and per step");
    cmd_->add_flag("-v,--verbose", verbose_, "also log what the embedded controller and agent do (stderr)");
    return cmd_;
  }
  int run() override {
    if (!o_.controller.empty() && !checkControllerAddress(o_.controller)) {
      return kExitUsage;
    }
    if (!loadToken(o_.tokenFile)) {
      return kExitUsage;
    }
    if (!verbose_) {
      spdlog::set_level(spdlog::level::err);  // the events say it all
    }
    o_.dbGiven = cmd_->count("--db") > 0;
    return runCommand(o_);
  }

 private:
  CLI::App* cmd_ = nullptr;
  RunOptions o_;
  bool verbose_ = false;
};

}  // namespace

std::unique_ptr<Command> makeRunCommand() {
  return std::make_unique<RunCommand>();
}

}  // namespace faultline::controller::cli
