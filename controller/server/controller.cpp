#include "controller/server/controller.h"

#include <netdb.h>
#include <openssl/evp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cstring>
#include <deque>
#include <filesystem>
#include <list>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <type_traits>
#include <vector>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/support/server_interceptor.h>
#include <spdlog/spdlog.h>

#include "agent/kernel/tcp_listeners.h"
#include "agent/session/agent.h"
#include "controller/auth/roles.h"
#include "controller/auth/tokens.h"
#include "controller/engine/engine.h"
#include "controller/experiment/experiment.h"
#include "controller/probes/probe.h"
#include "controller/report/run_format.h"
#include "controller/scheduler/scheduler.h"
#include "controller/server/agent_pages.h"
#include "controller/server/limits.h"
#include "controller/server/local_socket.h"
#include "controller/server/tls.h"
#include "controller/store/schedules.h"
#include "controller/store/store.h"
#include "faultline/v1/control.grpc.pb.h"

namespace faultline::controller {

std::string sha256Hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr);
  std::string out;
  for (unsigned int i = 0; i < len; ++i) {
    out += fmt::format("{:02x}", digest[i]);
  }
  return out;
}

namespace {

std::string newRunId() {
  static std::mt19937_64 rng{std::random_device{}()};
  static std::mutex m;
  std::lock_guard lock(m);
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  return fmt::format("{:04}{:02}{:02}-{:02}{:02}{:02}-{:04x}", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, rng() & 0xffff);
}

// A run in progress (or just finished): its events for WatchRun, its stop signal and thread.
struct ActiveRun {
  std::string id;
  StopSignal stop;
  std::mutex mutex;
  std::vector<v1::RunEvent> events;
  bool finished = false;
  std::list<std::shared_ptr<class WatchReactor>> watchers;  // poked when events arrive
  std::thread thread;
  bool reaping = false;  // under the controller's mutex: one reap() joins it, then erases it
};

// Streams a run's events to one CLI, from the first event to run.finished.
// Owned by the run's watcher list until OnDone, so a poke never reaches a deleted reactor.
class WatchReactor final : public grpc::ServerWriteReactor<v1::RunEvent> {
 public:
  explicit WatchReactor(std::shared_ptr<ActiveRun> run) : run_(std::move(run)) {}

  static WatchReactor* start(std::shared_ptr<ActiveRun> run) {
    auto w = std::make_shared<WatchReactor>(run);
    {
      std::lock_guard lock(run->mutex);
      w->it_ = run->watchers.insert(run->watchers.end(), w);
    }
    w->pump();
    return w.get();
  }

  void pump() {
    std::lock_guard lock(mutex_);
    pumpLocked();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mutex_);
    writing_ = false;
    if (!ok) {
      failed_ = true;
      finishLocked(grpc::Status(grpc::StatusCode::UNAVAILABLE, "write failed"));
      return;
    }
    ++next_;
    pumpLocked();
  }

  void OnCancel() override {
    std::lock_guard lock(mutex_);
    failed_ = true;
    if (!writing_) {
      finishLocked(grpc::Status::CANCELLED);
    }
  }

  void OnDone() override {
    std::shared_ptr<WatchReactor> self;  // released when this frame ends
    std::lock_guard lock(run_->mutex);
    self = std::move(*it_);
    run_->watchers.erase(it_);
  }

 private:
  void pumpLocked() {
    if (writing_ || finished_ || failed_) {
      return;
    }
    bool runFinished = false;
    {
      std::lock_guard lock(run_->mutex);
      if (next_ < run_->events.size()) {
        current_ = run_->events[next_];
        writing_ = true;
      }
      runFinished = run_->finished;
    }
    if (writing_) {
      StartWrite(&current_);
    } else if (runFinished) {
      finishLocked(grpc::Status::OK);
    }
  }

  void finishLocked(const grpc::Status& status) {
    if (!finished_) {
      finished_ = true;
      Finish(status);
    }
  }

  std::shared_ptr<ActiveRun> run_;
  std::list<std::shared_ptr<WatchReactor>>::iterator it_;
  std::mutex mutex_;
  size_t next_ = 0;
  bool writing_ = false;
  bool finished_ = false;
  bool failed_ = false;
  v1::RunEvent current_;
};

grpc::ServerUnaryReactor* finishNow(grpc::CallbackServerContext* ctx, const grpc::Status& status) {
  auto* r = ctx->DefaultReactor();
  r->Finish(status);
  return r;
}

// A stream refused before its first event (no such run, no role, a bound broken).
class RefusedStream final : public grpc::ServerWriteReactor<v1::RunEvent> {
 public:
  explicit RefusedStream(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// Who called, as far as the controller knows, and with which role.
struct Caller {
  auth::Role role = auth::Role::kViewer;
  std::string who;  // "uid 1000 on /run/faultline/controller.sock", "token 0123456789abcdef (ci)"
};

// The caller of a verified client certificate: CN and OU from the TLS AuthContext, OU the role.
// A CLI client's verified certificate (mTLS on the listen port): its Organizational Unit names
// its role (viewer, operator or admin); a certificate without one (an agent's) gives no role.
std::optional<Caller> certificateCaller(const grpc::CallbackServerContext& ctx) {
  const auto context = ctx.auth_context();
  if (!context) {
    return std::nullopt;
  }
  auto identity = peerIdentity(*context);
  if (!identity) {
    return std::nullopt;
  }
  auto role = auth::parseRole(identity->organizationalUnit);
  if (!role) {
    return std::nullopt;
  }
  return Caller{*role, fmt::format("certificate CN={} OU={}", identity->commonName, identity->organizationalUnit)};
}

google::protobuf::Timestamp timestampOf(int64_t unixSeconds) {
  google::protobuf::Timestamp t;
  t.set_seconds(unixSeconds);
  return t;
}

v1::TokenInfo tokenMessage(const auth::TokenInfo& t) {
  v1::TokenInfo m;
  m.set_id(t.id);
  m.set_name(t.name);
  m.set_role(std::string(auth::roleName(t.role)));
  *m.mutable_created_at() = timestampOf(t.createdUnix);
  if (t.revokedUnix != 0) {
    *m.mutable_revoked_at() = timestampOf(t.revokedUnix);
  }
  return m;
}

// The first command probe of an experiment, or nullptr.
const Probe* firstCommandProbe(const Experiment& e) {
  for (const auto& p : e.hypothesis.probes) {
    if (p.kind == ProbeKind::kCommand) {
      return &p;
    }
  }
  return nullptr;
}

}  // namespace

namespace {

// Counts every gRPC call as it is answered: faultline_grpc_requests_total{method, code}. The method
// is gRPC's full name ("/faultline.v1.Control/SubmitRun"): only the services' registered methods
// reach interceptors, so the label is bounded (and the family capped besides).
class RequestCounter final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit RequestCounter(metrics::CounterFamily& family) : family_(family) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new Counting(family_, info->method());
  }

 private:
  class Counting final : public grpc::experimental::Interceptor {
   public:
    Counting(metrics::CounterFamily& family, const char* method) : family_(family), method_(method ? method : "") {}
    void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
      if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
        family_.with({method_, codeName(methods->GetSendStatus().error_code())}).inc();
      }
      methods->Proceed();
    }

   private:
    metrics::CounterFamily& family_;
    std::string method_;
  };
  static std::string codeName(grpc::StatusCode code) {
    static constexpr const char* kNames[] = {
        "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
        "DATA_LOSS", "UNAUTHENTICATED"};
    const auto i = static_cast<size_t>(code);
    return i < std::size(kNames) ? kNames[i] : "UNKNOWN";
  }
  metrics::CounterFamily& family_;
};

}  // namespace

