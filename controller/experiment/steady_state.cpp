// The steadyState section of an experiment file: the sampling period, probes (http, tcp, command,
// prometheus; the protocol probes are in protocol_probes.cpp) and SLOs with their objectives.
#include "common/regex.h"
#include "controller/experiment/parser.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "agent/faults/spec.h"
#include "controller/experiment/url.h"

namespace faultline::controller {

using namespace detail;
using namespace std::chrono_literals;

namespace {

constexpr std::array<std::string_view, 4> kSteadyStateKeys{"every", "probes", "slos", "after"};
constexpr std::array<std::string_view, 10> kProbeKeys{"name",       "guard", "http",     "tcp",  "command",
                                                      "prometheus", "redis", "postgres", "grpc", "dns"};
constexpr std::array<std::string_view, 8> kProbeKindKeys{"http",  "tcp",      "command", "prometheus",
                                                         "redis", "postgres", "grpc",    "dns"};
constexpr std::string_view kProbeKindsText = "http, tcp, command, prometheus, redis, postgres, grpc, dns";
constexpr std::array<std::string_view, 10> kHttpKeys{"url",       "method",     "headers", "body", "expectStatus",
                                                     "bodyMatch", "maxLatency", "timeout", "json", "load"};
constexpr std::array<std::string_view, 2> kJsonKeys{"pointer", "number"};
constexpr std::array<std::string_view, 1> kStdoutKeys{"number"};
constexpr std::array<std::string_view, 4> kTcpKeys{"address", "maxLatency", "timeout", "load"};
constexpr std::array<std::string_view, 3> kLoadKeys{"rate", "concurrency", "duration"};
constexpr std::array<std::string_view, 7> kCommandKeys{"argv",   "shell", "expectExit", "stdoutMatch",
                                                       "stdout", "env",   "timeout"};
constexpr std::array<std::string_view, 4> kPrometheusKeys{"url", "query", "expect", "timeout"};
constexpr std::array<std::string_view, 5> kSloKeys{"name", "probe", "objective", "maxBurnRate", "minSamples"};
constexpr std::array<std::string_view, 2> kAfterKeys{"settle", "window"};
constexpr std::array<std::string_view, 7> kHttpMethods{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};

constexpr nanoseconds kMinEvery = 50ms;

// Reads a comparison at the start of text ("<", "<=", ">", ">=", "==", "!="), and skips it.
std::optional<Comparison> takeComparison(std::string_view& text) {
  static constexpr std::array<std::pair<std::string_view, Comparison>, 6> kOps{{{"<=", Comparison::kLessEqual},
                                                                                {">=", Comparison::kGreaterEqual},
                                                                                {"==", Comparison::kEqual},
                                                                                {"!=", Comparison::kNotEqual},
                                                                                {"<", Comparison::kLess},
                                                                                {">", Comparison::kGreater}}};
  for (const auto& [op, c] : kOps) {
    if (text.substr(0, op.size()) == op) {
      text.remove_prefix(op.size());
      return c;
    }
  }
  return std::nullopt;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) {
    s.remove_prefix(1);
  }
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
    s.remove_suffix(1);
  }
  return s;
}

std::optional<double> plainNumber(std::string_view text) {
  double v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || !std::isfinite(v)) {
    return std::nullopt;
  }
  return v;
}

}  // namespace

tl::expected<std::pair<Comparison, double>, std::string> detail::parseExpectation(std::string_view text) {
  constexpr std::string_view accepted = "a comparison and a number, e.g. '< 0.8', '>= 100' (<, <=, >, >=, ==, !=)";
  std::string_view rest = trim(text);
  auto c = takeComparison(rest);
  if (!c) {
    return tl::unexpected(fmt::format("'{}' does not start with a comparison; accepted: {}", text, accepted));
  }
  auto v = plainNumber(trim(rest));
  if (!v) {
    return tl::unexpected(fmt::format("'{}' has no number after the comparison; accepted: {}", text, accepted));
  }
  return std::pair{*c, *v};
}

