// What several faultline commands share (command.h).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <grpc/support/log.h>
#include <spdlog/spdlog.h>

#include "agent/faults/spec.h"
#include "agent/kernel/spec_files.h"
#include "controller/cli/command.h"

namespace faultline::controller::cli {

std::string readFile(const std::string& path, std::string& error) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    error = fmt::format("{} is a directory; give an experiment file (YAML)", path);
    return "";
  }
  // Opened without blocking and checked by type first: a FIFO held `validate` and `apply` until
  // something wrote to it (attacker trial, issue 16).
  auto small = kernel::readSmallRegularFile(path, kMaxExperimentBytes);
  if (small) {
    return std::move(*small);
  }
  if (small.error().code != std::errc::file_too_large) {
    error = fmt::format("{} {}", path, small.error().why);
    return "";
  }
  // A regular file over the limit: its first kMaxExperimentBytes + 1 bytes, which the parser
  // refuses saying its size.
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    error = fmt::format("cannot read {}: {}", path, std::strerror(errno));
    return "";
  }
  std::string text(kMaxExperimentBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  return text;
}

std::string parseVariables(const std::vector<std::string>& given, Variables& out) {
  for (const auto& item : given) {
    const size_t eq = item.find('=');
    if (eq == std::string::npos) {
      return fmt::format("'{}' has no '='; accepted: NAME=VALUE, e.g. --var HOST=10.0.0.5", item);
    }
    const std::string name = item.substr(0, eq);
    if (!isVariableName(name)) {
      return fmt::format(
          "'{}' is not a variable name; accepted: a letter or '_' then letters, digits and '_' (at "
          "most 64), e.g. --var TARGET_IF=eth0",
          name);
    }
    if (!out.emplace(name, item.substr(eq + 1)).second) {
      return fmt::format("{} is given twice; accepted: each name once", name);
    }
  }
  return "";
}

std::string parseVariableOptions(const std::vector<std::string>& varOptions,
                                 const std::vector<std::string>& secretOptions, Variables& vars,
                                 std::set<std::string>& secretNames) {
  if (auto bad = parseVariables(varOptions, vars); !bad.empty()) {
    return "--var: " + bad;
  }
  Variables secretVars;
  if (auto bad = parseVariables(secretOptions, secretVars); !bad.empty()) {
    return "--secret-var: " + bad;
  }
  for (auto& [name, value] : secretVars) {
    if (!vars.emplace(name, value).second) {
      return "--secret-var: " + name +
             " is also given with --var; accepted: each name once, with --var or --secret-var";
    }
    secretNames.insert(name);
  }
  return "";
}

void routeGrpcLogs() {
  gpr_set_log_function([](gpr_log_func_args* args) {
    if (args->severity == GPR_LOG_SEVERITY_ERROR) {
      spdlog::debug("grpc: {}", args->message);
    } else {
      spdlog::trace("grpc: {}", args->message);
    }
  });
}

std::string clock(const google::protobuf::Timestamp& t) {
  const std::time_t secs = t.seconds();
  std::tm tm{};
  localtime_r(&secs, &tm);
  return fmt::format("{:02}:{:02}:{:02}.{:03}", tm.tm_hour, tm.tm_min, tm.tm_sec, t.nanos() / 1'000'000);
}

namespace {
std::shared_ptr<grpc::ChannelCredentials> gCredentials;  // set once by cliMain, before any command runs
}  // namespace

std::unique_ptr<v1::Control::Stub> controlStub(const std::string& address) {
  return v1::Control::NewStub(
      grpc::CreateChannel(address, gCredentials ? gCredentials : grpc::InsecureChannelCredentials()));
}

void addClientTlsOptions(CLI::App& app, agent::TlsFiles& files) {
  app.add_option("--ca", files.ca,
                 "PEM file of the CA the controller's certificate must chain to: talk TLS to a controller started "
                 "with --tls-*");
  app.add_option("--cert", files.cert, "PEM file of this client's certificate (with --key and --ca)");
  app.add_option("--key", files.key, "PEM file of this client's private key (with --cert and --ca)");
}

tl::expected<std::shared_ptr<grpc::ChannelCredentials>, std::string> clientChannelCredentials(
    const agent::TlsFiles& files) {
  if (files.empty()) {
    return nullptr;
  }
  if (files.ca.empty() || files.cert.empty() != files.key.empty()) {
    return tl::unexpected(std::string("--ca is needed for TLS, and --cert and --key go together"));
  }
  grpc::SslCredentialsOptions options;
  if (files.cert.empty()) {
    auto ca = agent::readPemFile("--ca", files.ca);
    if (!ca) {
      return tl::unexpected(ca.error());
    }
    options.pem_root_certs = std::move(*ca);
  } else {
    auto pem = agent::loadTlsFiles(files, {"--ca", "--cert", "--key"});
    if (!pem) {
      return tl::unexpected(pem.error());
    }
    options.pem_root_certs = pem->ca;
    options.pem_cert_chain = pem->cert;
    options.pem_private_key = pem->key;
  }
  return grpc::SslCredentials(options);
}