struct Controller::Impl final : v1::Control::CallbackService {
  explicit Impl(ControllerOptions o)
      : options(std::move(o)),
        gateway(GatewayOptions{
            .lease = options.lease,
            .heartbeatInterval = std::max(options.lease / 5, std::chrono::milliseconds{100}),
            .requireClientCertificate = !options.tls.empty(),
            .refusePeer = options.tls.empty() && !options.insecure
                              ? std::function([this](const std::string& peer) { return refuseAgentPeer(peer); })
                              : nullptr}),
        probes(makeProbeRunner(options.probeUser)) {
    if (options.metricsListen) {
      runMetrics = std::make_unique<RunMetrics>(registry);
      grpcRequests = &registry.counter("faultline_grpc_requests_total",
                                       "gRPC calls answered by the controller (Control and AgentGateway), by method "
                                       "and status code",
                                       {"method", "code"}, 1000);
      scheduleFires = &registry.counter("faultline_schedule_fires_total",
                                        "Schedule fires by outcome (started, skipped, missed) and, for skipped and "
                                        "missed ones, reason (blackout, concurrency, only_if, start_failed, "
                                        "past_deadline)",
                                        {"outcome", "reason"});
      auto& agents = registry.gauge("faultline_agents_connected", "Agents connected now (their stream is open)");
      registry.onCollect([this, &agents] { agents.with({}).set(static_cast<double>(gateway.agents().size())); });
    }
  }

  // Without TLS an agent is known by nothing but its connection, so only root and the
  // controller's own user may register one: on the Unix socket by SO_PEERCRED, on loopback TCP by
  // the owner of the connecting socket in the kernel's table, on --listen unix:PATH by the
  // socket's mode (0600, set at start). Otherwise any local user could take a real agent's id and
  // receive its faults, with the run's secrets (attacker trial, issue 15).
  std::optional<std::string> refuseAgentPeer(const std::string& peer) {
    const auto allowed = [](uid_t uid) { return uid == 0 || uid == ::geteuid(); };
    const auto refusal = [](const std::string& who) {
      return fmt::format(
          "{} may not register as an agent: without TLS only root and the controller's user may "
          "(run faultline-agent as root, or give agents certificates: --tls-* on the controller)",
          who);
    };
    if (peer.rfind("unix:", 0) == 0) {
      return std::nullopt;
    }
    if (peer.rfind("fd:", 0) == 0) {
      const auto uid = localSocket ? localSocket->uidOf(peer) : std::nullopt;
      if (uid && allowed(*uid)) {
        return std::nullopt;
      }
      return refusal(uid ? fmt::format("uid {} on the Unix socket", *uid) : "an unknown peer of the Unix socket");
    }
    // "ipv4:127.0.0.1:40112", "ipv6:[::1]:40112" (or with %5B %5D for the brackets)
    std::string address;
    uint16_t port = 0;
    if (auto colon = peer.rfind(':'); colon != std::string::npos && peer.size() > 5) {
      std::from_chars(peer.data() + colon + 1, peer.data() + peer.size(), port);
      address = peer.substr(5, colon - 5);
      for (const char* bracket : {"[", "]", "%5B", "%5D"}) {
        for (auto at = address.find(bracket); at != std::string::npos; at = address.find(bracket)) {
          address.erase(at, std::strlen(bracket));
        }
      }
    }
    const bool loopback = address.rfind("127.", 0) == 0 || address == "::1" || address.rfind("::ffff:127.", 0) == 0;
    if (!loopback || port == 0) {
      return refusal(fmt::format("{} (not a local peer)", forLog(peer)));
    }
    const auto uid = kernel::tcpConnectionOwner(address, port, listenPort.load());
    if (uid && allowed(*uid)) {
      return std::nullopt;
    }
    return refusal(uid ? fmt::format("uid {} at {}", *uid, forLog(peer)) : forLog(peer) + " (owner not found)");
  }

  ControllerOptions options;
  // The metrics (options.metricsListen): before everything that reports to them, so they go last.
  metrics::Registry registry;
  std::unique_ptr<RunMetrics> runMetrics;
  metrics::CounterFamily* grpcRequests = nullptr;   // faultline_grpc_requests_total
  metrics::CounterFamily* scheduleFires = nullptr;  // faultline_schedule_fires_total
  Gateway gateway;
  std::unique_ptr<RecordStore> store;
  std::unique_ptr<auth::TokenStore> tokens;
  std::unique_ptr<ProbeRunner> probes;
  std::unique_ptr<LocalSocket> localSocket;
  std::atomic<uint16_t> listenPort{0};  // the TCP port of --listen once bound (refuseAgentPeer)
  std::unique_ptr<grpc::Server> server;
  // Held for the whole of shutdown(): it is called from a signal thread and again from the
  // destructor on the main thread, and two at once joined the same threads (std::system_error)
  // or raced on the server (issue 15's attacker trial: SIGTERM hung or aborted the controller).
  std::mutex shutdownMutex;
  std::mutex mutex;
  std::condition_variable cv;
  bool shuttingDown = false;
  std::map<std::string, std::shared_ptr<ActiveRun>> runs;
  struct HaltCall {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done = std::make_shared<std::atomic<bool>>(false);
  };
  std::list<HaltCall> halts;  // Halt and RunScheduleNow calls: finished ones joined by the next, all by shutdown()
  // Background calls at once (Halt, RunScheduleNow): more are RESOURCE_EXHAUSTED, so a caller in a
  // loop cannot make threads without end (attacker trial: 32,500 run-now calls, then a crash).
  static constexpr size_t kMaxBackgroundCalls = 64;
  // Runs going on at once, from the CLI and schedules together (launch()).
  static constexpr size_t kMaxActiveRuns = 100;
  static constexpr std::string_view kShuttingDown = "the controller is shutting down";

