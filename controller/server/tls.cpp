#include "controller/server/tls.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/server_credentials.h>

namespace faultline::controller {

tl::expected<std::shared_ptr<grpc::ServerCredentials>, std::string> serverCredentials(const agent::TlsFiles& files) {
  auto pem = agent::loadTlsFiles(files, {"--tls-ca", "--tls-cert", "--tls-key"});
  if (!pem) {
    return tl::unexpected(pem.error());
  }
  grpc::SslServerCredentialsOptions options(GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY);
  options.pem_root_certs = pem->ca;
  options.pem_key_cert_pairs.push_back({pem->key, pem->cert});
  return grpc::SslServerCredentials(options);
}

std::optional<PeerIdentity> peerIdentity(const grpc::AuthContext& context) {
  if (!context.IsPeerAuthenticated()) {
    return std::nullopt;
  }
  const auto certs = context.FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (certs.empty()) {
    return std::nullopt;
  }
  const auto id = agent::certificateIdentity(std::string_view(certs.front().data(), certs.front().size()));
  if (id.commonName.empty()) {
    return std::nullopt;
  }
  return PeerIdentity{id.commonName, id.organizationalUnit};
}

}  // namespace faultline::controller
