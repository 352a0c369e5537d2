#include "controller/gateway.h"

#include <deque>

#include <spdlog/spdlog.h>

#include "agent/agent.h"
#include "agent/spec.h"

namespace faultline::controller {

class Gateway::Connection final : public grpc::ServerBidiReactor<v1::AgentMessage, v1::ControllerMessage> {
 public:
  Connection(Gateway& gateway, std::string peer) : gateway_(gateway), peer_(std::move(peer)) {}

  void begin(std::shared_ptr<Connection> self) {
    self_ = std::move(self);
    StartRead(&incoming_);
  }

  void write(const v1::ControllerMessage& msg) {
    std::lock_guard lock(mutex_);
    if (finishing_) {
      return;
    }
    queue_.push_back(msg);
    if (queue_.size() == 1) {
      StartWrite(&queue_.front());
    }
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mutex_);
    queue_.pop_front();
    if (!ok) {
      queue_.clear();
      finishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      return;
    }
    if (!queue_.empty()) {
      StartWrite(&queue_.front());
    } else if (finishing_ && !finished_) {
      finished_ = true;
      Finish(finishStatus_);
    }
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      std::lock_guard lock(mutex_);
      finishLocked(grpc::Status::OK);
      return;
    }
    handle(incoming_);
    StartRead(&incoming_);
  }

  void OnDone() override {
    gateway_.gone(this);
    std::shared_ptr<Connection> self;
    {
      std::lock_guard lock(mutex_);
      self = std::move(self_);  // the last reference may go with this frame
    }
  }

  std::string agentId() const {
    std::lock_guard lock(mutex_);
    return info_.agent_id();
  }

  std::string peer() const { return peer_; }

  std::vector<std::string> activeFaults() const {
    std::lock_guard lock(mutex_);
    return {active_.begin(), active_.end()};
  }

  v1::AgentInfo info() const {
    std::lock_guard lock(mutex_);
    v1::AgentInfo copy = info_;
    copy.set_active_faults(static_cast<uint32_t>(active_.size()));
    for (const auto& [id, f] : failing_) {
      *copy.add_failed_reverts() = f;
    }
    return copy;
  }

 private:
  void finishLocked(const grpc::Status& status) {
    if (finishing_) {
      return;
    }
    finishing_ = true;
    finishStatus_ = status;
    if (queue_.empty()) {
      finished_ = true;
      Finish(status);
    }
  }

  void handle(const v1::AgentMessage& msg) {
    switch (msg.msg_case()) {
      case v1::AgentMessage::kHello: {
        const auto& h = msg.hello();
        if (h.agent_id().empty()) {
          std::lock_guard lock(mutex_);
          finishLocked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Hello without agent_id"));
          return;
        }
        {
          std::lock_guard lock(mutex_);
          info_.set_agent_id(h.agent_id());
          info_.set_hostname(h.hostname());
          *info_.mutable_labels() = h.labels();
          info_.set_version(h.version());
          info_.set_kernel_release(h.kernel_release());
          *info_.mutable_capabilities() = h.capabilities();
          *info_.mutable_connected_at() = agent::nowTimestamp();
          for (const auto& r : h.active_faults()) {
            active_.insert(r.fault_id());
          }
        }
        spdlog::info("agent {} ({}, {}) registered from {}", h.agent_id(), h.hostname(), h.kernel_release(), peer_);
        if (auto other = gateway_.tryRegister(self_); !other.empty()) {
          spdlog::warn("refused agent id {} from {}: already connected from {}", h.agent_id(), peer_, other);
          std::lock_guard lock(mutex_);
          finishLocked(grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                                    fmt::format("agent id '{}' is already connected (from {}); give every agent a "
                                                "unique --id",
                                                h.agent_id(), other)));
          return;
        }
        v1::ControllerMessage welcome;
        *welcome.mutable_welcome()->mutable_lease() = toProto(gateway_.options_.lease);
        *welcome.mutable_welcome()->mutable_heartbeat_interval() = toProto(gateway_.options_.heartbeatInterval);
        write(welcome);
        break;
      }
      case v1::AgentMessage::kReport: {
        const auto& r = msg.report();
        std::string id;
        {
          std::lock_guard lock(mutex_);
          if (r.state() == v1::FAULT_STATE_APPLIED) {
            active_.insert(r.fault_id());
            failing_.erase(r.fault_id());
          } else if (r.state() == v1::FAULT_STATE_REVERTED || r.state() == v1::FAULT_STATE_EXPIRED) {
            active_.erase(r.fault_id());
            // A permanent failure stays: the agent dropped that fault, so a later REVERTED for it
            // only says "not held" (e.g. the run's own Revert after a RevertAll).
            if (auto f = failing_.find(r.fault_id()); f != failing_.end() && !f->second.permanent()) {
              failing_.erase(f);
            }
          } else if (r.state() == v1::FAULT_STATE_FAILED && active_.count(r.fault_id()) > 0) {
            // FAILED after APPLIED is a failed revert (a failed apply never reaches active_).
            // A retried one stays held by the agent; a permanent one was dropped by it.
            const bool permanent = r.error_code() == v1::FAULT_ERROR_PERMANENT;
            if (permanent) {
              active_.erase(r.fault_id());
            }
            v1::FailedRevert f;
            f.set_fault_id(r.fault_id());
            f.set_error(r.error());
            f.set_permanent(permanent);
            *f.mutable_at() = r.has_at() ? r.at() : agent::nowTimestamp();
            f.set_detail(r.detail());
            failing_[r.fault_id()] = std::move(f);
          }
          id = info_.agent_id();
        }
        gateway_.reported(id, r);
        break;
      }
      case v1::AgentMessage::kHeartbeat:
      case v1::AgentMessage::MSG_NOT_SET:
        break;
    }
  }

  Gateway& gateway_;
  std::string peer_;
  mutable std::mutex mutex_;
  v1::AgentMessage incoming_;
  std::deque<v1::ControllerMessage> queue_;
  bool finishing_ = false;
  bool finished_ = false;
  grpc::Status finishStatus_;
  v1::AgentInfo info_;
  std::set<std::string> active_;
  std::map<std::string, v1::FailedRevert> failing_;  // reverts that failed, by fault id
  std::shared_ptr<Connection> self_;
};

