#include "common/config_file.h"

#include <algorithm>
#include <istream>
#include <iterator>
#include <optional>
#include <sstream>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include "common/yaml_fields.h"

namespace faultline::config {
namespace {

// A config file's bounds after YAML aliases are expanded: values per list key, and bytes of all
// values together (the file itself is at most 256 KiB; aliases can repeat a value without end).
constexpr size_t kMaxConfigListItems = 1000;
constexpr size_t kMaxConfigValueBytes = 1024 * 1024;

// The option a key names, or nullptr when it is not a key of app.
CLI::Option* optionOf(CLI::App& app, const std::string& key) {
  if (key.empty() || key.front() == '-') {
    return nullptr;
  }
  auto* opt = app.get_option_no_throw("--" + key);
  if (opt == nullptr || !opt->get_configurable()) {
    return nullptr;  // CLI11 makes --help, --help-all and --version not configurable
  }
  return opt;
}

bool isFlag(const CLI::Option& opt) {
  return opt.get_expected_min() == 0;
}

bool takesMany(const CLI::Option& opt) {
  return opt.get_items_expected_max() > 1 || opt.get_multi_option_policy() == CLI::MultiOptionPolicy::TakeAll;
}

struct Item {
  CLI::ConfigItem item;
  yaml::Field where;
  CLI::Option* option = nullptr;
};

// The file's items, one per key; problems go to reader. app: where keys are looked up.
std::vector<Item> readItems(CLI::App& app, std::string_view text, yaml::FieldReader& reader) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(text));
  } catch (const YAML::Exception& e) {
    reader.error(e.mark, "", fmt::format("not YAML: {}", e.msg));
    return {};
  }
  if (!root || root.IsNull()) {
    return {};  // empty, or only comments
  }
  const auto keys = configKeys(app);
  const std::vector<std::string_view> keyViews(keys.begin(), keys.end());
  const std::string accepted = "a map of option names (without dashes) to values";
  auto map = reader.openMap(yaml::Field{root, root.Mark(), ""}, accepted);
  if (!map) {
    return {};
  }
  std::vector<Item> items;
  size_t expanded = 0;  // bytes of every value as read, aliases expanded (kMaxConfigValueBytes)
  for (auto& entry : map->entries) {
    auto* opt = optionOf(app, entry.key);
    if (opt == nullptr) {
      reader.error(entry.keyNode.Mark(), "", yaml::unknownKeyMessage(entry.key, "", keyViews));
      continue;
    }
    yaml::Field f = entry.field;
    f.path = fmt::format("key '{}'", entry.key);
    Item item{CLI::ConfigItem{{}, entry.key, {}}, f, opt};
    const std::string one = isFlag(*opt) ? "true or false" : "one value";
    if (f.value.IsScalar()) {
      if (isFlag(*opt)) {
        bool on = false;
        if (!YAML::convert<bool>::decode(f.value, on)) {
          reader.typeError(f, one);
          continue;
        }
        item.item.inputs.emplace_back(on ? "true" : "false");
      } else {
        item.item.inputs.push_back(f.value.Scalar());
      }
    } else if (f.value.IsSequence() && takesMany(*opt)) {
      bool ok = true;
      if (f.value.size() > kMaxConfigListItems) {
        reader.error(f.mark, f.path,
                     fmt::format("has {} values; accepted: at most {}", f.value.size(), kMaxConfigListItems));
        continue;
      }
      for (const auto& v : f.value) {
        if (!v.IsScalar()) {
          reader.typeError(yaml::Field{v, v.Mark(), f.path}, "a list of values");
          ok = false;
          break;
        }
        // YAML aliases repeat one value without its bytes in the file (attacker trial: 262 KB
        // that expands to 4 GB ran the agent, and revert-all, out of memory).
        expanded += v.Scalar().size();
        if (expanded > kMaxConfigValueBytes) {
          reader.error(v.Mark(), f.path,
                       fmt::format("the file's values come to more than {} bytes with their aliases expanded; "
                                   "accepted: at most {}",
                                   kMaxConfigValueBytes, kMaxConfigValueBytes));
          ok = false;
          break;
        }
        item.item.inputs.push_back(v.Scalar());
      }
      if (!ok) {
        continue;
      }
    } else {
      reader.typeError(f, takesMany(*opt) ? "a value or a list of values" : one);
      continue;
    }
    items.push_back(std::move(item));
  }
  return items;
}

std::string yamlScalar(const std::string& value) {
  YAML::Emitter out;
  out << YAML::DoubleQuoted << value;
  return out.c_str();
}

}  // namespace

