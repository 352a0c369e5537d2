// Test support: a temporary directory (mkdtemp under /tmp) removed with everything in it at the
// end of the test.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>

#include <doctest/doctest.h>

namespace faultline::testing {

struct TempDir {
  // prefix: the directory's name before its six random characters.
  explicit TempDir(const std::string& prefix = "faultline-e2e-") {
    std::string tmpl = "/tmp/" + prefix + "XXXXXX";
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::string path;
};

}  // namespace faultline::testing
