#include "controller/engine/slo.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "agent/faults/spec.h"

namespace faultline::controller {
namespace {

// The requests of a window with load samples; a sample without load counts as one request.
struct Load {
  bool any = false;
  uint64_t requests = 0;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  double seconds = 0;  // of load
  LatencyHistogram latencies;
};

Load loadOf(const std::vector<SliSample>& samples) {
  Load out;
  out.any = std::any_of(samples.begin(), samples.end(), [](const SliSample& s) { return s.load != nullptr; });
  if (!out.any) {
    return out;
  }
  for (const auto& s : samples) {
    if (s.load) {
      out.requests += s.load->requests;
      out.succeeded += s.load->succeeded;
      out.failed += s.load->failed;
      out.seconds += std::chrono::duration<double>(s.load->duration).count();
      out.latencies.merge(s.load->okLatencies);
      out.latencies.merge(s.load->failedLatencies);
    } else {
      ++out.requests;
      ++(s.ok ? out.succeeded : out.failed);
      out.latencies.add(std::chrono::microseconds(static_cast<int64_t>(s.latencyMs * 1000)));
    }
  }
  out.requests = std::max<uint64_t>(out.requests, 1);
  return out;
}

}  // namespace

v1::SloCheck evaluateSlo(const Slo& slo, const std::vector<SliSample>& samples) {
  v1::SloCheck check;
  check.set_slo(slo.name);
  check.set_probe(slo.probe);
  check.set_objective(slo.objective);
  check.set_samples(static_cast<uint32_t>(samples.size()));
  std::vector<double> latencies;
  size_t failed = 0;
  std::optional<double> newestValue;
  for (const auto& s : samples) {
    latencies.push_back(s.latencyMs);
    failed += s.ok ? 0 : 1;
    if (s.value) {
      newestValue = s.value;
    }
  }
  std::sort(latencies.begin(), latencies.end());
  const Load load = loadOf(samples);
  const auto percentile = [&](double p) {
    if (load.any) {
      return std::chrono::duration<double, std::milli>(load.latencies.percentile(p)).count();
    }
    if (latencies.empty()) {
      return 0.0;
    }
    const auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(latencies.size())));
    return latencies[std::clamp<size_t>(rank, 1, latencies.size()) - 1];
  };
  const double errors = load.any ? 100.0 * static_cast<double>(load.failed) / static_cast<double>(load.requests)
                        : samples.empty() ? 0
                                          : 100.0 * static_cast<double>(failed) / static_cast<double>(samples.size());
  bool allOk = !samples.empty();
  bool budgetSet = false;
  for (const auto& t : slo.terms) {
    auto* m = check.add_measures();
    m->set_sli(t.name);
    m->set_comparison(std::string(comparisonText(t.comparison)));
    m->set_threshold(t.threshold);
    bool ok = true;
    switch (t.sli) {
      case SliKind::kP50:
        m->set_value(percentile(50));
        break;
      case SliKind::kP90:
        m->set_value(percentile(90));
        break;
      case SliKind::kP95:
        m->set_value(percentile(95));
        break;
      case SliKind::kP99:
        m->set_value(percentile(99));
        break;
      case SliKind::kMaxLatency:
        m->set_value(load.any            ? std::chrono::duration<double, std::milli>(load.latencies.max()).count()
                     : latencies.empty() ? 0
                                         : latencies.back());
        break;
      case SliKind::kErrors:
        m->set_value(errors);
        if (!budgetSet && t.threshold > 0 &&
            (t.comparison == Comparison::kLess || t.comparison == Comparison::kLessEqual)) {
          check.set_burn_rate(errors / t.threshold);
          budgetSet = true;
        }
        break;
      case SliKind::kThroughput:
        if (load.any) {
          m->set_value(load.seconds > 0 ? static_cast<double>(load.succeeded) / load.seconds : 0);
          break;
        }
        [[fallthrough]];  // another probe's throughput is its value (prometheus)
      case SliKind::kValue:
        if (newestValue) {
          m->set_value(*newestValue);
        } else {
          m->set_value(std::nan(""));
          ok = false;
        }
        break;
    }
    ok = ok && compare(m->value(), t.comparison, t.threshold);
    m->set_ok(ok);
    allOk = allOk && ok;
  }
  check.set_ok(allOk);
  return check;
}

std::string describeSloCheck(const v1::SloCheck& check) {
  std::string out;
  for (const auto& m : check.measures()) {
    const bool latency =
        m.sli() != "errors" && m.sli() != "value" && m.sli() != "throughput" && m.sli() != "saturation";
    const bool percent = m.sli() == "errors";
    const char* unit = latency ? "ms" : percent ? "%" : m.sli() == "throughput" ? "/s" : "";
    out += fmt::format("{}{} {:.4g}{} ({} {:g}{}){}", out.empty() ? "" : ", ", m.sli(), m.value(), unit, m.comparison(),
                       m.threshold(), unit, m.ok() ? "" : " FAILED");
  }
  return fmt::format("{} over {} sample(s)", out, check.samples());
}

}  // namespace faultline::controller
