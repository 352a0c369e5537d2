// TLS on the controller's listen port: the server credentials made from --tls-cert, --tls-key and
// --tls-ca, and who a peer is according to its verified certificate. With TLS, clients'
// certificates are requested and, when presented, verified against the CA
// (GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY); AgentGateway.Connect requires one (gateway.h),
// and an agent's id is its certificate's common name.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <grpcpp/security/auth_context.h>
#include <grpcpp/security/server_credentials.h>
#include <tl/expected.hpp>

#include "agent/session/tls.h"

namespace faultline::controller {

// Reads and checks the controller's three files (agent::loadTlsFiles(): bounded, non-blocking,
// errors name the option and the file) and makes the listen port's credentials.
// errors: the text of the first problem, e.g. "--tls-key /etc/faultline/c.key: cannot be opened:
// Permission denied". Blocks only on reading regular files; thread-safe.
[[nodiscard]] tl::expected<std::shared_ptr<grpc::ServerCredentials>, std::string> serverCredentials(
    const agent::TlsFiles& files);

// Who the peer of a call is by its certificate: the subject's common name and organizational unit
// ("" when none). nullopt when the call carries no verified client certificate (plaintext, or TLS
// without a client certificate). Reads the certificate gRPC verified (x509_pem_cert); thread-safe.
struct PeerIdentity {
  std::string commonName;
  std::string organizationalUnit;
};
[[nodiscard]] std::optional<PeerIdentity> peerIdentity(const grpc::AuthContext& context);

}  // namespace faultline::controller
