// The controller process: the AgentGateway for agents and the Control API for the CLI on one
// gRPC server, the run engine (one thread per active run), and the record store.
// Every Control call needs a role (controller/auth/roles.h): callers on the Unix socket (`socket`)
// get theirs from their uid, callers on `listen` from a bearer token (controller/auth/tokens.h).
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "agent/session/tls.h"
#include "common/metrics_server.h"
#include "controller/auth/roles.h"
#include "controller/probes/probe.h"
#include "controller/server/gateway.h"
#include "controller/store/store.h"

namespace faultline::controller {

struct ControllerOptions {
  // HOST:PORT (port 0 picks a free one), unix:PATH (gRPC's own listener: callers there have no
  // uid, so they need a token like TCP callers), or "" for none.
  std::string listen = "127.0.0.1:7443";
  std::string dbPath = "faultline.db";
  std::chrono::milliseconds lease{15'000};
  // true for the controller `faultline run --local` embeds next to its in-process agent: a run it
  // left unfinished had its faults reverted by the crash recovery of the next run --local on the
  // same state directory (no agent of its own outlived it to let a lease expire).
  bool local = false;
  // mTLS on the listen port (--tls-cert, --tls-key, --tls-ca; all three or none): agents must
  // present a certificate from tls.ca, and their id is its common name (server/tls.h).
  agent::TlsFiles tls{};
  // Serve plaintext on an address that is neither loopback nor unix:PATH (warned at every start).
  bool insecure = false;
  // The Control API (and the AgentGateway) on a Unix socket whose callers are known by uid
  // (local_socket.h); "" for none. socketGroup: the group that may connect (mode 0660); no such
  // group: mode 0600. Peers other than root and the controller's own euid get localRole.
  std::string socket{};
  std::string socketGroup = "faultline";
  auth::Role localRole = auth::Role::kOperator;
  // The user command probes run as; nullopt: the controller's own (no switch).
  std::optional<ProbeUser> probeUser{};
  // false: SubmitRun and PlanRun of an experiment with a command probe are refused
  // (FAILED_PRECONDITION).
  bool commandProbes = true;
  // Which run records to keep (controller/store/store.h): applied at start, before the first call
  // is served, then every retentionInterval on a thread of its own. Keeps all by default.
  Retention retention{};
  std::chrono::seconds retentionInterval{3600};
  // The scheduler waits this long after start before it handles missed fires and fires at all, so
  // that agents reconnect first (run --local: none): an agent that lost its controller retries at
  // least every 10 s (its backoff's cap, agent/session/session.h), so 15 s sees every live agent back.
  std::chrono::milliseconds scheduleStartDelay{15'000};
  // Prometheus metrics at GET /metrics on this address (--metrics-listen; common/metrics_server.h),
  // started by start() after the gRPC port; nullopt: none (no socket, no thread).
  std::optional<metrics::ListenAddress> metricsListen{};
};

// Why options.listen may not be served as given: "" when it may (no TCP address, TLS, a local
// address, or --insecure); else the refusal, naming --tls-* and --insecure.
[[nodiscard]] std::string listenRefusal(const ControllerOptions& options);

class Controller {
 public:
  explicit Controller(ControllerOptions options);
  ~Controller();  // aborts active runs (their faults are reverted), then stops the server
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  // Binds and starts serving. Returns the bound port (0 for unix:PATH or no listen).
  // errors: std::runtime_error with listenRefusal(), or a TLS file's problem (both checked first),
  // or naming the errno when the address or the socket cannot be bound (checked before the
  // database is touched); std::system_error when the database cannot be opened.
  int start();
  // Aborts every active run with reason and waits for them to finish (faults reverted).
  void abortAll(const std::string& reason);
  // Blocks until shutdown() is called from another thread. Goes round every `every`: joins the
  // threads of finished runs (under the controller's lock), then calls tick (when set) without
  // the lock; a service's watchdog heartbeat goes there (common/service_notify.h), so a hung
  // loop stops the pings.
  void wait(std::chrono::milliseconds every = std::chrono::seconds{1}, const std::function<void()>& tick = {});
  // Stops the scheduler, then aborts every active run with reason (its verdict: aborted, its reason this text; the
  // faults reverted and the agents' confirmation awaited as for any abort), then stops the server and the socket.
  // Thread-safe and idempotent: a signal thread and the destructor may both call it; the second returns once the first
  // has finished.
  void shutdown(const std::string& reason = "controller shutdown");
  // The runs going on now (started, not yet finished). Thread-safe.
  [[nodiscard]] size_t activeRuns() const;
  [[nodiscard]] Gateway& gateway();
  // The metrics endpoint's "HOST:PORT" as bound (start() done); "" without metricsListen.
  [[nodiscard]] std::string metricsAddress() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// SHA-256 of data as 64 lowercase hex digits.
[[nodiscard]] std::string sha256Hex(std::string_view data);

}  // namespace faultline::controller
