// What the protocol probes (redis, postgres, grpc, dns) share: name resolution with a deadline
// (c-ares), a stream connection with a deadline, and the check of one value. Internal to
// controller/probes/.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <tl/expected.hpp>

#include "common/unique_fd.h"
#include "controller/probes/probe.h"

namespace faultline::controller {

using ProbeClock = std::chrono::steady_clock;

// The addresses of name (canonical text, in the resolver's order), from /etc/hosts and the
// system's resolvers, or from server:port alone when server is set. family: AF_UNSPEC, AF_INET or
// AF_INET6. An IP literal is returned as is. Never blocks past deadline (c-ares: its own
// non-blocking sockets); the error is a sample's detail: "cannot resolve NAME: ...", "timeout".
// Thread-safe (a c-ares channel per call).
[[nodiscard]] tl::expected<std::vector<std::string>, std::string> resolveName(const std::string& name, int family,
                                                                              const std::string& server,
                                                                              uint16_t serverPort,
                                                                              ProbeClock::time_point deadline);

// A connected, non-blocking stream socket (close-on-exec) to address: a Unix socket, or the first
// of the host's addresses that accepts by deadline. The error is a sample's detail.
[[nodiscard]] tl::expected<UniqueFd, std::string> connectByDeadline(const ProbeAddress& address,
                                                                    ProbeClock::time_point deadline);

// Sends all of data on a non-blocking socket by deadline; the error is a sample's detail.
[[nodiscard]] tl::expected<void, std::string> sendAll(int fd, std::string_view data, ProbeClock::time_point deadline);

// Waits until fd is readable by deadline, then reads at most max bytes (0 bytes: the peer closed).
[[nodiscard]] tl::expected<std::string, std::string> receiveSome(int fd, size_t max, ProbeClock::time_point deadline);

// Judges one value read by a probe; value is set to the number when check is a number check and
// the text is one. Returns "" when the value passes, else why not ("'PONG2', expected 'PONG'").
[[nodiscard]] std::string checkValue(const ValueCheck& check, const std::string& text, std::optional<double>& value);

// The value as text for a detail: at most 80 bytes, control characters escaped.
[[nodiscard]] std::string shownValue(std::string_view text);

// "1.5", "100", "1e+09"
[[nodiscard]] std::string formatNumber(double v);

// text as a whole number or decimal (surrounding blanks ignored); nullopt when it is not one.
[[nodiscard]] std::optional<double> readNumber(std::string_view text);

inline std::chrono::microseconds since(ProbeClock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(ProbeClock::now() - start);
}

}  // namespace faultline::controller
