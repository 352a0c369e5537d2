#include "controller/engine.h"

#include <map>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "agent/agent.h"
#include "agent/spec.h"
#include "controller/capabilities.h"
#include "controller/run_format.h"

namespace faultline::controller {

using Clock = std::chrono::steady_clock;

// An agent's own timer may fire this much before the run's deadline and still count as on time.
constexpr auto kExpiryTolerance = std::chrono::milliseconds{250};
// How often a held fault step checks for an abort request.
constexpr auto kAbortPoll = std::chrono::milliseconds{50};

void StopSignal::request(std::string reason) {
  {
    std::lock_guard lock(mutex_);
    if (requested_) {
      return;
    }
    requested_ = true;
    reason_ = std::move(reason);
  }
  cv_.notify_all();
}

bool StopSignal::requested() const {
  std::lock_guard lock(mutex_);
  return requested_;
}

std::string StopSignal::reason() const {
  std::lock_guard lock(mutex_);
  return reason_;
}

bool StopSignal::waitFor(Clock::duration d) const {
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, d, [&] { return requested_; });
}

int exitCodeFor(v1::Verdict verdict) {
  switch (verdict) {
    case v1::VERDICT_HELD:
      return 0;
    case v1::VERDICT_VIOLATED:
    case v1::VERDICT_NOT_STEADY:
      return 1;
    case v1::VERDICT_ABORTED:
      return 2;
    default:
      return 3;
  }
}

namespace {

bool matches(const v1::AgentInfo& agent, const std::map<std::string, std::string>& selector) {
  for (const auto& [k, v] : selector) {
    auto it = agent.labels().find(k);
    if (it == agent.labels().end() || it->second != v) {
      return false;
    }
  }
  return true;
}

std::string selectorText(const std::map<std::string, std::string>& selector) {
  if (selector.empty()) {
    return "{} (every agent)";
  }
  std::string out = "{";
  for (const auto& [k, v] : selector) {
    out += fmt::format("{}{}={}", out.size() > 1 ? ", " : "", k, v);
  }
  return out + "}";
}

// One run's state. Reports arrive on gRPC threads; everything else happens on the run thread.
class RunState {
 public:
  RunState(Fleet& fleet, ProbeRunner& probes, RecordStore& store, const RunEngine::EventSink& sink,
           const EngineOptions& options, const RunRequest& request, const StopSignal& stop)
      : fleet_(fleet), probes_(probes), store_(store), sink_(sink), options_(options), req_(request), stop_(stop) {}

  v1::Verdict execute() {
    v1::Run record;
    record.set_run_id(req_.runId);
    record.set_experiment(req_.experiment.name);
    record.set_file_sha256(req_.fileSha256);
    record.set_trigger(req_.trigger);
    *record.mutable_started_at() = agent::nowTimestamp();
    store_.createRun(record);
    event("", "run.started",
          fmt::format("experiment {} from {} (sha256 {}), trigger {}", req_.experiment.name, req_.fileName,
                      req_.fileSha256.substr(0, 12), req_.trigger));
    listener_ =
        fleet_.subscribe([this](const std::string& agentId, const v1::FaultReport& r) { onReport(agentId, r); });

    auto [verdict, reason] = body();
    // Rollback always runs, whatever ended the run.
    if (!held_.empty()) {
      auto leftover = revertHeld("rollback");
      if (!leftover.empty() && verdict != v1::VERDICT_ERROR) {
        verdict = v1::VERDICT_ERROR;
        reason = leftover;
      }
    }
    fleet_.unsubscribe(listener_);

    store_.finishRun(req_.runId, verdict, reason, agent::nowTimestamp());
    v1::RunEvent done = makeEvent("", "run.finished", fmt::format("verdict: {}: {}", verdictWord(verdict), reason));
    done.set_verdict(verdict);
    store_.addEvent(done);
    if (sink_) {
      sink_(done);
    }
    return verdict;
  }

 private:
  struct HeldFault {
    std::string agentId;
    std::string host;
    v1::FaultState state = v1::FAULT_STATE_UNSPECIFIED;
    std::string error;
    bool unconfirmed = false;      // the agent never answered the inject: it may hold the fault
    bool revertFailed = false;     // the agent reported a failed revert and keeps retrying
    bool revertRequested = false;  // the run asked for the revert (an end before that is early)
    bool agentGone = false;        // the agent disconnected: nobody can confirm a revert now
  };

  static bool settled(v1::FaultState s) { return s == v1::FAULT_STATE_REVERTED || s == v1::FAULT_STATE_EXPIRED; }

