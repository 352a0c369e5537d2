#include "controller/cli/cli.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
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
#include <grpc/support/log.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/safety/recovery.h"
#include "agent/session/runtime.h"
#include "agent/session/session.h"
#include "controller/engine/capabilities.h"
#include "controller/engine/engine.h"
#include "controller/experiment/experiment.h"
#include "controller/report/run_format.h"
#include "controller/server/controller.h"
#include "controller/store/store.h"
#include "faultline/v1/control.grpc.pb.h"

namespace faultline::controller {
namespace {

constexpr int kExitError = 3;
constexpr int kExitUsage = 4;
constexpr const char* kDefaultController = "127.0.0.1:7443";

// Reads an experiment file, at most kMaxExperimentBytes + 1 bytes (the parser refuses more).
std::string readFile(const std::string& path, std::string& error) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    error = fmt::format("{} is a directory; give an experiment file (YAML)", path);
    return "";
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error = fmt::format("cannot read {}: {}", path, std::strerror(errno));
    return "";
  }
  std::string text(kMaxExperimentBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

// Parses repeated --var NAME=VALUE options; returns an error text, or "" when all are good.
std::string parseVariables(const std::vector<std::string>& given, Variables& out) {
  for (const auto& item : given) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) {
      return fmt::format("'{}' has no '='; accepted: NAME=VALUE, e.g. --var HOST=10.0.0.5", item);
    }
    const std::string name = item.substr(0, eq);
    if (!isVariableName(name)) {
      return fmt::format(
          "'{}' is not a variable name; accepted: a letter or '_' then letters, digits and '_' (at "
          "most 64), e.g. --var TARGET_IF=eth0",
          name);
    }
    if (!out.emplace(name, item.substr(eq + 1)).second) {
      return fmt::format("{} is given twice; accepted: each name once", name);
    }
  }
  return "";
}

// gRPC's own log lines (E1129 ...) go through spdlog: debug level, errors as warnings.
void routeGrpcLogs() {
  gpr_set_log_function([](gpr_log_func_args* args) {
    if (args->severity == GPR_LOG_SEVERITY_ERROR) {
      spdlog::debug("grpc: {}", args->message);
    } else {
      spdlog::trace("grpc: {}", args->message);
    }
  });
}

std::string clock(const google::protobuf::Timestamp& t) {
  const std::time_t secs = t.seconds();
  std::tm tm{};
  localtime_r(&secs, &tm);
  return fmt::format("{:02}:{:02}:{:02}.{:03}", tm.tm_hour, tm.tm_min, tm.tm_sec, t.nanos() / 1'000'000);
}

void printEvent(const v1::RunEvent& e) {
  std::cout << fmt::format("{}  {:<16} {:<15} {}", clock(e.at()), e.kind(), e.host().empty() ? "-" : e.host(),
                           e.message())
            << std::endl;
}

std::unique_ptr<v1::Control::Stub> controlStub(const std::string& address) {
  return v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

int rpcError(const std::string& what, const std::string& address, const grpc::Status& s) {
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    std::cerr << fmt::format(
        "faultline: {}: cannot reach the controller at {} ({}); is `faultline controller` "
        "running there? (--controller ADDR)\n",
        what, address, s.error_message());
  } else {
    std::cerr << fmt::format("faultline: {}: {}\n", what, s.error_message());
  }
  return s.error_code() == grpc::StatusCode::INVALID_ARGUMENT || s.error_code() == grpc::StatusCode::NOT_FOUND
             ? kExitUsage
             : kExitError;
}

std::unique_ptr<grpc::ClientContext> contextWithDeadline(std::chrono::seconds d) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + d);
  return ctx;
}

// SIGINT, SIGTERM, SIGHUP and SIGQUIT are blocked in every thread and taken by one waiting
// thread, so that an interrupted run aborts cleanly (faults reverted, run recorded) instead of
// dying with its faults in place.
class SignalCatcher {
 public:
  SignalCatcher() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    sigaddset(&set_, SIGHUP);  // the terminal or SSH session went away
    sigaddset(&set_, SIGQUIT);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
  }
  ~SignalCatcher() {
    if (thread_.joinable()) {
      pthread_kill(thread_.native_handle(), SIGTERM);  // wakes sigwait; then ignored
      thread_.join();
    }
  }
  template <typename F>
  void onSignal(F f) {
    thread_ = std::thread([this, f] {
      int count = 0;
      while (true) {
        int sig = 0;
        if (sigwait(&set_, &sig) != 0 || done_) {
          return;
        }
        f(sig, ++count);
      }
    });
  }
  void finish() { done_ = true; }

 private:
  sigset_t set_{};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

