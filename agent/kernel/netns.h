// Finding the network namespaces of this host, for a cleanup that has no record of where faults
// were put (faultline-agent revert-all).
#pragma once

#include <string>
#include <vector>

namespace faultline::kernel {

struct NetnsList {
  // Each namespace once (by device and inode), as a path openQdiscTable() takes: "" for the
  // caller's own, then /run/netns/NAME (also seen as /var/run/netns/NAME), the agent's pins in
  // /run/faultline-agent/netns (and /run/faultline/netns of older versions), then /proc/PID/ns/net
  // of every other process, in pid order.
  std::vector<std::string> paths;
  std::vector<std::string> problems;  // directories that could not be read, in words
};

// Reads /proc/thread-self/ns/net, /run/netns, /var/run/netns, /run/faultline-agent/netns, /run/faultline/netns and
// /proc/*/ns/net. A process that exits meanwhile is skipped. Blocks for one stat() per process; thread-safe. Without
// root, other users' processes are not listed (their ns/net cannot be read).
[[nodiscard]] NetnsList listNetworkNamespaces();

}  // namespace faultline::kernel
