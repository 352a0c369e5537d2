// faultline validate: an experiment file checked whole, without running it.
#include <iostream>

#include <fmt/format.h>

#include "controller/cli/command.h"
#include "controller/experiment/experiment.h"
#include "controller/report/run_format.h"

namespace faultline::controller::cli {
namespace {

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
      // A diagnostic quotes the value it found: a secret's (by `secret: true` or by its name) is not shown.
      std::cerr << redactSecrets(format(d), vars, declaredSecretVariables(yaml)) << "\n";
    }
    std::cerr << fmt::format("{}: {} error(s)\n", file, parsed.error().size());
    return kExitUsage;
  }
  std::cout << fmt::format("{}: valid: experiment {}, {} probe(s), {} SLO(s), {} step(s)\n", file, parsed->name,
                           parsed->hypothesis.probes.size(), parsed->hypothesis.slos.size(), parsed->method.size());
  return 0;
}

class ValidateCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    auto* cmd = app.add_subcommand("validate", "check an experiment file without running it; exit 0 valid, 4 invalid");
    cmd->add_option("FILE", file_, "experiment file")->required();
    cmd->add_option("--var", vars_, kVarHelp)->allow_extra_args(false);
    return cmd;
  }
  int run() override { return validateCommand(file_, vars_); }

 private:
  std::string file_;
  std::vector<std::string> vars_;
};

}  // namespace

std::unique_ptr<Command> makeValidateCommand() {
  return std::make_unique<ValidateCommand>();
}

}  // namespace faultline::controller::cli
