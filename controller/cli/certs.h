// `faultline certs init DIR`: a throwaway PKI to try mTLS with (OpenSSL's libcrypto). Production
// uses its own PKI; this makes one CA and the certificates a small fleet needs:
//   ca.crt, ca.key                   EC P-256 CA (CN faultline-tryout-ca)
//   controller.crt, controller.key   CN and SAN DNS the controller's name, SAN DNS localhost, IP 127.0.0.1
//   agent-N.crt, agent-N.key         CN agent-N (an agent's id), N = 1..agents
//   cli-admin.crt, cli-admin.key     CN cli-admin, OU admin (a CLI client's role)
// Certificates are 0644, keys 0600; DIR is created (0755) when missing.
#pragma once

#include <string>
#include <vector>

#include <tl/expected.hpp>

namespace faultline::controller::cli {

inline constexpr int kMaxTryoutAgents = 1000;
inline constexpr int kMaxTryoutDays = 3650;

struct CertsOptions {
  std::string dir;
  int agents = 3;                            // 1..kMaxTryoutAgents
  std::string controllerName = "localhost";  // a DNS name or an IP address
  int days = 30;                             // validity, 1..kMaxTryoutDays
};

// Writes the files above and returns their paths in the order written. Refuses (before writing
// anything) when one of them exists, when an option is out of range, or when DIR cannot be made;
// a failure half-way removes what it wrote. errors: the problem in words, naming the file.
[[nodiscard]] tl::expected<std::vector<std::string>, std::string> initCerts(const CertsOptions& options);

}  // namespace faultline::controller::cli
