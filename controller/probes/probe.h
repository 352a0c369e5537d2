// Probes of the steady-state hypothesis. One sample = one request, or one load (load.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <sys/types.h>

#include <tl/expected.hpp>

#include "controller/experiment/experiment.h"
#include "controller/experiment/url.h"
#include "controller/probes/load.h"

namespace faultline::controller {

struct Sample {
  bool ok = false;
  std::chrono::microseconds latency{0};  // request start to full answer (or to the failure)
  std::string detail;                    // "200 in 3.1ms", "timeout after 2s", "connection refused"
  std::optional<double> value;           // the number the probe read, when it reads one (probeHasValue())
  // A load sample (http or tcp with load:): every request's outcome; latency is their p99.
  std::shared_ptr<const LoadStats> load;
};

class ProbeRunner {
 public:
  virtual ~ProbeRunner() = default;
  // Runs one sample of any kind; blocks at most the probe's timeout (plus a few ms; host names
  // are resolved with c-ares within it, for every kind, so a hanging resolver costs no more). Thread-safe.
  // Never throws for what the probed system does: a timeout, refused connection, wrong status,
  // body or exit code, latency above maxLatency, an unparsable Prometheus answer, a program
  // that cannot be started, or a URL parseHttpUrl() refuses is a failed sample (detail says why;
  // nothing is sent for a bad URL).
  [[nodiscard]] virtual Sample run(const Probe& probe) = 0;
};

// The user a command probe's program runs as (`faultline controller --probe-user`): its child
// calls setgroups(groups), setgid(gid), setuid(uid) before exec, so a probe never runs as root.
struct ProbeUser {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // the user's supplementary groups (getgrouplist)
};
// The user called name, from the passwd and group databases; an error text ("no user 'x' on this
// host ...") when there is none.
[[nodiscard]] tl::expected<ProbeUser, std::string> lookupProbeUser(const std::string& name);

// The runner of every probe kind: http and prometheus over HTTP/1.1 on plain TCP (Boost.Beast),
// tcp connects (Boost.Asio), command with posix_spawn, or fork/exec as commandUser when it is set
// (command.cpp), redis (hiredis), postgres (libpq), grpc (grpc.health.v1), dns (c-ares).
[[nodiscard]] std::unique_ptr<ProbeRunner> makeProbeRunner(std::optional<ProbeUser> commandUser = std::nullopt);

// One sample of each kind; what makeProbeRunner() dispatches to. Thread-safe, blocking.
[[nodiscard]] Sample runHttpProbe(const HttpProbe& probe);
[[nodiscard]] Sample runTcpProbe(const TcpProbe& probe);
// runAs: the user the program runs as (the caller must be able to switch to it: root, or runAs
// is the caller's own user); nullptr: the caller's own user and groups.
[[nodiscard]] Sample runCommandProbe(const CommandProbe& probe, const ProbeUser* runAs = nullptr);
[[nodiscard]] Sample runPrometheusProbe(const PrometheusProbe& probe);
// The protocol probes: a fresh connection per sample (redis.cpp, postgres.cpp, grpc.cpp, dns.cpp);
// the latency is the whole exchange (resolution, connect, AUTH, the request and its reply), with
// no process start-up. Every call ends by the probe's timeout; replies are bounded (redis:
// kMaxProtocolReply bytes, grpc: 64 KiB; postgres: only the first row's first value is judged).
[[nodiscard]] Sample runRedisProbe(const RedisProbe& probe);
[[nodiscard]] Sample runPostgresProbe(const PostgresProbe& probe);
[[nodiscard]] Sample runGrpcProbe(const GrpcProbe& probe);
[[nodiscard]] Sample runDnsProbe(const DnsProbe& probe);

// "0.4ms", "3.1ms", "612ms", "1.25s"
[[nodiscard]] std::string formatLatency(std::chrono::microseconds d);
// "500ms", "2s", "1.5s"
[[nodiscard]] std::string formatLimit(std::chrono::milliseconds d);

}  // namespace faultline::controller