  // Under mutex: joins the finished background calls and adds one for reactor, whose thread the
  // caller starts; nullptr (reactor finished with UNAVAILABLE or RESOURCE_EXHAUSTED) when shutting
  // down or, when capped (run-now; never Halt, the emergency stop), at kMaxBackgroundCalls.
  HaltCall* startCall(grpc::ServerUnaryReactor* reactor, bool capped) {
    if (shuttingDown) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "controller is shutting down"));
      return nullptr;
    }
    for (auto it = halts.begin(); it != halts.end();) {
      if (it->done->load()) {
        it->thread.join();
        it = halts.erase(it);
      } else {
        ++it;
      }
    }
    if (capped && halts.size() >= kMaxBackgroundCalls) {
      reactor->Finish(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                   fmt::format("{} run-now or halt calls are still going on; accepted: at most {} "
                                               "run-now calls at once, try again when one has finished",
                                               halts.size(), kMaxBackgroundCalls)));
      return nullptr;
    }
    return &halts.emplace_back();
  }
  int lateListener = 0;         // records reports that reach no run (see recordLateReport)
  std::thread retentionThread;  // prunes the records every options.retentionInterval until shutdown
  std::unique_ptr<metrics::MetricsServer> metricsServer;  // stopped by shutdown(), before what it reads

  // Deletes the records options.retention does not keep; logs, never throws (a full disk or a
  // locked file waits for the next round).
  void applyRetention() {
    try {
      const auto deleted = store->pruneRuns(options.retention, agent::nowTimestamp());
      if (deleted > 0) {
        spdlog::info("retention (--retain-runs {}, --retain-days {}): deleted the records of {} run(s)",
                     options.retention.runs, options.retention.age.count() / 86'400, deleted);
      }
    } catch (const std::exception& e) {
      spdlog::error("retention: cannot delete old run records (next try in {}s): {}", options.retentionInterval.count(),
                    e.what());
    }
  }

  void retentionLoop() {
    std::unique_lock lock(mutex);
    while (!shuttingDown) {
      if (cv.wait_for(lock, options.retentionInterval, [this] { return shuttingDown; })) {
        return;
      }
      lock.unlock();
      applyRetention();
      lock.lock();
    }
  }

  // True while the run's engine still listens to its faults' reports.
  bool runActive(const std::string& runId) {
    std::shared_ptr<ActiveRun> run;
    {
      std::lock_guard lock(mutex);
      auto it = runs.find(runId);
      if (it == runs.end()) {
        return false;
      }
      run = it->second;
    }
    std::lock_guard lock(run->mutex);
    return !run->finished;
  }

  // A report about a fault whose run has ended (an agent that reconnected after the run gave up
  // on it, a fault reverted on reconnect, crash recovery on the agent's start): added to that
  // run's record, so the record says how every fault ended. Reports of runs this record store
  // does not know (another controller's) are only logged.
  void recordLateReport(const std::string& agentId, const v1::FaultReport& r) {
    const std::string runId = r.fault_id().substr(0, r.fault_id().find('/'));
    if (runActive(runId)) {
      return;  // the run's engine records it
    }
    bool known = false;
    const std::string kind = faultEventKind(r.state());
    try {
      auto run = store->getRun(runId);
      known = run.has_value();
      // The engine may have recorded this very report just before its run finished (the report
      // reaches both listeners): once is enough (a SIGTERM mid-run recorded two reverts).
      if (known && std::any_of(run->events().begin(), run->events().end(), [&](const v1::RunEvent& e) {
            return e.fault_id() == r.fault_id() && e.kind() == kind;
          })) {
        return;
      }
    } catch (const std::exception& ex) {
      spdlog::error("cannot look up run {} for the late report of fault {}: {}", runId, r.fault_id(), ex.what());
      return;
    }
    if (!known) {
      spdlog::info("agent {}: fault {} (no run {} in this record store): {}", agentId, r.fault_id(), runId,
                   r.error().empty() ? r.detail() : r.error());
      return;
    }
    std::string host = agentId;
    for (const auto& a : gateway.agents()) {
      if (a.agent_id() == agentId && !a.hostname().empty()) {
        host = a.hostname();
      }
    }
    v1::RunEvent e;
    e.set_run_id(runId);
    *e.mutable_at() = r.has_at() ? r.at() : agent::nowTimestamp();
    e.set_host(host);
    e.set_agent_id(agentId);
    e.set_kind(kind);
    e.set_fault_id(r.fault_id());
    e.set_message(
        fmt::format("after the run ended: fault {}: {}", r.fault_id(), r.error().empty() ? r.detail() : r.error()));
    try {
      store->addEvent(e);
    } catch (const std::exception& ex) {
      spdlog::error("cannot record the late report of fault {}: {}", r.fault_id(), ex.what());
    }
  }

  // A read of the record store on a gRPC thread: its errors (a locked, unreadable or damaged
  // file) become UNAVAILABLE naming the file, never an exception on the thread.
  template <typename Read>
  tl::expected<std::invoke_result_t<Read>, grpc::Status> readRecord(Read&& read) {
    try {
      return read();
    } catch (const std::exception& ex) {
      spdlog::error("record store {}: {}", options.dbPath, ex.what());
      return tl::unexpected(
          grpc::Status(grpc::StatusCode::UNAVAILABLE,
                       fmt::format("cannot read the record store {}: {}", options.dbPath, ex.what())));
    }
  }

  // The caller of ctx: a peer of the Unix socket by its uid, else a bearer token, else a client
  // certificate; UNAUTHENTICATED saying how to authenticate when none is shown or valid.
  tl::expected<Caller, grpc::Status> authenticate(const grpc::CallbackServerContext& ctx) {
    if (localSocket) {
      if (auto uid = localSocket->uidOf(ctx.peer())) {
        return Caller{auth::localPeerRole(*uid, ::geteuid(), options.localRole),
                      fmt::format("uid {} on {}", *uid, localSocket->path())};
      }
    }
    const auto& metadata = ctx.client_metadata();
    if (auto it = metadata.find("authorization"); it != metadata.end()) {
      const std::string_view value(it->second.data(), it->second.size());
      constexpr std::string_view kBearer = "Bearer ";
      if (value.substr(0, kBearer.size()) != kBearer) {
        return tl::unexpected(grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                           "authorization metadata: accepted: 'Bearer TOKEN' (a token of "
                                           "`faultline token create`)"));
      }
      auto token = tokens->verify(value.substr(kBearer.size()));
      if (!token) {
        return tl::unexpected(grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                           "the bearer token is not valid here (unknown to this controller, or "
                                           "revoked); ask an admin for one: faultline token create --role ROLE"));
      }
      return Caller{token->role,
                    fmt::format("token {}{}", token->id, token->name.empty() ? "" : " (" + token->name + ")")};
    }
    if (auto cert = certificateCaller(ctx)) {
      return *cert;
    }
    return tl::unexpected(grpc::Status(
        grpc::StatusCode::UNAUTHENTICATED,
        fmt::format("no credentials: call on the controller's Unix socket{} (as root, the controller's user or a "
                    "member of its --socket-group), or give a token (faultline COMMAND --token-file FILE, or the "
                    "FAULTLINE_TOKEN environment variable; an admin makes one with `faultline token create --role "
                    "ROLE`)",
                    localSocket ? " (--controller unix:" + localSocket->path() + ")" : "")));
  }

  // The caller when it may call rpc (auth::kRpcRoles), else UNAUTHENTICATED or PERMISSION_DENIED
  // naming the role needed and the caller's.
  tl::expected<Caller, grpc::Status> authorize(const grpc::CallbackServerContext& ctx, std::string_view rpc) {
    auto caller = authenticate(ctx);
    if (!caller) {
      return caller;
    }
    const auto needs = auth::requiredRole(rpc);
    if (!needs || !auth::allows(caller->role, *needs)) {
      return tl::unexpected(grpc::Status(
          grpc::StatusCode::PERMISSION_DENIED,
          fmt::format("{} needs the {} role; {} has the {} role", rpc, needs ? auth::roleName(*needs) : "(unknown)",
                      caller->who, auth::roleName(caller->role))));
    }
    return caller;
  }

  // An experiment with a command probe: refused when this controller runs none, or when the
  // caller is not an admin.
  std::optional<grpc::Status> checkCommandProbes(const Experiment& e, const Caller& caller) const {
    const Probe* probe = firstCommandProbe(e);
    if (probe == nullptr) {
      return std::nullopt;
    }
    if (!options.commandProbes) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          fmt::format("probe '{}' is a command probe, and this controller runs none (it was started "
                                      "with --no-command-probes); use an http, tcp or prometheus probe",
                                      probe->name));
    }
    if (!auth::allows(caller.role, auth::kCommandProbeRole)) {
      return grpc::Status(
          grpc::StatusCode::PERMISSION_DENIED,
          fmt::format("probe '{}' is a command probe (it runs a program on the controller's host): that needs the {} "
                      "role; {} has the {} role",
                      probe->name, auth::roleName(auth::kCommandProbeRole), caller.who, auth::roleName(caller.role)));
    }
    return std::nullopt;
  }

  // The request's experiment with its variables, or INVALID_ARGUMENT listing every diagnostic.
  static tl::expected<Experiment, grpc::Status> parseRequest(const v1::SubmitRunRequest& req,
                                                             const std::string& fileName) {
    if (auto over = overLimits(req)) {
      return tl::unexpected(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
    }
    const Variables vars(req.variables().begin(), req.variables().end());
    auto parsed = parseExperiment(req.experiment(), fileName, vars);
    if (!parsed) {
      std::string text;
      for (const auto& d : parsed.error()) {
        text += format(d) + "\n";
      }
      // A diagnostic quotes the value it found, which may be a secret variable's.
      SecretNames secrets(req.secret_variables().begin(), req.secret_variables().end());
      secrets.merge(declaredSecretVariables(req.experiment()));
      return tl::unexpected(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, redactSecrets(text, vars, secrets)));
    }
    return std::move(*parsed);
  }

  // Starts request on a thread of its own as run (the path of SubmitRun and of the scheduler's
  // runs); false when the controller is shutting down.
  // "" once started, else why not: the controller is shutting down, or kMaxActiveRuns runs are
  // going on (a schedule firing every second with concurrency allow started runs without end).
  std::string launch(const std::shared_ptr<ActiveRun>& run, RunRequest request) {
    {
      std::lock_guard lock(mutex);
      if (shuttingDown) {
        return std::string(kShuttingDown);
      }
      if (runs.size() >= kMaxActiveRuns) {
        return fmt::format("{} runs are going on; accepted: at most {} at once (faultline runs --verdict running)",
                           runs.size(), kMaxActiveRuns);
      }
      runs[run->id] = run;
    }
    run->thread = std::thread([this, run, request = std::move(request)]() mutable {
      EngineOptions engineOptions;
      engineOptions.metrics = runMetrics.get();
      RunEngine engine(
          gateway, *probes, *store,
          [run](const v1::RunEvent& e) {
            std::list<std::shared_ptr<WatchReactor>> pokes;
            {
              std::lock_guard lock(run->mutex);
              run->events.push_back(e);
              if (e.kind() == "run.finished") {
                run->finished = true;
              }
              pokes = run->watchers;
            }
            for (auto& w : pokes) {
              w->pump();
            }
          },
          engineOptions);
      v1::Verdict verdict = v1::VERDICT_ERROR;
      try {
        verdict = engine.run(request, run->stop);
      } catch (const std::exception& ex) {
        // The engine catches the record store's errors; anything else ends this run, not the process.
        spdlog::error("run {} ended by an error: {}", run->id, ex.what());
        std::lock_guard lock(run->mutex);
        run->finished = true;
      }
      spdlog::info("run {} finished: {}", run->id, verdictWord(verdict));
      cv.notify_all();
    });
    return "";
  }

  struct AllowedExperiment {
    Caller caller;
    Experiment experiment;
    std::string fileName;
  };
  // A submitted experiment the caller may run or plan: rpc's role (auth::kRpcRoles), parsed, and a
  // command probe only for an admin; else the status to finish with.
  tl::expected<AllowedExperiment, grpc::Status> allowedExperiment(const grpc::CallbackServerContext& ctx,
                                                                  std::string_view rpc,
                                                                  const v1::SubmitRunRequest& req) {
    auto caller = authorize(ctx, rpc);
    if (!caller) {
      return tl::unexpected(caller.error());
    }
    std::string fileName = req.file_name().empty() ? "experiment.yaml" : req.file_name();
    auto parsed = parseRequest(req, fileName);
    if (!parsed) {
      return tl::unexpected(parsed.error());
    }
    if (auto refused = checkCommandProbes(*parsed, *caller)) {
      return tl::unexpected(*refused);
    }
    return AllowedExperiment{std::move(*caller), std::move(*parsed), std::move(fileName)};
  }

  grpc::ServerUnaryReactor* SubmitRun(grpc::CallbackServerContext* ctx, const v1::SubmitRunRequest* req,
                                      v1::SubmitRunResponse* resp) override {
    auto allowed = allowedExperiment(*ctx, "SubmitRun", *req);
    if (!allowed) {
      return finishNow(ctx, allowed.error());
    }
    auto& [caller, parsed, fileName] = *allowed;
    auto run = std::make_shared<ActiveRun>();
    run->id = newRunId();
    RunRequest request{run->id, fileName, sha256Hex(req->experiment()), req->trigger().empty() ? "cli" : req->trigger(),
                       std::move(parsed)};
    std::set<std::string> secretNames(req->secret_variables().begin(), req->secret_variables().end());
    for (const auto& [name, variable] : request.experiment.variables) {  // `secret: true` in the file
      if (variable.secret) {
        secretNames.insert(name);
      }
    }
    for (const auto& [name, value] : req->variables()) {
      if (isSecretVariableName(name) || secretNames.contains(name)) {
        request.secrets.emplace_back(name, value);
      }
    }
    if (auto refused = launch(run, std::move(request)); !refused.empty()) {
      return finishNow(ctx, grpc::Status(refused == kShuttingDown ? grpc::StatusCode::UNAVAILABLE
                                                                  : grpc::StatusCode::RESOURCE_EXHAUSTED,
                                         refused));
    }
    spdlog::info("run {} submitted by {}", run->id, caller.who);
    resp->set_run_id(run->id);
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerWriteReactor<v1::RunEvent>* WatchRun(grpc::CallbackServerContext* ctx,
                                                   const v1::WatchRunRequest* req) override {
    if (auto caller = authorize(*ctx, "WatchRun"); !caller) {
      return new RefusedStream(caller.error());
    }
    if (auto over = overLimit("run_id", req->run_id(), kMaxIdBytes)) {
      return new RefusedStream(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
    }
    std::shared_ptr<ActiveRun> run;
    {
      std::lock_guard lock(mutex);
      auto it = runs.find(req->run_id());
      if (it != runs.end()) {
        run = it->second;
      }
    }
    if (!run) {
      // A finished run: replay its record.
      run = std::make_shared<ActiveRun>();
      auto rec = readRecord([&] { return store->getRun(req->run_id()); });
      if (!rec) {
        return new RefusedStream(rec.error());
      }
      if (!*rec) {
        return new RefusedStream(
            grpc::Status(grpc::StatusCode::NOT_FOUND, fmt::format("no run with id '{}'", req->run_id())));
      }
      run->events.assign((*rec)->events().begin(), (*rec)->events().end());
      run->finished = true;
    }
    return WatchReactor::start(run);
  }

  grpc::ServerUnaryReactor* AbortRun(grpc::CallbackServerContext* ctx, const v1::AbortRunRequest* req,
                                     v1::AbortRunResponse* /*resp*/) override {
    auto caller = authorize(*ctx, "AbortRun");
    if (!caller) {
      return finishNow(ctx, caller.error());
    }
    if (auto over = overLimit("run_id", req->run_id(), kMaxIdBytes)) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
    }
    if (auto over = overLimit("reason", req->reason(), kMaxReasonBytes)) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
    }
    std::lock_guard lock(mutex);
    auto it = runs.find(req->run_id());
    if (it == runs.end()) {
      return finishNow(
          ctx, grpc::Status(grpc::StatusCode::NOT_FOUND, fmt::format("no active run with id '{}'", req->run_id())));
    }
    spdlog::info("run {} aborted by {}", req->run_id(), caller->who);
    it->second->stop.request(req->reason().empty() ? "aborted on request" : req->reason());
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* GetRun(grpc::CallbackServerContext* ctx, const v1::GetRunRequest* req,
                                   v1::Run* resp) override {
    if (auto caller = authorize(*ctx, "GetRun"); !caller) {
      return finishNow(ctx, caller.error());
    }
    if (auto over = overLimit("run_id", req->run_id(), kMaxIdBytes)) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
    }
    auto rec = readRecord([&] { return store->getRun(req->run_id()); });
    if (!rec) {
      return finishNow(ctx, rec.error());
    }
    if (!*rec) {
      return finishNow(ctx,
                       grpc::Status(grpc::StatusCode::NOT_FOUND, fmt::format("no run with id '{}'", req->run_id())));
    }
    *resp = std::move(**rec);
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ListRuns(grpc::CallbackServerContext* ctx, const v1::ListRunsRequest* req,
                                     v1::ListRunsResponse* resp) override {
    if (auto caller = authorize(*ctx, "ListRuns"); !caller) {
      return finishNow(ctx, caller.error());
    }
    if (auto over = overLimits(*req)) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "ListRuns: " + *over));
    }
    RunFilter filter;
    filter.limit = req->limit();
    filter.trigger = req->trigger();
    if (req->only_running()) {
      filter.verdict = v1::VERDICT_UNSPECIFIED;
    } else if (req->verdict() != v1::VERDICT_UNSPECIFIED) {
      filter.verdict = req->verdict();
    }
    if (req->has_since()) {
      filter.since = req->since();
    }
    filter.schedule = req->schedule();
    auto runs = readRecord([&] { return store->listRuns(filter); });
    if (!runs) {
      return finishNow(ctx, runs.error());
    }
    for (auto& r : *runs) {
      *resp->add_runs() = std::move(r);
    }
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* PlanRun(grpc::CallbackServerContext* ctx, const v1::SubmitRunRequest* req,
                                    v1::RunPlan* resp) override {
    auto allowed = allowedExperiment(*ctx, "PlanRun", *req);
    if (!allowed) {
      return finishNow(ctx, allowed.error());
    }
    auto& [caller, parsed, fileName] = *allowed;
    auto plan = planRun(parsed, gateway.agents(), std::random_device{}());
    if (!plan) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, plan.error()));
    }
    *resp = std::move(*plan);
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ListAgents(grpc::CallbackServerContext* ctx, const v1::ListAgentsRequest* req,
                                       v1::ListAgentsResponse* resp) override {
    if (auto caller = authorize(*ctx, "ListAgents"); !caller) {
      return finishNow(ctx, caller.error());
    }
    auto page = agentsPage(gateway.agents(), *req);
    if (!page) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, page.error()));
    }
    *resp = std::move(*page);
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* Halt(grpc::CallbackServerContext* ctx, const v1::HaltRequest* req,
                                 v1::HaltResponse* resp) override {
    auto caller = authorize(*ctx, "Halt");
    if (!caller) {
      return finishNow(ctx, caller.error());
    }
    if (auto over = overLimit("reason", req->reason(), kMaxReasonBytes)) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
    }
    auto timeout = std::chrono::milliseconds{10'000};
    if (req->has_timeout()) {
      const auto t = std::chrono::milliseconds{req->timeout().seconds() * 1000 + req->timeout().nanos() / 1'000'000};
      if (t.count() > 0) {
        timeout = std::min(t, std::chrono::milliseconds{60'000});
      }
    }
    const std::string reason = req->reason().empty() ? "halt requested" : "halt: " + req->reason();
    spdlog::warn("halt requested by {}", caller->who);
    auto* reactor = ctx->DefaultReactor();
    std::lock_guard lock(mutex);
    if (shuttingDown) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "controller is shutting down"));
      return reactor;
    }
    // Waiting blocks for up to timeout: not on a gRPC callback thread, which delivers the reports.
    auto* call = startCall(reactor, false);
    if (call == nullptr) {
      return reactor;
    }
    call->thread = std::thread([this, reactor, resp, timeout, reason, done = call->done] {
      const auto until = std::chrono::steady_clock::now() + timeout;
      spdlog::warn("{}: aborting every run and reverting every fault on every agent", reason);
      std::vector<std::shared_ptr<ActiveRun>> aborted;
      {
        std::lock_guard lock(mutex);
        for (auto& [id, run] : runs) {
          std::lock_guard runLock(run->mutex);
          if (!run->finished) {
            run->stop.request(reason, StopCause::kHalt);
            aborted.push_back(run);
          }
        }
      }
      resp->set_runs_aborted(static_cast<uint32_t>(aborted.size()));
      auto outcome = gateway.revertAllAndWait(reason, timeout);
      resp->set_agents_told(static_cast<uint32_t>(outcome.agentsTold));
      for (auto& [id, why] : outcome.unconfirmed) {
        auto* u = resp->add_unconfirmed();
        u->set_agent_id(id);
        u->set_reason(why);
      }
      // The aborted runs roll back and record their verdict; wait for that within the same bound.
      uint32_t unfinished = 0;
      for (auto& run : aborted) {
        for (;;) {
          {
            std::lock_guard runLock(run->mutex);
            if (run->finished) {
              break;
            }
          }
          if (std::chrono::steady_clock::now() >= until) {
            ++unfinished;
            break;
          }
          std::this_thread::sleep_for(std::chrono::milliseconds{10});
        }
      }
      resp->set_runs_unfinished(unfinished);
      spdlog::warn("{}: {} run(s) aborted, {} agent(s) told, {} not confirmed", reason, aborted.size(),
                   outcome.agentsTold, outcome.unconfirmed.size());
      reactor->Finish(grpc::Status::OK);
      done->store(true);
    });
    return reactor;
  }

  grpc::ServerUnaryReactor* CreateToken(grpc::CallbackServerContext* ctx, const v1::CreateTokenRequest* req,
                                        v1::CreateTokenResponse* resp) override {
    auto caller = authorize(*ctx, "CreateToken");
    if (!caller) {
      return finishNow(ctx, caller.error());
    }
    const auto role = auth::parseRole(req->role());
    if (!role) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                         fmt::format("role: '{}' is not a role; accepted: viewer, operator, admin",
                                                     forLog(req->role()))));
    }
    if (auto bad = auth::checkTokenName(req->name()); !bad.empty()) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, bad));
    }
    try {
      auto token = tokens->create(*role, req->name());
      spdlog::info("token {} ({}, role {}) created by {}", token.info.id, token.info.name, auth::roleName(*role),
                   caller->who);
      *resp->mutable_token() = tokenMessage(token.info);
      resp->set_secret(token.secret);
    } catch (const std::exception& e) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INTERNAL, e.what()));
    }
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ListTokens(grpc::CallbackServerContext* ctx, const v1::ListTokensRequest* /*req*/,
                                       v1::ListTokensResponse* resp) override {
    if (auto caller = authorize(*ctx, "ListTokens"); !caller) {
      return finishNow(ctx, caller.error());
    }
    try {
      for (const auto& t : tokens->list()) {
        *resp->add_tokens() = tokenMessage(t);
      }
    } catch (const std::exception& e) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INTERNAL, e.what()));
    }
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* RevokeToken(grpc::CallbackServerContext* ctx, const v1::RevokeTokenRequest* req,
                                        v1::RevokeTokenResponse* /*resp*/) override {
    auto caller = authorize(*ctx, "RevokeToken");
    if (!caller) {
      return finishNow(ctx, caller.error());
    }
    if (auto over = overLimit("id", req->id(), kMaxIdBytes)) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
    }
    try {
      if (!tokens->revoke(req->id())) {
        return finishNow(ctx, grpc::Status(grpc::StatusCode::NOT_FOUND,
                                           fmt::format("no valid token with id '{}' (see faultline token list)",
                                                       forLog(req->id()))));
      }
    } catch (const std::exception& e) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INTERNAL, e.what()));
    }
    spdlog::info("token {} revoked by {}", req->id(), caller->who);
    return finishNow(ctx, grpc::Status::OK);
  }

  // --- Schedules (controller/scheduler/scheduler.h) ---

  // The scheduler's runs go through launch(), as SubmitRun's do.
  struct Launcher final : scheduler::RunLauncher {
    explicit Launcher(Impl& impl) : impl(impl) {}
    std::string newRunId() override { return controller::newRunId(); }
    tl::expected<void, std::string> start(const scheduler::ScheduledRun& r) override {
      const auto& s = r.schedule;
      const std::string fileName = s.file_name().empty() ? "experiment.yaml" : s.file_name();
      const Variables vars(s.variables().begin(), s.variables().end());
      auto parsed = parseExperiment(s.experiment(), fileName, vars);
      if (!parsed) {
        return tl::unexpected(fmt::format("the experiment is invalid: {}", format(parsed.error().front())));
      }
      if (firstCommandProbe(*parsed) != nullptr && !impl.options.commandProbes) {
        return tl::unexpected(
            std::string("the experiment has a command probe, and this controller runs none "
                        "(--no-command-probes)"));
      }
      auto run = std::make_shared<ActiveRun>();
      run->id = r.runId;
      RunRequest request{run->id, fileName, sha256Hex(s.experiment()), "schedule", std::move(*parsed)};
      request.schedule = s.name();
      request.fireAt = r.fireAt;
      if (auto refused = impl.launch(run, std::move(request)); !refused.empty()) {
        return tl::unexpected(refused);
      }
      return {};
    }
    bool active(const std::string& runId) override { return impl.runActive(runId); }
    void abortAndWait(const std::string& runId, const std::string& reason, std::chrono::milliseconds wait) override {
      std::shared_ptr<ActiveRun> run;
      {
        std::lock_guard lock(impl.mutex);
        if (auto it = impl.runs.find(runId); it != impl.runs.end()) {
          run = it->second;
        }
      }
      if (!run) {
        return;
      }
      run->stop.request(reason);
      const auto until = std::chrono::steady_clock::now() + wait;
      while (std::chrono::steady_clock::now() < until) {
        {
          std::lock_guard lock(run->mutex);
          if (run->finished) {
            return;
          }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds{20});
      }
    }
    Impl& impl;
  };

  scheduler::SystemClock clock;
  Launcher launcher{*this};
  std::unique_ptr<ScheduleStore> schedules;
  std::unique_ptr<scheduler::Scheduler> scheduler;

  // A schedule's name from a request: bounded, or INVALID_ARGUMENT.
  static std::optional<grpc::Status> badName(const std::string& name) {
    if (auto over = overLimit("name", name, kMaxScheduleNameBytes)) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over);
    }
    return std::nullopt;
  }

  static grpc::Status noSchedule(const std::string& name) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        fmt::format("no schedule named '{}' (see faultline schedule list)", forLog(name)));
  }

  // The schedule with its next five fire times and its last fires (withFires).
  v1::ScheduleStatus statusOf(v1::Schedule s, bool withFires) {
    v1::ScheduleStatus st;
    auto next = scheduler->nextFires(s, 5);
    if (next) {
      for (const auto& t : *next) {
        st.add_next_fires()->set_seconds(t.at.time_since_epoch().count());
        st.add_next_fire_blackouts(t.blackout.value_or(""));
      }
    } else {
      st.set_error(next.error());
    }
    if (withFires) {
      for (auto& f : schedules->listFires(s.name(), 20)) {
        *st.add_fires() = std::move(f);
      }
    } else {
      s.clear_experiment();
    }
    *st.mutable_schedule() = std::move(s);
    return st;
  }

  grpc::ServerUnaryReactor* ApplySchedule(grpc::CallbackServerContext* ctx, const v1::ApplyScheduleRequest* req,
                                          v1::ApplyScheduleResponse* resp) override {
    auto caller = authorize(*ctx, "ApplySchedule");
    if (!caller) {
      return finishNow(ctx, caller.error());
    }
    v1::Schedule s = req->schedule();
    if (auto over = overLimits(s)) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
    }
    for (const auto& [name, value] : s.variables()) {
      if (isSecretVariableName(name)) {
        return finishNow(
            ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              fmt::format("variables.{}: a secret (its name says so): a schedule keeps its variables "
                                          "in the record file, and secrets are never stored there; accepted: "
                                          "variables that are not secrets (give a secret to the probe another way, "
                                          "e.g. a file the probe reads)",
                                          forLog(name))));
      }
    }
    const auto declaredSecrets = declaredSecretVariables(s.experiment());
    for (const auto& [name, value] : s.variables()) {
      if (declaredSecrets.contains(name)) {
        return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                           fmt::format("variables.{}: a secret (the experiment's variables mark it "
                                                       "secret: true): a schedule keeps its variables in the record "
                                                       "file, and secrets are never stored there",
                                                       forLog(name))));
      }
    }
    const std::string fileName = s.file_name().empty() ? "experiment.yaml" : s.file_name();
    v1::SubmitRunRequest asRun;
    asRun.set_experiment(s.experiment());
    asRun.set_file_name(fileName);
    *asRun.mutable_variables() = s.variables();
    auto parsed = parseRequest(asRun, fileName);
    if (!parsed) {
      return finishNow(ctx, parsed.error());
    }
    if (auto refused = checkCommandProbes(*parsed, *caller)) {
      return finishNow(ctx, *refused);
    }
    for (const auto& name : s.only_if()) {
      const auto& probes = parsed->hypothesis.probes;
      if (std::none_of(probes.begin(), probes.end(), [&](const Probe& p) { return p.name == name; })) {
        std::string names;
        for (const auto& p : probes) {
          names += (names.empty() ? "" : ", ") + p.name;
        }
        return finishNow(
            ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                              fmt::format("--only-if (onlyIf): '{}' is not a probe of the experiment's steadyState; "
                                          "accepted: {}",
                                          forLog(name), names.empty() ? "(it has none)" : names)));
      }
    }
    if (s.concurrency().empty()) {
      s.set_concurrency("forbid");
    }
    if (auto next = scheduler->nextFires(s, 1); !next) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, next.error()));
    }
    s.set_experiment_sha256(sha256Hex(s.experiment()));
    s.clear_paused();
    s.clear_created_at();
    s.clear_updated_at();
    try {
      const auto result = schedules->applySchedule(s, agent::nowTimestamp());
      resp->set_result(applyResultWord(result));
      if (result != ApplyResult::kUnchanged) {
        scheduler->reload();
        spdlog::info("schedule {} {} by {}", s.name(), applyResultWord(result), caller->who);
      }
      *resp->mutable_schedule() = schedules->getSchedule(s.name()).value_or(s);
      resp->mutable_schedule()->clear_experiment();
    } catch (const std::exception& e) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::UNAVAILABLE, e.what()));
    }
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ListSchedules(grpc::CallbackServerContext* ctx, const v1::ListSchedulesRequest* /*req*/,
                                          v1::ListSchedulesResponse* resp) override {
    if (auto caller = authorize(*ctx, "ListSchedules"); !caller) {
      return finishNow(ctx, caller.error());
    }
    auto all = readRecord([&] { return schedules->listSchedules(); });
    if (!all) {
      return finishNow(ctx, all.error());
    }
    for (auto& s : *all) {
      *resp->add_schedules() = statusOf(std::move(s), false);
    }
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* GetSchedule(grpc::CallbackServerContext* ctx, const v1::GetScheduleRequest* req,
                                        v1::ScheduleStatus* resp) override {
    if (auto caller = authorize(*ctx, "GetSchedule"); !caller) {
      return finishNow(ctx, caller.error());
    }
    if (auto bad = badName(req->name())) {
      return finishNow(ctx, *bad);
    }
    auto s = readRecord([&] { return schedules->getSchedule(req->name()); });
    if (!s) {
      return finishNow(ctx, s.error());
    }
    if (!*s) {
      return finishNow(ctx, noSchedule(req->name()));
    }
    auto st = readRecord([&] { return statusOf(std::move(**s), true); });
    if (!st) {
      return finishNow(ctx, st.error());
    }
    *resp = std::move(*st);
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* setPaused(grpc::CallbackServerContext* ctx, std::string_view rpc, const std::string& name,
                                      bool paused, v1::ScheduleStatus* resp) {
    auto caller = authorize(*ctx, rpc);
    if (!caller) {
      return finishNow(ctx, caller.error());
    }
    if (auto bad = badName(name)) {
      return finishNow(ctx, *bad);
    }
    try {
      if (!schedules->setPaused(name, paused, agent::nowTimestamp())) {
        return finishNow(ctx, noSchedule(name));
      }
      scheduler->reload();
      spdlog::info("schedule {} {} by {}", name, paused ? "paused" : "resumed", caller->who);
      *resp = statusOf(*schedules->getSchedule(name), false);
    } catch (const std::exception& e) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::UNAVAILABLE, e.what()));
    }
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* PauseSchedule(grpc::CallbackServerContext* ctx, const v1::ScheduleNameRequest* req,
                                          v1::ScheduleStatus* resp) override {
    return setPaused(ctx, "PauseSchedule", req->name(), true, resp);
  }

  grpc::ServerUnaryReactor* ResumeSchedule(grpc::CallbackServerContext* ctx, const v1::ScheduleNameRequest* req,
                                           v1::ScheduleStatus* resp) override {
    return setPaused(ctx, "ResumeSchedule", req->name(), false, resp);
  }

  grpc::ServerUnaryReactor* DeleteSchedule(grpc::CallbackServerContext* ctx, const v1::ScheduleNameRequest* req,
                                           v1::DeleteScheduleResponse* /*resp*/) override {
    auto caller = authorize(*ctx, "DeleteSchedule");
    if (!caller) {
      return finishNow(ctx, caller.error());
    }
    if (auto bad = badName(req->name())) {
      return finishNow(ctx, *bad);
    }
    try {
      if (!schedules->deleteSchedule(req->name())) {
        return finishNow(ctx, noSchedule(req->name()));
      }
      scheduler->reload();
    } catch (const std::exception& e) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::UNAVAILABLE, e.what()));
    }
    spdlog::info("schedule {} deleted by {}", req->name(), caller->who);
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* RunScheduleNow(grpc::CallbackServerContext* ctx, const v1::ScheduleNameRequest* req,
                                           v1::ScheduleFire* resp) override {
    auto caller = authorize(*ctx, "RunScheduleNow");
    if (!caller) {
      return finishNow(ctx, caller.error());
    }
    if (auto bad = badName(req->name())) {
      return finishNow(ctx, *bad);
    }
    // Blocks for its only-if probes and a replace's wait: not on a gRPC callback thread.
    // A schedule whose experiment has a command probe is run only by whom may submit it (admin).
    auto stored = readRecord([&] { return schedules->getSchedule(req->name()); });
    if (!stored) {
      return finishNow(ctx, stored.error());
    }
    if (!*stored) {
      return finishNow(ctx, noSchedule(req->name()));
    }
    v1::SubmitRunRequest asRun;
    asRun.set_experiment((*stored)->experiment());
    asRun.set_file_name((*stored)->file_name().empty() ? "experiment.yaml" : (*stored)->file_name());
    *asRun.mutable_variables() = (*stored)->variables();
    if (auto parsed = parseRequest(asRun, asRun.file_name())) {
      if (auto refused = checkCommandProbes(*parsed, *caller)) {
        return finishNow(ctx, *refused);
      }
    }
    auto* reactor = ctx->DefaultReactor();
    std::lock_guard lock(mutex);
    auto* call = startCall(reactor, true);
    if (call == nullptr) {
      return reactor;
    }
    call->thread = std::thread([this, reactor, resp, name = req->name(), who = caller->who, done = call->done] {
      grpc::Status status = grpc::Status::OK;
      try {
        auto fire = scheduler->runNow(name);
        if (!fire) {
          status = noSchedule(name);
        } else {
          spdlog::info("schedule {} run now by {}: {}", name, who, fire->outcome());
          *resp = std::move(*fire);
        }
      } catch (const std::exception& e) {
        status = grpc::Status(grpc::StatusCode::UNAVAILABLE, e.what());
      }
      reactor->Finish(status);
      done->store(true);
    });
    return reactor;
  }

  // Joins the threads of finished runs; with all = true, waits for every run.
  // A run stays in runs until its thread is joined: runActive() is true while its engine may still
  // record (a late report seen as after the run was otherwise recorded twice on SIGTERM).
  void reap(bool all) {
    std::vector<std::shared_ptr<ActiveRun>> done;
    {
      std::unique_lock lock(mutex);
      for (auto& [id, run] : runs) {
        bool finished = false;
        {
          std::lock_guard runLock(run->mutex);
          finished = run->finished;
        }
        if ((finished || all) && !run->reaping) {
          run->reaping = true;
          done.push_back(run);
        }
      }
    }
    for (auto& r : done) {
      if (r->thread.joinable()) {
        r->thread.join();
      }
    }
    std::unique_lock lock(mutex);
    for (auto& r : done) {
      runs.erase(r->id);
    }
  }
};