int watchRun(v1::Control::Stub& stub, const std::string& address, const std::string& runId) {
  grpc::ClientContext ctx;
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
  bool local = false;
  bool dbGiven = false;
  std::string db = "faultline.db";
  std::string trigger = "cli";
  std::vector<std::string> labels;
  std::string stateDir;  // --local: the in-process agent's undo journal; "" = defaultLocalStateDir()
  std::vector<std::string> vars;
  bool dryRun = false;
  std::string journal;                 // --journal FILE: JSON record of the run
  std::string junit;                   // --junit FILE: JUnit XML for CI
  std::string networkDriver = "auto";  // --local: the in-process agent's --network-driver
};

// Prints what a run would do: the resolved hosts and every fault each would receive.
void printPlan(const v1::RunPlan& plan) {
  std::cout << fmt::format("dry run of experiment {}: nothing is injected\n", plan.experiment());
  std::cout << fmt::format("targets: {}\n", plan.targets());
  std::cout << "method:\n";
  for (const auto& step : plan.steps()) {
    std::cout << "  " << step << "\n";
  }
  for (const auto& h : plan.hosts()) {
    std::map<std::string, std::string> sorted(h.agent().labels().begin(), h.agent().labels().end());
    std::string labels;
    for (const auto& [k, v] : sorted) {
      labels += fmt::format("{}{}={}", labels.empty() ? "" : ",", k, v);
    }
    std::cout << fmt::format("host {} (agent {}, labels {}, network driver {}): {} fault(s)\n", h.agent().hostname(),
                             h.agent().agent_id(), labels.empty() ? "-" : labels,
                             networkDriverText(h.agent().capabilities()), h.faults_size());
    for (const auto& f : h.faults()) {
      std::cout << fmt::format("  step {:<5} {:<18} {:<20} for {}: {}\n", f.step(), faultKindName(f.spec()), f.name(),
                               formatDuration(toMicros(f.duration())), f.spec().ShortDebugString());
    }
  }
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

// Writes text to path through a temporary file in the same directory and a rename, so a reader
// never sees half a report. Returns "" or what went wrong.
std::string writeReport(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out || !(out << text) || !out.flush()) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      return fmt::format("cannot write {}: {}", tmp, std::strerror(errno));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return fmt::format("cannot write {}: {}", path, ec.message());
  }
  return "";
}