  std::pair<v1::Verdict, std::string> body() {
    // Targets: resolved once, recorded.
    std::vector<v1::AgentInfo> targets;
    for (auto& a : fleet_.agents()) {
      if (matches(a, req_.experiment.targets.selector)) {
        targets.push_back(std::move(a));
      }
    }
    if (req_.experiment.targets.count && targets.size() > *req_.experiment.targets.count) {
      targets.resize(*req_.experiment.targets.count);
    }
    if (targets.empty()) {
      return {v1::VERDICT_ERROR, fmt::format("no connected agent matches the selector {}; nothing was injected",
                                             selectorText(req_.experiment.targets.selector))};
    }
    std::string hosts;
    for (const auto& t : targets) {
      hosts += fmt::format("{}{} ({})", hosts.empty() ? "" : ", ", t.hostname(), t.agent_id());
    }
    event("", "targets.resolved", fmt::format("{} host(s): {}", targets.size(), hosts));

    // Every target must be able to run every fault, before anything is injected.
    if (auto cannot = checkCapabilities(req_.experiment.method, targets)) {
      return {v1::VERDICT_ERROR, *cannot};
    }

    if (!sampleAll("before")) {
      return {v1::VERDICT_NOT_STEADY,
              fmt::format("steady state did not hold before the method ({}); nothing was injected", firstFailure_)};
    }

    for (size_t i = 0; i < req_.experiment.method.size(); ++i) {
      if (stop_.requested()) {
        return {v1::VERDICT_ABORTED, stop_.reason()};
      }
      const auto& step = req_.experiment.method[i];
      if (const auto* w = std::get_if<WaitStep>(&step)) {
        event("", "step.wait", fmt::format("step {}: wait {}", i + 1, formatDuration(w->duration)));
        if (stop_.waitFor(w->duration)) {
          return {v1::VERDICT_ABORTED, stop_.reason()};
        }
        continue;
      }
      const auto& f = std::get<FaultStep>(step);
      if (auto failure = runFault(i, f, targets); !failure.empty()) {
        if (stop_.requested()) {
          return {v1::VERDICT_ABORTED, stop_.reason()};
        }
        return {v1::VERDICT_ERROR, failure};
      }
    }

    bool afterOk = sampleAll("after");
    if (violated_ || !afterOk) {
      return {v1::VERDICT_VIOLATED, fmt::format("steady state violated: {}", firstFailure_)};
    }
    return {v1::VERDICT_HELD, req_.experiment.hypothesis.probes.empty()
                                  ? "the method ran to the end (no steady-state probes)"
                                  : "steady state held before, during and after the faults"};
  }

  // Returns "" on success, else the reason the run must stop.
  std::string runFault(size_t index, const FaultStep& f, const std::vector<v1::AgentInfo>& targets) {
    const auto kind = faultKindName(f.spec);
    const std::string named = f.name == kind ? std::string(kind) : fmt::format("{} '{}'", kind, f.name);
    event(
        "", "step.fault",
        fmt::format("step {}: {} for {} on {} host(s)", index + 1, named, formatDuration(f.duration), targets.size()));
    std::vector<std::string> ids;
    for (const auto& t : targets) {
      const std::string id = fmt::format("{}/{}/{}", req_.runId, index + 1, t.agent_id());
      {
        std::lock_guard lock(mutex_);
        held_[id] = HeldFault{t.agent_id(), t.hostname(), v1::FAULT_STATE_UNSPECIFIED, "", false, false, false, false};
      }
      v1::ControllerMessage msg;
      auto* inj = msg.mutable_inject();
      inj->set_fault_id(id);
      inj->set_run_id(req_.runId);
      *inj->mutable_spec() = f.spec;
      *inj->mutable_duration() = toProto(f.duration);
      if (!fleet_.send(t.agent_id(), msg)) {
        std::lock_guard lock(mutex_);
        held_[id].state = v1::FAULT_STATE_FAILED;
        held_[id].error = "agent is no longer connected";
      }
      ids.push_back(id);
    }
    const auto injectedAt = Clock::now();
    // Wait until every agent has answered.
    {
      std::unique_lock lock(mutex_);
      cv_.wait_for(lock, options_.applyTimeout, [&] {
        for (const auto& id : ids) {
          if (held_[id].state == v1::FAULT_STATE_UNSPECIFIED) {
            return false;
          }
        }
        return true;
      });
      for (const auto& id : ids) {
        auto& h = held_[id];
        if (h.state == v1::FAULT_STATE_UNSPECIFIED) {
          h.state = v1::FAULT_STATE_FAILED;
          h.error = fmt::format("no answer within {}", formatDuration(options_.applyTimeout));
          h.unconfirmed = true;
        }
      }
    }
    std::string failure;
    {
      std::lock_guard lock(mutex_);
      for (const auto& id : ids) {
        const auto& h = held_[id];
        if (h.state == v1::FAULT_STATE_FAILED && failure.empty()) {
          failure = fmt::format("{} '{}' failed on host {}: {}", kind, f.name, h.host, h.error);
        }
      }
    }
    if (!failure.empty()) {
      auto leftover = revertHeld("a fault failed to apply");
      return leftover.empty() ? failure : failure + "; " + leftover;
    }

    // Hold the fault, sampling the steady state.
    // Samples start every `every` (a slow sample delays the next one, never overlaps it).
    const auto deadline = injectedAt + f.duration;
    {
      std::lock_guard lock(mutex_);
      holdUntil_ = deadline;
    }
    const bool probing = !req_.experiment.hypothesis.probes.empty();
    auto nextSample = probing ? Clock::now() : deadline;
    while (Clock::now() < deadline) {
      if (probing && Clock::now() >= nextSample) {
        nextSample += req_.experiment.hypothesis.every;
        sampleAll("during");
        nextSample = std::max(nextSample, Clock::now());
      }
      // Wake for the next sample, the deadline, a fault lost, or (polled) an abort.
      const auto until = std::min({deadline, nextSample, Clock::now() + kAbortPoll});
      std::unique_lock lock(mutex_);
      cv_.wait_until(lock, until, [&] { return !lost_.empty(); });
      if (!lost_.empty()) {
        const std::string lost = lost_;
        lock.unlock();
        auto leftover = revertHeld("a fault ended early");
        return leftover.empty() ? lost : lost + "; " + leftover;
      }
      lock.unlock();
      if (stop_.requested()) {
        auto leftover = revertHeld("run aborted: " + stop_.reason());
        return leftover.empty() ? "aborted" : leftover;
      }
    }
    return revertHeld("fault duration elapsed");
  }

