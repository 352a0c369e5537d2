#include "agent/cli/config_file.h"

#include <cerrno>

#include <fmt/format.h>

#include "agent/kernel/spec_files.h"
#include "common/config_file.h"

namespace faultline::agent {

std::vector<std::string> loadConfigFile(CLI::App& app, const std::string& path, bool given) {
  if (path.empty()) {
    return given ? std::vector<std::string>{"--config '': accepted: the path of a YAML file"}
                 : std::vector<std::string>{};
  }
  auto text = kernel::readSmallRegularFile(path, config::kMaxConfigBytes);
  if (!text) {
    if (!given && text.error().code == std::errc::no_such_file_or_directory) {
      return {};
    }
    return {fmt::format("{} {}{}", path, text.error().why,
                        given ? "" : " (the default --config; name another file with --config FILE)")};
  }
  std::vector<std::string> errors;
  for (const auto& d : config::applyConfig(app, *text, path)) {
    errors.push_back(format(d));
  }
  return errors;
}

std::string configOptionHelp(const std::string& defaultPath) {
  return fmt::format(
      "YAML file of this command's options: each key is an option's long name without the dashes (listen: "
      "HOST:PORT), a repeatable option takes a list, a flag true or false; options on the command line override "
      "the file. Default {}, read only when it exists (a --config that does not exist is an error)",
      defaultPath);
}

}  // namespace faultline::agent
