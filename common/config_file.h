// A YAML config file of a command's options (`faultline controller --config`, `faultline-agent
// --config`): its keys are the command's long option names without the dashes (`listen`,
// `tls-cert`, `state-dir`), its values what the option takes on the command line: a scalar, a
// sequence for a repeatable option (`label: [role=web, zone=a]`), true/false for a flag. Every
// option of the CLI11 app is a key, with nothing to keep in step by hand; options the command line
// gave win over the file. No project includes (common/ is the lowest folder): the caller reads the
// file, bounded and without blocking, and passes its text.
#pragma once

#include <iosfwd>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/diagnostic.h"

namespace faultline::config {

// The largest config file read, in bytes.
inline constexpr size_t kMaxConfigBytes = 256 * 1024;

// CLI11's config formatter for YAML files (app.config_formatter()): from_config() turns a YAML
// map into CLI::ConfigItems (throws CLI::ConfigError with "LINE:COLUMN: ..." on the first problem);
// to_config() writes an app's options as such a file. applyConfig() below is what the commands
// use: it keeps each key's place in the file for its errors.
class YamlConfig : public CLI::Config {
 public:
  std::string to_config(const CLI::App* app, bool defaultAlso, bool writeDescription,
                        std::string prefix) const override;
  std::vector<CLI::ConfigItem> from_config(std::istream& input) const override;
};

// The keys app accepts in a config file: the long names (without dashes) of its configurable
// options, sorted; never help, version or the config option itself (mark that one
// ->configurable(false)).
[[nodiscard]] std::vector<std::string> configKeys(const CLI::App& app);

// Applies the YAML text (of file, the name diagnostics carry) to the options of app that the
// command line did not set (count() == 0), as if each key had been given as its option: CLI11
// checks and converts the value and stores it in the option's variable. Run after app.parse().
// Returns one diagnostic per problem ("FILE:LINE:COLUMN: key 'K': what is wrong; accepted: ..."):
// YAML that does not parse, a root that is not a map, an unknown key (with the list of keys),
// a map value, a list for an option that takes one value, a flag that is not true/false, a value
// the option's own check refuses. Options of keys without problems are set even when others have
// problems. An empty file or a file of comments sets nothing.
[[nodiscard]] std::vector<Diagnostic> applyConfig(CLI::App& app, std::string_view text, const std::string& file);

}  // namespace faultline::config
