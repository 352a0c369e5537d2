// Probe URLs: the one parser the experiment validator and the prober both call.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <tl/expected.hpp>

namespace faultline::controller {

// A probe URL, as the prober uses it.
struct HttpUrl {
  std::string host;  // a host name, an IPv4 address, or an IPv6 address without its brackets
  uint16_t port = 80;
  std::string target;  // path and query as sent in the request line, at least "/"; no fragment
};

// The one parser of probe URLs: the experiment validator and the prober both call it, so a URL
// that validates is one the prober can use. Accepted: http://HOST[:PORT][/PATH][?QUERY][#FRAGMENT]
// - the scheme in any letter case (HTTP:// too, RFC 3986); https:// is refused (no TLS in v1);
// - HOST a name of letters, digits, '-', '_' and '.' (labels of 1-63 characters, 253 in all),
//   a dotted-quad IPv4 address, or an IPv6 address in brackets (no zone id);
// - at most one PORT, from 1 to 65535 (default 80); no user information (user@host);
// - only printable ASCII: no whitespace, control characters or raw non-ASCII bytes;
// - the fragment is dropped; an empty path is "/".
// The error names the URL, what is wrong and the accepted form: "invalid URL 'X': WHY; accepted: ...".
// Pure function: no name resolution, no I/O; thread-safe.
[[nodiscard]] tl::expected<HttpUrl, std::string> parseHttpUrl(std::string_view text);

}  // namespace faultline::controller
