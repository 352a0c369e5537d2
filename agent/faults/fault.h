// Fault drivers: turn a validated FaultSpec into kernel changes and back.
//
// Every driver records the prior state (its undo record) before it touches the kernel, and a
// fault that fails half-way is rolled back before apply() returns the error.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <nlohmann/json_fwd.hpp>
#include <tl/expected.hpp>

#include "faultline/v1/agent_gateway.pb.h"
#include "faultline/v1/faults.pb.h"

namespace faultline::agent {

// The longest any fault may be held, whatever the controller asks (the policy file can lower it).
inline constexpr std::chrono::hours kMaxFaultDuration{24};

// code: the errno-style cause; message: words for a human, naming the fault, the object and,
// for a missing kernel feature, how to get it (never libnl's bare "Object not found").
struct FaultError {
  std::error_code code;
  std::string message;
  // For revert(): true when retrying can never succeed (e.g. someone else replaced what the
  // fault installed, and faultline leaves it alone). The agent reports it and stops retrying.
  bool permanent = false;
  // For apply(): true when the kernel may still carry part of the fault (the roll-back failed or
  // could not be checked). The agent then keeps the fault's journal entry open for recovery.
  bool mayBeChanged = false;
  // For apply() refused with EBUSY: the pids another fault of the same driver holds (process.pause:
  // one pause per process), so the agent can name the fault that holds them.
  std::vector<int32_t> heldPids{};
};

class AppliedFault {
 public:
  virtual ~AppliedFault() = default;
  // Restores exactly what apply() changed and verifies it by reading the state back.
  // Safe to call again after a failure; a no-op once it has succeeded.
  [[nodiscard]] virtual tl::expected<void, FaultError> revert() = 0;
  // What the fault changed, e.g. "netem delay 100ms on veth0 in /var/run/netns/a (root was noqueue)".
  [[nodiscard]] virtual std::string describe() const = 0;
  // What revert() did, for the fault's end report; `why` is the reason it ended ("revert
  // requested", "duration ended", ...). Default: "reverted (WHY): " + describe(). Faults whose undo
  // is not a removal say what happened instead (pause: "resumed ...", kill: "nothing to undo").
  [[nodiscard]] virtual std::string describeRevert(std::string_view why) const {
    return "reverted (" + std::string(why) + "): " + describe();
  }
  // Process faults: each process acted on (FaultReport.processes). Thread-safe.
  [[nodiscard]] virtual std::vector<v1::ProcessHit> processHits() const { return {}; }
  // Whether the fault is still in place, read from the kernel: nullopt while it is (and when it
  // cannot be read: a read error is not a loss), else what is there now, e.g. "network.delay on
  // veth0 in the agent's network namespace: the fault is no longer in place: the root qdisc of veth0
  // is now tbf 5:, not faultline's netem fa17: (someone replaced it)". The agent calls it about once
  // a second for each fault it holds, on its io thread: it must be cheap (a few netlink round
  // trips) and must not block for long. Default: nullopt (nothing to watch). Not thread-safe.
  [[nodiscard]] virtual std::optional<std::string> lost() const { return std::nullopt; }
};

// Makes a driver's undo record durable (the agent's journal). Called by apply() at most once,
// after the prior state is read and before the first kernel change; when it fails, apply()
// changes nothing and returns its error.
using PersistUndo = std::function<tl::expected<void, FaultError>(const nlohmann::json& undo)>;

class FaultDriver {
 public:
  virtual ~FaultDriver() = default;
  // spec must already have passed validateFaultSpec(). Blocks for the kernel calls. Drivers whose
  // faults leave nothing to undo (process.kill) never call persist.
  [[nodiscard]] virtual tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                                      const PersistUndo& persist) = 0;
  // Without a journal: the undo record is kept in memory only.
  [[nodiscard]] tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec) {
    return apply(spec, PersistUndo{});
  }
};

[[nodiscard]] inline google::protobuf::Timestamp nowTimestamp() {
  const auto ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  google::protobuf::Timestamp t;
  t.set_seconds(ns / 1'000'000'000);
  t.set_nanos(static_cast<int32_t>(ns % 1'000'000'000));
  return t;
}

}  // namespace faultline::agent
