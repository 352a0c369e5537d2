#include "controller/engine/slo.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "agent/faults/spec.h"

namespace faultline::controller {

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
  const auto percentile = [&](double p) {
    if (latencies.empty()) {
      return 0.0;
    }
    const auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(latencies.size())));
    return latencies[std::clamp<size_t>(rank, 1, latencies.size()) - 1];
  };
  const double errors = samples.empty() ? 0 : 100.0 * static_cast<double>(failed) / static_cast<double>(samples.size());
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
        m->set_value(latencies.empty() ? 0 : latencies.back());
        break;
      case SliKind::kErrors:
        m->set_value(errors);
        if (!budgetSet && t.threshold > 0 &&
            (t.comparison == Comparison::kLess || t.comparison == Comparison::kLessEqual)) {
          check.set_burn_rate(errors / t.threshold);
          budgetSet = true;
        }
        break;
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
    const char* unit = latency ? "ms" : percent ? "%" : "";
    out += fmt::format("{}{} {:.4g}{} ({} {:g}{}){}", out.empty() ? "" : ", ", m.sli(), m.value(), unit, m.comparison(),
                       m.threshold(), unit, m.ok() ? "" : " FAILED");
  }
  return fmt::format("{} over {} sample(s)", out, check.samples());
}

}  // namespace faultline::controller
