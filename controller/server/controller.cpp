#include "controller/server/controller.h"

#include <netdb.h>
#include <openssl/evp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
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
#include <spdlog/spdlog.h>

#include "agent/session/agent.h"
#include "controller/engine/engine.h"
#include "controller/experiment/experiment.h"
#include "controller/probes/probe.h"
#include "controller/report/run_format.h"
#include "controller/server/agent_pages.h"
#include "controller/server/limits.h"
#include "controller/server/tls.h"
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

}  // namespace

struct Controller::Impl final : v1::Control::CallbackService {
  explicit Impl(ControllerOptions o)
      : options(std::move(o)),
        gateway(GatewayOptions{.lease = options.lease,
                               .heartbeatInterval = std::max(options.lease / 5, std::chrono::milliseconds{100}),
                               .requireClientCertificate = !options.tls.empty()}) {}

  ControllerOptions options;
  Gateway gateway;
  std::unique_ptr<RecordStore> store;
  std::unique_ptr<ProbeRunner> probes = makeProbeRunner();
  std::unique_ptr<grpc::Server> server;
  std::mutex mutex;
  std::condition_variable cv;
  bool shuttingDown = false;
  std::map<std::string, std::shared_ptr<ActiveRun>> runs;
  struct HaltCall {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done = std::make_shared<std::atomic<bool>>(false);
  };
  std::list<HaltCall> halts;  // one per Halt call; finished ones joined by the next Halt, all by shutdown()
  int lateListener = 0;       // records reports that reach no run (see recordLateReport)

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
    try {
      known = store->getRun(runId).has_value();
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
    const std::string kind = faultEventKind(r.state());
    v1::RunEvent e;
    e.set_run_id(runId);
    *e.mutable_at() = r.has_at() ? r.at() : agent::nowTimestamp();
    e.set_host(host);
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

  // The request's experiment with its variables, or INVALID_ARGUMENT listing every diagnostic.
  static tl::expected<Experiment, grpc::Status> parseRequest(const v1::SubmitRunRequest& req,
                                                             const std::string& fileName) {
    if (auto over = overLimits(req)) {
      return tl::unexpected(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, *over));
    }
    auto parsed =
        parseExperiment(req.experiment(), fileName, Variables(req.variables().begin(), req.variables().end()));
    if (!parsed) {
      std::string text;
      for (const auto& d : parsed.error()) {
        text += format(d) + "\n";
      }
      return tl::unexpected(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, text));
    }
    return std::move(*parsed);
  }

  grpc::ServerUnaryReactor* SubmitRun(grpc::CallbackServerContext* ctx, const v1::SubmitRunRequest* req,
                                      v1::SubmitRunResponse* resp) override {
    const std::string fileName = req->file_name().empty() ? "experiment.yaml" : req->file_name();
    auto parsed = parseRequest(*req, fileName);
    if (!parsed) {
      return finishNow(ctx, parsed.error());
    }
    auto run = std::make_shared<ActiveRun>();
    run->id = newRunId();
    RunRequest request{run->id, fileName, sha256Hex(req->experiment()), req->trigger().empty() ? "cli" : req->trigger(),
                       std::move(*parsed)};
    const std::set<std::string> secretNames(req->secret_variables().begin(), req->secret_variables().end());
    for (const auto& [name, value] : req->variables()) {
      if (isSecretVariableName(name) || secretNames.contains(name)) {
        request.secrets.emplace_back(name, value);
      }
    }
    {
      std::lock_guard lock(mutex);
      if (shuttingDown) {
        return finishNow(ctx, grpc::Status(grpc::StatusCode::UNAVAILABLE, "controller is shutting down"));
      }
      runs[run->id] = run;
    }
    run->thread = std::thread([this, run, request = std::move(request)]() mutable {
      RunEngine engine(gateway, *probes, *store, [run](const v1::RunEvent& e) {
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
      });
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
    resp->set_run_id(run->id);
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerWriteReactor<v1::RunEvent>* WatchRun(grpc::CallbackServerContext* /*ctx*/,
                                                   const v1::WatchRunRequest* req) override {
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
        class Failed final : public grpc::ServerWriteReactor<v1::RunEvent> {
         public:
          explicit Failed(const grpc::Status& status) { Finish(status); }
          void OnDone() override { delete this; }
        };
        return new Failed(rec.error());
      }
      if (!*rec) {
        class NotFound final : public grpc::ServerWriteReactor<v1::RunEvent> {
         public:
          explicit NotFound(const std::string& id) {
            Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, fmt::format("no run with id '{}'", id)));
          }
          void OnDone() override { delete this; }
        };
        return new NotFound(req->run_id());
      }
      run->events.assign((*rec)->events().begin(), (*rec)->events().end());
      run->finished = true;
    }
    return WatchReactor::start(run);
  }

  grpc::ServerUnaryReactor* AbortRun(grpc::CallbackServerContext* ctx, const v1::AbortRunRequest* req,
                                     v1::AbortRunResponse* /*resp*/) override {
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
    it->second->stop.request(req->reason().empty() ? "aborted on request" : req->reason());
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* GetRun(grpc::CallbackServerContext* ctx, const v1::GetRunRequest* req,
                                   v1::Run* resp) override {
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
    auto runs = readRecord([&] { return store->listRuns(req->limit()); });
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
    const std::string fileName = req->file_name().empty() ? "experiment.yaml" : req->file_name();
    auto parsed = parseRequest(*req, fileName);
    if (!parsed) {
      return finishNow(ctx, parsed.error());
    }
    auto plan = planRun(*parsed, gateway.agents(), std::random_device{}());
    if (!plan) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, plan.error()));
    }
    *resp = std::move(*plan);
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ListAgents(grpc::CallbackServerContext* ctx, const v1::ListAgentsRequest* req,
                                       v1::ListAgentsResponse* resp) override {
    auto page = agentsPage(gateway.agents(), *req);
    if (!page) {
      return finishNow(ctx, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, page.error()));
    }
    *resp = std::move(*page);
    return finishNow(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* Halt(grpc::CallbackServerContext* ctx, const v1::HaltRequest* req,
                                 v1::HaltResponse* resp) override {
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
    auto* reactor = ctx->DefaultReactor();
    std::lock_guard lock(mutex);
    if (shuttingDown) {
      reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "controller is shutting down"));
      return reactor;
    }
    for (auto it = halts.begin(); it != halts.end();) {
      if (it->done->load()) {
        it->thread.join();
        it = halts.erase(it);
      } else {
        ++it;
      }
    }
    // Waiting blocks for up to timeout: not on a gRPC callback thread, which delivers the reports.
    auto& call = halts.emplace_back();
    call.thread = std::thread([this, reactor, resp, timeout, reason, done = call.done] {
      const auto until = std::chrono::steady_clock::now() + timeout;
      spdlog::warn("{}: aborting every run and reverting every fault on every agent", reason);
      std::vector<std::shared_ptr<ActiveRun>> aborted;
      {
        std::lock_guard lock(mutex);
        for (auto& [id, run] : runs) {
          std::lock_guard runLock(run->mutex);
          if (!run->finished) {
            run->stop.request(reason);
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

  // Joins the threads of finished runs; with all = true, waits for every run.
  void reap(bool all) {
    std::vector<std::shared_ptr<ActiveRun>> done;
    {
      std::unique_lock lock(mutex);
      for (auto it = runs.begin(); it != runs.end();) {
        bool finished = false;
        {
          std::lock_guard runLock(it->second->mutex);
          finished = it->second->finished;
        }
        if (finished || all) {
          done.push_back(it->second);
          it = runs.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (auto& r : done) {
      if (r->thread.joinable()) {
        r->thread.join();
      }
    }
  }
};

std::string listenRefusal(const ControllerOptions& options) {
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

}  // namespace

int Controller::start() {
  if (auto refused = listenRefusal(impl_->options); !refused.empty()) {
    throw std::runtime_error(refused);
  }
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (!impl_->options.tls.empty()) {
    auto tls = serverCredentials(impl_->options.tls);
    if (!tls) {
      throw std::runtime_error(tls.error());
    }
    credentials = *tls;
  } else if (!agent::isLocalAddress(impl_->options.listen)) {
    spdlog::warn(
        "--insecure: serving plaintext on {}: anyone who reaches it can register as an agent and command the "
        "fleet (give --tls-cert, --tls-key and --tls-ca)",
        impl_->options.listen);
  }
  if (auto bad = checkBindable(impl_->options.listen); !bad.empty()) {
    throw std::runtime_error(bad);
  }
  const auto dir = std::filesystem::path(impl_->options.dbPath).parent_path();
  if (std::error_code ec; !dir.empty() && !std::filesystem::exists(dir, ec)) {
    if (std::filesystem::create_directories(dir, ec); ec) {
      throw std::system_error(ec, fmt::format("cannot create the directory of --db {}", impl_->options.dbPath));
    }
    spdlog::info("created {} for the record store", dir.string());
  }
  impl_->store = openSqliteStore(impl_->options.dbPath);
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
  impl_->gateway.setRunActive([impl = impl_.get()](const std::string& runId) { return impl->runActive(runId); });
  impl_->lateListener =
      impl_->gateway.subscribe([impl = impl_.get()](const std::string& agentId, const v1::FaultReport& r) {
        impl->recordLateReport(agentId, r);
      });
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(impl_->options.listen, credentials, &port);
  builder.RegisterService(&impl_->gateway);
  builder.RegisterService(impl_.get());
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5'000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  // gRPC sets SO_REUSEPORT by default: a second controller on the same port would share it.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  impl_->server = builder.BuildAndStart();
  const bool unixSocket = impl_->options.listen.rfind("unix:", 0) == 0;
  if (!impl_->server || (port == 0 && !unixSocket)) {
    throw std::runtime_error(
        fmt::format("cannot listen on {} (address in use, or not an address of this host?)", impl_->options.listen));
  }
  spdlog::info("controller listening on {} (port {}, {}), records in {}", impl_->options.listen, port,
               impl_->options.tls.empty() ? "plaintext" : "mTLS", impl_->options.dbPath);
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

void Controller::wait() {
  std::unique_lock lock(impl_->mutex);
  while (!impl_->shuttingDown) {
    impl_->cv.wait_for(lock, std::chrono::seconds{1});
    lock.unlock();
    impl_->reap(false);
    lock.lock();
  }
}

void Controller::shutdown() {
  {
    std::lock_guard lock(impl_->mutex);
    impl_->shuttingDown = true;
  }
  impl_->cv.notify_all();
  abortAll("controller shutting down");
  std::list<Impl::HaltCall> halts;
  {
    std::lock_guard lock(impl_->mutex);
    halts.swap(impl_->halts);
  }
  for (auto& h : halts) {
    h.thread.join();  // each ends within its bounded wait
  }
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

}  // namespace faultline::controller
