// The faultline command line, inside: one file per command (run_command.cpp, validate_command.cpp,
// controller_command.cpp, fleet_commands.cpp for agents and halt, record_commands.cpp for runs
// and show), each registering its subcommand with CLI11 and running it; cli.cpp puts them
// together. Internal to controller/cli/. A new command is a new Command here and a line in
// cliMain().
#pragma once

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <CLI/CLI.hpp>

#include "agent/session/tls.h"
#include "controller/experiment/experiment.h"
#include "faultline/v1/control.grpc.pb.h"

namespace faultline::controller::cli {

inline constexpr int kExitError = 3;
inline constexpr int kExitUsage = 4;
// The controller's Unix socket (faultline controller --socket): callers there are known by uid.
inline constexpr const char* kDefaultController = "unix:/run/faultline/controller.sock";
inline constexpr const char* kControllerHelp =
    "controller address: unix:PATH (its --socket; callers known by uid) or HOST:PORT (needs --token-file or "
    "FAULTLINE_TOKEN)";

// One subcommand: add() registers it and its options on the app (before parsing); run() does it
// (after parsing, when it was the one given) and returns the process's exit code.
class Command {
 public:
  virtual ~Command() = default;
  virtual CLI::App* add(CLI::App& app) = 0;
  [[nodiscard]] virtual int run() = 0;
};

[[nodiscard]] std::unique_ptr<Command> makeRunCommand();
[[nodiscard]] std::unique_ptr<Command> makeValidateCommand();
[[nodiscard]] std::unique_ptr<Command> makeControllerCommand();
[[nodiscard]] std::unique_ptr<Command> makeAgentsCommand();
[[nodiscard]] std::unique_ptr<Command> makeHaltCommand();
[[nodiscard]] std::unique_ptr<Command> makeRunsCommand();
[[nodiscard]] std::unique_ptr<Command> makeShowCommand();
[[nodiscard]] std::unique_ptr<Command> makeCertsCommand();
[[nodiscard]] std::unique_ptr<Command> makeTokenCommand();
[[nodiscard]] std::unique_ptr<Command> makeGamedayCommand();
[[nodiscard]] std::unique_ptr<Command> makeScheduleCommand();  // schedule_command.cpp
[[nodiscard]] std::unique_ptr<Command> makeApplyCommand();     // schedule_command.cpp

// What several commands share (cli_common.cpp).

// --var's help text, for run and validate.
inline constexpr const char* kVarHelp =
    "NAME=VALUE: replaces ${NAME} anywhere in the file (repeatable); $${ is a literal ${";

// Reads an experiment file, at most kMaxExperimentBytes + 1 bytes (the parser refuses more); on
// failure returns "" and sets error (a directory, or what open(2) said).
[[nodiscard]] std::string readFile(const std::string& path, std::string& error);
// Parses repeated --var NAME=VALUE options; returns an error text, or "" when all are good.
[[nodiscard]] std::string parseVariables(const std::vector<std::string>& given, Variables& out);
// --var and --secret-var together (run, gameday): every value into vars, the names of the
// --secret-var ones into secretNames; returns "--var: ...", "--secret-var: ..." (a name given with
// both is an error) or "" when all are good.
[[nodiscard]] std::string parseVariableOptions(const std::vector<std::string>& varOptions,
                                               const std::vector<std::string>& secretOptions, Variables& vars,
                                               std::set<std::string>& secretNames);
// gRPC's own log lines (E1129 ...) go through spdlog: debug level, errors as warnings.
void routeGrpcLogs();
// HH:MM:SS.mmm of t in local time.
[[nodiscard]] std::string clock(const google::protobuf::Timestamp& t);
// A Control stub for a controller address (HOST:PORT or unix:PATH), over TLS when the CLI was
// given --ca (useClientCredentials()).
[[nodiscard]] std::unique_ptr<v1::Control::Stub> controlStub(const std::string& address);
// The CLI's TLS options (--ca FILE, and --cert FILE --key FILE for a client certificate), on the
// top-level command: `faultline --ca ca.crt agents`, or after the subcommand (fallthrough).
void addClientTlsOptions(CLI::App& app, agent::TlsFiles& files);
// SSL channel credentials from those options: the CA the controller's certificate must chain to,
// and the client certificate when --cert and --key are given (both or neither). nullptr when no
// option was given (plaintext). errors: the option, the file and the problem.
[[nodiscard]] tl::expected<std::shared_ptr<grpc::ChannelCredentials>, std::string> clientChannelCredentials(
    const agent::TlsFiles& files);
// The credentials controlStub() uses from now on (nullptr: plaintext). Called once, after parsing.
void useClientCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials);
// Prints what failed (an unreachable controller named as such) and returns the exit code: 4 for
// INVALID_ARGUMENT and NOT_FOUND, else 3.
int rpcError(const std::string& what, const std::string& address, const grpc::Status& s);
// A context with deadline d and this process's credentials (addCredentials()).
[[nodiscard]] std::unique_ptr<grpc::ClientContext> contextWithDeadline(std::chrono::seconds d);
// Adds the bearer token loadToken() read, if any, as `authorization: Bearer TOKEN` metadata
// (gRPC sends no call credentials on an insecure channel, so it is plain metadata).
void addCredentials(grpc::ClientContext& ctx);
// Adds --token-file to a command that calls the controller.
void addTokenOption(CLI::App* cmd, std::string& tokenFile);
// Reads the token of this process's calls: from tokenFile when given (a regular file of at most
// 4 KiB, opened without blocking; surrounding whitespace dropped), else from the environment
// variable FAULTLINE_TOKEN; none is fine (the Unix socket needs none). Prints the problem and
// returns false when the file cannot be read or holds no token.
[[nodiscard]] bool loadToken(const std::string& tokenFile);
// Writes text to path through a temporary file in the same directory and a rename, so a reader
// never sees half a report (--journal, --junit, --summary). The file is 0600 whatever the umask:
// a report may hold what a run's probes saw. Returns "" or what went wrong.
[[nodiscard]] std::string writeReport(const std::string& path, const std::string& text);
// Checks a --controller address; prints the problem and returns false when it is not one.
[[nodiscard]] bool checkControllerAddress(const std::string& address);

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

}  // namespace faultline::controller::cli
