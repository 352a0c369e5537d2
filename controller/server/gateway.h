// The controller's side of AgentGateway.Connect (gRPC callback API: no thread per agent).
// Registers agents from their Hello, sends Welcome (lease, heartbeat interval) and heartbeats,
// forwards fault reports to subscribers. Heartbeats are never written to the database.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "controller/engine/fleet.h"
#include "faultline/v1/agent_gateway.grpc.pb.h"

namespace faultline::controller {

struct GatewayOptions {
  std::chrono::milliseconds lease{15'000};
  std::chrono::milliseconds heartbeatInterval{3'000};  // at most lease / 3
};

class Gateway final : public v1::AgentGateway::CallbackService, public Fleet {
 public:
  explicit Gateway(GatewayOptions options);
  ~Gateway() override;  // stops the heartbeat thread; call shutdown() on the server first

  grpc::ServerBidiReactor<v1::AgentMessage, v1::ControllerMessage>* Connect(
      grpc::CallbackServerContext* context) override;

  [[nodiscard]] std::vector<v1::AgentInfo> agents() const override;
  bool send(const std::string& agentId, const v1::ControllerMessage& msg) override;
  int subscribe(ReportListener listener) override;
  void unsubscribe(int id) override;
  struct RevertAllOutcome {
    size_t agentsTold = 0;
    // Agents told that still hold a fault, whose revert failed, or that left, with why.
    std::vector<std::pair<std::string, std::string>> unconfirmed;
  };
  // Sends RevertAll(reason) to every connected agent and blocks until each holds no fault and
  // has no failed revert, or timeout passes (or the gateway stops). Thread-safe.
  RevertAllOutcome revertAllAndWait(const std::string& reason, std::chrono::milliseconds timeout);
  // Blocks until at least n agents are registered or the timeout passes; true when they are.
  bool waitForAgents(size_t n, std::chrono::milliseconds timeout) const;

  // Reconciliation when an agent (re)registers. runActive(runId) tells whether a run of this
  // controller is still going (fault ids are RUN_ID/STEP/AGENT_ID). Set once, before agents
  // connect; called on gRPC threads. When set:
  //   - a fault the agent's Hello says it holds whose run is not active (it ended, e.g. when
  //     the agent disconnected, or belongs to another controller's life) is reverted at once;
  //   - a fault the agent held when it disconnected that its Hello no longer lists, and that
  //     no report after the Welcome explains, is reported EXPIRED (the agent ended it on its
  //     own: lease, duration or crash recovery), never as reverted by command. The agent's
  //     first heartbeat marks the end of its queued reports.
  void setRunActive(std::function<bool(const std::string& runId)> runActive);

 private:
  class Connection;
  friend class Connection;
  // Registers c under its agent id unless another connection holds that id; returns the other
  // connection's peer address then, else "".
  std::string tryRegister(const std::shared_ptr<Connection>& c);
  void gone(Connection* c);
  void reported(const std::string& agentId, const v1::FaultReport& report);
  void heartbeatLoop();
  // On Hello of agentId holding held: returns the faults it held at its last disconnect that
  // held lacks, and reverts the orphans among held.
  std::set<std::string> reconcile(const std::string& agentId, const std::set<std::string>& held);

  GatewayOptions options_;
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::map<std::string, std::shared_ptr<Connection>> agents_;
  // Faults each agent held when its stream ended, until it registers again.
  std::map<std::string, std::set<std::string>> lost_;
  std::function<bool(const std::string&)> runActive_;
  std::mutex listenersMutex_;  // guards listeners_ and is held while they run
  std::map<int, ReportListener> listeners_;
  int nextListener_ = 1;
  bool stopping_ = false;
  std::thread heartbeat_;
};

}  // namespace faultline::controller
