// faultline token create | list | revoke: the bearer tokens of a controller (admin only).
#include <ctime>
#include <iostream>

#include <fmt/format.h>

#include "controller/auth/roles.h"
#include "controller/cli/command.h"

namespace faultline::controller::cli {
namespace {

std::string date(const google::protobuf::Timestamp& t) {
  const std::time_t secs = t.seconds();
  std::tm tm{};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02} {:02}:{:02}Z", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min);
}

// What each leaf command (create, list, revoke) shares: where the controller is, and how to call it.
struct Target {
  std::string address = kDefaultController;
  std::string tokenFile;
  void add(CLI::App* cmd) {
    cmd->add_option("--controller", address, kControllerHelp)->capture_default_str();
    addTokenOption(cmd, tokenFile);
  }
  [[nodiscard]] bool ready() const { return checkControllerAddress(address) && loadToken(tokenFile); }
};

class TokenCommand final : public Command {
 public:
  CLI::App* add(CLI::App& app) override {
    auto* cmd = app.add_subcommand(
        "token", "bearer tokens for callers of the controller over TCP (admin role): create, list, revoke");
    cmd->require_subcommand(1);
    create_ = cmd->add_subcommand("create",
                                  "make a token and print it once on stdout (the controller keeps only its SHA-256)");
    create_->add_option("--role", role_, "what the token may do: viewer, operator or admin (docs/security.md)")
        ->required()
        ->check(CLI::IsMember({"viewer", "operator", "admin"}));
    create_->add_option("--name", name_, "a label shown by list (printable ASCII, at most 64 bytes)");
    createTarget_.add(create_);
    list_ = cmd->add_subcommand("list", "list every token: id, name, role, created, revoked");
    listTarget_.add(list_);
    revoke_ = cmd->add_subcommand("revoke", "revoke a token: calls with it are refused from now on");
    revoke_->add_option("ID", id_, "the token's id, as list prints it")->required();
    revokeTarget_.add(revoke_);
    return cmd;
  }

  int run() override {
    if (*create_) {
      return create();
    }
    if (*list_) {
      return list();
    }
    return revoke();
  }

 private:
  int create() {
    if (!createTarget_.ready()) {
      return kExitUsage;
    }
    const auto& address = createTarget_.address;
    auto stub = controlStub(address);
    auto ctx = contextWithDeadline(std::chrono::seconds{5});
    v1::CreateTokenRequest req;
    req.set_role(role_);
    req.set_name(name_);
    v1::CreateTokenResponse resp;
    if (auto s = stub->CreateToken(ctx.get(), req, &resp); !s.ok()) {
      return rpcError("creating a token", address, s);
    }
    // stdout holds the token alone (`faultline token create --role viewer > FILE`).
    std::cout << resp.secret() << "\n";
    std::cerr << fmt::format(
        "token {} ({}role {}): shown once; keep it in a file only its user can read and pass it with --token-file "
        "FILE or FAULTLINE_TOKEN; revoke it with: faultline token revoke {}\n",
        resp.token().id(), resp.token().name().empty() ? "" : resp.token().name() + ", ", resp.token().role(),
        resp.token().id());
    return 0;
  }

  int list() {
    if (!listTarget_.ready()) {
      return kExitUsage;
    }
    const auto& address = listTarget_.address;
    auto stub = controlStub(address);
    auto ctx = contextWithDeadline(std::chrono::seconds{5});
    v1::ListTokensResponse resp;
    if (auto s = stub->ListTokens(ctx.get(), {}, &resp); !s.ok()) {
      return rpcError("listing tokens", address, s);
    }
    std::cout << fmt::format("{:<16}  {:<8}  {:<17}  {:<17}  {}\n", "ID", "ROLE", "CREATED", "REVOKED", "NAME");
    for (const auto& t : resp.tokens()) {
      std::cout << fmt::format("{:<16}  {:<8}  {:<17}  {:<17}  {}\n", t.id(), t.role(), date(t.created_at()),
                               t.has_revoked_at() ? date(t.revoked_at()) : "-", t.name());
    }
    if (resp.tokens().empty()) {
      std::cout << "(no tokens)\n";
    }
    return 0;
  }

  int revoke() {
    if (!revokeTarget_.ready()) {
      return kExitUsage;
    }
    const auto& address = revokeTarget_.address;
    auto stub = controlStub(address);
    auto ctx = contextWithDeadline(std::chrono::seconds{5});
    v1::RevokeTokenRequest req;
    req.set_id(id_);
    v1::RevokeTokenResponse resp;
    if (auto s = stub->RevokeToken(ctx.get(), req, &resp); !s.ok()) {
      return rpcError("revoking token " + id_, address, s);
    }
    std::cout << fmt::format("token {} revoked\n", id_);
    return 0;
  }

  CLI::App* create_ = nullptr;
  CLI::App* list_ = nullptr;
  CLI::App* revoke_ = nullptr;
  Target createTarget_;
  Target listTarget_;
  Target revokeTarget_;
  std::string role_;
  std::string name_;
  std::string id_;
};

}  // namespace

std::unique_ptr<Command> makeTokenCommand() {
  return std::make_unique<TokenCommand>();
}

}  // namespace faultline::controller::cli