  // Reverts every fault still held by this run and waits for each agent to confirm. Returns ""
  // when all are confirmed reverted (or expired), else what is left.
  std::string revertHeld(const std::string& why) {
    std::vector<std::pair<std::string, std::string>> toRevert;  // fault id, agent id
    {
      std::lock_guard lock(mutex_);
      for (auto& [id, h] : held_) {
        if (h.state == v1::FAULT_STATE_APPLIED || h.unconfirmed) {
          toRevert.emplace_back(id, h.agentId);
          h.revertRequested = true;
        }
      }
    }
    for (const auto& [id, agentId] : toRevert) {
      v1::ControllerMessage msg;
      msg.mutable_revert()->set_fault_id(id);
      if (!fleet_.send(agentId, msg)) {
        std::lock_guard lock(mutex_);
        auto& h = held_[id];
        h.agentGone = true;
        h.error = fmt::format(
            "agent {} is not connected: if it still runs, its lease reverts the fault; if it died, the fault "
            "stays until the agent restarts or someone removes it",
            agentId);
      }
    }
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, options_.revertTimeout, [&] {
      for (const auto& [id, agentId] : toRevert) {
        if (!settled(held_[id].state) && !held_[id].agentGone) {
          return false;
        }
      }
      return true;
    });
    std::string left;
    for (const auto& [id, agentId] : toRevert) {
      auto& h = held_[id];
      if (settled(h.state)) {
        continue;
      }
      left += fmt::format("{}fault {} on host {} not confirmed reverted within {} ({}){}", left.empty() ? "" : "; ", id,
                          h.host, formatDuration(options_.revertTimeout), why, h.error.empty() ? "" : ": " + h.error);
      h.state = v1::FAULT_STATE_FAILED;
      h.unconfirmed = false;
    }
    // Forget settled faults.
    for (auto it = held_.begin(); it != held_.end();) {
      auto s = it->second.state;
      if (settled(s) || s == v1::FAULT_STATE_FAILED) {
        it = held_.erase(it);
      } else {
        ++it;
      }
    }
    return left;
  }

