// agent::checkAgentId() (declared in inject_bounds.h), in a file of its own: the controller's
// Hello check links it without the rest of the Inject bounds (scripts/fuzz's submit_run target).
#include <algorithm>
#include <string>

#include <fmt/format.h>

#include "agent/session/inject_bounds.h"

namespace faultline::agent {

std::optional<std::string> checkAgentId(std::string_view id) {
  const auto allowed = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-' || c == ':' || c == '@';
  };
  if (!id.empty() && id.size() <= kMaxAgentIdBytes && std::all_of(id.begin(), id.end(), allowed)) {
    return std::nullopt;
  }
  // The id itself is not echoed: it may hold control characters, or be long.
  const std::string why =
      id.empty() ? std::string("it is empty")
      : id.size() > kMaxAgentIdBytes
          ? fmt::format("{} bytes, more than {}", id.size(), kMaxAgentIdBytes)
          : fmt::format(
                "it has a character other than ASCII letters, digits, '.', '_', '-', ':' or '@' (byte {} is 0x{:02x})",
                static_cast<size_t>(std::find_if_not(id.begin(), id.end(), allowed) - id.begin()) + 1,
                static_cast<unsigned char>(*std::find_if_not(id.begin(), id.end(), allowed)));
  return fmt::format("not an agent id: {}; accepted: 1 to {} ASCII letters, digits, '.', '_', '-', ':' or '@'", why,
                     kMaxAgentIdBytes);
}

}  // namespace faultline::agent
