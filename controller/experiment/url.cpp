#include "controller/experiment/url.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <optional>

#include <boost/asio/ip/address.hpp>

namespace faultline::controller {
namespace {

namespace asio = boost::asio;

constexpr std::string_view kUrlAccepted =
    "http://HOST[:PORT][/PATH] with HOST a name, an IPv4 address or an IPv6 address in brackets and PORT 1-65535, "
    "e.g. http://10.77.0.1:8080/";

bool startsWithNoCase(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) {
    return false;
  }
  for (size_t i = 0; i < prefix.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (std::tolower(c) != prefix[i]) {
      return false;
    }
  }
  return true;
}

// What is wrong with a host that is not in brackets; "" when it is a valid name or IPv4 address.
std::string hostProblem(std::string_view host) {
  const bool numeric = std::all_of(host.begin(), host.end(), [](char c) { return (c >= '0' && c <= '9') || c == '.'; });
  if (numeric) {
    boost::system::error_code notV4;
    asio::ip::make_address_v4(std::string(host), notV4);
    return notV4 ? "host '" + std::string(host) + "' is not an IPv4 address (four numbers 0-255 joined by '.')" : "";
  }
  for (const char c : host) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.';
    if (!ok) {
      return "host '" + std::string(host) + "' has the character '" + std::string(1, c) +
             "' (a host name has letters, digits, '-', '_' and '.'; an IPv6 address goes in brackets)";
    }
  }
  std::string_view name = host;
  if (name.back() == '.') {
    name.remove_suffix(1);  // the root label: "example.com." is fully qualified
  }
  if (name.size() > 253) {
    return "host name is longer than 253 characters";
  }
  size_t start = 0;
  for (;;) {
    const size_t dot = std::min(name.find('.', start), name.size());
    const size_t length = dot - start;
    if (length == 0) {
      return "host '" + std::string(host) + "' has an empty label (a leading dot or two dots in a row)";
    }
    if (length > 63) {
      return "host '" + std::string(host) + "' has a label of " + std::to_string(length) +
             " characters; labels between dots have at most 63";
    }
    if (dot == name.size()) {
      return "";
    }
    start = dot + 1;
  }
}

}  // namespace

tl::expected<HttpUrl, std::string> parseHttpUrl(std::string_view text) {
  const auto invalid = [&](std::string_view why) {
    return tl::unexpected("invalid URL '" + std::string(text) + "': " + std::string(why) +
                          "; accepted: " + std::string(kUrlAccepted));
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c <= 0x20 || c >= 0x7f) {
      return invalid(c == ' ' ? "it contains a space (percent-encode it as %20)"
                              : "it contains a control character or a non-ASCII byte (percent-encode it)");
    }
  }
  if (startsWithNoCase(text, "https://")) {
    return invalid("https is not supported (no TLS in v1 probes)");
  }
  constexpr std::string_view kScheme = "http://";
  if (!startsWithNoCase(text, kScheme)) {
    return invalid("it does not start with http://");
  }
  const std::string_view rest = text.substr(kScheme.size());
  const size_t authorityEnd = rest.find_first_of("/?#");
  const std::string_view authority = rest.substr(0, authorityEnd);
  if (authority.find('@') != std::string_view::npos) {
    return invalid("user information (user@host) is not supported");
  }
  std::string_view host;
  std::optional<std::string_view> port;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return invalid("the '[' before the IPv6 address is not closed");
    }
    host = authority.substr(1, close - 1);
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') {
        return invalid("there is text after the IPv6 address in brackets");
      }
      port = after.substr(1);
    }
    if (host.find('%') != std::string_view::npos) {
      return invalid("IPv6 zone ids ('%') are not supported");
    }
    boost::system::error_code notV6;
    asio::ip::make_address_v6(std::string(host), notV6);
    if (notV6) {
      return invalid("'" + std::string(host) + "' in brackets is not an IPv6 address");
    }
  } else {
    const size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
    }
    if (host.find_first_of("[]") != std::string_view::npos) {
      return invalid("a '[' or ']' outside an IPv6 address in brackets");
    }
    if (!host.empty()) {
      if (const std::string problem = hostProblem(host); !problem.empty()) {
        return invalid(problem);
      }
    }
  }
  if (host.empty()) {
    return invalid("there is no host");
  }
  HttpUrl url;
  url.host = std::string(host);
  if (port) {
    if (port->find(':') != std::string_view::npos) {
      return invalid("there is more than one ':PORT' (an IPv6 address goes in brackets)");
    }
    const bool digits =
        !port->empty() && std::all_of(port->begin(), port->end(), [](char c) { return c >= '0' && c <= '9'; });
    unsigned value = 0;
    const auto [end, ec] = std::from_chars(port->data(), port->data() + port->size(), value);
    if (!digits || ec != std::errc{} || end != port->data() + port->size() || value == 0 || value > 65535) {
      return invalid(port->empty() ? std::string("the port after ':' is empty")
                                   : "port '" + std::string(*port) + "' is not a number from 1 to 65535");
    }
    url.port = static_cast<uint16_t>(value);
  }
  std::string_view target = authorityEnd == std::string_view::npos ? std::string_view{} : rest.substr(authorityEnd);
  target = target.substr(0, target.find('#'));
  url.target = target.empty() || target.front() != '/' ? "/" + std::string(target) : std::string(target);
  return url;
}

}  // namespace faultline::controller