Gateway::Gateway(GatewayOptions options) : options_(options) {
  heartbeat_ = std::thread([this] { heartbeatLoop(); });
}

Gateway::~Gateway() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  heartbeat_.join();
}

grpc::ServerBidiReactor<v1::AgentMessage, v1::ControllerMessage>* Gateway::Connect(
    grpc::CallbackServerContext* context) {
  auto c = std::make_shared<Connection>(*this, context->peer());
  c->begin(c);
  return c.get();
}

std::string Gateway::tryRegister(const std::shared_ptr<Connection>& c) {
  {
    std::lock_guard lock(mutex_);
    auto [it, added] = agents_.emplace(c->agentId(), c);
    if (!added && it->second != c) {
      return it->second->peer();
    }
  }
  changed_.notify_all();
  return "";
}

void Gateway::gone(Connection* c) {
  std::string agentId;
  {
    std::lock_guard lock(mutex_);
    for (auto it = agents_.begin(); it != agents_.end(); ++it) {
      if (it->second.get() == c) {
        agentId = it->first;
        agents_.erase(it);
        break;
      }
    }
  }
  if (agentId.empty()) {
    return;
  }
  const auto held = c->activeFaults();
  spdlog::info("agent {} disconnected{}", agentId,
               held.empty() ? "" : fmt::format(" holding {} fault(s)", held.size()));
  // Whoever waits on those faults must know that nobody can confirm their revert now.
  for (const auto& faultId : held) {
    v1::FaultReport r;
    r.set_fault_id(faultId);
    r.set_state(v1::FAULT_STATE_FAILED);
    r.set_error_code(v1::FAULT_ERROR_AGENT_GONE);
    r.set_error(fmt::format(
        "agent {} disconnected while holding the fault: if it still runs, its lease reverts the fault; if it "
        "died, the fault stays until the agent restarts or someone removes it",
        agentId));
    *r.mutable_at() = agent::nowTimestamp();
    reported(agentId, r);
  }
}

