// The protocol probes' fields (redis, postgres, grpc, dns), command probes' env and stdout number,
// http probes' json check: what parses, and the error (field, line, what is accepted) otherwise.
#include <chrono>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "controller/experiment/experiment.h"

using namespace faultline;
using namespace faultline::controller;
using namespace std::chrono_literals;

namespace {

constexpr const char* kHead =
    "apiVersion: faultline/v1\n"
    "kind: Experiment\n"
    "metadata:\n"
    "  name: t\n";

// A file whose steady state has the given probe lines (from line 8 on) and one wait step.
std::string withProbes(const std::string& probes, const std::string& variables = "") {
  return std::string(kHead) + variables + "steadyState:\n  probes:\n" + probes + "method:\n  - wait: 1s\n";
}

std::string allDiagnostics(const std::vector<Diagnostic>& diagnostics) {
  std::string out;
  for (const Diagnostic& d : diagnostics) {
    out += format(d) + "\n";
  }
  return out;
}

Experiment parsed(const std::string& yaml, const Variables& vars = {}) {
  auto result = parseExperiment(yaml, "p.yaml", vars);
  REQUIRE_MESSAGE(result.has_value(), (result ? "" : allDiagnostics(result.error())));
  return *result;
}

// The one diagnostic line for a file that must not parse.
std::string errorOf(const std::string& yaml, const Variables& vars = {}) {
  auto result = parseExperiment(yaml, "p.yaml", vars);
  REQUIRE_FALSE(result.has_value());
  return allDiagnostics(result.error());
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("redis probes: address, command, expect, timeouts") {
  const auto e = parsed(
      withProbes("    - name: ping\n"
                 "      redis: {address: '127.0.0.1:6379'}\n"
                 "    - name: queue\n"
                 "      redis:\n"
                 "        address: unix:/run/redis/redis.sock\n"
                 "        command: [LLEN, jobs]\n"
                 "        expect: {number: '< 100'}\n"
                 "        maxLatency: 50ms\n"
                 "        timeout: 500ms\n"
                 "    - name: flag\n"
                 "      redis: {address: 'cache.internal:6380', command: [GET, mode], expect: {match: '^(on|auto)$'}}\n"
                 "    - name: any\n"
                 "      redis: {address: '[::1]:6379', command: [INFO, server]}\n"));
  const auto& p = e.hypothesis.probes;
  REQUIRE(p.size() == 4);
  CHECK(p[0].kind == ProbeKind::kRedis);
  CHECK(p[0].redis.address.host == "127.0.0.1");
  CHECK(p[0].redis.address.port == 6379);
  CHECK(p[0].redis.command == std::vector<std::string>{"PING"});
  CHECK(p[0].redis.expect.kind == ValueCheck::Kind::kEquals);
  CHECK(p[0].redis.expect.text == "PONG");
  CHECK(p[0].redis.timeout == 2s);
  CHECK(p[1].redis.address.unixSocket == "/run/redis/redis.sock");
  CHECK(p[1].redis.command == std::vector<std::string>{"LLEN", "jobs"});
  CHECK(p[1].redis.expect.kind == ValueCheck::Kind::kNumber);
  CHECK(p[1].redis.expect.number.comparison == Comparison::kLess);
  CHECK(p[1].redis.expect.number.threshold == 100);
  CHECK(p[1].redis.maxLatency == 50ms);
  CHECK(p[1].redis.timeout == 500ms);
  CHECK(probeHasValue(p[1]));
  CHECK_FALSE(probeHasValue(p[0]));
  CHECK(p[2].redis.address.host == "cache.internal");
  CHECK(p[2].redis.expect.kind == ValueCheck::Kind::kMatch);
  CHECK(p[3].redis.address.host == "::1");
  CHECK(p[3].redis.expect.kind == ValueCheck::Kind::kAny);  // another command than PING: any reply
}

TEST_CASE("redis probes: bad fields are refused with the field, line and what is accepted") {
  CHECK(has(errorOf(withProbes("    - name: r\n      redis: {address: 'localhost'}\n")),
            "p.yaml:8:24: steadyState.probes[0].redis.address: 'localhost' is not an address; accepted: HOST:PORT"));
  CHECK(has(errorOf(withProbes("    - name: r\n      redis: {address: 'unix:relative.sock'}\n")),
            "steadyState.probes[0].redis.address: 'unix:relative.sock' is not a Unix socket address"));
  CHECK(has(errorOf(withProbes("    - name: r\n      redis: {address: 'unix:/" + std::string(200, 'a') + "'}\n")),
            "is not a Unix socket address"));
  CHECK(has(errorOf(withProbes("    - name: r\n      redis: {address: '1.2.3.4:1', command: []}\n")),
            "steadyState.probes[0].redis.command: is empty"));
  std::string many = "[";
  for (int i = 0; i < 65; ++i) {
    many += (i ? ", " : "") + std::string("w");
  }
  CHECK(has(errorOf(withProbes("    - name: r\n      redis: {address: '1.2.3.4:1', command: " + many + "]}\n")),
            "has 65 words; accepted: at most 64"));
  CHECK(has(
      errorOf(withProbes("    - name: r\n      redis: {address: '1.2.3.4:1', expect: {equals: a, number: '<1'}}\n")),
      "steadyState.probes[0].redis.expect: has 2 checks; accepted: a map with one of equals"));
  CHECK(has(errorOf(withProbes("    - name: r\n      redis: {address: '1.2.3.4:1', expect: {number: 'about 3'}}\n")),
            "steadyState.probes[0].redis.expect.number: 'about 3' does not start with a comparison"));
  CHECK(has(errorOf(withProbes("    - name: r\n      redis: {address: '1.2.3.4:1', expct: 1}\n")),
            "unknown key 'expct' (did you mean 'expect'?)"));
  CHECK(has(errorOf(withProbes("    - name: r\n      redis: {address: '1.2.3.4:1', username: u}\n")),
            "steadyState.probes[0].redis.password: is required with username"));
}

TEST_CASE("a probe's password must come from a secret variable") {
  const std::string secretVars = "variables:\n  PW: {secret: true}\n  OPEN: {}\n";
  // Written in the file: refused, it would be recorded.
  CHECK(has(errorOf(withProbes("    - name: r\n      redis: {address: '1.2.3.4:1', password: hunter2}\n")),
            "steadyState.probes[0].redis.password: is not the value of a secret variable"));
  // From a variable that is not secret: refused.
  CHECK(has(errorOf(withProbes("    - name: db\n      postgres: {host: db, password: '${OPEN}'}\n", secretVars),
                    {{"OPEN", "x"}, {"PW", "y"}}),
            "steadyState.probes[0].postgres.password: is not the value of a secret variable"));
  // From a secret variable: accepted.
  const auto e = parsed(withProbes("    - name: db\n      postgres: {host: db, password: '${PW}'}\n", secretVars),
                        {{"OPEN", "x"}, {"PW", "s3cret"}});
  CHECK(e.hypothesis.probes[0].postgres.password == std::optional<std::string>("s3cret"));
}

TEST_CASE("postgres probes: host, socket directory, query, expect") {
  const auto e =
      parsed(withProbes("    - name: db\n"
                        "      postgres:\n"
                        "        host: /var/run/postgresql\n"
                        "        port: 5433\n"
                        "        database: shop\n"
                        "        user: probe\n"
                        "        sslmode: disable\n"
                        "        query: SELECT count(*) FROM jobs WHERE failed\n"
                        "        expect: {number: '<= 5'}\n"
                        "    - name: db2\n"
                        "      postgres: {host: 10.0.0.2}\n"
                        "    - name: db3\n"
                        "      postgres: {host: '::1', expect: {equals: 'on'}}\n"));
  const auto& p = e.hypothesis.probes;
  REQUIRE(p.size() == 3);
  CHECK(p[0].kind == ProbeKind::kPostgres);
  CHECK(p[0].postgres.host == "/var/run/postgresql");
  CHECK(p[0].postgres.port == 5433);
  CHECK(p[0].postgres.database == "shop");
  CHECK(p[0].postgres.user == "probe");
  CHECK(p[0].postgres.sslmode == "disable");
  CHECK(p[0].postgres.query == "SELECT count(*) FROM jobs WHERE failed");
  CHECK(p[0].postgres.expect.kind == ValueCheck::Kind::kNumber);
  CHECK(p[1].postgres.port == 5432);
  CHECK(p[1].postgres.query == "SELECT 1");
  CHECK(p[1].postgres.sslmode == "prefer");
  CHECK(p[1].postgres.expect.kind == ValueCheck::Kind::kAny);
  CHECK(p[2].postgres.host == "::1");

  // Hostile values: a connection string in host, a control character, long names, bad modes.
  CHECK(has(errorOf(withProbes("    - name: db\n      postgres: {host: 'db password=x'}\n")),
            "steadyState.probes[0].postgres.host: 'db password=x' is not a host"));
  CHECK(has(errorOf(withProbes("    - name: db\n      postgres: {host: \"db\\nx\"}\n")),
            "steadyState.probes[0].postgres.host: has a control character"));
  CHECK(has(errorOf(withProbes("    - name: db\n      postgres: {host: db, user: " + std::string(64, 'u') + "}\n")),
            "steadyState.probes[0].postgres.user: is 64 bytes long; accepted: a PostgreSQL name of at most 63"));
  CHECK(has(errorOf(withProbes("    - name: db\n      postgres: {host: db, sslmode: verify-full}\n")),
            "'verify-full' is not supported; accepted: disable, prefer, require"));
  CHECK(has(errorOf(withProbes("    - name: db\n      postgres: {host: db, port: 0}\n")),
            "steadyState.probes[0].postgres.port: 0 is out of range (accepted: 1..65535"));
  CHECK(has(errorOf(withProbes("    - name: db\n      postgres: {host: db, query: ''}\n")),
            "steadyState.probes[0].postgres.query: accepted: one SQL statement of 1 to 4096 bytes"));
  CHECK(has(errorOf(withProbes("    - name: db\n      postgres: {host: /" + std::string(100, 'd') + "}\n")),
            "is too long for a Unix socket directory"));
  CHECK(has(errorOf(withProbes("    - name: db\n      postgres: {port: 5432}\n")),
            "steadyState.probes[0].postgres.host: is required"));
}

TEST_CASE("grpc and dns probes") {
  const auto e = parsed(withProbes(
      "    - name: health\n"
      "      grpc: {address: '127.0.0.1:50051', service: shop.v1.Orders, timeout: 1s, maxLatency: 200ms}\n"
      "    - name: whole\n"
      "      grpc: {address: 'unix:/run/app/grpc.sock'}\n"
      "    - name: name\n"
      "      dns: {name: api.internal, server: '127.0.0.1:5353', family: ipv4, expect: [10.0.0.1, '2001:DB8:0::1']}\n"
      "    - name: local\n"
      "      dns: {name: localhost, expect: 127.0.0.1}\n"));
  const auto& p = e.hypothesis.probes;
  REQUIRE(p.size() == 4);
  CHECK(p[0].kind == ProbeKind::kGrpc);
  CHECK(p[0].grpc.address.port == 50051);
  CHECK(p[0].grpc.service == "shop.v1.Orders");
  CHECK(p[0].grpc.maxLatency == 200ms);
  CHECK(p[1].grpc.address.unixSocket == "/run/app/grpc.sock");
  CHECK(p[1].grpc.service.empty());
  CHECK(p[2].kind == ProbeKind::kDns);
  CHECK(p[2].dns.name == "api.internal");
  CHECK(p[2].dns.server == "127.0.0.1");
  CHECK(p[2].dns.serverPort == 5353);
  CHECK(p[2].dns.family == DnsProbe::Family::kIpv4);
  CHECK(p[2].dns.expect == std::vector<std::string>{"10.0.0.1", "2001:db8::1"});
  CHECK(p[3].dns.server.empty());
  CHECK(p[3].dns.expect == std::vector<std::string>{"127.0.0.1"});

  CHECK(has(errorOf(withProbes("    - name: d\n      dns: {name: 'a..b'}\n")),
            "steadyState.probes[0].dns.name: 'a..b' is not a host name"));
  CHECK(has(errorOf(withProbes("    - name: d\n      dns: {name: 10.0.0.1}\n")), "is not a host name"));
  CHECK(has(errorOf(withProbes("    - name: d\n      dns: {name: a, server: dns.google}\n")),
            "steadyState.probes[0].dns.server: 'dns.google' is not an address"));
  CHECK(has(errorOf(withProbes("    - name: d\n      dns: {name: a, expect: [300.1.1.1]}\n")),
            "steadyState.probes[0].dns.expect[0]: '300.1.1.1' is not an IP address"));
  CHECK(has(errorOf(withProbes("    - name: d\n      dns: {name: a, family: ip4}\n")),
            "'ip4' is not a family (did you mean 'ipv4'?)"));
  CHECK(has(errorOf(withProbes("    - name: g\n      grpc: {address: '1.2.3.4:5', service: \"a\\tb\"}\n")),
            "steadyState.probes[0].grpc.service: has a control character"));
  CHECK(has(errorOf(withProbes("    - name: g\n      grpc: {address: '1.2.3.4:5'}\n      dns: {name: a}\n")),
            "a probe has one kind, and this one already has grpc"));
}

TEST_CASE("command probes: env and stdout number; http probes: json") {
  const auto e =
      parsed(withProbes("    - name: lag\n"
                        "      command:\n"
                        "        argv: [psql, -tAc, 'SELECT 1']\n"
                        "        env: {PGCONNECT_TIMEOUT: '2', _X1: ''}\n"
                        "        stdout: {number: '< 100'}\n"
                        "    - name: errors\n"
                        "      http:\n"
                        "        url: http://127.0.0.1:9000/api/v1/series\n"
                        "        json: {pointer: /data/0/value, number: '< 0.05'}\n"
                        "  slos:\n"
                        "    - {name: lag-slo, probe: lag, objective: value < 50}\n"
                        "    - {name: error-rate, probe: errors, objective: value < 0.01 over 10s}\n"));
  const auto& p = e.hypothesis.probes;
  CHECK(p[0].command.env == std::vector<std::pair<std::string, std::string>>{{"PGCONNECT_TIMEOUT", "2"}, {"_X1", ""}});
  REQUIRE(p[0].command.stdoutNumber.has_value());
  CHECK(p[0].command.stdoutNumber->comparison == Comparison::kLess);
  CHECK(p[0].command.stdoutNumber->threshold == 100);
  CHECK(p[1].http.jsonPointer == std::optional<std::string>("/data/0/value"));
  REQUIRE(p[1].http.jsonNumber.has_value());
  CHECK(p[1].http.jsonNumber->threshold == 0.05);
  CHECK(e.hypothesis.slos.size() == 2);

  CHECK(has(errorOf(withProbes("    - name: c\n      command: {argv: [x], env: {1BAD: v}}\n")),
            "steadyState.probes[0].command.env.1BAD: '1BAD' is not a variable name"));
  CHECK(has(errorOf(withProbes("    - name: c\n      command: {argv: [x], env: {A: \"a\\0b\"}}\n")),
            "steadyState.probes[0].command.env.A: accepted: a value of at most 4096 bytes without NUL"));
  std::string env = "{";
  for (int i = 0; i < 65; ++i) {
    env += (i ? ", " : "") + std::string("V") + std::to_string(i) + ": x";
  }
  CHECK(has(errorOf(withProbes("    - name: c\n      command: {argv: [x], env: " + env + "}}\n")),
            "has 65 variables; accepted: at most 64"));
  CHECK(has(errorOf(withProbes("    - name: c\n      command: {argv: [x], stdout: {numbr: '<1'}}\n")),
            "unknown key 'numbr' (did you mean 'number'?)"));
  CHECK(
      has(errorOf(withProbes("    - name: h\n      http: {url: 'http://a/', json: {pointer: data/0, number: '<1'}}\n")),
          "steadyState.probes[0].http.json.pointer: 'data/0' is not a JSON Pointer: it does not start with '/'"));
  CHECK(has(errorOf(withProbes("    - name: h\n      http: {url: 'http://a/', json: {pointer: /a~2, number: '<1'}}\n")),
            "is not followed by 0 or 1"));
  CHECK(has(errorOf(withProbes("    - name: h\n      http: {url: 'http://a/', json: {pointer: /a}}\n")),
            "steadyState.probes[0].http.json.number: is required"));
  // The SLI value needs a probe that reads one.
  CHECK(has(errorOf(withProbes("    - name: t\n      tcp: {address: '1.2.3.4:5'}\n"
                               "  slos:\n    - {name: s, probe: t, objective: value < 1}\n")),
            "'value' is a probe's value, and probe 't' (tcp) reads none"));
}
