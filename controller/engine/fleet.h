// The agents connected to this controller, as the run engine sees them.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "faultline/v1/agent_gateway.pb.h"
#include "faultline/v1/control.pb.h"

namespace faultline::controller {

class Fleet {
 public:
  using ReportListener = std::function<void(const std::string& agentId, const v1::FaultReport& report)>;

  virtual ~Fleet() = default;
  // Every agent connected now, in agent-id order.
  [[nodiscard]] virtual std::vector<v1::AgentInfo> agents() const = 0;
  // Queues msg for the agent; false when it is not connected. Never blocks on the network.
  virtual bool send(const std::string& agentId, const v1::ControllerMessage& msg) = 0;
  // listener is called on a gRPC thread for every fault report from any agent, until the
  // returned id is passed to unsubscribe(); once unsubscribe() returns it is never called again.
  // A listener must not call subscribe() or unsubscribe().
  virtual int subscribe(ReportListener listener) = 0;
  virtual void unsubscribe(int id) = 0;
};

}  // namespace faultline::controller
