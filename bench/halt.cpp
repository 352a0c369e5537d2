// How fast `faultline halt` ends every fault, and how late the lease reverts after the controller
// is gone. Needs root. Everything happens in one throwaway network namespace (held by a child
// that dies with this process): N veth pairs, one per agent.
//
// 1. A controller and N AgentRuntimes (distinct ids) in this process; each agent holds a
//    network.bandwidth (tbf) fault on its own veth. Halt is called; the time from the call to
//    its answer (every agent confirmed no active fault) is printed, median of RUNS rounds, and
//    every root qdisc is checked to be back to what it was.
// 2. A controller with a short lease and one agent holding a fault; the controller is stopped.
//    A listener stream on the same controller timestamps every heartbeat (the gateway sends them
//    to all streams at once), so the agent's last heard heartbeat is known; the revert is seen by
//    polling the root qdisc. Prints lease, measured delay and the excess over the lease.
//
// Usage: halt [AGENTS] [RUNS] [LEASE_MS]  (defaults 50 5 2000)
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "agent/session/runtime.h"
#include "controller/server/controller.h"
#include "faultline/v1/agent_gateway.grpc.pb.h"
#include "faultline/v1/control.grpc.pb.h"
#include "tests/support/netns_holder.h"

using namespace faultline;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

// Runs command in the namespace of ns; its output. Throws when it fails.
std::string run(const testing::NetnsHolder& ns, const std::string& command) {
  auto r = testing::sh(fmt::format("nsenter --net={} {}", ns.path(), command));
  if (r.status != 0) {
    throw std::runtime_error(command + ": " + r.output);
  }
  return r.output;
}

v1::ControllerMessage inject(const std::string& faultId, const std::string& netns, const std::string& interface) {
  v1::ControllerMessage msg;
  auto* in = msg.mutable_inject();
  in->set_fault_id(faultId);
  in->set_run_id("bench");
  auto* bw = in->mutable_spec()->mutable_network_bandwidth();
  bw->mutable_target()->set_interface(interface);
  bw->mutable_target()->set_netns(netns);
  bw->set_rate_bps(1'000'000);
  in->mutable_duration()->set_seconds(600);
  return msg;
}

uint32_t totalActive(controller::Controller& c) {
  uint32_t n = 0;
  for (const auto& a : c.gateway().agents()) {
    n += a.active_faults();
  }
  return n;
}

bool waitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout) {
  const auto until = Clock::now() + timeout;
  while (Clock::now() < until) {
    if (pred()) {
      return true;
    }
    std::this_thread::sleep_for(2ms);
  }
  return pred();
}

double ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// A stream that says Hello like an agent, timestamps every heartbeat it receives, and answers
// each with one of its own (the controller drops a stream silent for longer than the lease).
class HeartbeatListener final : public grpc::ClientBidiReactor<v1::AgentMessage, v1::ControllerMessage> {
 public:
  explicit HeartbeatListener(v1::AgentGateway::Stub& stub) {
    hello_.mutable_hello()->set_agent_id("bench-heartbeat-listener");
    stub.async()->Connect(&ctx_, this);
    StartWrite(&hello_);
    StartRead(&in_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (ok) {
      if (in_.has_heartbeat() || in_.has_welcome()) {
        last_.store(Clock::now().time_since_epoch().count());
        if (!writing_.exchange(true)) {
          StartWrite(&beat_);
        }
      }
      StartRead(&in_);
    }
  }
  void OnWriteDone(bool /*ok*/) override { writing_.store(false); }
  void OnDone(const grpc::Status& /*status*/) override {
    std::lock_guard lock(m_);
    done_ = true;
    cv_.notify_all();
  }
  void cancelAndWait() {
    ctx_.TryCancel();
    std::unique_lock lock(m_);
    cv_.wait(lock, [&] { return done_; });
  }
  [[nodiscard]] Clock::time_point last() const { return Clock::time_point(Clock::duration(last_.load())); }

 private:
  grpc::ClientContext ctx_;
  v1::AgentMessage hello_;
  v1::AgentMessage beat_ = [] {
    v1::AgentMessage m;
    m.mutable_heartbeat();
    return m;
  }();
  std::atomic<bool> writing_{true};  // the Hello is the first write
  v1::ControllerMessage in_;
  std::atomic<Clock::rep> last_{0};
  std::mutex m_;
  std::condition_variable cv_;
  bool done_ = false;
};

}  // namespace

