// Packet steering on Debian's kernel, which has nft_queue (CONFIG_NFT_QUEUE) where the build
// machines' kernel has not: meson's vm-steering test runs this file together with
// tests/kernel/agent/kernel/packet_steering_test.cpp in the scripts/vm-run guest, so every case there that needs
// nftables' queue statement (the queue verdict: bypass while no program is bound, packets held
// while one is, fail-open after) runs for real instead of checking the clear error. Needs root.
//
// Run directly on a host, the check below skips (with a message) when the kernel lacks nft_queue;
// in the guest it never skips: a missing nft_queue there is a failure.
#include <unistd.h>

#include <doctest/doctest.h>

#include "agent/kernel/packet_steering.h"

using namespace faultline;

TEST_CASE("the guest kernel steers with both backends: nft_queue, numgen, NFQUEUE, statistic, nfnetlink_queue") {
  const auto s = kernel::probeSteeringSupport();
  // scripts/vm-run's init creates this in the guest's fresh /run before it runs the command.
  const bool guest = ::access("/run/faultline-vm/cmd.sh", F_OK) == 0;
  if (!guest && !s.nftQueue) {
    MESSAGE(
        "skipped: not in the scripts/vm-run guest, and this kernel lacks nft_queue; run it with "
        "`meson test -C BUILD --suite vm vm-steering`");
    return;
  }
  CHECK(s.nftables);
  CHECK(s.nftQueue);
  CHECK(s.nftNumgen);
  CHECK(s.xtables);
  CHECK(s.xtNfqueue);
  CHECK(s.xtStatistic);
  CHECK(s.nfqueue);
  auto backend = kernel::chooseBackend(s, true);
  REQUIRE(backend.has_value());
  CHECK(*backend == kernel::SteeringBackend::kNftables);
}
