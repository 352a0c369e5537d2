// The network fault driver's undo record: what apply() writes to the journal before it changes
// the kernel, and crash recovery's reading of it (NetworkFaultDriver::revertRecord()).
#include "agent/faults/network/net_driver.h"
#include "agent/faults/network/net_driver_internal.h"

#include <cctype>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace faultline::agent {
using namespace net_driver_internal;
namespace {

std::string toHex(const std::vector<uint8_t>& bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    out += fmt::format("{:02x}", b);
  }
  return out;
}

std::optional<std::vector<uint8_t>> fromHex(std::string_view hex) {
  if (hex.size() % 2 != 0) {
    return std::nullopt;
  }
  const auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') {
      return c - '0';
    }
    if (c >= 'a' && c <= 'f') {
      return c - 'a' + 10;
    }
    if (c >= 'A' && c <= 'F') {
      return c - 'A' + 10;
    }
    return -1;
  };
  std::vector<uint8_t> out;
  for (size_t i = 0; i < hex.size(); i += 2) {
    const int hi = nibble(hex[i]);
    const int lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) {
      return std::nullopt;
    }
    out.push_back(static_cast<uint8_t>(hi << 4 | lo));
  }
  return out;
}

// The "below" array of an undo record; nullopt when it is malformed. Records written before it
// existed have none: an empty tree.
std::optional<std::vector<TcObject>> belowFromRecord(const nlohmann::json& undo) {
  std::vector<TcObject> out;
  if (!undo.contains("below")) {
    return out;
  }
  const auto& parts = undo["below"];
  if (!parts.is_array()) {
    return std::nullopt;
  }
  for (const auto& p : parts) {
    if (!p.is_object() || !p.contains("type") || !p["type"].is_string() || !p.contains("kind") ||
        !p["kind"].is_string() || !p.contains("options") || !p["options"].is_string()) {
      return std::nullopt;
    }
    for (const char* key : {"handle", "parent", "info", "chain"}) {
      if (!p.contains(key) || !p[key].is_number_unsigned() ||
          p[key].get<uint64_t>() > std::numeric_limits<uint32_t>::max()) {
        return std::nullopt;
      }
    }
    TcObject o;
    const auto type = p["type"].get<std::string>();
    if (type == "qdisc") {
      o.type = kernel::TcObjectType::kQdisc;
    } else if (type == "class") {
      o.type = kernel::TcObjectType::kClass;
    } else if (type == "filter") {
      o.type = kernel::TcObjectType::kFilter;
    } else {
      return std::nullopt;
    }
    auto options = fromHex(p["options"].get<std::string>());
    if (!options) {
      return std::nullopt;
    }
    o.kind = p["kind"].get<std::string>();
    o.handle = p["handle"].get<uint32_t>();
    o.parent = p["parent"].get<uint32_t>();
    o.info = p["info"].get<uint32_t>();
    o.chain = p["chain"].get<uint32_t>();
    o.options = std::move(*options);
    out.push_back(std::move(o));
  }
  return out;
}

}  // namespace

namespace net_driver_internal {

// The undo record of a plan, as the journal stores it (docs/operations.md, "Undo journal").
nlohmann::json undoRecord(const Plan& plan, const std::optional<QdiscInfo>& saved, const std::vector<TcObject>& below) {
  nlohmann::json savedJson = nullptr;
  if (saved && saved->handle != 0) {
    savedJson = {{"kind", saved->kind},
                 {"handle", saved->handle},
                 {"parent", saved->parent},
                 {"options", toHex(saved->options)}};
  }
  nlohmann::json record = {{"fault", plan.faultName},         {"netns", plan.netns},     {"interface", plan.interface},
                           {"handle", kFaultlineRootHandle},  {"qdisc", rootKind(plan)}, {"saved", savedJson},
                           {"direction", directionText(plan)}};
  if (saved && saved->handle != 0 && !below.empty()) {
    nlohmann::json parts = nlohmann::json::array();
    for (const auto& o : below) {
      parts.push_back({{"type", kernel::tcObjectTypeName(o.type)},
                       {"kind", o.kind},
                       {"handle", o.handle},
                       {"parent", o.parent},
                       {"info", o.info},
                       {"chain", o.chain},
                       {"options", toHex(o.options)}});
    }
    record["below"] = std::move(parts);
  }
  if (plan.ingress) {
    record["ifb"] = plan.ifb;
    record["ingressQdisc"] = "ingress";
  }
  return record;
}

}  // namespace net_driver_internal

