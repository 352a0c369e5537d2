// faultline controller: the controller process (agents dial it, the CLI submits runs to it).
#include <unistd.h>

#include <cstring>
#include <iostream>
#include <optional>

#include <spdlog/spdlog.h>

#include "agent/cli/config_file.h"
#include "agent/faults/spec.h"
#include "common/service_notify.h"
#include "controller/cli/command.h"
#include "controller/server/controller.h"
#include "controller/server/tls.h"

namespace faultline::controller::cli {
namespace {

// What the service's STATUS= line says about where the controller listens.
std::string listeningOn(const ControllerOptions& options, int port) {
  std::string where;
  if (!options.listen.empty()) {
    where = options.listen.rfind("unix:", 0) == 0 ? options.listen : fmt::format("{} (port {})", options.listen, port);
  }
  if (!options.socket.empty()) {
    where += (where.empty() ? "" : " and ") + options.socket;
  }
  return "listening on " + where;
}

int controllerCommand(const ControllerOptions& options) {
  SignalCatcher signals;
  // Before the controller: both outlive its destructor's shutdown().
  service::Heartbeat mainLoop("controller main loop (run reaping, the fleet's lock)");
  std::optional<service::Watchdog> watchdog;
  Controller controller(options);
  int port = 0;
  try {
    port = controller.start();
  } catch (const std::exception& e) {
    std::cerr << "faultline controller: " << e.what() << "\n";
    return kExitError;
  }
  const std::string listening = listeningOn(options, port);
  // Both listeners are bound and served: a client that connects after READY=1 is answered.
  service::notifyReady(listening);
  watchdog.emplace(std::vector<const service::Heartbeat*>{&mainLoop});
  signals.onSignal([&](int sig, int /*count*/) {
    spdlog::info("SIG{}: aborting active runs, reverting their faults, stopping", sigabbrev_np(sig));
    watchdog->stop();  // STOPPING=1 ends the service manager's watchdog
    service::notifyStopping(fmt::format("SIG{}: aborting {} active run(s) and reverting their faults",
                                        sigabbrev_np(sig), controller.activeRuns()));
    controller.shutdown(fmt::format("controller shutdown (SIG{})", sigabbrev_np(sig)));
  });
  std::string lastStatus;
  const bool notifying = service::notifying();
  controller.wait(watchdog->beatEvery(std::chrono::seconds{1}), [&] {
    if (!notifying) {
      return;  // no service manager: no status, no pings (and no copy of the fleet each second)
    }
    // Reached only while the loop goes round and the fleet answers (agents() takes its lock).
    const auto agents = controller.gateway().agents().size();
    mainLoop.beat();
    auto status = fmt::format("{}; {} agent(s), {} active run(s)", listening, agents, controller.activeRuns());
    if (status != lastStatus) {
      service::notifyStatus(status);
      lastStatus = std::move(status);
    }
  });
  signals.finish();
  return 0;
}

class ControllerCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    options_.dbPath = "/var/lib/faultline/controller.db";
    options_.socket = "/run/faultline/controller.sock";
    auto* cmd = app.add_subcommand("controller", "run the controller: agents dial it, the CLI submits runs to it");
    cmd_ = cmd;
    cmd->add_option("--config", configFile_, agent::configOptionHelp(kDefaultConfig))->configurable(false);
    cmd->add_option("--listen", options_.listen,
                    "address to listen on, HOST:PORT or unix:PATH: agents, and the CLI with a token (faultline "
                    "token create) or a client certificate; without --tls-* only a loopback address or unix:PATH "
                    "(or --insecure); '' for none (then agents dial --socket)")
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
    cmd->add_option("--socket", options_.socket,
                    "Unix socket of the Control API on this host, where callers are known by uid (root and this "
                    "process's user: admin; others: --local-role); its directory is created if missing; '' for none")
        ->capture_default_str();
    cmd->add_option("--socket-group", options_.socketGroup,
                    "group that may connect to --socket (mode 0660); without such a group the mode is 0600")
        ->capture_default_str();
    cmd->add_option("--local-role", localRole_,
                    "role of the other users that can connect to --socket: viewer, operator or admin")
        ->check(CLI::IsMember({"viewer", "operator", "admin"}))
        ->capture_default_str();
    cmd->add_option("--probe-user", probeUser_,
                    "user that command probes run as (default: nobody when the controller runs as root, else its "
                    "own user); the controller refuses to start when it does not exist");
    cmd->add_flag("--no-command-probes", noCommandProbes_,
                  "refuse every run and dry run of an experiment with a command probe (FAILED_PRECONDITION)");
    cmd->add_option("--db", options_.dbPath, "SQLite file for run records")->capture_default_str();
    cmd->add_option("--lease", leaseText_, "agents revert every fault after this long without word from the controller")
        ->capture_default_str();
    cmd->add_option("--metrics-listen", metricsListen_,
                    "serve Prometheus metrics at GET /metrics on this address: PORT or :PORT (loopback), "
                    "HOST:PORT, [V6]:PORT (HOST an IP address); no authentication, no secrets served "
                    "(docs/operations.md, 'Metrics'). Off by default");
    cmd->add_option("--retain-runs", options_.retention.runs,
                    "keep the records of the N newest runs and delete older finished runs whole, at start and "
                    "hourly (0: no count limit)")
        ->check(CLI::Range(0U, 100'000'000U))
        ->capture_default_str();
    cmd->add_option("--retain-days", retainDays_,
                    "delete the records of runs that ended more than D days ago, whole, at start and hourly (0: no "
                    "age limit); a running run is never deleted")
        ->check(CLI::Range(0U, 36'500U))
        ->capture_default_str();
    return cmd;
  }
  int run() override {
    const bool configGiven = cmd_->get_option("--config")->count() > 0;
    if (auto errors = agent::loadConfigFile(*cmd_, configGiven ? configFile_ : kDefaultConfig, configGiven);
        !errors.empty()) {
      for (const auto& e : errors) {
        std::cerr << "faultline controller: --config: " << e << "\n";
      }
      return kExitUsage;
    }
    auto lease = parseDuration(leaseText_);
    if (!lease || *lease < std::chrono::seconds{1}) {
      std::cerr << "faultline controller: --lease " << (lease ? "must be at least 1s" : lease.error()) << "\n";
      return kExitUsage;
    }
    options_.lease = std::chrono::duration_cast<std::chrono::milliseconds>(*lease);
    if (options_.listen.empty() && options_.socket.empty()) {
      std::cerr << "faultline controller: --listen and --socket are both empty; accepted: at least one\n";
      return kExitUsage;
    }
    if (auto bad = options_.listen.empty() ? "" : checkAddress(options_.listen, true); !bad.empty()) {
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
    if (!metricsListen_.empty()) {
      auto address = metrics::parseListenAddress(metricsListen_);
      if (!address) {
        std::cerr << "faultline controller: --metrics-listen: " << address.error() << "\n";
        return kExitUsage;
      }
      options_.metricsListen = *address;
    }
    options_.retention.age = std::chrono::hours{24} * retainDays_;
    options_.localRole = *auth::parseRole(localRole_);
    options_.commandProbes = !noCommandProbes_;
    // Command probes never run as root: nobody unless --probe-user names another user.
    std::string probeUser = probeUser_;
    if (probeUser.empty() && ::geteuid() == 0) {
      probeUser = "nobody";
    }
    if (!probeUser.empty()) {
      auto user = lookupProbeUser(probeUser);
      if (!user) {
        std::cerr << "faultline controller: --probe-user: " << user.error() << "\n";
        return kExitUsage;
      }
      if (user->uid == 0) {
        std::cerr << "faultline controller: --probe-user " << probeUser
                  << ": uid 0; accepted: a user other than root (command probes never run as root)\n";
        return kExitUsage;
      }
      if (user->uid != ::geteuid()) {
        if (::geteuid() != 0) {
          std::cerr << "faultline controller: --probe-user " << probeUser
                    << ": only a controller running as root can run command probes as another user\n";
          return kExitUsage;
        }
        options_.probeUser = std::move(*user);
      }
    }
    return controllerCommand(options_);
  }

 private:
  static constexpr const char* kDefaultConfig = "/etc/faultline/controller.yaml";
  CLI::App* cmd_ = nullptr;
  std::string configFile_;
  ControllerOptions options_;
  std::string localRole_ = "operator";
  std::string probeUser_;
  bool noCommandProbes_ = false;
  std::string leaseText_ = "15s";
  std::string metricsListen_;
  unsigned retainDays_ = 0;
};

}  // namespace

std::unique_ptr<Command> makeControllerCommand() {
  return std::make_unique<ControllerCommand>();
}

}  // namespace faultline::controller::cli
