// Who may command the fleet (issue 15): the role of every Control RPC for callers without
// credentials, with a token of each role over TCP, on the Unix socket as root and as a real
// unprivileged user (nobody, through runuser and the faultline binary); tokens created, listed and
// revoked with the CLI; command probes (admin only, run as the probe user, switched off). Real
// controllers, real gRPC over loopback and a Unix socket, a real SQLite file. Needs root.
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "controller/auth/roles.h"
#include "controller/probes/probe.h"
#include "controller/server/controller.h"
#include "faultline/v1/control.grpc.pb.h"
#include "tests/support/netns_holder.h"

using namespace faultline;
using namespace std::chrono_literals;
using controller::auth::Role;

namespace {

// A directory any user may enter (the socket's mode decides who may connect), removed at the end.
struct OpenDir {
  OpenDir() {
    char tmpl[] = "/tmp/faultline-auth-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
    ::chmod(path.c_str(), 0755);
  }
  ~OpenDir() { std::filesystem::remove_all(path); }
  std::string path;
};

// A controller on loopback TCP (port 0) and on a Unix socket in its own directory.
struct AuthController {
  explicit AuthController(const std::function<void(controller::ControllerOptions&)>& adjust = {}) {
    controller::ControllerOptions o{"127.0.0.1:0", dir.path + "/c.db", 15s};
    o.socket = dir.path + "/control.sock";
    o.socketGroup = "";
    if (adjust) {
      adjust(o);
    }
    socketPath = o.socket;
    ctl = std::make_unique<controller::Controller>(o);
    tcp = fmt::format("127.0.0.1:{}", ctl->start());
  }
  std::unique_ptr<v1::Control::Stub> overTcp() const {
    return v1::Control::NewStub(grpc::CreateChannel(tcp, grpc::InsecureChannelCredentials()));
  }
  std::unique_ptr<v1::Control::Stub> overSocket() const {
    return v1::Control::NewStub(grpc::CreateChannel("unix:" + socketPath, grpc::InsecureChannelCredentials()));
  }
  // A token of role, made by root (admin) on the Unix socket.
  std::string token(Role role) const {
    grpc::ClientContext ctx;
    v1::CreateTokenRequest req;
    req.set_role(std::string(controller::auth::roleName(role)));
    req.set_name("test");
    v1::CreateTokenResponse resp;
    const auto s = overSocket()->CreateToken(&ctx, req, &resp);
    REQUIRE_MESSAGE(s.ok(), s.error_message());
    return resp.secret();
  }

