// Whether a host's kernel can run a fault, from the Capabilities its agent probed and sent in
// Hello. The engine checks every fault step against every target host before injecting anything.
// Pure functions; thread-safe.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "controller/experiment/experiment.h"
#include "faultline/v1/agent_gateway.pb.h"
#include "faultline/v1/control.pb.h"

namespace faultline::controller {

// The kernel modules spec needs that caps lacks, as "sch_netem", "sch_htb", "cls_u32" (direction
// ingress/both: "ifb", "sch_ingress", "cls_u32", "act_mirred"); on an agent whose network driver
// is nfqueue, netem's kinds (partition too) need "nfnetlink_queue" and a queue backend
// ("nft_queue or xt_NFQUEUE") instead, and no tc module; what only netem does there (delay's
// rate, duplicate on ingress) is "sch_netem (for ...)". Empty when the
// host can run it (or spec is not a network fault). An agent that did not probe (tc_probed false,
// an older agent) is judged on its netem/tbf flags alone.
[[nodiscard]] std::vector<std::string> missingModules(const v1::FaultSpec& spec, const v1::Capabilities& caps);

// The privileges spec needs that the agent lacks, from the Capabilities it probed at start:
// "CAP_NET_ADMIN" for every network fault, "CAP_SYS_ADMIN" for one in another network namespace
// (netns or netns_process), "cgroup write access" for stress.cpu and stress.memory (a cgroup v2
// hierarchy in which the agent cannot create cgroups). Process faults need none up front: a
// process of another user without CAP_KILL is reported missed, one by one. Empty for an agent
// that did not probe them (privileges_probed false).
[[nodiscard]] std::vector<std::string> missingPrivileges(const v1::FaultSpec& spec, const v1::Capabilities& caps);

// The agent's network driver in a word or two, for `faultline agents` and plans: "netem",
// "netem (missing)" (no sch_netem), "nfqueue/xtables", "nfqueue/nftables".
[[nodiscard]] std::string networkDriverText(const v1::Capabilities& caps);

// The first fault step some target cannot run, in words that name the agent (agentName()), the
// fault and the missing privileges (checked first: without them the kernel probe learnt nothing),
// the missing modules or, for process.pause with mechanism: freeze, the missing cgroup v2
// hierarchy, and say nothing was injected; nullopt when every target can run every step.
[[nodiscard]] std::optional<std::string> checkCapabilities(const std::vector<Step>& method,
                                                           const std::vector<v1::AgentInfo>& targets);

}  // namespace faultline::controller
