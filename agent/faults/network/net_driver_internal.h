// Internal to agent/faults/network/net_driver*.cpp: what the network fault driver's files share
// (planning in net_driver_plan.cpp, applying and reverting in net_driver.cpp, the undo record in
// net_driver_record.cpp). Not part of the driver's API: include net_driver.h instead.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>
#include <tl/expected.hpp>

#include "agent/faults/network/net_driver.h"

namespace faultline::agent::net_driver_internal {

using kernel::NetemParams;
using kernel::QdiscInfo;
using kernel::QdiscParams;
using kernel::QdiscTable;
using kernel::TbfParams;
using kernel::TcObject;

// What apply() is asked to do, taken from a validated spec.
struct Plan {
  std::string faultName;  // "network.delay", ...
  std::string interface;
  std::string netns;  // "" = the agent's own
  QdiscParams params;
  // With a match: an htb root fa17: whose unclassified packets bypass its classes, class fa17:1
  // holding the fault's qdisc fa18:, and u32 filters steering the matched packets to fa17:1.
  bool tree = false;
  std::vector<kernel::U32Filter> filters;
  // Direction: egress builds on the interface's root; ingress builds the same qdisc (or tree) on the
  // root of an ifb device, to which the interface's ingress qdisc redirects every IP packet.
  bool egress = true;
  bool ingress = false;
  std::string ifb;  // the ifb's name (ifbName()), once the interface's index is known
};

// "egress", "ingress" or "both".
std::string_view directionText(const Plan& plan);
// The kind of faultline's root qdisc for a plan.
std::string rootKind(const Plan& plan);
// The fault's parameters in words, e.g. "netem delay 100ms jitter 10ms".
std::string paramsText(const QdiscParams& params);

// What apply() is asked to do, from a validated spec (net_driver_plan.cpp).
tl::expected<Plan, FaultError> planFor(const v1::FaultSpec& spec, const std::vector<Endpoint>& exempt);
// Why faultline cannot put back root (with children below it) exactly; nullopt when it can.
std::optional<std::string> cannotRestore(const Plan& plan, const std::optional<QdiscInfo>& root,
                                         const std::vector<TcObject>& below);

// Words and errors (net_driver.cpp).
FaultError faultError(std::error_code code, std::string message);
// "<fault> on <interface> in <namespace>", the start of every message about a plan.
std::string context(const Plan& plan);
// tc's notation: "8001:" or "1:a"; "0:" for the kernel's defaults.
std::string handleText(uint32_t handle);
// tc's notation for a parent: "7:1", or ":1" under a default root (major 0).
std::string parentText(uint32_t parent);
// A qdisc as tc names it ("tbf 5:"), or "none".
std::string qdiscText(const std::optional<QdiscInfo>& q);

// The undo record of a plan, as the journal stores it (net_driver_record.cpp).
nlohmann::json undoRecord(const Plan& plan, const std::optional<QdiscInfo>& saved, const std::vector<TcObject>& below);

// NetworkFaultDriver::revertRecord()'s last step: the recorded fault (only the kind of faultline's
// qdisc known, not its parameters) reverted as its revert() does; what it did, in words.
tl::expected<std::string, FaultError> revertRecorded(const QdiscTableOpener& open, Plan plan, std::string ourKind,
                                                     std::optional<QdiscInfo> saved, std::vector<TcObject> below);

}  // namespace faultline::agent::net_driver_internal
