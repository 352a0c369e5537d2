#include "controller/engine/targets.h"

#include <algorithm>
#include <cmath>
#include <random>

#include <fmt/format.h>

#include "agent/faults/spec.h"
#include "controller/engine/capabilities.h"
#include "controller/report/run_format.h"

namespace faultline::controller {

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

}  // namespace

tl::expected<ResolvedTargets, std::string> resolveTargets(const Targets& targets, std::vector<v1::AgentInfo> agents,
                                                          uint64_t seed) {
  std::sort(agents.begin(), agents.end(),
            [](const v1::AgentInfo& a, const v1::AgentInfo& b) { return a.agent_id() < b.agent_id(); });
  ResolvedTargets out;
  std::vector<v1::AgentInfo> matching;
  for (auto& a : agents) {
    if (matches(a, targets.selector)) {
      matching.push_back(std::move(a));
    }
  }
  out.matched = matching.size();
  const std::string mode = modeText(targets);
  if (matching.empty()) {
    return tl::unexpected(
        fmt::format("no connected agent matches the selector {} ({} agent(s) connected); nothing "
                    "was injected",
                    selectorText(targets.selector), agents.size()));
  }
  const auto names = [](const std::vector<v1::AgentInfo>& hosts) {
    std::string text;
    for (const auto& t : hosts) {
      text += fmt::format("{}{}", text.empty() ? "" : ", ", agentName(t.agent_id(), t.hostname()));
    }
    return text;
  };
  size_t want = matching.size();
  bool random = false;
  switch (targets.mode) {
    case TargetMode::kAll:
      break;
    case TargetMode::kCount:
    case TargetMode::kRandom:
      want = targets.n;
      random = targets.mode == TargetMode::kRandom;
      if (matching.size() < want) {
        return tl::unexpected(
            fmt::format("mode {} needs {} host(s) but only {} match the selector {}: {}; nothing "
                        "was injected",
                        mode, targets.n, matching.size(), selectorText(targets.selector), names(matching)));
      }
      break;
    case TargetMode::kPercent:
      want = std::max<size_t>(
          1, static_cast<size_t>(std::ceil(targets.percent * static_cast<double>(matching.size()) / 100.0 - 1e-9)));
      want = std::min(want, matching.size());
      random = true;
      break;
  }
  if (random) {
    // A partial Fisher-Yates shuffle with a fixed generator: the same seed picks the same hosts
    // on every platform (std::shuffle's algorithm is not specified).
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i < want; ++i) {
      const size_t j = i + static_cast<size_t>(rng() % (matching.size() - i));
      std::swap(matching[i], matching[j]);
    }
  }
  matching.resize(want);
  std::sort(matching.begin(), matching.end(),
            [](const v1::AgentInfo& a, const v1::AgentInfo& b) { return a.agent_id() < b.agent_id(); });
  out.summary =
      fmt::format("selector {}, mode {}: {} of {} matching agent(s){}: {}", selectorText(targets.selector), mode,
                  matching.size(), out.matched, random ? fmt::format(" (seed {})", seed) : "", names(matching));
  out.hosts = std::move(matching);
  return out;
}

tl::expected<v1::RunPlan, std::string> planRun(const Experiment& experiment, std::vector<v1::AgentInfo> agents,
                                               uint64_t seed) {
  auto resolved = resolveTargets(experiment.targets, std::move(agents), seed);
  if (!resolved) {
    return tl::unexpected(resolved.error());
  }
  // As the run itself would refuse it, before anything is injected.
  if (auto cannot = checkCapabilities(experiment.method, resolved->hosts)) {
    return tl::unexpected(*cannot);
  }
  v1::RunPlan plan;
  plan.set_experiment(experiment.name);
  plan.set_targets(resolved->summary);
  for (const auto& a : resolved->hosts) {
    *plan.add_hosts()->mutable_agent() = a;
  }
  const auto addFault = [&](const FaultStep& f, const std::string& label) {
    const std::string named = faultStepText(f);
    plan.add_steps(fmt::format("step {}: {} for {} on {} host(s)", label, named, formatDuration(f.duration),
                               resolved->hosts.size()));
    for (auto& h : *plan.mutable_hosts()) {
      auto* pf = h.add_faults();
      pf->set_step(label);
      pf->set_name(f.name);
      *pf->mutable_spec() = f.spec;
      *pf->mutable_duration() = toProto(f.duration);
    }
  };
  for (size_t i = 0; i < experiment.method.size(); ++i) {
    const std::string label = std::to_string(i + 1);
    const auto& step = experiment.method[i];
    if (const auto* w = std::get_if<WaitStep>(&step)) {
      plan.add_steps(fmt::format("step {}: wait {}", label, formatDuration(w->duration)));
    } else if (const auto* p = std::get_if<ProbeStep>(&step)) {
      plan.add_steps(fmt::format("step {}: probe {}", label, p->probe));
    } else if (const auto* f = std::get_if<FaultStep>(&step)) {
      addFault(*f, label);
    } else {
      const auto& members = std::get<ParallelStep>(step).steps;
      plan.add_steps(fmt::format("step {}: {} step(s) started together", label, members.size()));
      for (size_t j = 0; j < members.size(); ++j) {
        const std::string sub = fmt::format("{}.{}", label, j + 1);
        if (const auto* mf = std::get_if<FaultStep>(&members[j])) {
          addFault(*mf, sub);
        } else if (const auto* mw = std::get_if<WaitStep>(&members[j])) {
          plan.add_steps(fmt::format("step {}: wait {}", sub, formatDuration(mw->duration)));
        } else {
          plan.add_steps(fmt::format("step {}: probe {}", sub, std::get<ProbeStep>(members[j]).probe));
        }
      }
    }
  }
  return plan;
}

}  // namespace faultline::controller
