// faultline agents and faultline halt: the fleet as the controller sees it.
#include <iostream>

#include <fmt/format.h>

#include "controller/cli/command.h"
#include "controller/engine/capabilities.h"
#include "controller/report/run_format.h"

namespace faultline::controller::cli {
namespace {

int agentsCommand(const std::string& address) {
  auto stub = controlStub(address);
  // Every page (the controller caps each well under gRPC's 4 MiB), each with its own deadline.
  v1::ListAgentsResponse resp;
  v1::ListAgentsRequest req;
  for (;;) {
    auto ctx = contextWithDeadline(std::chrono::seconds{5});
    v1::ListAgentsResponse page;
    if (auto s = stub->ListAgents(ctx.get(), req, &page); !s.ok()) {
      return rpcError("listing agents", address, s);
    }
    for (auto& a : *page.mutable_agents()) {
      *resp.add_agents() = std::move(a);
    }
    // A token that does not move on (a controller's bug) would loop forever: stop there.
    if (page.next_page_token().empty() || page.next_page_token() <= req.page_token()) {
      break;
    }
    req.set_page_token(page.next_page_token());
  }
  std::cout << fmt::format("{:<24} {:<20} {:<8} {:<22} {:<16} {:<6} {}\n", "AGENT", "HOSTNAME", "VERSION", "KERNEL",
                           "NETWORK DRIVER", "FAULTS", "LABELS");
  for (const auto& a : resp.agents()) {
    std::string labels;
    std::map<std::string, std::string> sorted(a.labels().begin(), a.labels().end());
    for (const auto& [k, v] : sorted) {
      labels += fmt::format("{}{}={}", labels.empty() ? "" : ",", k, v);
    }
    // What an agent says of itself is printed with every control character a space (oneLine()).
    std::cout << fmt::format("{:<24} {:<20} {:<8} {:<22} {:<16} {:<6} {}\n", oneLine(a.agent_id()),
                             oneLine(a.hostname()), oneLine(a.version()), oneLine(a.kernel_release()),
                             networkDriverText(a.capabilities()), a.active_faults(), oneLine(labels));
  }
  if (resp.agents().empty()) {
    std::cout << "(no agents connected)\n";
  }
  // Failed reverts are loud: each one stays listed until a later revert succeeds (or, for a
  // permanent one, until the agent reconnects), so nobody takes a degraded host for a clean one.
  for (const auto& a : resp.agents()) {
    for (const auto& f : a.failed_reverts()) {
      std::cout << fmt::format("REVERT FAILED  agent {}  fault {}  since {}{}: {}{}\n", oneLine(a.agent_id()),
                               oneLine(f.fault_id()), clock(f.at()),
                               f.permanent() ? "  (permanent: not retried, remove it by hand)" : "", oneLine(f.error()),
                               f.detail().empty() ? "" : fmt::format("  [{}]", oneLine(f.detail())));
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
    std::cout << fmt::format("NOT CONFIRMED  agent {}: {}\n", oneLine(u.agent_id()), oneLine(u.reason()));
  }
  if (resp.unconfirmed().empty() && resp.runs_unfinished() == 0) {
    std::cout << "every agent confirmed: no fault active\n";
    return 0;
  }
  return kExitError;
}

class AgentsCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    auto* cmd = app.add_subcommand("agents", "list the agents connected to the controller");
    cmd->add_option("--controller", address_, kControllerHelp)->capture_default_str();
    addTokenOption(cmd, tokenFile_);
    return cmd;
  }
  int run() override {
    return checkControllerAddress(address_) && loadToken(tokenFile_) ? agentsCommand(address_) : kExitUsage;
  }

 private:
  std::string address_ = kDefaultController;
  std::string tokenFile_;
};

class HaltCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    auto* cmd = app.add_subcommand("halt",
                                   "abort every active run and revert every fault on every agent; exit 0 when all "
                                   "agents confirm, 3 otherwise");
    cmd->add_option("--controller", address_, kControllerHelp)->capture_default_str();
    addTokenOption(cmd, tokenFile_);
    cmd->add_option("--reason", reason_, "why (logged by the controller and the agents)");
    return cmd;
  }
  int run() override {
    return checkControllerAddress(address_) && loadToken(tokenFile_) ? haltCommand(address_, reason_) : kExitUsage;
  }

 private:
  std::string address_ = kDefaultController;
  std::string tokenFile_;
  std::string reason_;
};

}  // namespace

std::unique_ptr<Command> makeAgentsCommand() {
  return std::make_unique<AgentsCommand>();
}

std::unique_ptr<Command> makeHaltCommand() {
  return std::make_unique<HaltCommand>();
}

}  // namespace faultline::controller::cli
