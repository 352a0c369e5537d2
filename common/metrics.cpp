#include "common/metrics.h"

#include <cassert>
#include <cmath>
#include <utility>

#include <fmt/format.h>

namespace faultline::metrics {
namespace {

bool validName(std::string_view name, bool colons) {
  if (name.empty()) {
    return false;
  }
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colons && c == ':');
    const bool digit = c >= '0' && c <= '9';
    if (!letter && !(digit && i > 0)) {
      return false;
    }
  }
  return true;
}

std::string cut(const std::string& v) {
  return v.size() <= kMaxLabelValue ? v : v.substr(0, kMaxLabelValue);
}

// {a="x",b="y"} (with extra appended last, e.g. le="0.5"); "" without labels.
std::string labelText(const std::vector<std::string>& names, const std::vector<std::string>& values,
                      std::string_view extraName = {}, std::string_view extraValue = {}) {
  if (names.empty() && extraName.empty()) {
    return {};
  }
  std::string out = "{";
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) {
      out += ',';
    }
    out += names[i];
    out += "=\"";
    out += escapeLabelValue(values[i]);
    out += '"';
  }
  if (!extraName.empty()) {
    if (!names.empty()) {
      out += ',';
    }
    out += extraName;
    out += "=\"";
    out += extraValue;
    out += '"';
  }
  out += '}';
  return out;
}

void header(std::string& out, const std::string& name, const std::string& help, std::string_view type) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += escapeHelp(help);
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

}  // namespace

