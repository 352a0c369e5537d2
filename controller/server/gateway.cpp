#include "controller/server/gateway.h"

#include <condition_variable>
#include <deque>

#include <spdlog/spdlog.h>

#include "agent/faults/spec.h"
#include "agent/session/agent.h"
#include "controller/auth/roles.h"
#include "controller/server/limits.h"
#include "controller/server/tls.h"

namespace faultline::controller {

class Gateway::Connection final : public grpc::ServerBidiReactor<v1::AgentMessage, v1::ControllerMessage> {
 public:
  Connection(Gateway& gateway, grpc::CallbackServerContext* context)
      : gateway_(gateway), context_(context), peer_(context->peer()) {
    if (auto auth = context->auth_context()) {
      identity_ = peerIdentity(*auth);
    }
  }

  void begin(std::shared_ptr<Connection> self) {
    self_ = std::move(self);
    if (gateway_.options_.requireClientCertificate && !identity_) {
      spdlog::warn("refused an agent stream from {}: no client certificate from the controller's CA", peer_);
      std::lock_guard lock(mutex_);
      finishLocked(grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                "this controller accepts agents only with a client certificate from its CA (--tls-ca); "
                                "give the agent --ca, --cert and --key"));
      return;
    }
    if (identity_ && auth::parseRole(identity_->organizationalUnit)) {
      // A CLI client's certificate (its OU names a role) is not an agent's: refused, so that a
      // leaked viewer certificate cannot take an agent's place.
      spdlog::warn("refused an agent stream from {}: certificate CN={} OU={} is a CLI client's", peer_,
                   forLog(identity_->commonName), forLog(identity_->organizationalUnit));
      std::lock_guard lock(mutex_);
      finishLocked(grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                                fmt::format("the certificate's OU '{}' names a CLI role; an agent's certificate has "
                                            "no role OU (faultline certs init makes agent certificates)",
                                            forLog(identity_->organizationalUnit))));
      return;
    }
    if (gateway_.options_.refusePeer) {
      if (auto reason = gateway_.options_.refusePeer(peer_)) {
        spdlog::warn("refused an agent stream from {}: {}", peer_, *reason);
        std::lock_guard lock(mutex_);
        finishLocked(grpc::Status(grpc::StatusCode::PERMISSION_DENIED, *reason));
        return;
      }
    }
    StartRead(&incoming_);
  }

  // Closes a stream that sent nothing within the Hello timeout (the gateway's heartbeat thread).
  void expire(std::chrono::milliseconds timeout) {
    std::lock_guard lock(mutex_);
    if (helloed_ || finishing_) {
      return;
    }
    spdlog::warn("closed the stream from {}: no Hello within {} ms", peer_, timeout.count());
    finishLocked(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                              fmt::format("no Hello within {} ms of opening the stream", timeout.count())));
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
    {
      std::lock_guard lock(mutex_);
      lastHeard_ = std::chrono::steady_clock::now();
    }
    if (!ok) {
      std::lock_guard lock(mutex_);
      finishLocked(grpc::Status::OK);
      return;
    }
    handle(incoming_);
    std::lock_guard lock(mutex_);
    if (!finishing_) {  // nothing more is read from a stream being closed
      StartRead(&incoming_);
    }
  }

  void OnDone() override {
    {
      // gRPC frees the context after this returns: wait out an abandon() using it.
      std::unique_lock lock(mutex_);
      done_ = true;
      cancelled_.wait(lock, [&] { return !cancelling_; });
    }
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

  // How long since the agent last sent anything (it sends a heartbeat every interval).
  std::chrono::steady_clock::duration silentFor() const {
    std::lock_guard lock(mutex_);
    return std::chrono::steady_clock::now() - lastHeard_;
  }

  // Ends the stream from this side: the agent is gone for the controller (e.g. a partition,
  // where TCP reports nothing for many minutes), and may register again on a new stream.
  // Cancelling completes the outstanding read and write (a dead peer completes neither).
  // Returns false when it was abandoned already.
  bool abandon() {
    {
      std::lock_guard lock(mutex_);
      if (abandoned_ || done_) {
        return false;
      }
      abandoned_ = true;
      cancelling_ = true;
    }
    context_->TryCancel();
    {
      std::lock_guard lock(mutex_);
      cancelling_ = false;
    }
    cancelled_.notify_all();
    return true;
  }

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
  // Finishes now, or (a write in flight) once the queue is written or has failed. Called again
  // after the first time (a write failing after the read ended), it keeps the first status but
  // still finishes: a reactor that never calls Finish() never gets OnDone(), and the server's
  // Shutdown() waits for it forever.
  void finishLocked(const grpc::Status& status) {
    if (!finishing_) {
      finishing_ = true;
      finishStatus_ = status;
    }
    if (queue_.empty() && !finished_) {
      finished_ = true;
      Finish(finishStatus_);
    }
  }

  // Closes the stream with status unless it said Hello; returns whether it did.
  bool requireHello(std::string_view what) {
    std::lock_guard lock(mutex_);
    if (helloed_) {
      return true;
    }
    spdlog::warn("closed the stream from {}: {} before Hello", peer_, what);
    finishLocked(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                              fmt::format("{} before Hello: an agent's first message is its Hello", what)));
    return false;
  }

  void handle(const v1::AgentMessage& msg) {
    switch (msg.msg_case()) {
      case v1::AgentMessage::kHello: {
        const auto& h = msg.hello();
        {
          std::lock_guard lock(mutex_);
          if (helloed_) {
            spdlog::warn("closed the stream of agent {} from {}: a second Hello", info_.agent_id(), peer_);
            finishLocked(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                                      "a second Hello on one stream; an agent says Hello once, then reconnects to "
                                      "say it again"));
            return;
          }
          helloed_ = true;
        }
        gateway_.named(this);
        if (auto over = overLimits(h)) {
          spdlog::warn("refused a Hello from {}: {}", peer_, *over);
          std::lock_guard lock(mutex_);
          finishLocked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
          return;
        }
        if (h.agent_id().empty()) {
          std::lock_guard lock(mutex_);
          finishLocked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "Hello without agent_id"));
          return;
        }
        if (identity_ && h.agent_id() != identity_->commonName) {
          spdlog::warn("refused a Hello from {}: agent_id {} differs from its certificate's common name {}", peer_,
                       forLog(h.agent_id()), forLog(identity_->commonName));
          std::lock_guard lock(mutex_);
          finishLocked(grpc::Status(
              grpc::StatusCode::PERMISSION_DENIED,
              fmt::format("Hello.agent_id '{}' differs from the common name '{}' of the agent's certificate; an "
                          "agent's id is its certificate's common name",
                          forLog(h.agent_id()), forLog(identity_->commonName))));
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
            if (r.state() == v1::FAULT_STATE_FAILED) {  // held, its revert failing and retried
              v1::FailedRevert f;
              f.set_fault_id(r.fault_id());
              f.set_error(r.error());
              *f.mutable_at() = r.has_at() ? r.at() : agent::nowTimestamp();
              f.set_detail(r.detail());
              failing_[r.fault_id()] = std::move(f);
            }
          }
        }
        std::set<std::string> held;
        for (const auto& r : h.active_faults()) {
          held.insert(r.fault_id());
        }
        spdlog::info("agent {} ({}, {}) registered from {}", h.agent_id(), forLog(h.hostname()), h.kernel_release(),
                     peer_);
        if (auto refused = gateway_.tryRegister(self_); !refused.ok()) {
          spdlog::warn("refused agent id {} from {}: {}", h.agent_id(), peer_, refused.error_message());
          std::lock_guard lock(mutex_);
          finishLocked(refused);
          return;
        }
        v1::ControllerMessage welcome;
        *welcome.mutable_welcome()->mutable_lease() = toProto(gateway_.options_.lease);
        *welcome.mutable_welcome()->mutable_heartbeat_interval() = toProto(gateway_.options_.heartbeatInterval);
        write(welcome);
        {
          auto unexplained = gateway_.reconcile(h.agent_id(), held);
          std::lock_guard lock(mutex_);
          unexplained_ = std::move(unexplained);
        }
        break;
      }
      case v1::AgentMessage::kReport: {
        const auto& r = msg.report();
        if (!requireHello("a FaultReport")) {
          return;
        }
        if (auto over = overLimits(r)) {
          std::lock_guard lock(mutex_);
          spdlog::warn("refused a FaultReport of agent {} from {}: {}", info_.agent_id(), peer_, *over);
          finishLocked(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
          return;
        }
        if (!gateway_.wasSent(agentId(), r.fault_id())) {
          spdlog::warn("dropped a FaultReport of agent {} from {} on fault {}: not a fault this controller sent to it",
                       agentId(), peer_, forLog(r.fault_id()));
          return;
        }
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
          unexplained_.erase(r.fault_id());
        }
        gateway_.reported(id, r);
        break;
      }
      case v1::AgentMessage::kHeartbeat: {
        if (!requireHello("a Heartbeat")) {
          return;
        }
        // The agent sends its queued reports right after the Welcome, before its first heartbeat:
        // a fault it held at its disconnect and has not reported on since ended on its own.
        std::set<std::string> ended;
        std::string id;
        {
          std::lock_guard lock(mutex_);
          ended.swap(unexplained_);
          id = info_.agent_id();
        }
        for (const auto& faultId : ended) {
          v1::FaultReport r;
          r.set_fault_id(faultId);
          r.set_state(v1::FAULT_STATE_EXPIRED);
          r.set_detail(
              "the agent no longer held the fault when it reconnected: it ended it on its own while disconnected "
              "(lease, duration or crash recovery); no report of the revert survived");
          *r.mutable_at() = agent::nowTimestamp();
          spdlog::info("agent {}: fault {} ended while the agent was disconnected", id, faultId);
          gateway_.reported(id, r);
        }
        break;
      }
      case v1::AgentMessage::MSG_NOT_SET:
        (void)requireHello("an empty message");
        break;
    }
  }

  Gateway& gateway_;
  grpc::CallbackServerContext* context_;  // valid until OnDone
  std::string peer_;
  std::optional<PeerIdentity> identity_;  // from a verified client certificate (TLS)
  mutable std::mutex mutex_;
  v1::AgentMessage incoming_;
  std::deque<v1::ControllerMessage> queue_;
  bool finishing_ = false;
  bool finished_ = false;
  grpc::Status finishStatus_;
  v1::AgentInfo info_;
  std::set<std::string> active_;
  std::map<std::string, v1::FailedRevert> failing_;  // reverts that failed, by fault id
  std::set<std::string> unexplained_;                // held at the last disconnect, not in Hello, not reported since
  std::chrono::steady_clock::time_point lastHeard_ = std::chrono::steady_clock::now();
  bool helloed_ = false;  // its Hello arrived (valid or not): nothing else is a Hello now
  bool abandoned_ = false;
  bool done_ = false;        // OnDone has begun: context_ is about to go
  bool cancelling_ = false;  // abandon() is inside TryCancel
  std::condition_variable cancelled_;
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
  auto c = std::make_shared<Connection>(*this, context);
  {
    std::lock_guard lock(mutex_);
    unnamed_.emplace(c.get(), std::pair{c, std::chrono::steady_clock::now()});
  }
  c->begin(c);
  return c.get();
}

