// The controller's side of AgentGateway.Connect (gRPC callback API: no thread per agent).
// Registers agents from their Hello, sends Welcome (lease, heartbeat interval) and heartbeats,
// forwards fault reports to subscribers. Heartbeats are never written to the database.
//
// Rules on every stream: the first message is a Hello, sent within GatewayOptions::helloTimeout
// (anything else first, or nothing in time, closes the stream: FAILED_PRECONDITION,
// DEADLINE_EXCEEDED); a second Hello closes the stream (FAILED_PRECONDITION) and its agent is gone
// at once; a FaultReport counts only for a fault this gateway sent to that agent id (an Inject or
// Revert through send(), remembered across reconnects up to kMaxRememberedFaultsPerAgent per
// agent): another is dropped with a warning, the stream stays.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "controller/engine/fleet.h"
#include "faultline/v1/agent_gateway.grpc.pb.h"

namespace faultline::controller {

// The fleet's size bound: Hellos beyond it are refused with RESOURCE_EXHAUSTED.
inline constexpr size_t kDefaultMaxAgents = 10'000;
// Faults remembered per agent as sent to it (the reports it may make), oldest forgotten first.
inline constexpr size_t kMaxRememberedFaultsPerAgent = 4096;

struct GatewayOptions {
  std::chrono::milliseconds lease{15'000};
  std::chrono::milliseconds heartbeatInterval{3'000};  // at most lease / 3
  // A stream that has not sent its Hello this long after it opened is closed (DEADLINE_EXCEEDED).
  std::chrono::milliseconds helloTimeout{10'000};
  size_t maxAgents = kDefaultMaxAgents;
  // With TLS (tls.h): Connect requires a verified client certificate (UNAUTHENTICATED without),
  // and a Hello's agent_id must be its common name (PERMISSION_DENIED otherwise, naming both).
  bool requireClientCertificate = false;
  // Without TLS: called with each Connect stream's peer (gRPC's name of it, e.g. "fd:12",
  // "ipv4:127.0.0.1:40112"); a reason refuses the stream with PERMISSION_DENIED before its Hello
  // is read. Unset: every peer may register (with TLS, or --insecure).
  std::function<std::optional<std::string>(const std::string& peer)> refusePeer;
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
  // Registers c under its agent id unless another connection holds that id (ALREADY_EXISTS, naming
  // its peer) or the fleet is full (RESOURCE_EXHAUSTED); OK when registered.
  grpc::Status tryRegister(const std::shared_ptr<Connection>& c);
  // c said Hello: the Hello timeout no longer applies to it.
  void named(Connection* c);
  // Whether faultId was sent to agentId (send() remembers Inject and Revert fault ids).
  bool wasSent(const std::string& agentId, const std::string& faultId) const;
  void remember(const std::string& agentId, const std::string& faultId);
  // Closes the streams that sent no Hello within the timeout.
  void expireSilentStreams();
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
  // Streams that have not said Hello yet, with when they opened.
  std::map<Connection*, std::pair<std::shared_ptr<Connection>, std::chrono::steady_clock::time_point>> unnamed_;
  struct SentFaults {
    std::set<std::string> ids;
    std::deque<std::string> order;  // oldest first, for the bound
  };
  std::map<std::string, SentFaults> sent_;  // by agent id
  std::function<bool(const std::string&)> runActive_;
  std::mutex listenersMutex_;  // guards listeners_ and is held while they run
  std::map<int, ReportListener> listeners_;
  int nextListener_ = 1;
  bool stopping_ = false;
  std::thread heartbeat_;
};

}  // namespace faultline::controller
