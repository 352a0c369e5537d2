// PostgreSQL probe: libpq without blocking (PQconnectStartParams and PQconnectPoll, then
// PQsendQuery in single-row mode), each wait a poll() on libpq's socket until the one deadline.
// The host name is resolved by the probe (c-ares) and handed to libpq as hostaddr, so libpq never
// resolves (its getaddrinfo has no timeout). The parameters go as keyword/value pairs: nothing of
// a field is parsed as a connection string.
#include <libpq-fe.h>
#include <poll.h>
#include <sys/socket.h>

#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "controller/probes/protocol.h"

namespace faultline::controller {
namespace {

struct ConnFree {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct ResultFree {
  void operator()(PGresult* r) const { PQclear(r); }
};

// libpq's message: its first line, without the trailing newline.
std::string firstLine(const char* text) {
  std::string s = text != nullptr ? text : "";
  if (const auto nl = s.find('\n'); nl != std::string::npos) {
    // "connection to server ... failed: FATAL:  password authentication failed ..." spans one line;
    // a second line is a hint or detail.
    s.resize(nl);
  }
  if (s.size() > 300) {
    s = s.substr(0, 300) + "...";
  }
  return s;
}

// Waits for fd to be ready for events by deadline; false on timeout.
bool waitFor(int fd, short events, ProbeClock::time_point deadline) {
  while (true) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - ProbeClock::now()).count();
    if (left <= 0) {
      return false;
    }
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (r > 0 || (r < 0 && errno != EINTR)) {
      return true;
    }
  }
}

}  // namespace

Sample runPostgresProbe(const PostgresProbe& spec) {
  Sample sample;
  const auto start = ProbeClock::now();
  const auto deadline = start + spec.timeout;
  const auto fail = [&](std::string why) {
    sample.latency = since(start);
    sample.detail = std::move(why);
    return sample;
  };
  const std::string timedOut = "timeout after " + formatLimit(spec.timeout);

  std::vector<const char*> keys;
  std::vector<const char*> values;
  const auto add = [&](const char* key, const std::string& value) {
    keys.push_back(key);
    values.push_back(value.c_str());
  };
  // libpq tries each host,hostaddr pair of the lists in turn (a name with an IPv6 and an IPv4
  // address, of which the server listens on one).
  std::string hosts = spec.host;
  std::string hostaddrs;
  if (spec.host[0] != '/') {
    auto addresses = resolveName(spec.host, AF_UNSPEC, "", 0, deadline);
    if (!addresses) {
      return fail(addresses.error().rfind("timeout", 0) == 0 ? timedOut : addresses.error());
    }
    hosts.clear();
    for (const auto& a : *addresses) {
      hosts += (hosts.empty() ? "" : ",") + spec.host;
      hostaddrs += (hostaddrs.empty() ? "" : ",") + a;
    }
  }
  add("host", hosts);
  if (!hostaddrs.empty()) {
    add("hostaddr", hostaddrs);
  }
  const std::string port = std::to_string(spec.port);
  add("port", port);
  if (!spec.database.empty()) {
    add("dbname", spec.database);
  }
  if (!spec.user.empty()) {
    add("user", spec.user);
  }
  if (spec.password) {
    add("password", *spec.password);
  }
  add("sslmode", spec.sslmode);
  // Never the controller's own ~/.pgpass: a run's author gives the password, or there is none. A
  // path that cannot exist (procfs has no such entry), which libpq skips without a word.
  const std::string noPassfile = "/proc/self/faultline-no-passfile";
  add("passfile", noPassfile);
  const std::string application = "faultline-probe";
  add("application_name", application);
  keys.push_back(nullptr);
  values.push_back(nullptr);

  std::unique_ptr<PGconn, ConnFree> conn(PQconnectStartParams(keys.data(), values.data(), 0));
  if (!conn) {
    return fail("cannot start a PostgreSQL connection: out of memory");
  }
  if (PQstatus(conn.get()) == CONNECTION_BAD) {
    return fail(firstLine(PQerrorMessage(conn.get())));
  }
  PostgresPollingStatusType polling = PGRES_POLLING_WRITING;
  while (polling != PGRES_POLLING_OK) {
    if (polling == PGRES_POLLING_FAILED) {
      return fail(firstLine(PQerrorMessage(conn.get())));
    }
    if (!waitFor(PQsocket(conn.get()), polling == PGRES_POLLING_READING ? POLLIN : POLLOUT, deadline)) {
      return fail(timedOut + " (connecting)");
    }
    polling = PQconnectPoll(conn.get());
  }
  if (PQsetnonblocking(conn.get(), 1) != 0 || PQsendQuery(conn.get(), spec.query.c_str()) != 1) {
    return fail(firstLine(PQerrorMessage(conn.get())));
  }
  PQsetSingleRowMode(conn.get());  // only the first row is read into memory
  int flushed = 0;
  while ((flushed = PQflush(conn.get())) == 1) {
    if (!waitFor(PQsocket(conn.get()), POLLOUT | POLLIN, deadline)) {
      return fail(timedOut + " (sending the query)");
    }
    if (PQconsumeInput(conn.get()) != 1) {
      return fail(firstLine(PQerrorMessage(conn.get())));
    }
  }
  if (flushed < 0) {
    return fail(firstLine(PQerrorMessage(conn.get())));
  }
  while (PQisBusy(conn.get())) {
    if (!waitFor(PQsocket(conn.get()), POLLIN, deadline)) {
      return fail(timedOut + " (waiting for the answer)");
    }
    if (PQconsumeInput(conn.get()) != 1) {
      return fail(firstLine(PQerrorMessage(conn.get())));
    }
  }
  std::unique_ptr<PGresult, ResultFree> result(PQgetResult(conn.get()));
  sample.latency = since(start);
  if (!result) {
    sample.detail = "no result";
    return sample;
  }
  const auto status = PQresultStatus(result.get());
  if (status != PGRES_SINGLE_TUPLE && status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
    sample.detail = "query failed: " + firstLine(PQresultErrorMessage(result.get()));
    return sample;
  }
  const bool hasValue = status == PGRES_SINGLE_TUPLE && PQnfields(result.get()) > 0;
  if (!hasValue) {
    if (spec.expect.kind != ValueCheck::Kind::kAny || status == PGRES_TUPLES_OK) {
      sample.detail = "the query returned no row";
      return sample;
    }
    sample.detail = "ok in " + formatLatency(sample.latency);
  } else {
    if (PQgetisnull(result.get(), 0, 0)) {
      sample.detail = "the first value is NULL";
      return sample;
    }
    const std::string text(PQgetvalue(result.get(), 0, 0), static_cast<size_t>(PQgetlength(result.get(), 0, 0)));
    if (auto why = checkValue(spec.expect, text, sample.value); !why.empty()) {
      sample.detail = why;
      return sample;
    }
    sample.detail = fmt::format("{} in {}", shownValue(text), formatLatency(sample.latency));
  }
  if (sample.latency > spec.maxLatency) {
    sample.detail += ", above maxLatency " + formatLimit(spec.maxLatency);
    return sample;
  }
  sample.ok = true;
  return sample;
}

}  // namespace faultline::controller
