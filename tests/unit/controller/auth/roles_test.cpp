// The role table and the token store: what each role may call, tokens kept as hashes only.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <doctest/doctest.h>
#include <google/protobuf/descriptor.h>

#include "controller/auth/roles.h"
#include "controller/auth/tokens.h"
#include "faultline/v1/control.grpc.pb.h"

using namespace faultline::controller::auth;

namespace {

struct TempDb {
  TempDb() {
    char tmpl[] = "/tmp/faultline-tokens-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir = tmpl;
    path = dir + "/c.db";
  }
  ~TempDb() { std::filesystem::remove_all(dir); }
  std::string dir;
  std::string path;
};

std::string fileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

TEST_CASE("every Control RPC of control.proto has a role in kRpcRoles, and no other name does") {
  const auto* service = google::protobuf::DescriptorPool::generated_pool()->FindServiceByName(
      faultline::v1::Control::service_full_name());
  REQUIRE(service != nullptr);
  std::set<std::string> methods;
  for (int i = 0; i < service->method_count(); ++i) {
    methods.insert(service->method(i)->name());
    CHECK_MESSAGE(requiredRole(service->method(i)->name()).has_value(), service->method(i)->name());
  }
  for (const auto& entry : kRpcRoles) {
    CHECK_MESSAGE(methods.count(std::string(entry.rpc)) == 1, entry.rpc);
  }
  CHECK(!requiredRole("Shutdown").has_value());
}

TEST_CASE("the roles of the issue: viewer reads, operator runs, admin manages tokens and command probes") {
  CHECK(*requiredRole("ListAgents") == Role::kViewer);
  CHECK(*requiredRole("ListRuns") == Role::kViewer);
  CHECK(*requiredRole("GetRun") == Role::kViewer);
  CHECK(*requiredRole("WatchRun") == Role::kViewer);
  CHECK(*requiredRole("PlanRun") == Role::kViewer);
  CHECK(*requiredRole("SubmitRun") == Role::kOperator);
  CHECK(*requiredRole("AbortRun") == Role::kOperator);
  CHECK(*requiredRole("Halt") == Role::kOperator);
  CHECK(*requiredRole("CreateToken") == Role::kAdmin);
  CHECK(*requiredRole("ListTokens") == Role::kAdmin);
  CHECK(*requiredRole("RevokeToken") == Role::kAdmin);
  CHECK(*requiredRole("ListSchedules") == Role::kViewer);
  CHECK(*requiredRole("GetSchedule") == Role::kViewer);
  CHECK(*requiredRole("ApplySchedule") == Role::kOperator);
  CHECK(*requiredRole("PauseSchedule") == Role::kOperator);
  CHECK(*requiredRole("ResumeSchedule") == Role::kOperator);
  CHECK(*requiredRole("DeleteSchedule") == Role::kOperator);
  CHECK(*requiredRole("RunScheduleNow") == Role::kOperator);
  CHECK(kCommandProbeRole == Role::kAdmin);
  CHECK(allows(Role::kAdmin, Role::kOperator));
  CHECK(allows(Role::kOperator, Role::kOperator));
  CHECK(!allows(Role::kViewer, Role::kOperator));
  CHECK(!allows(Role::kOperator, Role::kAdmin));
}

TEST_CASE("role names round-trip; anything else is no role") {
  for (Role r : {Role::kViewer, Role::kOperator, Role::kAdmin}) {
    CHECK(parseRole(roleName(r)) == r);
  }
  CHECK(!parseRole("Admin").has_value());
  CHECK(!parseRole("").has_value());
  CHECK(!parseRole("root").has_value());
}

TEST_CASE("a local peer: root and the controller's own uid are admin, every other uid gets the local role") {
  CHECK(localPeerRole(0, 1000, Role::kViewer) == Role::kAdmin);
  CHECK(localPeerRole(1000, 1000, Role::kViewer) == Role::kAdmin);
  CHECK(localPeerRole(65534, 1000, Role::kViewer) == Role::kViewer);
  CHECK(localPeerRole(65534, 0, Role::kOperator) == Role::kOperator);
}

TEST_CASE("tokens: created with a role, verified, listed, revoked; the file holds only their SHA-256") {
  TempDb db;
  std::string secret;
  std::string id;
  {
    TokenStore store(db.path);
    const auto t = store.create(Role::kOperator, "ci");
    secret = t.secret;
    id = t.info.id;
    CHECK(secret.size() == kTokenBytes);
    CHECK(secret.rfind("flt_", 0) == 0);
    CHECK(id.size() == 16);
    const auto other = store.create(Role::kViewer, "");
    CHECK(other.secret != secret);
    CHECK(other.info.id != id);

    const auto found = store.verify(secret);
    REQUIRE(found.has_value());
    CHECK(found->id == id);
    CHECK(found->name == "ci");
    CHECK(found->role == Role::kOperator);
    CHECK(store.verify(other.secret)->role == Role::kViewer);

    const auto all = store.list();
    REQUIRE(all.size() == 2);
    CHECK(all[0].revokedUnix == 0);

    CHECK(store.revoke(id));
    CHECK(!store.revoke(id));  // already revoked
    CHECK(!store.revoke("0000000000000000"));
    CHECK(!store.verify(secret).has_value());
    CHECK(store.verify(other.secret).has_value());
    bool listedRevoked = false;
    for (const auto& t : store.list()) {
      if (t.id == id) {
        listedRevoked = t.revokedUnix != 0;
      }
    }
    CHECK(listedRevoked);
  }
  // Reopened: the revocation stays; no byte of the file (or its WAL) holds a token in clear.
  TokenStore again(db.path);
  CHECK(!again.verify(secret).has_value());
  std::string bytes = fileBytes(db.path);
  if (std::filesystem::exists(db.path + "-wal")) {
    bytes += fileBytes(db.path + "-wal");
  }
  CHECK(bytes.find(secret) == std::string::npos);
  CHECK(bytes.find(secret.substr(4)) == std::string::npos);
  CHECK(bytes.find(hashToken(secret)) != std::string::npos);
}

TEST_CASE("text that is not a token's shape is refused without a lookup") {
  TempDb db;
  TokenStore store(db.path);
  const auto t = store.create(Role::kAdmin, "x");
  CHECK(!store.verify("").has_value());
  CHECK(!store.verify(t.secret + "x").has_value());
  CHECK(!store.verify(t.secret.substr(0, t.secret.size() - 1)).has_value());
  CHECK(!store.verify(std::string(1 << 20, 'a')).has_value());
  CHECK(!store.verify("xyz_" + t.secret.substr(4)).has_value());
  CHECK(!store.verify(hashToken(t.secret)).has_value());  // the stored hash is not a credential
}

TEST_CASE("a token's name: printable ASCII, at most 64 bytes") {
  CHECK(checkTokenName("").empty());
  CHECK(checkTokenName("ci pipeline #3").empty());
  CHECK(checkTokenName(std::string(64, 'a')).empty());
  CHECK(checkTokenName(std::string(65, 'a')) == "name: 65 bytes, more than the 64 accepted");
  CHECK(checkTokenName("a\nb") == "name: byte 0x0a is not accepted; accepted: printable ASCII");
}
