// faultline controller: the controller process (agents dial it, the CLI submits runs to it).
#include <cstring>
#include <iostream>

#include <spdlog/spdlog.h>

#include "agent/faults/spec.h"
#include "controller/cli/command.h"
#include "controller/server/controller.h"
#include "controller/server/tls.h"

namespace faultline::controller::cli {
namespace {

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

class ControllerCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    options_.dbPath = "/var/lib/faultline/controller.db";
    auto* cmd = app.add_subcommand("controller", "run the controller: agents dial it, the CLI submits runs to it");
    cmd->add_option("--listen", options_.listen,
                    "address to listen on, HOST:PORT or unix:PATH; without --tls-* only a loopback address or "
                    "unix:PATH (or --insecure)")
        ->capture_default_str();
    cmd->add_option("--tls-cert", options_.tls.cert,
                    "PEM file of the controller's certificate: the listen port speaks TLS (with --tls-key and "
                    "--tls-ca)");
    cmd->add_option("--tls-key", options_.tls.key, "PEM file of the controller's private key (unencrypted)");
    cmd->add_option("--tls-ca", options_.tls.ca,
                    "PEM file of the CA whose certificates agents (and CLI clients) present; an agent's id is its "
                    "certificate's common name, an agent without one is refused");
    cmd->add_flag("--insecure", options_.insecure,
                  "serve plaintext on an address that is neither loopback nor unix:PATH: anyone who reaches it can "
                  "register as an agent and command the fleet; warned at every start");
    cmd->add_option("--db", options_.dbPath, "SQLite file for run records")->capture_default_str();
    cmd->add_option("--lease", leaseText_, "agents revert every fault after this long without word from the controller")
        ->capture_default_str();
    return cmd;
  }
  int run() override {
    auto lease = parseDuration(leaseText_);
    if (!lease || *lease < std::chrono::seconds{1}) {
      std::cerr << "faultline controller: --lease " << (lease ? "must be at least 1s" : lease.error()) << "\n";
      return kExitUsage;
    }
    options_.lease = std::chrono::duration_cast<std::chrono::milliseconds>(*lease);
    if (auto bad = checkAddress(options_.listen, true); !bad.empty()) {
      std::cerr << "faultline controller: --listen: " << bad << "\n";
      return kExitUsage;
    }
    if (!options_.tls.empty()) {
      if (auto tls = serverCredentials(options_.tls); !tls) {
        std::cerr << "faultline controller: " << tls.error() << "\n";
        return kExitUsage;
      }
    }
    if (auto refused = listenRefusal(options_); !refused.empty()) {
      std::cerr << "faultline controller: " << refused << "\n";
      return kExitUsage;
    }
    return controllerCommand(options_);
  }

 private:
  ControllerOptions options_;
  std::string leaseText_ = "15s";
};

}  // namespace

std::unique_ptr<Command> makeControllerCommand() {
  return std::make_unique<ControllerCommand>();
}

}  // namespace faultline::controller::cli
