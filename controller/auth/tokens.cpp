#include "controller/auth/tokens.h"

#include <openssl/evp.h>
#include <sqlite3.h>
#include <sys/random.h>

#include <cerrno>
#include <chrono>
#include <system_error>

#include <fmt/format.h>

namespace faultline::controller::auth {
namespace {

std::string randomBytes(size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::getrandom(out.data() + got, n - got, 0);
    if (r < 0) {
      if (errno == EINTR) {
        continue;
      }
      throw std::system_error(errno, std::generic_category(), "getrandom");
    }
    got += static_cast<size_t>(r);
  }
  return out;
}

std::string base64url(std::string_view bytes) {
  static constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : bytes) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out += kAlphabet[(acc >> bits) & 0x3f];
    }
  }
  if (bits > 0) {
    out += kAlphabet[(acc << (6 - bits)) & 0x3f];
  }
  return out;
}

std::string hex(std::string_view bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    out += fmt::format("{:02x}", c);
  }
  return out;
}

int64_t nowUnix() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql, const std::string& path) : db_(db) {
    if (int rc = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr); rc != SQLITE_OK) {
      throw std::system_error(EIO, std::generic_category(), fmt::format("tokens in {}: {}", path, sqlite3_errmsg(db)));
    }
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt& bind(int i, std::string_view text) {
    sqlite3_bind_text(stmt_, i, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  // true for a row, false when done; throws on an error.
  bool step(const std::string& path) {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) {
      return true;
    }
    if (rc == SQLITE_DONE) {
      return false;
    }
    throw std::system_error(EIO, std::generic_category(), fmt::format("tokens in {}: {}", path, sqlite3_errmsg(db_)));
  }
  std::string text(int i) {
    const auto* p = sqlite3_column_text(stmt_, i);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt_, i))) : "";
  }
  int64_t integer(int i) { return sqlite3_column_int64(stmt_, i); }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

TokenInfo rowInfo(Stmt& s) {
  TokenInfo t;
  t.id = s.text(0);
  t.name = s.text(1);
  t.role = parseRole(s.text(2)).value_or(Role::kViewer);
  t.createdUnix = s.integer(3);
  t.revokedUnix = s.integer(4);
  return t;
}

}  // namespace

std::string hashToken(std::string_view secret) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(secret.data(), secret.size(), digest, &len, EVP_sha256(), nullptr);
  return hex(std::string_view(reinterpret_cast<const char*>(digest), len));
}

std::string checkTokenName(std::string_view name) {
  if (name.size() > kMaxTokenNameBytes) {
    return fmt::format("name: {} bytes, more than the {} accepted", name.size(), kMaxTokenNameBytes);
  }
  for (unsigned char c : name) {
    if (c < 0x20 || c > 0x7e) {
      return fmt::format("name: byte 0x{:02x} is not accepted; accepted: printable ASCII", c);
    }
  }
  return "";
}

TokenStore::TokenStore(const std::string& path) : path_(path) {
  if (int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
      rc != SQLITE_OK) {
    const std::string why = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_close(db_);
    db_ = nullptr;
    throw std::system_error(EIO, std::generic_category(), fmt::format("cannot open tokens in {}: {}", path, why));
  }
  sqlite3_busy_timeout(db_, 5000);
  char* error = nullptr;
  if (sqlite3_exec(db_,
                   "CREATE TABLE IF NOT EXISTS tokens (id TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL, "
                   "sha256 TEXT NOT NULL UNIQUE, created INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)",
                   nullptr, nullptr, &error) != SQLITE_OK) {
    const std::string why = error ? error : "unknown error";
    sqlite3_free(error);
    sqlite3_close(db_);
    db_ = nullptr;
    throw std::system_error(EIO, std::generic_category(), fmt::format("cannot create tokens in {}: {}", path, why));
  }
}

TokenStore::~TokenStore() {
  sqlite3_close(db_);
}

NewToken TokenStore::create(Role role, const std::string& name) {
  NewToken t;
  t.secret = std::string(kTokenPrefix) + base64url(randomBytes(32));
  t.info.id = hex(randomBytes(8));
  t.info.name = name;
  t.info.role = role;
  t.info.createdUnix = nowUnix();
  std::lock_guard lock(mutex_);
  Stmt s(db_, "INSERT INTO tokens (id, name, role, sha256, created) VALUES (?, ?, ?, ?, ?)", path_);
  s.bind(1, t.info.id).bind(2, name).bind(3, roleName(role)).bind(4, hashToken(t.secret)).bind(5, t.info.createdUnix);
  s.step(path_);
  return t;
}

std::vector<TokenInfo> TokenStore::list() {
  std::lock_guard lock(mutex_);
  Stmt s(db_, "SELECT id, name, role, created, revoked FROM tokens ORDER BY created, id", path_);
  std::vector<TokenInfo> out;
  while (s.step(path_)) {
    out.push_back(rowInfo(s));
  }
  return out;
}

bool TokenStore::revoke(const std::string& id) {
  std::lock_guard lock(mutex_);
  Stmt s(db_, "UPDATE tokens SET revoked = ? WHERE id = ? AND revoked = 0", path_);
  s.bind(1, nowUnix()).bind(2, id);
  s.step(path_);
  return sqlite3_changes(db_) == 1;
}

std::optional<TokenInfo> TokenStore::verify(std::string_view secret) {
  if (secret.size() != kTokenBytes || secret.substr(0, kTokenPrefix.size()) != kTokenPrefix) {
    return std::nullopt;
  }
  try {
    std::lock_guard lock(mutex_);
    Stmt s(db_, "SELECT id, name, role, created, revoked FROM tokens WHERE sha256 = ?", path_);
    s.bind(1, hashToken(secret));
    if (!s.step(path_)) {
      return std::nullopt;
    }
    auto t = rowInfo(s);
    if (t.revokedUnix != 0) {
      return std::nullopt;
    }
    return t;
  } catch (const std::system_error&) {
    return std::nullopt;
  }
}

}  // namespace faultline::controller::auth
