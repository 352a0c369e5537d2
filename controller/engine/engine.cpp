#include "controller/engine/engine.h"

#include <algorithm>
#include <cmath>
#include <future>
#include <map>
#include <random>
#include <set>
#include <tuple>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "agent/faults/spec.h"
#include "agent/session/agent.h"
#include "controller/engine/capabilities.h"
#include "controller/engine/sampler.h"
#include "controller/report/run_format.h"

namespace faultline::controller {

using Clock = std::chrono::steady_clock;

// An agent's own timer may fire this much before the run's deadline and still count as on time.
constexpr auto kExpiryTolerance = std::chrono::milliseconds{250};
// How often a held fault step checks for an abort request.
constexpr auto kAbortPoll = std::chrono::milliseconds{50};

void StopSignal::request(std::string reason, StopCause cause) {
  {
    std::lock_guard lock(mutex_);
    if (requested_) {
      return;
    }
    requested_ = true;
    reason_ = std::move(reason);
    cause_ = cause;
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

StopCause StopSignal::cause() const {
  std::lock_guard lock(mutex_);
  return cause_;
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
    record.set_schedule(req_.schedule);
    if (req_.fireAt) {
      *record.mutable_fire_at() = *req_.fireAt;
    }
    *record.mutable_started_at() = agent::nowTimestamp();
    if (!recorded("createRun", [&] { store_.createRun(record); })) {
      // Nothing of this run can be recorded: end it before anything is injected.
      const std::string reason = redact(fmt::format("{}; nothing was injected", storeFailure()));
      spdlog::error("run {}: {}", req_.runId, reason);
      v1::RunEvent done = makeEvent("", "run.finished", fmt::format("verdict: aborted: {}", reason));
      done.set_verdict(v1::VERDICT_ABORTED);
      if (sink_) {
        sink_(done);
      }
      return v1::VERDICT_ABORTED;
    }
    event("", "run.started",
          fmt::format("experiment {} from {} (sha256 {}), trigger {}", req_.experiment.name, req_.fileName,
                      req_.fileSha256.substr(0, 12), req_.trigger));
    if (options_.metrics != nullptr) {
      options_.metrics->runStarted(req_.runId, req_.trigger);
    }
    listener_ =
        fleet_.subscribe([this](const std::string& agentId, const v1::FaultReport& r) { onReport(agentId, r); });

    auto [verdict, reason] = body();
    if (sampler_) {
      sampler_->stop();  // an early end (an error) leaves no probe running past the run
    }
    // Rollback always runs, whatever ended the run.
    if (!held_.empty()) {
      auto leftover = revertHeld("rollback", {}, stopping() ? abortReason() : kEndReverted);
      if (!leftover.empty() && verdict != v1::VERDICT_ERROR) {
        verdict = v1::VERDICT_ERROR;
        reason = leftover;
      }
    }
    fleet_.unsubscribe(listener_);
    if (storeFailed_.load() && verdict != v1::VERDICT_ERROR && verdict != v1::VERDICT_ABORTED) {
      // The run's record is incomplete: it cannot be judged by it.
      reason = fmt::format("{} (the run would have ended {}: {})", storeFailure(), verdictWord(verdict), reason);
      verdict = v1::VERDICT_ABORTED;
    }

    if (auto lost = unrecordedSummary(); !lost.empty()) {
      reason += "; " + lost;
    }
    reason = redact(reason);
    recorded("finishRun", [&] { store_.finishRun(req_.runId, verdict, reason, agent::nowTimestamp()); });
    v1::RunEvent done = makeEvent("", "run.finished", fmt::format("verdict: {}: {}", verdictWord(verdict), reason));
    done.set_verdict(verdict);
    recorded("run.finished event", [&] { store_.addEvent(done); });
    if (storeFailed_.load()) {
      spdlog::error("run {}: {}", req_.runId, done.message());
    }
    if (options_.metrics != nullptr) {
      options_.metrics->runFinished(req_.runId, req_.trigger, verdict);
    }
    if (sink_) {
      sink_(done);
    }
    return verdict;
  }

 private:
  struct HeldFault {
    std::string agentId;
    std::string host;  // the agent's hostname (the events' host)
    std::string name;  // agentName(): how messages name the agent
    std::string kind;  // faultKindName() of its spec (fault.ended's kind, the metrics' label)
    v1::FaultState state = v1::FAULT_STATE_UNSPECIFIED;
    std::string error;
    bool unconfirmed = false;               // the agent never answered the inject: it may hold the fault
    bool revertFailed = false;              // the agent reported a failed revert and keeps retrying
    bool revertRequested = false;           // the run asked for the revert (an end before that is early)
    bool agentGone = false;                 // the agent disconnected: nobody can confirm a revert now
    bool revertGaveUp = false;              // the agent's revert can never succeed (permanent): not retried
    bool failureRecorded = false;           // a fault.failed event says why (the agent's or the run's)
    Clock::time_point until{};              // when the run will ask for its end (start time + duration)
    google::protobuf::Timestamp appliedAt;  // the agent's APPLIED report time
    bool applied = false;                   // the agent reported it applied
    bool changed = false;                   // the agent found it changed or gone before the run asked its end
    std::string_view endAs = kEndReverted;  // the end reason when the run's revert is confirmed
    bool ended = false;                     // its fault.ended event was made (exactly one per fault)
  };

  static bool settled(v1::FaultState s) { return s == v1::FAULT_STATE_REVERTED || s == v1::FAULT_STATE_EXPIRED; }

  std::pair<v1::Verdict, std::string> body() {
    // Targets: resolved once, recorded.
    const uint64_t seed = options_.targetSeed ? *options_.targetSeed : std::random_device{}();
    auto resolved = resolveTargets(req_.experiment.targets, fleet_.agents(), seed);
    if (!resolved) {
      return {v1::VERDICT_ERROR, resolved.error()};
    }
    const std::vector<v1::AgentInfo> targets = std::move(resolved->hosts);
    event("", "targets.resolved", fmt::format("{} host(s): {}", targets.size(), resolved->summary));

    // Every target must be able to run every fault, before anything is injected.
    if (auto cannot = checkCapabilities(req_.experiment.method, targets)) {
      return {v1::VERDICT_ERROR, *cannot};
    }

    if (!req_.experiment.hypothesis.probes.empty()) {
      sampler_ =
          std::make_unique<ProbeSampler>(req_.experiment.hypothesis.probes, probes_, req_.experiment.hypothesis.every);
      sampler_->setPhase("before");
      sampler_->start();
    }
    if (!observePhase("before", std::nullopt) || stopVerdict_ != v1::VERDICT_UNSPECIFIED) {
      return {v1::VERDICT_NOT_STEADY,
              fmt::format("steady state did not hold before the method ({}); nothing was injected", firstFailure_)};
    }
    beforeDone_ = true;
    setPhase("wait", "");

    for (size_t i = 0; i < req_.experiment.method.size(); ++i) {
      if (stopping()) {
        return {v1::VERDICT_ABORTED, stopReason()};
      }
      pump();  // a guard that failed between steps stops the method before the next one
      if (stopVerdict_ != v1::VERDICT_UNSPECIFIED) {
        observeAfter();
        return {stopVerdict_, stopReason_};
      }
      const std::string label = std::to_string(i + 1);
      const auto& step = req_.experiment.method[i];
      if (const auto* w = std::get_if<WaitStep>(&step)) {
        event("", "step.wait", fmt::format("step {}: wait {}", label, formatDuration(w->duration)));
        setPhase("wait", label);
        if (waitStopping(w->duration)) {
          return {v1::VERDICT_ABORTED, stopReason()};
        }
        if (stopVerdict_ != v1::VERDICT_UNSPECIFIED) {
          observeAfter();  // the SLIs after the stop, for the record; the verdict is the stop's
          return {stopVerdict_, stopReason_};
        }
        continue;
      }
      if (const auto* p = std::get_if<ProbeStep>(&step)) {
        event("", "step.probe", fmt::format("step {}: probe {}", label, p->probe));
        setPhase("wait", label);
        pump();
        sampleNamed(p->probe, false, label);
        if (stopVerdict_ != v1::VERDICT_UNSPECIFIED) {
          observeAfter();
          return {stopVerdict_, stopReason_};
        }
        continue;
      }
      Group group;
      if (const auto* f = std::get_if<FaultStep>(&step)) {
        group.faults.push_back({f, label});
      } else {
        const auto& members = std::get<ParallelStep>(step).steps;
        event("", "step.parallel", fmt::format("step {}: {} step(s) started together", label, members.size()));
        for (size_t j = 0; j < members.size(); ++j) {
          const std::string sub = fmt::format("{}.{}", label, j + 1);
          if (const auto* f = std::get_if<FaultStep>(&members[j])) {
            group.faults.push_back({f, sub});
          } else if (const auto* w = std::get_if<WaitStep>(&members[j])) {
            group.waits.emplace_back(sub, w->duration);
            group.wait = std::max(group.wait, w->duration);
          } else {
            group.probes.push_back(&std::get<ProbeStep>(members[j]));
          }
        }
      }
      group.label = label;
      auto failure = runGroup(group, targets);
      // Between steps: recorded (and watched by guards) until the next step sets its phase.
      setPhase("wait", "");
      if (!failure.empty()) {
        if (stopVerdict_ != v1::VERDICT_UNSPECIFIED) {
          observeAfter();  // the SLIs after rollback, for the record; the verdict is the stop's
          if (failure != stopReason_) {
            return {v1::VERDICT_ERROR, failure};  // a fault not confirmed reverted
          }
          return {stopVerdict_, stopReason_};
        }
        if (stopping()) {
          return {v1::VERDICT_ABORTED, stopReason()};
        }
        return {v1::VERDICT_ERROR, failure};
      }
    }

    bool afterOk = observeAfter();
    if (stopVerdict_ != v1::VERDICT_UNSPECIFIED && stopVerdict_ != v1::VERDICT_VIOLATED) {
      return {stopVerdict_, stopReason_};
    }
    if (!violated_ && stopping()) {
      // Interrupted while settling or observing after the rollback: the after phase was cut short,
      // which judges nothing (its missing samples are no violation).
      return {v1::VERDICT_ABORTED, stopReason()};
    }
    if (violated_ || !afterOk) {
      return {v1::VERDICT_VIOLATED, fmt::format("steady state violated: {}", firstFailure_) + notJudgedText()};
    }
    return {
        v1::VERDICT_HELD,
        (req_.experiment.hypothesis.probes.empty() ? std::string("the method ran to the end (no steady-state probes)")
         : notJudged_.empty() ? std::string("steady state held before, during and after the faults")
                              // Not "during": an SLO without its minSamples judged nothing there.
                              : std::string("steady state held wherever it was judged")) +
            notJudgedText()};
  }

  // The phase and step of the samples that start from now on.
  void setPhase(const std::string& phase, const std::string& step) {
    if (sampler_) {
      sampler_->setPhase(phase, step);
    }
  }

  // Records and judges every sample the probes finished since the last call (run thread).
  void pump() {
    if (!sampler_) {
      return;
    }
    for (auto& t : sampler_->take()) {
      const Probe& p = req_.experiment.hypothesis.probes[t.probe];
      record(p, t.phase, t.sample, t.at, t.started, t.phase == "during", t.step);
      if (t.phase == "during") {
        for (const auto& slo : req_.experiment.hypothesis.slos) {
          if (slo.probe == p.name) {
            checkSlo(slo, "during", t.at, t.started);
          }
        }
      }
    }
  }

  // Samples of probe in phase so far.
  size_t countIn(const std::string& probe, const std::string& phase, Clock::time_point from) {
    size_t n = 0;
    for (const auto& h : history_[probe]) {
      n += h.phase == phase && h.at >= from ? 1 : 0;
    }
    return n;
  }

  // Observes the phase "before" or "after" and judges it: with a window, for that long; without,
  // until every SLO's probe has the SLO's minSamples samples of the phase and every other probe
  // one (or, should the probes not answer, until each had time for them: the needed samples'
  // periods plus its timeout, plus a second). Then each probe no SLO covers must have passed every
  // sample, and each SLO hold over the phase's samples. An SLO with too few samples: before the
  // method, the steady state is not verified (false); after, the verdict's reason says so.
  bool observePhase(const std::string& phase, std::optional<std::chrono::milliseconds> window) {
    const auto& hyp = req_.experiment.hypothesis;
    if (hyp.probes.empty()) {
      return true;
    }
    // Every sample of the phase counts (each phase is observed once), also one that started just
    // before this call.
    const Clock::time_point from{};
    const auto start = Clock::now();
    std::map<std::string, size_t> need;
    auto deadline = start;
    for (const auto& p : hyp.probes) {
      size_t n = 1;
      for (const auto& slo : hyp.slos) {
        if (slo.probe == p.name) {
          n = std::max<size_t>(n, slo.minSamples);
        }
      }
      need[p.name] = n;
      // A load probe's samples follow one another (ProbeSampler): each takes its load's duration.
      const auto load = loadDuration(p);
      deadline = std::max(deadline, start + std::max(hyp.every, load) * static_cast<int64_t>(n) + load +
                                        probeTimeout(p) + std::chrono::seconds{1});
    }
    if (window) {
      deadline = start + *window;
    }
    failedIn_[phase] = false;
    while (true) {
      pump();
      if (stopping()) {
        break;
      }
      const auto now = Clock::now();
      if (now >= deadline) {
        break;
      }
      if (!window && std::all_of(need.begin(), need.end(),
                                 [&](const auto& kv) { return countIn(kv.first, phase, from) >= kv.second; })) {
        break;
      }
      sampler_->waitUntil(std::min<Clock::time_point>(deadline, now + kAbortPoll));
    }
    bool ok = !failedIn_[phase];
    for (const auto& p : hyp.probes) {
      if (countIn(p.name, phase, from) == 0 && !coveredBySlo(p.name)) {
        ok = false;
        noteFailure(
            fmt::format("probe {} gave no sample {} the method", p.name, phase == "before" ? "before" : "after"));
      }
    }
    const auto at = agent::nowTimestamp();
    for (const auto& slo : hyp.slos) {
      const auto judged = checkSlo(slo, phase, at, Clock::now(), from);
      if (judged == Judged::kFailed) {
        ok = false;
      } else if (judged == Judged::kNotEnoughData) {
        if (phase == "before") {
          ok = false;
        }
      }
    }
    return ok;
  }

  // After the rollback: settle (recorded, not judged), then the after window, judged; then time to
  // recover of every fault step. False when the steady state failed after the faults.
  bool observeAfter() {
    if (!sampler_) {
      return true;
    }
    const auto& hyp = req_.experiment.hypothesis;
    if (hyp.afterSettle.count() > 0) {
      setPhase("settle", "");
      const auto until = Clock::now() + hyp.afterSettle;
      while (!stopping() && Clock::now() < until) {
        pump();
        sampler_->waitUntil(std::min<Clock::time_point>(until, Clock::now() + kAbortPoll));
      }
    }
    setPhase("after", "");
    const bool ok = observePhase("after", hyp.afterWindow);
    const auto horizon = Clock::now();
    sampler_->stop();
    recordRecoveries(horizon);
    return ok;
  }

  // A step.recovered (or step.not_recovered) event per fault step that was reverted: from its
  // last revert until every SLO held again, judged on the samples up to the next fault step's
  // start or, for the last, the end of the after window.
  void recordRecoveries(Clock::time_point horizon) {
    const auto& hyp = req_.experiment.hypothesis;
    std::vector<std::string> uncovered;
    for (const auto& p : hyp.probes) {
      if (!coveredBySlo(p.name)) {
        uncovered.push_back(p.name);
      }
    }
    std::map<std::string, std::vector<TimedSample>> byProbe;
    for (const auto& [probe, samples] : history_) {
      for (const auto& h : samples) {
        if (h.phase != "step") {
          byProbe[probe].push_back(TimedSample{h.at, h.sample});
        }
      }
    }
    for (size_t i = 0; i < groups_.size(); ++i) {
      if (!groups_[i].reverted) {
        continue;
      }
      const std::string& label = groups_[i].label;
      const auto revertAt = *groups_[i].reverted;
      const auto end = i + 1 < groups_.size() ? std::min(horizon, groups_[i + 1].started) : horizon;
      if (end <= revertAt) {
        continue;
      }
      const auto ttr = timeToRecover(hyp.slos, uncovered, byProbe, revertAt, end);
      const auto span = std::chrono::duration_cast<std::chrono::milliseconds>(end - revertAt);
      // Too few samples in the span for an SLO's minSamples: nothing can be judged there, which is
      // not "not recovered" (a 1 s wait at every: 250ms holds 4 samples; the default minSamples is 5).
      std::string tooFew;
      for (const auto& slo : hyp.slos) {
        size_t n = 0;
        if (auto it = byProbe.find(slo.probe); it != byProbe.end()) {
          n = static_cast<size_t>(std::count_if(it->second.begin(), it->second.end(),
                                                [&](const TimedSample& t) { return t.at >= revertAt && t.at < end; }));
        }
        if (!ttr && n < slo.minSamples && tooFew.empty()) {
          tooFew = fmt::format("{} sample(s) of probe {} in the {} after its revert, fewer than SLO {}'s minSamples {}",
                               n, slo.probe, formatDuration(span), slo.name, slo.minSamples);
        }
      }
      v1::RunEvent e = makeEvent(
          "", ttr ? "step.recovered" : "step.not_recovered",
          ttr ? fmt::format("step {}: recovered {} after its revert (every SLO held again)", label,
                            formatLatency(std::chrono::duration_cast<std::chrono::microseconds>(*ttr)))
          : tooFew.empty()
              ? fmt::format("step {}: not recovered within the {} observed after its revert", label,
                            formatDuration(span))
              : fmt::format("step {}: recovery not judged: {} (a longer wait before the next step, or a shorter "
                            "every, lets it be judged)",
                            label, tooFew));
      if (ttr || tooFew.empty()) {
        *e.mutable_recovery() =
            toProto(std::chrono::duration_cast<std::chrono::nanoseconds>(ttr ? *ttr : end - revertAt));
      }
      recordEvent(e);
      if (sink_) {
        sink_(e);
      }
    }
  }

  // How long one sample of p drives load; 0 for a probe without `load:`.
  static std::chrono::milliseconds loadDuration(const Probe& p) {
    if (p.http.load) {
      return p.http.load->duration;
    }
    return p.tcp.load ? p.tcp.load->duration : std::chrono::milliseconds{0};
  }

  // The longest a sample of p may take past its load (loadDuration()).
  static std::chrono::milliseconds probeTimeout(const Probe& p) {
    switch (p.kind) {
      case ProbeKind::kHttp:
        return p.http.timeout;
      case ProbeKind::kTcp:
        return p.tcp.timeout;
      case ProbeKind::kCommand:
        return p.command.timeout;
      case ProbeKind::kPrometheus:
        return p.prometheus.timeout;
      case ProbeKind::kRedis:
        return p.redis.timeout;
      case ProbeKind::kPostgres:
        return p.postgres.timeout;
      case ProbeKind::kGrpc:
        return p.grpc.timeout;
      case ProbeKind::kDns:
        return p.dns.timeout;
    }
    return std::chrono::milliseconds{5000};
  }

  // "; not judged: SLO x had not enough data while the faults were held (3 of 5 samples)", or "".
  std::string notJudgedText() const {
    std::string out;
    for (const auto& [slo, why] : notJudged_) {
      out += fmt::format("{}SLO {} {}", out.empty() ? "" : ", ", slo, why);
    }
    return out.empty() ? out : "; not judged: " + out;
  }

  // Faults (and probe steps) that start together: one fault step, or a parallel group.
  struct Group {
    struct Member {
      const FaultStep* fault;
      std::string label;  // "2", or "3.1" in a parallel group
    };
    std::vector<Member> faults;
    std::vector<const ProbeStep*> probes;
    std::chrono::milliseconds wait{0};                                     // the longest wait of a parallel group
    std::vector<std::pair<std::string, std::chrono::milliseconds>> waits;  // label, duration
    std::string label;                                                     // the step's: "2"
  };

  // Injects every fault of the group on every target with one start time, holds each for its
  // duration while sampling the steady state, reverts each as its duration ends. Returns "" on
  // success, else the reason the run must stop (every fault of the group is reverted by then).
  std::string runGroup(const Group& group, const std::vector<v1::AgentInfo>& targets) {
    // One start time for every host: far enough ahead that every Inject arrives before it.
    const auto lead = options_.startLead;
    const auto startWall = std::chrono::system_clock::now() + lead;
    const auto start = Clock::now() + lead;
    google::protobuf::Timestamp startAt;
    {
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(startWall.time_since_epoch()).count();
      startAt.set_seconds(ns / 1'000'000'000);
      startAt.set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
    }
    groups_.push_back(GroupTimes{group.label, Clock::now(), std::nullopt});
    // From the first Inject on, a fault may be in place: the samples are the step's.
    setPhase("during", group.label);
    std::vector<std::vector<std::string>> idsOf(group.faults.size());
    std::vector<std::string> ids;
    for (size_t k = 0; k < group.faults.size(); ++k) {
      const FaultStep& f = *group.faults[k].fault;
      const std::string named = faultStepText(f);
      event("", "step.fault",
            fmt::format("step {}: {} for {} on {} host(s)", group.faults[k].label, named, formatDuration(f.duration),
                        targets.size()));
      for (const auto& t : targets) {
        const std::string id = fmt::format("{}/{}/{}", req_.runId, group.faults[k].label, t.agent_id());
        {
          std::lock_guard lock(mutex_);
          HeldFault h;
          h.agentId = t.agent_id();
          h.host = t.hostname();
          h.name = agentName(t.agent_id(), t.hostname());
          h.kind = std::string(faultKindName(f.spec));
          h.until = start + f.duration;
          held_[id] = h;
        }
        v1::ControllerMessage msg;
        auto* inj = msg.mutable_inject();
        inj->set_fault_id(id);
        inj->set_run_id(req_.runId);
        *inj->mutable_spec() = f.spec;
        *inj->mutable_duration() = toProto(f.duration);
        *inj->mutable_start_at() = startAt;
        if (!fleet_.send(t.agent_id(), msg)) {
          std::string why = fmt::format("agent {} disconnected before the fault could be sent", t.agent_id());
          std::optional<v1::RunEvent> end;
          {
            std::lock_guard lock(mutex_);
            auto& h = held_[id];
            h.state = v1::FAULT_STATE_FAILED;
            h.error = why;
            h.failureRecorded = true;
            end = endOf(id, h, kEndFailed, agent::nowTimestamp(), why);
          }
          recordFailure(id, fmt::format("fault {}: {}", id, why));
          emitEnd(end);
        }
        idsOf[k].push_back(id);
        ids.push_back(id);
      }
    }
    for (const auto& [label, d] : group.waits) {
      event("", "step.wait", fmt::format("step {}: wait {}", label, formatDuration(d)));
    }
    // Wait until every agent has answered.
    std::vector<std::pair<std::string, std::string>> unanswered;  // fault id, fault.failed text
    {
      std::unique_lock lock(mutex_);
      cv_.wait_until(lock, start + options_.applyTimeout, [&] {
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
          h.error = fmt::format("no answer within {} of the start time", formatDuration(options_.applyTimeout));
          h.unconfirmed = true;
          h.failureRecorded = true;
          unanswered.emplace_back(id, fmt::format("fault {}: {}", id, h.error));
        }
      }
    }
    for (const auto& [id, text] : unanswered) {
      recordFailure(id, text);  // its fault.ended follows its revert, which the agent may confirm
    }
    std::string failure;
    {
      std::lock_guard lock(mutex_);
      for (size_t k = 0; k < group.faults.size() && failure.empty(); ++k) {
        for (const auto& id : idsOf[k]) {
          const auto& h = held_[id];
          if (h.state == v1::FAULT_STATE_FAILED) {
            failure = fmt::format("{} failed on agent {}: {}", faultStepText(*group.faults[k].fault), h.name, h.error);
            break;
          }
        }
      }
    }
    if (!failure.empty()) {
      auto leftover = revertHeldNoting("a fault failed to apply");
      return leftover.empty() ? failure : failure + "; " + leftover;
    }
    recordSkew(group, idsOf, startAt);
    pump();
    for (const auto* p : group.probes) {
      sampleNamed(p->probe, !group.faults.empty(), group.label);
    }
    if (stopVerdict_ != v1::VERDICT_UNSPECIFIED) {
      // A probe step of the group saw a stop condition: revert now; no later step starts.
      auto leftover = revertHeldNoting(stopReason_);
      return leftover.empty() ? stopReason_ : stopReason_ + "; " + leftover;
    }

    // Hold the faults, judging the probes' samples (each probe samples on its own schedule, see
    // ProbeSampler) while any is held; revert each at its end.
    auto groupEnd = start + group.wait;
    for (const auto& m : group.faults) {
      groupEnd = std::max(groupEnd, start + m.fault->duration);
    }
    std::vector<bool> ended(group.faults.size(), false);
    const bool probing = sampler_ != nullptr;
    while (Clock::now() < groupEnd) {
      for (size_t k = 0; k < group.faults.size(); ++k) {
        if (!ended[k] && Clock::now() >= start + group.faults[k].fault->duration) {
          ended[k] = true;
          if (auto leftover = revertHeld("fault duration elapsed", idsOf[k], kEndExpired); !leftover.empty()) {
            auto rest = revertHeldNoting("rollback after a failed revert");
            return rest.empty() ? leftover : leftover + "; " + rest;
          }
        }
      }
      const bool active = std::find(ended.begin(), ended.end(), false) != ended.end();
      if (probing) {
        if (!active) {
          setPhase("wait", group.label);  // the rest of a parallel group's wait
        }
        pump();
        if (stopVerdict_ != v1::VERDICT_UNSPECIFIED) {
          // A stop condition: revert now; no later step starts.
          auto leftover = revertHeldNoting(stopReason_);
          return leftover.empty() ? stopReason_ : stopReason_ + "; " + leftover;
        }
      }
      // Wake for the next fault's end, the group's end, a fault lost, or (polled) an abort and
      // the probes' samples.
      auto until = std::min(groupEnd, Clock::now() + kAbortPoll);
      for (size_t k = 0; k < group.faults.size(); ++k) {
        if (!ended[k]) {
          until = std::min(until, start + group.faults[k].fault->duration);
        }
      }
      std::unique_lock lock(mutex_);
      cv_.wait_until(lock, until, [&] { return !lost_.empty(); });
      if (!lost_.empty()) {
        const std::string lost = lost_;
        lock.unlock();
        auto leftover = revertHeldNoting("a fault ended early");
        return leftover.empty() ? lost : lost + "; " + leftover;
      }
      lock.unlock();
      if (stopping()) {
        auto leftover = revertHeldNoting("run aborted: " + stopReason(), abortReason());
        return leftover.empty() ? "aborted" : leftover;
      }
    }
    return revertHeldNoting("fault duration elapsed", kEndExpired);
  }

  // revertHeld() of every fault still held; the moment it returns is the group's revert (time to
  // recover counts from it).
  std::string revertHeldNoting(const std::string& why, std::string_view endAs = kEndReverted) {
    auto left = revertHeld(why, {}, endAs);
    if (!groups_.empty() && !groups_.back().reverted) {
      groups_.back().reverted = Clock::now();
    }
    return left;
  }

  // Records a fault.failed event the agent could not send (it is gone, or never answered).
  // Called without mutex_ held.
  void recordFailure(const std::string& faultId, const std::string& text) {
    v1::RunEvent e;
    {
      std::lock_guard lock(mutex_);
      e = faultEvent(faultId, held_[faultId], "fault.failed", text);
    }
    recordEvent(e);
    if (sink_) {
      sink_(e);
    }
  }

  // An event about one fault: its agent's hostname as host, its agent id and its id.
  v1::RunEvent faultEvent(const std::string& faultId, const HeldFault& h, const std::string& kind,
                          const std::string& message) {
    v1::RunEvent e = makeEvent(h.host, kind, message);
    e.set_fault_id(faultId);
    e.set_agent_id(h.agentId);
    return e;
  }

  // The fault.ended event of h, ended at `at` for reason (kEnd*), or nullopt when h has one
  // already: exactly one per fault, whatever its kind and whoever ended it. Called with mutex_
  // held; the caller records it (emitEnd()) once it lets go.
  std::optional<v1::RunEvent> endOf(const std::string& faultId, HeldFault& h, std::string_view reason,
                                    const google::protobuf::Timestamp& at, const std::string& detail) {
    if (h.ended) {
      return std::nullopt;
    }
    h.ended = true;
    std::string held;
    if (h.applied) {
      const int64_t us =
          (at.seconds() - h.appliedAt.seconds()) * 1'000'000 + (at.nanos() - h.appliedAt.nanos()) / 1'000;
      held = fmt::format(" after {:.3f}s", static_cast<double>(std::max<int64_t>(us, 0)) / 1e6);
    } else {
      held = " (never applied)";
    }
    v1::RunEvent e = faultEvent(faultId, h, "fault.ended",
                                fmt::format("{} {}{}{}", h.kind, reason, held, detail.empty() ? "" : ": " + detail));
    *e.mutable_at() = at;
    e.set_fault_kind(h.kind);
    e.set_end_reason(std::string(reason));
    if (h.applied) {
      *e.mutable_applied_at() = h.appliedAt;
    }
    return e;
  }

  void emitEnd(const std::optional<v1::RunEvent>& e) {
    if (e) {
      recordEvent(*e);
      if (sink_) {
        sink_(*e);
      }
    }
  }

  // Why a fault the agent reports reverted or expired ended (kEnd*). Called with mutex_ held.
  std::string_view endReason(const HeldFault& h, const v1::FaultReport& r) const {
    if (r.end_cause() == v1::FAULT_END_CAUSE_LEASE) {
      return kEndLease;
    }
    if (r.end_cause() == v1::FAULT_END_CAUSE_REVERT_ALL) {
      return kEndHalted;
    }
    if (!h.applied && h.failureRecorded) {
      return kEndFailed;  // it never applied as asked (no answer in time); reverted in case it did
    }
    if (h.changed) {
      return kEndLost;
    }
    if (r.state() == v1::FAULT_STATE_EXPIRED && Clock::now() + kExpiryTolerance >= h.until) {
      return kEndExpired;
    }
    if (h.revertRequested) {
      return h.endAs;
    }
    return stop_.requested() && stop_.cause() == StopCause::kHalt ? kEndHalted : kEndLost;
  }

  // The spread of the moments the hosts applied each fault of a group (their APPLIED reports'
  // times, each on its host's clock), recorded as a step.skew event per fault.
  void recordSkew(const Group& group, const std::vector<std::vector<std::string>>& idsOf,
                  const google::protobuf::Timestamp& startAt) {
    for (size_t k = 0; k < group.faults.size(); ++k) {
      std::optional<int64_t> first;
      std::optional<int64_t> last;
      {
        std::lock_guard lock(mutex_);
        for (const auto& id : idsOf[k]) {
          const auto& at = held_[id].appliedAt;
          const int64_t ns = at.seconds() * 1'000'000'000 + at.nanos();
          first = first ? std::min(*first, ns) : ns;
          last = last ? std::max(*last, ns) : ns;
        }
      }
      if (!first) {
        continue;
      }
      const int64_t startNs = startAt.seconds() * 1'000'000'000 + startAt.nanos();
      const auto skew = std::chrono::nanoseconds{*last - *first};
      v1::RunEvent e = makeEvent(
          "", "step.skew",
          fmt::format("step {}: {} host(s) applied within {:.3f} ms of each other; the last {:.3f} ms after the start "
                      "time",
                      group.faults[k].label, idsOf[k].size(), static_cast<double>(skew.count()) / 1e6,
                      static_cast<double>(*last - startNs) / 1e6));
      *e.mutable_start_at() = startAt;
      *e.mutable_skew() = toProto(skew);
      recordEvent(e);
      if (sink_) {
        sink_(e);
      }
    }
  }

  // Reverts every fault still held by this run (or those of `only`) and waits for each agent to
  // confirm. endAs: the end reason (kEnd*) of a fault whose revert is confirmed. Returns "" when
  // all are confirmed reverted (or expired), else what is left.
  std::string revertHeld(const std::string& why, const std::vector<std::string>& only = {},
                         std::string_view endAs = kEndReverted) {
    std::vector<std::pair<std::string, std::string>> toRevert;  // fault id, agent id
    {
      std::lock_guard lock(mutex_);
      for (auto& [id, h] : held_) {
        if (!only.empty() && std::find(only.begin(), only.end(), id) == only.end()) {
          continue;
        }
        if (h.state == v1::FAULT_STATE_APPLIED || h.unconfirmed) {
          toRevert.emplace_back(id, h.agentId);
          if (!h.revertRequested) {
            h.endAs = endAs;
          }
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
            "agent {} disconnected: if it still runs, its lease reverts the fault; if it died, the fault "
            "stays until the agent restarts or someone removes it",
            agentId);
      }
    }
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, options_.revertTimeout, [&] {
      for (const auto& [id, agentId] : toRevert) {
        const auto& h = held_[id];
        if (!settled(h.state) && !h.agentGone && !h.revertGaveUp) {
          return false;
        }
      }
      return true;
    });
    std::string left;
    std::vector<v1::RunEvent> failures;  // fault.failed events
    std::vector<v1::RunEvent> ends;
    for (const auto& [id, agentId] : toRevert) {
      auto& h = held_[id];
      if (settled(h.state)) {
        continue;
      }
      // A gone agent or a permanent failure was not waited for: say so, not that a timeout passed.
      const std::string one =
          h.revertGaveUp ? fmt::format("fault {} on agent {} not reverted ({}): {}", id, h.name, why, h.error)
          : h.agentGone
              ? fmt::format("fault {} on agent {} not confirmed reverted ({}): {}", id, h.name, why,
                            h.error.empty() ? fmt::format("agent {} disconnected", agentId) : h.error)
              : fmt::format("fault {} on agent {} not confirmed reverted within {} ({}){}", id, h.name,
                            formatDuration(options_.revertTimeout), why, h.error.empty() ? "" : ": " + h.error);
      left += (left.empty() ? "" : "; ") + one;
      if (!h.failureRecorded) {
        h.failureRecorded = true;
        failures.push_back(faultEvent(id, h, "fault.failed", one));
      }
      h.state = v1::FAULT_STATE_FAILED;
      h.unconfirmed = false;
      // Nobody can confirm its end: its agent is gone (lost), or its revert failed or timed out.
      if (auto end = endOf(id, h, h.agentGone && !h.revertGaveUp ? kEndLost : kEndFailed, agent::nowTimestamp(), one)) {
        ends.push_back(std::move(*end));
      }
    }
    // Forget settled faults, each with its end recorded.
    for (auto it = held_.begin(); it != held_.end();) {
      auto s = it->second.state;
      if (settled(s) || s == v1::FAULT_STATE_FAILED) {
        if (auto end = endOf(it->first, it->second, settled(s) ? it->second.endAs : kEndFailed, agent::nowTimestamp(),
                             it->second.error)) {
          ends.push_back(std::move(*end));
        }
        it = held_.erase(it);
      } else {
        ++it;
      }
    }
    lock.unlock();
    for (const auto& e : failures) {
      recordEvent(e);
      if (sink_) {
        sink_(e);
      }
    }
    for (const auto& end : ends) {
      emitEnd(end);
    }
    return left;
  }

  void onReport(const std::string& agentId, const v1::FaultReport& r) {
    v1::RunEvent e;
    {
      std::lock_guard lock(mutex_);
      auto it = held_.find(r.fault_id());
      if (it == held_.end() || it->second.agentId != agentId) {
        return;  // not this run's
      }
      if (r.state() == v1::FAULT_STATE_FAILED) {
        it->second.failureRecorded = true;
      }
      e = faultEvent(r.fault_id(), it->second, faultEventKind(r.state()), r.error().empty() ? r.detail() : r.error());
    }
    // The event is recorded before the state changes: the run thread acts on the new state
    // (records step.skew, starts the next step), and the timeline must read in that order.
    e.mutable_at()->CopyFrom(r.at());
    recordEvent(e);
    if (sink_) {
      sink_(e);
    }
    std::optional<v1::RunEvent> end;
    {
      std::lock_guard lock(mutex_);
      auto it = held_.find(r.fault_id());
      if (it == held_.end() || it->second.agentId != agentId) {
        return;
      }
      auto& h = it->second;
      const bool wasApplied = h.state == v1::FAULT_STATE_APPLIED;
      if (options_.metrics != nullptr) {
        noteMetrics(h, wasApplied, r);
      }
      if (r.state() == v1::FAULT_STATE_FAILED && wasApplied) {
        if (r.error_code() == v1::FAULT_ERROR_AGENT_GONE) {
          h.agentGone = true;
        } else if (r.error_code() == v1::FAULT_ERROR_PERMANENT) {
          h.revertGaveUp = true;  // the agent dropped the fault: no later report will come
          end = endOf(r.fault_id(), h, kEndFailed, r.at(), r.error());
        } else {
          h.changed = h.changed || !h.revertRequested;  // the watch found it changed behind faultline's back
          // A revert failed and the agent retries it; or, before the run asked for the revert, the
          // agent found the fault no longer in place (someone replaced its qdisc). Either way the
          // agent still holds the fault: the run's revert goes to it (and ends the run, below).
          h.revertFailed = true;
        }
      } else {
        h.state = r.state();
      }
      if (r.state() == v1::FAULT_STATE_APPLIED) {
        h.unconfirmed = false;
        h.appliedAt = r.at();
        h.applied = true;
      }
      if (settled(r.state())) {
        end = endOf(r.fault_id(), h, endReason(h, r), r.at(), r.detail());
      } else if (r.state() == v1::FAULT_STATE_FAILED && !wasApplied) {
        end = endOf(r.fault_id(), h, kEndFailed, r.at(), r.error());  // its apply failed or was refused
      }
      // A fault that ends, or whose agent goes away, before the run asked for its end: the
      // experiment did not run as written, whatever the probes say.
      const bool expiredOnTime = r.state() == v1::FAULT_STATE_EXPIRED && Clock::now() + kExpiryTolerance >= h.until;
      if (wasApplied && !h.revertRequested && r.state() != v1::FAULT_STATE_APPLIED && !expiredOnTime && lost_.empty()) {
        lost_ = fmt::format("fault {} on agent {} ended before its duration: {}", r.fault_id(), h.name,
                            r.error().empty() ? r.detail() : r.error());
      }
      h.error = r.error();
    }
    emitEnd(end);
    cv_.notify_all();
  }

  // The metrics of one report of a fault of this run (under mutex_, before h changes): a fault
  // held from APPLIED until REVERTED, EXPIRED, or a failure that ends it (the agent gone, a revert
  // that can never succeed); every failed revert counted.
  void noteMetrics(const HeldFault& h, bool wasApplied, const v1::FaultReport& r) {
    auto& m = *options_.metrics;
    if (r.state() == v1::FAULT_STATE_APPLIED && !wasApplied) {
      m.faultApplied(req_.runId, h.kind);
    } else if (wasApplied && settled(r.state())) {
      m.faultEnded(req_.runId, h.kind);
    } else if (wasApplied && r.state() == v1::FAULT_STATE_FAILED) {
      if (r.error_code() != v1::FAULT_ERROR_AGENT_GONE) {
        m.revertFailed(h.kind);
      }
      if (r.error_code() == v1::FAULT_ERROR_AGENT_GONE || r.error_code() == v1::FAULT_ERROR_PERMANENT) {
        m.faultEnded(req_.runId, h.kind);
      }
    }
  }

  // A probe step: one sample of the named probe (phase "step"), taken on the run thread. A failed
  // sample violates the hypothesis whether or not an SLO covers the probe (a step judges its one
  // sample). A failed guard stops the method (aborted) before the next step; while faults are held
  // (a probe step in a parallel group) any other failure stops it as violated.
  void sampleNamed(const std::string& name, bool faultsHeld, const std::string& stepLabel) {
    for (const auto& p : req_.experiment.hypothesis.probes) {
      if (p.name == name) {
        const auto at = agent::nowTimestamp();
        const auto when = Clock::now();
        record(p, "step", probes_.run(p), at, when, faultsHeld, stepLabel);
        return;
      }
    }
  }

  // Records one sample of p and judges it alone (SLOs are judged by the caller). faultsHeld: the
  // sample was taken while faults are held, so a failure is a stop condition. A guard's failure
  // after the before phase (during, wait, step) stops the method before its next step. A failure
  // in a wait or settle phase is recorded only. Marks failedIn_[phase] when the sample fails the
  // steady state by itself.
  void record(const Probe& p, const std::string& phase, const Sample& s, const google::protobuf::Timestamp& at,
              Clock::time_point when, bool faultsHeld, const std::string& stepLabel) {
    v1::ProbeSample rec;
    *rec.mutable_at() = at;
    rec.set_probe(p.name);
    rec.set_phase(phase);
    rec.set_ok(s.ok);
    rec.set_latency_ms(static_cast<double>(s.latency.count()) / 1000.0);
    rec.set_detail(redact(s.detail));
    rec.set_kind(std::string(probeKindName(p.kind)));
    rec.set_guard(p.guard);
    rec.set_step(stepLabel);
    if (s.value) {
      rec.set_value(*s.value);
    }
    recorded(fmt::format("sample of probe {} ({})", p.name, phase), [&] { store_.addSample(req_.runId, rec); });
    if (options_.metrics != nullptr) {
      options_.metrics->probeSampled(rec);
    }
    // In start order: samples of one probe overlap, and a late one ends after later ones.
    auto& history = history_[p.name];
    const auto pos = std::upper_bound(history.begin(), history.end(), when,
                                      [](Clock::time_point t, const HistorySample& h) { return t < h.at; });
    history.insert(pos, HistorySample{when, phase, SliSample{s.ok, rec.latency_ms(), s.value, s.load}});
    v1::RunEvent e =
        makeEvent("", s.ok ? "probe.ok" : "probe.failed", fmt::format("{} ({}): {}", p.name, phase, s.detail));
    *e.mutable_at() = at;
    if (sink_) {
      sink_(e);
    }
    if (s.ok || (phase == "before" && beforeDone_)) {
      return;  // (a sample of the before phase that ended after it was judged: recorded only)
    }
    const bool step = phase == "step";
    if (p.guard && faultsHeld) {
      stopWith(v1::VERDICT_ABORTED,
               fmt::format("stop condition: guard probe {} failed while the fault was active: {}", p.name, s.detail));
    } else if (p.guard && (phase == "wait" || step || phase == "during")) {
      stopWith(v1::VERDICT_ABORTED,
               fmt::format("stop condition: guard probe {} failed {} step {} of the method: {}", p.name,
                           step ? "at the probe step," : "during", stepLabel.empty() ? "-" : stepLabel, s.detail));
    }
    if (phase == "wait" || phase == "settle") {
      return;  // recorded (and watched by guards); judges nothing else
    }
    if (coveredBySlo(p.name) && !p.guard && !step) {
      return;  // judged by its SLOs, over a window
    }
    const std::string what = step ? fmt::format("probe {} failed at a probe step of the method: {}", p.name, s.detail)
                             : phase == "before" ? fmt::format("probe {}: {}", p.name, s.detail)
                                                 : fmt::format("probe {} failed {} the fault{}: {}", p.name,
                                                               phase == "during" ? "while" : phase,
                                                               phase == "during" ? " was active" : "s", s.detail);
    if (phase == "during" || step) {
      violated_ = true;
    }
    if (faultsHeld) {
      stopWith(v1::VERDICT_VIOLATED,
               step ? "steady state violated: " + what
                    : fmt::format("steady state violated: probe {} failed while the fault was active: {}", p.name,
                                  s.detail));
    }
    noteFailure(what);
    failedIn_[phase] = true;
  }

  bool coveredBySlo(const std::string& probe) const {
    const auto& slos = req_.experiment.hypothesis.slos;
    return std::any_of(slos.begin(), slos.end(), [&](const Slo& s) { return s.probe == probe; });
  }

  void noteFailure(std::string what) {
    if (firstFailure_.empty()) {
      firstFailure_ = std::move(what);
    }
  }

  // The first stop condition wins.
  void stopWith(v1::Verdict verdict, std::string reason) {
    if (stopVerdict_ != v1::VERDICT_UNSPECIFIED) {
      return;
    }
    stopVerdict_ = verdict;
    stopReason_ = std::move(reason);
    event("", "stop.condition", stopReason_);
  }

  enum class Judged { kHeld, kFailed, kNotEnoughData, kNoSamples };

  // Evaluates slo over its samples of this phase (during: those of its window ending at now;
  // before, after: those since `from`), records the check, and says how it was judged. During the
  // faults a violation or a burn above maxBurnRate sets the stop condition; a window of too few
  // samples judges nothing.
  Judged checkSlo(const Slo& slo, const std::string& phase, const google::protobuf::Timestamp& at,
                  Clock::time_point now, Clock::time_point from = {}) {
    std::vector<SliSample> window;
    const auto& history = history_[slo.probe];
    if (phase == "during") {
      // Newest first, up to the window's start: a long run does not rescan its whole history.
      for (auto it = history.rbegin(); it != history.rend() && it->at + slo.window > now; ++it) {
        if (it->phase == phase && it->at <= now) {
          window.push_back(it->sample);
        }
      }
      std::reverse(window.begin(), window.end());
    } else {
      for (const auto& h : history) {
        if (h.phase == phase && h.at >= from) {
          window.push_back(h.sample);
        }
      }
    }
    if (window.empty() && phase == "during") {
      return Judged::kNoSamples;
    }
    v1::SloCheck check = evaluateSlo(slo, window);
    *check.mutable_at() = at;
    check.set_phase(phase);
    recorded(fmt::format("check of SLO {} ({})", slo.name, phase), [&] { store_.addSloCheck(req_.runId, check); });
    if (options_.metrics != nullptr) {
      options_.metrics->sloChecked(req_.runId, check);
    }
    const std::string measured = describeSloCheck(check);
    if (check.not_enough_data()) {
      if (phase == "during") {
        if (!judgedDuring_.count(slo.name)) {
          notJudged_[slo.name] = fmt::format("while the faults were held: {}", measured);
        }
      } else if (phase == "before") {
        noteFailure(fmt::format("SLO {} ({}): {}", slo.name, slo.objective, measured));
      } else {
        notJudged_[slo.name + " "] = fmt::format("after the faults: {}", measured);
      }
      return Judged::kNotEnoughData;
    }
    if (phase == "during") {
      judgedDuring_.insert(slo.name);
      notJudged_.erase(slo.name);
    }
    if (slo.maxBurnRate && check.burn_rate() > *slo.maxBurnRate && phase == "during") {
      stopWith(v1::VERDICT_ABORTED,
               fmt::format("stop condition: SLO {} burns its error budget at {:.1f}x, above maxBurnRate {:g} ({})",
                           slo.name, check.burn_rate(), *slo.maxBurnRate, measured));
    }
    if (check.ok()) {
      return Judged::kHeld;
    }
    const std::string what = phase == "before" ? fmt::format("SLO {} ({}): {}", slo.name, slo.objective, measured)
                                               : fmt::format("SLO {} ({}) violated {} the fault{}: {}", slo.name,
                                                             slo.objective, phase == "during" ? "while" : phase,
                                                             phase == "during" ? " was active" : "s", measured);
    event("", "slo.violated", fmt::format("{} ({})", what, phase));
    if (phase == "during") {
      violated_ = true;
      stopWith(v1::VERDICT_VIOLATED, "steady state violated: " + what);
    }
    noteFailure(what);
    return Judged::kFailed;
  }

  v1::RunEvent makeEvent(const std::string& host, const std::string& kind, const std::string& message) {
    v1::RunEvent e;
    e.set_run_id(req_.runId);
    *e.mutable_at() = agent::nowTimestamp();
    e.set_host(host);
    e.set_kind(kind);
    e.set_message(redact(message));
    return e;
  }

  // text with every secret variable's value replaced by ${NAME} (RunRequest::secrets).
  std::string redact(std::string text) const {
    for (const auto& [name, value] : req_.secrets) {
      if (value.empty()) {
        continue;
      }
      const std::string reference = "${" + name + "}";
      for (size_t at = text.find(value); at != std::string::npos; at = text.find(value, at + reference.size())) {
        text.replace(at, value.size(), reference);
      }
    }
    return text;
  }

  void event(const std::string& host, const std::string& kind, const std::string& message) {
    auto e = makeEvent(host, kind, message);
    recordEvent(e);
    if (sink_) {
      sink_(e);
    }
  }

  // A write to the record store that failed (a full disk, an I/O error) never escapes: the first
  // failure stops the run (its faults are reverted, the verdict is aborted), and every write that
  // could not be made is counted for the verdict's reason. Any thread (reports arrive on gRPC's).
  template <typename Write>
  bool recorded(const std::string& what, Write&& write) {
    try {
      write();
      return true;
    } catch (const std::exception& ex) {
      noteUnrecorded(what, ex.what());
      return false;
    }
  }

  void recordEvent(const v1::RunEvent& e) {
    recorded(e.host().empty() ? e.kind() : fmt::format("{} on {}", e.kind(), e.host()), [&] { store_.addEvent(e); });
  }

  void noteUnrecorded(const std::string& what, const std::string& error) {
    bool first = false;
    {
      std::lock_guard lock(unrecordedMutex_);
      if (unrecordedCount_ == 0) {
        storeError_ = error;
        first = true;
      }
      ++unrecordedCount_;
      if (unrecorded_.size() < kMaxUnrecordedNamed) {
        unrecorded_.push_back(what);
      }
    }
    spdlog::error("run {}: not recorded: {}: {}", req_.runId, what, error);
    if (first) {
      storeFailed_.store(true);
      cv_.notify_all();
    }
  }

  std::string storeFailure() {
    std::lock_guard lock(unrecordedMutex_);
    return fmt::format("the record store failed ({}): run aborted", storeError_);
  }

  // "" when everything was recorded; else what was not: "not recorded: 3 write(s) (fault.reverted
  // on web-1, sample of probe web (during), ...)", the first kMaxUnrecordedNamed of them named.
  std::string unrecordedSummary() {
    std::lock_guard lock(unrecordedMutex_);
    if (unrecordedCount_ == 0) {
      return "";
    }
    std::string names;
    for (const auto& w : unrecorded_) {
      names += (names.empty() ? "" : ", ") + w;
    }
    if (unrecordedCount_ > unrecorded_.size()) {
      names += fmt::format(", and {} more", unrecordedCount_ - unrecorded_.size());
    }
    return fmt::format("not recorded: {} write(s) ({})", unrecordedCount_, names);
  }

  // An abort request, or a failed write to the record store.
  bool stopping() const { return stop_.requested() || storeFailed_.load(); }

  // The end reason of faults reverted because the run stops: halted (faultline halt) or aborted.
  std::string_view abortReason() const {
    return stop_.requested() && stop_.cause() == StopCause::kHalt ? kEndHalted : kEndAborted;
  }

  std::string stopReason() {
    if (stop_.requested()) {
      return stop_.reason();
    }
    return storeFailure();
  }

  // Sleeps up to d, judging the probes' samples as they come; true when the run must stop (before
  // or during the wait). Returns false early when a sample set the stop condition (a guard failed).
  bool waitStopping(std::chrono::milliseconds d) {
    const auto until = Clock::now() + d;
    while (!stopping()) {
      pump();
      if (stopVerdict_ != v1::VERDICT_UNSPECIFIED) {
        return false;
      }
      const auto now = Clock::now();
      if (now >= until) {
        return false;
      }
      const auto next = std::min<Clock::time_point>(until, now + kAbortPoll);
      if (sampler_) {
        sampler_->waitUntil(next);
      } else {
        stop_.waitFor(next - now);
      }
    }
    return true;
  }

  static constexpr size_t kMaxUnrecordedNamed = 20;

  Fleet& fleet_;
  ProbeRunner& probes_;
  RecordStore& store_;
  const RunEngine::EventSink& sink_;
  const EngineOptions& options_;
  const RunRequest& req_;
  const StopSignal& stop_;
  int listener_ = 0;
  std::mutex mutex_;
  std::string lost_;  // why a held fault ended before the run asked (first one)
  std::condition_variable cv_;
  std::map<std::string, HeldFault> held_;
  bool violated_ = false;
  std::string firstFailure_;
  struct HistorySample {
    Clock::time_point at;
    std::string phase;
    SliSample sample;
  };
  std::map<std::string, std::vector<HistorySample>> history_;  // per probe, in time order (run thread only)
  std::unique_ptr<ProbeSampler> sampler_;                      // null without probes
  bool beforeDone_ = false;                                    // the before phase was judged
  std::map<std::string, bool> failedIn_;                       // phase: a sample failed it by itself
  std::set<std::string> judgedDuring_;                         // SLOs judged on enough data during faults
  std::map<std::string, std::string> notJudged_;               // SLO: why it was never judged
  struct GroupTimes {
    std::string label;
    Clock::time_point started;
    std::optional<Clock::time_point> reverted;  // when every fault of the group was reverted
  };
  std::vector<GroupTimes> groups_;                     // every fault step or parallel group started, in order
  v1::Verdict stopVerdict_ = v1::VERDICT_UNSPECIFIED;  // set by the first stop condition
  std::string stopReason_;
  std::atomic<bool> storeFailed_{false};
  std::mutex unrecordedMutex_;
  std::string storeError_;               // the first failed write's error
  size_t unrecordedCount_ = 0;           // writes that failed
  std::vector<std::string> unrecorded_;  // the first kMaxUnrecordedNamed of them, named
};

}  // namespace

RunEngine::RunEngine(Fleet& fleet, ProbeRunner& probes, RecordStore& store, EventSink sink, EngineOptions options)
    : fleet_(fleet), probes_(probes), store_(store), sink_(std::move(sink)), options_(options) {}

v1::Verdict RunEngine::run(const RunRequest& request, const StopSignal& stop) {
  RunState state(fleet_, probes_, store_, sink_, options_, request, stop);
  return state.execute();
}

}  // namespace faultline::controller
