// The agent's side of AgentGateway.Connect: dials the controller, says Hello, executes Inject,
// Revert and RevertAll, sends fault reports and heartbeats, and reconnects with backoff.
//
// The lease is the dead man's switch: when nothing has been heard from the controller for the
// lease (from Welcome; 15 s until then), every fault is reverted, connected or not.
//
// Threading: start() and stop() on the io thread (io); the controller's messages are handled
// there (gRPC's reactions post them to it). The lease runs on the expiry thread (expiry, the
// agent's; see agent.h): "heard" is stamped by gRPC's reader as each message arrives, before it
// waits for the io thread, so a busy io thread neither expires the lease of a live controller nor
// delays the revert of a silent one. On expiry the expiry thread reverts every fault itself and
// posts the rest (dropping the stream, reconnecting) to the io thread. report() may be called
// from any thread and never blocks: reports go to the stream that was welcomed, else wait for
// the next Welcome.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/security/credentials.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "agent/session/agent.h"

namespace faultline::agent {

// The largest message the agent reads from the controller (gRPC refuses a larger one and the
// stream is re-established); an Inject is at most kMaxInjectBytes.
inline constexpr std::size_t kMaxControllerMessageBytes = 256 * 1024;
// A RevertAll's reason is cut to this many bytes in logs and reports.
inline constexpr std::size_t kMaxReasonBytes = 1024;

struct SessionOptions {
  std::string controller;  // HOST:PORT or unix:PATH
  // mTLS (agentChannelCredentials(), agent/session/tls.h); null: plaintext.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // The name the controller's certificate must carry when it is not controller's HOST (gRPC's
  // ssl_target_name_override); "" for HOST. Used with credentials only.
  std::string controllerName;
  std::string agentId;
  std::string hostname;
  std::map<std::string, std::string> labels;
  v1::Capabilities capabilities;
  // The driver of netem's kinds (faultline-agent --network-driver): "auto" (netem where the kernel
  // has sch_netem, else nfqueue where it can), "netem" or "nfqueue". Read by AgentRuntime.
  std::string networkDriver = "auto";
  std::chrono::milliseconds defaultLease{15'000};
  std::chrono::milliseconds minBackoff{200};
  std::chrono::milliseconds maxBackoff{10'000};
  // Reports to send once the first Welcome arrives, e.g. the faults crash recovery reverted at
  // start (EXPIRED), so the controller records how they ended.
  std::vector<v1::FaultReport> initialReports;
  // The agent's metrics (faultline-agent --metrics-listen); null without. Must outlive the runtime.
  AgentMetrics* metrics = nullptr;
};

class Session {
 public:
  // agent must outlive the session. Its reports must be passed to report() (see makeReportSink).
  // expiry: the lease's io_context (nullptr: io); destroy the session once neither runs.
  Session(boost::asio::io_context& io, Agent& agent, SessionOptions options, boost::asio::io_context* expiry = nullptr);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void start();
  // Closes the stream and stops reconnecting. Does not revert faults (the caller decides).
  void stop();
  // Queues a report for the controller; reports made while disconnected are sent after Hello.
  // Any thread.
  void report(const v1::FaultReport& report);
  // True once a Welcome was received on the current stream.
  [[nodiscard]] bool connected() const;

 private:
  class Stream;
  void connect();
  void onStreamDone(Stream* stream, const std::string& why);
  // The current stream ended (closed, or dropped on a lease expiry): reconnect after the backoff.
  void onStreamLost(const std::string& why);
  void onMessage(const v1::ControllerMessage& msg);
  // Any thread: a message from the controller arrived.
  void heard();
  // Expiry thread: checks the lease in `after`, and again until the session stops.
  void armLease(std::chrono::steady_clock::duration after);
  void expireLease();
  void scheduleHeartbeat();
  // An Inject with a start_at in the future waits in scheduled_ until then (see Inject.start_at).
  void injectAt(const v1::Inject& inject);
  // Drops every inject still waiting for its start, reporting each as FAILED with why.
  void cancelScheduled(const std::string& why);

  boost::asio::io_context& io_;
  boost::asio::io_context& expiry_;
  Agent& agent_;
  SessionOptions options_;
  // Io thread only.
  std::shared_ptr<Stream> stream_;
  boost::asio::steady_timer reconnectTimer_;
  boost::asio::steady_timer heartbeatTimer_;
  std::chrono::milliseconds heartbeatInterval_{5'000};
  std::chrono::milliseconds backoff_;
  std::map<std::string, std::unique_ptr<boost::asio::steady_timer>> scheduled_;  // fault id -> its start
  bool welcomed_ = false;
  // Guards reportStream_, pending_ and dying_; never held across anything that blocks.
  std::mutex reportMutex_;
  std::shared_ptr<Stream> reportStream_;  // the welcomed stream reports go to; null: pending_
  std::vector<v1::FaultReport> pending_;
  // Streams dropped on a lease expiry and cancelled, whose OnDone has not run yet: stop() waits
  // for them too, so that no gRPC reaction posts to the io_context after the session is gone.
  std::vector<std::shared_ptr<Stream>> dying_;
  // Expiry thread only.
  boost::asio::steady_timer leaseTimer_;
  // Any thread.
  std::atomic<std::chrono::milliseconds::rep> leaseMs_;
  std::atomic<std::chrono::steady_clock::rep> heardAt_{0};      // steady clock, last message
  std::atomic<std::chrono::system_clock::rep> heardWallAt_{0};  // the same on the wall clock; 0: never
  std::atomic<bool> stopped_{false};
};

// Version string of this build, reported in Hello.
[[nodiscard]] std::string agentVersion();
// uname -r
[[nodiscard]] std::string kernelRelease();

}  // namespace faultline::agent
