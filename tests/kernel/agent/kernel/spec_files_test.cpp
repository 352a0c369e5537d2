// agent/kernel/spec_files.h and the pidfile of the real ProcessTable on this kernel: a FIFO, a
// device, a directory or an oversized file named as a pidfile or a netns is refused at once, in
// words that say what was found and what is accepted (before: a FIFO held the agent's thread until
// a writer came; /dev/zero as a pidfile grew the agent by hundreds of MB). Needs no root.
#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <unistd.h>

#include "agent/faults/process/process_selector.h"
#include "agent/kernel/process_table.h"
#include "agent/kernel/spec_files.h"
#include "tests/support/fifo.h"

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using faultline::kernel::kMaxPidfileBytes;
using faultline::testing::TempFifo;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::string whyNot(const tl::expected<pid_t, faultline::kernel::SpecFileError>& pid) {
  return pid ? "pid " + std::to_string(*pid) : pid.error().why;
}

// A regular file with text, removed at the end of the scope.
struct TempFile {
  explicit TempFile(const std::string& text) {
    path = (fs::temp_directory_path() / ("faultline-spec-file-" + std::to_string(::getpid()))).string();
    std::ofstream(path) << text;
  }
  ~TempFile() { fs::remove(path); }
  std::string path;
};

}  // namespace

TEST_CASE("a FIFO named as a pidfile is refused at once, the selector saying what it found and accepts") {
  TempFifo fifo;
  auto table = faultline::kernel::openProcessTable();
  std::mt19937_64 rng{1};
  faultline::agent::ProcessPicker picker(*table, {}, rng, ::getpid());
  faultline::v1::ProcessSelector s;
  s.set_pidfile(fifo.path());
  const auto [picked, took] = fifo.callWithin(2s, [&] { return picker.select(s, "process.kill"); });
  MESSAGE("a FIFO as pidfile refused in ", std::chrono::duration_cast<std::chrono::microseconds>(took).count(), " us");
  CHECK(took < 100ms);
  REQUIRE_FALSE(picked);
  CHECK(picked.error().code == std::errc::invalid_argument);
  CHECK_MESSAGE(contains(picked.error().message, fmt::format("pidfile {}: it is a FIFO; accepted: a regular file of "
                                                             "at most 4096 bytes",
                                                             fifo.path())),
                picked.error().message);
}

TEST_CASE("/dev/zero, a directory and a file over 4 KiB are refused as pidfiles; a pid file is read") {
  auto table = faultline::kernel::openProcessTable();
  const auto start = std::chrono::steady_clock::now();
  auto zero = table->readPidfile("/dev/zero");
  CHECK(std::chrono::steady_clock::now() - start < 100ms);
  REQUIRE_FALSE(zero);
  CHECK_MESSAGE(contains(zero.error().why, "is a character device; accepted: a regular file of at most 4096 bytes"),
                whyNot(zero));
  auto dir = table->readPidfile("/tmp");
  REQUIRE_FALSE(dir);
  CHECK_MESSAGE(contains(dir.error().why, "is a directory"), whyNot(dir));

  TempFile large("1234\n" + std::string(kMaxPidfileBytes, '#'));
  auto tooLarge = table->readPidfile(large.path);
  REQUIRE_FALSE(tooLarge);
  CHECK(tooLarge.error().code == std::errc::file_too_large);
  CHECK_MESSAGE(contains(tooLarge.error().why, "is 4101 bytes long; accepted: a regular file of at most 4096 bytes"),
                whyNot(tooLarge));

  TempFile good("1234\n");
  CHECK(whyNot(table->readPidfile(good.path)) == "pid 1234");
  auto missing = table->readPidfile("/nonexistent/x.pid");
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == std::errc::no_such_file_or_directory);
}

TEST_CASE("openNetnsFile: a namespace file opens; a FIFO, a device, a plain file or a mount namespace do not") {
  CHECK(faultline::kernel::openNetnsFile("/proc/self/ns/net"));
  const auto refused = [](const std::string& path) {
    auto fd = faultline::kernel::openNetnsFile(path);
    REQUIRE_FALSE(fd);
    CHECK(fd.error().code == std::errc::invalid_argument);
    CHECK(contains(fd.error().why, "accepted: a network namespace file such as /run/netns/NAME"));
    return fd.error().why;
  };
  TempFifo fifo;
  const auto [why, took] = fifo.callWithin(2s, [&] { return refused(fifo.path()); });
  CHECK(took < 100ms);
  CHECK_MESSAGE(contains(why, "is a FIFO, not a namespace"), why);
  CHECK(contains(refused("/dev/zero"), "is a character device, not a namespace"));
  TempFile plain("net\n");
  CHECK(contains(refused(plain.path), "is a regular file, not a namespace"));
  CHECK(contains(refused("/proc/self/ns/mnt"), "a namespace of another kind"));
}
