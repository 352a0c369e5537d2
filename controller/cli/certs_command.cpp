// faultline certs init: a throwaway PKI for trying mTLS (certs.h).
#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>

#include <fmt/format.h>

#include "controller/cli/certs.h"
#include "controller/cli/command.h"

namespace faultline::controller::cli {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;
using Bio = std::unique_ptr<BIO, BioFree>;

// OpenSSL's last error in words, for a failure it reports through its error queue.
std::string sslError(const std::string& what) {
  const unsigned long e = ERR_get_error();
  char text[256] = "unknown error";
  if (e != 0) {
    ERR_error_string_n(e, text, sizeof text);
  }
  ERR_clear_error();
  return fmt::format("{}: {}", what, text);
}

struct Issued {
  Pkey key;
  Cert cert;
};

struct Subject {
  std::string commonName;
  std::string organizationalUnit;            // "" for none
  std::vector<std::string> subjectAltNames;  // "DNS:name", "IP:127.0.0.1"
  bool ca = false;
};

bool addExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (ext == nullptr) {
    return false;
  }
  const bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

// A certificate for subject with a new P-256 key, signed by issuer (itself when issuer is null).
tl::expected<Issued, std::string> issue(const Subject& subject, const Issued* issuer, int days) {
  Issued out;
  out.key.reset(EVP_EC_gen("P-256"));
  if (!out.key) {
    return tl::unexpected(sslError("cannot make an EC P-256 key"));
  }
  out.cert.reset(X509_new());
  X509* x = out.cert.get();
  X509_set_version(x, 2);  // v3
  {
    std::unique_ptr<BIGNUM, decltype(&BN_free)> serial(BN_new(), BN_free);
    if (!serial || BN_rand(serial.get(), 64, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) != 1 ||
        BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(x)) == nullptr) {
      return tl::unexpected(sslError("cannot make a serial number"));
    }
  }
  X509_gmtime_adj(X509_getm_notBefore(x), -300);  // a little clock skew between hosts
  X509_gmtime_adj(X509_getm_notAfter(x), static_cast<long>(days) * 24 * 3600);
  X509_NAME* name = X509_get_subject_name(x);
  const auto add = [&](const char* field, const std::string& value) {
    return X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(value.c_str()),
                                      -1, -1, 0) == 1;
  };
  if (!add("O", "faultline (tryout, not for production)") ||
      (!subject.organizationalUnit.empty() && !add("OU", subject.organizationalUnit)) ||
      !add("CN", subject.commonName)) {
    return tl::unexpected(sslError(fmt::format("cannot name the certificate {}", subject.commonName)));
  }
  X509* issuerCert = issuer != nullptr ? issuer->cert.get() : x;
  X509_set_issuer_name(x, X509_get_subject_name(issuerCert));
  X509_set_pubkey(x, out.key.get());
  std::string altNames;
  for (const auto& n : subject.subjectAltNames) {
    altNames += (altNames.empty() ? "" : ",") + n;
  }
  const bool extensionsOk =
      subject.ca ? addExtension(x, issuerCert, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
                       addExtension(x, issuerCert, NID_key_usage, "critical,keyCertSign,cRLSign") &&
                       addExtension(x, issuerCert, NID_subject_key_identifier, "hash")
                 : addExtension(x, issuerCert, NID_basic_constraints, "critical,CA:FALSE") &&
                       addExtension(x, issuerCert, NID_key_usage, "critical,digitalSignature,keyAgreement") &&
                       addExtension(x, issuerCert, NID_ext_key_usage, "serverAuth,clientAuth") &&
                       addExtension(x, issuerCert, NID_subject_key_identifier, "hash") &&
                       addExtension(x, issuerCert, NID_authority_key_identifier, "keyid:always") &&
                       (altNames.empty() || addExtension(x, issuerCert, NID_subject_alt_name, altNames));
  if (!extensionsOk) {
    return tl::unexpected(sslError(fmt::format("cannot add the extensions of {}", subject.commonName)));
  }
  if (X509_sign(x, issuer != nullptr ? issuer->key.get() : out.key.get(), EVP_sha256()) == 0) {
    return tl::unexpected(sslError(fmt::format("cannot sign the certificate {}", subject.commonName)));
  }
  return out;
}

// Writes text to a new file (never an existing one, never through a symlink) with mode.
std::string writeNew(const std::string& path, const std::string& text, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    return fmt::format("cannot create {}: {}", path, std::strerror(errno));
  }
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      const int e = errno;
      ::close(fd);
      return fmt::format("cannot write {}: {}", path, std::strerror(e));
    }
    done += static_cast<size_t>(n);
  }
  ::fchmod(fd, mode);  // whatever the umask said
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    return fmt::format("cannot write {}: {}", path, std::strerror(errno));
  }
  return "";
}

std::string pemOf(const Issued& issued, bool key) {
  Bio bio(BIO_new(BIO_s_mem()));
  const int ok = key ? PEM_write_bio_PrivateKey(bio.get(), issued.key.get(), nullptr, nullptr, 0, nullptr, nullptr)
                     : PEM_write_bio_X509(bio.get(), issued.cert.get());
  if (ok != 1) {
    return "";
  }
  char* data = nullptr;
  const long size = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(size));
}

bool isIpAddress(const std::string& name) {
  in6_addr a{};
  return inet_pton(AF_INET, name.c_str(), &a) == 1 || inet_pton(AF_INET6, name.c_str(), &a) == 1;
}

}  // namespace

