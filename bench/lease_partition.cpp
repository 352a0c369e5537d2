// The lease across a network partition: how late an agent reverts its faults after the link to
// its controller goes dead (no FIN, no RST: packets just stop). Needs root.
//
// Two throwaway network namespaces (held by children that die with this process): C runs
// `faultline controller`, A runs `faultline-agent`; a veth pair pc (in C, 10.231.0.1) / pa (in A,
// 10.231.0.2) joins them. `faultline run` puts a long network.bandwidth fault on veth0 in A.
// Then pc is set down: the agent hears nothing more. The revert is seen by polling veth0's root
// qdisc. The agent logs the UTC time of the last message it heard when its lease expires; the
// bench prints last heard -> revert seen, and its excess over the lease (goal: <= 100 ms).
//
// Usage: lease_partition [ROUNDS] [LEASE_MS]  (defaults 5 2000)
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "tests/support/netns_holder.h"
#include "tests/support/spawn_in.h"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using faultline::testing::NetnsHolder;
using faultline::testing::sh;
using faultline::testing::spawnIn;

namespace {

void stop(pid_t& pid, int sig) {
  if (pid > 0) {
    ::kill(pid, sig);
    ::waitpid(pid, nullptr, 0);
    pid = -1;
  }
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return {std::istreambuf_iterator<char>(in), {}};
}

template <typename Pred>
bool waitFor(Pred pred, std::chrono::milliseconds timeout, std::chrono::milliseconds every = 20ms) {
  const auto until = Clock::now() + timeout;
  while (Clock::now() < until) {
    if (pred()) {
      return true;
    }
    std::this_thread::sleep_for(every);
  }
  return pred();
}

// "last at 2026-11-29T15:02:03.123456Z" in the agent's log after offset -> that time.
std::optional<std::chrono::system_clock::time_point> lastHeard(const std::string& log, size_t offset) {
  static const std::regex re(R"(last at (\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{6})Z)");
  std::smatch m;
  const std::string tail = log.substr(std::min(offset, log.size()));
  if (!std::regex_search(tail, m, re)) {
    return std::nullopt;
  }
  std::tm tm{};
  tm.tm_year = std::stoi(m[1]) - 1900;
  tm.tm_mon = std::stoi(m[2]) - 1;
  tm.tm_mday = std::stoi(m[3]);
  tm.tm_hour = std::stoi(m[4]);
  tm.tm_min = std::stoi(m[5]);
  tm.tm_sec = std::stoi(m[6]);
  return std::chrono::system_clock::from_time_t(::timegm(&tm)) + std::chrono::microseconds{std::stoi(m[7])};
}

double ms(std::chrono::system_clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const auto lease = std::chrono::milliseconds{argc > 2 ? std::atoi(argv[2]) : 2000};
  char tmpl[] = "/tmp/faultline-bench-partition-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    std::cerr << "mkdtemp failed\n";
    return 1;
  }
  const std::string dir = tmpl;
  NetnsHolder c;
  NetnsHolder a;
  if (!c.error().empty() || !a.error().empty()) {
    std::cerr << "namespaces: " << c.error() << a.error() << "\n";
    return 1;
  }
  const std::string cPid = c.path().substr(6, c.path().find("/ns/") - 6);
  for (const auto& command : {fmt::format("ip link add pa type veth peer name pc netns {}", cPid),
                              std::string("ip addr add 10.231.0.2/24 dev pa"), std::string("ip link set pa up")}) {
    if (!a.inNetns(command)) {
      std::cerr << a.error() << "\n";
      return 1;
    }
  }
  for (const auto* command : {"ip addr add 10.231.0.1/24 dev pc", "ip link set pc up", "ip link set lo up"}) {
    if (!c.inNetns(command)) {
      std::cerr << c.error() << "\n";
      return 1;
    }
  }
  // Plaintext across the bench's own veth pair: both ends need --insecure (agent/session/tls.h).
  const std::string address = "10.231.0.1:7443";
  const std::string controllerLog = dir + "/controller.log";
  const std::string agentLog = dir + "/agent.log";
  pid_t controller = spawnIn(c.path(),
                             {FAULTLINE_BIN, "controller", "--listen", address, "--socket", dir + "/control.sock",
                              "--db", dir + "/c.db", "--lease", fmt::format("{}ms", lease.count()), "--insecure"},
                             controllerLog);
  pid_t agent = spawnIn(a.path(),
                        {FAULTLINE_AGENT_BIN, "--controller", address, "--id", "bench-partition", "--label",
                         "role=partition", "--state-dir", dir + "/agent", "--insecure"},
                        agentLog);
  {
    std::ofstream f(dir + "/long.yaml");
    f << "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: partition\ntargets:\n"
         "  selector: {role: partition}\nmethod:\n  - fault:\n      type: network.bandwidth\n      duration: 10m\n"
         "      target: {interface: veth0}\n      rate: 1mbit\n";
  }
  const auto rootOfVeth0 = [&] { return sh(fmt::format("nsenter --net={} tc qdisc show dev veth0", a.path())).output; };
  const std::string before = rootOfVeth0();
  std::vector<double> excess;
  int status = 0;
  const auto registrations = [&] {
    const std::string log = slurp(agentLog);
    size_t n = 0;
    for (size_t at = log.find("registered with controller"); at != std::string::npos;
         at = log.find("registered with controller", at + 1)) {
      ++n;
    }
    return n;
  };
  for (int r = 0; r < rounds; ++r) {
    // Round 1: the first registration. Later rounds: the link is back up and the agent, whose
    // stream died in the partition, registers again (the controller dropped the silent stream).
    const size_t needed = static_cast<size_t>(r) + 1;
    if (!c.inNetns("ip link set pc up") || !waitFor([&] { return registrations() >= needed; }, 60s)) {
      std::cerr << "the agent did not register:\n" << slurp(agentLog) << slurp(controllerLog);
      status = 1;
      break;
    }
    pid_t run =
        spawnIn(c.path(), {FAULTLINE_BIN, "run", dir + "/long.yaml", "--controller", "unix:" + dir + "/control.sock"},
                dir + "/run.log");
    if (!waitFor([&] { return rootOfVeth0().find("fa17:") != std::string::npos; }, 30s)) {
      std::cerr << "round " << r + 1 << ": the fault was not applied:\n" << slurp(dir + "/run.log") << slurp(agentLog);
      stop(run, SIGKILL);
      status = 1;
      break;
    }
    std::this_thread::sleep_for(lease);  // a few heartbeats
    const size_t logOffset = slurp(agentLog).size();
    if (!c.inNetns("ip link set pc down")) {  // the partition: no FIN, no RST
      std::cerr << c.error() << "\n";
      stop(run, SIGKILL);
      status = 1;
      break;
    }
    const auto down = std::chrono::system_clock::now();
    const bool reverted = waitFor([&] { return rootOfVeth0().find("fa17:") == std::string::npos; }, lease * 5, 2ms);
    const auto seen = std::chrono::system_clock::now();
    stop(run, SIGKILL);
    if (!reverted) {
      std::cerr << "round " << r + 1 << ": not reverted within 5 leases\n";
      status = 1;
      break;
    }
    const auto heard = lastHeard(slurp(agentLog), logOffset);
    if (!heard) {
      std::cerr << "round " << r + 1 << ": no lease expiry in the agent's log:\n" << slurp(agentLog).substr(logOffset);
      status = 1;
      break;
    }
    excess.push_back(ms(seen - *heard) - static_cast<double>(lease.count()));
    std::cout << fmt::format(
        "round {}: link down -> revert seen {:.1f} ms; last heard -> revert seen {:.1f} ms; excess over the lease "
        "{:.1f} ms\n",
        r + 1, ms(seen - down), ms(seen - *heard), excess.back());
    // Heal the partition; the agent reconnects (its stream times out by keepalive) for the next round.
  }
  stop(agent, SIGTERM);
  stop(controller, SIGTERM);
  const std::string after = rootOfVeth0();
  if (after != before) {
    std::cerr << "veth0's root qdisc is not what it was:\n" << after << "expected:\n" << before;
    status = 1;
  }
  if (!excess.empty()) {
    std::sort(excess.begin(), excess.end());
    std::cout << fmt::format(
        "lease across a partition: {} ms; excess of (last heard -> revert seen) over the lease: median {:.1f} ms, max "
        "{:.1f} ms over {} round(s) (polling `tc` adds a few ms)\n",
        lease.count(), excess[excess.size() / 2], excess.back(), excess.size());
  }
  if (status == 0) {
    std::filesystem::remove_all(dir);
  } else {
    std::cerr << "logs kept in " << dir << "\n";
  }
  return status;
}