std::string escapeLabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (const char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string escapeHelp(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (const char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

std::string formatValue(double v) {
  if (std::isnan(v)) {
    return "NaN";
  }
  if (std::isinf(v)) {
    return v > 0 ? "+Inf" : "-Inf";
  }
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    return fmt::format("{}", static_cast<int64_t>(v));
  }
  return fmt::format("{}", v);  // the shortest text that reads back as v
}

const std::vector<double>& latencyBuckets() {
  static const std::vector<double> b{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
  return b;
}

Histogram::Histogram(const std::vector<double>& bounds)
    : bounds_(bounds), counts_(new std::atomic<uint64_t>[bounds.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    counts_[i].store(0, std::memory_order_relaxed);
  }
}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) {
    ++i;
  }
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

std::vector<uint64_t> Histogram::buckets() const {
  std::vector<uint64_t> out(bounds_.size() + 1);
  for (size_t i = 0; i < out.size(); ++i) {
    out[i] = counts_[i].load(std::memory_order_relaxed);
  }
  return out;
}

template <typename T>
Family<T>::Family(std::string name, std::string help, std::vector<std::string> labels, size_t maxSeries,
                  std::vector<double> bounds, Counter* dropped)
    : name_(std::move(name)),
      help_(std::move(help)),
      labels_(std::move(labels)),
      maxSeries_(maxSeries),
      bounds_(std::move(bounds)),
      dropped_(dropped) {
  overflow_ = make();
}

template <typename T>
std::unique_ptr<T> Family<T>::make() const {
  if constexpr (std::is_same_v<T, Histogram>) {
    return std::make_unique<Histogram>(bounds_);
  } else {
    return std::make_unique<T>();
  }
}

template <typename T>
T& Family<T>::with(const std::vector<std::string>& values) {
  assert(values.size() == labels_.size());
  if (values.size() != labels_.size()) {
    return *overflow_;
  }
  std::vector<std::string> key;
  key.reserve(values.size());
  for (const auto& v : values) {
    key.push_back(cut(v));
  }
  std::lock_guard lock(mutex_);
  if (auto it = series_.find(key); it != series_.end()) {
    return *it->second;
  }
  if (series_.size() >= maxSeries_) {
    if (dropped_ != nullptr) {
      dropped_->inc();
    }
    return *overflow_;
  }
  auto& slot = series_[std::move(key)];
  slot = make();
  return *slot;
}

template <typename T>
void Family<T>::remove(const std::vector<std::string>& values) {
  std::vector<std::string> key;
  key.reserve(values.size());
  for (const auto& v : values) {
    key.push_back(cut(v));
  }
  std::lock_guard lock(mutex_);
  series_.erase(key);
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

Registry::Registry() {
  auto& dropped = counter("faultline_metrics_series_dropped_total",
                          "Metric updates dropped because their family already held its maximum number of label sets "
                          "(a label that should be bounded is not)");
  dropped_ = &dropped.with({});
}

void Registry::checkName(const std::string& name, const std::vector<std::string>& labels, Type type) {
  assert(validName(name, true));
  for (const auto& e : order_) {
    const std::string& other = e.counter != nullptr ? e.counter->name()
                               : e.gauge != nullptr ? e.gauge->name()
                                                    : e.histogram->name();
    assert(other != name);
    (void)other;
  }
  for (const auto& l : labels) {
    assert(validName(l, false) && !l.starts_with("__") && !(type == Type::Histogram && l == "le"));
    (void)l;
  }
  (void)name;
  (void)type;
}

CounterFamily& Registry::counter(std::string name, std::string help, std::vector<std::string> labels,
                                 size_t maxSeries) {
  std::lock_guard lock(mutex_);
  checkName(name, labels, Type::Counter);
  counters_.emplace_back(
      new CounterFamily(std::move(name), std::move(help), std::move(labels), maxSeries, {}, dropped_));
  order_.push_back(Entry{Type::Counter, counters_.back().get(), nullptr, nullptr});
  return *counters_.back();
}

GaugeFamily& Registry::gauge(std::string name, std::string help, std::vector<std::string> labels, size_t maxSeries) {
  std::lock_guard lock(mutex_);
  checkName(name, labels, Type::Gauge);
  gauges_.emplace_back(new GaugeFamily(std::move(name), std::move(help), std::move(labels), maxSeries, {}, dropped_));
  order_.push_back(Entry{Type::Gauge, nullptr, gauges_.back().get(), nullptr});
  return *gauges_.back();
}

HistogramFamily& Registry::histogram(std::string name, std::string help, std::vector<double> bounds,
                                     std::vector<std::string> labels, size_t maxSeries) {
  std::lock_guard lock(mutex_);
  checkName(name, labels, Type::Histogram);
  for (size_t i = 0; i < bounds.size(); ++i) {
    assert(std::isfinite(bounds[i]) && (i == 0 || bounds[i] > bounds[i - 1]));
  }
  histograms_.emplace_back(
      new HistogramFamily(std::move(name), std::move(help), std::move(labels), maxSeries, std::move(bounds), dropped_));
  order_.push_back(Entry{Type::Histogram, nullptr, nullptr, histograms_.back().get()});
  return *histograms_.back();
}

void Registry::onCollect(std::function<void()> collect) {
  std::lock_guard lock(mutex_);
  collect_.push_back(std::move(collect));
}

std::string Registry::render() const {
  std::vector<Entry> order;
  std::vector<std::function<void()>> collect;
  {
    std::lock_guard lock(mutex_);
    order = order_;
    collect = collect_;
  }
  for (const auto& c : collect) {
    c();
  }
  std::string out;
  for (const auto& e : order) {
    if (e.counter != nullptr) {
      const auto& f = *e.counter;
      header(out, f.name_, f.help_, "counter");
      std::lock_guard lock(f.mutex_);
      for (const auto& [values, c] : f.series_) {
        out += f.name_;
        out += labelText(f.labels_, values);
        out += ' ';
        out += fmt::format("{}", c->value());
        out += '\n';
      }
    } else if (e.gauge != nullptr) {
      const auto& f = *e.gauge;
      header(out, f.name_, f.help_, "gauge");
      std::lock_guard lock(f.mutex_);
      for (const auto& [values, g] : f.series_) {
        out += f.name_;
        out += labelText(f.labels_, values);
        out += ' ';
        out += formatValue(g->value());
        out += '\n';
      }
    } else {
      const auto& f = *e.histogram;
      header(out, f.name_, f.help_, "histogram");
      std::lock_guard lock(f.mutex_);
      for (const auto& [values, h] : f.series_) {
        const auto counts = h->buckets();
        uint64_t cumulative = 0;
        for (size_t i = 0; i < counts.size(); ++i) {
          cumulative += counts[i];
          out += f.name_;
          out += "_bucket";
          out += labelText(f.labels_, values, "le", i < f.bounds_.size() ? formatValue(f.bounds_[i]) : "+Inf");
          out += ' ';
          out += fmt::format("{}", cumulative);
          out += '\n';
        }
        const std::string labels = labelText(f.labels_, values);
        out += fmt::format("{}_sum{} {}\n{}_count{} {}\n", f.name_, labels, formatValue(h->sum()), f.name_, labels,
                           cumulative);
      }
    }
  }
  return out;
}

}  // namespace faultline::metrics