std::string listenRefusal(const ControllerOptions& options) {
  if (options.listen.empty()) {
    return "";  // no TCP address: only the Unix socket
  }
  return agent::plaintextRefusal(options.listen, !options.tls.empty(), options.insecure, "listen");
}

Controller::Controller(ControllerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Controller::~Controller() {
  shutdown();
}

namespace {

// Binds HOST:PORT once with a plain socket, so that an address in use or not of this host is
// reported with its errno before gRPC (which only logs) tries. "" when it can be bound.
std::string checkBindable(const std::string& listen) {
  if (listen.rfind("unix:", 0) == 0) {
    return "";
  }
  const auto colon = listen.rfind(':');
  std::string host = listen.substr(0, colon);
  const std::string port = listen.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    return fmt::format("cannot listen on {}: {}", listen, gai_strerror(rc));
  }
  std::string error;
  for (auto* a = found; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      continue;
    }
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 1) != 0) {
      error = fmt::format("cannot listen on {}: {}", listen, std::strerror(errno));
    }
    ::close(fd);
    break;
  }
  freeaddrinfo(found);
  return error;
}

// Every agent holds a connection, so a fleet needs many descriptors: the soft limit of open
// files goes up to the hard limit once, at start, and the log says what it is (past it, gRPC
// cannot accept a connection, and says so only in its own debug log).
void raiseFileLimit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) {
    spdlog::warn("open files: getrlimit: {}", std::strerror(errno));
    return;
  }
  const rlim_t before = limit.rlim_cur;
  if (limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
      spdlog::warn("open files: cannot raise the limit from {} to the hard limit {}: {}", before, limit.rlim_max,
                   std::strerror(errno));
      return;
    }
  }
  const auto text = [](rlim_t v) { return v == RLIM_INFINITY ? std::string("unlimited") : std::to_string(v); };
  spdlog::info("open files: limit {} (was {}; the hard limit): one per connected agent, plus the record store's",
               text(limit.rlim_cur), text(before));
}

}  // namespace

