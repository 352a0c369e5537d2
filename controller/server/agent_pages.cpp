#include "controller/server/agent_pages.h"

#include <algorithm>

#include "controller/server/limits.h"

namespace faultline::controller {

tl::expected<v1::ListAgentsResponse, std::string> agentsPage(std::vector<v1::AgentInfo> agents,
                                                             const v1::ListAgentsRequest& request) {
  if (auto over = overLimit("ListAgentsRequest.page_token", request.page_token(), kMaxIdBytes)) {
    return tl::unexpected(*over);
  }
  const size_t pageSize =
      request.page_size() == 0 ? kMaxAgentsPerPage : std::min<size_t>(request.page_size(), kMaxAgentsPerPage);
  std::sort(agents.begin(), agents.end(),
            [](const v1::AgentInfo& a, const v1::AgentInfo& b) { return a.agent_id() < b.agent_id(); });
  auto it =
      request.page_token().empty()
          ? agents.begin()
          : std::upper_bound(agents.begin(), agents.end(), request.page_token(),
                             [](const std::string& token, const v1::AgentInfo& a) { return token < a.agent_id(); });
  v1::ListAgentsResponse page;
  size_t bytes = 0;
  for (; it != agents.end() && static_cast<size_t>(page.agents_size()) < pageSize; ++it) {
    // The size an entry adds: its own, plus a tag and a length prefix (at most 6 bytes).
    const size_t entry = it->ByteSizeLong() + 6;
    if (page.agents_size() > 0 && bytes + entry > kMaxAgentsPageBytes) {
      break;
    }
    bytes += entry;
    *page.add_agents() = std::move(*it);
  }
  if (it != agents.end()) {
    page.set_next_page_token(page.agents(page.agents_size() - 1).agent_id());
  }
  return page;
}

}  // namespace faultline::controller
