// The probe runner of every kind, and the small helpers the parser and the probes share.
#include <cmath>

#include "controller/probes/probe.h"

namespace faultline::controller {

std::string_view comparisonText(Comparison c) {
  switch (c) {
    case Comparison::kLess:
      return "<";
    case Comparison::kLessEqual:
      return "<=";
    case Comparison::kGreater:
      return ">";
    case Comparison::kGreaterEqual:
      return ">=";
    case Comparison::kEqual:
      return "==";
    case Comparison::kNotEqual:
      return "!=";
  }
  return "?";
}

bool compare(double value, Comparison c, double threshold) {
  if (std::isnan(value)) {
    return false;  // NaN (a Prometheus answer can be "NaN") meets no threshold
  }
  switch (c) {
    case Comparison::kLess:
      return value < threshold;
    case Comparison::kLessEqual:
      return value <= threshold;
    case Comparison::kGreater:
      return value > threshold;
    case Comparison::kGreaterEqual:
      return value >= threshold;
    case Comparison::kEqual:
      return value == threshold;
    case Comparison::kNotEqual:
      return value != threshold;
  }
  return false;
}

namespace {

class AnyProbeRunner final : public ProbeRunner {
 public:
  explicit AnyProbeRunner(std::optional<ProbeUser> commandUser) : commandUser_(std::move(commandUser)) {}
  Sample run(const Probe& probe) override {
    switch (probe.kind) {
      case ProbeKind::kHttp:
        return runHttpProbe(probe.http);
      case ProbeKind::kTcp:
        return runTcpProbe(probe.tcp);
      case ProbeKind::kCommand:
        return runCommandProbe(probe.command, commandUser_ ? &*commandUser_ : nullptr);
      case ProbeKind::kPrometheus:
        return runPrometheusProbe(probe.prometheus);
    }
    return Sample{false, {}, "unknown probe kind", std::nullopt, nullptr};
  }

 private:
  std::optional<ProbeUser> commandUser_;
};

}  // namespace

std::unique_ptr<ProbeRunner> makeProbeRunner(std::optional<ProbeUser> commandUser) {
  return std::make_unique<AnyProbeRunner>(std::move(commandUser));
}

}  // namespace faultline::controller
