// ListAgents one page at a time: a fleet of any size, with labels as big as limits.h allows,
// never makes a response larger than gRPC's 4 MiB cap on a message.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include <tl/expected.hpp>

#include "faultline/v1/control.pb.h"

namespace faultline::controller {

// The most agents on one page (also the page size when the request gives 0).
inline constexpr size_t kMaxAgentsPerPage = 500;
// A page stops before the agent that would take its serialized size past this (a page holds at
// least one agent): a quarter of gRPC's default 4 MiB, so headers and growth never reach it.
inline constexpr size_t kMaxAgentsPageBytes = 1024 * 1024;

// The page of agents that request asks for, in order of agent_id: those after page_token (the
// last agent_id of the previous page; "" = from the first), at most page_size of them (0 or more
// than kMaxAgentsPerPage: kMaxAgentsPerPage) and at most kMaxAgentsPageBytes. next_page_token is
// the last agent_id on the page, or "" when no agent follows. An agent that disconnects between
// two pages is not listed; one that connects is, when its id sorts after the token.
// error: "ListAgentsRequest.page_token: N bytes, more than the 128 accepted" (INVALID_ARGUMENT).
[[nodiscard]] tl::expected<v1::ListAgentsResponse, std::string> agentsPage(std::vector<v1::AgentInfo> agents,
                                                                           const v1::ListAgentsRequest& request);

}  // namespace faultline::controller
