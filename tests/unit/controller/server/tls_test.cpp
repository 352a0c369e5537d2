// mTLS between agents and the controller (controller/server/tls.h, agent/session/tls.h), against a
// real gateway on a real gRPC server on 127.0.0.1, with certificates made by `faultline certs
// init`'s code (controller/cli/certs.h); and the refusal of plaintext on non-local addresses.
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>
#include <string>

#include <doctest/doctest.h>

#include "agent/session/tls.h"
#include "controller/cli/certs.h"
#include "controller/server/controller.h"
#include "controller/server/tls.h"
#include "tests/support/gateway_server.h"

using namespace faultline;
using namespace std::chrono_literals;
using testing::AgentStream;
using testing::eventually;
using testing::GatewayServer;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "faultline-tls-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] std::string file(const std::string& name) const { return path + "/" + name; }
  std::string path;
};

// Two tryout PKIs: ours and a foreign one (another CA, the same names).
struct Pkis {
  Pkis() {
    REQUIRE(controller::cli::initCerts({ours.path, 2, "localhost", 1}));
    REQUIRE(controller::cli::initCerts({foreign.path, 2, "localhost", 1}));
  }
  static agent::TlsFiles files(const TempDir& dir, const std::string& who) {
    return {dir.file("ca.crt"), dir.file(who + ".crt"), dir.file(who + ".key")};
  }
  TempDir ours;
  TempDir foreign;
};

controller::GatewayOptions tlsGateway() {
  controller::GatewayOptions o;
  o.requireClientCertificate = true;
  return o;
}

std::shared_ptr<grpc::ServerCredentials> serverCreds(const agent::TlsFiles& files) {
  auto creds = controller::serverCredentials(files);
  REQUIRE_MESSAGE(creds, (creds ? "" : creds.error()));
  return *creds;
}

// The channel an agent dials with: its files, checked as faultline-agent checks them.
std::shared_ptr<grpc::Channel> agentChannel(const std::string& address, const agent::TlsFiles& files) {
  auto pem = agent::loadTlsFiles(files, {"--ca", "--cert", "--key"});
  REQUIRE_MESSAGE(pem, (pem ? "" : pem.error()));
  return grpc::CreateChannel(address, agent::agentChannelCredentials(*pem));
}

std::string slurp(const std::string& path) {
  std::string out;
  FILE* f = std::fopen(path.c_str(), "rb");
  REQUIRE(f != nullptr);
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) {
    out.append(buf, n);
  }
  std::fclose(f);
  return out;
}

}  // namespace

TEST_CASE("mTLS: an agent with a certificate from the controller's CA registers under its common name") {
  Pkis pki;
  GatewayServer s(tlsGateway(), serverCreds(Pkis::files(pki.ours, "controller")));
  AgentStream agent(agentChannel(s.address, Pkis::files(pki.ours, "agent-1")));
  REQUIRE(agent.hello("agent-1"));
  REQUIRE(agent.welcomed());
  REQUIRE(s.gateway.agents().size() == 1);
  CHECK(s.gateway.agents()[0].agent_id() == "agent-1");
}

