// Abort latency: how long from the moment a run sees its hypothesis violated to the moment every
// fault is reverted. Needs root. A controller, one agent and the demo service run in this
// process on loopback; the fault is a real tbf on veth0 in a throwaway network namespace.
//
// Each round submits an experiment whose SLO (p95 < 100ms over 2s, sampled every EVERY_MS) holds
// until the tbf is in place, when the demo service is slowed to 300 ms. Printed per round and as
// median and maximum over the rounds:
//   observed -> reverted: the stop.condition event (the controller saw the violation) to the
//                         agent's fault.reverted report (the kernel's root qdisc is back);
//   answer   -> reverted: the end of the violating probe sample to fault.reverted.
// Every round checks that veth0's root qdisc is back to what it was.
//
// Usage: abort_latency [ROUNDS] [EVERY_MS]  (defaults 10 100)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "agent/kernel/qdisc_table.h"
#include "agent/session/runtime.h"
#include "controller/server/controller.h"
#include "demo/server.h"
#include "faultline/v1/control.grpc.pb.h"
#include "tests/support/control_client.h"
#include "tests/support/netns_holder.h"

using namespace faultline;
using namespace std::chrono_literals;

namespace {

int64_t micros(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1'000'000 + t.nanos() / 1000;
}

std::string rootKind(const std::string& netns) {
  auto table = kernel::openQdiscTable(netns);
  if (!table) {
    return "?";
  }
  auto root = (*table)->root("veth0");
  return root && root->has_value() ? (*root)->kind : "";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[(v.size() - 1) / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 10;
  const int everyMs = argc > 2 ? std::atoi(argv[2]) : 100;
  if (rounds < 1 || everyMs < 50) {
    std::cerr << "usage: abort_latency [ROUNDS >= 1] [EVERY_MS >= 50]\n";
    return 2;
  }
  if (::geteuid() != 0) {
    std::cerr << "abort_latency: needs root (a network namespace and a tbf qdisc)\n";
    return 1;
  }
  spdlog::set_level(spdlog::level::warn);
  testing::NetnsHolder netns;
  if (!netns.error().empty()) {
    std::cerr << "abort_latency: " << netns.error() << "\n";
    return 1;
  }
  const std::string before = rootKind(netns.path());
  auto service = demo::Server::start({});
  if (!service) {
    std::cerr << "abort_latency: demo service: " << service.error().message() << "\n";
    return 1;
  }
  const std::string db = fmt::format("/tmp/faultline-abort-latency-{}.db", ::getpid());
  int failures = 0;
  {
    // The Control API and the agent on a Unix socket, where this (root) process is admin.
    controller::ControllerOptions options{"", db, 15s};
    options.socket = db + ".sock";
    controller::Controller controller(options);
    controller.start();
    const std::string address = "unix:" + options.socket;
    agent::SessionOptions so;
    so.controller = address;
    so.agentId = "bench-agent";
    so.hostname = "bench-host";
    agent::AgentRuntime agent(so);
    agent.start();
    if (!controller.gateway().waitForAgents(1, 10s)) {
      std::cerr << "abort_latency: the agent did not register\n";
      return 1;
    }
    auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    const std::string yaml = fmt::format(R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: abort-latency
steadyState:
  every: {}ms
  probes:
    - name: demo
      http: {{url: "http://127.0.0.1:{}/", maxLatency: 2s, timeout: 2s}}
  slos:
    - name: demo-latency
      probe: demo
      objective: p95 < 100ms over 2s
method:
  - fault:
      type: network.bandwidth
      duration: 60s
      target: {{interface: veth0, netns: {}}}
      rate: 1mbit
)",
                                         everyMs, (*service)->endpoint().port(), netns.path());
    std::vector<double> observed;
    std::vector<double> answered;
    std::printf("round  verdict   observed->reverted ms  answer->reverted ms\n");
    for (int round = 1; round <= rounds; ++round) {
      (*service)->setBehaviour(0us, 0);
      std::atomic<bool> cancel{false};
      std::thread degrade([&] {
        for (int i = 0; i < 1000 && !cancel; ++i) {
          if (rootKind(netns.path()) == "tbf") {
            (*service)->setBehaviour(300ms, 0);
            return;
          }
          std::this_thread::sleep_for(5ms);
        }
      });
      v1::SubmitRunRequest req;
      req.set_experiment(yaml);
      req.set_file_name("abort-latency.yaml");
      req.set_trigger("cli");
      const auto watched = testing::submitAndWatch(*stub, req);
      if (watched.runId.empty()) {
        std::cerr << "abort_latency: " << watched.error << "\n";
        cancel = true;
        degrade.join();
        return 1;
      }
      int64_t stopAt = 0;
      int64_t revertedAt = 0;
      v1::Verdict verdict = v1::VERDICT_UNSPECIFIED;
      for (const auto& e : watched.events) {
        if (e.kind() == "stop.condition" && stopAt == 0) {
          stopAt = micros(e.at());
        }
        if (e.kind() == "fault.reverted") {
          revertedAt = std::max(revertedAt, micros(e.at()));
        }
        if (e.kind() == "run.finished") {
          verdict = e.verdict();
        }
      }
      cancel = true;
      degrade.join();
      // The violating sample: the last 'during' sample that started before the stop.
      grpc::ClientContext gctx;
      v1::GetRunRequest greq;
      greq.set_run_id(watched.runId);
      v1::Run run;
      int64_t answerAt = 0;
      if (stub->GetRun(&gctx, greq, &run).ok()) {
        for (const auto& s : run.samples()) {
          const int64_t end = micros(s.at()) + static_cast<int64_t>(s.latency_ms() * 1000);
          if (s.phase() == "during" && micros(s.at()) <= stopAt) {
            answerAt = std::max(answerAt, end);
          }
        }
      }
      const bool back = rootKind(netns.path()) == before;
      if (verdict != v1::VERDICT_VIOLATED || stopAt == 0 || revertedAt == 0 || !back) {
        std::printf("%5d  %-8s  (no abort measured%s)\n", round, v1::Verdict_Name(verdict).c_str() + 8,
                    back ? "" : "; ROOT QDISC NOT RESTORED");
        ++failures;
        continue;
      }
      observed.push_back(static_cast<double>(revertedAt - stopAt) / 1000.0);
      answered.push_back(static_cast<double>(revertedAt - answerAt) / 1000.0);
      std::printf("%5d  %-8s  %21.2f  %19.2f\n", round, "violated", observed.back(), answered.back());
    }
    if (!observed.empty()) {
      std::printf("\nobserved -> reverted: median %.2f ms, max %.2f ms (%zu rounds, probe interval %d ms)\n",
                  median(observed), *std::max_element(observed.begin(), observed.end()), observed.size(), everyMs);
      std::printf("answer   -> reverted: median %.2f ms, max %.2f ms\n", median(answered),
                  *std::max_element(answered.begin(), answered.end()));
    }
    agent.stop("bench done");
    controller.shutdown();
  }
  (*service)->stop();
  std::remove(db.c_str());
  std::remove((db + "-wal").c_str());
  std::remove((db + "-shm").c_str());
  return failures == 0 ? 0 : 1;
}
