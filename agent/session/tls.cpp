#include "agent/session/tls.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fmt/format.h>
#include <grpcpp/security/credentials.h>

#include "agent/kernel/spec_files.h"

namespace faultline::agent {
namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using Bio = std::unique_ptr<BIO, BioFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Bio memoryBio(std::string_view pem) {
  return Bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
}

Cert firstCertificate(std::string_view pem) {
  auto bio = memoryBio(pem);
  return Cert(bio ? PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr) : nullptr);
}

std::string subjectEntry(X509* cert, int nid) {
  X509_NAME* name = X509_get_subject_name(cert);
  const int at = name == nullptr ? -1 : X509_NAME_get_index_by_NID(name, nid, -1);
  if (at < 0) {
    return "";
  }
  const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, at));
  return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(data)),
                     static_cast<size_t>(ASN1_STRING_length(data)));
}

}  // namespace

tl::expected<std::string, std::string> readPemFile(const std::string& flag, const std::string& path) {
  auto text = kernel::readSmallRegularFile(path, kMaxPemBytes);
  if (!text) {  // "cannot be opened: ...", "is a FIFO; accepted: a regular file of at most ... bytes"
    return tl::unexpected(fmt::format("{} {} {}", flag, path, text.error().why));
  }
  return std::move(*text);
}

CertificateIdentity certificateIdentity(std::string_view pem) {
  auto cert = firstCertificate(pem);
  if (!cert) {
    return {};
  }
  return {subjectEntry(cert.get(), NID_commonName), subjectEntry(cert.get(), NID_organizationalUnitName)};
}

tl::expected<TlsPem, std::string> loadTlsFiles(const TlsFiles& files, const TlsFlagNames& flags) {
  const int given = !files.ca.empty() + !files.cert.empty() + !files.key.empty();
  if (given != 3) {
    return tl::unexpected(
        fmt::format("{}, {} and {} go together: give all three (mTLS) or none", flags.ca, flags.cert, flags.key));
  }
  TlsPem out;
  for (auto [flag, path, into] :
       {std::tuple{&flags.ca, &files.ca, &out.ca}, std::tuple{&flags.cert, &files.cert, &out.cert},
        std::tuple{&flags.key, &files.key, &out.key}}) {
    auto text = readPemFile(*flag, *path);
    if (!text) {
      return tl::unexpected(text.error());
    }
    *into = std::move(*text);
  }
  if (!firstCertificate(out.ca)) {
    return tl::unexpected(
        fmt::format("{} {}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)", flags.ca, files.ca));
  }
  auto cert = firstCertificate(out.cert);
  if (!cert) {
    return tl::unexpected(
        fmt::format("{} {}: no PEM certificate in it (-----BEGIN CERTIFICATE-----)", flags.cert, files.cert));
  }
  auto bio = memoryBio(out.key);
  Pkey key(bio ? PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr) : nullptr);
  if (!key) {
    return tl::unexpected(
        fmt::format("{} {}: no unencrypted PEM private key in it (-----BEGIN PRIVATE KEY-----)", flags.key, files.key));
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return tl::unexpected(
        fmt::format("{} {} does not belong to the certificate in {} {}", flags.key, files.key, flags.cert, files.cert));
  }
  out.commonName = subjectEntry(cert.get(), NID_commonName);
  return out;
}

bool isLocalAddress(std::string_view address) {
  if (address.rfind("unix:", 0) == 0) {
    return true;
  }
  const auto colon = address.rfind(':');
  std::string host(address.substr(0, colon == std::string_view::npos ? address.size() : colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost") {
    return true;
  }
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) {
    return (ntohl(v4.s_addr) >> 24) == 127;
  }
  in6_addr v6{};
  return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

std::string plaintextRefusal(std::string_view address, bool tls, bool insecure, std::string_view side) {
  if (tls || insecure || isLocalAddress(address)) {
    return "";
  }
  if (side == "listen") {
    return fmt::format(
        "--listen {} is neither a loopback address nor unix:PATH, and without TLS anyone who reaches it could "
        "register as an agent or command the fleet; give --tls-cert, --tls-key and --tls-ca (`faultline certs "
        "init DIR` makes a set to try), or --insecure to serve plaintext there anyway",
        address);
  }
  return fmt::format(
      "--controller {} is neither a loopback address nor unix:PATH, and without TLS this agent could not tell the "
      "real controller from anyone who takes its address; give --ca, --cert and --key (`faultline certs init DIR` "
      "makes a set to try), or --insecure to dial it in plaintext anyway",
      address);
}

std::shared_ptr<grpc::ChannelCredentials> agentChannelCredentials(const TlsPem& pem) {
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = pem.ca;
  options.pem_private_key = pem.key;
  options.pem_cert_chain = pem.cert;
  return grpc::SslCredentials(options);
}

}  // namespace faultline::agent
