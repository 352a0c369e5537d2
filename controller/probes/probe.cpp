// The probe runner of every kind, and the small helpers the parser and the probes share.
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>

#include <fmt/format.h>

#include "common/regex.h"
#include "controller/probes/http.h"
#include "controller/probes/probe.h"
#include "controller/probes/protocol.h"

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

std::string addressText(const ProbeAddress& a) {
  if (!a.unixSocket.empty()) {
    return "unix:" + a.unixSocket;
  }
  return a.host.find(':') != std::string::npos ? fmt::format("[{}]:{}", a.host, a.port)
                                               : fmt::format("{}:{}", a.host, a.port);
}

std::string formatNumber(double v) {
  char text[64];
  std::snprintf(text, sizeof text, "%g", v);
  return text;
}

std::optional<double> readNumber(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
    text.remove_prefix(1);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
    text.remove_suffix(1);
  }
  if (!text.empty() && text.front() == '+') {
    text.remove_prefix(1);
  }
  double v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || !std::isfinite(v)) {
    return std::nullopt;
  }
  return v;
}

std::string shownValue(std::string_view text) {
  std::string out = "'";
  for (size_t i = 0; i < text.size() && out.size() < 80; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      out += static_cast<char>(c);
    }
  }
  if (out.size() >= 80) {
    out += "...";
  }
  return out + "'";
}

std::string checkValue(const ValueCheck& check, const std::string& text, std::optional<double>& value) {
  switch (check.kind) {
    case ValueCheck::Kind::kAny:
      return "";
    case ValueCheck::Kind::kEquals:
      return text == check.text ? "" : fmt::format("{}, expected {}", shownValue(text), shownValue(check.text));
    case ValueCheck::Kind::kMatch: {
      auto re = Regex::compile(check.text, RegexAnchors::kLineEnds);
      if (!re) {  // the parser compiled it already
        return "match: " + re.error();
      }
      return re->search(std::string_view(text.data(), std::min(text.size(), kMaxMatchedBytes)))
                 ? ""
                 : fmt::format("{} does not match /{}/", shownValue(text), check.text);
    }
    case ValueCheck::Kind::kNumber: {
      const auto n = readNumber(text);
      if (!n) {
        return fmt::format("{} is not a number", shownValue(text));
      }
      value = *n;
      if (!compare(*n, check.number.comparison, check.number.threshold)) {
        return fmt::format("value {}, expected {} {}", formatNumber(*n), comparisonText(check.number.comparison),
                           formatNumber(check.number.threshold));
      }
      return "";
    }
  }
  return "";
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
      case ProbeKind::kRedis:
        return runRedisProbe(probe.redis);
      case ProbeKind::kPostgres:
        return runPostgresProbe(probe.postgres);
      case ProbeKind::kGrpc:
        return runGrpcProbe(probe.grpc);
      case ProbeKind::kDns:
        return runDnsProbe(probe.dns);
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
