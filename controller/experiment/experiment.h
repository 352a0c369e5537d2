// Experiment files, format v1 (YAML, apiVersion: faultline/v1): parsing and validation.
// The format is documented in docs/experiments.md.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <tl/expected.hpp>

#include "common/diagnostic.h"
#include "faultline/v1/faults.pb.h"

namespace faultline::controller {

// Limits of one experiment file; parseExperiment refuses more. The byte limit keeps a file well
// under the controller's 4 MiB gRPC message limit: a caller reading a file can read at most
// kMaxExperimentBytes + 1 bytes and pass them on, and parseExperiment reports it as too large.
inline constexpr std::size_t kMaxExperimentBytes = 1024 * 1024;  // 1 MiB
// Entries of a file's `variables:` section (as many as a request may carry values for).
inline constexpr std::size_t kMaxDeclaredVariables = 256;
inline constexpr std::size_t kMaxMethodSteps = 1000;
inline constexpr std::size_t kMaxProbes = 100;

// One error in an experiment file (common/diagnostic.h). line and column are 1-based (0 when
// unknown); they point at the offending value, at the key for unknown or duplicate keys, and at the
// parent map for a missing key. field is the dotted path of the offending key, e.g.
// "method[2].fault.delay"; empty for errors about the file as a whole (YAML syntax, empty file,
// several documents).
using Diagnostic = faultline::Diagnostic;
// format(d): "FILE:LINE:COLUMN: FIELD: MESSAGE", or "FILE:LINE:COLUMN: MESSAGE" when field is
// empty; without ":LINE:COLUMN" when line is 0 (no place in the file, e.g. a file over the size
// limit).
using faultline::format;

// How many of the agents that match the selector take part (targets.mode in the file).
enum class TargetMode {
  kAll,      // all: every matching agent
  kCount,    // count(n): the first n matching agents in agent-id order
  kRandom,   // random(n): n matching agents chosen at random
  kPercent,  // percent(p): ceil(p% of the matching agents), chosen at random
};

struct Targets {
  std::map<std::string, std::string> selector;  // agent labels that must all match; empty = every agent
  TargetMode mode = TargetMode::kAll;
  unsigned n = 0;      // kCount, kRandom: n >= 1
  double percent = 0;  // kPercent: more than 0, at most 100
};
// The mode as written in a file: "all", "count(2)", "random(1)", "percent(25)".
[[nodiscard]] std::string modeText(const Targets& t);

enum class Comparison { kLess, kLessEqual, kGreater, kGreaterEqual, kEqual, kNotEqual };
// "<", "<=", ">", ">=", "==", "!="
[[nodiscard]] std::string_view comparisonText(Comparison c);
[[nodiscard]] bool compare(double value, Comparison c, double threshold);

// "< 100": a number read by a probe (a command's stdout, a JSON value, a reply) and its bound.
struct NumberCheck {
  Comparison comparison = Comparison::kLess;
  double threshold = 0;
};

// How a probe judges the one value it reads (a Redis reply, a PostgreSQL query's first value):
// `expect: {equals: TEXT}`, `{match: REGEX}` or `{number: "< 100"}`.
struct ValueCheck {
  enum class Kind { kAny, kEquals, kMatch, kNumber };
  Kind kind = Kind::kAny;  // kAny: any value passes (an error reply or no row still fails)
  std::string text;        // kEquals: the exact text; kMatch: an RE2 regex (^ and $ at line ends)
  NumberCheck number;      // kNumber: the value read as a number (recorded as the sample's value)
};

// Limits of the protocol probes' fields (the parser refuses more).
inline constexpr std::size_t kMaxProbeArgs = 64;        // a redis command's words, a command's env entries
inline constexpr std::size_t kMaxProbeText = 4096;      // one word, query, env value, password, name
inline constexpr std::size_t kMaxUnixSocketPath = 107;  // sockaddr_un.sun_path without its NUL

// `load:` of an http or tcp probe: each sample drives load instead of sending one request. Open
// model: request i of a sample is scheduled at start + i/rate, whether or not earlier ones have
// finished; one that finds all `concurrency` requests in flight waits for a free one, and its
// latency counts from its scheduled time (coordinated omission avoided: a slow server cannot hide
// its latency by slowing the prober). A request not answered by scheduled time + timeout (waiting
// for a free slot included) is a failed request (a timeout). Each sample schedules
// floor(rate * duration) requests (at least 1) and ends when every one has ended, at most
// duration + timeout after its start. docs/experiments.md ("Load").
struct LoadSpec {
  double rate = 0;                           // requests started per second, > 0, <= kMaxLoadRatePerProbe
  unsigned concurrency = 16;                 // requests in flight at most, 1..kMaxLoadConcurrency
  std::chrono::milliseconds duration{1000};  // how long one sample drives load, 100ms..60s
};
// The caps: per probe, and the sum of the rates of every load probe of one experiment.
inline constexpr double kMaxLoadRatePerProbe = 5000;
inline constexpr unsigned kMaxLoadConcurrency = 256;
inline constexpr double kMaxLoadRatePerRun = 20000;
inline constexpr unsigned kMaxLoadConcurrencyPerRun = 1024;  // sockets the load probes of one run hold at most

// http: one request per sample (or load, see LoadSpec). A sample passes when an answer arrives within timeout, its
// status is in expectStatus, its body matches bodyMatch (when set) and it took at most maxLatency.
struct HttpProbe {
  std::string url;             // passed parseHttpUrl() (url.h): http://HOST[:PORT][/PATH], no TLS in v1
  std::string method = "GET";  // GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS
  std::vector<std::pair<std::string, std::string>> headers;  // sent as given, in file order
  std::string body;                                          // request body; empty: none
  std::vector<int> expectStatus{200};                        // accepted statuses (100-599), sorted, unique
  std::optional<std::string> bodyMatch;  // RE2 regex (^ and $ at line ends) searched in the first 64 KiB of the body
  std::chrono::milliseconds maxLatency{1000};  // a slower answer is a failed sample
  std::chrono::milliseconds timeout{2000};     // no answer by then is a failed sample
  std::optional<LoadSpec> load;                // set: each sample drives load (every request checked as above)
  // json: the number at this JSON Pointer (RFC 6901) of the body is compared (after the status
  // and bodyMatch); a body that is not JSON, a pointer that names nothing or a value that is not
  // a number is a failed sample. The number is recorded with the sample (SLI `value`).
  std::optional<std::string> jsonPointer;  // e.g. /data/0/value; at most kMaxJsonPointer bytes
  std::optional<NumberCheck> jsonNumber;   // set together with jsonPointer
};
inline constexpr std::size_t kMaxJsonPointer = 1024;

// tcp: one connect per sample (or load, see LoadSpec); the latency is the connect time.
struct TcpProbe {
  std::string host;  // a name, an IPv4 address or an IPv6 address (without brackets)
  uint16_t port = 0;
  std::chrono::milliseconds maxLatency{1000};  // a slower connect is a failed sample
  std::chrono::milliseconds timeout{2000};
  std::optional<LoadSpec> load;  // set: each sample opens connections at load.rate
};

// command: runs a program per sample, without a shell (argv[0] looked up in PATH) unless shell
// is set; in its own process group, which is killed (SIGKILL) when timeout passes.
struct CommandProbe {
  std::vector<std::string> argv;  // non-empty unless shell is set
  std::string shell;              // when set: /bin/sh -c SHELL, and argv is empty
  int expectExit = 0;
  std::optional<std::string> stdoutMatch;  // RE2 regex (^ and $ at line ends) searched in the first 64 KiB of stdout
  // stdout: {number: "< 100"}: the last non-empty line of stdout (first 64 KiB), trimmed, read as a
  // number and compared; recorded as the sample's value. Checked after the exit code and stdoutMatch.
  std::optional<NumberCheck> stdoutNumber;
  // env: set (or replace) these variables in the environment the program inherits from the
  // controller; at most kMaxProbeArgs, names [A-Za-z_][A-Za-z0-9_]*, values up to kMaxProbeText bytes.
  std::vector<std::pair<std::string, std::string>> env;
  std::chrono::milliseconds timeout{5000};
};

// Where a redis or grpc probe connects: HOST:PORT over TCP, or a Unix socket (`unix:/PATH`).
struct ProbeAddress {
  std::string host;        // a name, an IPv4 address or an IPv6 address (no brackets); empty for a socket
  uint16_t port = 0;       // TCP only
  std::string unixSocket;  // an absolute path of at most kMaxUnixSocketPath bytes; empty for TCP
};
// "10.0.0.1:6379", "[::1]:6379", "unix:/run/redis.sock"
[[nodiscard]] std::string addressText(const ProbeAddress& a);

// redis: one connection per sample (hiredis's protocol reader over the probe's own socket, so one
// deadline bounds connect, AUTH, the command and the reply): optionally AUTH, then the command;
// an error reply, a reply over kMaxProtocolReply bytes, or a reply expect refuses fails the sample.
struct RedisProbe {
  ProbeAddress address;
  std::vector<std::string> command{"PING"};  // at most kMaxProbeArgs words
  std::optional<std::string> username;       // AUTH username password (Redis 6 ACLs), or AUTH password alone
  std::optional<std::string> password;       // a secret: only from a variable marked `secret: true`
  ValueCheck expect{ValueCheck::Kind::kEquals, "PONG", {}};  // the default for PING; kAny for other commands
  std::chrono::milliseconds maxLatency{1000};
  std::chrono::milliseconds timeout{2000};
};
inline constexpr std::size_t kMaxProtocolReply = 1024 * 1024;

// postgres: one connection per sample with libpq (non-blocking: PQconnectStartParams, the host
// name resolved by the probe first, so one deadline bounds everything), then the query; the
// first column of its first row is judged by expect (no row, an error, or NULL fails unless kAny
// and a row). Parameters go to libpq as keyword/value pairs, never as one connection string.
struct PostgresProbe {
  std::string host;  // a name or IP address, or the absolute directory of the server's Unix socket
  uint16_t port = 5432;
  std::string database;                 // empty: libpq's default (the user name)
  std::string user;                     // empty: libpq's default (the controller's user)
  std::optional<std::string> password;  // a secret: only from a variable marked `secret: true`
  std::string sslmode = "prefer";       // disable, prefer or require
  std::string query = "SELECT 1";
  ValueCheck expect;
  std::chrono::milliseconds maxLatency{1000};
  std::chrono::milliseconds timeout{2000};
};

// grpc: grpc.health.v1.Health/Check on a fresh plaintext channel per sample; SERVING passes,
// any other status or an RPC error fails the sample.
struct GrpcProbe {
  ProbeAddress address;
  std::string service;  // the health service name asked about; empty: the server as a whole
  std::chrono::milliseconds maxLatency{1000};
  std::chrono::milliseconds timeout{2000};
};

// dns: resolves name with c-ares (its own sockets and timeout, so a sample cannot hang), from
// /etc/hosts and the system's resolvers, or from `server` alone. A sample passes when the name
// has at least one address of `family` and, when expect is set, one of them is in expect.
struct DnsProbe {
  std::string name;    // a host name, at most 253 bytes
  std::string server;  // empty: the system's; else an IP address (v6 without brackets)
  uint16_t serverPort = 53;
  enum class Family { kAny, kIpv4, kIpv6 } family = Family::kAny;
  std::vector<std::string> expect;  // IP addresses in canonical text form
  std::chrono::milliseconds maxLatency{1000};
  std::chrono::milliseconds timeout{2000};
};

// prometheus: an instant query (GET URL/api/v1/query?query=QUERY) per sample; the answer must be
// a scalar or a vector of exactly one series, whose value is compared with threshold. The value
// is recorded with the sample (a saturation or traffic SLI).
struct PrometheusProbe {
  std::string url;    // the server's base URL, e.g. http://127.0.0.1:9090 (parseHttpUrl())
  std::string query;  // PromQL
  Comparison comparison = Comparison::kLess;
  double threshold = 0;
  std::chrono::milliseconds timeout{2000};
};

enum class ProbeKind { kHttp, kTcp, kCommand, kPrometheus, kRedis, kPostgres, kGrpc, kDns };
// "http", "tcp", "command", "prometheus", "redis", "postgres", "grpc", "dns"
[[nodiscard]] std::string_view probeKindName(ProbeKind kind);

struct Probe {
  std::string name;
  ProbeKind kind = ProbeKind::kHttp;
  // Only the member of `kind` is meaningful.
  HttpProbe http;
  TcpProbe tcp;
  CommandProbe command;
  PrometheusProbe prometheus;
  RedisProbe redis;
  PostgresProbe postgres;
  GrpcProbe grpc;
  DnsProbe dns;
  // A guard: its first failed sample after the steady state was verified (during a fault, a wait
  // or probe step, or between steps) aborts the run before the next step starts.
  bool guard = false;
};

// One term of an SLO: SLI COMPARISON THRESHOLD, e.g. "p99 < 300ms" or "errors < 1%".
enum class SliKind {
  kP50,  // latency percentiles of the window's successful samples (nearest rank), milliseconds
  kP90,
  kP95,
  kP99,
  kMaxLatency,  // "max"
  kErrors,      // share of failed samples in the window, percent (of failed requests for a load probe)
  kValue,       // the probe's last value in the window (probeHasValue()): also named saturation
  kThroughput,  // a load probe: successful requests per second over the window; another probe: as kValue
};
// True when the probe's samples carry a number for the SLI `value`: prometheus, http with json,
// command with stdout.number, redis and postgres with expect.number.
[[nodiscard]] bool probeHasValue(const Probe& probe);
[[nodiscard]] std::string_view sliName(SliKind kind);  // "p50", ..., "max", "errors", "value"

struct SloTerm {
  SliKind sli = SliKind::kP99;
  std::string name;  // as written: "p99", "errors", "throughput", "saturation", "value"
  Comparison comparison = Comparison::kLess;
  double threshold = 0;  // milliseconds for latencies, percent for errors, requests/s for throughput, the value as is
};

// An SLO judges no window of fewer samples than this unless its `minSamples` says otherwise.
inline constexpr uint32_t kDefaultMinSamples = 5;
inline constexpr uint32_t kMaxMinSamples = 10'000;

// An SLO over one probe's samples: every term holds over the samples of the last `window`.
// Written "p99 < 300ms and errors < 1% over 30s" (see docs/experiments.md).
struct Slo {
  std::string name;
  std::string probe;      // a probe of the steady state
  std::string objective;  // as written in the file
  std::vector<SloTerm> terms;
  std::chrono::milliseconds window{30'000};
  // Fewer samples than this in a window: the SLO is "not enough data", neither held nor violated.
  uint32_t minSamples = kDefaultMinSamples;
  // Error budget: the allowed error share is the threshold of the 'errors' term; the burn rate
  // is the window's error share divided by it. The run aborts above maxBurnRate (unset: never).
  std::optional<double> maxBurnRate;
};

// Parses an objective; the error says what is wrong and what is accepted. Pure.
[[nodiscard]] tl::expected<Slo, std::string> parseObjective(std::string_view text);

struct Hypothesis {
  std::vector<Probe> probes;
  std::vector<Slo> slos;
  // Each probe's sampling period, on a schedule of its own, from before the method to the end of
  // the after window.
  std::chrono::milliseconds every{1000};
  // steadyState.after: after the rollback the probes go on for `settle` (recorded, not judged),
  // then the steady state is judged over the next `window` (every SLO over it with its minSamples;
  // unset: until each SLO has its minSamples and each probe no SLO covers one sample). Time to
  // recover is measured within settle + window after each fault step's revert.
  std::chrono::milliseconds afterSettle{0};
  std::optional<std::chrono::milliseconds> afterWindow;
};

// A fault without a duration in the file is held this long; no fault may be held longer than
// kMaxFaultDuration (the agent's policy may lower or raise its own limit, docs/operations.md).
inline constexpr std::chrono::milliseconds kDefaultFaultDuration{60'000};
inline constexpr std::chrono::milliseconds kMaxFaultDuration{3'600'000};

struct FaultStep {
  std::string name;                       // for events and records; defaults to the fault type
  v1::FaultSpec spec;                     // passed validateFaultSpec()
  std::chrono::milliseconds duration{0};  // > 0: the fault is held this long, then reverted
};

// A fault step as events name it: "network.delay 'slow-db'", or the kind alone when the step has
// no name of its own (name defaults to the kind).
[[nodiscard]] std::string faultStepText(const FaultStep& f);

struct WaitStep {
  std::chrono::milliseconds duration{0};
};

// Samples one probe of the steady state once, as a step: `probe: NAME`.
struct ProbeStep {
  std::string probe;  // the name of a probe in steadyState.probes (checked by the parser)
};

// `parallel: [...]`: fault, wait and probe steps that start together (every fault on every host
// at the same instant); the group ends when its longest member ends. Not nested.
using ParallelMember = std::variant<FaultStep, WaitStep, ProbeStep>;
struct ParallelStep {
  std::vector<ParallelMember> steps;  // at least one
};

using Step = std::variant<FaultStep, WaitStep, ProbeStep, ParallelStep>;

// One entry of the file's `variables:` section: a ${NAME} the file uses, described and marked.
struct DeclaredVariable {
  std::string description;
  // Its value is a secret: never recorded or printed (as --secret-var NAME=VALUE).
  bool secret = false;
};

struct Experiment {
  std::string name;
  std::string description;
  // `variables:`, by name (at most kMaxDeclaredVariables). Values still come from --var and
  // --secret-var; a declared variable without a value is an error like any other ${NAME}.
  std::map<std::string, DeclaredVariable> variables;
  Targets targets;
  Hypothesis hypothesis;
  std::vector<Step> method;
};

// Values for ${NAME} references in an experiment file (`faultline validate|run --var NAME=VALUE`).
// NAME: a letter or '_', then letters, digits and '_'.
using Variables = std::map<std::string, std::string>;

// True when name may be used as a variable name: [A-Za-z_][A-Za-z0-9_]*, at most 64 characters.
[[nodiscard]] bool isVariableName(std::string_view name);

// The text with every ${NAME} replaced by its value and every $${ by a literal ${ (anywhere in the
// file: values, keys, comments), and a note for each place, or the errors (a reference to a
// variable not in vars, or a ${ with no valid NAME} after it), each with the file, line and column
// of its ${. Values are inserted as written, not re-scanned. Pure function, thread-safe.
struct Substitution {
  std::string text;
  // Maps a 1-based line and column of text back to the place in the original file (a place inside
  // an inserted value maps to its ${).
  struct Segment {
    size_t outStart = 0;
    size_t inStart = 0;
    size_t length = 0;
    bool literal = true;  // copied as is (false: an inserted value or an escape)
  };
  std::vector<Segment> segments;
};
[[nodiscard]] tl::expected<Substitution, std::vector<Diagnostic>> substituteVariables(std::string_view yaml,
                                                                                      const std::string& fileName,
                                                                                      const Variables& vars);

// The names the file's `variables:` section marks `secret: true`, read from the text as written
// (before substitution, so a diagnostic of a file that does not parse is still redacted): empty
// when the text is not YAML, over kMaxExperimentBytes, or has no such section. parseExperiment()
// refuses a file whose substituted `variables:` marks a secret this function does not see, so the
// two always agree on a file that parses. Pure function, thread-safe.
[[nodiscard]] std::set<std::string> declaredSecretVariables(std::string_view yaml);

// Parses and validates the whole file (docs/experiments.md), including validateFaultSpec() on
// every fault and parseHttpUrl() (url.h) on every probe URL. Never partially succeeds: either
// every field is valid or every error found is returned (at least one), sorted by line and
// column; a YAML syntax error (nesting deeper than yaml-cpp's limit included) is returned alone,
// and so is a text over kMaxExperimentBytes, which is refused before it is parsed.
// fileName is used in diagnostics only. ${NAME} references are replaced first
// (substituteVariables(); its errors are returned alone), and every diagnostic points at the place
// in the file as written. Pure function of its input: no I/O, thread-safe.
[[nodiscard]] tl::expected<Experiment, std::vector<Diagnostic>> parseExperiment(std::string_view yaml,
                                                                                const std::string& fileName,
                                                                                const Variables& vars = {});

}  // namespace faultline::controller