int Controller::start() {
  if (auto refused = listenRefusal(impl_->options); !refused.empty()) {
    throw std::runtime_error(refused);
  }
  raiseFileLimit();
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!impl_->options.tls.empty()) {
    auto tls = serverCredentials(impl_->options.tls);
    if (!tls) {
      throw std::runtime_error(tls.error());
    }
    credentials = *tls;
  } else if (!impl_->options.listen.empty() && !agent::isLocalAddress(impl_->options.listen)) {
    spdlog::warn(
        "--insecure: serving plaintext on {}: anyone who reaches it can register as an agent and command the "
        "fleet (give --tls-cert, --tls-key and --tls-ca)",
        impl_->options.listen);
  }
  if (!impl_->options.listen.empty()) {
    if (auto bad = checkBindable(impl_->options.listen); !bad.empty()) {
      throw std::runtime_error(bad);
    }
  }
  if (!impl_->options.socket.empty()) {
    impl_->localSocket = std::make_unique<LocalSocket>(impl_->options.socket, impl_->options.socketGroup);
    impl_->localSocket->bind();
  }
  const auto dir = std::filesystem::path(impl_->options.dbPath).parent_path();
  if (std::error_code ec; !dir.empty() && !std::filesystem::exists(dir, ec)) {
    if (std::filesystem::create_directories(dir, ec); ec) {
      throw std::system_error(ec, fmt::format("cannot create the directory of --db {}", impl_->options.dbPath));
    }
    spdlog::info("created {} for the record store", dir.string());
  }
  impl_->store = openSqliteStore(impl_->options.dbPath);
  impl_->tokens = std::make_unique<auth::TokenStore>(impl_->options.dbPath);
  // A run without an end was cut off by a controller that stopped or crashed: its agents' leases
  // reverted its faults (their reports, when they reconnect, are added to its record). Under run
  // --local the agent died with the controller: its journal's crash recovery reverts them.
  const std::string interrupted =
      impl_->options.local
          ? "interrupted: the run --local process stopped during the run; the crash recovery of its agent's undo "
            "journal (at the next run --local on the same --state-dir) reverts its faults"
          : "interrupted: the controller stopped during the run; the agents' leases reverted its faults";
  for (const auto& id : impl_->store->finishInterruptedRuns(interrupted, agent::nowTimestamp())) {
    spdlog::warn("run {} was interrupted by a controller stop; recorded as error", id);
  }
  if (!impl_->options.retention.keepsAll()) {
    impl_->applyRetention();  // before any run starts: no run of this controller is active yet
    impl_->retentionThread = std::thread([impl = impl_.get()] { impl->retentionLoop(); });
  }
  impl_->gateway.setRunActive([impl = impl_.get()](const std::string& runId) { return impl->runActive(runId); });
  impl_->lateListener =
      impl_->gateway.subscribe([impl = impl_.get()](const std::string& agentId, const v1::FaultReport& r) {
        impl->recordLateReport(agentId, r);
      });
  // The schedules, before the first call can ask for them; the scheduler starts with the server
  // and handles missed fires after scheduleStartDelay (agents reconnect first: their runs need
  // them).
  impl_->schedules = openScheduleStore(impl_->options.dbPath);
  impl_->scheduler = std::make_unique<scheduler::Scheduler>(
      *impl_->schedules, impl_->launcher, *impl_->probes, impl_->clock, scheduler::cronTimetable,
      scheduler::SchedulerOptions{
          .startDelay = impl_->options.local ? std::chrono::milliseconds{0} : impl_->options.scheduleStartDelay,
          .fires = impl_->scheduleFires});
  grpc::ServerBuilder builder;
  if (impl_->runMetrics) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    interceptors.push_back(std::make_unique<RequestCounter>(*impl_->grpcRequests));
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  int port = 0;
  if (!impl_->options.listen.empty()) {
    builder.AddListeningPort(impl_->options.listen, credentials, &port);
  }
  builder.RegisterService(&impl_->gateway);
  builder.RegisterService(impl_.get());
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5'000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // gRPC sets SO_REUSEPORT by default: a second controller on the same port would share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // A --listen unix:PATH socket is made 0600 whatever the umask: its peers register as agents
  // without TLS, which only root and the controller's user may (refuseAgentPeer). gRPC binds it
  // inside BuildAndStart, before any other thread of this process creates files.
  const bool unixListen = impl_->options.listen.rfind("unix:", 0) == 0;
  const mode_t umaskBefore = unixListen ? ::umask(0077) : 0;
  impl_->server = builder.BuildAndStart();
  if (unixListen) {
    ::umask(umaskBefore);
  }
  impl_->listenPort = static_cast<uint16_t>(port);
  const bool noPort = impl_->options.listen.empty() || impl_->options.listen.rfind("unix:", 0) == 0;
  if (!impl_->server || (port == 0 && !noPort)) {
    throw std::runtime_error(
        fmt::format("cannot listen on {} (address in use, or not an address of this host?)", impl_->options.listen));
  }
  if (impl_->localSocket) {
    impl_->localSocket->start(*impl_->server);
  }
  if (impl_->options.metricsListen) {
    auto server = metrics::MetricsServer::start(*impl_->options.metricsListen, impl_->registry);
    if (!server) {
      throw std::runtime_error(server.error());
    }
    impl_->metricsServer = std::move(*server);
    spdlog::info("metrics at http://{}/metrics", impl_->metricsServer->address());
  }
  impl_->scheduler->start();
  spdlog::info("controller listening on {} (port {}, {}), {}records in {}",
               impl_->options.listen.empty() ? "no TCP address" : impl_->options.listen, port,
               impl_->options.tls.empty() ? "plaintext" : "mTLS",
               impl_->localSocket ? "Unix socket " + impl_->localSocket->path() + ", " : "", impl_->options.dbPath);
  return port;
}