TEST_CASE("mTLS: an agent without a certificate is refused with UNAUTHENTICATED") {
  Pkis pki;
  GatewayServer s(tlsGateway(), serverCreds(Pkis::files(pki.ours, "controller")));
  grpc::SslCredentialsOptions onlyRoots;
  onlyRoots.pem_root_certs = slurp(pki.ours.file("ca.crt"));
  AgentStream agent(grpc::CreateChannel(s.address, grpc::SslCredentials(onlyRoots)));
  (void)agent.hello("agent-1");
  const auto status = agent.finish();
  CHECK(status.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK_MESSAGE(status.error_message().find("client certificate from its CA") != std::string::npos,
                status.error_message());
  CHECK(s.gateway.agents().empty());
}

TEST_CASE("mTLS: an agent whose certificate is from another CA is refused in the handshake") {
  Pkis pki;
  GatewayServer s(tlsGateway(), serverCreds(Pkis::files(pki.ours, "controller")));
  // It trusts our controller, but its own certificate is the foreign CA's.
  agent::TlsFiles files{pki.ours.file("ca.crt"), pki.foreign.file("agent-1.crt"), pki.foreign.file("agent-1.key")};
  AgentStream agent(agentChannel(s.address, files));
  (void)agent.hello("agent-1");
  const auto status = agent.finish();
  CHECK(status.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(s.gateway.agents().empty());
}

TEST_CASE("mTLS: a Hello with another agent's id is refused with PERMISSION_DENIED, naming both") {
  Pkis pki;
  GatewayServer s(tlsGateway(), serverCreds(Pkis::files(pki.ours, "controller")));
  AgentStream real(agentChannel(s.address, Pkis::files(pki.ours, "agent-2")));
  REQUIRE(real.hello("agent-2"));
  REQUIRE(real.welcomed());
  AgentStream squatter(agentChannel(s.address, Pkis::files(pki.ours, "agent-1")));
  REQUIRE(squatter.hello("agent-2"));
  const auto status = squatter.finish();
  CHECK(status.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK(status.error_message() ==
        "Hello.agent_id 'agent-2' differs from the common name 'agent-1' of the agent's certificate; an agent's id "
        "is its certificate's common name");
  // The real agent-2 keeps its id, and gets its faults.
  REQUIRE(s.gateway.agents().size() == 1);
  v1::ControllerMessage inject;
  inject.mutable_inject()->set_fault_id("r/1/agent-2");
  REQUIRE(s.gateway.send("agent-2", inject));
  v1::ControllerMessage got;
  REQUIRE(real.next(got));
  CHECK(got.inject().fault_id() == "r/1/agent-2");
}

TEST_CASE("mTLS: an agent refuses a controller whose certificate is not from its CA") {
  Pkis pki;
  // A squatter with a certificate for the right name, from another CA, that would accept anyone.
  controller::GatewayOptions open;
  GatewayServer squatter(open, serverCreds(Pkis::files(pki.foreign, "controller")));
  AgentStream agent(agentChannel(squatter.address, Pkis::files(pki.ours, "agent-1")));
  (void)agent.hello("agent-1");
  const auto status = agent.finish();
  CHECK(status.error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(squatter.gateway.agents().empty());
}

TEST_CASE("mTLS: a plaintext agent cannot speak to a TLS port") {
  Pkis pki;
  GatewayServer s(tlsGateway(), serverCreds(Pkis::files(pki.ours, "controller")));
  AgentStream agent(grpc::CreateChannel(s.address, grpc::InsecureChannelCredentials()));
  (void)agent.hello("agent-1");
  CHECK(agent.finish().error_code() == grpc::StatusCode::UNAVAILABLE);
  CHECK(s.gateway.agents().empty());
}

TEST_CASE("peerIdentity and certificateIdentity: common name and organizational unit") {
  Pkis pki;
  const auto admin = agent::certificateIdentity(slurp(pki.ours.file("cli-admin.crt")));
  CHECK(admin.commonName == "cli-admin");
  CHECK(admin.organizationalUnit == "admin");
  const auto agent2 = agent::certificateIdentity(slurp(pki.ours.file("agent-2.crt")));
  CHECK(agent2.commonName == "agent-2");
  CHECK(agent2.organizationalUnit.empty());
  CHECK(agent::certificateIdentity("not a certificate").commonName.empty());
}

TEST_CASE("the controller refuses a plaintext listen address that is not local, unless --insecure") {
  TempDir dir;
  controller::ControllerOptions o;
  o.listen = "0.0.0.0:0";
  o.dbPath = dir.file("r.db");
  const std::string refusal = controller::listenRefusal(o);
  CHECK(refusal.find("--listen 0.0.0.0:0 is neither a loopback address nor unix:PATH") == 0);
  CHECK(refusal.find("--tls-cert, --tls-key and --tls-ca") != std::string::npos);
  CHECK(refusal.find("--insecure") != std::string::npos);
  {
    controller::Controller c(o);
    CHECK_THROWS_WITH_AS(c.start(), refusal.c_str(), std::runtime_error);
    CHECK_FALSE(std::filesystem::exists(o.dbPath));  // refused before the records are touched
  }
  for (const char* local : {"127.0.0.1:0", "127.1.2.3:7443", "[::1]:7443", "localhost:7443", "unix:/run/f.sock"}) {
    CAPTURE(local);
    o.listen = local;
    CHECK(controller::listenRefusal(o).empty());
  }
  o.listen = "0.0.0.0:0";
  o.insecure = true;
  CHECK(controller::listenRefusal(o).empty());
  {
    controller::Controller c(o);
    CHECK(c.start() > 0);
    c.shutdown();
  }
  Pkis pki;
  o.insecure = false;
  o.tls = Pkis::files(pki.ours, "controller");
  CHECK(controller::listenRefusal(o).empty());
  controller::Controller c(o);
  CHECK(c.start() > 0);
  c.shutdown();
}

TEST_CASE("an agent refuses a plaintext controller that is not local, unless --insecure") {
  const auto refusal = agent::plaintextRefusal("192.0.2.7:7443", false, false, "controller");
  CHECK(refusal.find("--controller 192.0.2.7:7443 is neither a loopback address nor unix:PATH") == 0);
  CHECK(refusal.find("--ca, --cert and --key") != std::string::npos);
  CHECK(refusal.find("--insecure") != std::string::npos);
  CHECK(agent::plaintextRefusal("192.0.2.7:7443", true, false, "controller").empty());
  CHECK(agent::plaintextRefusal("192.0.2.7:7443", false, true, "controller").empty());
  CHECK(agent::plaintextRefusal("controller.example:7443", false, false, "controller") != "");
  CHECK(agent::plaintextRefusal("[::1]:7443", false, false, "controller").empty());
  CHECK(agent::plaintextRefusal("[::ffff:10.0.0.1]:7443", false, false, "controller") != "");
  CHECK(agent::plaintextRefusal("unix:/run/faultline.sock", false, false, "controller").empty());
}

TEST_CASE("TLS files: all three or none, read without blocking, each problem names the option and the file") {
  Pkis pki;
  const agent::TlsFlagNames flags{"--ca", "--cert", "--key"};
  auto files = Pkis::files(pki.ours, "agent-1");
  REQUIRE(agent::loadTlsFiles(files, flags));
  CHECK(agent::loadTlsFiles(files, flags)->commonName == "agent-1");

  auto partial = files;
  partial.key.clear();
  CHECK(agent::loadTlsFiles(partial, flags).error() ==
        "--ca, --cert and --key go together: give all three (mTLS) or none");

  auto missing = files;
  missing.cert = pki.ours.file("nope.crt");
  CHECK(agent::loadTlsFiles(missing, flags).error() ==
        "--cert " + missing.cert + " cannot be opened: No such file or directory");

  // A FIFO is refused at once (nobody writes to it: a blocking open would never return).
  auto fifo = files;
  fifo.key = pki.ours.file("key.fifo");
  REQUIRE(::mkfifo(fifo.key.c_str(), 0600) == 0);
  const auto fifoError = agent::loadTlsFiles(fifo, flags).error();
  CHECK_MESSAGE(fifoError.find("--key " + fifo.key + " is a FIFO") == 0, fifoError);

  auto wrongKey = files;
  wrongKey.key = pki.ours.file("agent-2.key");
  CHECK(agent::loadTlsFiles(wrongKey, flags).error() ==
        "--key " + wrongKey.key + " does not belong to the certificate in --cert " + files.cert);

  auto notPem = files;
  notPem.ca = pki.ours.file("agent-1.key");
  CHECK(agent::loadTlsFiles(notPem, flags).error() ==
        "--ca " + notPem.ca + ": no PEM certificate in it (-----BEGIN CERTIFICATE-----)");

  // The controller's flags in its errors.
  auto server = controller::serverCredentials(missing);
  CHECK(server.error() == "--tls-cert " + missing.cert + " cannot be opened: No such file or directory");
}

TEST_CASE("certs init: a CA, the controller, N agents and an admin CLI; keys 0600; never overwrites") {
  TempDir dir;
  const std::string sub = dir.file("pki");
  auto written = controller::cli::initCerts({sub, 2, "ctl.example", 7});
  REQUIRE_MESSAGE(written, (written ? "" : written.error()));
  const std::vector<std::string> names{"ca.key",        "ca.crt",       "controller.key", "controller.crt",
                                       "agent-1.key",   "agent-1.crt",  "agent-2.key",    "agent-2.crt",
                                       "cli-admin.key", "cli-admin.crt"};
  REQUIRE(written->size() == names.size());
  for (size_t i = 0; i < names.size(); ++i) {
    CAPTURE(names[i]);
    CHECK((*written)[i] == sub + "/" + names[i]);
    struct stat st {};
    REQUIRE(::stat((*written)[i].c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == (names[i].ends_with(".key") ? 0600u : 0644u));
  }
  CHECK(agent::certificateIdentity(slurp(sub + "/controller.crt")).commonName == "ctl.example");
  // Every certificate loads with its key, as the agent and the controller load them.
  for (const char* who : {"controller", "agent-1", "agent-2", "cli-admin"}) {
    CAPTURE(who);
    CHECK(agent::loadTlsFiles({sub + "/ca.crt", sub + "/" + who + ".crt", sub + "/" + who + ".key"},
                              {"--ca", "--cert", "--key"}));
  }
  const std::string before = slurp(sub + "/ca.key");
  auto again = controller::cli::initCerts({sub, 1, "localhost", 7});
  REQUIRE_FALSE(again);
  CHECK(again.error() == sub + "/ca.crt exists; certs init never overwrites a file: choose an empty directory");
  CHECK(slurp(sub + "/ca.key") == before);

  CHECK(controller::cli::initCerts({dir.file("x"), 0, "localhost", 7}).error() == "--agents 0: accepted 1..1000");
  CHECK(controller::cli::initCerts({dir.file("x"), 1, "localhost", 0}).error() == "--days 0: accepted 1..3650");
  CHECK(controller::cli::initCerts({dir.file("x"), 1, "a b", 7}).error().find("--controller-name 'a b'") == 0);
}
