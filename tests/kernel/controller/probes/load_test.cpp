// A load probe (controller/probes/load.h) across a link it loads, under a 5 % loss made by the
// userspace network driver (this kernel has no sch_netem): two namespaces the test creates, veth0
// in A (10.81.1.1) and its peer in B (10.81.1.2); the demo service listens in B, the probe runs on
// a thread in A, and the loss is on A's egress. Needs root; the namespaces die with the test.
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "agent/faults/network/nfqueue_driver.h"
#include "agent/faults/network/packet_queue.h"
#include "agent/kernel/packet_steering.h"
#include "common/unique_fd.h"
#include "controller/engine/slo.h"
#include "controller/probes/probe.h"
#include "demo/server.h"
#include "tests/support/netns.h"
#include "tests/support/veth_peers.h"

using namespace faultline;
using namespace std::chrono_literals;

namespace {

// Runs fn on a thread that joined the network namespace at path; false when it could not join.
bool onThreadIn(const std::string& path, const std::function<void()>& fn) {
  bool joined = false;
  std::thread t([&] {
    const UniqueFd ns(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (ns.get() >= 0 && ::setns(ns.get(), CLONE_NEWNET) == 0) {
      joined = true;
      fn();
    }
  });
  t.join();
  return joined;
}

class LoadedLink : public testing::PeerNetnsFixture {
 public:
  LoadedLink() : PeerNetnsFixture({"10.81.1.1/24"}, {"10.81.1.2/24"}) {
    REQUIRE(onThreadIn(peer_.path(), [&] {
      demo::ServerOptions options;
      options.listen = boost::asio::ip::tcp::endpoint(boost::asio::ip::make_address("10.81.1.2"), 0);
      options.threads = 2;
      server_ = demo::Server::start(options);
    }));
    REQUIRE_MESSAGE(server_.has_value(), (server_ ? "" : server_.error().message()));
  }
  ~LoadedLink() {
    if (server_) {
      (*server_)->stop();
    }
  }

  // One load sample of GET / from A.
  controller::Sample load(const controller::LoadSpec& spec) {
    controller::Probe probe;
    probe.name = "web";
    probe.kind = controller::ProbeKind::kHttp;
    probe.http.url = fmt::format("http://10.81.1.2:{}/", (*server_)->endpoint().port());
    probe.http.maxLatency = 200ms;
    probe.http.timeout = 2s;
    probe.http.load = spec;
    controller::Sample sample;
    REQUIRE(onThreadIn(netns_, [&] { sample = controller::makeProbeRunner()->run(probe); }));
    return sample;
  }

  agent::NfqueueFaultDriver driver{kernel::probeSteeringSupport(), kernel::openPacketSteering,
                                   agent::PacketQueue::open};

 private:
  tl::expected<std::unique_ptr<demo::Server>, std::error_code> server_ = tl::unexpected(std::error_code());
};

}  // namespace

TEST_CASE_FIXTURE(LoadedLink, "a load probe sees the throughput drop of a 5 % loss on the link it loads") {
  const controller::LoadSpec spec{400, 32, 3000ms};
  const auto before = load(spec);
  REQUIRE(before.load != nullptr);
  MESSAGE("before: ", before.detail);

  v1::FaultSpec loss;
  loss.mutable_network_loss()->mutable_target()->set_interface("veth0");
  loss.mutable_network_loss()->mutable_target()->set_netns(netns_);
  loss.mutable_network_loss()->set_percent(5);
  auto applied = driver.apply(loss);
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const auto during = load(spec);
  REQUIRE((*applied)->revert().has_value());
  const auto after = load(spec);
  REQUIRE(during.load != nullptr);
  REQUIRE(after.load != nullptr);
  MESSAGE("during a 5 % loss: ", during.detail);
  MESSAGE("after: ", after.detail);
  MESSAGE("load average: ", testing::loadAverage());

  // 1,200 requests of a few packets each from A: about one in ten loses a packet, and a lost SYN
  // or request costs a retransmit of 200 ms to 1 s, above maxLatency.
  CHECK(before.load->requests == 1200);
  CHECK(before.load->throughput() >= 400 * 0.95);
  CHECK(before.load->failed <= 24);  // a loaded 2-core machine may stall a few requests past 200 ms
  CHECK(during.load->throughput() <= before.load->throughput() * 0.95);
  CHECK(during.load->failed >= 36);
  CHECK(during.load->failedLatencies.percentile(50) >= 200ms);
  CHECK(after.load->throughput() >= 400 * 0.95);

  // The SLO an operator would write sees it too.
  auto slo = *controller::parseObjective("errors < 2.5% and throughput > 380/s");
  const auto sli = [](const controller::Sample& s) {
    return std::vector<controller::SliSample>{{s.ok, 0, s.value, s.load}};
  };
  CHECK_MESSAGE(controller::evaluateSlo(slo, sli(before)).ok(),
                controller::describeSloCheck(controller::evaluateSlo(slo, sli(before))));
  const auto violated = controller::evaluateSlo(slo, sli(during));
  MESSAGE("SLO during the loss: ", controller::describeSloCheck(violated));
  CHECK_FALSE(violated.ok());
}
