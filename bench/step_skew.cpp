// The skew of one fault step across several hosts: how far apart the agents apply a fault the
// controller asked all of them to start at one absolute time. Needs root.
//
// A controller (in this process, on a Unix socket) and N faultline-agent processes, each in a
// throwaway network namespace of its own with a veth pair (veth0, veth1), held by a child that
// dies with this process, so every namespace is gone at the end even after a crash. Each agent
// has its own id (bench-skew-NN) and labels (role=skew, index=NN). R rounds of one experiment
// whose single step injects network.bandwidth (tbf) on veth0 of every agent's own namespace; each
// round's step.skew event (the spread of the agents' APPLIED report times, each taken on the
// agent's clock, which is this machine's one clock here) is read from the run's record.
//
// Prints each round's skew and the last agent's lag behind the start time, then the median and
// the max over the rounds.
//
// Usage: step_skew [AGENTS] [ROUNDS]  (defaults 10 20)
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "controller/server/controller.h"
#include "faultline/v1/control.grpc.pb.h"
#include "tests/support/control_client.h"
#include "tests/support/netns_holder.h"
#include "tests/support/spawn_in.h"

using namespace faultline;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using faultline::testing::NetnsHolder;
using faultline::testing::spawnIn;

namespace {

double nsToMs(int64_t ns) {
  return static_cast<double>(ns) / 1e6;
}

int64_t nanosOf(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1'000'000'000 + t.nanos();
}

}  // namespace

int main(int argc, char** argv) {
  const int agents = argc > 1 ? std::atoi(argv[1]) : 10;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 20;
  if (agents < 2 || rounds < 1) {
    std::cerr << "usage: step_skew [AGENTS >= 2] [ROUNDS >= 1]\n";
    return 2;
  }
  spdlog::set_level(spdlog::level::err);
  char tmpl[] = "/tmp/faultline-bench-skew-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    std::cerr << "mkdtemp failed\n";
    return 1;
  }
  const std::string dir = tmpl;
  int code = 0;
  {
    std::vector<std::unique_ptr<NetnsHolder>> namespaces;
    for (int i = 0; i < agents; ++i) {
      namespaces.push_back(std::make_unique<NetnsHolder>());
      if (!namespaces.back()->error().empty()) {
        std::cerr << "namespace: " << namespaces.back()->error() << "\n";
        std::filesystem::remove_all(dir);
        return 1;
      }
    }
    const std::string address = "unix:" + dir + "/control.sock";
    // The Control API and the agents on a Unix socket, where this (root) process is admin.
    controller::ControllerOptions options{"", dir + "/skew.db", 15s};
    options.socket = address.substr(5);
    controller::Controller ctl(options);
    ctl.start();
    std::vector<pid_t> pids;
    for (int i = 0; i < agents; ++i) {
      pids.push_back(spawnIn(
          namespaces[i]->path(),
          {FAULTLINE_AGENT_BIN, "--controller", address, "--id", fmt::format("bench-skew-{:02}", i), "--label",
           "role=skew", "--label", fmt::format("index={:02}", i), "--state-dir", fmt::format("{}/agent-{:02}", dir, i)},
          dir + "/agents.log"));
    }
    auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    std::vector<double> skews;
    std::vector<double> lags;
    if (!ctl.gateway().waitForAgents(static_cast<size_t>(agents), 30s)) {
      std::cerr << "not every agent registered; see " << dir << "/agents.log\n";
      code = 1;
    }
    const std::string experiment =
        "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: step-skew\n"
        "targets:\n  selector: {role: skew}\n  mode: all\n"
        "method:\n  - fault:\n      type: network.bandwidth\n      duration: 200ms\n"
        "      target: {interface: veth0}\n      rate: 10mbit\n";
    for (int r = 0; r < rounds && code == 0; ++r) {
      v1::SubmitRunRequest req;
      req.set_experiment(experiment);
      req.set_file_name("step-skew.yaml");
      req.set_trigger("cli");
      const auto watched = testing::submitAndWatch(*stub, req);
      if (watched.runId.empty()) {
        std::cerr << "round " << r + 1 << ": " << watched.error << "\n";
        code = 1;
        break;
      }
      const auto& events = watched.events;
      const v1::RunEvent* skew = nullptr;
      int applied = 0;
      for (const auto& ev : events) {
        applied += ev.kind() == "fault.applied" ? 1 : 0;
        if (ev.kind() == "step.skew") {
          skew = &ev;
        }
      }
      if (events.empty() || events.back().verdict() != v1::VERDICT_HELD || skew == nullptr || applied != agents) {
        std::cerr << fmt::format("round {}: run {} did not hold on every agent ({} applied, step.skew {}): {}\n", r + 1,
                                 watched.runId, applied, skew != nullptr ? "recorded" : "missing",
                                 events.empty() ? "" : events.back().message());
        code = 1;
        break;
      }
      const double skewMs = nsToMs(skew->skew().seconds() * 1'000'000'000 + skew->skew().nanos());
      // The last APPLIED report time behind the start time the controller sent.
      int64_t last = 0;
      for (const auto& ev : events) {
        if (ev.kind() == "fault.applied") {
          last = std::max(last, nanosOf(ev.at()));
        }
      }
      const double lagMs = nsToMs(last - nanosOf(skew->start_at()));
      skews.push_back(skewMs);
      lags.push_back(lagMs);
      std::cout << fmt::format(
          "round {}: {} agents, step.skew {:.3f} ms (max - min of the applied times), last "
          "applied {:.3f} ms after the start time\n",
          r + 1, agents, skewMs, lagMs);
    }
    for (auto& pid : pids) {
      ::kill(pid, SIGTERM);
      ::waitpid(pid, nullptr, 0);
    }
    if (code == 0) {
      for (int i = 0; i < agents; ++i) {
        auto left = testing::sh(fmt::format("nsenter --net={} tc qdisc show dev veth0", namespaces[i]->path()));
        if (left.output.find("tbf") != std::string::npos) {
          std::cerr << "agent " << i << " left a tbf root: " << left.output;
          code = 1;
        }
      }
    }
    if (code == 0) {
      std::sort(skews.begin(), skews.end());
      std::sort(lags.begin(), lags.end());
      std::cout << fmt::format(
          "step.skew over {} agents, {} rounds: median {:.3f} ms, max {:.3f} ms (min {:.3f}); last applied after the "
          "start time: median {:.3f} ms, max {:.3f} ms\n",
          agents, rounds, skews[skews.size() / 2], skews.back(), skews.front(), lags[lags.size() / 2], lags.back());
    }
  }
  std::filesystem::remove_all(dir);
  return code;
}
