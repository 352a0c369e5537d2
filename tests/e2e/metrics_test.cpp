// Prometheus metrics end to end (issue 19): the real faultline controller and faultline-agent with
// --metrics-listen, their /metrics output checked by `promtool check metrics`, and a real
// Prometheus server (Debian's package, started here with a config, a storage directory and a
// loopback port of its own, scraping every second) scraping both during a run with a real fault
// (process.pause of a child); a query_range over its HTTP API shows the fault window: 1 while the
// fault is held, 0 after. Needs root (the agent). Prometheus missing: a failure on CI (CI=true),
// a skip elsewhere. Every process is killed and every file removed at the end, pass or fail.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "demo/server.h"
#include "tests/support/eventually.h"
#include "tests/support/netns_holder.h"

using namespace std::chrono_literals;
using faultline::testing::eventually;

namespace {

struct Dir {
  Dir() {
    char tmpl[] = "/tmp/faultline-metrics-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~Dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::string path;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// A process with stdout and stderr appended to log; SIGKILLed and reaped at the end if running.
struct Process {
  Process(std::vector<std::string> args, const std::string& log) {
    std::vector<char*> argv;
    for (auto& a : args) {
      argv.push_back(a.data());
    }
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE_MESSAGE(rc == 0, "posix_spawn ", args[0], ": ", std::strerror(rc));
  }
  ~Process() {
    if (pid > 0) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
    }
  }
  // Waits up to timeout for the exit; the exit status, -1 when it did not exit (normally).
  int wait(std::chrono::milliseconds timeout) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (std::chrono::steady_clock::now() < until) {
      if (::waitpid(pid, &status, WNOHANG) == pid) {
        pid = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(20ms);
    }
    return -1;
  }
  int stop(int sig) {
    ::kill(pid, sig);
    return wait(10s);
  }
  pid_t pid = -1;
};

// A loopback port free now (bound, read, closed): for Prometheus, which needs it in advance.
int freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  socklen_t len = sizeof a;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

// GET http://127.0.0.1:port/target; the body of a 200 answer, "" otherwise.
std::string httpGet(int port, const std::string& target) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0) {
    const std::string request = fmt::format("GET {} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", target);
    if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
      char buf[65536];
      ssize_t n = 0;
      while ((n = ::read(fd, buf, sizeof buf)) > 0) {
        response.append(buf, static_cast<size_t>(n));
      }
    }
  }
  ::close(fd);
  const auto body = response.find("\r\n\r\n");
  if (response.rfind("HTTP/1.1 200", 0) != 0 && response.rfind("HTTP/1.0 200", 0) != 0) {
    return "";
  }
  return body == std::string::npos ? "" : response.substr(body + 4);
}

