#include "controller/engine/capabilities.h"

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "agent/faults/spec.h"
#include "controller/report/run_format.h"

namespace faultline::controller {
namespace {

bool listed(const google::protobuf::RepeatedPtrField<std::string>& names, std::string_view name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

bool isNetem(const v1::FaultSpec& spec) {
  return spec.has_network_delay() || spec.has_network_loss() || spec.has_network_duplicate() ||
         spec.has_network_corrupt() || spec.has_network_reorder() || spec.has_network_partition();
}

bool hasMatch(const v1::NetworkTarget& t) {
  const auto& m = t.match();
  return !m.destination_cidrs().empty() || !m.source_cidrs().empty() || !m.destination_ports().empty() ||
         !m.source_ports().empty() || m.protocol() != v1::PROTOCOL_UNSPECIFIED;
}

std::string hint(const std::string& module) {
  if (module.rfind("sch_netem", 0) == 0) {
    return "CONFIG_NET_SCH_NETEM; `modprobe sch_netem`; on RHEL-family hosts it ships in kernel-modules-extra";
  }
  if (module == "sch_tbf") {
    return "CONFIG_NET_SCH_TBF; `modprobe sch_tbf`";
  }
  if (module == "sch_htb") {
    return "CONFIG_NET_SCH_HTB; `modprobe sch_htb`";
  }
  if (module == "ifb") {
    return "CONFIG_IFB; `modprobe ifb`";
  }
  if (module == "sch_ingress") {
    return "CONFIG_NET_SCH_INGRESS; `modprobe sch_ingress`";
  }
  if (module == "act_mirred") {
    return "CONFIG_NET_ACT_MIRRED; `modprobe act_mirred`";
  }
  if (module == "nfnetlink_queue") {
    return "CONFIG_NETFILTER_NETLINK_QUEUE; `modprobe nfnetlink_queue`";
  }
  if (module == "nft_queue or xt_NFQUEUE") {
    return "CONFIG_NFT_QUEUE or CONFIG_NETFILTER_XT_TARGET_NFQUEUE with CONFIG_IP_NF_MANGLE";
  }
  return "CONFIG_NET_CLS_U32; `modprobe cls_u32`";
}

bool isUserspace(const v1::Capabilities& caps) {
  return caps.network_driver() == "nfqueue";
}

// The agent's netfilter probe found what its userspace driver needs (a queue and a rule backend).
bool canQueue(const v1::Capabilities& caps) {
  const auto& nf = caps.netfilter();
  return listed(nf, "nfnetlink_queue") && ((listed(nf, "nf_tables") && listed(nf, "nft_queue")) ||
                                           (listed(nf, "ip_tables") && listed(nf, "xt_NFQUEUE")));
}

}  // namespace

std::vector<std::string> missingModules(const v1::FaultSpec& spec, const v1::Capabilities& caps) {
  std::vector<std::string> missing;
  const v1::NetworkTarget* target = networkTarget(spec);
  if (target == nullptr) {
    return missing;
  }
  if (isNetem(spec) && isUserspace(caps)) {
    // Netfilter rules and the agent's queue (partition too: 100 % loss in the queue, so that no
    // rule drops traffic once the agent is gone): no qdisc, classifier or ifb.
    if (!listed(caps.netfilter(), "nfnetlink_queue")) {
      missing.emplace_back("nfnetlink_queue");
    }
    if (caps.steering_backend().empty()) {
      missing.emplace_back("nft_queue or xt_NFQUEUE");
    }
    // What the queue does not do (NfqueueFaultDriver refuses them): only netem can.
    if (spec.has_network_delay() && spec.network_delay().rate_bps() != 0) {
      missing.emplace_back("sch_netem (for delay's rate; or use network.bandwidth)");
    }
    const bool intoHost = target->direction() == v1::DIRECTION_INGRESS || target->direction() == v1::DIRECTION_BOTH;
    if (spec.has_network_duplicate() && intoHost) {
      missing.emplace_back("sch_netem (for duplicate on ingress)");
    }
    return missing;
  }
  if (isNetem(spec) && !caps.netem()) {
    missing.emplace_back("sch_netem");
  }
  if (spec.has_network_bandwidth() && !caps.tbf()) {
    missing.emplace_back("sch_tbf");
  }
  if (caps.tc_probed() && hasMatch(*target)) {
    if (!listed(caps.qdiscs(), "htb")) {
      missing.emplace_back("sch_htb");
    }
    if (!listed(caps.classifiers(), "u32")) {
      missing.emplace_back("cls_u32");
    }
  }
  const bool ingress = target->direction() == v1::DIRECTION_INGRESS || target->direction() == v1::DIRECTION_BOTH;
  if (caps.tc_probed() && ingress) {
    if (!caps.ifb()) {
      missing.emplace_back("ifb");
    }
    if (!listed(caps.qdiscs(), "ingress")) {
      missing.emplace_back("sch_ingress");
    }
    if (!listed(caps.classifiers(), "u32") && !hasMatch(*target)) {  // with a match: already named above
      missing.emplace_back("cls_u32");
    }
    if (!listed(caps.actions(), "mirred")) {
      missing.emplace_back("act_mirred");
    }
  }
  return missing;
}

std::vector<std::string> missingPrivileges(const v1::FaultSpec& spec, const v1::Capabilities& caps) {
  std::vector<std::string> missing;
  if (!caps.privileges_probed()) {
    return missing;
  }
  if (const v1::NetworkTarget* target = networkTarget(spec)) {
    if (!listed(caps.privileges(), "CAP_NET_ADMIN")) {
      missing.emplace_back("CAP_NET_ADMIN");
    }
    if ((!target->netns().empty() || target->has_netns_process()) && !listed(caps.privileges(), "CAP_SYS_ADMIN")) {
      missing.emplace_back("CAP_SYS_ADMIN");
    }
  }
  if ((spec.has_stress_cpu() || spec.has_stress_memory()) && !caps.cgroup2_mount().empty() && !caps.cgroup_writable()) {
    missing.emplace_back("cgroup write access");
  }
  return missing;
}

std::string privilegeText(const std::vector<std::string>& missing) {
  std::vector<std::string> parts;
  for (const auto& m : missing) {
    if (m == "CAP_NET_ADMIN") {
      parts.emplace_back("CAP_NET_ADMIN (network faults change qdiscs and netfilter rules)");
    } else if (m == "CAP_SYS_ADMIN") {
      parts.emplace_back("CAP_SYS_ADMIN (to enter the fault's network namespace)");
    } else if (m == "cgroup write access") {
      parts.emplace_back("write access to the cgroup hierarchy (stress.* creates a cgroup next to the agent's own)");
    } else {
      parts.push_back(m);
    }
  }
  return fmt::format("{}", fmt::join(parts, ", "));
}

std::optional<std::string> checkCapabilities(const std::vector<Step>& method,
                                             const std::vector<v1::AgentInfo>& targets) {
  for (const auto& step : method) {
    const auto* f = std::get_if<FaultStep>(&step);
    if (f == nullptr) {
      continue;
    }
    for (const auto& t : targets) {
      // The privilege first: without it the kernel's probe could not tell what modules it has.
      if (const auto lacking = missingPrivileges(f->spec, t.capabilities()); !lacking.empty()) {
        return fmt::format(
            "agent {} cannot run {}: it lacks {}; nothing was injected (run faultline-agent as root, or grant it: "
            "AmbientCapabilities= in its systemd unit, or run it outside a container that drops them)",
            agentName(t.agent_id(), t.hostname()), faultStepText(*f), privilegeText(lacking));
      }
      if (f->spec.has_process_pause() && f->spec.process_pause().mechanism() == v1::PAUSE_MECHANISM_FREEZE &&
          t.capabilities().cgroup2_mount().empty()) {
        return fmt::format(
            "agent {} cannot run {} with mechanism: freeze: it found no cgroup v2 hierarchy (cgroup freeze needs "
            "one); drop mechanism: freeze to let the pause use SIGSTOP there; nothing was injected",
            agentName(t.agent_id(), t.hostname()), faultStepText(*f));
      }
      // The netem driver refuses this at apply (NetemFaultDriver): say so before anything is sent.
      if (f->spec.has_network_delay() && f->spec.network_delay().keep_order() &&
          f->spec.network_delay().rate_bps() == 0 && !isUserspace(t.capabilities())) {
        return fmt::format(
            "agent {} cannot run {} with keepOrder: true: it injects with netem, which keeps packets in order only "
            "when it paces them (rate); accepted: a rate with keepOrder, the userspace driver on that agent "
            "(faultline-agent --network-driver nfqueue), or leave keepOrder out; nothing was injected",
            agentName(t.agent_id(), t.hostname()), faultStepText(*f));
      }
      const auto missing = missingModules(f->spec, t.capabilities());
      if (missing.empty()) {
        continue;
      }
      std::vector<std::string> hints;
      for (const auto& m : missing) {
        hints.push_back(fmt::format("{} ({})", m, hint(m)));
      }
      // netem's kinds run in userspace too: say so where the agent was told netem but could queue.
      const bool netemOnly = missing == std::vector<std::string>{"sch_netem"};
      const std::string instead =
          netemOnly && canQueue(t.capabilities())
              ? "; faultline's userspace driver can run it on this kernel: --network-driver nfqueue (or auto, the "
                "default) for faultline-agent or faultline run --local"
              : "";
      return fmt::format("agent {} cannot run {}: its kernel lacks {}; nothing was injected{}",
                         agentName(t.agent_id(), t.hostname()), faultStepText(*f), fmt::join(hints, ", "), instead);
    }
  }
  return std::nullopt;
}

std::string networkDriverText(const v1::Capabilities& caps) {
  if (isUserspace(caps)) {
    return caps.steering_backend().empty() ? "nfqueue" : "nfqueue/" + caps.steering_backend();
  }
  return caps.netem() ? "netem" : "netem (missing)";
}

}  // namespace faultline::controller
