#include "agent/kernel/netns.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <optional>
#include <set>
#include <utility>

#include <fmt/format.h>

namespace faultline::kernel {
namespace {

using Identity = std::pair<dev_t, ino_t>;

std::optional<Identity> identity(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return std::nullopt;
  }
  return Identity{st.st_dev, st.st_ino};
}

bool allDigits(const std::string& name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](unsigned char c) { return std::isdigit(c); });
}

}  // namespace

NetnsList listNetworkNamespaces() {
  NetnsList list;
  std::set<Identity> seen;
  const auto add = [&](const std::string& path, const std::string& statPath) {
    auto id = identity(statPath);
    if (id && seen.insert(*id).second) {
      list.paths.push_back(path);
    }
  };
  add("", "/proc/thread-self/ns/net");

  // /run/faultline-agent/netns: the agent's pins (agent/faults/network/net_target.h) of namespaces chosen by
  // process; /run/faultline/netns: where earlier builds kept them (now the controller's directory).
  for (const char* dir : {"/run/netns", "/var/run/netns", "/run/faultline-agent/netns", "/run/faultline/netns"}) {
    std::error_code ec;
    std::filesystem::directory_iterator it(dir, ec);
    if (ec) {
      if (ec != std::errc::no_such_file_or_directory) {
        list.problems.push_back(fmt::format("cannot read {}: {}", dir, ec.message()));
      }
      continue;
    }
    std::vector<std::string> names;
    for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
      names.push_back(it->path().string());
    }
    std::sort(names.begin(), names.end());
    for (const auto& path : names) {
      add(path, path);
    }
  }

  std::error_code ec;
  std::filesystem::directory_iterator it("/proc", ec);
  if (ec) {
    list.problems.push_back(fmt::format("cannot read /proc: {}", ec.message()));
    return list;
  }
  std::vector<long> pids;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (allDigits(name)) {
      pids.push_back(std::stol(name));
    }
  }
  std::sort(pids.begin(), pids.end());
  for (long pid : pids) {
    const std::string path = fmt::format("/proc/{}/ns/net", pid);
    add(path, path);
  }
  return list;
}

}  // namespace faultline::kernel