std::string urlEncode(const std::string& s) {
  std::string out;
  for (const unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

// The port in the "metrics at http://127.0.0.1:PORT/metrics" line of a log; 0 until it is there.
int metricsPort(const std::string& log) {
  const std::string text = slurp(log);
  const auto at = text.find("metrics at http://127.0.0.1:");
  if (at == std::string::npos) {
    return 0;
  }
  return std::atoi(text.c_str() + at + std::strlen("metrics at http://127.0.0.1:"));
}

// promtool check metrics on text: its exit status and output.
faultline::testing::CommandResult promtoolCheck(const std::string& dir, const std::string& name,
                                                const std::string& text) {
  const std::string file = dir + "/" + name + ".prom";
  std::ofstream(file) << text;
  return faultline::testing::sh("promtool check metrics < " + file);
}

// (unix time, value) points of every series a query_range returned, per series' label text.
std::map<std::string, std::vector<std::pair<double, double>>> queryRange(int port, const std::string& query,
                                                                         double start, double end) {
  const auto body = httpGet(
      port, fmt::format("/api/v1/query_range?query={}&start={:.3f}&end={:.3f}&step=0.5", urlEncode(query), start, end));
  std::map<std::string, std::vector<std::pair<double, double>>> out;
  if (body.empty()) {
    return out;
  }
  const auto json = nlohmann::json::parse(body, nullptr, false);
  if (json.is_discarded() || json.value("status", "") != "success") {
    return out;
  }
  for (const auto& series : json["data"]["result"]) {
    auto& points = out[series["metric"].dump()];
    for (const auto& v : series["values"]) {
      points.emplace_back(v[0].get<double>(), std::stod(v[1].get<std::string>()));
    }
  }
  return out;
}

double nowUnix() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The span (seconds) of the points with value 1, and whether a point 0 follows the last of them.
struct Window {
  double first1 = 0;
  double last1 = 0;
  bool zeroAfter = false;
  int ones = 0;
};
Window windowOf(const std::vector<std::pair<double, double>>& points) {
  Window w;
  for (const auto& [t, v] : points) {
    if (v == 1) {
      if (w.ones++ == 0) {
        w.first1 = t;
      }
      w.last1 = t;
      w.zeroAfter = false;
    } else if (v == 0 && w.ones > 0) {
      w.zeroAfter = true;
    }
  }
  return w;
}

bool prometheusMissing() {
  if (faultline::testing::sh("command -v prometheus && command -v promtool").status == 0) {
    return false;
  }
  const char* ci = std::getenv("CI");
  if (ci != nullptr && std::string(ci) == "true") {
    FAIL("prometheus (promtool) is not installed; scripts/deps installs it");
  }
  MESSAGE("skipped: prometheus is not installed (scripts/deps installs it)");
  return true;
}

}  // namespace

TEST_CASE("Prometheus scrapes the controller and the agent during a run; the fault window is in its data") {
  if (prometheusMissing()) {
    return;
  }
  Dir dir;
  const std::string socket = dir.path + "/controller.sock";
  const std::string controllerLog = dir.path + "/controller.log";
  const std::string agentLog = dir.path + "/agent.log";
  auto demo = faultline::demo::Server::start({});
  REQUIRE(demo.has_value());
  Process controller({FAULTLINE_BIN, "controller", "--listen", "", "--socket", socket, "--db", dir.path + "/c.db",
                      "--metrics-listen", "127.0.0.1:0"},
                     controllerLog);
  Process agent({FAULTLINE_AGENT_BIN, "--controller", "unix:" + socket, "--id", "metrics-agent", "--label",
                 "role=metrics", "--state-dir", dir.path + "/agent", "--metrics-listen", ":0"},
                agentLog);
  int controllerPort = 0;
  int agentPort = 0;
  REQUIRE_MESSAGE(eventually([&] { return (controllerPort = metricsPort(controllerLog)) != 0; }, 10s),
                  slurp(controllerLog));
  REQUIRE_MESSAGE(eventually([&] { return (agentPort = metricsPort(agentLog)) != 0; }, 10s), slurp(agentLog));
  REQUIRE_MESSAGE(eventually(
                      [&] {
                        return httpGet(controllerPort, "/metrics").find("faultline_agents_connected 1\n") !=
                               std::string::npos;
                      },
                      10s),
                  httpGet(controllerPort, "/metrics"), slurp(agentLog));

  // Prometheus of the test's own: its config, its storage, its port; 1 s scrapes.
  const int promPort = freePort();
  {
    std::ofstream config(dir.path + "/prometheus.yml");
    config << fmt::format(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n"
        "  - job_name: faultline-controller\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n"
        "  - job_name: faultline-agent\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        controllerPort, agentPort);
  }
  const std::string promLog = dir.path + "/prometheus.log";
  Process prometheus(
      {"/usr/bin/prometheus", "--config.file=" + dir.path + "/prometheus.yml",
       "--storage.tsdb.path=" + dir.path + "/tsdb", fmt::format("--web.listen-address=127.0.0.1:{}", promPort)},
      promLog);
  REQUIRE_MESSAGE(eventually([&] { return !httpGet(promPort, "/-/ready").empty(); }, 30s), slurp(promLog));
  // Both targets up.
  REQUIRE_MESSAGE(eventually(
                      [&] {
                        const auto body = httpGet(promPort, "/api/v1/query?query=" + urlEncode("sum(up)"));
                        return body.find("\"2\"]") != std::string::npos;
                      },
                      20s),
                  httpGet(promPort, "/api/v1/targets"), slurp(promLog));

  // The run: a probe of the demo service, a process.pause of a child for 4 s, then 3 s of wait.
  Process victim({"/bin/sleep", "600"}, dir.path + "/victim.log");
  {
    std::ofstream f(dir.path + "/pause.yaml");
    f << fmt::format(
        "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: metrics\ntargets:\n  selector: {{role: "
        "metrics}}\nsteadyState:\n  every: 200ms\n  probes:\n    - name: demo\n      http: {{url: "
        "'http://127.0.0.1:{}/'}}\n  slos:\n    - name: demo-errors\n      probe: demo\n      objective: errors < 50% "
        "over 2s\nmethod:\n  - fault:\n      type: process.pause\n      duration: 4s\n      process: {{pid: {}}}\n"
        "  - wait: 3s\n",
        demo.value()->endpoint().port(), victim.pid);
  }
  const double start = nowUnix();
  const std::string out = dir.path + "/run.txt";
  Process run({FAULTLINE_BIN, "run", dir.path + "/pause.yaml", "--controller", "unix:" + socket}, out);
  // While the fault is held: both endpoints say so.
  REQUIRE_MESSAGE(eventually([&] { return slurp(out).find("fault.applied") != std::string::npos; }, 15s), slurp(out));
  const auto during = httpGet(controllerPort, "/metrics");
  CHECK(during.find("faultline_runs_active 1\n") != std::string::npos);
  CHECK(during.find("faultline_fault_active{run_id=\"") != std::string::npos);
  CHECK(httpGet(agentPort, "/metrics").find("faultline_agent_faults_held{kind=\"process.pause\"} 1\n") !=
        std::string::npos);
  const int rc = run.wait(60s);
  INFO(slurp(out));
  REQUIRE(rc == 0);                 // held
  std::this_thread::sleep_for(3s);  // scrapes after the run
  const double end = nowUnix();

  // promtool on both endpoints' real output, now that every family has series.
  const auto controllerText = httpGet(controllerPort, "/metrics");
  const auto agentText = httpGet(agentPort, "/metrics");
  for (const auto& [name, text] : {std::pair{"controller", controllerText}, std::pair{"agent", agentText}}) {
    CAPTURE(name);
    const auto checked = promtoolCheck(dir.path, name, text);
    INFO(checked.output, "\n", text);
    CHECK(checked.status == 0);
  }
  // The Grafana dashboard queries only names these endpoints export.
  const auto dashboard = faultline::testing::sh(fmt::format(
      "{0}/tests/grafana/check_dashboard.py {0}/deploy/grafana/faultline.json --metrics {1}/controller.prom "
      "{1}/agent.prom",
      FAULTLINE_SOURCE_DIR, dir.path));
  INFO(dashboard.output);
  CHECK(dashboard.status == 0);
  CHECK(controllerText.find("faultline_runs_finished_total{verdict=\"held\",trigger=\"cli\"} 1\n") !=
        std::string::npos);
  CHECK(controllerText.find("faultline_runs_active 0\n") != std::string::npos);
  CHECK(controllerText.find("faultline_fault_active{") == std::string::npos);  // the run's series are gone
  CHECK(controllerText.find("faultline_probe_latency_seconds_count{probe=\"demo\",kind=\"http\"}") !=
        std::string::npos);
  CHECK(controllerText.find(
            "faultline_grpc_requests_total{method=\"/faultline.v1.Control/SubmitRun\",code=\"OK\"} 1\n") !=
        std::string::npos);
  CHECK(agentText.find("faultline_agent_faults_held{kind=\"process.pause\"} 0\n") != std::string::npos);
  CHECK(agentText.find("faultline_agent_apply_duration_seconds_count{kind=\"process.pause\"} 1\n") !=
        std::string::npos);
  CHECK(agentText.find("faultline_agent_journal_entries_open 0\n") != std::string::npos);

  // Prometheus saw the window: the controller's gauge 1 for about the fault's 4 s, then 0 (the
  // wait step), and the agent's the same.
  const auto controllerSeries = queryRange(promPort, "faultline_fault_active{kind=\"process.pause\"}", start, end);
  REQUIRE_MESSAGE(controllerSeries.size() == 1, httpGet(promPort, "/api/v1/targets"));
  const auto cw = windowOf(controllerSeries.begin()->second);
  CHECK(cw.ones >= 4);
  CHECK(cw.last1 - cw.first1 >= 2.0);
  CHECK(cw.last1 - cw.first1 <= 6.0);
  CHECK(cw.zeroAfter);
  const auto agentSeries = queryRange(promPort, "faultline_agent_faults_held{kind=\"process.pause\"}", start, end);
  REQUIRE(agentSeries.size() == 1);
  const auto aw = windowOf(agentSeries.begin()->second);
  CHECK(aw.ones >= 4);
  CHECK(aw.last1 - aw.first1 <= 6.0);
  CHECK(aw.zeroAfter);
  // The same windows overlap (one fault, seen from both ends).
  CHECK(aw.first1 <= cw.last1);
  CHECK(cw.first1 <= aw.last1);

  CHECK(prometheus.stop(SIGTERM) == 0);
  CHECK(agent.stop(SIGTERM) == 0);
  CHECK(controller.stop(SIGTERM) == 0);
  demo.value()->stop();
}

TEST_CASE("the agent without --metrics-listen opens no metrics port and starts no metrics thread") {
  Dir dir;
  const std::string socket = dir.path + "/controller.sock";
  Process controller({FAULTLINE_BIN, "controller", "--listen", "", "--socket", socket, "--db", dir.path + "/c.db"},
                     dir.path + "/controller.log");
  REQUIRE(eventually([&] { return std::filesystem::exists(socket); }, 10s));
  const std::string agentLog = dir.path + "/agent.log";
  Process agent({FAULTLINE_AGENT_BIN, "--controller", "unix:" + socket, "--id", "plain-agent", "--state-dir",
                 dir.path + "/agent"},
                agentLog);
  REQUIRE_MESSAGE(eventually([&] { return slurp(agentLog).find("connecting to") != std::string::npos; }, 10s),
                  slurp(agentLog));
  std::this_thread::sleep_for(500ms);
  CHECK(slurp(agentLog).find("metrics at") == std::string::npos);
  // No listening TCP socket of the agent's own.
  const auto listening = faultline::testing::sh(fmt::format("ss -Htlnp | grep 'pid={},' || true", agent.pid));
  CHECK(listening.output.empty());
  // The config file's key is the flag's name, as for every option.
  const std::string config = dir.path + "/controller.yaml";
  std::ofstream(config) << fmt::format("listen: ''\nsocket: {0}/second.sock\ndb: {0}/second.db\nmetrics-listen: :0\n",
                                       dir.path);
  const std::string secondLog = dir.path + "/second.log";
  Process second({FAULTLINE_BIN, "controller", "--config", config}, secondLog);
  int secondPort = 0;
  REQUIRE_MESSAGE(eventually([&] { return (secondPort = metricsPort(secondLog)) != 0; }, 10s), slurp(secondLog));
  CHECK(httpGet(secondPort, "/metrics").find("# TYPE faultline_runs_active gauge\n") != std::string::npos);
  // A bad address is refused with what is accepted.
  const auto bad = faultline::testing::sh(
      fmt::format("{} --controller unix:{} --metrics-listen host.example:1", FAULTLINE_AGENT_BIN, socket));
  CHECK(bad.status == 4);
  CHECK(bad.output.find("--metrics-listen: 'host.example:1' names host 'host.example', which is not an IP address; "
                        "accepted: PORT or :PORT (loopback)") != std::string::npos);
}
