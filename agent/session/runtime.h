// A whole agent on its own thread: io_context, kernel drivers, fault registry and session.
// Used by faultline-agent and by `faultline run --local` (the in-process agent).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "agent/faults/network/traffic_match.h"
#include "agent/safety/journal.h"
#include "agent/safety/policy.h"
#include "agent/session/session.h"

namespace faultline::agent {

class AgentRuntime {
 public:
  // options.capabilities is filled from probeQdiscSupport() when probeKernel is true. journal
  // (optional; faultline-agent passes the one openJournalAndRecover() returned, after recovery)
  // records every network fault's undo record. policy: checked on every inject; its protected
  // process names go to the process driver (default: the built-in policy).
  explicit AgentRuntime(SessionOptions options, bool probeKernel = true, std::unique_ptr<UndoJournal> journal = nullptr,
                        Policy policy = {});
  ~AgentRuntime();  // stop()
  AgentRuntime(const AgentRuntime&) = delete;
  AgentRuntime& operator=(const AgentRuntime&) = delete;

  // Starts the io thread and connects.
  void start();
  // Reverts every fault held, closes the session and joins the thread. Blocks until the
  // reverts are done. Idempotent.
  void stop(const std::string& reason = "agent shutting down");
  // Runs the agent on the calling thread until SIGTERM, SIGINT, SIGHUP or SIGQUIT, then reverts
  // everything. As a systemd service (NOTIFY_SOCKET set; common/service_notify.h): READY=1 with
  // STATUS=status once the io loop runs (the caller has run the journal's crash recovery before),
  // STOPPING=1 when the signal arrives, and WATCHDOG=1 pings while both the io thread and the
  // expiry thread go round.
  void runUntilSignal(const std::string& status = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The addresses and port of a controller given as HOST:PORT ([V6]:PORT), resolved with
// getaddrinfo (blocks); empty for unix:PATH or when it does not resolve (logged).
[[nodiscard]] std::vector<Endpoint> controllerEndpoints(const std::string& address);

// The host's name (gethostname), "localhost" when unknown.
[[nodiscard]] std::string hostName();

}  // namespace faultline::agent
