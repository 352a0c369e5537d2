// Validation of fault specs and conversions between protobuf and C++ units.
//
// The controller calls validateFaultSpec() when it parses an experiment file and the agent calls
// it again before any kernel call: a spec that fails here never reaches the kernel.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/duration.pb.h>
#include <tl/expected.hpp>

#include "agent/kernel/net_types.h"
#include "faultline/v1/faults.pb.h"

namespace faultline {

// A field that failed validation. field: dotted path inside the spec (e.g. "delay.jitter");
// message: what is wrong and what would be accepted.
struct SpecError {
  std::string field;
  std::string message;
};

// The most stress.cpu workers one fault may start.
inline constexpr uint32_t kMaxStressWorkers = 1024;
// The largest pid and pids.max value: PID_MAX_LIMIT on 64-bit kernels (4 * 1024 * 1024); pids.max
// rejects more with EINVAL (kernel/cgroup/pids.c).
inline constexpr uint64_t kMaxPidsMax = uint64_t{1} << 22;

// Checks every field and the rules between fields; never touches the kernel.
// Accepts: interface names of 1-15 bytes without '/', ':' or whitespace (or "default"); netns
// empty or an absolute path, or instead netns_process: a process selector (as below, fields
// "netns.pid", ...) without count or percent; direction egress or ingress (both: network.partition only); match
// CIDRs of one address family, ports 1-65535 with protocol tcp or udp; delay in (0, 1 h], jitter in
// [0, delay], a distribution other than uniform only with jitter; percentages in [0, 100] (the
// fault's own percent in (0, 100]); Gilbert-Elliott p in (0, 100] without percent/correlation;
// rates in [8 bit/s, 2^40 bit/s]; reorder with a delay; bandwidth latency or limit, not both;
// kill: pid > 1 or a non-empty name, and a known signal.
// Field names are the experiment file's keys below the fault ("jitter", "gilbertElliott.p",
// "match.destination"; "interface", "netns", "direction", "match.*" live under target).
// Process selectors (kill, pause): exactly one of pid > 1, a non-empty name, a cmdline that is an
// RE2 regex (common/regex.h), an absolute cgroup path without "..", a unit name, an absolute pidfile path;
// count or percent (0, 100], not both; kill every in [100ms, 1h]. stress.cpu: 1-1024 workers,
// load (0, 100]; stress.memory: 1 MiB - 1 TiB; cgroup.squeeze: a cgroup below the root and at
// least one of cpus [0.01, 1024], memory_high_bytes >= 1 MiB, pids_max in [1, kMaxPidsMax].
[[nodiscard]] tl::expected<void, SpecError> validateFaultSpec(const v1::FaultSpec& spec);

// The fault kind as written in experiment files ("network.delay", ...); "" when unset.
[[nodiscard]] std::string_view faultKindName(const v1::FaultSpec& spec);

// Every fault kind's name, in the order of FaultSpec's `kind` oneof in faults.proto: derived from
// the message's descriptor and faultKindName(), so a kind added to the proto is listed here without
// a second hand-kept list (a kind faultKindName() does not name yet appears as ""; a unit test
// checks there is none). Built once; safe to call from any thread.
[[nodiscard]] const std::vector<std::string_view>& faultKindNames();

// The target of a network fault; nullptr for any other kind.
[[nodiscard]] const v1::NetworkTarget* networkTarget(const v1::FaultSpec& spec);

// A signal by name ("SIGKILL", "KILL", case-insensitive) or number ("9"); 0 when unknown.
// Empty means SIGKILL.
[[nodiscard]] int parseSignal(std::string_view text);

// Checks a gRPC address given on a command line: HOST:PORT (HOST a name, an IPv4 address, or an
// IPv6 address in brackets; PORT 1-65535, or 0 when listening) or unix:PATH. Returns "" when
// valid, else what is wrong and what is accepted.
[[nodiscard]] std::string checkAddress(std::string_view address, bool listening);

// Parses KEY=VALUE labels into out. Returns "" when all are valid, else what is wrong: an empty
// key, a missing '=', or a key given twice.
[[nodiscard]] std::string parseLabels(const std::vector<std::string>& labels, std::map<std::string, std::string>& out);

// seconds beyond +-9e9 (about 285 years; a peer may send any int64) count as +-9e9.
[[nodiscard]] std::chrono::microseconds toMicros(const google::protobuf::Duration& d);
[[nodiscard]] google::protobuf::Duration toProto(std::chrono::nanoseconds d);

// "100ms", "1.5s", "250us", "2m", "1h" -> duration; error text says what is accepted.
[[nodiscard]] tl::expected<std::chrono::nanoseconds, std::string> parseDuration(std::string_view text);
// Human form of a duration: "100ms", "1.5s".
[[nodiscard]] std::string formatDuration(std::chrono::nanoseconds d);

}  // namespace faultline
