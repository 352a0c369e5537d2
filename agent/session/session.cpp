#include "agent/session/session.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <charconv>
#include <condition_variable>
#include <deque>
#include <mutex>

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "agent/faults/spec.h"
#include "agent/kernel/tcp_listeners.h"
#include "agent/session/tls.h"
#include "faultline/v1/agent_gateway.grpc.pb.h"

namespace faultline::agent {

std::string agentVersion() {
  return "0.1.0";
}

namespace {

// A time as UTC with microseconds, e.g. "2026-11-29T15:02:03.123456Z": logged with a lease expiry.
std::string wallClockText(std::chrono::system_clock::time_point at) {
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(at.time_since_epoch()).count() % 1'000'000;
  return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:06}Z", fmt::gmtime(std::chrono::system_clock::to_time_t(at)), us);
}

v1::FaultReport failedReport(const std::string& faultId, std::string error) {
  v1::FaultReport r;
  r.set_fault_id(faultId);
  r.set_state(v1::FAULT_STATE_FAILED);
  r.set_error(std::move(error));
  *r.mutable_at() = nowTimestamp();
  return r;
}

// A reason from the controller, cut to kMaxReasonBytes for logs and reports.
std::string boundedReason(const std::string& reason, std::string_view otherwise) {
  if (reason.empty()) {
    return std::string(otherwise);
  }
  if (reason.size() <= kMaxReasonBytes) {
    return reason;
  }
  return reason.substr(0, kMaxReasonBytes) + "...";
}

}  // namespace

std::string kernelRelease() {
  utsname u{};
  if (uname(&u) != 0) {
    return "";
  }
  return u.release;
}

// One attempt at the bidirectional stream. gRPC calls its reactions on its own threads; they
// post to the io_context. Writes are queued, one in flight at a time.
class Session::Stream final : public grpc::ClientBidiReactor<v1::AgentMessage, v1::ControllerMessage> {
 public:
  Stream(Session& session, std::unique_ptr<v1::AgentGateway::Stub> stub)
      : session_(session), io_(session.io_), stub_(std::move(stub)) {}

  void begin(const v1::AgentMessage& hello, std::shared_ptr<Stream> self) {
    self_ = std::move(self);
    stub_->async()->Connect(&context_, this);
    write(hello);
    StartRead(&incoming_);
    AddHold();  // writes are started from outside the reactions
    StartCall();
  }

  void write(const v1::AgentMessage& msg) {
    std::lock_guard lock(mutex_);
    // Without the hold, gRPC may finish the call (OnDone) at any moment: an operation started from
    // outside the reactions then touches a finished call. Two trials saw agents abort with gRPC's
    // "ref_counted.h:183 assertion failed: prior > 0" as their controller went away, which this
    // ordering allowed (a report written between cancel() and the failed read). Reactions
    // (OnWriteDone) still write what was queued before.
    if (closed_ || holdReleased_) {
      return;
    }
    queue_.push_back(msg);
    if (queue_.size() == 1) {
      StartWrite(&queue_.front());
    }
  }

  // Waits (up to timeout) until every queued message is written, e.g. the reports of the
  // reverts done on shutdown.
  void flush(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    if (!flushed_.wait_for(lock, timeout, [&] { return queue_.empty() || closed_; })) {
      spdlog::warn("{} message(s) to the controller not sent within {}", queue_.size(), formatDuration(timeout));
    }
  }

  // Cancels the call and waits (up to timeout) until gRPC is done with it; after that no
  // reaction touches the session or its io_context again.
  void detach(std::chrono::milliseconds timeout) {
    {
      std::lock_guard lock(doneMutex_);
      detached_ = true;
    }
    releaseHold();
    context_.TryCancel();
    std::unique_lock lock(doneMutex_);
    if (!doneCv_.wait_for(lock, timeout, [&] { return done_; })) {
      spdlog::warn("gRPC did not finish the controller stream within {}", formatDuration(timeout));
    }
  }