void Gateway::named(Connection* c) {
  std::lock_guard lock(mutex_);
  unnamed_.erase(c);
}

grpc::Status Gateway::tryRegister(const std::shared_ptr<Connection>& c) {
  {
    std::lock_guard lock(mutex_);
    auto it = agents_.find(c->agentId());
    if (it != agents_.end() && it->second != c) {
      return grpc::Status(grpc::StatusCode::ALREADY_EXISTS,
                          fmt::format("agent id '{}' is already connected (from {}); give every agent a unique --id",
                                      c->agentId(), it->second->peer()));
    }
    if (it == agents_.end() && agents_.size() >= options_.maxAgents) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          fmt::format("this controller holds {} agents, the most it accepts; agent '{}' is refused "
                                      "until one leaves",
                                      agents_.size(), c->agentId()));
    }
    agents_.emplace(c->agentId(), c);
  }
  changed_.notify_all();
  return grpc::Status::OK;
}

bool Gateway::wasSent(const std::string& agentId, const std::string& faultId) const {
  std::lock_guard lock(mutex_);
  auto it = sent_.find(agentId);
  return it != sent_.end() && it->second.ids.count(faultId) > 0;
}

void Gateway::remember(const std::string& agentId, const std::string& faultId) {
  std::lock_guard lock(mutex_);
  auto& sent = sent_[agentId];
  if (!sent.ids.insert(faultId).second) {
    return;
  }
  sent.order.push_back(faultId);
  if (sent.order.size() > kMaxRememberedFaultsPerAgent) {
    sent.ids.erase(sent.order.front());
    sent.order.pop_front();
  }
}

