// doctest main for tests that need root: exits 77 (meson's "skipped") for anyone else.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (::geteuid() != 0) {
    std::fprintf(stderr, "%s needs root (network namespaces, veth pairs, qdiscs): skipped\n", argv[0]);
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
