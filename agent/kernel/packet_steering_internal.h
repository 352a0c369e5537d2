// Internal to agent/kernel/packet_steering*.cpp: what packet steering's files share (the rule
// planning and the factory in packet_steering.cpp, the nftables backend in
// packet_steering_nftables.cpp, the legacy xtables backend in packet_steering_xtables.cpp, the
// capability probe in packet_steering_probe.cpp). Not part of the kernel seam's API: include
// packet_steering.h instead.
#pragma once

#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <tl/expected.hpp>

#include "agent/kernel/net_types.h"
#include "agent/kernel/packet_steering.h"

namespace faultline::kernel::steering_internal {

using Failure = std::pair<std::error_code, std::string>;
using VoidResult = tl::expected<void, Failure>;

inline std::error_code errnoCode(int e) {
  return {e, std::generic_category()};
}

inline tl::unexpected<Failure> fail(int e, std::string words) {
  return tl::unexpected(Failure{errnoCode(e), std::move(words)});
}

// Runs fn on a short-lived thread that joined the namespace nsFd (-1: the caller's namespace), so
// the caller's thread never changes namespace. onError makes fn's result type from an errno.
template <typename R>
inline R onThreadIn(int nsFd, const std::function<R()>& fn, const std::function<R(int)>& onError) {
  std::optional<R> result;
  try {
    std::thread worker([&] {
      if (nsFd >= 0 && ::setns(nsFd, CLONE_NEWNET) != 0) {
        result = onError(errno);
        return;
      }
      result = fn();
    });
    worker.join();
  } catch (const std::system_error&) {
    return onError(EAGAIN);
  }
  return std::move(*result);
}

// True when this thread has CAP_NET_ADMIN in its effective set.
bool hasNetAdmin();

// One rule's worth of a match: every field optional ("any").
struct Combination {
  int family = AF_INET;
  std::optional<Cidr> destination;
  std::optional<Cidr> source;
  std::optional<uint16_t> destinationPort;
  std::optional<uint16_t> sourcePort;
  uint8_t protocol = 0;  // IPPROTO_*; 0: any
};

// What install() checks before any kernel call; the combinations of the match.
tl::expected<std::vector<Combination>, Failure> checkRules(const SteeringRules& rules);

// The words and errno for a kernel part the probe says is missing, for the rules' backend;
// nullopt when the probe finds every part the rules need (packet_steering_probe.cpp).
std::optional<Failure> missingPart(SteeringBackend backend, const SteeringRules& rules);

// The slot a faultline name (prefix + canonical decimal < kMaxSlots) stands for.
std::optional<uint16_t> slotOf(std::string_view name, std::string_view prefix);

inline constexpr uint64_t kFnvBasis = 0xcbf29ce484222325ULL;

// FNV-1a over bytes, continuing from h.
inline uint64_t fnv1a(const void* data, size_t size, uint64_t h = kFnvBasis) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) {
    h = (h ^ p[i]) * 0x100000001b3ULL;
  }
  return h;
}

// The slots whose queue (kQueueBase + slot) a program has bound in the calling thread's namespace.
std::vector<uint16_t> servedSlots();

// inspect() of either backend: EINVAL for a slot out of range; else read() the slot's parts on a
// thread in the namespace nsFd (-1: the caller's), and there complete them: the parts in name order
// (so two reads compare part by part) and the queue as the namespace's nfnetlink_queue lists it.
tl::expected<SlotState, std::error_code> inspectSlot(
    int nsFd, uint16_t slot, const std::function<tl::expected<SlotState, std::error_code>()>& read);

// The backends' onError for onThreadIn(): the namespace could not be entered.
VoidResult voidOnError(int e);
tl::expected<PacketSteering::Owned, std::error_code> ownedOnError(int e);

// names (tables or chains) split into the slots they stand for and strays, each sorted and unique.
PacketSteering::Owned sortOwned(const std::vector<std::string>& names, std::string_view prefix);

// The network namespace a backend works in: a descriptor it owns (-1: the caller's namespace).
class Namespace {
 public:
  explicit Namespace(int fd) : fd_(fd) {}
  Namespace(const Namespace&) = delete;
  Namespace& operator=(const Namespace&) = delete;
  ~Namespace() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
  }
  [[nodiscard]] int fd() const { return fd_; }

 private:
  int fd_;
};

// The backends, each working in the namespace fd (owned; -1: the caller's namespace).
std::unique_ptr<PacketSteering> makeNftSteering(int fd);  // packet_steering_nftables.cpp
// xtables: install() and remove() wait up to lockWait for the xtables lock.
std::unique_ptr<PacketSteering> makeXtSteering(int fd,
                                               std::chrono::milliseconds lockWait);  // packet_steering_xtables.cpp

// What of each backend this kernel has, probed in the calling thread's namespace (a throwaway one:
// probeSteeringSupport()): the nftables fields of support, then the xtables fields.
void probeNftables(SteeringSupport& support);
void probeXtables(SteeringSupport& support);

}  // namespace faultline::kernel::steering_internal
