// TLS between agents and the controller, the agent's side and what both sides share: reading the
// PEM files named on the command line (bounded, without blocking, checked before use), telling a
// local address from a remote one, and the agent's channel credentials (mTLS: the agent presents
// its certificate and accepts only a controller whose certificate chains to its CA).
//
// Without TLS, an agent dials and a controller listens in plaintext only on a loopback address
// (127.0.0.0/8, ::1, localhost) or a Unix socket, unless the operator says --insecure.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include <grpcpp/security/credentials.h>
#include <tl/expected.hpp>

namespace faultline::agent {

// The largest PEM file read (a certificate chain or a CA bundle): a certificate is about 1 KiB,
// Debian's whole CA bundle about 200 KiB.
inline constexpr size_t kMaxPemBytes = 1024 * 1024;

// The three files of one side of mTLS. All three or none (empty()).
struct TlsFiles {
  std::string ca;    // PEM: the CA certificates the peer's certificate must chain to
  std::string cert;  // PEM: this side's certificate (its chain, leaf first)
  std::string key;   // PEM: this side's private key (unencrypted)
  [[nodiscard]] bool empty() const { return ca.empty() && cert.empty() && key.empty(); }
};

// Their contents, checked: the certificates parse, the key parses and belongs to the certificate.
struct TlsPem {
  std::string ca;
  std::string cert;
  std::string key;
  std::string commonName;  // of cert's subject ("" when it has none)
};

// The options that name the three files, for error texts, e.g. {"--ca", "--cert", "--key"}.
struct TlsFlagNames {
  std::string ca, cert, key;
};

// Reads and checks files; flags names them in error texts.
// errors: "--cert /etc/x.pem: cannot be opened: No such file or directory", "... is a FIFO, not a
// regular file ...", "--key /k.pem: not a PEM private key", "--key /k.pem does not belong to the
// certificate in --cert /c.pem", or that only some of the three were given. Each file is opened
// without blocking (a FIFO is refused, never waited on) and read to at most kMaxPemBytes.
// Thread-safe.
[[nodiscard]] tl::expected<TlsPem, std::string> loadTlsFiles(const TlsFiles& files, const TlsFlagNames& flags);

// One PEM file's text, opened without blocking (a FIFO or device is refused) and read to at most
// kMaxPemBytes. errors: "FLAG PATH cannot be opened: ...", "FLAG PATH is a FIFO; accepted: ...".
[[nodiscard]] tl::expected<std::string, std::string> readPemFile(const std::string& flag, const std::string& path);

// The common name (CN) and organizational unit (OU, "" when none) of the subject of the first
// certificate in pem; both "" when pem holds no certificate. Thread-safe.
struct CertificateIdentity {
  std::string commonName;
  std::string organizationalUnit;
};
[[nodiscard]] CertificateIdentity certificateIdentity(std::string_view pem);

// True for unix:PATH and for HOST:PORT whose HOST is a loopback address (127.0.0.0/8, [::1]) or
// "localhost". Does not resolve names (never blocks).
[[nodiscard]] bool isLocalAddress(std::string_view address);

// Refusal of a plaintext connection to or from a non-local address: "" when address is local, or
// tls is set, or insecure (then the caller warns); otherwise a text naming what to give instead.
// side: "controller" (the agent's --controller) or "listen" (the controller's --listen).
[[nodiscard]] std::string plaintextRefusal(std::string_view address, bool tls, bool insecure, std::string_view side);

// The agent's channel credentials: its certificate and key, and its CA as the only roots the
// controller's certificate may chain to. Never fails once pem is loaded.
[[nodiscard]] std::shared_ptr<grpc::ChannelCredentials> agentChannelCredentials(const TlsPem& pem);

}  // namespace faultline::agent