  // Ends the call from this side (the controller went silent); OnDone still follows.
  void cancel() {
    releaseHold();
    context_.TryCancel();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mutex_);
    queue_.pop_front();
    if (!ok) {
      closed_ = true;
      queue_.clear();
    } else if (!queue_.empty()) {
      StartWrite(&queue_.front());
    }
    flushed_.notify_all();
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      {
        std::lock_guard lock(mutex_);
        closed_ = true;
      }
      flushed_.notify_all();
      releaseHold();
      return;
    }
    {
      std::lock_guard lock(doneMutex_);
      if (!detached_) {
        session_.heard();  // now, not when the io thread gets to it: the lease is the controller's
        boost::asio::post(io_, [self = self_, msg = incoming_]() {
          if (self->session_.stream_.get() == self.get()) {
            self->session_.onMessage(msg);
          }
        });
      }
    }
    StartRead(&incoming_);
  }

  void OnDone(const grpc::Status& status) override {
    std::string why = status.ok() ? "stream closed" : status.error_message();
    auto self = std::move(self_);  // may be the last reference: this ends with the frame
    std::lock_guard lock(doneMutex_);
    if (!detached_) {
      boost::asio::post(io_, [self, why]() { self->session_.onStreamDone(self.get(), why); });
    }
    done_ = true;
    doneCv_.notify_all();
  }

 private:
  void releaseHold() {
    std::lock_guard lock(mutex_);
    if (!holdReleased_) {
      holdReleased_ = true;
      RemoveHold();
    }
  }

  Session& session_;
  boost::asio::io_context& io_;
  std::unique_ptr<v1::AgentGateway::Stub> stub_;
  grpc::ClientContext context_;
  v1::ControllerMessage incoming_;
  std::mutex mutex_;
  std::deque<v1::AgentMessage> queue_;
  std::condition_variable flushed_;
  bool closed_ = false;
  bool holdReleased_ = false;
  std::mutex doneMutex_;
  std::condition_variable doneCv_;
  bool detached_ = false;         // the session let go: post nothing more to it
  bool done_ = false;             // OnDone has run
  std::shared_ptr<Stream> self_;  // keeps the reactor alive until OnDone
};

Session::Session(boost::asio::io_context& io, Agent& agent, SessionOptions options, boost::asio::io_context* expiry)
    : io_(io),
      expiry_(expiry != nullptr ? *expiry : io),
      agent_(agent),
      options_(std::move(options)),
      reconnectTimer_(io),
      heartbeatTimer_(io),
      backoff_(options_.minBackoff),
      pending_(options_.initialReports),
      leaseTimer_(expiry_),
      leaseMs_(options_.defaultLease.count()) {}

Session::~Session() {
  stop();
}

void Session::start() {
  stopped_ = false;
  heard();  // the first lease counts from the start
  boost::asio::post(expiry_, [this] { armLease(std::chrono::milliseconds{leaseMs_.load()}); });
  connect();
}

void Session::stop() {
  stopped_ = true;  // a lease check that runs from now on does nothing
  boost::asio::post(expiry_, [this] { leaseTimer_.cancel(); });
  cancelScheduled("the agent is stopping");
  reconnectTimer_.cancel();
  heartbeatTimer_.cancel();
  std::vector<std::shared_ptr<Stream>> dying;
  {
    std::lock_guard lock(reportMutex_);
    reportStream_.reset();
    dying = std::move(dying_);
    dying_.clear();
  }
  if (stream_) {
    stream_->flush(std::chrono::seconds{2});
    stream_->detach(std::chrono::seconds{5});
    stream_.reset();
  }
  for (auto& d : dying) {
    d->detach(std::chrono::seconds{5});
  }
  welcomed_ = false;
}

bool Session::connected() const {
  return welcomed_;
}

namespace {

// Without TLS the agent cannot tell its controller from anyone who binds the port: on loopback it
// dials only a listener owned by root or by its own user (a local user who took the port while
// the controller was down is not obeyed). "" when the listener may be dialled, else why not.
std::string foreignListener(const SessionOptions& options) {
  const std::string& address = options.controller;
  if (options.credentials || !isLocalAddress(address) || address.rfind("unix:", 0) == 0) {
    return "";
  }
  const auto colon = address.rfind(':');
  unsigned port = 0;
  if (colon == std::string::npos ||
      std::from_chars(address.data() + colon + 1, address.data() + address.size(), port).ec != std::errc{} ||
      port > 65535) {
    return "";
  }
  for (const uid_t owner : kernel::tcpListenerOwners(static_cast<uint16_t>(port))) {
    if (owner != 0 && owner != ::geteuid()) {
      return fmt::format(
          "the socket listening on port {} belongs to uid {}, neither root nor this agent's user (uid {}): not "
          "dialled in plaintext (someone else may have taken the controller's port; give the agent --ca, --cert "
          "and --key, or dial the controller's Unix socket)",
          port, owner, ::geteuid());
    }
  }
  return "";
}

}  // namespace

