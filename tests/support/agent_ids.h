// The agent ids of a list of hosts (resolved targets, a run plan), in their order: what target
// selection tests compare.
#pragma once

#include <string>
#include <vector>

#include "faultline/v1/control.pb.h"

namespace faultline::testing {

inline std::vector<std::string> agentIds(const std::vector<v1::AgentInfo>& hosts) {
  std::vector<std::string> out;
  for (const auto& a : hosts) {
    out.push_back(a.agent_id());
  }
  return out;
}

}  // namespace faultline::testing