tl::expected<std::vector<std::string>, std::string> initCerts(const CertsOptions& o) {
  if (o.agents < 1 || o.agents > kMaxTryoutAgents) {
    return tl::unexpected(fmt::format("--agents {}: accepted 1..{}", o.agents, kMaxTryoutAgents));
  }
  if (o.days < 1 || o.days > kMaxTryoutDays) {
    return tl::unexpected(fmt::format("--days {}: accepted 1..{}", o.days, kMaxTryoutDays));
  }
  if (o.controllerName.empty() || o.controllerName.size() > 253 ||
      o.controllerName.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:") !=
          std::string::npos) {
    return tl::unexpected(fmt::format(
        "--controller-name '{}': accepted a DNS name (letters, digits, '.', '-') or an IP address, at most 253 "
        "characters",
        o.controllerName));
  }
  std::error_code ec;
  std::filesystem::create_directories(o.dir, ec);
  if (ec) {
    return tl::unexpected(fmt::format("cannot create {}: {}", o.dir, ec.message()));
  }
  std::vector<std::string> names{"ca", "controller"};
  for (int i = 1; i <= o.agents; ++i) {
    names.push_back(fmt::format("agent-{}", i));
  }
  names.push_back("cli-admin");
  for (const auto& n : names) {
    for (const char* ext : {".crt", ".key"}) {
      const auto path = std::filesystem::path(o.dir) / (n + ext);
      if (std::filesystem::symlink_status(path, ec).type() != std::filesystem::file_type::not_found) {
        return tl::unexpected(
            fmt::format("{} exists; certs init never overwrites a file: choose an empty directory", path.string()));
      }
    }
  }
  auto ca = issue({"faultline-tryout-ca", "", {}, true}, nullptr, o.days);
  if (!ca) {
    return tl::unexpected(ca.error());
  }
  std::vector<std::string> written;
  const auto fail = [&](const std::string& why) {
    for (const auto& path : written) {
      std::filesystem::remove(path, ec);
    }
    return tl::unexpected(why);
  };
  const auto save = [&](const std::string& name, const Issued& issued) -> std::string {
    const std::string base = (std::filesystem::path(o.dir) / name).string();
    const std::string cert = pemOf(issued, false);
    const std::string key = pemOf(issued, true);
    if (cert.empty() || key.empty()) {
      return sslError(fmt::format("cannot encode {}", name));
    }
    if (auto bad = writeNew(base + ".key", key, 0600); !bad.empty()) {
      return bad;
    }
    written.push_back(base + ".key");
    if (auto bad = writeNew(base + ".crt", cert, 0644); !bad.empty()) {
      return bad;
    }
    written.push_back(base + ".crt");
    return "";
  };
  if (auto bad = save("ca", *ca); !bad.empty()) {
    return fail(bad);
  }
  std::vector<Subject> subjects;
  const std::string nameSan = (isIpAddress(o.controllerName) ? "IP:" : "DNS:") + o.controllerName;
  std::vector<std::string> controllerSans{nameSan};
  for (const std::string extra : {"DNS:localhost", "IP:127.0.0.1"}) {
    if (extra != nameSan) {
      controllerSans.push_back(extra);
    }
  }
  subjects.push_back({o.controllerName, "", controllerSans, false});
  for (int i = 1; i <= o.agents; ++i) {
    subjects.push_back({fmt::format("agent-{}", i), "", {}, false});
  }
  subjects.push_back({"cli-admin", "admin", {}, false});
  for (size_t i = 0; i < subjects.size(); ++i) {
    auto issued = issue(subjects[i], &*ca, o.days);
    if (!issued) {
      return fail(issued.error());
    }
    if (auto bad = save(names[i + 1], *issued); !bad.empty()) {
      return fail(bad);
    }
  }
  return written;
}

namespace {

class CertsCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    auto* cmd = app.add_subcommand("certs", "certificates for mTLS between agents, controller and CLI");
    cmd->require_subcommand(1);
    init_ = cmd->add_subcommand(
        "init",
        "make a throwaway CA (EC P-256) and certificates to TRY mTLS with: DIR/ca.crt, controller.crt (CN and SAN "
        "the --controller-name, SAN localhost and 127.0.0.1), agent-1..N.crt (CN agent-N: the agent's id), "
        "cli-admin.crt (OU admin), each with its .key (0600); never overwrites a file. Production uses its own PKI");
    init_->add_option("DIR", options_.dir, "directory for the files (created when missing)")->required();
    init_->add_option("--agents", options_.agents, "how many agent certificates")->capture_default_str();
    init_
        ->add_option("--controller-name", options_.controllerName,
                     "the controller's name in its certificate (agents dial it by this name, or say it with "
                     "faultline-agent --controller-name)")
        ->capture_default_str();
    init_->add_option("--days", options_.days, "validity in days")->capture_default_str();
    return cmd;
  }
  int run() override {
    auto written = initCerts(options_);
    if (!written) {
      std::cerr << "faultline certs init: " << written.error() << "\n";
      return kExitUsage;
    }
    for (const auto& path : *written) {
      std::cout << path << "\n";
    }
    std::cerr << "warning: these certificates are for trying faultline out; in production, issue them from your "
                 "own PKI and keep the CA's key off the hosts\n";
    return 0;
  }

 private:
  CLI::App* init_ = nullptr;
  CertsOptions options_;
};

}  // namespace

std::unique_ptr<Command> makeCertsCommand() {
  return std::make_unique<CertsCommand>();
}

}  // namespace faultline::controller::cli
