#include "agent/faults/network/netem_dist.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <sstream>

#include <fmt/format.h>

namespace faultline::agent {
namespace {

constexpr size_t kTableSize = 4096;
constexpr double kScale = 8192;       // NETEM_DIST_SCALE
constexpr size_t kMaxValues = 16384;  // NETEM_DIST_MAX

// Φ⁻¹(q) by bisection on the normal CDF; |error| < 1e-12.
double inverseNormal(double q) {
  double lo = -40;
  double hi = 40;
  for (int i = 0; i < 100; ++i) {
    const double mid = (lo + hi) / 2;
    if (0.5 * std::erfc(-mid / std::sqrt(2.0)) < q) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return (lo + hi) / 2;
}

std::vector<double> normalQuantiles(size_t n) {
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = inverseNormal((static_cast<double>(i) + 0.5) / static_cast<double>(n));
  }
  return out;
}

// Pareto with shape 3 and scale 1 (mean 1.5, deviation √0.75), standardized.
std::vector<double> paretoQuantiles(size_t n) {
  constexpr double kShape = 3;
  const double mean = kShape / (kShape - 1);
  const double deviation = std::sqrt(kShape / ((kShape - 1) * (kShape - 1) * (kShape - 2)));
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) {
    const double q = (static_cast<double>(i) + 0.5) / static_cast<double>(n);
    out[i] = (std::pow(1 - q, -1 / kShape) - mean) / deviation;
  }
  return out;
}

std::vector<double> standardized(std::vector<double> v) {
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  double squares = 0;
  for (double x : v) {
    squares += (x - mean) * (x - mean);
  }
  const double deviation = std::sqrt(squares / static_cast<double>(v.size()));
  for (double& x : v) {
    x = (x - mean) / deviation;
  }
  return v;
}

std::vector<int16_t> toTable(const std::vector<double>& quantiles) {
  std::vector<int16_t> out;
  out.reserve(quantiles.size());
  for (double q : quantiles) {
    const double v = std::clamp(std::round(q * kScale), static_cast<double>(std::numeric_limits<int16_t>::min()),
                                static_cast<double>(std::numeric_limits<int16_t>::max()));
    out.push_back(static_cast<int16_t>(v));
  }
  return out;
}

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return {};
  }
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

std::string_view distributionName(v1::DelayDistribution distribution) {
  switch (distribution) {
    case v1::DELAY_DISTRIBUTION_NORMAL:
      return "normal";
    case v1::DELAY_DISTRIBUTION_PARETO:
      return "pareto";
    case v1::DELAY_DISTRIBUTION_PARETONORMAL:
      return "paretonormal";
    default:
      return "uniform";
  }
}

std::vector<std::string> defaultDistributionDirs() {
  std::vector<std::string> dirs;
  if (const char* env = std::getenv("TC_LIB_DIR"); env != nullptr && *env != '\0') {
    dirs.emplace_back(env);
  }
  for (const char* d :
       {"/usr/lib/x86_64-linux-gnu/tc", "/usr/lib/aarch64-linux-gnu/tc", "/usr/lib64/tc", "/usr/lib/tc", "/lib/tc"}) {
    dirs.emplace_back(d);
  }
  return dirs;
}

std::vector<int16_t> generateDelayDistribution(v1::DelayDistribution distribution) {
  switch (distribution) {
    case v1::DELAY_DISTRIBUTION_NORMAL:
      return toTable(normalQuantiles(kTableSize));
    case v1::DELAY_DISTRIBUTION_PARETO:
      return toTable(paretoQuantiles(kTableSize));
    case v1::DELAY_DISTRIBUTION_PARETONORMAL: {
      // The quantiles of the sum of independent parts, from every pair of 256 quantiles each.
      constexpr size_t kParts = 256;
      const auto n = normalQuantiles(kParts);
      const auto p = paretoQuantiles(kParts);
      std::vector<double> sums;
      sums.reserve(kParts * kParts);
      for (double a : n) {
        for (double b : p) {
          sums.push_back(0.25 * a + 0.75 * b);
        }
      }
      std::sort(sums.begin(), sums.end());
      std::vector<double> quantiles(kTableSize);
      const size_t step = sums.size() / kTableSize;
      for (size_t i = 0; i < kTableSize; ++i) {
        quantiles[i] = sums[i * step + step / 2];
      }
      return toTable(standardized(std::move(quantiles)));
    }
    default:
      return {};
  }
}

tl::expected<std::vector<int16_t>, std::string> parseDistributionFile(std::string_view text) {
  std::vector<int16_t> out;
  size_t line = 1;
  size_t at = 0;
  while (at < text.size()) {
    const char c = text[at];
    if (c == '\n') {
      ++line;
      ++at;
    } else if (c == '#') {
      while (at < text.size() && text[at] != '\n') {
        ++at;
      }
    } else if (c == ' ' || c == '\t' || c == '\r') {
      ++at;
    } else {
      size_t end = at;
      while (end < text.size() && text[end] != ' ' && text[end] != '\t' && text[end] != '\n' && text[end] != '\r' &&
             text[end] != '#') {
        ++end;
      }
      int value = 0;
      auto [ptr, ec] = std::from_chars(text.data() + at, text.data() + end, value);
      if (ec != std::errc{} || ptr != text.data() + end || value < std::numeric_limits<int16_t>::min() ||
          value > std::numeric_limits<int16_t>::max()) {
        return tl::unexpected(
            fmt::format("line {}: '{}' is not an integer from -32768 to 32767", line, text.substr(at, end - at)));
      }
      if (out.size() == kMaxValues) {
        return tl::unexpected(fmt::format("line {}: more than {} values (netem's limit)", line, kMaxValues));
      }
      out.push_back(static_cast<int16_t>(value));
      at = end;
    }
  }
  if (out.empty()) {
    return tl::unexpected(std::string("no values"));
  }
  return out;
}

DelayTable delayDistributionTable(v1::DelayDistribution distribution, const std::vector<std::string>& dirs) {
  if (distribution != v1::DELAY_DISTRIBUTION_NORMAL && distribution != v1::DELAY_DISTRIBUTION_PARETO &&
      distribution != v1::DELAY_DISTRIBUTION_PARETONORMAL) {
    return {};
  }
  static std::mutex mutex;
  static std::map<std::pair<int, std::vector<std::string>>, DelayTable> cache;
  const std::lock_guard lock(mutex);
  const auto key = std::make_pair(static_cast<int>(distribution), dirs);
  if (auto it = cache.find(key); it != cache.end()) {
    return it->second;
  }
  DelayTable table;
  for (const auto& dir : dirs) {
    const std::string path = fmt::format("{}/{}.dist", dir, distributionName(distribution));
    auto values = parseDistributionFile(readFile(path));
    if (values) {
      table = DelayTable{std::move(*values), path};
      break;
    }
  }
  if (table.values.empty()) {
    table = DelayTable{generateDelayDistribution(distribution), "generated"};
  }
  cache.emplace(key, table);
  return table;
}

}  // namespace faultline::agent
