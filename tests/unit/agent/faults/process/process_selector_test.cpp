// agent/faults/process/process_selector.cpp: cmdline selectors go through RE2 (common/regex.h),
// so no pattern or command line can hold the agent's thread: a catastrophic-backtracking pattern
// and a 28 KB Java command line are matched in milliseconds (std::regex took 16 s for the first
// and overflowed its stack on the second).
#include <chrono>
#include <random>
#include <string>

#include <doctest/doctest.h>
#include <unistd.h>

#include "agent/faults/process/process_selector.h"
#include "tests/fakes/fake_process_table.h"

using faultline::agent::ProcessPicker;
namespace v1 = faultline::v1;

namespace {

struct Picked {
  tl::expected<faultline::agent::ProcessSelection, faultline::agent::FaultError> result;
  std::chrono::microseconds took;
};

// Selects by cmdline among pid 1 and one process with the given command line.
Picked pickByCmdline(const std::string& pattern, const std::string& name, const std::string& args) {
  faultline::testing::FakeProcessTable table;
  table.addUser(1, 0, "systemd");
  table.addUser(::getpid() + 1000, 1, name, args);
  std::mt19937_64 rng{1};
  ProcessPicker picker(table, {}, rng, ::getpid());
  v1::ProcessSelector s;
  s.set_cmdline(pattern);
  const auto start = std::chrono::steady_clock::now();
  auto result = picker.select(s, "process.kill");
  return {std::move(result),
          std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start)};
}

}  // namespace

TEST_CASE("cmdline (a+)+$ against a 28-character command line that does not match: milliseconds") {
  const auto picked = pickByCmdline("(a+)+$", std::string(27, 'a'), "!");
  MESSAGE("(a+)+$ over a 28-character command line: ", picked.took.count(), " us");
  REQUIRE_FALSE(picked.result);
  CHECK(picked.result.error().code == std::errc::no_such_process);
  CHECK(picked.took < std::chrono::milliseconds(100));
}

TEST_CASE("the docs' example cmdline regex against a 28 KB Java command line: a match in milliseconds") {
  std::string args = "-Xms4g -Xmx4g -XX:+UseG1GC -cp ";
  for (int i = 0; args.size() < 28 * 1024; ++i) {
    args += "/opt/orders/lib/dependency-" + std::to_string(i) + "-1.2.3.jar:";
  }
  args += " -jar orders.jar --server.port=8080";
  const auto picked = pickByCmdline("java .*-jar orders\\.jar", "java", args);
  MESSAGE("'java .*-jar orders\\.jar' over a ", args.size() + 5, "-byte command line: ", picked.took.count(), " us");
  REQUIRE_MESSAGE(picked.result, (picked.result ? "" : picked.result.error().message));
  CHECK(picked.result->chosen.size() == 1);
  CHECK(picked.took < std::chrono::milliseconds(100));
}

TEST_CASE("a pattern refused at validation is refused by select() too, in the same words") {
  const auto picked = pickByCmdline("(a)\\1", "a", "a");
  REQUIRE_FALSE(picked.result);
  CHECK(picked.result.error().code == std::errc::invalid_argument);
  CHECK(picked.result.error().message.find("a backreference: RE2 has none") != std::string::npos);
}
