#include "agent/cli/cli.h"

#include <unistd.h>

#include <csignal>
#include <filesystem>
#include <iostream>
#include <optional>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <CLI/CLI.hpp>

#include "agent/cli/config_file.h"
#include "agent/faults/network/net_target.h"
#include "agent/faults/spec.h"
#include "agent/kernel/cgroup_tree.h"
#include "agent/kernel/netns.h"
#include "agent/kernel/packet_steering.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/safety/journal.h"
#include "agent/safety/policy.h"
#include "agent/safety/recovery.h"
#include "agent/safety/revert_all.h"
#include "agent/session/agent_metrics.h"
#include "agent/session/inject_bounds.h"
#include "agent/session/runtime.h"
#include "agent/session/tls.h"
#include "common/metrics_server.h"

namespace faultline::agent {
namespace {

// faultline-agent's config file when --config is not given (read only when it exists).
constexpr const char* kDefaultConfig = "/etc/faultline/agent.yaml";

// `faultline run --local`'s state directory when run as root without --state-dir (controller/cli/cli.cpp).
constexpr const char* kLocalRunStateDir = "/var/lib/faultline/local";

// faultline-agent revert-all: one line per thing done or failed, then a summary. alsoLocalRun:
// also recover run --local's default journal first (and sweep nothing while a run holds it).
int revertAllMain(const std::string& stateDir, bool alsoLocalRun) {
  const auto found = kernel::listNetworkNamespaces();
  const QdiscTableOpener open = [](const std::string& netns) { return kernel::openQdiscTable(netns); };
  RevertAllReport report;
  std::error_code ec;
  if (alsoLocalRun && std::filesystem::path(kLocalRunStateDir) != std::filesystem::path(stateDir) &&
      std::filesystem::exists(std::filesystem::path(kLocalRunStateDir) / UndoJournal::kFileName, ec)) {
    report = revertAllFaults(kLocalRunStateDir, {}, open);  // its journal only; the sweep follows
  }
  auto agent = revertAllFaults(stateDir, report.agentRunning ? std::vector<std::string>{} : found.paths, open,
                               kernel::openPacketSteering);
  const auto append = [](std::vector<std::string>& into, const std::vector<std::string>& from) {
    into.insert(into.end(), from.begin(), from.end());
  };
  append(report.reverted, agent.reverted);
  append(report.removed, agent.removed);
  append(report.failed, agent.failed);
  append(report.notes, agent.notes);
  report.namespaces = agent.namespaces;
  report.interfaces = agent.interfaces;
  report.agentRunning = report.agentRunning || agent.agentRunning;
  for (const auto& problem : found.problems) {
    report.failed.push_back(problem);
  }
  if (!report.agentRunning && report.clean() && report.kept.empty()) {
    // The namespaces faultline pinned (a netns chosen by process) were swept above: unpin them.
    for (auto& problem : releaseAllNetnsPins(std::filesystem::path(kNetnsPinDir))) {
      report.failed.push_back(std::move(problem));
    }
  } else if (!report.agentRunning) {
    report.notes.push_back(fmt::format("namespace pins in {} kept, so that what {} can still be reached", kNetnsPinDir,
                                       report.clean() ? "other running agents hold" : "failed above"));
  }
  if (report.agentRunning) {
    // Leave the running agent's stress cgroups alone too.
  } else if (auto cgroups = kernel::openCgroupTree()) {
    removeStressCgroups(**cgroups, report);
  } else {
    report.notes.push_back("no cgroup v2 hierarchy: no stress cgroup to look for");
  }
  for (const auto& line : report.notes) {
    std::cout << "note: " << line << "\n";
  }
  for (const auto& line : report.reverted) {
    std::cout << "reverted: " << line << "\n";
  }
  for (const auto& line : report.removed) {
    std::cout << "removed: " << line << "\n";
  }
  for (const auto& line : report.kept) {
    std::cout << "kept: " << line << "\n";
  }
  for (const auto& line : report.failed) {
    std::cout << "FAILED: " << line << "\n";
  }
  std::cout << "revert-all: " << report.reverted.size() << " journal entr"
            << (report.reverted.size() == 1 ? "y" : "ies") << " reverted, " << report.removed.size()
            << " leftover faultline qdisc(s), netfilter rule set(s) and stress cgroup(s) removed, "
            << report.failed.size() << " failure(s); scanned " << report.namespaces << " network namespace(s), "
            << report.interfaces << " interface(s): "
            << (!report.clean() ? std::string("the host may still carry faultline faults")
                : report.kept.empty()
                    ? std::string("no faultline fault is left")
                    : fmt::format("no leftover is left; {} live fault(s) of other running agents left alone",
                                  report.kept.size()))
            << std::endl;
  return report.clean() ? 0 : 1;
}

}  // namespace

int agentMain(int argc, char** argv) {
  spdlog::set_default_logger(spdlog::stderr_color_mt("faultline-agent"));
  CLI::App app{
      "faultline-agent: injects faults on this host on the controller's command, and reverts "
      "every one when its duration ends, on command, when the controller's lease lapses, and on "
      "SIGTERM, SIGINT, SIGHUP or SIGQUIT (SIGHUP stops the agent: the policy file is read once, at start; "
      "restart the agent to apply a changed one)."};
  app.set_version_flag("--version", "faultline-agent " + agentVersion());
  std::string configFile;
  auto* configOption = app.add_option("--config", configFile, configOptionHelp(kDefaultConfig))->configurable(false);
  std::signal(SIGPIPE, SIG_IGN);
  SessionOptions options;
  options.hostname = hostName();
  options.agentId = options.hostname;
  std::vector<std::string> labels;
  std::string stateDir = "/var/lib/faultline-agent";
  app.add_option("--controller", options.controller, "controller address, HOST:PORT (required to run the agent)");
  app.add_option("--label", labels, "a label of this host, KEY=VALUE (repeatable); experiments select agents by label")
      ->allow_extra_args(false);
  auto* idOption =
      app.add_option("--id", options.agentId,
                     "agent id, unique in the fleet: 1-64 ASCII letters, digits, . _ - : @; with --cert it must be the "
                     "certificate's common name (CN), which is the default then")
          ->capture_default_str();
  TlsFiles tls;
  bool insecure = false;
  app.add_option("--ca", tls.ca,
                 "PEM file of the CA the controller's certificate must chain to (mTLS, with --cert and --key); "
                 "without the three the agent dials only a loopback address or unix:PATH in plaintext");
  app.add_option("--cert", tls.cert, "PEM file of this agent's certificate (its CN is the agent's id)");
  app.add_option("--key", tls.key, "PEM file of this agent's private key (unencrypted; keep it 0600)");
  app.add_option("--controller-name", options.controllerName,
                 "the name the controller's certificate must carry, when it is not the HOST of --controller");
  app.add_flag("--insecure", insecure,
               "dial a controller that is not local in plaintext (no --ca/--cert/--key): anyone who takes its "
               "address could command this host; warned at every start");
  app.add_option("--state-dir", stateDir, "directory for the agent's state")->capture_default_str();
  app.add_option("--network-driver", options.networkDriver,
                 "driver of network.delay, loss, duplicate, corrupt, reorder and partition: netem (tc qdiscs; needs "
                 "sch_netem), nfqueue (netfilter rules and a queue served in userspace, for kernels without "
                 "sch_netem), or auto (netem where the kernel has sch_netem, else nfqueue); network.bandwidth is "
                 "always tc's tbf. Shown by `faultline agents`")
      ->check(CLI::IsMember({"auto", "netem", "nfqueue"}))
      ->capture_default_str();
  std::string policyFile;
  app.add_option("--policy", policyFile,
                 "agent policy file (YAML; see docs/operations.md, 'Agent policy'), read once at start; without it "
                 "the built-in policy applies (maxDuration 1h; a process fault touches at most 10 processes and its "
                 "selector matches at most 100; sshd and faultline's own processes protected)");
  std::string metricsListen;
  app.add_option("--metrics-listen", metricsListen,
                 "serve Prometheus metrics at GET /metrics on this address: PORT or :PORT (loopback), HOST:PORT, "
                 "[V6]:PORT (HOST an IP address); no authentication, no secrets served (docs/operations.md, "
                 "'Metrics'). Off by default: without it no socket and no thread");
  auto* revertAll = app.add_subcommand(
      "revert-all",
      "Without a controller: revert every fault the undo journal still holds open (network faults, paused "
      "processes resumed, squeezed cgroups restored, stress cgroups removed), then delete every root qdisc with "
      "faultline's handle (fa17:), faultline's netfilter tables and chains (nftables inet faultline-N, xtables mangle "
      "FAULTLINE-N) and faultline's ingress paths (flt-ifb* devices, the ingress qdiscs redirecting "
      "to them) in every network namespace found (this process's, /run/netns/*, the pins in "
      "/run/faultline-agent/netns, "
      "those of /proc/*/ns/net), unpins those namespaces when nothing failed, then kill the workers of and remove "
      "every stress cgroup (faultline-stress-*) in the "
      "cgroup v2 hierarchy, journal or not (skipped while an agent runs on the state directory); nothing else "
      "is touched. Prints each thing done. Exit status 0 when no faultline fault is left, 1 when something "
      "could not be removed. Stop the agent first.");
  revertAll
      ->add_option("--state-dir", stateDir,
                   "the agent's state directory (its journal, when there is one, is recovered; none is created); "
                   "without this option, as root, the journal of `faultline run --local` in "
                   "/var/lib/faultline/local is recovered too")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 4;
  }
  const bool configGiven = configOption->count() > 0;
  // revert-all's --state-dir shares stateDir with the daemon's, which the file may set: the
  // command line wins there too.
  const bool revertAllStateDir = revertAll->get_option("--state-dir")->count() > 0;
  const std::string stateDirGiven = stateDir;
  const auto configErrors = loadConfigFile(app, configGiven ? configFile : kDefaultConfig, configGiven);
  if (revertAllStateDir) {
    stateDir = stateDirGiven;
  }
  if (revertAll->parsed()) {
    // An emergency tool: a bad config file (its state-dir is read) never keeps it from running.
    for (const auto& e : configErrors) {
      std::cerr << "faultline-agent: warning: --config: " << e << " (revert-all goes on)\n";
    }
    return revertAllMain(stateDir, revertAll->get_option("--state-dir")->count() == 0 && ::geteuid() == 0);
  }
  if (!configErrors.empty()) {
    for (const auto& e : configErrors) {
      std::cerr << "faultline-agent: --config: " << e << "\n";
    }
    return 4;
  }
  if (options.controller.empty()) {
    std::cerr << "faultline-agent: --controller is required\nRun with --help for more information.\n";
    return 4;
  }
  if (auto bad = checkAddress(options.controller, false); !bad.empty()) {
    std::cerr << "faultline-agent: --controller: " << bad << "\n";
    return 4;
  }
  if (!tls.empty()) {
    auto pem = loadTlsFiles(tls, {"--ca", "--cert", "--key"});
    if (!pem) {
      std::cerr << "faultline-agent: " << pem.error() << "\n";
      return 4;
    }
    if (idOption->count() == 0) {
      options.agentId = pem->commonName;
    } else if (options.agentId != pem->commonName) {
      std::cerr << "faultline-agent: --id '" << options.agentId << "' differs from the common name '" << pem->commonName
                << "' of --cert " << tls.cert
                << "; the controller takes an agent's id from its certificate: leave --id out or give that name\n";
      return 4;
    }
    options.credentials = agentChannelCredentials(*pem);
  } else if (!options.controllerName.empty()) {
    std::cerr << "faultline-agent: --controller-name needs --ca, --cert and --key (it names the controller's "
                 "certificate)\n";
    return 4;
  }
  if (auto refused = plaintextRefusal(options.controller, !tls.empty(), insecure, "controller"); !refused.empty()) {
    std::cerr << "faultline-agent: " << refused << "\n";
    return 4;
  }
  if (tls.empty() && !isLocalAddress(options.controller)) {
    spdlog::warn(
        "--insecure: dialing controller {} in plaintext; anyone who takes that address can command this host "
        "(give --ca, --cert and --key)",
        options.controller);
  }
  if (auto bad = parseLabels(labels, options.labels); !bad.empty()) {
    std::cerr << "faultline-agent: --label: " << bad << "\n";
    return 4;
  }
  if (auto bad = checkAgentId(options.agentId)) {
    std::cerr << "faultline-agent: --id: " << *bad
              << (options.agentId == options.hostname ? " (the default, this host's name: give --id)" : "") << "\n";
    return 4;
  }
  std::optional<metrics::ListenAddress> metricsAddress;
  if (!metricsListen.empty()) {
    auto parsed = metrics::parseListenAddress(metricsListen);
    if (!parsed) {
      std::cerr << "faultline-agent: --metrics-listen: " << parsed.error() << "\n";
      return 4;
    }
    metricsAddress = *parsed;
  }
  Policy policy;
  if (!policyFile.empty()) {
    auto loaded = loadPolicy(policyFile);
    if (!loaded) {
      for (const auto& d : loaded.error()) {
        std::cerr << "faultline-agent: --policy: " << format(d) << "\n";
      }
      return 4;
    }
    policy = std::move(*loaded);
  }
  spdlog::info("policy {}: {}", policyFile.empty() ? "built-in (no --policy)" : policyFile, policy.summary());
  options.labels.emplace("host", options.hostname);
  std::error_code ec;
  std::filesystem::create_directories(stateDir, ec);
  if (ec) {
    std::cerr << "faultline-agent: cannot create --state-dir " << stateDir << ": " << ec.message() << "\n";
    return 3;
  }
  // Crash recovery, before the session connects: revert what an earlier run left behind.
  // What it reverts is reported to the controller once the agent has registered.
  auto journal = openJournalAndRecover(
      stateDir, [](const std::string& netns) { return kernel::openQdiscTable(netns); }, &options.initialReports);
  if (!journal) {
    std::cerr << "faultline-agent: --state-dir: " << journal.error().message << "\n";
    return 3;
  }
  spdlog::info("faultline-agent {} ({}) connecting to {} ({})", options.agentId, options.hostname, options.controller,
               options.credentials ? "mTLS" : "plaintext");
  const std::string status =
      fmt::format("crash recovery done; agent {} serving controller {}", options.agentId, options.controller);
  // Metrics only when asked for: without --metrics-listen no registry, socket or thread exists.
  std::unique_ptr<metrics::Registry> registry;
  std::unique_ptr<AgentMetrics> agentMetrics;
  std::unique_ptr<metrics::MetricsServer> metricsServer;
  if (metricsAddress) {
    registry = std::make_unique<metrics::Registry>();
    agentMetrics = std::make_unique<AgentMetrics>(*registry);
    auto server = metrics::MetricsServer::start(*metricsAddress, *registry);
    if (!server) {
      std::cerr << "faultline-agent: --metrics-listen: " << server.error() << "\n";
      return 3;
    }
    metricsServer = std::move(*server);
    options.metrics = agentMetrics.get();
    spdlog::info("metrics at http://{}/metrics", metricsServer->address());
  }
  AgentRuntime runtime(std::move(options), true, std::move(*journal), std::move(policy));
  runtime.runUntilSignal(status);
  return 0;
}

}  // namespace faultline::agent