void Controller::abortAll(const std::string& reason) {
  {
    std::lock_guard lock(impl_->mutex);
    for (auto& [id, run] : impl_->runs) {
      run->stop.request(reason);
    }
  }
  impl_->reap(true);
}

void Controller::wait(std::chrono::milliseconds every, const std::function<void()>& tick) {
  std::unique_lock lock(impl_->mutex);
  while (!impl_->shuttingDown) {
    impl_->cv.wait_for(lock, every);
    lock.unlock();
    impl_->reap(false);
    if (tick) {
      tick();
    }
    lock.lock();
  }
}

size_t Controller::activeRuns() const {
  std::vector<std::shared_ptr<ActiveRun>> runs;
  {
    std::lock_guard lock(impl_->mutex);
    for (const auto& [id, run] : impl_->runs) {
      runs.push_back(run);
    }
  }
  return static_cast<size_t>(std::count_if(runs.begin(), runs.end(), [](const auto& run) {
    std::lock_guard runLock(run->mutex);
    return !run->finished;
  }));
}

void Controller::shutdown(const std::string& reason) {
  std::lock_guard serial(impl_->shutdownMutex);  // the second caller finds everything stopped
  if (impl_->scheduler) {
    impl_->scheduler->stop();  // first: no run starts while the others are aborted
  }
  {
    std::lock_guard lock(impl_->mutex);
    impl_->shuttingDown = true;
  }
  impl_->cv.notify_all();
  abortAll(reason);
  std::list<Impl::HaltCall> halts;
  {
    std::lock_guard lock(impl_->mutex);
    halts.swap(impl_->halts);
  }
  for (auto& h : halts) {
    if (h.thread.joinable()) {
      h.thread.join();  // each ends within its bounded wait
    }
  }
  if (impl_->retentionThread.joinable()) {
    impl_->retentionThread.join();  // woken by shuttingDown; at most one pruning round to finish
  }
  if (impl_->localSocket) {
    impl_->localSocket->stop();
  }
  impl_->metricsServer.reset();  // its collector reads the gateway
  if (impl_->server) {
    impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds{2});
    impl_->server.reset();
  }
  if (impl_->lateListener != 0) {
    impl_->gateway.unsubscribe(impl_->lateListener);
    impl_->lateListener = 0;
  }
}

Gateway& Controller::gateway() {
  return impl_->gateway;
}

std::string Controller::metricsAddress() const {
  return impl_->metricsServer ? impl_->metricsServer->address() : std::string();
}

}  // namespace faultline::controller