// --journal and --junit: reads the finished run and writes the reports. Returns false when a
// report could not be written (the run's own exit code still stands; the caller reports exit 3).
bool writeReports(v1::Control::Stub& stub, const std::string& address, const std::string& runId, const RunOptions& o,
                  const std::string& yaml, const Variables& vars, const Experiment& experiment) {
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
    if (auto e = writeReport(o.journal, formatJournal(run, o.file, yaml, vars)); !e.empty()) {
      std::cerr << "faultline: --journal: " << e << "\n";
      ok = false;
    } else {
      std::cout << fmt::format("journal: {}\n", o.journal);
    }
  }
  if (!o.junit.empty()) {
    if (auto e = writeReport(o.junit, formatJUnit(run, experiment, agent::hostName())); !e.empty()) {
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
  if (auto bad = parseVariables(o.vars, vars); !bad.empty()) {
    std::cerr << "faultline: --var: " << bad << "\n";
    return kExitUsage;
  }
  std::string error;
  const std::string yaml = readFile(o.file, error);
  if (!error.empty()) {
    std::cerr << "faultline: " << error << "\n";
    return kExitUsage;
  }
  auto parsed = parseExperiment(yaml, o.file, vars);
  if (!parsed) {
    for (const auto& d : parsed.error()) {
      std::cerr << format(d) << "\n";
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
    // The embedded controller listens on a Unix socket in a directory only this user can enter:
    // no other local user can submit runs to it.
    try {
      socketDir.create();
      address = "unix:" + socketDir.path + "/control.sock";
      controller = std::make_unique<Controller>(ControllerOptions{address, o.db, std::chrono::seconds{15}, true});
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
      std::cerr << "faultline: " << s.error_message() << "\n";
      return kExitError;
    }
    if (!s.ok()) {
      return rpcError("planning " + o.file, address, s);
    }
    printPlan(plan);
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
  if (!writeReports(*stub, address, runId, o, yaml, vars, *parsed) && code == 0) {
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

int validateCommand(const std::string& file, const std::vector<std::string>& varOptions) {
  Variables vars;
  if (auto bad = parseVariables(varOptions, vars); !bad.empty()) {
    std::cerr << "faultline: --var: " << bad << "\n";
    return kExitUsage;
  }
  std::string error;
  const std::string yaml = readFile(file, error);
  if (!error.empty()) {
    std::cerr << "faultline: " << error << "\n";
    return kExitUsage;
  }
  auto parsed = parseExperiment(yaml, file, vars);
  if (!parsed) {
    for (const auto& d : parsed.error()) {
      std::cerr << format(d) << "\n";
    }
    std::cerr << fmt::format("{}: {} error(s)\n", file, parsed.error().size());
    return kExitUsage;
  }
  std::cout << fmt::format("{}: valid: experiment {}, {} probe(s), {} SLO(s), {} step(s)\n", file, parsed->name,
                           parsed->hypothesis.probes.size(), parsed->hypothesis.slos.size(), parsed->method.size());
  return 0;
}

int controllerCommand(const ControllerOptions& options) {
  SignalCatcher signals;
  Controller controller(options);
  try {
    controller.start();
  } catch (const std::exception& e) {
    std::cerr << "faultline controller: " << e.what() << "\n";
    return kExitError;
  }
  signals.onSignal([&](int sig, int /*count*/) {
    spdlog::info("SIG{}: aborting active runs, reverting their faults, stopping", sigabbrev_np(sig));
    controller.shutdown();
  });
  controller.wait();
  signals.finish();
  return 0;
}

int agentsCommand(const std::string& address) {
  auto stub = controlStub(address);
  auto ctx = contextWithDeadline(std::chrono::seconds{5});
  v1::ListAgentsResponse resp;
  if (auto s = stub->ListAgents(ctx.get(), {}, &resp); !s.ok()) {
    return rpcError("listing agents", address, s);
  }
  std::cout << fmt::format("{:<24} {:<20} {:<8} {:<22} {:<16} {:<6} {}\n", "AGENT", "HOSTNAME", "VERSION", "KERNEL",
                           "NETWORK DRIVER", "FAULTS", "LABELS");
  for (const auto& a : resp.agents()) {
    std::string labels;
    std::map<std::string, std::string> sorted(a.labels().begin(), a.labels().end());
    for (const auto& [k, v] : sorted) {
      labels += fmt::format("{}{}={}", labels.empty() ? "" : ",", k, v);
    }
    std::cout << fmt::format("{:<24} {:<20} {:<8} {:<22} {:<16} {:<6} {}\n", a.agent_id(), a.hostname(), a.version(),
                             a.kernel_release(), networkDriverText(a.capabilities()), a.active_faults(), labels);
  }
  if (resp.agents().empty()) {
    std::cout << "(no agents connected)\n";
  }
  // Failed reverts are loud: each one stays listed until a later revert succeeds (or, for a
  // permanent one, until the agent reconnects), so nobody takes a degraded host for a clean one.
  for (const auto& a : resp.agents()) {
    for (const auto& f : a.failed_reverts()) {
      std::cout << fmt::format("REVERT FAILED  agent {}  fault {}  since {}{}: {}{}\n", a.agent_id(), f.fault_id(),
                               clock(f.at()), f.permanent() ? "  (permanent: not retried, remove it by hand)" : "",
                               f.error(), f.detail().empty() ? "" : fmt::format("  [{}]", f.detail()));
    }
  }
  return 0;
}

// Aborts every run and reverts every fault on every agent; exit 0 when all are confirmed
// reverted, 3 otherwise.
int haltCommand(const std::string& address, const std::string& reason) {
  auto stub = controlStub(address);
  auto ctx = contextWithDeadline(std::chrono::seconds{20});
  v1::HaltRequest req;
  req.set_reason(reason);
  req.mutable_timeout()->set_seconds(10);
  v1::HaltResponse resp;
  if (auto s = stub->Halt(ctx.get(), req, &resp); !s.ok()) {
    return rpcError("halt", address, s);
  }
  std::cout << fmt::format("halt: {} run(s) aborted, {} agent(s) told to revert every fault\n", resp.runs_aborted(),
                           resp.agents_told());
  if (resp.runs_unfinished() > 0) {
    std::cout << fmt::format("{} aborted run(s) still rolling back\n", resp.runs_unfinished());
  }
  for (const auto& u : resp.unconfirmed()) {
    std::cout << fmt::format("NOT CONFIRMED  agent {}: {}\n", u.agent_id(), u.reason());
  }
  if (resp.unconfirmed().empty() && resp.runs_unfinished() == 0) {
    std::cout << "every agent confirmed: no fault active\n";
    return 0;
  }
  return kExitError;
}

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

int runsCommand(const std::string& address, const std::string& db, unsigned limit) {
  if (!db.empty()) {
    return withStore(db, [&](RecordStore& store) {
      std::cout << formatRunList(store.listRuns(limit));
      return 0;
    });
  }
  auto stub = controlStub(address);
  auto ctx = contextWithDeadline(std::chrono::seconds{5});
  v1::ListRunsRequest req;
  req.set_limit(limit);
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

}  // namespace

int cliMain(int argc, char** argv) {
  // Logs go to stderr; stdout carries what the command prints (events, tables, timelines).
  spdlog::set_default_logger(spdlog::stderr_color_mt("faultline"));
  routeGrpcLogs();
  // A closed pipe (`faultline run ... | head`) must not kill a run with its faults in place:
  // writes then fail quietly and the run goes on to its rollback.
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{
      "faultline: chaos experiments on Linux hosts. Runs experiment files against agents, checks the "
      "steady state, injects faults, reverts them and records the outcome."};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("faultline ") + agent::agentVersion());

  RunOptions run;
  auto* runCmd = app.add_subcommand("run",
                                    "run an experiment file and print its events as they happen; exit 0 "
                                    "held, 1 violated, 2 aborted, 3 execution error, 4 invalid file or usage");
  runCmd->add_option("FILE", run.file, "experiment file (YAML, apiVersion: faultline/v1)")->required();
  auto* ctrlOpt = runCmd->add_option("--controller", run.controller,
                                     fmt::format("controller address HOST:PORT (default {})", kDefaultController));
  runCmd
      ->add_flag("--local", run.local,
                 "run an embedded controller and an in-process agent on this host (records in --db)")
      ->excludes(ctrlOpt);
  runCmd->add_option("--db", run.db, "record file for --local")->capture_default_str();
  runCmd
      ->add_option("--state-dir", run.stateDir,
                   fmt::format("with --local: the in-process agent's undo journal (default {}); a run killed "
                               "mid-fault is reverted by the next run --local on the same directory",
                               defaultLocalStateDir()))
      ->needs(runCmd->get_option("--local"));
  runCmd->add_option("--trigger", run.trigger, "who started the run: cli, ci or schedule")->capture_default_str();
  runCmd->add_option("--label", run.labels, "with --local: a label of the in-process agent, KEY=VALUE (repeatable)")
      ->allow_extra_args(false);
  runCmd
      ->add_option("--network-driver", run.networkDriver,
                   "with --local: the in-process agent's driver of network.delay, loss, duplicate, corrupt, reorder "
                   "and partition: netem (tc; needs sch_netem), nfqueue (netfilter + a userspace queue) or auto "
                   "(netem where the kernel has it, else nfqueue); as faultline-agent --network-driver")
      ->check(CLI::IsMember({"auto", "netem", "nfqueue"}))
      ->capture_default_str();
  constexpr const char* kVarHelp =
      "NAME=VALUE: replaces ${NAME} anywhere in the file (repeatable); $${ is a literal ${";
  runCmd->add_option("--var", run.vars, kVarHelp)->allow_extra_args(false);
  runCmd->add_flag("--dry-run", run.dryRun,
                   "resolve the targets and print every fault each host would receive; inject nothing, record "
                   "nothing (exit 0, 3 when no host matches, 4 invalid file); not with --journal or --junit. "
                   "With --local, the local agent's crash recovery still runs first");
  bool verbose = false;
  runCmd->add_option("--journal", run.journal,
                     "write the run's JSON journal here when it ends: experiment, hosts, events, probe samples, SLIs, "
                     "verdict");
  runCmd->add_option("--junit", run.junit,
                     "write a JUnit XML report here when it ends: one test case per hypothesis check and per step");
  runCmd->add_flag("-v,--verbose", verbose, "also log what the embedded controller and agent do (stderr)");

  std::string validateFile;
  auto* validateCmd =
      app.add_subcommand("validate", "check an experiment file without running it; exit 0 valid, 4 invalid");
  validateCmd->add_option("FILE", validateFile, "experiment file")->required();
  std::vector<std::string> validateVars;
  validateCmd->add_option("--var", validateVars, kVarHelp)->allow_extra_args(false);

  ControllerOptions copts;
  copts.dbPath = "/var/lib/faultline/controller.db";
  std::string leaseText = "15s";
  auto* ctrlCmd = app.add_subcommand("controller", "run the controller: agents dial it, the CLI submits runs to it");
  ctrlCmd->add_option("--listen", copts.listen, "address to listen on, HOST:PORT")->capture_default_str();
  ctrlCmd->add_option("--db", copts.dbPath, "SQLite file for run records")->capture_default_str();
  ctrlCmd
      ->add_option("--lease", leaseText, "agents revert every fault after this long without word from the controller")
      ->capture_default_str();

  std::string address = kDefaultController;
  auto* agentsCmd = app.add_subcommand("agents", "list the agents connected to the controller");
  agentsCmd->add_option("--controller", address, "controller address HOST:PORT")->capture_default_str();

  std::string haltReason;
  auto* haltCmd = app.add_subcommand("halt",
                                     "abort every active run and revert every fault on every agent; exit 0 when all "
                                     "agents confirm, 3 otherwise");
  haltCmd->add_option("--controller", address, "controller address HOST:PORT")->capture_default_str();
  haltCmd->add_option("--reason", haltReason, "why (logged by the controller and the agents)");

  std::string db;
  unsigned limit = 20;
  auto* runsCmd = app.add_subcommand("runs", "list recorded runs, newest first");
  auto* runsCtrl = runsCmd->add_option("--controller", address, "controller address HOST:PORT")->capture_default_str();
  runsCmd->add_option("--db", db, "read a record file directly instead (e.g. the one of --local)")->excludes(runsCtrl);
  runsCmd->add_option("--limit", limit, "how many runs")->capture_default_str();

  std::string runId;
  auto* showCmd = app.add_subcommand("show", "print the recorded timeline of a run");
  showCmd->add_option("RUN_ID", runId, "run id, as printed by run and runs")->required();
  auto* showCtrl = showCmd->add_option("--controller", address, "controller address HOST:PORT")->capture_default_str();
  showCmd->add_option("--db", db, "read a record file directly instead (e.g. the one of --local)")->excludes(showCtrl);

  // CLI11 says only "A subcommand is required" for a command it does not know.
  std::vector<std::string> names;
  for (const auto* sub : app.get_subcommands({})) {
    names.push_back(sub->get_name());
  }
  if (argc > 1 && argv[1][0] != '-' && std::find(names.begin(), names.end(), argv[1]) == names.end()) {
    std::cerr << fmt::format("faultline: unknown command '{}'; accepted: {} (see faultline --help)\n", argv[1],
                             fmt::join(names, ", "));
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }

  for (const auto* given : {&run.controller, &address}) {
    if (!given->empty()) {
      if (auto bad = checkAddress(*given, false); !bad.empty()) {
        std::cerr << "faultline: --controller: " << bad << "\n";
        return kExitUsage;
      }
    }
  }
  if (*runCmd) {
    if (!verbose) {
      spdlog::set_level(spdlog::level::err);  // the events say it all
    }
    run.dbGiven = runCmd->count("--db") > 0;
    return runCommand(run);
  }
  if (*validateCmd) {
    return validateCommand(validateFile, validateVars);
  }
  if (*ctrlCmd) {
    auto lease = parseDuration(leaseText);
    if (!lease || *lease < std::chrono::seconds{1}) {
      std::cerr << "faultline controller: --lease " << (lease ? "must be at least 1s" : lease.error()) << "\n";
      return kExitUsage;
    }
    copts.lease = std::chrono::duration_cast<std::chrono::milliseconds>(*lease);
    if (auto bad = checkAddress(copts.listen, true); !bad.empty()) {
      std::cerr << "faultline controller: --listen: " << bad << "\n";
      return kExitUsage;
    }
    return controllerCommand(copts);
  }
  if (*agentsCmd) {
    return agentsCommand(address);
  }
  if (*haltCmd) {
    return haltCommand(address, haltReason);
  }
  if (*runsCmd) {
    return runsCommand(address, db, limit);
  }
  if (*showCmd) {
    return showCommand(runId, address, db);
  }
  return kExitUsage;
}

}  // namespace faultline::controller