void Parser::parseSteadyState(const Field& f, Hypothesis& out) {
  auto m = openMap(f, "a map with every, probes, slos and after");
  if (!m) {
    return;
  }
  rejectUnknown(*m, kSteadyStateKeys);
  if (auto every = lookup(*m, "every")) {
    if (auto d = durationIn(*every, kMinEvery, kMaxStep, "from 50ms to 1h", true)) {
      out.every = std::chrono::duration_cast<milliseconds>(*d);
    }
  }
  constexpr std::string_view probesAccepted =
      "a list of at least one probe, each with a name and one of http, tcp, command, prometheus, redis, postgres, "
      "grpc, dns";
  auto probes = require(*m, "probes", probesAccepted);
  if (!probes) {
    return;
  }
  if (!probes->value.IsSequence()) {
    typeError(*probes, probesAccepted);
    return;
  }
  if (probes->value.size() == 0) {
    error(probes->mark, probes->path, fmt::format("is empty; accepted: {}", probesAccepted));
    return;
  }
  if (probes->value.size() > kMaxProbes) {
    error(probes->mark, probes->path,
          fmt::format("has {} probes; accepted: at most {} probes per experiment", probes->value.size(), kMaxProbes));
    return;
  }
  std::map<std::string, int> namesSeen;
  for (size_t i = 0; i < probes->value.size() && !full(); ++i) {
    const YAML::Node item = std::as_const(probes->value)[i];
    const Field itemField{item, item.IsNull() ? probes->mark : item.Mark(), fmt::format("{}[{}]", probes->path, i)};
    if (auto probe = parseProbe(itemField, namesSeen)) {
      out.probes.push_back(std::move(*probe));
    }
  }
  // The run's caps: every load probe samples at the same time.
  double totalRate = 0;
  unsigned totalConcurrency = 0;
  for (const auto& p : out.probes) {
    const auto& load = p.kind == ProbeKind::kHttp ? p.http.load : p.kind == ProbeKind::kTcp ? p.tcp.load : std::nullopt;
    totalRate += load ? load->rate : 0;
    totalConcurrency += load ? load->concurrency : 0;
  }
  if (totalRate > kMaxLoadRatePerRun) {
    error(probes->mark, probes->path,
          fmt::format("the load probes ask for {:g} requests/s together; accepted: at most {:g}/s per experiment",
                      totalRate, kMaxLoadRatePerRun));
  }
  if (totalConcurrency > kMaxLoadConcurrencyPerRun) {
    error(probes->mark, probes->path,
          fmt::format("the load probes ask for a concurrency of {} together; accepted: at most {} per experiment",
                      totalConcurrency, kMaxLoadConcurrencyPerRun));
  }
  if (auto slos = lookup(*m, "slos")) {
    constexpr std::string_view slosAccepted = "a list of SLOs, each with name, probe and objective";
    if (!slos->value.IsSequence()) {
      typeError(*slos, slosAccepted);
      return;
    }
    std::map<std::string, int> sloNames;
    for (size_t i = 0; i < slos->value.size() && !full(); ++i) {
      const YAML::Node item = std::as_const(slos->value)[i];
      const Field itemField{item, item.IsNull() ? slos->mark : item.Mark(), fmt::format("{}[{}]", slos->path, i)};
      if (auto slo = parseSlo(itemField, out.probes, sloNames, out.every)) {
        out.slos.push_back(std::move(*slo));
      }
    }
  }
  if (auto after = lookup(*m, "after")) {
    parseAfter(*after, out);
  }
}

void Parser::parseAfter(const Field& f, Hypothesis& out) {
  auto m = openMap(f, "a map with settle and window, e.g. {settle: 5s, window: 30s}");
  if (!m) {
    return;
  }
  rejectUnknown(*m, kAfterKeys);
  if (auto settle = lookup(*m, "settle")) {
    if (auto d = durationIn(*settle, 0ms, kMaxStep, "from 0s to 1h", true)) {
      out.afterSettle = std::chrono::duration_cast<milliseconds>(*d);
    }
  }
  if (auto window = lookup(*m, "window")) {
    if (auto d = durationIn(*window, 1s, kMaxStep, "from 1s to 1h", true)) {
      const auto w = std::chrono::duration_cast<milliseconds>(*d);
      out.afterWindow = w;
      for (const auto& slo : out.slos) {
        if (static_cast<uint64_t>(w / out.every) < slo.minSamples) {
          error(window->mark, window->path,
                fmt::format("{} sampled every {} holds at most {} sample(s), fewer than SLO {}'s minSamples {}; "
                            "accepted: a window of at least {} ms",
                            formatDuration(w), formatDuration(out.every), w / out.every, slo.name, slo.minSamples,
                            out.every.count() * slo.minSamples));
          break;
        }
      }
    }
  }
}

