// controller/server/gateway.h: the rules of an agent's stream (Hello first, once, in time; reports
// only for faults sent to that agent; a bounded fleet), against a real gRPC server on 127.0.0.1.
#include <algorithm>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>

#include "tests/support/agent_ids.h"
#include "tests/support/gateway_server.h"

using namespace faultline;
using namespace std::chrono_literals;
using testing::AgentStream;
using testing::eventually;
using testing::GatewayServer;

namespace {

std::shared_ptr<grpc::Channel> plaintext(const GatewayServer& s) {
  return grpc::CreateChannel(s.address, grpc::InsecureChannelCredentials());
}

// Reports the gateway passes on, as "AGENT FAULT".
struct Reports {
  explicit Reports(controller::Gateway& g) : gateway(g) {
    id = g.subscribe([this](const std::string& agent, const v1::FaultReport& r) {
      std::lock_guard lock(mutex);
      seen.push_back(agent + " " + r.fault_id());
    });
  }
  ~Reports() { gateway.unsubscribe(id); }
  std::vector<std::string> get() {
    std::lock_guard lock(mutex);
    return seen;
  }
  controller::Gateway& gateway;
  int id = 0;
  std::mutex mutex;
  std::vector<std::string> seen;
};

v1::ControllerMessage injectOf(const std::string& faultId) {
  v1::ControllerMessage m;
  m.mutable_inject()->set_fault_id(faultId);
  return m;
}

}  // namespace

