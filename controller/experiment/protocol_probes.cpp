// The protocol probes of the steadyState section (redis, postgres, grpc, dns) and what they share
// with the others: addresses (HOST:PORT or unix:/PATH), bounded text, value and number checks.
#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "common/regex.h"
#include "controller/experiment/parser.h"
#include "controller/experiment/url.h"

namespace faultline::controller {

using namespace detail;

namespace {

constexpr std::array<std::string_view, 7> kRedisKeys{"address", "command",    "username", "password",
                                                     "expect",  "maxLatency", "timeout"};
constexpr std::array<std::string_view, 10> kPostgresKeys{"host",    "port",  "database", "user",       "password",
                                                         "sslmode", "query", "expect",   "maxLatency", "timeout"};
constexpr std::array<std::string_view, 4> kGrpcKeys{"address", "service", "maxLatency", "timeout"};
constexpr std::array<std::string_view, 6> kDnsKeys{"name", "server", "family", "expect", "maxLatency", "timeout"};
constexpr std::array<std::string_view, 3> kValueCheckKeys{"equals", "match", "number"};
constexpr std::array<std::string_view, 3> kSslModes{"disable", "prefer", "require"};
constexpr std::array<std::string_view, 3> kFamilies{"any", "ipv4", "ipv6"};

bool hasControl(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

// The canonical text of an IP address, or "" when text is none.
std::string canonicalIp(const std::string& text) {
  unsigned char buf[16];
  char out[INET6_ADDRSTRLEN];
  if (::inet_pton(AF_INET, text.c_str(), buf) == 1) {
    return ::inet_ntop(AF_INET, buf, out, sizeof out);
  }
  if (::inet_pton(AF_INET6, text.c_str(), buf) == 1) {
    return ::inet_ntop(AF_INET6, buf, out, sizeof out);
  }
  return "";
}

}  // namespace

bool probeHasValue(const Probe& p) {
  switch (p.kind) {
    case ProbeKind::kPrometheus:
      return true;
    case ProbeKind::kHttp:
      return p.http.jsonPointer.has_value();
    case ProbeKind::kCommand:
      return p.command.stdoutNumber.has_value();
    case ProbeKind::kRedis:
      return p.redis.expect.kind == ValueCheck::Kind::kNumber;
    case ProbeKind::kPostgres:
      return p.postgres.expect.kind == ValueCheck::Kind::kNumber;
    default:
      return false;
  }
}

std::optional<std::string> Parser::boundedText(const Field& f, std::string_view accepted, bool allowEmpty) {
  auto v = scalar(f, accepted);
  if (!v) {
    return std::nullopt;
  }
  if (v->empty() && !allowEmpty) {
    error(f.mark, f.path, fmt::format("is empty; accepted: {}", accepted));
    return std::nullopt;
  }
  if (v->size() > kMaxProbeText) {
    error(f.mark, f.path,
          fmt::format("is {} bytes long; accepted: {} of at most {} bytes", v->size(), accepted, kMaxProbeText));
    return std::nullopt;
  }
  if (hasControl(*v)) {
    error(f.mark, f.path, fmt::format("has a control character; accepted: {} on one line", accepted));
    return std::nullopt;
  }
  return v;
}

std::optional<std::pair<std::string, uint16_t>> Parser::hostPort(const Field& f, std::string_view accepted) {
  auto v = scalar(f, accepted);
  if (!v) {
    return std::nullopt;
  }
  // The URL parser checks host and port the same way for every probe.
  auto parsed = parseHttpUrl("http://" + *v);
  const size_t colon = v->rfind(':');
  const size_t bracket = v->rfind(']');
  const bool hasPort = colon != std::string::npos && (bracket == std::string::npos || colon > bracket);
  if (!parsed || !hasPort || v->find_first_of("/?#") != std::string::npos) {
    error(f.mark, f.path, fmt::format("'{}' is not an address; accepted: {}", *v, accepted));
    return std::nullopt;
  }
  return std::pair{parsed->host, parsed->port};
}

std::optional<ProbeAddress> Parser::probeAddress(const Field& f) {
  constexpr std::string_view accepted =
      "HOST:PORT (e.g. 10.77.0.1:6379, cache.internal:6379, [::1]:6379) or unix:/PATH (a Unix socket, an absolute "
      "path of at most 107 bytes)";
  auto v = scalar(f, accepted);
  if (!v) {
    return std::nullopt;
  }
  ProbeAddress out;
  if (v->rfind("unix:", 0) == 0) {
    const std::string path = v->substr(5);
    if (path.empty() || path[0] != '/' || path.size() > kMaxUnixSocketPath || hasControl(path)) {
      error(f.mark, f.path, fmt::format("'{}' is not a Unix socket address; accepted: {}", *v, accepted));
      return std::nullopt;
    }
    out.unixSocket = path;
    return out;
  }
  auto hp = hostPort(f, accepted);
  if (!hp) {
    return std::nullopt;
  }
  out.host = hp->first;
  out.port = hp->second;
  return out;
}

std::optional<NumberCheck> Parser::numberCheck(const Field& f) {
  constexpr std::string_view accepted = "a comparison and a number, e.g. '< 100'";
  auto v = scalar(f, accepted);
  if (!v) {
    return std::nullopt;
  }
  auto parsed = parseExpectation(*v);
  if (!parsed) {
    error(f.mark, f.path, parsed.error());
    return std::nullopt;
  }
  return NumberCheck{parsed->first, parsed->second};
}

std::optional<ValueCheck> Parser::valueCheck(const Field& f) {
  constexpr std::string_view accepted =
      "a map with one of equals (the exact text), match (a regular expression) or number (e.g. '< 100')";
  auto m = openMap(f, accepted);
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kValueCheckKeys);
  std::vector<const Entry*> kinds;
  for (const Entry& e : m->entries) {
    if (contains(kValueCheckKeys, e.key)) {
      kinds.push_back(&e);
    }
  }
  if (kinds.size() != 1) {
    error(kinds.empty() ? m->self.mark : kinds[1]->keyNode.Mark(), m->self.path,
          fmt::format("has {} checks; accepted: {}", kinds.size(), accepted));
    return std::nullopt;
  }
  ValueCheck out;
  const Field& field = kinds[0]->field;
  if (kinds[0]->key == "equals") {
    auto v = scalar(field, "the exact text of the value");
    if (!v) {
      return std::nullopt;
    }
    if (v->size() > kMaxProbeText) {
      error(field.mark, field.path, fmt::format("is {} bytes long; accepted: at most {}", v->size(), kMaxProbeText));
      return std::nullopt;
    }
    out.kind = ValueCheck::Kind::kEquals;
    out.text = *v;
  } else if (kinds[0]->key == "match") {
    auto re = regex(field);
    if (!re) {
      return std::nullopt;
    }
    out.kind = ValueCheck::Kind::kMatch;
    out.text = *re;
  } else {
    auto n = numberCheck(field);
    if (!n) {
      return std::nullopt;
    }
    out.kind = ValueCheck::Kind::kNumber;
    out.number = *n;
  }
  return out;
}

void Parser::parseRedisProbe(const Field& f, RedisProbe& out) {
  auto r = openMap(f, "a map with address and optionally command, username, password, expect, maxLatency, timeout");
  if (!r) {
    return;
  }
  rejectUnknown(*r, kRedisKeys);
  if (auto a = require(*r, "address", "HOST:PORT or unix:/PATH")) {
    if (auto addr = probeAddress(*a)) {
      out.address = std::move(*addr);
    }
  }
  bool customCommand = false;
  if (auto c = lookup(*r, "command")) {
    constexpr std::string_view accepted =
        "a list of at least one word: the command and its arguments, e.g. [GET, health:ok] (default: [PING])";
    if (!c->value.IsSequence() || c->value.size() == 0) {
      if (c->value.IsSequence()) {
        error(c->mark, c->path, fmt::format("is empty; accepted: {}", accepted));
      } else {
        typeError(*c, accepted);
      }
    } else if (c->value.size() > kMaxProbeArgs) {
      error(c->mark, c->path, fmt::format("has {} words; accepted: at most {}", c->value.size(), kMaxProbeArgs));
    } else {
      out.command.clear();
      for (size_t i = 0; i < c->value.size(); ++i) {
        const YAML::Node item = std::as_const(c->value)[i];
        const Field itemField{item, item.IsNull() ? c->mark : item.Mark(), fmt::format("{}[{}]", c->path, i)};
        if (auto v = scalar(itemField, accepted)) {
          if (v->size() > kMaxProbeText || (i == 0 && v->empty())) {
            error(itemField.mark, itemField.path,
                  fmt::format("is {} bytes long; accepted: 1 to {} bytes", v->size(), kMaxProbeText));
          }
          out.command.push_back(*v);
        }
      }
      customCommand = out.command.size() != 1 || lower(out.command[0]) != "ping";
    }
  }
  if (auto u = lookup(*r, "username")) {
    out.username = boundedText(*u, "an ACL user name", false);
  }
  if (auto p = lookup(*r, "password")) {
    out.password = boundedText(*p, "a password from a secret variable, e.g. ${REDIS_PASSWORD}", false);
  }
  if (out.username && !out.password) {
    error(r->self.mark, childPath(r->self.path, "password"),
          "is required with username; accepted: a password from a secret variable");
  }
  if (auto e = lookup(*r, "expect")) {
    if (auto check = valueCheck(*e)) {
      out.expect = std::move(*check);
    }
  } else if (customCommand) {
    out.expect = ValueCheck{};
  }
  parseLatencies(*r, &out.maxLatency, out.timeout);
}

void Parser::parsePostgresProbe(const Field& f, PostgresProbe& out) {
  auto p = openMap(f,
                   "a map with host and optionally port, database, user, password, sslmode, query, expect, "
                   "maxLatency, timeout");
  if (!p) {
    return;
  }
  rejectUnknown(*p, kPostgresKeys);
  constexpr std::string_view hostAccepted =
      "a host name, an IPv4 or IPv6 address (no brackets), or the absolute directory of the server's Unix socket "
      "(e.g. /var/run/postgresql)";
  if (auto h = require(*p, "host", hostAccepted)) {
    if (auto v = boundedText(*h, hostAccepted, false)) {
      if ((*v)[0] == '/') {
        // libpq appends "/.s.PGSQL.PORT" (up to 18 bytes) to the directory.
        if (v->size() + 18 > kMaxUnixSocketPath) {
          error(h->mark, h->path,
                fmt::format("'{}' is too long for a Unix socket directory; accepted: at most {} bytes", *v,
                            kMaxUnixSocketPath - 18));
        }
        out.host = *v;
      } else {
        const bool v6 = v->find(':') != std::string::npos;
        auto parsed = parseHttpUrl("http://" + (v6 ? "[" + *v + "]" : *v) + "/");
        if (!parsed) {
          error(h->mark, h->path, fmt::format("'{}' is not a host; accepted: {}", *v, hostAccepted));
        } else {
          out.host = parsed->host;
        }
      }
    }
  }
  if (auto port = lookup(*p, "port")) {
    if (auto v = integer(*port, 1, 65535, "a TCP port (or the number of the socket file .s.PGSQL.PORT)")) {
      out.port = static_cast<uint16_t>(*v);
    }
  }
  const auto name = [&](const char* key, std::string& into) {
    if (auto field = lookup(*p, key)) {
      if (auto v = boundedText(*field, "a PostgreSQL name", false)) {
        if (v->size() > 63) {
          error(field->mark, field->path,
                fmt::format("is {} bytes long; accepted: a PostgreSQL name of at most 63 bytes", v->size()));
        }
        into = *v;
      }
    }
  };
  name("database", out.database);
  name("user", out.user);
  if (auto pw = lookup(*p, "password")) {
    out.password = boundedText(*pw, "a password from a secret variable, e.g. ${PGPASSWORD}", false);
  }
  if (auto mode = lookup(*p, "sslmode")) {
    if (auto v = scalar(*mode, joinKeys(kSslModes))) {
      if (!contains(kSslModes, *v)) {
        error(mode->mark, mode->path,
              fmt::format("'{}' is not supported{}; accepted: {}", *v, suggestion(*v, kSslModes), joinKeys(kSslModes)));
      } else {
        out.sslmode = *v;
      }
    }
  }
  if (auto q = lookup(*p, "query")) {
    // A query may span lines; only NUL (which libpq cannot send) is refused.
    if (auto v = scalar(*q, "one SQL statement, e.g. SELECT count(*) FROM jobs WHERE failed")) {
      if (v->empty() || v->size() > kMaxProbeText || v->find('\0') != std::string::npos) {
        error(q->mark, q->path, fmt::format("accepted: one SQL statement of 1 to {} bytes without NUL", kMaxProbeText));
      } else {
        out.query = *v;
      }
    }
  }
  if (auto e = lookup(*p, "expect")) {
    if (auto check = valueCheck(*e)) {
      out.expect = std::move(*check);
    }
  }
  parseLatencies(*p, &out.maxLatency, out.timeout);
}

void Parser::parseGrpcProbe(const Field& f, GrpcProbe& out) {
  auto g = openMap(f, "a map with address and optionally service, maxLatency, timeout");
  if (!g) {
    return;
  }
  rejectUnknown(*g, kGrpcKeys);
  if (auto a = require(*g, "address", "HOST:PORT or unix:/PATH")) {
    if (auto addr = probeAddress(*a)) {
      out.address = std::move(*addr);
    }
  }
  if (auto s = lookup(*g, "service")) {
    if (auto v = boundedText(*s, "a health service name, e.g. faultline.v1.Control (empty: the whole server)", true)) {
      out.service = *v;
    }
  }
  parseLatencies(*g, &out.maxLatency, out.timeout);
}

void Parser::parseDnsProbe(const Field& f, DnsProbe& out) {
  auto d = openMap(f, "a map with name and optionally server, family, expect, maxLatency, timeout");
  if (!d) {
    return;
  }
  rejectUnknown(*d, kDnsKeys);
  constexpr std::string_view nameAccepted = "a host name, e.g. api.internal or localhost";
  if (auto n = require(*d, "name", nameAccepted)) {
    if (auto v = scalar(*n, nameAccepted)) {
      // The URL parser's host rules: labels of letters, digits, '-', '_' (1-63 bytes), 253 in all.
      auto parsed = parseHttpUrl("http://" + *v + "/");
      if (!parsed || v->find_first_of(":/[]") != std::string::npos || !canonicalIp(*v).empty()) {
        error(n->mark, n->path, fmt::format("'{}' is not a host name; accepted: {}", *v, nameAccepted));
      } else {
        out.name = *v;
      }
    }
  }
  constexpr std::string_view serverAccepted =
      "an IP address, optionally with a port: 10.0.0.2, 10.0.0.2:5353, [::1]:5353 (default: the system's resolvers)";
  if (auto s = lookup(*d, "server")) {
    if (auto v = scalar(*s, serverAccepted)) {
      std::string host = *v;
      uint16_t port = 53;
      if (canonicalIp(*v).empty()) {
        auto hp = hostPort(*s, serverAccepted);
        if (hp) {
          host = hp->first;
          port = hp->second;
          if (canonicalIp(host).empty()) {
            error(s->mark, s->path, fmt::format("'{}' is not an IP address; accepted: {}", *v, serverAccepted));
            host.clear();
          }
        } else {
          host.clear();
        }
      }
      if (!host.empty()) {
        out.server = canonicalIp(host);
        out.serverPort = port;
      }
    }
  }
  if (auto fam = lookup(*d, "family")) {
    if (auto v = scalar(*fam, joinKeys(kFamilies))) {
      if (*v == "any") {
        out.family = DnsProbe::Family::kAny;
      } else if (*v == "ipv4") {
        out.family = DnsProbe::Family::kIpv4;
      } else if (*v == "ipv6") {
        out.family = DnsProbe::Family::kIpv6;
      } else {
        error(fam->mark, fam->path,
              fmt::format("'{}' is not a family{}; accepted: {}", *v, suggestion(*v, kFamilies), joinKeys(kFamilies)));
      }
    }
  }
  if (auto e = lookup(*d, "expect")) {
    constexpr std::string_view accepted = "an IP address or a list of them, e.g. [10.0.0.1, 10.0.0.2]";
    std::vector<Field> items;
    if (e->value.IsSequence()) {
      for (size_t i = 0; i < e->value.size() && i <= kMaxProbeArgs; ++i) {
        const YAML::Node item = std::as_const(e->value)[i];
        items.push_back(Field{item, item.IsNull() ? e->mark : item.Mark(), fmt::format("{}[{}]", e->path, i)});
      }
      if (items.empty()) {
        error(e->mark, e->path, fmt::format("is empty; accepted: {}", accepted));
      } else if (e->value.size() > kMaxProbeArgs) {
        error(e->mark, e->path, fmt::format("has {} addresses; accepted: at most {}", e->value.size(), kMaxProbeArgs));
        items.clear();
      }
    } else {
      items.push_back(*e);
    }
    for (const Field& item : items) {
      if (auto v = scalar(item, accepted)) {
        const std::string ip = canonicalIp(*v);
        if (ip.empty()) {
          error(item.mark, item.path, fmt::format("'{}' is not an IP address; accepted: {}", *v, accepted));
        } else {
          out.expect.push_back(ip);
        }
      }
    }
  }
  parseLatencies(*d, &out.maxLatency, out.timeout);
}

}  // namespace faultline::controller