std::optional<Slo> Parser::parseSlo(const Field& f, const std::vector<Probe>& probes,
                                    std::map<std::string, int>& namesSeen, milliseconds every) {
  auto m = openMap(f, "a map with name, probe, objective and optionally maxBurnRate and minSamples");
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kSloKeys);
  std::string name;
  if (auto n = require(*m, "name", "a name unique among the SLOs")) {
    if (auto v = scalar(*n, "a name unique among the SLOs")) {
      if (v->empty()) {
        error(n->mark, n->path, "is empty; accepted: a name unique among the SLOs");
      } else if (const auto why = labelNameProblem(*v); !why.empty()) {
        error(n->mark, n->path,
              fmt::format("has {}; accepted: a name unique among the SLOs, at most {} bytes, no control character", why,
                          kMaxLabelNameBytes));
      } else if (auto [it, inserted] = namesSeen.emplace(*v, n->mark.line + 1); !inserted) {
        error(n->mark, n->path,
              fmt::format("duplicate SLO name '{}' (first used at line {}); accepted: a name unique among the SLOs", *v,
                          it->second));
      }
      name = *v;
    }
  }
  std::string probeName;
  const Probe* probe = nullptr;
  if (auto pf = require(*m, "probe", "the name of a probe of this steady state")) {
    if (auto v = scalar(*pf, "the name of a probe of this steady state")) {
      probeName = *v;
      std::vector<std::string_view> names;
      for (const auto& p : probes) {
        names.push_back(p.name);
        if (p.name == *v) {
          probe = &p;
        }
      }
      if (probe == nullptr) {
        error(pf->mark, pf->path,
              fmt::format("no probe is named '{}'{}; accepted: one of the probes' names: {}", *v, suggestion(*v, names),
                          joinKeys(names)));
      }
    }
  }
  std::optional<Slo> slo;
  if (auto of = require(*m, "objective", "e.g. 'p99 < 300ms and errors < 1% over 30s'")) {
    if (auto v = scalar(*of, "e.g. 'p99 < 300ms and errors < 1% over 30s'")) {
      auto parsed = parseObjective(*v);
      if (!parsed) {
        error(of->mark, of->path, parsed.error());
      } else {
        slo = std::move(*parsed);
        for (const auto& t : slo->terms) {
          if (t.sli == SliKind::kValue && probe != nullptr && !probeHasValue(*probe)) {
            error(of->mark, of->path,
                  fmt::format("'{}' is a probe's value, and probe '{}' ({}) reads none; accepted: latency (p50, p90, "
                              "p95, p99, max) and errors, or a probe with a value: prometheus, http with json, "
                              "command with stdout.number, redis or postgres with expect.number",
                              t.name, probe->name, probeKindName(probe->kind)));
          }
        }
      }
    }
  }
  if (auto burn = lookup(*m, "maxBurnRate")) {
    constexpr std::string_view accepted = "a number above 0, e.g. 10 (abort when errors burn the budget 10x too fast)";
    if (auto v = scalar(*burn, accepted)) {
      double rate = 0;
      auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), rate);
      if (v->empty() || ec != std::errc{} || end != v->data() + v->size() || !(rate > 0)) {
        error(burn->mark, burn->path, fmt::format("'{}' is not a burn rate; accepted: {}", *v, accepted));
      } else if (slo) {
        const bool hasBudget = std::any_of(slo->terms.begin(), slo->terms.end(), [](const SloTerm& t) {
          return t.sli == SliKind::kErrors && t.threshold > 0 &&
                 (t.comparison == Comparison::kLess || t.comparison == Comparison::kLessEqual);
        });
        if (!hasBudget) {
          error(burn->mark, burn->path,
                "needs an error budget: an objective with a term 'errors < N%' and N above 0; accepted: add one to "
                "objective, or remove maxBurnRate");
        } else {
          slo->maxBurnRate = rate;
        }
      }
    }
  }
  if (auto min = lookup(*m, "minSamples")) {
    if (auto v = integer(*min, 1, kMaxMinSamples, "the fewest samples a window is judged on"); v && slo) {
      slo->minSamples = static_cast<uint32_t>(*v);
    }
  }
  if (!slo) {
    return std::nullopt;
  }
  // A window that can never hold minSamples samples would never judge anything.
  if (const auto most = static_cast<uint64_t>(slo->window / every); most < slo->minSamples) {
    const auto where = lookup(*m, "minSamples");
    const Field& at = where ? *where : f;
    error(
        at.mark, at.path,
        fmt::format("SLO '{}': a window of {} sampled every {} holds at most {} sample(s), fewer than minSamples {}{}; "
                    "accepted: a longer window ('over ...'), a shorter steadyState.every, or a smaller minSamples",
                    name, formatDuration(slo->window), formatDuration(every), most, slo->minSamples,
                    where ? "" : " (the default)"));
    return std::nullopt;
  }
  slo->name = name;
  slo->probe = probeName;
  return slo;
}

