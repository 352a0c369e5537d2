// The fields of process.* faults: the process selector (also a network target's netns:), the
// signal and period of process.kill, the mechanism of process.pause.
#include "controller/experiment/parser.h"

#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "agent/faults/spec.h"

namespace faultline::controller {

using namespace detail;
using namespace std::chrono_literals;

namespace {

constexpr std::array<std::string_view, 8> kProcessKeys{"pid",     "name",        "cmdline", "cgroup",
                                                       "pidfile", "systemdUnit", "count",   "percent"};

}  // namespace

void Parser::parseProcessFault(FaultKind kind, const MapNode& m, v1::FaultSpec& spec) {
  switch (kind) {
    case FaultKind::kKill: {
      auto* k = spec.mutable_process_kill();
      if (auto process = parseProcess(m)) {
        *k->mutable_process() = std::move(*process);
      }
      k->set_signal("SIGKILL");
      if (auto signal = lookup(m, "signal")) {
        if (auto v = scalar(*signal, "a signal name such as SIGKILL or TERM, or a number")) {
          k->set_signal(*v);
        }
      }
      if (auto every = lookup(m, "every")) {
        if (auto v = durationIn(*every, 100ms, 1h, "from 100ms to 1h", true)) {
          *k->mutable_every() = toProto(*v);
        }
      }
      break;
    }
    case FaultKind::kPause: {
      auto* p = spec.mutable_process_pause();
      if (auto process = parseProcess(m)) {
        *p->mutable_process() = std::move(*process);
      }
      if (auto mechanism = lookup(m, "mechanism")) {
        constexpr std::string_view accepted =
            "auto (the default: cgroup freeze where a process owns its cgroup, else SIGSTOP) or freeze (cgroup "
            "freeze only; refused before anything is paused where it cannot be done)";
        if (auto v = scalar(*mechanism, accepted)) {
          if (*v == "auto") {
            p->set_mechanism(v1::PAUSE_MECHANISM_AUTO);
          } else if (*v == "freeze") {
            p->set_mechanism(v1::PAUSE_MECHANISM_FREEZE);
          } else {
            error(mechanism->mark, mechanism->path,
                  fmt::format("unknown pause mechanism '{}'; accepted: {}", *v, accepted));
          }
        }
      }
      break;
    }
    default:  // not a process fault: parseFault() calls the family's own
      break;
  }
}

std::optional<v1::ProcessSelector> Parser::parseProcess(const MapNode& fault) {
  constexpr std::string_view accepted =
      "a map with exactly one of pid, name, cmdline, cgroup, systemdUnit, pidfile, and optionally count or "
      "percent, e.g. {name: nginx} or {systemdUnit: orders, count: 1}";
  auto f = require(fault, "process", accepted);
  if (!f) {
    return std::nullopt;
  }
  return parseSelector(*f, accepted);
}

// A process selector map (process: or a network target's netns:).
std::optional<v1::ProcessSelector> Parser::parseSelector(const Field& f, std::string_view accepted) {
  auto m = openMap(f, accepted);
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kProcessKeys);
  static constexpr std::array<std::string_view, 6> kBy{"pid", "name", "cmdline", "cgroup", "systemdUnit", "pidfile"};
  std::vector<std::pair<std::string_view, Field>> given;
  for (auto key : kBy) {
    if (auto v = lookup(*m, key)) {
      given.emplace_back(key, *v);
    }
  }
  if (given.size() > 1) {
    error(m->self.mark, m->self.path,
          fmt::format("has both {} and {}; accepted: {}", given[0].first, given[1].first, accepted));
    return std::nullopt;
  }
  if (given.empty()) {
    if (m->entries.empty() || lookup(*m, "count") || lookup(*m, "percent")) {
      error(m->self.mark, m->self.path,
            fmt::format("has none of pid, name, cmdline, cgroup, systemdUnit, pidfile; accepted: {}", accepted));
    }
    return std::nullopt;
  }
  v1::ProcessSelector selector;
  const auto& [key, field] = given.front();
  if (key == "pid") {
    if (auto v = integer(field, 2, kMaxPidsMax, "a process id greater than 1 (pid 1 is never a target)")) {
      selector.set_pid(static_cast<int32_t>(*v));
    }
  } else if (auto v = scalar(field, "a string")) {
    if (key == "name") {
      selector.set_name(*v);
    } else if (key == "cmdline") {
      selector.set_cmdline(*v);
    } else if (key == "cgroup") {
      selector.set_cgroup(*v);
    } else if (key == "systemdUnit") {
      selector.set_systemd_unit(*v);
    } else {
      selector.set_pidfile(*v);
    }
  }
  if (auto count = lookup(*m, "count")) {
    if (auto v = integer(*count, 1, kMaxPidsMax, "a number of processes")) {
      selector.set_count(static_cast<uint32_t>(*v));
    }
  }
  if (auto p = lookup(*m, "percent")) {
    if (auto v = percent(*p)) {
      if (*v <= 0) {
        error(p->mark, p->path, fmt::format("{:g} is out of range; accepted: more than 0 and at most 100", *v));
      } else {
        selector.set_percent(*v);
      }
    }
  }
  return selector;
}

}  // namespace faultline::controller
