// Prometheus metrics: a registry of counters, gauges and histograms with labels, rendered in the
// text exposition format, version 0.0.4
// (https://prometheus.io/docs/instrumenting/exposition_formats/).
//
// Written by hand, small on purpose: Debian 12 packages no Prometheus client library for C++
// (no prometheus-cpp), and faultline needs only this much of one. What it does:
//   - every family has `# HELP` and `# TYPE`; families render in registration order, series in
//     the order of their label values;
//   - label values and HELP texts are escaped as the format says (\\, \" and \n in label values;
//     \\ and \n in HELP);
//   - counters are whole numbers (uint64 atomics; name them `..._total`), gauges doubles,
//     histograms have fixed upper bounds given at registration (in seconds, as Prometheus expects:
//     name them `..._seconds`), rendered cumulative with `le="+Inf"`, `_sum` and `_count`.
// Bounds: a family holds at most maxSeries label sets (default kDefaultMaxSeries); an update of a
// label set past that changes nothing and counts in faultline_metrics_series_dropped_total, so a
// label that turns out unbounded can never grow the process without limit. A label value longer
// than kMaxLabelValue bytes is cut there.
//
// Thread-safety: every call may be made from any thread. An update of a series already created
// takes no lock (atomics); with() takes the family's mutex (a map lookup). render() takes each
// family's mutex in turn, never two at once, and never calls out with one held.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace faultline::metrics {

inline constexpr size_t kDefaultMaxSeries = 10'000;
inline constexpr size_t kMaxLabelValue = 256;  // bytes

// Only goes up (or is reset with the process).
class Counter {
 public:
  void inc(uint64_t by = 1) { value_.fetch_add(by, std::memory_order_relaxed); }
  // For a count kept elsewhere and read at each render (Registry::onCollect): it must never go down.
  void setTotal(uint64_t total) { value_.store(total, std::memory_order_relaxed); }
  [[nodiscard]] uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down.
class Gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void add(double by) { value_.fetch_add(by, std::memory_order_relaxed); }
  [[nodiscard]] double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

// Observations counted into fixed buckets by upper bound (inclusive, as Prometheus' `le`).
class Histogram {
 public:
  // bounds: strictly increasing, finite (checked by Registry::histogram()).
  explicit Histogram(const std::vector<double>& bounds);
  void observe(double v);
  // Per bucket (not cumulative), the last one the +Inf bucket; sum; count.
  [[nodiscard]] std::vector<uint64_t> buckets() const;
  [[nodiscard]] double sum() const { return sum_.load(std::memory_order_relaxed); }
  [[nodiscard]] uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  const std::vector<double>& bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_.size() + 1
  std::atomic<double> sum_{0};
  std::atomic<uint64_t> count_{0};
};

enum class Type { Counter, Gauge, Histogram };

// One metric name with its label names, and a series per label set. T is Counter, Gauge or Histogram.
template <typename T>
class Family {
 public:
  // The series of these label values (one per label name, in order), created on first use; the
  // reference stays valid as long as the family and until remove() of the same values. With the
  // wrong number of values, or past maxSeries, a series that is never rendered.
  T& with(const std::vector<std::string>& values);
  // Removes the series (a gauge of an active run, when the run ends). Nothing when there is none.
  // A reference with() gave for it must not be used after.
  void remove(const std::vector<std::string>& values);
  [[nodiscard]] const std::string& name() const { return name_; }

 private:
  friend class Registry;
  Family(std::string name, std::string help, std::vector<std::string> labels, size_t maxSeries,
         std::vector<double> bounds, Counter* dropped);
  std::unique_ptr<T> make() const;

  const std::string name_;
  const std::string help_;
  const std::vector<std::string> labels_;
  const size_t maxSeries_;
  const std::vector<double> bounds_;  // histograms only
  Counter* dropped_;                  // counts updates past maxSeries_ (null for the dropped family itself)
  mutable std::mutex mutex_;
  std::map<std::vector<std::string>, std::unique_ptr<T>> series_;
  std::unique_ptr<T> overflow_;  // what with() gives past maxSeries: never rendered
};

using CounterFamily = Family<Counter>;
using GaugeFamily = Family<Gauge>;
using HistogramFamily = Family<Histogram>;

class Registry {
 public:
  Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Registers a family; the reference lives as long as the registry. name: [a-zA-Z_:][a-zA-Z0-9_:]*,
  // not registered before; labels: [a-zA-Z_][a-zA-Z0-9_]*, not starting "__", no "le" on a
  // histogram. A breach is a programming error (assert; in a release build the family is
  // registered and renders what it is given).
  CounterFamily& counter(std::string name, std::string help, std::vector<std::string> labels = {},
                         size_t maxSeries = kDefaultMaxSeries);
  GaugeFamily& gauge(std::string name, std::string help, std::vector<std::string> labels = {},
                     size_t maxSeries = kDefaultMaxSeries);
  // bounds: the buckets' upper bounds, strictly increasing, finite; +Inf is added.
  HistogramFamily& histogram(std::string name, std::string help, std::vector<double> bounds,
                             std::vector<std::string> labels = {}, size_t maxSeries = kDefaultMaxSeries);

  // Called at the start of every render(), on the rendering thread, in the order added: sets
  // gauges that are read rather than kept up to date (e.g. a count another part holds). Must
  // be quick and must not block on anything a fault or revert path holds for long.
  void onCollect(std::function<void()> collect);

  // The whole registry in the text format 0.0.4 (ends with a newline).
  [[nodiscard]] std::string render() const;

 private:
  struct Entry {
    Type type;
    CounterFamily* counter = nullptr;
    GaugeFamily* gauge = nullptr;
    HistogramFamily* histogram = nullptr;
  };
  void checkName(const std::string& name, const std::vector<std::string>& labels, Type type);

  mutable std::mutex mutex_;  // guards families_, collect_ (not the families' series)
  std::vector<std::unique_ptr<CounterFamily>> counters_;
  std::vector<std::unique_ptr<GaugeFamily>> gauges_;
  std::vector<std::unique_ptr<HistogramFamily>> histograms_;
  std::vector<Entry> order_;
  std::vector<std::function<void()>> collect_;
  Counter* dropped_ = nullptr;  // faultline_metrics_series_dropped_total
};

// The text format's escapes: label values (\ " newline) and HELP (\ newline).
[[nodiscard]] std::string escapeLabelValue(std::string_view v);
[[nodiscard]] std::string escapeHelp(std::string_view v);
// A sample value as Prometheus parses it: integers without a decimal point, +Inf, -Inf, NaN.
[[nodiscard]] std::string formatValue(double v);

// Upper bounds in seconds for durations from 1 ms to 10 s (apply, revert, probe latency).
[[nodiscard]] const std::vector<double>& latencyBuckets();

}  // namespace faultline::metrics
