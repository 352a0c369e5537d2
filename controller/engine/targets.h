// Target selection: which connected agents a run (or a dry run) acts on, and the dry run's plan.
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <tl/expected.hpp>

#include "controller/experiment/experiment.h"
#include "faultline/v1/agent_gateway.pb.h"
#include "faultline/v1/control.pb.h"

namespace faultline::controller {

// The hosts of a run: resolved once, at its start.
struct ResolvedTargets {
  std::vector<v1::AgentInfo> hosts;  // the chosen agents, in agent-id order
  size_t matched = 0;                // agents that matched the selector
  std::string summary;               // for the record: selector, mode, matched, seed, chosen hosts
};

// Chooses the targets of an experiment among agents (every connected agent, in agent-id order):
// those whose labels include all of the selector's, cut by the mode (count(n): the first n;
// random(n): n at random; percent(p): ceil(p% of the matches) at random, at least 1). The random
// choice is a function of seed. Errors (text naming the selector, the mode and the matches): no
// agent matches, or count(n)/random(n) with fewer than n matches. Pure function, thread-safe.
[[nodiscard]] tl::expected<ResolvedTargets, std::string> resolveTargets(const Targets& targets,
                                                                        std::vector<v1::AgentInfo> agents,
                                                                        uint64_t seed);

// The dry run of an experiment (`faultline run --dry-run`): its targets resolved against agents
// as a run would resolve them, every step as the run would announce it, and every fault each host
// would receive (in method order). Errors: as resolveTargets(); a fault some target's kernel
// cannot run, in checkCapabilities()'s words (the run would refuse it too). Pure function,
// thread-safe.
[[nodiscard]] tl::expected<v1::RunPlan, std::string> planRun(const Experiment& experiment,
                                                             std::vector<v1::AgentInfo> agents, uint64_t seed);

}  // namespace faultline::controller
