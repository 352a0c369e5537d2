#include "agent/kernel/net_types.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>

#include <fmt/format.h>

namespace faultline {

tl::expected<Cidr, std::string> parseCidr(std::string_view text) {
  const std::string accepted = "an IPv4 or IPv6 address or prefix, e.g. 10.0.0.0/8, 192.0.2.7, 2001:db8::/32";
  const auto slash = text.find('/');
  const std::string address(text.substr(0, slash));
  Cidr out;
  if (inet_pton(AF_INET, address.c_str(), out.address.data()) == 1) {
    out.family = AF_INET;
  } else if (inet_pton(AF_INET6, address.c_str(), out.address.data()) == 1) {
    out.family = AF_INET6;
  } else {
    return tl::unexpected(fmt::format("'{}' is not an address; accepted: {}", text, accepted));
  }
  const int maxLength = out.family == AF_INET ? 32 : 128;
  out.prefixLength = maxLength;
  if (slash != std::string_view::npos) {
    const std::string_view len = text.substr(slash + 1);
    int value = -1;
    auto [end, ec] = std::from_chars(len.data(), len.data() + len.size(), value);
    if (len.empty() || ec != std::errc{} || end != len.data() + len.size() || value < 0 || value > maxLength) {
      return tl::unexpected(fmt::format("'{}' has no valid prefix length; accepted: /0 to /{} for IPv{}", text,
                                        maxLength, out.family == AF_INET ? 4 : 6));
    }
    out.prefixLength = value;
  }
  Cidr network = out;
  for (int bit = out.prefixLength; bit < maxLength; ++bit) {
    network.address[static_cast<size_t>(bit / 8)] &= static_cast<uint8_t>(~(0x80u >> (bit % 8)));
  }
  if (network.address != out.address) {
    char buffer[INET6_ADDRSTRLEN] = {};
    inet_ntop(out.family, network.address.data(), buffer, sizeof(buffer));
    return tl::unexpected(fmt::format("'{}' has bits set after the prefix; accepted: the network address, {}/{}", text,
                                      buffer, out.prefixLength));
  }
  return out;
}

bool isValidInterfaceName(std::string_view name) {
  if (name.empty() || name.size() > 15 || name == "." || name == "..") {
    return false;
  }
  for (char c : name) {
    if (c == '/' || c == ':' || std::isspace(static_cast<unsigned char>(c)) || c == '\0') {
      return false;
    }
  }
  return true;
}

}  // namespace faultline

namespace faultline::agent {

uint8_t protocolNumber(v1::Protocol protocol, int family) {
  switch (protocol) {
    case v1::PROTOCOL_TCP:
      return IPPROTO_TCP;
    case v1::PROTOCOL_UDP:
      return IPPROTO_UDP;
    case v1::PROTOCOL_ICMP:
      return family == AF_INET ? uint8_t{IPPROTO_ICMP} : uint8_t{IPPROTO_ICMPV6};
    default:
      return 0;
  }
}

}  // namespace faultline::agent
