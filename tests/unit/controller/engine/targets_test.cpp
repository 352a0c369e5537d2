// Target selection (controller/engine/targets.h) over hand-made agent lists.
#include <algorithm>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <doctest/doctest.h>

#include "controller/engine/targets.h"
#include "tests/support/agent_ids.h"

using namespace faultline;
using namespace faultline::controller;

namespace {

std::vector<v1::AgentInfo> agentsNamed(std::initializer_list<const char*> ids, const char* role = "web") {
  std::vector<v1::AgentInfo> out;
  for (const char* id : ids) {
    v1::AgentInfo a;
    a.set_agent_id(id);
    a.set_hostname(std::string("host-") + id);
    (*a.mutable_labels())["role"] = role;
    out.push_back(a);
  }
  return out;
}

std::vector<std::string> idsOf(const ResolvedTargets& r) {
  return testing::agentIds(r.hosts);
}

}  // namespace

TEST_CASE("targets: all, count(n), random(n), percent(p) over the agents that match the selector") {
  auto agents = agentsNamed({"c", "a", "e", "b", "d"});
  auto db = agentsNamed({"z"}, "db");
  agents.insert(agents.end(), db.begin(), db.end());
  Targets t;
  t.selector = {{"role", "web"}};

  auto all = resolveTargets(t, agents, 1);
  REQUIRE(all.has_value());
  CHECK(idsOf(*all) == std::vector<std::string>{"a", "b", "c", "d", "e"});
  CHECK(all->matched == 5);

  t.mode = TargetMode::kCount;
  t.n = 2;
  auto count = resolveTargets(t, agents, 1);
  REQUIRE(count.has_value());
  CHECK(idsOf(*count) == std::vector<std::string>{"a", "b"});  // the first n in agent-id order
  CHECK(count->summary == "selector {role=web}, mode count(2): 2 of 5 matching agent(s): a (host-a), b (host-b)");

  t.mode = TargetMode::kRandom;
  t.n = 3;
  std::set<std::vector<std::string>> choices;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    auto r = resolveTargets(t, agents, seed);
    REQUIRE(r.has_value());
    const auto ids = idsOf(*r);
    CHECK(ids.size() == 3);
    CHECK(std::is_sorted(ids.begin(), ids.end()));
    CHECK(std::find(ids.begin(), ids.end(), "z") == ids.end());  // never a non-match
    CHECK(ids == idsOf(*resolveTargets(t, agents, seed)));       // a function of the seed
    CHECK(r->summary.find(fmt::format("(seed {})", seed)) != std::string::npos);
    choices.insert(ids);
  }
  CHECK(choices.size() >= 5);  // 10 possible choices of 3 out of 5: random, not always the same

  t.mode = TargetMode::kPercent;
  for (const auto& [percent, hosts] :
       std::vector<std::pair<double, size_t>>{{100, 5}, {50, 3}, {40, 2}, {20, 1}, {1, 1}, {0.5, 1}, {60.0001, 4}}) {
    t.percent = percent;
    auto r = resolveTargets(t, agents, 7);
    REQUIRE(r.has_value());
    CHECK_MESSAGE(r->hosts.size() == hosts, "percent(" << percent << ")");
  }
}

TEST_CASE("targets: no match, or fewer matches than count(n)/random(n), is an error naming what matched") {
  const auto agents = agentsNamed({"a", "b"});
  Targets t;
  t.selector = {{"role", "db"}};
  auto none = resolveTargets(t, agents, 1);
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error() ==
        "no connected agent matches the selector {role=db} (2 agent(s) connected); nothing was injected");
  t.selector = {{"role", "web"}};
  t.mode = TargetMode::kRandom;
  t.n = 3;
  auto few = resolveTargets(t, agents, 1);
  REQUIRE_FALSE(few.has_value());
  CHECK(few.error() ==
        "mode random(3) needs 3 host(s) but only 2 match the selector {role=web}: a (host-a), b (host-b); nothing was "
        "injected");
}
