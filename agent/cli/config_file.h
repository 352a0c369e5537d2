// --config FILE of faultline-agent and `faultline controller`: the file read bounded and without
// blocking (kernel::readSmallRegularFile: a FIFO, device or directory is refused at once), then
// applied to the command's options (common/config_file.h: keys are the long option names without
// dashes; options given on the command line win).
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

namespace faultline::agent {

// The config file of app. given: the path came from --config on the command line (a missing file
// is then an error); otherwise it is the default path, read only when something is there.
// Returns the error lines, each "FILE[:LINE:COLUMN]: ..."; empty when the file was applied or the
// default file is absent. Blocks only on reading a regular file.
[[nodiscard]] std::vector<std::string> loadConfigFile(CLI::App& app, const std::string& path, bool given);

// The --config option's help: the default path and the precedence, in the same words for both commands.
[[nodiscard]] std::string configOptionHelp(const std::string& defaultPath);

}  // namespace faultline::agent