  void onReport(const std::string& agentId, const v1::FaultReport& r) {
    std::string host;
    {
      std::lock_guard lock(mutex_);
      auto it = held_.find(r.fault_id());
      if (it == held_.end() || it->second.agentId != agentId) {
        return;  // not this run's
      }
      auto& h = it->second;
      const bool wasApplied = h.state == v1::FAULT_STATE_APPLIED;
      if (r.state() == v1::FAULT_STATE_FAILED && wasApplied) {
        if (r.error_code() == v1::FAULT_ERROR_AGENT_GONE) {
          h.agentGone = true;
        } else {
          h.revertFailed = true;  // a revert failed; the agent keeps retrying
        }
      } else {
        h.state = r.state();
      }
      if (r.state() == v1::FAULT_STATE_APPLIED) {
        h.unconfirmed = false;
      }
      // A fault that ends, or whose agent goes away, before the run asked for its end: the
      // experiment did not run as written, whatever the probes say.
      const bool expiredOnTime = r.state() == v1::FAULT_STATE_EXPIRED && Clock::now() + kExpiryTolerance >= holdUntil_;
      if (wasApplied && !h.revertRequested && r.state() != v1::FAULT_STATE_APPLIED && !expiredOnTime && lost_.empty()) {
        lost_ = fmt::format("fault {} on host {} ended before its duration: {}", r.fault_id(), h.host,
                            r.error().empty() ? r.detail() : r.error());
      }
      h.error = r.error();
      host = h.host;
    }
    cv_.notify_all();
    const char* kind = "fault.report";
    switch (r.state()) {
      case v1::FAULT_STATE_APPLIED:
        kind = "fault.applied";
        break;
      case v1::FAULT_STATE_REVERTED:
        kind = "fault.reverted";
        break;
      case v1::FAULT_STATE_EXPIRED:
        kind = "fault.expired";
        break;
      case v1::FAULT_STATE_FAILED:
        kind = "fault.failed";
        break;
      default:
        break;
    }
    v1::RunEvent e = makeEvent(host, kind, r.error().empty() ? r.detail() : r.error());
    e.mutable_at()->CopyFrom(r.at());
    store_.addEvent(e);
    if (sink_) {
      sink_(e);
    }
  }

  // One sample of every probe; false if any failed.
  bool sampleAll(const std::string& phase) {
    bool allOk = true;
    for (const auto& p : req_.experiment.hypothesis.probes) {
      const auto at = agent::nowTimestamp();
      Sample s = probes_.run(p);
      v1::ProbeSample rec;
      *rec.mutable_at() = at;
      rec.set_probe(p.name);
      rec.set_phase(phase);
      rec.set_ok(s.ok);
      rec.set_latency_ms(static_cast<double>(s.latency.count()) / 1000.0);
      rec.set_detail(s.detail);
      store_.addSample(req_.runId, rec);
      v1::RunEvent e =
          makeEvent("", s.ok ? "probe.ok" : "probe.failed", fmt::format("{} ({}): {}", p.name, phase, s.detail));
      *e.mutable_at() = at;
      if (sink_) {
        sink_(e);
      }
      if (!s.ok) {
        allOk = false;
        if (phase == "during") {
          violated_ = true;
        }
        if (firstFailure_.empty()) {
          firstFailure_ = fmt::format("probe {} failed {} the fault{}: {}", p.name, phase == "during" ? "while" : phase,
                                      phase == "during" ? " was active" : "s", s.detail);
          if (phase == "before") {
            firstFailure_ = fmt::format("probe {}: {}", p.name, s.detail);
          }
        }
      }
    }
    return allOk;
  }

  v1::RunEvent makeEvent(const std::string& host, const std::string& kind, const std::string& message) {
    v1::RunEvent e;
    e.set_run_id(req_.runId);
    *e.mutable_at() = agent::nowTimestamp();
    e.set_host(host);
    e.set_kind(kind);
    e.set_message(message);
    return e;
  }

  void event(const std::string& host, const std::string& kind, const std::string& message) {
    auto e = makeEvent(host, kind, message);
    store_.addEvent(e);
    if (sink_) {
      sink_(e);
    }
  }

  Fleet& fleet_;
  ProbeRunner& probes_;
  RecordStore& store_;
  const RunEngine::EventSink& sink_;
  const EngineOptions& options_;
  const RunRequest& req_;
  const StopSignal& stop_;
  int listener_ = 0;
  std::mutex mutex_;
  Clock::time_point holdUntil_{};  // end of the fault step being held
  std::string lost_;               // why a held fault ended before the run asked (first one)
  std::condition_variable cv_;
  std::map<std::string, HeldFault> held_;
  bool violated_ = false;
  std::string firstFailure_;
};

}  // namespace

RunEngine::RunEngine(Fleet& fleet, ProbeRunner& probes, RecordStore& store, EventSink sink, EngineOptions options)
    : fleet_(fleet), probes_(probes), store_(store), sink_(std::move(sink)), options_(options) {}

v1::Verdict RunEngine::run(const RunRequest& request, const StopSignal& stop) {
  RunState state(fleet_, probes_, store_, sink_, options_, request, stop);
  return state.execute();
}

}  // namespace faultline::controller