std::optional<Probe> Parser::parseProbe(const Field& f, std::map<std::string, int>& namesSeen) {
  auto m = openMap(f, fmt::format("a map with name and one of {}", kProbeKindsText));
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kProbeKeys);
  Probe probe;
  if (auto name = require(*m, "name", "a name unique among the probes")) {
    if (auto v = scalar(*name, "a name unique among the probes")) {
      if (v->empty()) {
        error(name->mark, name->path, "is empty; accepted: a name unique among the probes");
      } else if (const auto why = labelNameProblem(*v); !why.empty()) {
        error(name->mark, name->path,
              fmt::format("has {}; accepted: a name unique among the probes, at most {} bytes, no control character",
                          why, kMaxLabelNameBytes));
      } else if (auto [it, inserted] = namesSeen.emplace(*v, name->mark.line + 1); !inserted) {
        error(name->mark, name->path,
              fmt::format("duplicate probe name '{}' (first used at line {}); accepted: a name unique among the probes",
                          *v, it->second));
      }
      probe.name = *v;
    }
  }
  if (auto guard = lookup(*m, "guard")) {
    if (auto v = scalar(*guard, "true or false")) {
      if (*v == "true") {
        probe.guard = true;
      } else if (*v != "false") {
        error(guard->mark, guard->path, fmt::format("'{}' is not a boolean; accepted: true or false", *v));
      }
    }
  }
  std::vector<const Entry*> kinds;
  for (const Entry& e : m->entries) {
    if (contains(kProbeKindKeys, e.key)) {
      kinds.push_back(&e);
    }
  }
  if (kinds.empty()) {
    error(m->self.mark, childPath(m->self.path, "http"),
          fmt::format("a probe needs one kind; accepted: one of {}", kProbeKindsText));
    return probe;
  }
  if (kinds.size() > 1) {
    error(kinds[1]->keyNode.Mark(), kinds[1]->field.path,
          fmt::format("a probe has one kind, and this one already has {}; accepted: one of {} (use two probes)",
                      kinds[0]->key, kProbeKindsText));
    return probe;
  }
  const Field& spec = kinds[0]->field;
  if (kinds[0]->key == "http") {
    probe.kind = ProbeKind::kHttp;
    parseHttpProbe(spec, probe.http);
  } else if (kinds[0]->key == "tcp") {
    probe.kind = ProbeKind::kTcp;
    parseTcpProbe(spec, probe.tcp);
  } else if (kinds[0]->key == "command") {
    probe.kind = ProbeKind::kCommand;
    parseCommandProbe(spec, probe.command);
  } else if (kinds[0]->key == "prometheus") {
    probe.kind = ProbeKind::kPrometheus;
    parsePrometheusProbe(spec, probe.prometheus);
  } else if (kinds[0]->key == "redis") {
    probe.kind = ProbeKind::kRedis;
    parseRedisProbe(spec, probe.redis);
  } else if (kinds[0]->key == "postgres") {
    probe.kind = ProbeKind::kPostgres;
    parsePostgresProbe(spec, probe.postgres);
  } else if (kinds[0]->key == "grpc") {
    probe.kind = ProbeKind::kGrpc;
    parseGrpcProbe(spec, probe.grpc);
  } else {
    probe.kind = ProbeKind::kDns;
    parseDnsProbe(spec, probe.dns);
  }
  return probe;
}

// maxLatency (when the probe has one) and timeout: each from 1ms to 1h, timeout >= maxLatency.
void Parser::parseLatencies(const MapNode& h, milliseconds* maxLatency, milliseconds& timeout) {
  bool latenciesValid = true;
  auto maxField = maxLatency != nullptr ? lookup(h, "maxLatency") : std::nullopt;
  if (maxField) {
    if (auto d = durationIn(*maxField, 1ms, kMaxStep, "from 1ms to 1h", true)) {
      *maxLatency = std::chrono::duration_cast<milliseconds>(*d);
    } else {
      latenciesValid = false;
    }
  }
  auto timeoutField = lookup(h, "timeout");
  if (timeoutField) {
    if (auto d = durationIn(*timeoutField, 1ms, kMaxStep, "from 1ms to 1h", true)) {
      timeout = std::chrono::duration_cast<milliseconds>(*d);
    } else {
      latenciesValid = false;
    }
  }
  if (maxLatency != nullptr && latenciesValid && timeout < *maxLatency) {
    const Field& at = timeoutField ? *timeoutField : *maxField;  // one was given: the defaults are in order
    error(at.mark, at.path,
          fmt::format("timeout {}{} is shorter than maxLatency {}; accepted: a timeout at least as long as maxLatency",
                      formatDuration(timeout), timeoutField ? "" : " (the default)", formatDuration(*maxLatency)));
  }
}

std::optional<std::string> Parser::regex(const Field& f) {
  const std::string accepted = fmt::format("{}, searched anywhere in the text", kRegexAccepted);
  auto v = scalar(f, accepted);
  if (!v) {
    return std::nullopt;
  }
  if (auto compiled = Regex::compile(*v, RegexAnchors::kLineEnds); !compiled) {
    error(f.mark, f.path, fmt::format("{}; accepted: {}", compiled.error(), accepted));
    return std::nullopt;
  }
  return v;
}

