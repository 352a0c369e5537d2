#include "common/metrics.h"

#include <doctest/doctest.h>

#include <chrono>
#include <thread>
#include <vector>

#include <fmt/format.h>

namespace faultline::metrics {

TEST_CASE("metrics: a small registry renders exactly in the text format 0.0.4") {
  Registry r;
  auto& runs =
      r.counter("faultline_runs_finished_total", "Runs finished, by verdict and trigger", {"verdict", "trigger"});
  auto& active = r.gauge("faultline_runs_active", "Runs in progress");
  runs.with({"held", "cli"}).inc();
  runs.with({"held", "cli"}).inc(2);
  runs.with({"aborted", "schedule"}).inc();
  active.with({}).set(2);
  CHECK(r.render() ==
        "# HELP faultline_metrics_series_dropped_total Metric updates dropped because their family already held its "
        "maximum number of label sets (a label that should be bounded is not)\n"
        "# TYPE faultline_metrics_series_dropped_total counter\n"
        "faultline_metrics_series_dropped_total 0\n"
        "# HELP faultline_runs_finished_total Runs finished, by verdict and trigger\n"
        "# TYPE faultline_runs_finished_total counter\n"
        "faultline_runs_finished_total{verdict=\"aborted\",trigger=\"schedule\"} 1\n"
        "faultline_runs_finished_total{verdict=\"held\",trigger=\"cli\"} 3\n"
        "# HELP faultline_runs_active Runs in progress\n"
        "# TYPE faultline_runs_active gauge\n"
        "faultline_runs_active 2\n");
}

TEST_CASE("metrics: a family without any series still has HELP and TYPE") {
  Registry r;
  r.gauge("faultline_fault_active", "Faults held", {"kind"});
  const auto text = r.render();
  CHECK(text.find("# HELP faultline_fault_active Faults held\n# TYPE faultline_fault_active gauge\n") !=
        std::string::npos);
  CHECK(text.find("faultline_fault_active{") == std::string::npos);
}

TEST_CASE("metrics: label values and HELP are escaped as the format says") {
  CHECK(escapeLabelValue("a\\b\"c\nd") == "a\\\\b\\\"c\\nd");
  CHECK(escapeHelp("a\\b\"c\nd") == "a\\\\b\"c\\nd");
  Registry r;
  auto& g = r.gauge("x", "line one\nback\\slash", {"probe"});
  g.with({"say \"hi\"\n\\"}).set(1.5);
  const auto text = r.render();
  CHECK(text.find("# HELP x line one\\nback\\\\slash\n") != std::string::npos);
  CHECK(text.find("x{probe=\"say \\\"hi\\\"\\n\\\\\"} 1.5\n") != std::string::npos);
}

TEST_CASE("metrics: values as Prometheus parses them") {
  CHECK(formatValue(0) == "0");
  CHECK(formatValue(-3) == "-3");
  CHECK(formatValue(0.25) == "0.25");
  CHECK(formatValue(0.001) == "0.001");
  CHECK(formatValue(1.0 / 0.0) == "+Inf");
  CHECK(formatValue(-1.0 / 0.0) == "-Inf");
  CHECK(formatValue(0.0 / 0.0) == "NaN");
}

TEST_CASE("metrics: histogram buckets are cumulative with +Inf, _sum and _count") {
  Registry r;
  auto& h = r.histogram("faultline_probe_latency_seconds", "Probe latency", {0.1, 0.5, 1}, {"probe"});
  auto& web = h.with({"web"});
  web.observe(0.05);
  web.observe(0.1);  // on the bound: counts in le="0.1"
  web.observe(0.3);
  web.observe(2);
  CHECK(web.count() == 4);
  CHECK(web.sum() == doctest::Approx(2.45));
  const auto text = r.render();
  CHECK(text.find("# HELP faultline_probe_latency_seconds Probe latency\n"
                  "# TYPE faultline_probe_latency_seconds histogram\n"
                  "faultline_probe_latency_seconds_bucket{probe=\"web\",le=\"0.1\"} 2\n"
                  "faultline_probe_latency_seconds_bucket{probe=\"web\",le=\"0.5\"} 3\n"
                  "faultline_probe_latency_seconds_bucket{probe=\"web\",le=\"1\"} 3\n"
                  "faultline_probe_latency_seconds_bucket{probe=\"web\",le=\"+Inf\"} 4\n"
                  "faultline_probe_latency_seconds_sum{probe=\"web\"} 2.45\n"
                  "faultline_probe_latency_seconds_count{probe=\"web\"} 4\n") != std::string::npos);
}

TEST_CASE("metrics: a histogram without labels") {
  Registry r;
  r.histogram("d_seconds", "d", {1}).with({}).observe(3);
  CHECK(r.render().find("d_seconds_bucket{le=\"1\"} 0\nd_seconds_bucket{le=\"+Inf\"} 1\nd_seconds_sum 3\n"
                        "d_seconds_count 1\n") != std::string::npos);
}

TEST_CASE("metrics: a removed series is no longer rendered (a run's gauge when the run ends)") {
  Registry r;
  auto& g = r.gauge("faultline_fault_active", "Faults held", {"run_id", "kind"});
  g.with({"r1", "network.delay"}).set(1);
  g.with({"r2", "network.delay"}).set(1);
  g.remove({"r1", "network.delay"});
  const auto text = r.render();
  CHECK(text.find("r1") == std::string::npos);
  CHECK(text.find("faultline_fault_active{run_id=\"r2\",kind=\"network.delay\"} 1\n") != std::string::npos);
}

TEST_CASE("metrics: a family past its series cap drops updates and counts them") {
  Registry r;
  auto& c = r.counter("c_total", "c", {"probe"}, 3);
  for (int i = 0; i < 10; ++i) {
    c.with({fmt::format("p{}", i)}).inc();
  }
  c.with({"p0"}).inc();  // an existing series still counts
  const auto text = r.render();
  CHECK(text.find("c_total{probe=\"p0\"} 2\n") != std::string::npos);
  CHECK(text.find("c_total{probe=\"p2\"} 1\n") != std::string::npos);
  CHECK(text.find("p3") == std::string::npos);
  CHECK(text.find("faultline_metrics_series_dropped_total 7\n") != std::string::npos);
}

TEST_CASE("metrics: a label value is cut at kMaxLabelValue bytes") {
  Registry r;
  r.gauge("g", "g", {"slo"}).with({std::string(1000, 'x')}).set(1);
  CHECK(r.render().find("g{slo=\"" + std::string(kMaxLabelValue, 'x') + "\"} 1\n") != std::string::npos);
}

TEST_CASE("metrics: onCollect runs before each render") {
  Registry r;
  auto& g = r.gauge("faultline_agents_connected", "Agents connected");
  int n = 0;
  r.onCollect([&] { g.with({}).set(++n); });
  CHECK(r.render().find("faultline_agents_connected 1\n") != std::string::npos);
  CHECK(r.render().find("faultline_agents_connected 2\n") != std::string::npos);
}

TEST_CASE("metrics: updates from many threads while rendering lose nothing") {
  Registry r;
  auto& c = r.counter("c_total", "c", {"t"});
  auto& h = r.histogram("h_seconds", "h", latencyBuckets());
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10'000; ++i) {
        c.with({fmt::format("{}", t % 2)}).inc();
        h.with({}).observe(0.002);
      }
    });
  }
  for (int i = 0; i < 20; ++i) {
    (void)r.render();
  }
  for (auto& t : threads) {
    t.join();
  }
  const auto text = r.render();
  CHECK(text.find("c_total{t=\"0\"} 20000\n") != std::string::npos);
  CHECK(text.find("c_total{t=\"1\"} 20000\n") != std::string::npos);
  CHECK(text.find("h_seconds_count 40000\n") != std::string::npos);
}