  OpenDir dir;
  std::string socketPath;
  std::string tcp;
  std::unique_ptr<controller::Controller> ctl;
};

// Calls rpc with a request that changes nothing when it is allowed (an empty experiment, an
// unknown run or token id, a role that does not exist, a halt of an empty fleet).
grpc::Status call(v1::Control::Stub& stub, const std::string& rpc, const std::string& token) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + 10s);
  if (!token.empty()) {
    ctx.AddMetadata("authorization", "Bearer " + token);
  }
  if (rpc == "SubmitRun") {
    v1::SubmitRunResponse resp;
    return stub.SubmitRun(&ctx, {}, &resp);
  }
  if (rpc == "PlanRun") {
    v1::RunPlan resp;
    return stub.PlanRun(&ctx, {}, &resp);
  }
  if (rpc == "WatchRun") {
    v1::WatchRunRequest req;
    req.set_run_id("no-such-run");
    auto reader = stub.WatchRun(&ctx, req);
    v1::RunEvent e;
    while (reader->Read(&e)) {
    }
    return reader->Finish();
  }
  if (rpc == "AbortRun") {
    v1::AbortRunRequest req;
    req.set_run_id("no-such-run");
    v1::AbortRunResponse resp;
    return stub.AbortRun(&ctx, req, &resp);
  }
  if (rpc == "GetRun") {
    v1::GetRunRequest req;
    req.set_run_id("no-such-run");
    v1::Run resp;
    return stub.GetRun(&ctx, req, &resp);
  }
  if (rpc == "ListRuns") {
    v1::ListRunsResponse resp;
    return stub.ListRuns(&ctx, {}, &resp);
  }
  if (rpc == "ListAgents") {
    v1::ListAgentsResponse resp;
    return stub.ListAgents(&ctx, {}, &resp);
  }
  if (rpc == "Halt") {
    v1::HaltRequest req;
    req.mutable_timeout()->set_seconds(1);
    v1::HaltResponse resp;
    return stub.Halt(&ctx, req, &resp);
  }
  if (rpc == "CreateToken") {
    v1::CreateTokenRequest req;
    req.set_role("superuser");
    v1::CreateTokenResponse resp;
    return stub.CreateToken(&ctx, req, &resp);
  }
  if (rpc == "ListTokens") {
    v1::ListTokensResponse resp;
    return stub.ListTokens(&ctx, {}, &resp);
  }
  if (rpc == "RevokeToken") {
    v1::RevokeTokenRequest req;
    req.set_id("0000000000000000");
    v1::RevokeTokenResponse resp;
    return stub.RevokeToken(&ctx, req, &resp);
  }
  // Schedules: an empty one (INVALID_ARGUMENT when allowed) and a name no schedule has.
  if (rpc == "ApplySchedule") {
    v1::ApplyScheduleResponse resp;
    return stub.ApplySchedule(&ctx, {}, &resp);
  }
  if (rpc == "ListSchedules") {
    v1::ListSchedulesResponse resp;
    return stub.ListSchedules(&ctx, {}, &resp);
  }
  if (rpc == "GetSchedule") {
    v1::GetScheduleRequest req;
    req.set_name("no-such-schedule");
    v1::ScheduleStatus resp;
    return stub.GetSchedule(&ctx, req, &resp);
  }
  v1::ScheduleNameRequest named;
  named.set_name("no-such-schedule");
  if (rpc == "PauseSchedule") {
    v1::ScheduleStatus resp;
    return stub.PauseSchedule(&ctx, named, &resp);
  }
  if (rpc == "ResumeSchedule") {
    v1::ScheduleStatus resp;
    return stub.ResumeSchedule(&ctx, named, &resp);
  }
  if (rpc == "DeleteSchedule") {
    v1::DeleteScheduleResponse resp;
    return stub.DeleteSchedule(&ctx, named, &resp);
  }
  if (rpc == "RunScheduleNow") {
    v1::ScheduleFire resp;
    return stub.RunScheduleNow(&ctx, named, &resp);
  }
  FAIL("no request for ", rpc);
  return grpc::Status::CANCELLED;
}

// A `sleep 600` of root's, killed and reaped at the end.
struct RootSleeper {
  RootSleeper() {
    char arg0[] = "sleep";
    char arg1[] = "600";
    char* argv[] = {arg0, arg1, nullptr};
    REQUIRE(::posix_spawnp(&pid, "sleep", nullptr, nullptr, argv, environ) == 0);
  }
  ~RootSleeper() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  pid_t pid = -1;
};

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string commandProbeExperiment() {
  return R"(apiVersion: faultline/v1
kind: Experiment
metadata:
  name: with-command
steadyState:
  probes:
    - name: whoami
      command:
        argv: [id, -u]
method:
  - wait: 100ms
)";
}

}  // namespace

