#include "controller/engine/slo.h"

#include <algorithm>
#include <cmath>
#include <set>

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
      // Every answered request's latency, failed or not; unanswered ones have none (load.h).
      out.latencies.merge(s.load->okLatencies);
      out.latencies.merge(s.load->failedLatencies);
    } else {
      ++out.requests;
      ++(s.ok ? out.succeeded : out.failed);
      if (s.ok) {  // a failed sample's time is no answer's latency
        out.latencies.add(std::chrono::microseconds(static_cast<int64_t>(s.latencyMs * 1000)));
      }
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
  check.set_min_samples(slo.minSamples);
  std::vector<double> latencies;  // successful samples only
  size_t failed = 0;
  size_t withValue = 0;
  std::optional<double> newestValue;
  for (const auto& s : samples) {
    if (s.ok) {
      latencies.push_back(s.latencyMs);
    } else {
      ++failed;
    }
    if (s.value) {
      newestValue = s.value;
      ++withValue;
    }
  }
  std::sort(latencies.begin(), latencies.end());
  const Load load = loadOf(samples);
  const auto percentile = [&](double p) {
    if (load.any) {  // none when no request answered: not a 0 ms latency
      return load.latencies.count() == 0
                 ? std::nan("")
                 : std::chrono::duration<double, std::milli>(load.latencies.percentile(p)).count();
    }
    if (latencies.empty()) {
      return std::nan("");
    }
    const auto rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(latencies.size())));
    return latencies[std::clamp<size_t>(rank, 1, latencies.size()) - 1];
  };
  const double errors = load.any ? 100.0 * static_cast<double>(load.failed) / static_cast<double>(load.requests)
                        : samples.empty() ? 0
                                          : 100.0 * static_cast<double>(failed) / static_cast<double>(samples.size());
  // A load probe's window is judged on its requests (each sample holds many), any other on samples.
  const bool enough =
      !samples.empty() && (load.any ? load.requests >= slo.minSamples : samples.size() >= slo.minSamples);
  bool allOk = true;
  bool budgetSet = false;
  for (const auto& t : slo.terms) {
    auto* m = check.add_measures();
    m->set_sli(t.name);
    m->set_comparison(std::string(comparisonText(t.comparison)));
    m->set_threshold(t.threshold);
    m->set_samples(static_cast<uint32_t>(load.any ? load.latencies.count() : latencies.size()));
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
        m->set_value(load.any            ? (load.latencies.count() == 0
                                                ? std::nan("")
                                                : std::chrono::duration<double, std::milli>(load.latencies.max()).count())
                     : latencies.empty() ? std::nan("")
                                         : latencies.back());
        break;
      case SliKind::kErrors:
        m->set_value(errors);
        m->set_samples(static_cast<uint32_t>(samples.size()));
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
        m->set_samples(static_cast<uint32_t>(withValue));
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
  check.set_not_enough_data(!enough);
  check.set_ok(enough && allOk);
  return check;
}

std::string describeSloCheck(const v1::SloCheck& check) {
  std::string out;
  for (const auto& m : check.measures()) {
    const bool latency =
        m.sli() != "errors" && m.sli() != "value" && m.sli() != "throughput" && m.sli() != "saturation";
    const bool percent = m.sli() == "errors";
    const char* unit = latency ? "ms" : percent ? "%" : m.sli() == "throughput" ? "/s" : "";
    const std::string value = std::isnan(m.value()) ? std::string("none") : fmt::format("{:.4g}{}", m.value(), unit);
    // A latency that stands on fewer samples than the window's says so; a load window's stands on
    // its answered requests, more than its samples.
    const std::string basis = !latency || m.samples() == check.samples() ? ""
                              : m.samples() > check.samples() ? fmt::format(", {} answered request(s)", m.samples())
                                                              : fmt::format(", {} successful sample(s)", m.samples());
    out += fmt::format("{}{} {} ({} {:g}{}{}){}", out.empty() ? "" : ", ", m.sli(), value, m.comparison(),
                       m.threshold(), unit, basis, m.ok() || check.not_enough_data() ? "" : " FAILED");
  }
  if (check.not_enough_data()) {
    return fmt::format("not enough data: {} of the {} samples needed ({})", check.samples(), check.min_samples(), out);
  }
  return fmt::format("{} over {} sample(s)", out, check.samples());
}

std::optional<std::chrono::steady_clock::duration> timeToRecover(
    const std::vector<Slo>& slos, const std::vector<std::string>& uncovered,
    const std::map<std::string, std::vector<TimedSample>>& byProbe, std::chrono::steady_clock::time_point revertAt,
    std::chrono::steady_clock::time_point horizon) {
  using TimePoint = std::chrono::steady_clock::time_point;
  static const std::vector<TimedSample> kNone;
  const auto samplesOf = [&](const std::string& probe) -> const std::vector<TimedSample>& {
    auto it = byProbe.find(probe);
    return it == byProbe.end() ? kNone : it->second;
  };
  std::set<TimePoint> moments;
  for (const auto& [probe, samples] : byProbe) {
    for (const auto& s : samples) {
      if (s.at >= revertAt && s.at < horizon) {
        moments.insert(s.at);
      }
    }
  }
  std::vector<TimePoint> candidates(moments.begin(), moments.end());
  constexpr size_t kMaxCandidates = 1000;
  if (candidates.size() > kMaxCandidates) {
    std::vector<TimePoint> spread;
    for (size_t i = 0; i < kMaxCandidates; ++i) {
      spread.push_back(candidates[i * candidates.size() / kMaxCandidates]);
    }
    candidates = std::move(spread);
  }
  const auto holdsFrom = [&](TimePoint t) {
    for (const auto& slo : slos) {
      std::vector<SliSample> window;
      const auto end = std::min(horizon, t + slo.window);
      for (const auto& s : samplesOf(slo.probe)) {
        if (s.at >= t && s.at < end) {
          window.push_back(s.sample);
        }
      }
      if (!evaluateSlo(slo, window).ok()) {
        return false;
      }
    }
    for (const auto& probe : uncovered) {
      size_t seen = 0;
      for (const auto& s : samplesOf(probe)) {
        if (s.at >= t && s.at < horizon) {
          if (!s.sample.ok) {
            return false;
          }
          ++seen;
        }
      }
      if (seen == 0) {
        return false;
      }
    }
    return true;
  };
  for (const auto t : candidates) {
    if (holdsFrom(t)) {
      return t - revertAt;
    }
  }
  return std::nullopt;
}

}  // namespace faultline::controller