// The scrape cost, printed (docs/performance.md): a controller registry with 1,000 agents' worth
// of series in every labelled family.
TEST_CASE("metrics: render time of a large registry") {
  Registry r;
  auto& faults = r.gauge("faultline_fault_active", "f", {"run_id", "kind"});
  auto& probes = r.histogram("faultline_probe_latency_seconds", "p", latencyBuckets(), {"probe"});
  auto& fails = r.counter("faultline_probe_failures_total", "f", {"probe"});
  for (int i = 0; i < 1000; ++i) {
    faults.with({fmt::format("run-{:04}", i / 10), fmt::format("kind.{}", i % 10)}).set(1);
    probes.with({fmt::format("probe-{}", i)}).observe(0.01 * (i % 50));
    fails.with({fmt::format("probe-{}", i)}).inc();
  }
  const auto start = std::chrono::steady_clock::now();
  std::string text;
  for (int i = 0; i < 10; ++i) {
    text = r.render();
  }
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start) / 10;
  MESSAGE(fmt::format("render of 1,000 gauges, 1,000 counters, 1,000 histograms ({} series lines, {} bytes): {} us",
                      std::count(text.begin(), text.end(), '\n'), text.size(), us.count()));
  CHECK(us < std::chrono::seconds(1));
}

}  // namespace faultline::metrics
