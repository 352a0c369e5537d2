// An in-memory fleet for the run engine's tests: agents that apply, fail or stay silent, and a
// record of every message the engine sent. Reports are delivered synchronously from send(), except
// for Behaviour::ApplyFromThread: its APPLIED report comes from another thread, as the real
// gateway's do (from the agent's stream).
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "agent/session/agent.h"
#include "controller/engine/fleet.h"

namespace faultline::testing {

// RevertRefused: applies, then answers a revert with a permanent failure (the agent dropped the
// fault: e.g. someone replaced faultline's qdisc).
enum class Behaviour { Apply, FailApply, Silent, SilentOnRevert, ApplyFromThread, RevertRefused };

class FakeFleet final : public controller::Fleet {
 public:
  FakeFleet() = default;
  FakeFleet(const FakeFleet&) = delete;
  FakeFleet& operator=(const FakeFleet&) = delete;
  ~FakeFleet() override {
    for (auto& t : reporters_) {
      t.join();
    }
  }

  void addAgent(const std::string& id, std::map<std::string, std::string> labels, bool netem = true,
                Behaviour behaviour = Behaviour::Apply) {
    v1::AgentInfo a;
    a.set_agent_id(id);
    a.set_hostname("host-" + id);
    for (const auto& [k, v] : labels) {
      (*a.mutable_labels())[k] = v;
    }
    a.mutable_capabilities()->set_netem(netem);
    a.mutable_capabilities()->set_tbf(true);
    std::lock_guard lock(mutex_);
    agents_[id] = a;
    behaviour_[id] = behaviour;
  }

  // The agent disconnects: send() to it fails from now on (reports are up to the test).
  void removeAgent(const std::string& id) {
    std::lock_guard lock(mutex_);
    agents_.erase(id);
  }

  std::vector<v1::AgentInfo> agents() const override {
    std::lock_guard lock(mutex_);
    std::vector<v1::AgentInfo> out;
    for (const auto& [id, a] : agents_) {
      out.push_back(a);
    }
    return out;
  }

  bool send(const std::string& agentId, const v1::ControllerMessage& msg) override {
    v1::FaultReport report;
    bool answer = false;
    {
      std::lock_guard lock(mutex_);
      if (agents_.count(agentId) == 0) {
        return false;
      }
      sent_.emplace_back(agentId, msg);
      const auto b = behaviour_[agentId];
      if (msg.has_inject()) {
        report.set_fault_id(msg.inject().fault_id());
        if (b == Behaviour::Apply || b == Behaviour::SilentOnRevert || b == Behaviour::RevertRefused) {
          report.set_state(v1::FAULT_STATE_APPLIED);
          active_.insert(msg.inject().fault_id());
          answer = true;
        } else if (b == Behaviour::ApplyFromThread) {
          report.set_state(v1::FAULT_STATE_APPLIED);
          active_.insert(msg.inject().fault_id());
          reporters_.emplace_back([this, agentId, report] { emit(agentId, report); });
        } else if (b == Behaviour::FailApply) {
          report.set_state(v1::FAULT_STATE_FAILED);
          report.set_error("the kernel said no");
          answer = true;
        }
      } else if (msg.has_revert()) {
        report.set_fault_id(msg.revert().fault_id());
        report.set_state(v1::FAULT_STATE_REVERTED);
        if (b == Behaviour::RevertRefused) {
          report.set_state(v1::FAULT_STATE_FAILED);
          report.set_error_code(v1::FAULT_ERROR_PERMANENT);
          report.set_error("not reverted: the root qdisc is now someone else's");
        }
        if (b != Behaviour::SilentOnRevert) {
          active_.erase(msg.revert().fault_id());
          answer = true;
        }
      }
    }
    if (answer) {
      emit(agentId, report);
    }
    return true;
  }

  // Delivers a report as if agentId had sent it (or, for FAULT_ERROR_AGENT_GONE, as the gateway
  // does when the agent disconnects).
  void emit(const std::string& agentId, v1::FaultReport report) {
    *report.mutable_at() = agent::nowTimestamp();
    {
      std::lock_guard lock(mutex_);
      if (report.state() != v1::FAULT_STATE_APPLIED) {
        active_.erase(report.fault_id());
      }
    }
    // Held while listeners run, as in the real gateway: after unsubscribe() returns, a listener
    // is never called again.
    std::lock_guard dispatch(dispatchMutex_);
    for (const auto& [id, l] : listeners_) {
      l(agentId, report);
    }
  }

  // Ids of the faults applied and not reverted.
  std::vector<std::string> activeIds() const {
    std::lock_guard lock(mutex_);
    return {active_.begin(), active_.end()};
  }

  int subscribe(ReportListener listener) override {
    std::lock_guard lock(dispatchMutex_);
    listeners_[next_] = std::move(listener);
    return next_++;
  }
  void unsubscribe(int id) override {
    std::lock_guard lock(dispatchMutex_);
    listeners_.erase(id);
  }

  // Faults applied and not reverted.
  size_t activeCount() const {
    std::lock_guard lock(mutex_);
    return active_.size();
  }
  size_t sentCount(v1::ControllerMessage::MsgCase kind) const {
    std::lock_guard lock(mutex_);
    size_t n = 0;
    for (const auto& [id, m] : sent_) {
      n += m.msg_case() == kind ? 1 : 0;
    }
    return n;
  }
  std::vector<std::string> injectedAgents() const {
    std::lock_guard lock(mutex_);
    std::vector<std::string> out;
    for (const auto& [id, m] : sent_) {
      if (m.has_inject()) {
        out.push_back(id);
      }
    }
    return out;
  }

 private:
  mutable std::mutex mutex_;
  std::map<std::string, v1::AgentInfo> agents_;
  std::map<std::string, Behaviour> behaviour_;
  std::vector<std::pair<std::string, v1::ControllerMessage>> sent_;
  std::set<std::string> active_;
  std::mutex dispatchMutex_;  // guards listeners_ and is held while they run
  std::map<int, ReportListener> listeners_;
  int next_ = 1;
  std::vector<std::thread> reporters_;  // Behaviour::ApplyFromThread; joined by the destructor
};

}  // namespace faultline::testing