TEST_CASE("over TCP, a call without credentials is UNAUTHENTICATED, whatever the RPC, and says how to authenticate") {
  AuthController c;
  auto stub = c.overTcp();
  for (const auto& entry : controller::auth::kRpcRoles) {
    const auto s = call(*stub, std::string(entry.rpc), "");
    CAPTURE(entry.rpc);
    CHECK(s.error_code() == grpc::StatusCode::UNAUTHENTICATED);
    CHECK(contains(s.error_message(), "faultline token create"));
    CHECK(contains(s.error_message(), "unix:" + c.socketPath));
  }
  // A token of no token's shape, or unknown here, is no credential either.
  CHECK(call(*stub, "ListAgents", "flt_guess").error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(call(*stub, "ListAgents", "flt_" + std::string(43, 'A')).error_code() == grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Basic cm9vdDpyb290");
  v1::ListAgentsResponse resp;
  const auto basic = stub->ListAgents(&ctx, {}, &resp);
  CHECK(basic.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(contains(basic.error_message(), "Bearer TOKEN"));
}

TEST_CASE(
    "the role matrix: every RPC with a token of every role, over TCP: allowed, or PERMISSION_DENIED naming both "
    "roles") {
  AuthController c;
  auto stub = c.overTcp();
  const std::map<Role, std::string> tokens{
      {Role::kViewer, c.token(Role::kViewer)},
      {Role::kOperator, c.token(Role::kOperator)},
      {Role::kAdmin, c.token(Role::kAdmin)},
  };
  for (const auto& entry : controller::auth::kRpcRoles) {
    for (const auto& [role, token] : tokens) {
      const auto s = call(*stub, std::string(entry.rpc), token);
      CAPTURE(entry.rpc);
      CAPTURE(controller::auth::roleName(role));
      CAPTURE(s.error_message());
      if (controller::auth::allows(role, entry.role)) {
        CHECK(s.error_code() != grpc::StatusCode::PERMISSION_DENIED);
        CHECK(s.error_code() != grpc::StatusCode::UNAUTHENTICATED);
      } else {
        CHECK(s.error_code() == grpc::StatusCode::PERMISSION_DENIED);
        CHECK(contains(s.error_message(),
                       fmt::format("{} needs the {} role", entry.rpc, controller::auth::roleName(entry.role))));
        CHECK(contains(s.error_message(), fmt::format("has the {} role", controller::auth::roleName(role))));
      }
    }
  }
  // The allowed calls did what their requests asked, and no more: no run, no new token.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + tokens.at(Role::kAdmin));
  v1::ListTokensResponse listed;
  REQUIRE(stub->ListTokens(&ctx, {}, &listed).ok());
  CHECK(listed.tokens_size() == 3);
}

TEST_CASE("on the Unix socket, root is admin by SO_PEERCRED (gRPC names the handed-over connection fd:N)") {
  AuthController c([](controller::ControllerOptions& o) { o.localRole = Role::kViewer; });
  auto stub = c.overSocket();
  for (const auto& entry : controller::auth::kRpcRoles) {
    const auto s = call(*stub, std::string(entry.rpc), "");
    CAPTURE(entry.rpc);
    CAPTURE(s.error_message());
    CHECK(s.error_code() != grpc::StatusCode::PERMISSION_DENIED);
    CHECK(s.error_code() != grpc::StatusCode::UNAUTHENTICATED);
  }
  struct stat st {};
  REQUIRE(::stat(c.socketPath.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);  // no --socket-group: this user and root only
}

TEST_CASE("a revoked token is refused from the next call on") {
  AuthController c;
  auto stub = c.overTcp();
  const std::string token = c.token(Role::kOperator);
  CHECK(call(*stub, "ListAgents", token).ok());
  grpc::ClientContext ctx;
  v1::ListTokensResponse listed;
  REQUIRE(c.overSocket()->ListTokens(&ctx, {}, &listed).ok());
  REQUIRE(listed.tokens_size() == 1);
  grpc::ClientContext rctx;
  v1::RevokeTokenRequest req;
  req.set_id(listed.tokens(0).id());
  v1::RevokeTokenResponse resp;
  REQUIRE(c.overSocket()->RevokeToken(&rctx, req, &resp).ok());
  const auto s = call(*stub, "ListAgents", token);
  CHECK(s.error_code() == grpc::StatusCode::UNAUTHENTICATED);
  CHECK(contains(s.error_message(), "revoked"));
}

TEST_CASE("faultline token create, list and revoke; the CLI sends the token from --token-file or FAULTLINE_TOKEN") {
  AuthController c;
  const std::string bin = FAULTLINE_BIN;
  const std::string local = "--controller unix:" + c.socketPath;
  const std::string tcp = "--controller " + c.tcp;
  auto r = testing::sh(fmt::format("{} token create --role viewer --name dashboards {} 2>/dev/null", bin, local));
  INFO(r.output);
  REQUIRE(r.status == 0);
  const std::string viewer = r.output.substr(0, r.output.find('\n'));
  CHECK(viewer.rfind("flt_", 0) == 0);
  CHECK(viewer.size() == 47);
  {
    std::ofstream f(c.dir.path + "/viewer.token");
    f << viewer << "\n";
  }
  r = testing::sh(fmt::format("{} token list {}", bin, local));
  CHECK(r.status == 0);
  CHECK(contains(r.output, "viewer"));
  CHECK(contains(r.output, "dashboards"));
  CHECK(!contains(r.output, viewer));
  const auto header = r.output.find('\n');
  const std::string id = r.output.substr(header + 1, 16);

  // Over TCP: no token, refused; the viewer's token lists agents, and is refused a halt and tokens.
  r = testing::sh(fmt::format("env -u FAULTLINE_TOKEN {} agents {}", bin, tcp));
  CHECK(r.status == 3);
  CHECK(contains(r.output, "no credentials"));
  r = testing::sh(fmt::format("{} agents {} --token-file {}/viewer.token", bin, tcp, c.dir.path));
  CHECK(r.status == 0);
  CHECK(contains(r.output, "(no agents connected)"));
  r = testing::sh(fmt::format("FAULTLINE_TOKEN={} {} runs {}", viewer, bin, tcp));
  CHECK(r.status == 0);
  r = testing::sh(fmt::format("FAULTLINE_TOKEN={} {} halt {}", viewer, bin, tcp));
  CHECK(r.status == 3);
  CHECK(contains(r.output, "Halt needs the operator role"));
  r = testing::sh(fmt::format("FAULTLINE_TOKEN={} {} token list {}", viewer, bin, tcp));
  CHECK(r.status == 3);
  CHECK(contains(r.output, "ListTokens needs the admin role"));
  r = testing::sh(fmt::format("FAULTLINE_TOKEN={} {} token create --role admin {}", viewer, bin, tcp));
  CHECK(r.status == 3);
  CHECK(contains(r.output, "CreateToken needs the admin role"));
  r = testing::sh(fmt::format("FAULTLINE_TOKEN={} {} token revoke {} {}", viewer, bin, id, tcp));
  CHECK(r.status == 3);
  CHECK(contains(r.output, "RevokeToken needs the admin role"));

  // An operator token may halt, and still not manage tokens.
  r = testing::sh(fmt::format("{} token create --role operator {} 2>/dev/null", bin, local));
  REQUIRE(r.status == 0);
  const std::string op = r.output.substr(0, r.output.find('\n'));
  r = testing::sh(fmt::format("FAULTLINE_TOKEN={} {} halt {}", op, bin, tcp));
  CHECK(r.status == 0);
  r = testing::sh(fmt::format("FAULTLINE_TOKEN={} {} token list {}", op, bin, tcp));
  CHECK(r.status == 3);

  // Revoked: the same file is refused.
  r = testing::sh(fmt::format("{} token revoke {} {}", bin, id, local));
  CHECK(r.status == 0);
  r = testing::sh(fmt::format("{} agents {} --token-file {}/viewer.token", bin, tcp, c.dir.path));
  CHECK(r.status == 3);
  CHECK(contains(r.output, "revoked"));
  r = testing::sh(fmt::format("{} token revoke {} {}", bin, id, local));
  CHECK(r.status == 4);  // NOT_FOUND: revoked already

  // Bad token files are named, not sent.
  r = testing::sh(fmt::format("{} agents {} --token-file {}", bin, tcp, c.dir.path));
  CHECK(r.status == 4);
  CHECK(contains(r.output, "accepted: a regular file"));
  r = testing::sh(fmt::format("{} agents {} --token-file {}/missing", bin, tcp, c.dir.path));
  CHECK(r.status == 4);
}

TEST_CASE(
    "a real unprivileged user (nobody) on the Unix socket: refused without the group, limited to its role with it") {
  const std::string bin = FAULTLINE_BIN;
  // The binary must be reachable by nobody (the build tree usually is).
  if (testing::sh(fmt::format("runuser -u nobody -- test -x {}", bin)).status != 0) {
    MESSAGE("skipped: nobody cannot execute ", bin);
    return;
  }
  {
    // --socket-group names no group here: mode 0600, nobody cannot even connect.
    AuthController c([](controller::ControllerOptions& o) { o.socketGroup = "faultline-no-such-group"; });
    const auto r = testing::sh(fmt::format("runuser -u nobody -- {} agents --controller unix:{}", bin, c.socketPath));
    INFO(r.output);
    CHECK(r.status == 3);
    CHECK(contains(r.output, "cannot reach the controller"));
  }
  // nogroup is nobody's group: it may connect, as a viewer (--local-role viewer).
  AuthController c([](controller::ControllerOptions& o) {
    o.socketGroup = "nogroup";
    o.localRole = Role::kViewer;
  });
  struct stat st {};
  REQUIRE(::stat(c.socketPath.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0660);
  const std::string as = fmt::format("runuser -u nobody -- {}", bin);
  const std::string where = "--controller unix:" + c.socketPath;
  auto r = testing::sh(fmt::format("{} agents {}", as, where));
  INFO(r.output);
  CHECK(r.status == 0);
  r = testing::sh(fmt::format("{} halt {}", as, where));
  CHECK(r.status == 3);
  CHECK(contains(r.output,
                 fmt::format("Halt needs the operator role; uid 65534 on {} has the viewer role", c.socketPath)));
  // A root-owned process the experiment would SIGKILL; it outlives the refusal.
  RootSleeper victim;
  {
    std::ofstream f(c.dir.path + "/kill.yaml");
    f << fmt::format(
        "apiVersion: faultline/v1\nkind: Experiment\nmetadata:\n  name: kill-root\nmethod:\n"
        "  - fault: {{type: process.kill, duration: 1s, process: {{pid: {}}}}}\n",
        victim.pid);
  }
  ::chmod((c.dir.path + "/kill.yaml").c_str(), 0644);
  r = testing::sh(fmt::format("{} run {}/kill.yaml {}", as, c.dir.path, where));
  CHECK(r.status == 3);
  CHECK(contains(r.output, "SubmitRun needs the operator role"));
  r = testing::sh(fmt::format("{} token create --role admin {}", as, where));
  CHECK(r.status == 3);
  CHECK(contains(r.output, "CreateToken needs the admin role"));
  // Nothing ran: the record holds no run.
  grpc::ClientContext ctx;
  v1::ListRunsResponse runs;
  REQUIRE(c.overSocket()->ListRuns(&ctx, {}, &runs).ok());
  CHECK(runs.runs_size() == 0);
  CHECK(::kill(victim.pid, 0) == 0);
}

TEST_CASE("an operator may not submit or plan an experiment with a command probe; an admin may") {
  AuthController c;
  auto stub = c.overTcp();
  v1::SubmitRunRequest req;
  req.set_experiment(commandProbeExperiment());
  for (Role role : {Role::kViewer, Role::kOperator}) {
    const std::string token = c.token(role);
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    v1::RunPlan plan;
    const auto s = stub->PlanRun(&ctx, req, &plan);
    CHECK(s.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK(contains(s.error_message(), "probe 'whoami' is a command probe"));
    CHECK(contains(s.error_message(), "needs the admin role"));
  }
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + c.token(Role::kOperator));
  v1::SubmitRunResponse submitted;
  const auto s = stub->SubmitRun(&ctx, req, &submitted);
  CHECK(s.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK(submitted.run_id().empty());
  // An admin's dry run goes through to the plan (FAILED_PRECONDITION: no agent is connected).
  grpc::ClientContext actx;
  actx.AddMetadata("authorization", "Bearer " + c.token(Role::kAdmin));
  v1::RunPlan plan;
  const auto admin = stub->PlanRun(&actx, req, &plan);
  CHECK(admin.error_code() != grpc::StatusCode::PERMISSION_DENIED);
}

TEST_CASE("--no-command-probes: SubmitRun and PlanRun of a command probe are FAILED_PRECONDITION, even for root") {
  AuthController c([](controller::ControllerOptions& o) { o.commandProbes = false; });
  auto stub = c.overSocket();
  v1::SubmitRunRequest req;
  req.set_experiment(commandProbeExperiment());
  grpc::ClientContext ctx;
  v1::RunPlan plan;
  auto s = stub->PlanRun(&ctx, req, &plan);
  CHECK(s.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  CHECK(contains(s.error_message(), "--no-command-probes"));
  grpc::ClientContext sctx;
  v1::SubmitRunResponse submitted;
  s = stub->SubmitRun(&sctx, req, &submitted);
  CHECK(s.error_code() == grpc::StatusCode::FAILED_PRECONDITION);
  // validate is unaffected: it parses the file, nothing runs.
  {
    std::ofstream f(c.dir.path + "/cmd.yaml");
    f << commandProbeExperiment();
  }
  const auto r = testing::sh(fmt::format("{} validate {}/cmd.yaml", FAULTLINE_BIN, c.dir.path));
  CHECK(r.status == 0);
}

TEST_CASE("a command probe runs as the probe user: id -u prints its uid, not root's") {
  auto nobody = controller::lookupProbeUser("nobody");
  REQUIRE(nobody.has_value());
  CHECK(nobody->uid == 65534);
  controller::CommandProbe probe;
  probe.argv = {"id", "-u"};
  probe.stdoutMatch = "^65534$";
  auto sample = controller::runCommandProbe(probe, &*nobody);
  CHECK_MESSAGE(sample.ok, sample.detail);
  probe.argv = {"id", "-G"};
  probe.stdoutMatch = "^65534$";  // no group of root's left
  sample = controller::runCommandProbe(probe, &*nobody);
  CHECK_MESSAGE(sample.ok, sample.detail);
  // Without a user to run as: the caller's own (root here).
  probe.argv = {"id", "-u"};
  probe.stdoutMatch = "^0$";
  sample = controller::runCommandProbe(probe);
  CHECK_MESSAGE(sample.ok, sample.detail);
  // A program that does not exist is a failed sample naming the user.
  probe.argv = {"no-such-program-faultline"};
  probe.stdoutMatch.reset();
  sample = controller::runCommandProbe(probe, &*nobody);
  CHECK(!sample.ok);
  CHECK(contains(sample.detail, "as user nobody"));
  const auto missing = controller::lookupProbeUser("no-such-user-faultline");
  REQUIRE(!missing.has_value());
  CHECK(contains(missing.error(), "no user 'no-such-user-faultline' on this host"));
}

TEST_CASE("faultline controller refuses a --probe-user that does not exist, and root as the probe user") {
  OpenDir dir;
  auto r =
      testing::sh(fmt::format("{} controller --listen 127.0.0.1:0 --socket '' --db {}/c.db --probe-user "
                              "no-such-user-faultline",
                              FAULTLINE_BIN, dir.path));
  CHECK(r.status == 4);
  CHECK(contains(r.output, "--probe-user: no user 'no-such-user-faultline' on this host"));
  r = testing::sh(fmt::format("{} controller --listen 127.0.0.1:0 --socket '' --db {}/c.db --probe-user root",
                              FAULTLINE_BIN, dir.path));
  CHECK(r.status == 4);
  CHECK(contains(r.output, "never run as root"));
}

TEST_CASE("WatchRun's run_id is bounded like the other ids") {
  AuthController c;
  auto stub = c.overSocket();
  grpc::ClientContext ctx;
  v1::WatchRunRequest req;
  req.set_run_id(std::string(10'000, 'r'));
  auto reader = stub->WatchRun(&ctx, req);
  v1::RunEvent e;
  CHECK(!reader->Read(&e));
  const auto s = reader->Finish();
  CHECK(s.error_code() == grpc::StatusCode::INVALID_ARGUMENT);
  CHECK(contains(s.error_message(), "run_id"));
}

TEST_CASE("a second controller on a live socket is refused and leaves it alone; a stale socket is replaced") {
  AuthController c;
  controller::ControllerOptions o{"", c.dir.path + "/second.db", 15s};
  o.socket = c.socketPath;
  {
    controller::Controller second(o);
    CHECK_THROWS_WITH_AS(second.start(), doctest::Contains("another process listens on it"), std::runtime_error);
  }
  CHECK(call(*c.overSocket(), "ListAgents", "").ok());
  // Something that is not a socket is never removed.
  o.socket = c.dir.path + "/file";
  { std::ofstream(o.socket) << "keep"; }
  {
    controller::Controller third(o);
    CHECK_THROWS_WITH_AS(third.start(), doctest::Contains("not a socket"), std::runtime_error);
  }
  CHECK(std::filesystem::is_regular_file(o.socket));
}

TEST_CASE("schedules: a viewer lists and reads but may not apply, pause or run-now; a command probe needs admin") {
  AuthController c;
  auto stub = c.overTcp();
  const std::string viewer = c.token(Role::kViewer);
  const std::string operatorToken = c.token(Role::kOperator);
  const std::string admin = c.token(Role::kAdmin);
  auto apply = [&](const std::string& token, const std::string& experiment) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    v1::ApplyScheduleRequest req;
    req.mutable_schedule()->set_name("nightly");
    req.mutable_schedule()->set_cron("0 3 * * *");
    req.mutable_schedule()->set_experiment(experiment);
    v1::ApplyScheduleResponse resp;
    auto s = stub->ApplySchedule(&ctx, req, &resp);
    return std::pair{s, resp.result()};
  };
  auto [refused, none] = apply(viewer, commandProbeExperiment());
  CHECK(refused.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK(contains(refused.error_message(), "ApplySchedule needs the operator role"));
  CHECK(contains(refused.error_message(), "has the viewer role"));
  auto [commandRefused, none2] = apply(operatorToken, commandProbeExperiment());
  CHECK(commandRefused.error_code() == grpc::StatusCode::PERMISSION_DENIED);
  CHECK(contains(commandRefused.error_message(), "probe 'whoami' is a command probe"));
  auto [created, result] = apply(admin, commandProbeExperiment());
  REQUIRE_MESSAGE(created.ok(), created.error_message());
  CHECK(result == "created");
  auto [again, result2] = apply(admin, commandProbeExperiment());
  REQUIRE(again.ok());
  CHECK(result2 == "unchanged");
  for (const std::string rpc : {"PauseSchedule", "RunScheduleNow", "DeleteSchedule"}) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + viewer);
    v1::ScheduleNameRequest req;
    req.set_name("nightly");
    v1::ScheduleStatus st;
    v1::ScheduleFire fire;
    v1::DeleteScheduleResponse del;
    const auto s = rpc == "PauseSchedule"    ? stub->PauseSchedule(&ctx, req, &st)
                   : rpc == "RunScheduleNow" ? stub->RunScheduleNow(&ctx, req, &fire)
                                             : stub->DeleteSchedule(&ctx, req, &del);
    CAPTURE(rpc);
    CHECK(s.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK(contains(s.error_message(), rpc + " needs the operator role"));
  }
  {
    // An operator may not run it now either: that would run the admin's command probe (attacker
    // trial, issue 16: run-now ran it with an operator token).
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + operatorToken);
    v1::ScheduleNameRequest req;
    req.set_name("nightly");
    v1::ScheduleFire fire;
    const auto s = stub->RunScheduleNow(&ctx, req, &fire);
    CHECK(s.error_code() == grpc::StatusCode::PERMISSION_DENIED);
    CHECK_MESSAGE(contains(s.error_message(), "probe 'whoami' is a command probe"), s.error_message());
  }
  // The viewer reads it, unchanged (not paused, not deleted): its next five fires at 03:00 UTC.
  grpc::ClientContext ctx;
  ctx.AddMetadata("authorization", "Bearer " + viewer);
  v1::GetScheduleRequest get;
  get.set_name("nightly");
  v1::ScheduleStatus st;
  const auto s = stub->GetSchedule(&ctx, get, &st);
  REQUIRE_MESSAGE(s.ok(), s.error_message());
  CHECK_FALSE(st.schedule().paused());
  REQUIRE(st.next_fires_size() == 5);
  for (const auto& t : st.next_fires()) {
    CHECK(t.seconds() % 86400 == 3 * 3600);
  }
  CHECK(st.fires_size() == 0);
}
