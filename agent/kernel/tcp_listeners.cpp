#include "agent/kernel/tcp_listeners.h"

#include <charconv>
#include <sstream>

#include "agent/kernel/whole_file.h"

namespace faultline::kernel {

std::vector<uid_t> tcpListenerOwners(uint16_t port) {
  constexpr size_t kMaxTableBytes = 4 * 1024 * 1024;
  std::vector<uid_t> owners;
  for (const char* table : {"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"}) {
    auto text = readWholeFile(table, kMaxTableBytes);
    if (!text) {
      continue;
    }
    std::istringstream lines(*text);
    std::string line;
    std::getline(lines, line);  // the header
    while (std::getline(lines, line)) {
      std::istringstream fields(line);
      std::string slot, local, remote, state, queues, timer, retransmits, uid;
      if (!(fields >> slot >> local >> remote >> state >> queues >> timer >> retransmits >> uid) || state != "0A") {
        continue;
      }
      const auto colon = local.rfind(':');
      unsigned localPort = 0;
      unsigned long owner = 0;
      if (colon == std::string::npos ||
          std::from_chars(local.data() + colon + 1, local.data() + local.size(), localPort, 16).ec != std::errc{} ||
          localPort != port || std::from_chars(uid.data(), uid.data() + uid.size(), owner).ec != std::errc{}) {
        continue;
      }
      owners.push_back(static_cast<uid_t>(owner));
    }
  }
  return owners;
}

}  // namespace faultline::kernel