void Session::connect() {
  if (stopped_) {
    return;
  }
  if (auto foreign = foreignListener(options_); !foreign.empty()) {
    onStreamLost(foreign);  // retried with the usual backoff: the real controller may take its port back
    return;
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10'000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5'000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetMaxReceiveMessageSize(static_cast<int>(kMaxControllerMessageBytes));
  if (options_.credentials && !options_.controllerName.empty()) {
    args.SetSslTargetNameOverride(options_.controllerName);
  }
  auto channel = grpc::CreateCustomChannel(
      options_.controller, options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials(), args);
  auto stream = std::make_shared<Stream>(*this, v1::AgentGateway::NewStub(channel));
  stream_ = stream;
  welcomed_ = false;

  v1::AgentMessage hello;
  auto* h = hello.mutable_hello();
  h->set_agent_id(options_.agentId);
  h->set_hostname(options_.hostname);
  for (const auto& [k, v] : options_.labels) {
    (*h->mutable_labels())[k] = v;
  }
  h->set_version(agentVersion());
  h->set_kernel_release(kernelRelease());
  *h->mutable_capabilities() = options_.capabilities;
  for (const auto& r : agent_.activeFaults()) {
    *h->add_active_faults() = r;
  }
  stream->begin(hello, stream);
}

void Session::onStreamDone(Stream* stream, const std::string& why) {
  {
    // E.g. one dropped on a lease expiry: its OnDone has run.
    std::lock_guard lock(reportMutex_);
    std::erase_if(dying_, [stream](const auto& d) { return d.get() == stream; });
  }
  if (stream_.get() == stream) {
    onStreamLost(why);
  }
}

void Session::onStreamLost(const std::string& why) {
  {
    std::lock_guard lock(reportMutex_);
    if (reportStream_ == stream_) {
      reportStream_.reset();
    }
  }
  stream_.reset();
  welcomed_ = false;
  heartbeatTimer_.cancel();
  cancelScheduled("the connection to the controller was lost before the start time");
  if (stopped_) {
    return;
  }
  spdlog::warn("controller {}: {}; reconnecting in {}", options_.controller, why, formatDuration(backoff_));
  reconnectTimer_.expires_after(backoff_);
  reconnectTimer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) {
      connect();
    }
  });
  backoff_ = std::min(backoff_ * 2, options_.maxBackoff);
}

void Session::heard() {
  heardAt_ = std::chrono::steady_clock::now().time_since_epoch().count();
  heardWallAt_ = std::chrono::system_clock::now().time_since_epoch().count();
}

void Session::armLease(std::chrono::steady_clock::duration after) {
  leaseTimer_.expires_after(after);
  leaseTimer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || stopped_) {
      return;
    }
    const std::chrono::milliseconds lease{leaseMs_.load()};
    const std::chrono::steady_clock::time_point last{std::chrono::steady_clock::duration{heardAt_.load()}};
    const auto silent = std::chrono::steady_clock::now() - last;
    if (silent < lease) {
      armLease(lease - silent);
      return;
    }
    expireLease();
    heardAt_ = std::chrono::steady_clock::now().time_since_epoch().count();  // the next lease counts from now
    armLease(lease);
  });
}

void Session::expireLease() {
  const std::chrono::milliseconds lease{leaseMs_.load()};
  const auto wall = heardWallAt_.load();
  const auto why = fmt::format(
      "lease expired: nothing heard from the controller for {} (last at {})", formatDuration(lease),
      wall == 0 ? std::string("never")
                : wallClockText(std::chrono::system_clock::time_point{std::chrono::system_clock::duration{wall}}));
  std::shared_ptr<Stream> dead;
  {
    std::lock_guard lock(reportMutex_);
    dead = std::exchange(reportStream_, nullptr);
    if (dead) {
      dying_.push_back(dead);
    }
  }
  if (dead) {
    // The stream is dead even if TCP has not noticed (a partition can hide it for many minutes):
    // drop it first, so the revert reports below wait for the next stream instead of vanishing
    // into this one, and reconnect (on the io thread) so the agent is back as soon as the
    // network is.
    dead->cancel();
    boost::asio::post(io_, [this, dead, why] {
      if (stream_ == dead) {
        onStreamLost(why);
      }
    });
  }
  if (options_.metrics != nullptr) {
    options_.metrics->leaseExpiries.with({}).inc();
  }
  if (agent_.activeCount() > 0) {
    spdlog::warn("{}; reverting every fault", why);
    agent_.revertAll(why, v1::FAULT_STATE_EXPIRED, v1::FAULT_END_CAUSE_LEASE);
  }
  boost::asio::post(io_, [this] { cancelScheduled("lease expired before the start time"); });
}

void Session::scheduleHeartbeat() {
  heartbeatTimer_.expires_after(heartbeatInterval_);
  heartbeatTimer_.async_wait([this](const boost::system::error_code& ec) {
    if (ec || !stream_ || !welcomed_) {
      return;
    }
    v1::AgentMessage msg;
    *msg.mutable_heartbeat()->mutable_sent_at() = nowTimestamp();
    stream_->write(msg);
    scheduleHeartbeat();
  });
}

