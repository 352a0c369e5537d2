// Bearer tokens for the Control API over TCP. A token is "flt_" and 43 characters of base64url (32
// bytes from getrandom(2)); it is shown once, when it is created. The controller keeps only its
// SHA-256 (hex), with an id, a name, a role and the times it was created and revoked, in a table
// `tokens` of the controller's SQLite record file (its own connection; the record store's schema is
// untouched). The CLI sends a token as `authorization: Bearer TOKEN` metadata.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "controller/auth/roles.h"

struct sqlite3;

namespace faultline::controller::auth {

inline constexpr std::string_view kTokenPrefix = "flt_";
// A token is exactly this long; longer text is refused before it is hashed.
inline constexpr size_t kTokenBytes = 4 + 43;
// A token's name: at most this many bytes of printable ASCII.
inline constexpr size_t kMaxTokenNameBytes = 64;

struct TokenInfo {
  std::string id;    // 16 hex digits, how list and revoke name it
  std::string name;  // the creator's label, may be empty
  Role role = Role::kViewer;
  int64_t createdUnix = 0;  // seconds since the epoch
  int64_t revokedUnix = 0;  // 0 while the token is valid
};

struct NewToken {
  TokenInfo info;
  std::string secret;  // "flt_...": the only time it exists outside the caller's hands
};

// SHA-256 of a token as 64 lowercase hex digits: what the store keeps.
[[nodiscard]] std::string hashToken(std::string_view secret);
// "" when name is acceptable, else why not (field, value's size, what is accepted).
[[nodiscard]] std::string checkTokenName(std::string_view name);

// Thread-safe (one mutex); each call is one short SQLite statement (busy timeout 5 s).
class TokenStore {
 public:
  // Opens (creating the table if missing) the tokens of the SQLite file at path.
  // errors: std::system_error when the file cannot be opened or the table created.
  explicit TokenStore(const std::string& path);
  ~TokenStore();
  TokenStore(const TokenStore&) = delete;
  TokenStore& operator=(const TokenStore&) = delete;

  // A new token of role with name (checkTokenName() must accept it). errors: std::system_error.
  [[nodiscard]] NewToken create(Role role, const std::string& name);
  // Every token, oldest first, revoked ones too. errors: std::system_error.
  [[nodiscard]] std::vector<TokenInfo> list();
  // Revokes token id; false when no token has that id or it was revoked already.
  [[nodiscard]] bool revoke(const std::string& id);
  // The token secret names, when it exists and is not revoked; nullopt otherwise (including any
  // text that is not a token's shape). Never throws for what secret holds.
  [[nodiscard]] std::optional<TokenInfo> verify(std::string_view secret);

 private:
  std::mutex mutex_;
  sqlite3* db_ = nullptr;
  std::string path_;
};

}  // namespace faultline::controller::auth