void Parser::parseHttpProbe(const Field& f, HttpProbe& out) {
  auto h = openMap(
      f, "a map with url and optionally method, headers, body, expectStatus, bodyMatch, maxLatency, timeout, load");
  if (!h) {
    return;
  }
  rejectUnknown(*h, kHttpKeys);
  constexpr std::string_view urlAccepted = "http://HOST[:PORT][/PATH], e.g. http://10.77.0.1:8080/";
  if (auto url = require(*h, "url", urlAccepted)) {
    if (auto v = scalar(*url, urlAccepted)) {
      // The prober's own parser: what passes here is what the prober accepts.
      if (auto parsed = parseHttpUrl(*v); !parsed) {
        error(url->mark, url->path, parsed.error());
      }
      out.url = *v;
    }
  }
  if (auto method = lookup(*h, "method")) {
    if (auto v = scalar(*method, joinKeys(kHttpMethods))) {
      if (!contains(kHttpMethods, *v)) {
        error(method->mark, method->path,
              fmt::format("'{}' is not a method{}; accepted: {}", *v, suggestion(*v, kHttpMethods),
                          joinKeys(kHttpMethods)));
      } else {
        out.method = *v;
      }
    }
  }
  if (auto headers = lookup(*h, "headers")) {
    constexpr std::string_view accepted = "a map of header names to values, e.g. {Authorization: Bearer T}";
    if (auto hm = openMap(*headers, accepted)) {
      for (const Entry& e : hm->entries) {
        const bool token = !e.key.empty() && std::all_of(e.key.begin(), e.key.end(), [](char c) {
          return std::isalnum(static_cast<unsigned char>(c)) ||
                 std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
        });
        if (!token) {
          error(e.keyNode.Mark(), e.field.path,
                fmt::format("'{}' is not a header name; accepted: letters, digits and !#$%&'*+-.^_`|~", e.key));
          continue;
        }
        if (auto v = scalar(e.field, accepted)) {
          if (v->find_first_of("\r\n") != std::string::npos) {
            error(e.field.mark, e.field.path, "has a line break; accepted: a value on one line");
            continue;
          }
          out.headers.emplace_back(e.key, *v);
        }
      }
    }
  }
  if (auto body = lookup(*h, "body")) {
    if (auto v = scalar(*body, "the request body as text")) {
      out.body = *v;
    }
  }
  if (auto status = lookup(*h, "expectStatus")) {
    constexpr std::string_view accepted =
        "an HTTP status code from 100 to 599, a class such as 2xx, or a list of them, e.g. [200, 204]";
    std::vector<Field> items;
    if (status->value.IsSequence()) {
      for (size_t i = 0; i < status->value.size(); ++i) {
        const YAML::Node item = std::as_const(status->value)[i];
        items.push_back(
            Field{item, item.IsNull() ? status->mark : item.Mark(), fmt::format("{}[{}]", status->path, i)});
      }
      if (items.empty()) {
        error(status->mark, status->path, fmt::format("is empty; accepted: {}", accepted));
      }
    } else {
      items.push_back(*status);
    }
    std::vector<int> codes;
    bool valid = true;
    for (const Field& item : items) {
      auto v = scalar(item, accepted);
      if (!v) {
        valid = false;
        continue;
      }
      if (v->size() == 3 && v->at(0) >= '1' && v->at(0) <= '5' && lower(v->substr(1)) == "xx") {
        const int base = (v->at(0) - '0') * 100;
        for (int c = base; c < base + 100; ++c) {
          codes.push_back(c);
        }
        continue;
      }
      long long code = 0;
      auto [end, ec] = std::from_chars(v->data(), v->data() + v->size(), code);
      if (v->empty() || ec != std::errc{} || end != v->data() + v->size()) {
        error(item.mark, item.path, fmt::format("'{}' is not a status; accepted: {}", *v, accepted));
        valid = false;
      } else if (code < 100 || code > 599) {
        error(item.mark, item.path, fmt::format("{} is out of range; accepted: {}", code, accepted));
        valid = false;
      } else {
        codes.push_back(static_cast<int>(code));
      }
    }
    if (valid && !codes.empty()) {
      std::sort(codes.begin(), codes.end());
      codes.erase(std::unique(codes.begin(), codes.end()), codes.end());
      out.expectStatus = std::move(codes);
    }
  }
  if (auto match = lookup(*h, "bodyMatch")) {
    out.bodyMatch = regex(*match);
  }
  if (auto json = lookup(*h, "json")) {
    parseJsonCheck(*json, out);
  }
  parseLatencies(*h, &out.maxLatency, out.timeout);
  if (auto load = lookup(*h, "load")) {
    out.load = parseLoad(*load);
  }
}

void Parser::parseTcpProbe(const Field& f, TcpProbe& out) {
  auto t = openMap(f, "a map with address and optionally maxLatency, timeout, load");
  if (!t) {
    return;
  }
  rejectUnknown(*t, kTcpKeys);
  constexpr std::string_view accepted = "HOST:PORT, e.g. 10.77.0.1:5432, db.internal:5432 or [::1]:5432";
  if (auto address = require(*t, "address", accepted)) {
    if (auto hp = hostPort(*address, accepted)) {
      out.host = hp->first;
      out.port = hp->second;
    }
  }
  parseLatencies(*t, &out.maxLatency, out.timeout);
  if (auto load = lookup(*t, "load")) {
    out.load = parseLoad(*load);
  }
}

