// parseScheduleFile(): the `kind: Schedule` file of `faultline apply` (docs/schedules.md).
#include <algorithm>
#include <filesystem>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "agent/faults/spec.h"
#include "common/yaml_fields.h"
#include "controller/cli/command.h"
#include "controller/cli/schedule_file.h"

namespace faultline::controller::cli {
namespace {

constexpr std::string_view kRootKeys[] = {"apiVersion", "kind", "metadata", "spec"};
constexpr std::string_view kMetadataKeys[] = {"name"};
constexpr std::string_view kSpecKeys[] = {"cron",      "timezone", "concurrency", "startingDeadline", "jitter",
                                          "blackouts", "onlyIf",   "vars",        "experiment",       "experimentFile"};

}  // namespace

tl::expected<google::protobuf::Duration, std::string> parseScheduleDuration(const std::string& text) {
  std::chrono::milliseconds ms{};
  if (text.size() > 1 && text.size() <= 8 && text.back() == 'd' &&
      std::all_of(text.begin(), text.end() - 1, [](char c) { return c >= '0' && c <= '9'; })) {
    ms = std::chrono::hours{24 * std::stoll(text.substr(0, text.size() - 1))};
  } else {
    auto d = parseDuration(text);
    if (!d) {
      return tl::unexpected(d.error() + " or d (days, e.g. 7d)");
    }
    ms = std::chrono::duration_cast<std::chrono::milliseconds>(*d);
  }
  google::protobuf::Duration out;
  out.set_seconds(ms.count() / 1000);
  out.set_nanos(static_cast<int32_t>((ms.count() % 1000) * 1'000'000));
  return out;
}

tl::expected<v1::Schedule, std::vector<Diagnostic>> parseScheduleFile(const std::string& text,
                                                                      const std::string& path) {
  yaml::FieldReader r(path, 50);
  if (text.size() > kMaxExperimentBytes) {
    r.error(YAML::Mark::null_mark(), "",
            fmt::format("the file is {} bytes, more than the {} accepted", text.size(), kMaxExperimentBytes));
    return tl::unexpected(r.takeDiagnostics());
  }
  YAML::Node doc;
  try {
    doc = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    r.error(e.mark, "", fmt::format("not valid YAML: {}", e.msg));
    return tl::unexpected(r.takeDiagnostics());
  }
  v1::Schedule s;
  const yaml::Field root{doc, doc.Mark(), ""};
  auto top = r.openMap(root, "a map with apiVersion, kind, metadata, spec");
  if (!top) {
    return tl::unexpected(r.takeSorted());
  }
  r.knownEntries(root, kRootKeys);
  if (auto f = r.require(*top, "apiVersion", "faultline/v1")) {
    if (auto v = r.scalar(*f, "faultline/v1"); v && *v != "faultline/v1") {
      r.error(f->mark, "apiVersion", fmt::format("'{}' is not accepted; accepted: faultline/v1", *v));
    }
  }
  if (auto f = r.require(*top, "kind", "Schedule")) {
    if (auto v = r.scalar(*f, "Schedule"); v && *v != "Schedule") {
      r.error(f->mark, "kind",
              fmt::format("'{}' is not accepted here; accepted: Schedule (an Experiment file is run with faultline "
                          "run, or scheduled with faultline schedule add)",
                          *v));
    }
  }
  if (auto f = r.require(*top, "metadata", "a map with name")) {
    if (auto m = r.openMap(*f, "a map with name")) {
      r.knownEntries(*f, kMetadataKeys);
      if (auto n = r.require(*m, "name", "the schedule's name: [a-z0-9][a-z0-9._-]*")) {
        if (auto v = r.scalar(*n, "a name")) {
          s.set_name(*v);
        }
      }
    }
  }
  auto specField = r.require(*top, "spec", "a map with cron and experiment or experimentFile");
  std::optional<yaml::MapNode> spec;
  if (specField) {
    spec = r.openMap(*specField, "a map with cron and experiment or experimentFile");
  }
  if (spec) {
    r.knownEntries(*specField, kSpecKeys);
    if (auto f = r.require(*spec, "cron", "a cron expression, e.g. '0 3 * * *'")) {
      if (auto v = r.scalar(*f, "a cron expression")) {
        s.set_cron(*v);
      }
    }
    const auto readText = [&](std::string_view key, auto set) {
      if (auto f = r.lookup(*spec, key)) {
        if (auto v = r.scalar(*f, "a string")) {
          set(*v);
        }
      }
    };
    readText("timezone", [&](const std::string& v) { s.set_timezone(v); });
    readText("concurrency", [&](const std::string& v) {
      if (v != "forbid" && v != "allow" && v != "replace") {
        r.error(r.lookup(*spec, "concurrency")->mark, "spec.concurrency",
                fmt::format("'{}' is not accepted; accepted: forbid, allow, replace", v));
      }
      s.set_concurrency(v);
    });
    for (auto [key, out] : {std::pair{std::string_view{"startingDeadline"}, s.mutable_starting_deadline()},
                            std::pair{std::string_view{"jitter"}, s.mutable_jitter()}}) {
      if (auto f = r.lookup(*spec, key)) {
        if (auto v = r.scalar(*f, "a duration, e.g. 10m")) {
          auto d = parseScheduleDuration(*v);
          if (!d) {
            r.error(f->mark, f->path, d.error());
          } else {
            *out = *d;
          }
        }
      }
    }
    for (auto [key, out] : {std::pair{std::string_view{"blackouts"}, s.mutable_blackouts()},
                            std::pair{std::string_view{"onlyIf"}, s.mutable_only_if()}}) {
      if (auto f = r.lookup(*spec, key)) {
        if (!f->value.IsSequence()) {
          r.typeError(*f, "a list of strings");
          continue;
        }
        size_t i = 0;
        for (const auto& item : f->value) {
          yaml::Field itemField{item, item.Mark(), fmt::format("{}[{}]", f->path, i++)};
          if (auto v = r.scalar(itemField, "a string")) {
            out->Add(std::string(*v));
          }
        }
      }
    }
    if (auto f = r.lookup(*spec, "vars")) {
      if (auto m = r.openMap(*f, "a map of NAME: VALUE")) {
        for (const auto& e : m->entries) {
          if (!isVariableName(e.key)) {
            r.error(e.field.mark, e.field.path,
                    "not a variable name; accepted: a letter or '_' then letters, digits and '_' (at most 64)");
            continue;
          }
          if (auto v = r.scalar(e.field, "a string")) {
            (*s.mutable_variables())[e.key] = *v;
          }
        }
      }
    }
    const auto inlineExperiment = r.lookup(*spec, "experiment");
    const auto experimentFile = r.lookup(*spec, "experimentFile");
    if (inlineExperiment && experimentFile) {
      r.error(experimentFile->mark, "spec.experimentFile",
              "given with spec.experiment; accepted: one of them (the experiment inline, or a file's path)");
    } else if (inlineExperiment) {
      if (!inlineExperiment->value.IsMap()) {
        r.typeError(*inlineExperiment, "the experiment as a map (apiVersion, kind: Experiment, metadata, ...)");
      } else {
        YAML::Emitter out;
        out << inlineExperiment->value;
        s.set_experiment(out.c_str());
        s.set_file_name(fmt::format("{} (spec.experiment, line {})", path, inlineExperiment->mark.line + 1));
      }
    } else if (experimentFile) {
      if (auto v = r.scalar(*experimentFile, "a path relative to this file")) {
        const auto full = (std::filesystem::path(path).parent_path() / *v).lexically_normal().string();
        std::string error;
        const std::string content = readFile(full, error);
        if (!error.empty()) {
          r.error(experimentFile->mark, "spec.experimentFile", error);
        } else {
          s.set_experiment(content);
          s.set_file_name(full);
        }
      }
    } else {
      r.error(specField->mark, "spec",
              "has neither experiment nor experimentFile; accepted: one of them (the experiment inline, or a path "
              "relative to this file)");
    }
  }
  if (!r.diagnostics().empty()) {
    return tl::unexpected(r.takeSorted());
  }
  return s;
}

}  // namespace faultline::controller::cli