void useClientCredentials(std::shared_ptr<grpc::ChannelCredentials> credentials) {
  gCredentials = std::move(credentials);
}

int rpcError(const std::string& what, const std::string& address, const grpc::Status& s) {
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE || s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
    std::cerr << fmt::format(
        "faultline: {}: cannot reach the controller at {} ({}); is `faultline controller` "
        "running there? (--controller ADDR)\n",
        what, address, s.error_message());
  } else {
    std::cerr << fmt::format("faultline: {}: {}\n", what, s.error_message());
  }
  return s.error_code() == grpc::StatusCode::INVALID_ARGUMENT || s.error_code() == grpc::StatusCode::NOT_FOUND
             ? kExitUsage
             : kExitError;
}

namespace {
std::string& processToken() {
  static std::string token;
  return token;
}
}  // namespace

std::unique_ptr<grpc::ClientContext> contextWithDeadline(std::chrono::seconds d) {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() + d);
  addCredentials(*ctx);
  return ctx;
}

void addCredentials(grpc::ClientContext& ctx) {
  if (!processToken().empty()) {
    ctx.AddMetadata("authorization", "Bearer " + processToken());
  }
}

void addTokenOption(CLI::App* cmd, std::string& tokenFile) {
  cmd->add_option("--token-file", tokenFile,
                  "file holding a bearer token (faultline token create) for a controller over TCP; default: the "
                  "FAULTLINE_TOKEN environment variable");
}

bool loadToken(const std::string& tokenFile) {
  constexpr size_t kMaxTokenFileBytes = 4096;
  std::string text;
  if (tokenFile.empty()) {
    const char* env = std::getenv("FAULTLINE_TOKEN");
    text = env ? env : "";
    if (text.size() > kMaxTokenFileBytes) {
      std::cerr << fmt::format("faultline: FAULTLINE_TOKEN: {} bytes, more than the {} accepted\n", text.size(),
                               kMaxTokenFileBytes);
      return false;
    }
  } else {
    // Typed and bounded like a spec's files: a FIFO or device is refused, never waited on.
    auto read = kernel::readSmallRegularFile(tokenFile, kMaxTokenFileBytes);
    if (!read) {
      std::cerr << fmt::format("faultline: --token-file {} {}\n", tokenFile, read.error().why);
      return false;
    }
    text = std::move(*read);
  }
  const auto first = text.find_first_not_of(" \t\r\n");
  const auto last = text.find_last_not_of(" \t\r\n");
  text = first == std::string::npos ? "" : text.substr(first, last - first + 1);
  if (!tokenFile.empty() && text.empty()) {
    std::cerr << fmt::format("faultline: --token-file {}: holds no token\n", tokenFile);
    return false;
  }
  if (text.find_first_of(" \t\r\n") != std::string::npos) {
    std::cerr << "faultline: the token holds whitespace; accepted: one token as `faultline token create` prints it\n";
    return false;
  }
  processToken() = text;
  return true;
}

bool checkControllerAddress(const std::string& address) {
  if (auto bad = checkAddress(address, false); !bad.empty()) {
    std::cerr << "faultline: --controller: " << bad << "\n";
    return false;
  }
  return true;
}

// Writes text to path through a temporary file in the same directory and a rename, so a reader
// never sees half a report. The file is 0600 whatever the umask: a report may hold what a run's
// probes saw. Returns "" or what went wrong.
std::string writeReport(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
      return fmt::format("cannot write {}: {}", tmp, std::strerror(errno));
    }
    std::string error;
    if (::fchmod(fd, 0600) != 0) {
      error = fmt::format("cannot make {} mode 0600: {}", tmp, std::strerror(errno));
    }
    for (size_t done = 0; error.empty() && done < text.size();) {
      const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n <= 0) {
        error = fmt::format("cannot write {}: {}", tmp, std::strerror(n < 0 ? errno : EIO));
        break;
      }
      done += static_cast<size_t>(n);
    }
    if (::close(fd) != 0 && error.empty()) {
      error = fmt::format("cannot write {}: {}", tmp, std::strerror(errno));
    }
    if (!error.empty()) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      return error;
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return fmt::format("cannot write {}: {}", path, ec.message());
  }
  return "";
}

}  // namespace faultline::controller::cli