void Gateway::expireSilentStreams() {
  std::vector<std::shared_ptr<Connection>> late;
  {
    std::lock_guard lock(mutex_);
    const auto now = std::chrono::steady_clock::now();
    for (const auto& [raw, entry] : unnamed_) {
      if (now - entry.second >= options_.helloTimeout) {
        late.push_back(entry.first);
      }
    }
  }
  for (const auto& c : late) {
    c->expire(options_.helloTimeout);
  }
}

void Gateway::gone(Connection* c) {
  std::string agentId;
  {
    std::lock_guard lock(mutex_);
    unnamed_.erase(c);
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
  if (!held.empty()) {
    std::lock_guard lock(mutex_);
    lost_[agentId].insert(held.begin(), held.end());
  }
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
  if (msg.has_inject()) {
    remember(agentId, msg.inject().fault_id());
  } else if (msg.has_revert()) {
    remember(agentId, msg.revert().fault_id());
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

void Gateway::setRunActive(std::function<bool(const std::string& runId)> runActive) {
  std::lock_guard lock(mutex_);
  runActive_ = std::move(runActive);
}

std::set<std::string> Gateway::reconcile(const std::string& agentId, const std::set<std::string>& held) {
  std::set<std::string> lost;
  std::function<bool(const std::string&)> runActive;
  {
    std::lock_guard lock(mutex_);
    if (auto it = lost_.find(agentId); it != lost_.end()) {
      lost = std::move(it->second);
      lost_.erase(it);
    }
    runActive = runActive_;
  }
  std::set<std::string> unexplained;
  for (const auto& id : lost) {
    if (held.count(id) == 0) {
      unexplained.insert(id);
    }
  }
  if (runActive) {
    for (const auto& id : held) {
      const std::string runId = id.substr(0, id.find('/'));
      if (runActive(runId)) {
        continue;
      }
      spdlog::warn("agent {} holds fault {} of run {}, which is not running any more; reverting it", agentId, id,
                   runId);
      v1::ControllerMessage msg;
      msg.mutable_revert()->set_fault_id(id);
      send(agentId, msg);
    }
  }
  return unexplained;
}

void Gateway::heartbeatLoop() {
  // Two deadlines: the next heartbeat (every heartbeatInterval, never later) and the next look for
  // streams without Hello (a quarter of the Hello timeout).
  using Clock = std::chrono::steady_clock;
  const auto helloCheck = std::max(options_.helloTimeout / 4, std::chrono::milliseconds{10});
  auto nextBeat = Clock::now() + options_.heartbeatInterval;
  auto nextHelloCheck = Clock::now() + helloCheck;
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    changed_.wait_until(lock, std::min(nextBeat, nextHelloCheck), [&] { return stopping_; });
    if (stopping_) {
      break;
    }
    if (Clock::now() >= nextHelloCheck) {
      lock.unlock();
      expireSilentStreams();
      lock.lock();
      nextHelloCheck = Clock::now() + helloCheck;
    }
    if (Clock::now() < nextBeat) {
      continue;
    }
    nextBeat = Clock::now() + options_.heartbeatInterval;
    std::vector<std::shared_ptr<Connection>> conns;
    for (const auto& [id, c] : agents_) {
      conns.push_back(c);
    }
    lock.unlock();
    v1::ControllerMessage beat;
    *beat.mutable_heartbeat()->mutable_sent_at() = agent::nowTimestamp();
    for (const auto& c : conns) {
      if (c->silentFor() > options_.lease) {
        if (c->abandon()) {
          spdlog::warn(
              "agent {} ({}): nothing heard for longer than the lease ({} ms); dropping its stream (its own "
              "lease reverts what it holds; it may register again)",
              c->agentId(), c->peer(), options_.lease.count());
        }
        continue;
      }
      c->write(beat);
    }
    lock.lock();
  }
}

}  // namespace faultline::controller