TEST_CASE("a second Hello on a stream closes it with FAILED_PRECONDITION and leaves no ghost agent") {
  GatewayServer s({});
  AgentStream first(plaintext(s));
  REQUIRE(first.hello("web-1"));
  REQUIRE(first.welcomed());
  CHECK(testing::agentIds(s.gateway.agents()) == std::vector<std::string>{"web-1"});
  REQUIRE(first.hello("web-2"));
  const auto status = first.finish();
  CHECK(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK_MESSAGE(status.error_message().find("a second Hello") != std::string::npos, status.error_message());
  // Neither id stays behind: both register again at once, and halt has nobody to wait for.
  REQUIRE(eventually([&] { return s.gateway.agents().empty(); }));
  AgentStream again(plaintext(s));
  REQUIRE(again.hello("web-1"));
  CHECK(again.welcomed());
  AgentStream other(plaintext(s));
  REQUIRE(other.hello("web-2"));
  CHECK(other.welcomed());
  CHECK(s.gateway.agents().size() == 2);
}

TEST_CASE("a FaultReport or a heartbeat before Hello closes the stream and is never passed on") {
  GatewayServer s({});
  Reports reports(s.gateway);
  s.gateway.send("victim", injectOf("r1/1/victim"));  // no such agent: nothing sent, nothing remembered
  {
    AgentStream stream(plaintext(s));
    REQUIRE(stream.report("r1/1/victim", v1::FAULT_STATE_REVERTED));
    const auto status = stream.finish();
    CHECK(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    CHECK(status.error_message() == "a FaultReport before Hello: an agent's first message is its Hello");
  }
  {
    AgentStream stream(plaintext(s));
    v1::AgentMessage beat;
    beat.mutable_heartbeat();
    REQUIRE(stream.write(beat));
    const auto status = stream.finish();
    CHECK(status.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
    CHECK(status.error_message() == "a Heartbeat before Hello: an agent's first message is its Hello");
  }
  CHECK(reports.get().empty());
  CHECK(s.gateway.agents().empty());
}

TEST_CASE("a stream that sends no Hello within the timeout is closed with DEADLINE_EXCEEDED") {
  controller::GatewayOptions options;
  options.helloTimeout = 300ms;
  GatewayServer s(options);
  AgentStream silent(plaintext(s));
  const auto start = std::chrono::steady_clock::now();
  const auto status = silent.finish();
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED);
  CHECK(status.error_message() == "no Hello within 300 ms of opening the stream");
  CHECK(took >= 250ms);
  CHECK(took < 3s);
  // A stream that says Hello in time stays, past the timeout.
  AgentStream prompt(plaintext(s));
  REQUIRE(prompt.hello("web-1"));
  REQUIRE(prompt.welcomed());
  std::this_thread::sleep_for(600ms);
  CHECK(testing::agentIds(s.gateway.agents()) == std::vector<std::string>{"web-1"});
}

TEST_CASE("a FaultReport counts only for a fault the controller sent to that agent; others are dropped") {
  GatewayServer s({});
  Reports reports(s.gateway);
  AgentStream owner(plaintext(s));
  REQUIRE(owner.hello("web-1"));
  REQUIRE(owner.welcomed());
  AgentStream other(plaintext(s));
  REQUIRE(other.hello("web-2"));
  REQUIRE(other.welcomed());
  REQUIRE(s.gateway.send("web-1", injectOf("run-a/1/web-1")));
  REQUIRE(s.gateway.send("web-2", injectOf("run-b/1/web-2")));
  // web-2 reports on web-1's fault and on one nobody sent, then on its own: the stream stays open.
  REQUIRE(other.report("run-a/1/web-1", v1::FAULT_STATE_REVERTED));
  REQUIRE(other.report("run-z/1/web-2", v1::FAULT_STATE_APPLIED));
  REQUIRE(other.report("run-b/1/web-2", v1::FAULT_STATE_APPLIED));
  REQUIRE(owner.report("run-a/1/web-1", v1::FAULT_STATE_APPLIED));
  REQUIRE(eventually([&] { return reports.get().size() >= 2; }));
  std::this_thread::sleep_for(100ms);
  auto seen = reports.get();
  std::sort(seen.begin(), seen.end());
  CHECK(seen == std::vector<std::string>{"web-1 run-a/1/web-1", "web-2 run-b/1/web-2"});
  for (const auto& a : s.gateway.agents()) {
    CHECK(a.active_faults() == 1);  // the dropped APPLIED is not counted
  }
  // A Revert sent counts too (the controller reverting what an agent said it holds).
  v1::ControllerMessage revert;
  revert.mutable_revert()->set_fault_id("old-run/2/web-2");
  REQUIRE(s.gateway.send("web-2", revert));
  REQUIRE(other.report("old-run/2/web-2", v1::FAULT_STATE_REVERTED));
  CHECK(eventually([&] { return reports.get().size() == 3; }));
}

TEST_CASE("the fleet is bounded: a Hello beyond maxAgents is refused with RESOURCE_EXHAUSTED") {
  controller::GatewayOptions options;
  options.maxAgents = 2;
  GatewayServer s(options);
  AgentStream a(plaintext(s));
  AgentStream b(plaintext(s));
  REQUIRE(a.hello("web-1"));
  REQUIRE(a.welcomed());
  REQUIRE(b.hello("web-2"));
  REQUIRE(b.welcomed());
  AgentStream c(plaintext(s));
  REQUIRE(c.hello("web-3"));
  const auto status = c.finish();
  CHECK(status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED);
  CHECK(status.error_message() ==
        "this controller holds 2 agents, the most it accepts; agent 'web-3' is refused until one leaves");
  CHECK(s.gateway.agents().size() == 2);
  CHECK(controller::kDefaultMaxAgents == 10'000);
}

TEST_CASE("heartbeats keep their interval whatever the Hello timeout's checks") {
  controller::GatewayOptions options;
  options.heartbeatInterval = 300ms;
  options.helloTimeout = 1000ms;  // checked every 250 ms
  GatewayServer s(options);
  AgentStream agent(plaintext(s));
  REQUIRE(agent.hello("web-1"));
  REQUIRE(agent.welcomed());
  const auto start = std::chrono::steady_clock::now();
  int beats = 0;
  v1::ControllerMessage m;
  v1::AgentMessage beat;
  beat.mutable_heartbeat();
  while (beats < 4) {
    REQUIRE(agent.write(beat));  // the controller's side of the lease: it hears the agent
    REQUIRE(agent.readRaw(m));
    beats += m.has_heartbeat() ? 1 : 0;
  }
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(took >= 4 * 300ms - 50ms);
  CHECK(took < 4 * 300ms + 400ms);  // one heartbeat per interval, not per two checks (4 x 500 ms)
}
