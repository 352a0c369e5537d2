#include "agent/safety/journal.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <utility>

#include <fmt/format.h>

namespace faultline::agent {
namespace {

JournalError errnoError(int err, const std::string& message) {
  return JournalError{std::error_code(err, std::generic_category()),
                      fmt::format("{}: {}", message, std::strerror(err))};
}

std::chrono::microseconds nowMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch());
}

tl::expected<std::string, JournalError> readAll(int fd, const std::filesystem::path& path) {
  std::string text;
  char buf[8192];
  for (;;) {
    const ssize_t n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(text.size()));
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return tl::unexpected(errnoError(errno, fmt::format("cannot read the undo journal {}", path.string())));
    }
    if (n == 0) {
      return text;
    }
    text.append(buf, static_cast<size_t>(n));
  }
}

tl::expected<void, JournalError> writeAll(int fd, const std::string& data, const std::filesystem::path& path) {
  size_t off = 0;
  while (off < data.size()) {
    const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      return tl::unexpected(errnoError(errno, fmt::format("cannot write the undo journal {}", path.string())));
    }
    off += static_cast<size_t>(n);
  }
  if (::fdatasync(fd) != 0) {
    return tl::unexpected(errnoError(errno, fmt::format("cannot sync the undo journal {}", path.string())));
  }
  return {};
}

// Parses the journal's text: the open entries, in the order they began, and the bad lines.
void parse(const std::string& text, std::vector<JournalEntry>& open, std::vector<std::string>& problems) {
  std::map<std::string, JournalEntry> byId;
  std::vector<std::string> order;
  size_t start = 0;
  for (int lineNo = 1; start < text.size(); ++lineNo) {
    size_t end = text.find('\n', start);
    const bool terminated = end != std::string::npos;
    if (!terminated) {
      end = text.size();
    }
    const std::string line = text.substr(start, end - start);
    start = end + 1;
    if (line.empty()) {
      continue;
    }
    const auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const auto problem = [&](std::string_view why) {
      problems.push_back(
          fmt::format("line {}: {}{}", lineNo, why,
                      terminated ? "" : " (the last line, unterminated: a write cut short by a crash?)"));
    };
    if (j.is_discarded()) {
      problem("not JSON");
      continue;
    }
    if (!j.is_object() || !j.contains("op") || !j["op"].is_string() || !j.contains("fault_id") ||
        !j["fault_id"].is_string()) {
      problem("not a journal entry (needs string fields \"op\" and \"fault_id\")");
      continue;
    }
    const std::string op = j["op"];
    const std::string id = j["fault_id"];
    if (op == "begin") {
      JournalEntry e;
      e.faultId = id;
      e.kind = j.value("kind", "");
      if (j.contains("at") && j["at"].is_number_integer()) {
        e.at = std::chrono::microseconds{j["at"].get<int64_t>()};
      }
      e.undo = j.contains("undo") ? j["undo"] : nlohmann::json(nullptr);
      if (byId.erase(id) != 0) {
        std::erase(order, id);
      }
      byId.emplace(id, std::move(e));
      order.push_back(id);
    } else if (op == "applied") {
      if (auto it = byId.find(id); it != byId.end()) {
        it->second.applied = true;
      }
    } else if (op == "done") {
      if (byId.erase(id) != 0) {
        std::erase(order, id);
      }
    } else {
      problem(fmt::format("unknown op \"{}\"", op));
    }
  }
  for (const auto& id : order) {
    open.push_back(std::move(byId.at(id)));
  }
}

}  // namespace

UndoJournal::UndoJournal(int fd, std::filesystem::path path, std::set<std::string> open)
    : fd_(fd), path_(std::move(path)), open_(std::move(open)) {}

UndoJournal::~UndoJournal() {
  ::close(fd_);
}