std::optional<LoadSpec> Parser::parseLoad(const Field& f) {
  auto m = openMap(f, "a map with rate and optionally concurrency, duration, e.g. {rate: 200/s, concurrency: 16}");
  if (!m) {
    return std::nullopt;
  }
  rejectUnknown(*m, kLoadKeys);
  LoadSpec load;
  bool valid = true;
  const std::string rateAccepted =
      fmt::format("requests per second, more than 0 and at most {:g}/s per probe, e.g. 200/s", kMaxLoadRatePerProbe);
  if (auto rate = require(*m, "rate", rateAccepted)) {
    if (auto v = scalar(*rate, rateAccepted)) {
      std::string_view number = trim(*v);
      if (number.size() > 2 && number.substr(number.size() - 2) == "/s") {
        number = trim(number.substr(0, number.size() - 2));
      }
      auto n = plainNumber(number);
      if (!n) {
        error(rate->mark, rate->path, fmt::format("'{}' is not a rate; accepted: {}", *v, rateAccepted));
        valid = false;
      } else if (!(*n > 0) || *n > kMaxLoadRatePerProbe) {
        error(rate->mark, rate->path, fmt::format("{} is out of range; accepted: {}", *v, rateAccepted));
        valid = false;
      } else {
        load.rate = *n;
      }
    } else {
      valid = false;
    }
  } else {
    valid = false;
  }
  if (auto concurrency = lookup(*m, "concurrency")) {
    if (auto n = integer(*concurrency, 1, kMaxLoadConcurrency, "requests in flight at most")) {
      load.concurrency = static_cast<unsigned>(*n);
    } else {
      valid = false;
    }
  }
  if (auto duration = lookup(*m, "duration")) {
    if (auto d = durationIn(*duration, 100ms, 60s, "from 100ms to 60s", true)) {
      load.duration = std::chrono::duration_cast<milliseconds>(*d);
    } else {
      valid = false;
    }
  }
  if (!valid) {
    return std::nullopt;
  }
  return load;
}

void Parser::parseCommandProbe(const Field& f, CommandProbe& out) {
  auto c = openMap(f, "a map with argv or shell, and optionally expectExit, stdoutMatch, stdout, env, timeout");
  if (!c) {
    return;
  }
  rejectUnknown(*c, kCommandKeys);
  auto argv = lookup(*c, "argv");
  auto shell = lookup(*c, "shell");
  if (argv && shell) {
    error(shell->mark, shell->path,
          "a command has argv or shell, not both; accepted: argv (a list, run without a shell) or shell (one line "
          "for /bin/sh -c)");
  } else if (!argv && !shell) {
    error(c->self.mark, childPath(c->self.path, "argv"),
          "is required; accepted: argv (a list, run without a shell) or shell (one line for /bin/sh -c)");
  } else if (argv) {
    constexpr std::string_view accepted =
        "a list of at least one word: the program (looked up in PATH) and its arguments";
    if (!argv->value.IsSequence() || argv->value.size() == 0) {
      if (argv->value.IsSequence()) {
        error(argv->mark, argv->path, fmt::format("is empty; accepted: {}", accepted));
      } else {
        typeError(*argv, accepted);
      }
    } else {
      for (size_t i = 0; i < argv->value.size(); ++i) {
        const YAML::Node item = std::as_const(argv->value)[i];
        const Field itemField{item, item.IsNull() ? argv->mark : item.Mark(), fmt::format("{}[{}]", argv->path, i)};
        if (auto v = scalar(itemField, accepted)) {
          if (i == 0 && v->empty()) {
            error(itemField.mark, itemField.path, fmt::format("is empty; accepted: {}", accepted));
          }
          out.argv.push_back(*v);
        }
      }
    }
  } else if (auto v = scalar(*shell, "one line of shell for /bin/sh -c")) {
    if (v->empty()) {
      error(shell->mark, shell->path, "is empty; accepted: one line of shell for /bin/sh -c");
    }
    out.shell = *v;
  }
  if (auto code = lookup(*c, "expectExit")) {
    if (auto v = integer(*code, 0, 255, "an exit code")) {
      out.expectExit = static_cast<int>(*v);
    }
  }
  if (auto match = lookup(*c, "stdoutMatch")) {
    out.stdoutMatch = regex(*match);
  }
  if (auto so = lookup(*c, "stdout")) {
    if (auto sm = openMap(*so, "a map with number, e.g. {number: '< 100'}")) {
      rejectUnknown(*sm, kStdoutKeys);
      if (auto n = require(*sm, "number", "a comparison and a number, e.g. '< 100'")) {
        out.stdoutNumber = numberCheck(*n);
      }
    }
  }
  if (auto env = lookup(*c, "env")) {
    parseCommandEnv(*env, out);
  }
  parseLatencies(*c, nullptr, out.timeout);
}

void Parser::parsePrometheusProbe(const Field& f, PrometheusProbe& out) {
  auto p = openMap(f, "a map with url, query, expect and optionally timeout");
  if (!p) {
    return;
  }
  rejectUnknown(*p, kPrometheusKeys);
  constexpr std::string_view urlAccepted =
      "the Prometheus server's http://HOST[:PORT][/PREFIX], e.g. http://10.77.0.1:9090";
  if (auto url = require(*p, "url", urlAccepted)) {
    if (auto v = scalar(*url, urlAccepted)) {
      if (auto parsed = parseHttpUrl(*v); !parsed) {
        error(url->mark, url->path, parsed.error());
      } else if (parsed->target.find('?') != std::string::npos) {
        error(url->mark, url->path,
              fmt::format("'{}' has a query; accepted: {} (the probe adds /api/v1/query?query=...)", *v, urlAccepted));
      }
      out.url = *v;
    }
  }
  if (auto query =
          require(*p, "query", "a PromQL expression that gives one number, e.g. sum(rate(errors_total[1m]))")) {
    if (auto v = scalar(*query, "a PromQL expression")) {
      if (trim(*v).empty()) {
        error(query->mark, query->path, "is empty; accepted: a PromQL expression that gives one number");
      }
      out.query = *v;
    }
  }
  if (auto expect = require(*p, "expect", "a comparison with a number, e.g. '< 0.8'")) {
    if (auto v = scalar(*expect, "a comparison with a number, e.g. '< 0.8'")) {
      if (auto parsed = parseExpectation(*v)) {
        out.comparison = parsed->first;
        out.threshold = parsed->second;
      } else {
        error(expect->mark, expect->path, parsed.error());
      }
    }
  }
  parseLatencies(*p, nullptr, out.timeout);
}

