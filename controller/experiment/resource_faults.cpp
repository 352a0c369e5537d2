// The fields of stress.cpu, stress.memory and cgroup.squeeze faults: workers, load, sizes, CPUs.
#include "controller/experiment/parser.h"

#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "agent/faults/spec.h"

namespace faultline::controller {

using namespace detail;

void Parser::parseResourceFault(FaultKind kind, const MapNode& m, v1::FaultSpec& spec) {
  switch (kind) {
    case FaultKind::kStressCpu: {
      auto* c = spec.mutable_stress_cpu();
      c->set_workers(1);
      if (auto workers = lookup(m, "workers")) {
        if (auto v = integer(*workers, 1, kMaxStressWorkers, "a number of worker processes")) {
          c->set_workers(static_cast<uint32_t>(*v));
        }
      }
      c->set_load_percent(100);
      if (auto load = lookup(m, "load")) {
        if (auto v = percent(*load)) {
          c->set_load_percent(*v);
        }
      }
      break;
    }
    case FaultKind::kStressMemory: {
      auto* mem = spec.mutable_stress_memory();
      if (auto b = require(m, "bytes", "a size from 1mib to 1tib, e.g. 512mib")) {
        if (auto v = bytes64(*b)) {
          mem->set_bytes(*v);
        }
      }
      break;
    }
    case FaultKind::kSqueeze: {
      auto* q = spec.mutable_cgroup_squeeze();
      if (auto c = require(m, "cgroup", "a cgroup v2 path such as /system.slice/orders.service")) {
        if (auto v = scalar(*c, "a cgroup v2 path such as /system.slice/orders.service")) {
          q->set_cgroup(*v);
        }
      }
      if (auto cpus = lookup(m, "cpus")) {
        if (auto v = number(*cpus, "a number of CPUs from 0.01 to 1024, e.g. 0.5")) {
          q->set_cpus(*v);
        }
      }
      if (auto high = lookup(m, "memoryHigh")) {
        if (auto v = bytes64(*high)) {
          q->set_memory_high_bytes(*v);
        }
      }
      if (auto pids = lookup(m, "pidsMax")) {
        if (auto v = integer(*pids, 1, kMaxPidsMax, "a number of processes (the kernel's pids.max limit)")) {
          q->set_pids_max(static_cast<uint64_t>(*v));
        }
      }
      if (!q->has_cpus() && !q->has_memory_high_bytes() && !q->has_pids_max() &&
          (lookup(m, "cpus") || lookup(m, "memoryHigh") || lookup(m, "pidsMax"))) {
        // A limit was given but its value was refused (and reported): a placeholder keeps
        // validateFaultSpec() from also saying that no limit was given.
        q->set_pids_max(1);
      }
      break;
    }
    default:  // not a resource fault: parseFault() calls the family's own
      break;
  }
}

std::optional<double> Parser::number(const Field& f, std::string_view accepted) {
  auto text = scalar(f, accepted);
  if (!text) {
    return std::nullopt;
  }
  double value = 0;
  auto [end, ec] = std::from_chars(text->data(), text->data() + text->size(), value);
  if (text->empty() || ec != std::errc{} || end != text->data() + text->size()) {
    error(f.mark, f.path, fmt::format("'{}' is not a number; accepted: {}", *text, accepted));
    return std::nullopt;
  }
  return value;  // the range is checked by validateFaultSpec()
}

std::optional<uint64_t> Parser::bytes64(const Field& f) {
  constexpr std::string_view accepted =
      "bytes with a unit b, kib, mib, gib, tib (or kb, mb, gb, tb: also x1024), "
      "e.g. 512mib";
  auto text = scalar(f, accepted);
  if (!text) {
    return std::nullopt;
  }
  auto parsed = splitNumber(*text);
  if (!parsed) {
    error(f.mark, f.path, fmt::format("'{}' is not a size; accepted: {}", *text, accepted));
    return std::nullopt;
  }
  const auto& [value, unit] = *parsed;
  static constexpr std::array<std::pair<std::string_view, double>, 9> kUnits{{{"b", 1},
                                                                              {"kb", 0x1p10},
                                                                              {"kib", 0x1p10},
                                                                              {"mb", 0x1p20},
                                                                              {"mib", 0x1p20},
                                                                              {"gb", 0x1p30},
                                                                              {"gib", 0x1p30},
                                                                              {"tb", 0x1p40},
                                                                              {"tib", 0x1p40}}};
  for (const auto& [name, multiplier] : kUnits) {
    if (unit == name) {
      const double bytes = std::round(value * multiplier);
      if (bytes < 1 || bytes > 0x1p60) {
        error(f.mark, f.path, fmt::format("{} is out of range; accepted: from 1b to 1tib", *text));
        return std::nullopt;
      }
      return static_cast<uint64_t>(bytes);
    }
  }
  error(f.mark, f.path,
        unit.empty() ? fmt::format("'{}' has no unit; accepted: {}", *text, accepted)
                     : fmt::format("'{}' has an unknown unit '{}'; accepted: {}", *text, unit, accepted));
  return std::nullopt;
}

}  // namespace faultline::controller