tl::expected<OpenedJournal, JournalError> UndoJournal::open(const std::filesystem::path& stateDir) {
  const std::filesystem::path path = stateDir / kFileName;
  bool created = false;
  int fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    fd = ::open(path.c_str(), O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    created = fd >= 0;
  }
  if (fd < 0) {
    return tl::unexpected(errnoError(
        errno, fmt::format("cannot open the undo journal {} (the state directory must exist and be writable)",
                           path.string())));
  }
  // One agent per state directory: a second one would revert the first one's live faults as
  // "left by an earlier run". The lock goes with the process, however it ends.
  // A few seconds of patience: children of a killed agent (stress workers between fork and
  // closing their descriptors) may still share its lock while they die with it.
  int locked = ::flock(fd, LOCK_EX | LOCK_NB);
  for (int i = 0; i < 60 && locked != 0 && errno == EWOULDBLOCK; ++i) {
    ::usleep(50'000);
    locked = ::flock(fd, LOCK_EX | LOCK_NB);
  }
  if (locked != 0) {
    const int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return tl::unexpected(JournalError{
          std::make_error_code(std::errc::device_or_resource_busy),
          fmt::format("the undo journal {} is in use by another running faultline agent (or `faultline run "
                      "--local`); one state directory per agent: stop that one first, or give this one another "
                      "state directory",
                      path.string())});
    }
    return tl::unexpected(errnoError(err, fmt::format("cannot lock the undo journal {}", path.string())));
  }
  if (created) {
    // The new file's directory entry must survive a crash too.
    const int dir = ::open(stateDir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0 || ::fsync(dir) != 0) {
      const int err = errno;
      if (dir >= 0) {
        ::close(dir);
      }
      ::close(fd);
      return tl::unexpected(errnoError(err, fmt::format("cannot sync the state directory {}", stateDir.string())));
    }
    ::close(dir);
  }
  auto text = readAll(fd, path);
  if (!text) {
    ::close(fd);
    return tl::unexpected(text.error());
  }
  OpenedJournal out;
  parse(*text, out.open, out.problems);
  std::set<std::string> ids;
  for (const auto& e : out.open) {
    ids.insert(e.faultId);
  }
  out.journal = std::unique_ptr<UndoJournal>(new UndoJournal(fd, path, std::move(ids)));
  if (out.open.empty()) {
    if (!text->empty()) {
      if (auto t = out.journal->truncate(); !t) {
        return tl::unexpected(t.error());
      }
    }
  } else if (!text->empty() && text->back() != '\n') {
    // End the cut-short line so the next entry starts on a line of its own.
    if (auto w = writeAll(fd, "\n", path); !w) {
      return tl::unexpected(w.error());
    }
  }
  return out;
}

tl::expected<void, JournalError> UndoJournal::append(const nlohmann::ordered_json& line) {
  return writeAll(fd_, line.dump() + "\n", path_);
}

tl::expected<void, JournalError> UndoJournal::truncate() {
  if (::ftruncate(fd_, 0) != 0 || ::fdatasync(fd_) != 0) {
    return tl::unexpected(errnoError(errno, fmt::format("cannot truncate the undo journal {}", path_.string())));
  }
  return {};
}

tl::expected<void, JournalError> UndoJournal::begin(const std::string& faultId, const std::string& kind,
                                                    const nlohmann::json& undo) {
  nlohmann::ordered_json j = {
      {"v", 1}, {"op", "begin"}, {"fault_id", faultId}, {"kind", kind}, {"at", nowMicros().count()}};
  j["undo"] = nlohmann::ordered_json::parse(undo.dump());
  auto written = append(j);
  if (written) {
    open_.insert(faultId);
  }
  return written;
}

tl::expected<void, JournalError> UndoJournal::applied(const std::string& faultId) {
  return append(
      nlohmann::ordered_json{{"v", 1}, {"op", "applied"}, {"fault_id", faultId}, {"at", nowMicros().count()}});
}

tl::expected<void, JournalError> UndoJournal::done(const std::string& faultId) {
  if (auto written =
          append(nlohmann::ordered_json{{"v", 1}, {"op", "done"}, {"fault_id", faultId}, {"at", nowMicros().count()}});
      !written) {
    return written;
  }
  open_.erase(faultId);
  if (open_.empty()) {
    return truncate();
  }
  return {};
}

}  // namespace faultline::agent