std::optional<std::string> detail::jsonPointerError(std::string_view text) {
  if (text.empty()) {
    return std::nullopt;  // the whole document
  }
  if (text[0] != '/') {
    return "it does not start with '/'";
  }
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '~' && (i + 1 == text.size() || (text[i + 1] != '0' && text[i + 1] != '1'))) {
      return fmt::format("'~' at byte {} is not followed by 0 or 1", i + 1);
    }
  }
  return std::nullopt;
}

void Parser::parseJsonCheck(const Field& f, HttpProbe& out) {
  constexpr std::string_view accepted =
      "a map with pointer (a JSON Pointer, e.g. /data/0/value) and number (e.g. '< 0.05')";
  auto j = openMap(f, accepted);
  if (!j) {
    return;
  }
  rejectUnknown(*j, kJsonKeys);
  std::optional<std::string> pointer;
  if (auto p = require(*j, "pointer", "a JSON Pointer (RFC 6901), e.g. /data/0/value")) {
    if (auto v = scalar(*p, "a JSON Pointer (RFC 6901), e.g. /data/0/value")) {
      if (v->size() > kMaxJsonPointer) {
        error(
            p->mark, p->path,
            fmt::format("is {} bytes long; accepted: a JSON Pointer of at most {} bytes", v->size(), kMaxJsonPointer));
      } else if (auto why = jsonPointerError(*v)) {
        error(p->mark, p->path,
              fmt::format("'{}' is not a JSON Pointer: {}; accepted: '' (the whole body) or /KEY/INDEX/..., with ~0 "
                          "for ~ and ~1 for /, e.g. /data/0/value",
                          *v, *why));
      } else {
        pointer = *v;
      }
    }
  }
  std::optional<NumberCheck> number;
  if (auto n = require(*j, "number", "a comparison and a number, e.g. '< 0.05'")) {
    number = numberCheck(*n);
  }
  if (pointer && number) {
    out.jsonPointer = pointer;
    out.jsonNumber = number;
  }
}

