// How many threads and how much memory the controller costs per connected agent.
// Opens N AgentGateway streams (N/100 channels of 100 streams, each saying Hello like an agent)
// to a controller in this process and prints the process's thread count and RSS before and
// after, and the registration time. Usage: fleet_threads [N] (default 10000).
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "controller/server/controller.h"
#include "faultline/v1/agent_gateway.grpc.pb.h"

using namespace faultline;

namespace {

long statusField(const std::string& name) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + ":", 0) == 0) {
      return std::stol(line.substr(name.size() + 1));
    }
  }
  return -1;
}

// A fake agent: Hello, then reads until cancelled.
class FakeAgent final : public grpc::ClientBidiReactor<v1::AgentMessage, v1::ControllerMessage> {
 public:
  FakeAgent(v1::AgentGateway::Stub& stub, int i) {
    hello_.mutable_hello()->set_agent_id(fmt::format("bench-{:05}", i));
    hello_.mutable_hello()->set_hostname(fmt::format("host-{:05}", i));
    stub.async()->Connect(&ctx_, this);
    StartWrite(&hello_);
    StartRead(&in_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (ok) {
      StartRead(&in_);
    }
  }
  void OnDone(const grpc::Status&) override { done_ = true; }
  void cancel() { ctx_.TryCancel(); }
  bool done() const { return done_; }

 private:
  grpc::ClientContext ctx_;
  v1::AgentMessage hello_;
  v1::ControllerMessage in_;
  std::atomic<bool> done_{false};
};

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::stoi(argv[1]) : 10'000;
  rlimit lim{65536, 65536};
  setrlimit(RLIMIT_NOFILE, &lim);
  spdlog::set_level(spdlog::level::warn);
  const auto db = std::filesystem::temp_directory_path() / fmt::format("fleet-bench-{}.db", getpid());
  {
    controller::Controller ctl({"127.0.0.1:0", db.string(), std::chrono::seconds{15}});
    const int port = ctl.start();
    std::this_thread::sleep_for(std::chrono::milliseconds{200});
    const long threads0 = statusField("Threads");
    const long rss0 = statusField("VmRSS");

    std::vector<std::shared_ptr<grpc::Channel>> channels;
    std::vector<std::unique_ptr<v1::AgentGateway::Stub>> stubs;
    std::vector<std::unique_ptr<FakeAgent>> agents;
    const int perChannel = 100;
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < n; ++i) {
      if (i % perChannel == 0) {
        grpc::ChannelArguments args;
        args.SetInt("grpc.channel_id", i / perChannel);  // distinct channels, not one shared connection
        channels.push_back(
            grpc::CreateCustomChannel(fmt::format("127.0.0.1:{}", port), grpc::InsecureChannelCredentials(), args));
        stubs.push_back(v1::AgentGateway::NewStub(channels.back()));
      }
      agents.push_back(std::make_unique<FakeAgent>(*stubs.back(), i));
    }
    const bool all = ctl.gateway().waitForAgents(static_cast<size_t>(n), std::chrono::seconds{120});
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const long threads1 = statusField("Threads");
    const long rss1 = statusField("VmRSS");
    std::cout << fmt::format("agents registered: {} of {} in {:.2f}s ({} channels)\n", ctl.gateway().agents().size(), n,
                             secs, channels.size());
    std::cout << fmt::format("threads (controller + fake agents, one process): {} before, {} after\n", threads0,
                             threads1);
    std::cout << fmt::format("RSS: {} KiB before, {} KiB after ({:.1f} KiB per agent, both sides)\n", rss0, rss1,
                             static_cast<double>(rss1 - rss0) / n);
    for (auto& a : agents) {
      a->cancel();
    }
    for (auto& a : agents) {
      while (!a->done()) {
        std::this_thread::sleep_for(std::chrono::milliseconds{1});
      }
    }
    ctl.shutdown();
    if (!all) {
      std::filesystem::remove(db);
      return 1;
    }
  }
  std::filesystem::remove(db);
  std::filesystem::remove(db.string() + "-wal");
  std::filesystem::remove(db.string() + "-shm");
  return 0;
}
