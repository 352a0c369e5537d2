// End to end, separate processes (the faultline controller, faultline-agent binaries, faultline
// run, show and run --local): how a run's record names its faults' ends, its agents, and an agent
// without the privilege a fault needs. Needs root.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "tests/support/eventually.h"
#include "tests/support/logged_process.h"
#include "tests/support/netns.h"
#include "tests/support/netns_holder.h"
#include "tests/support/temp_dir.h"

using namespace faultline;
using namespace std::chrono_literals;

namespace {

using testing::TempDir;

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

using Process = testing::LoggedProcess;

// A controller on a Unix socket and agents (faultline-agent --id ID --label role=ROLE), each in
// a network namespace of its own with veth0 and veth1, all on this host: one hostname.
struct ProcessFleet {
  ProcessFleet(const std::vector<std::string>& ids, const std::string& role) {
    address = "unix:" + dir.path + "/controller.sock";
    log = dir.path + "/processes.log";
    controller =
        std::make_unique<Process>(std::vector<std::string>{FAULTLINE_BIN, "controller", "--listen", "", "--socket",
                                                           address.substr(5), "--db", dir.path + "/c.db"},
                                  log);
    for (const auto& id : ids) {
      namespaces.push_back(std::make_unique<testing::NetnsHolder>());
      REQUIRE_MESSAGE(namespaces.back()->error().empty(), namespaces.back()->error());
      agents.push_back(std::make_unique<Process>(
          std::vector<std::string>{"/usr/bin/nsenter", "--net=" + namespaces.back()->path(), FAULTLINE_AGENT_BIN,
                                   "--controller", address, "--id", id, "--label", "role=" + role, "--state-dir",
                                   fmt::format("{}/agent-{}", dir.path, id)},
          log));
    }
    REQUIRE_MESSAGE(testing::eventually(
                        [&] {
                          const auto listed =
                              testing::sh(fmt::format("{} agents --controller {}", FAULTLINE_BIN, address));
                          for (const auto& id : ids) {
                            if (listed.output.find(id) == std::string::npos) {
                              return false;
                            }
                          }
                          return true;
                        },
                        10s),
                    slurp(log));
  }
  ~ProcessFleet() {
    for (auto& a : agents) {
      a->stop(SIGTERM);
    }
  }
  std::string write(const std::string& name, const std::string& text) const {
    const std::string path = dir.path + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  // `faultline run FILE --controller ADDR --journal J`: its output, and the journal read back.
  std::pair<testing::CommandResult, nlohmann::json> run(const std::string& file) const {
    const std::string journal = dir.path + "/journal.json";
    std::filesystem::remove(journal);
    auto r = testing::sh(fmt::format("{} run {} --controller {} --journal {}", FAULTLINE_BIN, file, address, journal));
    nlohmann::json j;
    const std::string text = slurp(journal);
    if (!text.empty()) {
      j = nlohmann::json::parse(text);
    }
    return {r, j};
  }

  TempDir dir;
  std::string address;
  std::string log;
  std::unique_ptr<Process> controller;
  std::vector<std::unique_ptr<testing::NetnsHolder>> namespaces;
  std::vector<std::unique_ptr<Process>> agents;
};

std::string hostName() {
  char buf[256] = {};
  REQUIRE(::gethostname(buf, sizeof buf - 1) == 0);
  return buf;
}

// The run id in `faultline run`'s first line ("run ID: ...").
std::string runIdOf(const std::string& output) {
  REQUIRE(output.rfind("run ", 0) == 0);
  return output.substr(4, output.find(':') - 4);
}

}  // namespace

TEST_CASE("separate processes: a pause, a network delay and a kill each end with exactly one fault.ended") {
  ProcessFleet fleet({"ends-1"}, "ends");
  // Victims share the test's cgroup with other processes: the agent stops the one it pauses with SIGSTOP.
  Process paused({"/bin/sleep", "600"}, fleet.dir.path + "/victims.log");
  Process killed({"/bin/sleep", "600"}, fleet.dir.path + "/victims.log");
  const std::string file = fleet.write(
      "ends.yaml", fmt::format("apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: ends\ntargets:\n"
                               "  selector: {{role: ends}}\nmethod:\n"
                               "  - fault:\n      name: freeze\n      type: process.pause\n      duration: 700ms\n"
                               "      process: {{pid: {}}}\n"
                               "  - fault:\n      name: lag\n      type: network.delay\n      duration: 700ms\n"
                               "      target: {{interface: veth0}}\n      delay: 20ms\n"
                               "  - fault:\n      name: end\n      type: process.kill\n      duration: 300ms\n"
                               "      process: {{pid: {}}}\n      signal: SIGKILL\n",
                               paused.pid, killed.pid));
  const auto result = fleet.run(file);
  const auto& r = result.first;
  const auto& journal = result.second;
  INFO(r.output);
  INFO(slurp(fleet.log));
  REQUIRE(r.status == 0);
  REQUIRE(journal.is_object());

  // Per fault: its applied event, and exactly one fault.ended with the same keys whatever its kind.
  std::map<std::string, std::vector<nlohmann::json>> ends;
  std::set<std::string> applied;
  for (const auto& e : journal["events"]) {
    if (e["kind"] == "fault.applied") {
      applied.insert(e["faultId"].get<std::string>());
    } else if (e["kind"] == "fault.ended") {
      ends[e["faultId"].get<std::string>()].push_back(e);
    }
  }
  CHECK(applied.size() == 3);
  REQUIRE(ends.size() == 3);
  std::set<std::string> kinds;
  std::set<std::string> keys;
  for (const auto& [id, list] : ends) {
    CAPTURE(id);
    REQUIRE(list.size() == 1);
    const auto& e = list.front();
    CHECK(applied.count(id) == 1);
    CHECK(e["endReason"] == "expired");
    CHECK(e["agentId"] == "ends-1");
    CHECK(e["host"] == hostName());
    CHECK(e["appliedAt"].is_string());
    CHECK(e["endedAt"] == e["at"]);
    CHECK(e["appliedAt"].get<std::string>() < e["endedAt"].get<std::string>());
    kinds.insert(e["faultKind"].get<std::string>());
    std::set<std::string> these;
    for (const auto& [k, v] : e.items()) {
      these.insert(k);
    }
    if (keys.empty()) {
      keys = these;
    }
    CHECK(these == keys);
  }
  CHECK(kinds == std::set<std::string>{"process.pause", "network.delay", "process.kill"});
  CHECK(keys == std::set<std::string>{"at", "host", "kind", "message", "faultId", "agentId", "faultKind", "endReason",
                                      "appliedAt", "endedAt"});

  // show: each fault's window ends with its reason.
  const auto show = testing::sh(
      fmt::format("{} show {} --controller {}", FAULTLINE_BIN, journal["run"]["id"].get<std::string>(), fleet.address));
  INFO(show.output);
  CHECK(show.status == 0);
  const auto faults = show.output.substr(show.output.find("\nfaults\n"));
  size_t expired = 0;
  for (size_t at = faults.find("expired"); at != std::string::npos && at < faults.find("\nprobes\n");
       at = faults.find("expired", at + 1)) {
    ++expired;
  }
  CHECK(expired == 3);
}

TEST_CASE("separate processes: three agents on one host are named by agent id in --dry-run, show and the journal") {
  const std::vector<std::string> ids = {"same-a", "same-b", "same-c"};
  ProcessFleet fleet(ids, "same");
  const std::string host = hostName();
  const std::string file = fleet.write("same.yaml",
                                       "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: same\ntargets:\n"
                                       "  selector: {role: same}\nmethod:\n  - fault:\n      type: network.bandwidth\n"
                                       "      duration: 300ms\n      target: {interface: veth0}\n      rate: 1mbit\n");

  const auto plan = testing::sh(fmt::format("{} run --dry-run {} --controller {}", FAULTLINE_BIN, file, fleet.address));
  INFO(plan.output);
  CHECK(plan.status == 0);
  for (const auto& id : ids) {
    CHECK(plan.output.find(fmt::format("agent {} (host {},", id, host)) != std::string::npos);
    CHECK(plan.output.find(fmt::format("{} ({})", id, host)) != std::string::npos);  // the targets line
  }

  const auto result = fleet.run(file);
  const auto& r = result.first;
  const auto& journal = result.second;
  INFO(r.output);
  REQUIRE(r.status == 0);
  REQUIRE(journal.is_object());
  std::set<std::string> agents;
  for (const auto& a : journal["agents"]) {
    agents.insert(a["id"].get<std::string>());
    CHECK(a["hostname"] == host);
  }
  CHECK(agents == std::set<std::string>(ids.begin(), ids.end()));
  std::set<std::string> applied;
  for (const auto& e : journal["events"]) {
    if (e["kind"] == "fault.applied") {
      applied.insert(e["agentId"].get<std::string>());
    }
  }
  CHECK(applied == agents);

  const auto show =
      testing::sh(fmt::format("{} show {} --controller {}", FAULTLINE_BIN, runIdOf(r.output), fleet.address));
  INFO(show.output);
  CHECK(show.status == 0);
  const auto faults = show.output.substr(show.output.find("\nfaults\n"));
  CHECK(faults.find("\nfaults\nAGENT") == 0);
  for (const auto& id : ids) {
    CHECK(faults.find(fmt::format("\n{} ({})  step 1", id, host)) != std::string::npos);
  }
}

TEST_CASE("the faultline binary: without CAP_NET_ADMIN a network fault names the capability, not a module") {
  const std::string capsh = "/usr/sbin/capsh";
  if (!std::filesystem::exists(capsh)) {
    const char* ci = std::getenv("CI");
    REQUIRE_MESSAGE(!(ci != nullptr && std::string(ci) == "true"), capsh,
                    " is missing: scripts/deps installs libcap2-bin");
    MESSAGE("skipped: no ", capsh, " (libcap2-bin)");
    return;
  }
  TempDir dir;
  std::ofstream(dir.path + "/slow.yaml")
      << "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: slow\nmethod:\n  - fault:\n"
         "      name: slow-lo\n      type: network.bandwidth\n      duration: 1s\n      target: {interface: lo}\n"
         "      rate: 1mbit\n";
  // run --local in a network namespace of its own: its agent starts without CAP_NET_ADMIN in its
  // effective set (and bounding set).
  const auto r = testing::sh(fmt::format(
      "cd {0} && TMPDIR={0} unshare --net -- {1} --drop=cap_net_admin -- -c 'exec {2} run --local slow.yaml --db r.db "
      "--state-dir state'",
      dir.path, capsh, FAULTLINE_BIN));
  INFO(r.output);
  CHECK(r.status == 3);
  CHECK(r.output.find("cannot run network.bandwidth 'slow-lo': it lacks CAP_NET_ADMIN") != std::string::npos);
  CHECK(r.output.find("nothing was injected") != std::string::npos);
  CHECK(r.output.find("modprobe") == std::string::npos);
  CHECK(r.output.find("sch_tbf") == std::string::npos);
  // The same run with the capability has no such complaint (the kernel's tbf is there).
  const auto ok = testing::sh(fmt::format(
      "cd {0} && TMPDIR={0} unshare --net -- sh -c 'ip link set lo up && exec {1} run --local slow.yaml --db r.db "
      "--state-dir state'",
      dir.path, FAULTLINE_BIN));
  INFO(ok.output);
  CHECK(ok.status == 0);
  CHECK(ok.output.find("CAP_NET_ADMIN") == std::string::npos);
}