void Parser::parseCommandEnv(const Field& f, CommandProbe& out) {
  constexpr std::string_view accepted =
      "a map of variable names ([A-Za-z_][A-Za-z0-9_]*) to values, e.g. {PGCONNECT_TIMEOUT: '2'}";
  auto m = openMap(f, accepted);
  if (!m) {
    return;
  }
  if (m->entries.size() > kMaxProbeArgs) {
    error(m->self.mark, m->self.path,
          fmt::format("has {} variables; accepted: at most {}", m->entries.size(), kMaxProbeArgs));
    return;
  }
  for (const Entry& e : m->entries) {
    const bool name = !e.key.empty() && e.key.size() <= 128 && !std::isdigit(static_cast<unsigned char>(e.key[0])) &&
                      std::all_of(e.key.begin(), e.key.end(),
                                  [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
    if (!name) {
      error(e.keyNode.Mark(), e.field.path, fmt::format("'{}' is not a variable name; accepted: {}", e.key, accepted));
      continue;
    }
    if (auto v = scalar(e.field, accepted)) {
      if (v->size() > kMaxProbeText || v->find('\0') != std::string::npos) {
        error(e.field.mark, e.field.path,
              fmt::format("accepted: a value of at most {} bytes without NUL", kMaxProbeText));
        continue;
      }
      out.env.emplace_back(e.key, *v);
    }
  }
}

std::string_view sliName(SliKind kind) {
  switch (kind) {
    case SliKind::kP50:
      return "p50";
    case SliKind::kP90:
      return "p90";
    case SliKind::kP95:
      return "p95";
    case SliKind::kP99:
      return "p99";
    case SliKind::kMaxLatency:
      return "max";
    case SliKind::kErrors:
      return "errors";
    case SliKind::kValue:
      return "value";
    case SliKind::kThroughput:
      return "throughput";
  }
  return "?";
}

// Here, not in probe.cpp: the parser (and the fuzz target, built from the parser's sources alone)
// names probe kinds in its errors.
std::string_view probeKindName(ProbeKind kind) {
  switch (kind) {
    case ProbeKind::kHttp:
      return "http";
    case ProbeKind::kTcp:
      return "tcp";
    case ProbeKind::kCommand:
      return "command";
    case ProbeKind::kPrometheus:
      return "prometheus";
    case ProbeKind::kRedis:
      return "redis";
    case ProbeKind::kPostgres:
      return "postgres";
    case ProbeKind::kGrpc:
      return "grpc";
    case ProbeKind::kDns:
      return "dns";
  }
  return "?";
}

tl::expected<Slo, std::string> parseObjective(std::string_view text) {
  constexpr std::string_view accepted =
      "terms 'SLI OP VALUE' joined by 'and', then optionally 'over DURATION' (default 30s), e.g. 'p99 < 300ms and "
      "errors < 1% over 30s'; SLI: p50, p90, p95, p99, max (latency: 300ms, 1.5s), errors (percent of failed "
      "samples, of failed requests for a load probe: 1%), throughput (a load probe's successful requests per second: "
      "150/s; another probe's value), value or saturation (a prometheus probe's value: a number); OP: <, <=, >, >=, "
      "==, !=";
  const auto fail = [&](const std::string& why) {
    return tl::unexpected(fmt::format("objective '{}': {}; accepted: {}", text, why, accepted));
  };
  Slo slo;
  slo.objective = std::string(trim(text));
  std::string_view rest = slo.objective;
  if (const size_t over = rest.rfind(" over "); over != std::string_view::npos) {
    const std::string_view window = trim(rest.substr(over + 6));
    auto d = parseDuration(window);
    if (!d) {
      return fail(fmt::format("window '{}': {}", window, d.error()));
    }
    if (*d < 1s || *d > kMaxStep || *d % 1ms != 0ns) {
      return fail(fmt::format("window '{}' is out of range (from 1s to 1h, whole milliseconds)", window));
    }
    slo.window = std::chrono::duration_cast<milliseconds>(*d);
    rest = trim(rest.substr(0, over));
  }
  if (rest.empty()) {
    return fail("it has no term");
  }
  if (rest == "and" || (rest.size() > 4 && rest.substr(rest.size() - 4) == " and")) {
    return fail("it ends with 'and'");
  }
  while (!rest.empty()) {
    std::string_view term = rest;
    if (const size_t andAt = rest.find(" and "); andAt != std::string_view::npos) {
      term = rest.substr(0, andAt);
      rest = trim(rest.substr(andAt + 5));
      if (rest.empty()) {
        return fail("it ends with 'and'");
      }
    } else {
      rest = {};
    }
    term = trim(term);
    size_t nameEnd = 0;
    while (nameEnd < term.size() && std::isalnum(static_cast<unsigned char>(term[nameEnd]))) {
      ++nameEnd;
    }
    SloTerm t;
    t.name = lower(term.substr(0, nameEnd));
    static constexpr std::array<std::pair<std::string_view, SliKind>, 9> kSlis{{{"p50", SliKind::kP50},
                                                                                {"p90", SliKind::kP90},
                                                                                {"p95", SliKind::kP95},
                                                                                {"p99", SliKind::kP99},
                                                                                {"max", SliKind::kMaxLatency},
                                                                                {"errors", SliKind::kErrors},
                                                                                {"value", SliKind::kValue},
                                                                                {"throughput", SliKind::kThroughput},
                                                                                {"saturation", SliKind::kValue}}};
    const auto found = std::find_if(kSlis.begin(), kSlis.end(), [&](const auto& e) { return e.first == t.name; });
    if (found == kSlis.end()) {
      return fail(fmt::format("'{}' is not an SLI", term.substr(0, nameEnd)));
    }
    t.sli = found->second;
    std::string_view tail = trim(term.substr(nameEnd));
    auto c = takeComparison(tail);
    if (!c) {
      return fail(fmt::format("term '{}' has no comparison after {}", term, t.name));
    }
    t.comparison = *c;
    const std::string_view value = trim(tail);
    switch (t.sli) {
      case SliKind::kErrors: {
        std::string_view number = value;
        if (!number.empty() && number.back() == '%') {
          number.remove_suffix(1);
        }
        auto v = plainNumber(number);
        if (!v || *v < 0 || *v > 100) {
          return fail(fmt::format("'{}' in '{}' is not a percentage from 0 to 100", value, term));
        }
        t.threshold = *v;
        break;
      }
      case SliKind::kValue:
      case SliKind::kThroughput: {
        std::string_view number = value;
        if (t.name == "throughput" && number.size() > 2 && number.substr(number.size() - 2) == "/s") {
          number.remove_suffix(2);
        }
        auto v = plainNumber(trim(number));
        if (!v) {
          return fail(fmt::format("'{}' in '{}' is not a number", value, term));
        }
        t.threshold = *v;
        break;
      }
      default: {
        auto d = parseDuration(value);
        if (!d) {
          return fail(fmt::format("'{}' in '{}' is not a latency: {}", value, term, d.error()));
        }
        t.threshold = std::chrono::duration<double, std::milli>(*d).count();
        break;
      }
    }
    slo.terms.push_back(std::move(t));
  }
  return slo;
}

}  // namespace faultline::controller