int main(int argc, char** argv) {
  const int agents = argc > 1 ? std::atoi(argv[1]) : 50;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  const auto lease = std::chrono::milliseconds{argc > 3 ? std::atoi(argv[3]) : 2000};
  spdlog::set_level(spdlog::level::err);
  char tmpl[] = "/tmp/faultline-bench-halt-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    std::cerr << "mkdtemp failed\n";
    return 1;
  }
  const std::string dir = tmpl;
  testing::NetnsHolder ns;
  if (!ns.error().empty()) {
    std::cerr << "namespace: " << ns.error() << "\n";
    std::filesystem::remove_all(dir);
    return 1;
  }
  {
    std::ofstream batch(dir + "/links");
    for (int i = 0; i < agents; ++i) {
      batch << fmt::format("link add v{}a type veth peer name v{}b\nlink set v{}a up\nlink set v{}b up\n", i, i, i, i);
    }
  }
  run(ns, fmt::format("ip -batch {}/links", dir));
  const std::string rootsBefore = run(ns, "tc qdisc show");

  // 1. Halt across N agents.
  std::vector<double> halts;
  {
    // The Control API and the agents on a Unix socket, where this (root) process is admin.
    controller::ControllerOptions options{"", dir + "/halt.db", 15s};
    options.socket = dir + "/halt.sock";
    controller::Controller ctl(options);
    ctl.start();
    const std::string address = "unix:" + options.socket;
    std::vector<std::unique_ptr<agent::AgentRuntime>> fleet;
    for (int i = 0; i < agents; ++i) {
      agent::SessionOptions so;
      so.controller = address;
      so.agentId = fmt::format("bench-agent-{:02}", i);
      so.hostname = so.agentId;
      fleet.push_back(std::make_unique<agent::AgentRuntime>(so, i == 0));
      fleet.back()->start();
    }
    if (!ctl.gateway().waitForAgents(static_cast<size_t>(agents), 30s)) {
      std::cerr << "not every agent registered\n";
      return 1;
    }
    auto stub = v1::Control::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    for (int r = 0; r < rounds; ++r) {
      for (int i = 0; i < agents; ++i) {
        ctl.gateway().send(fmt::format("bench-agent-{:02}", i),
                           inject(fmt::format("halt-{}-{}", r, i), ns.path(), fmt::format("v{}a", i)));
      }
      if (!waitFor([&] { return totalActive(ctl) == static_cast<uint32_t>(agents); }, 30s)) {
        std::cerr << fmt::format("round {}: only {} of {} faults applied\n", r, totalActive(ctl), agents);
        return 1;
      }
      const auto tbfs = run(ns, "tc qdisc show");
      size_t held = 0;
      for (auto at = tbfs.find("qdisc tbf fa17:"); at != std::string::npos; at = tbfs.find("qdisc tbf fa17:", at + 1)) {
        ++held;
      }
      if (held != static_cast<size_t>(agents)) {
        std::cerr << fmt::format("round {}: {} faultline tbf roots, expected {}\n", r, held, agents);
        return 1;
      }
      grpc::ClientContext ctx;
      v1::HaltRequest req;
      req.set_reason("bench");
      req.mutable_timeout()->set_seconds(10);
      v1::HaltResponse resp;
      const auto t0 = Clock::now();
      const auto status = stub->Halt(&ctx, req, &resp);
      const auto took = Clock::now() - t0;
      if (!status.ok() || !resp.unconfirmed().empty() || resp.agents_told() != static_cast<uint32_t>(agents)) {
        std::cerr << fmt::format("round {}: halt: {} told {} unconfirmed {}\n", r, status.error_message(),
                                 resp.agents_told(), resp.unconfirmed_size());
        return 1;
      }
      const std::string roots = run(ns, "tc qdisc show");
      if (roots != rootsBefore) {
        std::cerr << fmt::format("round {}: root qdiscs not restored:\n{}\nexpected:\n{}", r, roots, rootsBefore);
        return 1;
      }
      halts.push_back(ms(took));
      std::cout << fmt::format("round {}: {} faultline tbf roots held, halt confirmed in {:.1f} ms, roots restored\n",
                               r + 1, held, ms(took));
    }
    for (auto& a : fleet) {
      a->stop();
    }
  }
  std::sort(halts.begin(), halts.end());
  std::cout << fmt::format(
      "halt: {} agents, median of {} rounds {:.1f} ms (min {:.1f}, max {:.1f}); every root "
      "qdisc restored\n",
      agents, rounds, halts[halts.size() / 2], halts.front(), halts.back());

  // 2. The lease after the controller stops.
  {
    auto ctl = std::make_unique<controller::Controller>(
        controller::ControllerOptions{"127.0.0.1:0", dir + "/lease.db", lease});
    const std::string address = fmt::format("127.0.0.1:{}", ctl->start());
    agent::SessionOptions so;
    so.controller = address;
    so.agentId = "bench-lease-agent";
    so.hostname = so.agentId;
    agent::AgentRuntime agent(so);
    agent.start();
    auto gwStub = v1::AgentGateway::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
    auto listener = std::make_unique<HeartbeatListener>(*gwStub);
    if (!ctl->gateway().waitForAgents(2, 10s)) {
      std::cerr << "lease: agents did not register\n";
      return 1;
    }
    ctl->gateway().send("bench-lease-agent", inject("lease-fault", ns.path(), "v0a"));
    if (!waitFor([&] { return run(ns, "tc qdisc show dev v0a").find("tbf") != std::string::npos; }, 10s)) {
      std::cerr << "lease: fault not applied\n";
      return 1;
    }
    std::this_thread::sleep_for(lease);  // a few heartbeats
    ctl.reset();                         // stops the controller; no revert is sent
    const auto lastHeard = listener->last();
    if (!waitFor([&] { return run(ns, "tc qdisc show dev v0a").find("tbf") == std::string::npos; }, lease * 5)) {
      std::cerr << "lease: fault not reverted within 5 leases\n";
      return 1;
    }
    const auto reverted = Clock::now();
    listener->cancelAndWait();
    const double delay = ms(reverted - lastHeard);
    std::cout << fmt::format(
        "lease: {} ms; last heartbeat to revert seen {:.1f} ms; excess over the lease {:.1f} ms (polling `tc` adds a "
        "few ms)\n",
        lease.count(), delay, delay - static_cast<double>(lease.count()));
    agent.stop();
  }
  std::filesystem::remove_all(dir);
  return 0;
}