std::vector<std::string> configKeys(const CLI::App& app) {
  std::vector<std::string> keys;
  for (const auto* opt : app.get_options()) {
    if (!opt->get_configurable()) {
      continue;
    }
    for (const auto& name : opt->get_lnames()) {
      keys.push_back(name);
    }
  }
  std::sort(keys.begin(), keys.end());
  return keys;
}

std::string YamlConfig::to_config(const CLI::App* app, bool defaultAlso, bool writeDescription,
                                  std::string /*prefix*/) const {
  std::string out;
  for (const auto& key : configKeys(*app)) {
    const auto* opt = app->get_option_no_throw("--" + key);
    std::vector<std::string> values = opt->reduced_results();
    if (values.empty() && defaultAlso && !opt->get_default_str().empty()) {
      values.push_back(opt->get_default_str());
    }
    if (values.empty()) {
      continue;
    }
    if (writeDescription && !opt->get_description().empty()) {
      out += "# " + opt->get_description() + "\n";
    }
    if (values.size() == 1 && !takesMany(*opt)) {
      out += fmt::format("{}: {}\n", key, yamlScalar(values.front()));
    } else {
      out += key + ":\n";
      for (const auto& v : values) {
        out += fmt::format("  - {}\n", yamlScalar(v));
      }
    }
  }
  return out;
}

std::vector<CLI::ConfigItem> YamlConfig::from_config(std::istream& input) const {
  const std::string text{std::istreambuf_iterator<char>(input), std::istreambuf_iterator<char>()};
  // Without the app, keys are not checked here (CLI11 reports those it cannot place).
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw CLI::ConfigError(fmt::format("{}:{}: not YAML: {}", e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  std::vector<CLI::ConfigItem> items;
  if (!root || root.IsNull()) {
    return items;
  }
  if (!root.IsMap()) {
    throw CLI::ConfigError(fmt::format("{}:{}: wrong type: accepted: a map of option names to values",
                                       root.Mark().line + 1, root.Mark().column + 1));
  }
  size_t expanded = 0;  // as in readItems: aliases expanded, at most kMaxConfigValueBytes
  const auto take = [&](const YAML::Node& v, const std::string& key) {
    expanded += v.Scalar().size();
    if (expanded > kMaxConfigValueBytes) {
      throw CLI::ConfigError(
          fmt::format("{}:{}: key '{}': the file's values come to more than {} bytes with their "
                      "aliases expanded; accepted: at most {}",
                      v.Mark().line + 1, v.Mark().column + 1, key, kMaxConfigValueBytes, kMaxConfigValueBytes));
    }
    return v.Scalar();
  };
  for (const auto& kv : root) {
    CLI::ConfigItem item{{}, kv.first.as<std::string>(), {}};
    if (kv.second.IsScalar()) {
      item.inputs.push_back(take(kv.second, item.name));
    } else if (kv.second.IsSequence()) {
      if (kv.second.size() > kMaxConfigListItems) {
        throw CLI::ConfigError(fmt::format("{}:{}: key '{}': has {} values; accepted: at most {}",
                                           kv.second.Mark().line + 1, kv.second.Mark().column + 1, item.name,
                                           kv.second.size(), kMaxConfigListItems));
      }
      for (const auto& v : kv.second) {
        if (!v.IsScalar()) {
          throw CLI::ConfigError(fmt::format("{}:{}: key '{}': wrong type: accepted: a list of values",
                                             v.Mark().line + 1, v.Mark().column + 1, item.name));
        }
        item.inputs.push_back(take(v, item.name));
      }
    } else {
      throw CLI::ConfigError(fmt::format("{}:{}: key '{}': wrong type: accepted: a value or a list of values",
                                         kv.second.Mark().line + 1, kv.second.Mark().column + 1, item.name));
    }
    items.push_back(std::move(item));
  }
  return items;
}

std::vector<Diagnostic> applyConfig(CLI::App& app, std::string_view text, const std::string& file) {
  yaml::FieldReader reader(file, 50);
  for (auto& [item, where, opt] : readItems(app, text, reader)) {
    if (opt->count() > 0) {
      continue;  // the command line said it
    }
    // What CLI11's own config reading does with an item (App::_parse_single_config), so a key
    // means exactly what its option means: flags through the flag's value, then the option's
    // checks, conversion and variable.
    try {
      if (isFlag(*opt)) {
        opt->add_result(opt->get_flag_value(item.name, item.inputs.front()));
      } else {
        opt->add_result(item.inputs);
      }
      opt->run_callback();
    } catch (const CLI::Error& e) {
      opt->clear();
      const std::string value = item.inputs.size() == 1 ? fmt::format("'{}'", item.inputs.front()) : "the list";
      reader.error(where.mark, where.path, fmt::format("{} refused: {}", value, e.what()));
    }
  }
  return reader.takeSorted();
}

}  // namespace faultline::config