void Gateway::reported(const std::string& agentId, const v1::FaultReport& report) {
  // Held while listeners run, so that once unsubscribe() returns its listener is never called.
  std::lock_guard lock(listenersMutex_);
  for (const auto& [id, l] : listeners_) {
    l(agentId, report);
  }
}

std::vector<v1::AgentInfo> Gateway::agents() const {
  std::vector<std::shared_ptr<Connection>> conns;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [id, c] : agents_) {
      conns.push_back(c);
    }
  }
  std::vector<v1::AgentInfo> out;
  for (const auto& c : conns) {
    out.push_back(c->info());
  }
  return out;
}

bool Gateway::send(const std::string& agentId, const v1::ControllerMessage& msg) {
  std::shared_ptr<Connection> c;
  {
    std::lock_guard lock(mutex_);
    auto it = agents_.find(agentId);
    if (it == agents_.end()) {
      return false;
    }
    c = it->second;
  }
  c->write(msg);
  return true;
}

int Gateway::subscribe(ReportListener listener) {
  std::lock_guard lock(listenersMutex_);
  listeners_[nextListener_] = std::move(listener);
  return nextListener_++;
}

void Gateway::unsubscribe(int id) {
  std::lock_guard lock(listenersMutex_);
  listeners_.erase(id);
}

bool Gateway::waitForAgents(size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return agents_.size() >= n; });
}

Gateway::RevertAllOutcome Gateway::revertAllAndWait(const std::string& reason, std::chrono::milliseconds timeout) {
  RevertAllOutcome out;
  v1::ControllerMessage msg;
  msg.mutable_revert_all()->set_reason(reason);
  std::vector<std::string> told;
  for (const auto& a : agents()) {
    if (send(a.agent_id(), msg)) {
      told.push_back(a.agent_id());
    }
  }
  out.agentsTold = told.size();
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::map<std::string, v1::AgentInfo> now;
    for (auto& a : agents()) {
      now[a.agent_id()] = std::move(a);
    }
    out.unconfirmed.clear();
    for (const auto& id : told) {
      auto it = now.find(id);
      if (it == now.end()) {
        out.unconfirmed.emplace_back(id, "disconnected before confirming (its lease reverts what it holds)");
      } else if (!it->second.failed_reverts().empty()) {
        const auto& f = it->second.failed_reverts(0);
        out.unconfirmed.emplace_back(id, fmt::format("revert of fault {} failed{}: {}", f.fault_id(),
                                                     f.permanent() ? " permanently" : "", f.error()));
      } else if (it->second.active_faults() > 0) {
        out.unconfirmed.emplace_back(id, fmt::format("still holds {} fault(s)", it->second.active_faults()));
      }
    }
    if (out.unconfirmed.empty() || std::chrono::steady_clock::now() >= until) {
      return out;
    }
    std::unique_lock lock(mutex_);
    if (stopping_) {
      return out;
    }
    changed_.wait_for(lock, std::chrono::milliseconds{10});
  }
}

void Gateway::heartbeatLoop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    changed_.wait_for(lock, options_.heartbeatInterval, [&] { return stopping_; });
    if (stopping_) {
      break;
    }
    std::vector<std::shared_ptr<Connection>> conns;
    for (const auto& [id, c] : agents_) {
      conns.push_back(c);
    }
    lock.unlock();
    v1::ControllerMessage beat;
    *beat.mutable_heartbeat()->mutable_sent_at() = agent::nowTimestamp();
    for (const auto& c : conns) {
      c->write(beat);
    }
    lock.lock();
  }
}

}  // namespace faultline::controller