tl::expected<std::string, FaultError> NetworkFaultDriver::revertRecord(const nlohmann::json& undo,
                                                                       const QdiscTableOpener& open) {
  const auto malformed = [&](std::string_view why) -> tl::unexpected<FaultError> {
    FaultError error{std::make_error_code(std::errc::invalid_argument),
                     fmt::format("undo record {}: {}", undo.dump(), why)};
    error.permanent = true;
    return tl::unexpected(std::move(error));
  };
  if (!undo.is_object()) {
    return malformed("not an object");
  }
  const auto str = [&](const char* key) -> std::optional<std::string> {
    if (!undo.contains(key) || !undo[key].is_string()) {
      return std::nullopt;
    }
    return undo[key].get<std::string>();
  };
  const auto netns = str("netns");
  const auto interface = str("interface");
  const auto ourKind = str("qdisc");
  if (!netns || !interface || interface->empty() || !ourKind) {
    return malformed("needs string fields netns, interface and qdisc");
  }
  if (!undo.contains("handle") || !undo["handle"].is_number_unsigned() ||
      undo["handle"].get<uint64_t>() != kFaultlineRootHandle) {
    return malformed(fmt::format("handle is not faultline's {}", handleText(kFaultlineRootHandle)));
  }
  // null: the kernel's default root (handle 0:), which deleting ours brings back.
  std::optional<QdiscInfo> saved = QdiscInfo{"the kernel's default", 0, 0xFFFFFFFF, {}};
  if (undo.contains("saved") && !undo["saved"].is_null()) {
    const auto& s = undo["saved"];
    if (!s.is_object() || !s.contains("kind") || !s["kind"].is_string() || !s.contains("handle") ||
        !s["handle"].is_number_unsigned() || !s.contains("parent") || !s["parent"].is_number_unsigned() ||
        !s.contains("options") || !s["options"].is_string()) {
      return malformed("saved needs kind, handle, parent and options (hex)");
    }
    auto options = fromHex(s["options"].get<std::string>());
    if (!options) {
      return malformed("saved.options is not hex");
    }
    saved = QdiscInfo{s["kind"].get<std::string>(), s["handle"].get<uint32_t>(), s["parent"].get<uint32_t>(),
                      std::move(*options)};
  }
  auto below = belowFromRecord(undo);
  if (!below) {
    return malformed(
        "below needs an array of {type (qdisc, class, filter), kind, handle, parent, info, chain, "
        "options (hex)}");
  }
  Plan plan;
  plan.faultName = undo.value("fault", std::string("network fault"));
  plan.netns = *netns;
  plan.interface = *interface;
  // Records written before direction existed are egress.
  const auto direction = str("direction").value_or("egress");
  if (direction != "egress" && direction != "ingress" && direction != "both") {
    return malformed("direction is not egress, ingress or both");
  }
  plan.egress = direction != "ingress";
  plan.ingress = direction != "egress";
  if (plan.ingress) {
    // Only a device named as faultline names its ifbs is ever deleted.
    const auto ifb = str("ifb");
    if (!ifb || !ifb->starts_with(kIfbPrefix) || ifb->size() <= kIfbPrefix.size() || ifb->size() > 15) {
      return malformed(fmt::format("ingress needs ifb, a device name {}<hex index>", kIfbPrefix));
    }
    plan.ifb = *ifb;
  }
  return revertRecorded(open, std::move(plan), *ourKind, std::move(saved), std::move(*below));
}

}  // namespace faultline::agent
