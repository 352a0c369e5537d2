#include "controller/cli/cli.h"

#include <algorithm>
#include <csignal>
#include <iostream>
#include <memory>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "agent/session/session.h"
#include "controller/cli/command.h"

namespace faultline::controller {

using namespace cli;

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

  agent::TlsFiles clientTls;
  addClientTlsOptions(app, clientTls);
  app.fallthrough();  // the TLS options may follow the subcommand too
  std::unique_ptr<Command> commands[] = {makeRunCommand(),     makeValidateCommand(), makeControllerCommand(),
                                         makeAgentsCommand(),  makeHaltCommand(),     makeRunsCommand(),
                                         makeShowCommand(),    makeCertsCommand(),    makeTokenCommand(),
                                         makeGamedayCommand(), makeScheduleCommand(), makeApplyCommand()};
  std::vector<std::pair<CLI::App*, Command*>> added;
  for (auto& command : commands) {
    added.emplace_back(command->add(app), command.get());
  }

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

  auto credentials = clientChannelCredentials(clientTls);
  if (!credentials) {
    std::cerr << "faultline: " << credentials.error() << "\n";
    return kExitUsage;
  }
  useClientCredentials(std::move(*credentials));

  for (const auto& [sub, command] : added) {
    if (*sub) {
      return command->run();
    }
  }
  return kExitUsage;
}

}  // namespace faultline::controller
