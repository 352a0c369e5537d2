// controller/server/agent_pages.h: ListAgents in pages that stay under gRPC's 4 MiB whatever the
// fleet (the e2e test lists a real controller's agents through the CLI).
#include <set>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include "controller/server/agent_pages.h"
#include "controller/server/limits.h"

using namespace faultline::controller;
namespace v1 = faultline::v1;

namespace {

// n agents whose labels are as big as limits.h lets an agent send (kMaxLabelBytes), in no order.
std::vector<v1::AgentInfo> bigFleet(int n) {
  std::vector<v1::AgentInfo> agents;
  for (int i = 0; i < n; ++i) {
    v1::AgentInfo a;
    a.set_agent_id(fmt::format("agent-{:04}", (i * 37) % n));
    a.set_hostname(a.agent_id() + ".example");
    for (int l = 0; l < 4; ++l) {
      (*a.mutable_labels())[fmt::format("label{}", l)] = std::string(kMaxLabelBytes / 4 - 16, 'v');
    }
    agents.push_back(a);
  }
  return agents;
}

// Every page, following the tokens; checks each page's bounds.
std::vector<std::string> allPages(const std::vector<v1::AgentInfo>& agents, uint32_t pageSize, int& pages) {
  std::vector<std::string> ids;
  v1::ListAgentsRequest req;
  req.set_page_size(pageSize);
  pages = 0;
  for (;;) {
    auto page = agentsPage(agents, req);
    REQUIRE(page.has_value());
    ++pages;
    REQUIRE(pages < 1000);
    CHECK(page->ByteSizeLong() <= kMaxAgentsPageBytes + 64);
    CHECK(page->agents_size() >= 1);
    CHECK(static_cast<size_t>(page->agents_size()) <= (pageSize == 0 ? kMaxAgentsPerPage : pageSize));
    for (const auto& a : page->agents()) {
      ids.push_back(a.agent_id());
    }
    if (page->next_page_token().empty()) {
      return ids;
    }
    req.set_page_token(page->next_page_token());
  }
}

}  // namespace

TEST_CASE(
    "agents pages: 300 agents with 16 KB of labels each (4.8 MB) come in pages under 1 MiB, each once, in order") {
  const auto fleet = bigFleet(300);
  int pages = 0;
  const auto ids = allPages(fleet, 0, pages);
  REQUIRE(ids.size() == 300);
  CHECK(std::is_sorted(ids.begin(), ids.end()));
  CHECK(std::set<std::string>(ids.begin(), ids.end()).size() == 300);
  CHECK(pages >= 5);
  CHECK(ids.front() == "agent-0000");
  CHECK(ids.back() == "agent-0299");
}

TEST_CASE("agents pages: page_size caps a page; 0 and over 500 mean 500; small agents fill a page") {
  std::vector<v1::AgentInfo> fleet;
  for (int i = 0; i < 1201; ++i) {
    v1::AgentInfo a;
    a.set_agent_id(fmt::format("a{:05}", i));
    fleet.push_back(a);
  }
  int pages = 0;
  CHECK(allPages(fleet, 7, pages).size() == 1201);
  CHECK(pages == 172);  // 171 pages of 7, and one of 4
  CHECK(allPages(fleet, 0, pages).size() == 1201);
  CHECK(pages == 3);
  CHECK(allPages(fleet, 100000, pages).size() == 1201);
  CHECK(pages == 3);
}

TEST_CASE("agents pages: no agents is one empty last page; a token past the end too; a long token is refused") {
  auto page = agentsPage({}, {});
  REQUIRE(page.has_value());
  CHECK(page->agents_size() == 0);
  CHECK(page->next_page_token().empty());

  v1::ListAgentsRequest req;
  req.set_page_token("zzz");
  page = agentsPage(bigFleet(3), req);
  REQUIRE(page.has_value());
  CHECK(page->agents_size() == 0);
  CHECK(page->next_page_token().empty());

  // An agent that left between two pages: the next page starts after its id all the same.
  req.set_page_token("agent-0000x");
  page = agentsPage(bigFleet(3), req);
  REQUIRE(page.has_value());
  REQUIRE(page->agents_size() == 2);
  CHECK(page->agents(0).agent_id() == "agent-0001");

  req.set_page_token(std::string(kMaxIdBytes + 1, 'a'));
  CHECK(agentsPage(bigFleet(3), req).error() == "ListAgentsRequest.page_token: 129 bytes, more than the 128 accepted");
}
