// Prometheus probe: an instant query through the HTTP API (GET /api/v1/query), see
// https://prometheus.io/docs/prometheus/latest/querying/api/#instant-queries
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "controller/probes/http.h"
#include "controller/probes/probe.h"

namespace faultline::controller {
namespace {

std::string percentEncode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
        c == '.' || c == '~') {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// Prometheus sends sample values as strings: "0.25", "NaN", "+Inf", "-Inf".
std::optional<double> parseValue(const nlohmann::json& pair) {
  if (!pair.is_array() || pair.size() != 2 || !pair[1].is_string()) {
    return std::nullopt;
  }
  const std::string text = pair[1].get<std::string>();
  if (text == "NaN") {
    return std::nan("");
  }
  if (text == "+Inf") {
    return HUGE_VAL;
  }
  if (text == "-Inf") {
    return -HUGE_VAL;
  }
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size()) {
    return std::nullopt;
  }
  return v;
}

std::string formatValue(double v) {
  char text[64];
  std::snprintf(text, sizeof text, "%g", v);
  return text;
}

}  // namespace

Sample runPrometheusProbe(const PrometheusProbe& spec) {
  auto parts = parseHttpUrl(spec.url);
  if (!parts) {
    return Sample{false, std::chrono::microseconds{0}, parts.error(), std::nullopt, nullptr};
  }
  std::string base = parts->target;
  while (!base.empty() && base.back() == '/') {
    base.pop_back();
  }
  const std::string target = base + "/api/v1/query?query=" + percentEncode(spec.query);
  Sample sample;
  auto answer = httpExchange(*parts, "GET", target, {}, "", spec.timeout, sample.latency);
  if (!answer) {
    sample.detail = std::move(answer.error());
    return sample;
  }
  const auto doc = nlohmann::json::parse(answer->body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    sample.detail = "status " + std::to_string(answer->status) + ", the answer is not Prometheus JSON";
    return sample;
  }
  if (doc.value("status", "") != "success") {
    std::string why = doc.contains("error") && doc["error"].is_string() ? doc["error"].get<std::string>() : "";
    sample.detail = "query failed (status " + std::to_string(answer->status) + ")" + (why.empty() ? "" : ": " + why);
    return sample;
  }
  const auto& data = doc.contains("data") ? doc["data"] : nlohmann::json();
  const std::string type = data.is_object() ? data.value("resultType", "") : "";
  const auto& result = data.is_object() && data.contains("result") ? data["result"] : nlohmann::json();
  std::optional<double> value;
  if (type == "scalar") {
    value = parseValue(result);
  } else if (type == "vector" && result.is_array()) {
    if (result.empty()) {
      sample.detail = "the query returned no series (an empty vector is no value)";
      return sample;
    }
    if (result.size() > 1) {
      sample.detail = "the query returned " + std::to_string(result.size()) +
                      " series; accepted: one (aggregate it, e.g. with sum() or max())";
      return sample;
    }
    if (result[0].is_object() && result[0].contains("value")) {
      value = parseValue(result[0]["value"]);
    }
  } else {
    sample.detail = "the query returned a " + (type.empty() ? std::string("malformed result") : type) +
                    "; accepted: a scalar or a vector of one series";
    return sample;
  }
  if (!value) {
    sample.detail = "the answer has no readable sample value";
    return sample;
  }
  sample.value = value;
  const std::string shown =
      formatValue(*value) + " " + std::string(comparisonText(spec.comparison)) + " " + formatValue(spec.threshold);
  if (!compare(*value, spec.comparison, spec.threshold)) {
    sample.detail = "value " + formatValue(*value) + ", expected " + std::string(comparisonText(spec.comparison)) +
                    " " + formatValue(spec.threshold);
    return sample;
  }
  sample.detail = shown + " in " + formatLatency(sample.latency);
  sample.ok = true;
  return sample;
}

}  // namespace faultline::controller
