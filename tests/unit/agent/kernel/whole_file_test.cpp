// Bounded reads of kernel files (agent/kernel/whole_file.h).
#include <cerrno>

#include <doctest/doctest.h>

#include "agent/kernel/whole_file.h"

using namespace faultline::kernel;

TEST_CASE("readWholeFile: an endless file is read up to its bound, not forever") {
  auto zeros = readWholeFile("/dev/zero", 10'000);
  REQUIRE(zeros.has_value());
  CHECK(zeros->size() == 10'000);
  auto stat = readWholeFile("/proc/self/stat");
  REQUIRE(stat.has_value());
  CHECK(stat->find(") ") != std::string::npos);  // the whole of it: pid (comm) state ...
  auto missing = readWholeFile("/proc/self/no-such-file");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().value() == ENOENT);
}