void Session::injectAt(const v1::Inject& inject) {
  if (!inject.has_start_at() || scheduled_.count(inject.fault_id()) > 0) {
    agent_.inject(inject);  // a second Inject of a waiting fault is the agent's duplicate to refuse
    return;
  }
  const auto now = std::chrono::system_clock::now();
  if (checkInjectBounds(inject, now)) {
    agent_.inject(inject);  // refuses it with the reason, like every other bound
    return;
  }
  // Within kMaxStartAhead/kMaxStartBehind of now: no overflow.
  const auto startAt =
      std::chrono::system_clock::time_point{std::chrono::duration_cast<std::chrono::system_clock::duration>(
          std::chrono::seconds{inject.start_at().seconds()} + std::chrono::nanoseconds{inject.start_at().nanos()})};
  const auto ahead = startAt - now;
  if (ahead <= std::chrono::system_clock::duration::zero()) {
    agent_.inject(inject);
    return;
  }
  auto timer = std::make_unique<boost::asio::steady_timer>(io_);
  timer->expires_after(ahead);
  timer->async_wait([this, inject](const boost::system::error_code& ec) {
    if (ec) {
      return;  // cancelled: reported by whoever cancelled it
    }
    scheduled_.erase(inject.fault_id());
    agent_.inject(inject);
  });
  scheduled_[inject.fault_id()] = std::move(timer);
}

void Session::cancelScheduled(const std::string& why) {
  auto scheduled = std::move(scheduled_);
  scheduled_.clear();
  for (auto& [id, timer] : scheduled) {
    timer->cancel();
    report(failedReport(id, fmt::format("not applied: {}", why)));
  }
}

void Session::report(const v1::FaultReport& report) {
  std::lock_guard lock(reportMutex_);
  if (reportStream_) {
    v1::AgentMessage msg;
    *msg.mutable_report() = report;
    reportStream_->write(msg);
  } else {
    pending_.push_back(report);
  }
}

void Session::onMessage(const v1::ControllerMessage& msg) {
  switch (msg.msg_case()) {
    case v1::ControllerMessage::kWelcome: {
      welcomed_ = true;
      backoff_ = options_.minBackoff;
      std::chrono::milliseconds lease{leaseMs_.load()};
      if (msg.welcome().has_lease() && toMicros(msg.welcome().lease()).count() > 0) {
        lease = std::chrono::duration_cast<std::chrono::milliseconds>(toMicros(msg.welcome().lease()));
        leaseMs_ = lease.count();
        boost::asio::post(expiry_, [this] { armLease(std::chrono::steady_clock::duration::zero()); });  // check now
      }
      if (msg.welcome().has_heartbeat_interval() && toMicros(msg.welcome().heartbeat_interval()).count() > 0) {
        heartbeatInterval_ =
            std::chrono::duration_cast<std::chrono::milliseconds>(toMicros(msg.welcome().heartbeat_interval()));
      }
      spdlog::info("registered with controller {} (lease {})", options_.controller, formatDuration(lease));
      {
        std::lock_guard lock(reportMutex_);
        reportStream_ = stream_;
        for (const auto& r : pending_) {
          v1::AgentMessage report;
          *report.mutable_report() = r;
          reportStream_->write(report);
        }
        pending_.clear();
      }
      scheduleHeartbeat();
      break;
    }
    case v1::ControllerMessage::kHeartbeat:
      break;
    case v1::ControllerMessage::kInject:
      injectAt(msg.inject());
      break;
    case v1::ControllerMessage::kRevert:
      if (msg.revert().fault_id().size() > kMaxFaultIdBytes) {
        spdlog::warn("revert of a fault id of {} bytes ignored: no fault has an id longer than {}",
                     msg.revert().fault_id().size(), kMaxFaultIdBytes);
        break;
      }
      if (auto it = scheduled_.find(msg.revert().fault_id()); it != scheduled_.end()) {
        it->second->cancel();
        scheduled_.erase(it);
        v1::FaultReport r;
        r.set_fault_id(msg.revert().fault_id());
        r.set_state(v1::FAULT_STATE_REVERTED);
        r.set_end_cause(v1::FAULT_END_CAUSE_REVERT);
        r.set_detail("cancelled before its start time: nothing was changed");
        *r.mutable_at() = nowTimestamp();
        report(r);
        break;
      }
      agent_.revert(msg.revert().fault_id());
      break;
    case v1::ControllerMessage::kRevertAll: {
      const std::string reason = boundedReason(msg.revert_all().reason(), "revert-all requested");
      cancelScheduled(reason);
      agent_.revertAll(reason);
      break;
    }
    case v1::ControllerMessage::MSG_NOT_SET:
      break;
  }
}

}  // namespace faultline::agent
