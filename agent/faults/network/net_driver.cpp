#include "agent/faults/network/net_driver.h"
#include "agent/faults/network/net_driver_internal.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "agent/faults/network/netem_dist.h"
#include "agent/faults/network/traffic_match.h"
#include "agent/faults/spec.h"
#include "agent/kernel/route.h"

namespace faultline::agent {
using namespace net_driver_internal;
namespace {

// EBUSY: the root is no longer faultline's, and retrying cannot change that.
FaultError notOursError(std::string message) {
  FaultError error{std::make_error_code(std::errc::device_or_resource_busy), std::move(message)};
  error.permanent = true;
  return error;
}

std::string where(const std::string& netns) {
  return netns.empty() ? "the agent's network namespace" : netns;
}

bool isFaultlineHandle(uint32_t handle) {
  return (handle >> 16) == kFaultlineQdiscMajor;
}

// The qdisc apply() installed (and no other, even with faultline's major).
bool isOurs(const std::optional<QdiscInfo>& q, std::string_view ourKind) {
  return q && q->handle == kFaultlineRootHandle && q->kind == ourKind;
}

// Whether the root is back to what it was before apply(): the same kind, handle and options, or,
// when the kernel's default was attached before (handle 0), a default again.
bool isRestored(const std::optional<QdiscInfo>& current, const std::optional<QdiscInfo>& saved) {
  if (saved && saved->handle != 0) {
    return current && current->kind == saved->kind && current->handle == saved->handle &&
           kernel::sameQdiscOptions(saved->kind, current->options, saved->options);
  }
  return !current || current->handle == 0;
}

// Puts the saved root back in place of ours.
tl::expected<void, std::error_code> undo(QdiscTable& table, const std::string& interface,
                                         const std::optional<QdiscInfo>& saved) {
  if (saved && saved->handle != 0) {
    return table.restoreRoot(interface, *saved);
  }
  return table.deleteRoot(interface);
}

bool sameObject(const TcObject& a, const TcObject& b) {
  return a.type == b.type && a.handle == b.handle && a.parent == b.parent && a.info == b.info;
}

// The first part of below that current lacks or holds with other options, in tc's words.
std::optional<std::string> firstDifference(const std::vector<TcObject>& below, const std::vector<TcObject>& current) {
  for (const auto& o : below) {
    auto it = std::find_if(current.begin(), current.end(), [&](const TcObject& c) { return sameObject(o, c); });
    if (it == current.end()) {
      return fmt::format("{} is missing", kernel::tcObjectText(o));
    }
    if (!kernel::sameTree({o}, {*it})) {
      return fmt::format("{} has other options", kernel::tcObjectText(o));
    }
  }
  for (const auto& c : current) {
    if (std::none_of(below.begin(), below.end(), [&](const TcObject& o) { return sameObject(o, c); })) {
      return fmt::format("{} was not there before", kernel::tcObjectText(c));
    }
  }
  return std::nullopt;
}

// With the saved root back in place: adds what of below the tree lacks (all of it right after the
// root was restored; the rest after a crash half-way), in kernel::restoreOrder(), then reads the
// tree back and compares it with below. The error's text names the part that failed.
tl::expected<void, std::pair<std::error_code, std::string>> restoreBelow(QdiscTable& table,
                                                                         const std::string& interface,
                                                                         const QdiscInfo& root,
                                                                         const std::vector<TcObject>& below) {
  using Failure = std::pair<std::error_code, std::string>;
  if (below.empty() || root.handle == 0) {
    return {};
  }
  auto current = table.dumpTree(interface);
  if (!current) {
    return tl::unexpected(Failure{current.error(), "cannot read the tree below the root qdisc"});
  }
  for (const auto& o : kernel::restoreOrder(root, below)) {
    if (std::any_of(current->begin(), current->end(), [&](const TcObject& c) { return sameObject(o, c); })) {
      continue;
    }
    if (auto added = table.restoreObject(interface, o); !added) {
      return tl::unexpected(Failure{added.error(), fmt::format("cannot put back the {}", kernel::tcObjectText(o))});
    }
  }
  auto after = table.dumpTree(interface);
  if (!after) {
    return tl::unexpected(Failure{after.error(), "cannot read the tree below the root qdisc back to verify"});
  }
  if (!kernel::sameTree(below, *after)) {
    return tl::unexpected(Failure{std::make_error_code(std::errc::io_error),
                                  fmt::format("the tree below the root qdisc did not come back exactly: {}",
                                              firstDifference(below, *after).value_or("it differs"))});
  }
  return {};
}

// Words for a failed table call; the code decides, never the text.
std::string tableErrorText(const Plan& plan, std::string_view doing, std::error_code code) {
  if (code == std::errc::no_such_device) {
    return fmt::format("{}: interface {} does not exist in {}", context(plan), plan.interface, where(plan.netns));
  }
  if (code == std::errc::operation_not_permitted) {
    return fmt::format(
        "{}: {}: not permitted (the agent needs CAP_NET_ADMIN and, for another namespace, "
        "CAP_SYS_ADMIN)",
        context(plan), doing);
  }
  return fmt::format("{}: {}: {}", context(plan), doing, code.message());
}

// Words for a failed QdiscTable open: the path, when it is not (or no longer) a namespace.
std::string openErrorText(const Plan& plan, std::string_view doing, std::error_code code) {
  if (!plan.netns.empty() && code == std::errc::invalid_argument) {
    return fmt::format("{}: {} is not a network namespace", context(plan), plan.netns);
  }
  if (!plan.netns.empty() && code == std::errc::no_such_file_or_directory) {
    return fmt::format("{}: network namespace {} does not exist", context(plan), plan.netns);
  }
  return tableErrorText(plan, doing, code);
}

// A shell command that deletes the root qdisc of the plan's interface, in its namespace.
std::string deleteRootCommand(const Plan& plan) {
  const std::string tc = fmt::format("tc qdisc del dev {} root", plan.interface);
  if (plan.netns.empty()) {
    return tc;
  }
  for (std::string_view dir : {"/var/run/netns/", "/run/netns/"}) {
    if (plan.netns.starts_with(dir) && plan.netns.find('/', dir.size()) == std::string::npos) {
      return fmt::format("ip netns exec {} {}", plan.netns.substr(dir.size()), tc);
    }
  }
  return fmt::format("nsenter --net={} {}", plan.netns, tc);
}

// A shell command run in the plan's namespace.
std::string inNamespace(const std::string& netns, const std::string& command) {
  if (netns.empty()) {
    return command;
  }
  for (std::string_view dir : {"/var/run/netns/", "/run/netns/"}) {
    if (netns.starts_with(dir) && netns.find('/', dir.size()) == std::string::npos) {
      return fmt::format("ip netns exec {} {}", netns.substr(dir.size()), command);
    }
  }
  return fmt::format("nsenter --net={} {}", netns, command);
}

// A filter of an ingress dump, as tc would name it: "u32 prio 9 protocol ip handle 800::800".
std::string ingressFilterText(const kernel::IngressFilter& f) {
  const std::string protocol = f.protocol == 0x0800   ? "ip"
                               : f.protocol == 0x86DD ? "ipv6"
                               : f.protocol == 0x0003 ? "all"
                                                      : fmt::format("0x{:04x}", f.protocol);
  std::string handle;
  if (f.kind == "u32") {
    const uint32_t hash = (f.handle >> 12) & 0xFF;
    handle = fmt::format("{:x}:{}:{:x}", f.handle >> 20, hash == 0 ? "" : fmt::format("{:x}", hash), f.handle & 0xFFF);
  } else {
    handle = fmt::format("0x{:x}", f.handle);
  }
  return fmt::format("{} prio {} protocol {} handle {}", f.kind.empty() ? "filter" : f.kind, f.priority, protocol,
                     handle);
}

// faultline's part of the interface's ingress qdisc: the u32 filters redirecting to the ifb (index
// ifbIndex; 0 when it is gone, and then, on a qdisc the fault created, its redirects to a deleted
// device). When only those are there (or none, on a qdisc faultline created and
// that is of kind ingress), the qdisc goes with them. When someone added filters of their own, it
// stays for them, and only faultline's priorities (or, where a priority is shared, its own nodes)
// are deleted. Reads back that no filter redirects to the ifb. Returns what it did, in words ("" for
// nothing).
tl::expected<std::string, FaultError> removeRedirects(QdiscTable& table, const Plan& plan,
                                                      const kernel::QdiscInfo& ingress, int ifbIndex,
                                                      bool createdIngress) {
  const auto failure = [&](std::string_view doing, std::error_code code) {
    return tl::unexpected(faultError(code, fmt::format("{}: {}: {}", context(plan), doing, code.message())));
  };
  // When someone deleted the ifb during the fault, the kernel dumps the redirects' target as 0. On an
  // ingress qdisc this fault created, faultline's own nodes (the first of its two priorities,
  // 800::800 and 801::800) redirecting to nothing are still its own.
  const auto orphaned = [&](const kernel::IngressFilter& f) {
    return ifbIndex == 0 && createdIngress && f.kind == "u32" &&
           (f.priority == kIngressRedirectPriority || f.priority == kIngressRedirectPriority + 1) &&
           (f.handle & 0xFFF) == 0x800 && !f.redirects.empty() &&
           std::all_of(f.redirects.begin(), f.redirects.end(), [](int target) { return target == 0; });
  };
  const auto toIfb = [&](const kernel::IngressFilter& f) {
    return (ifbIndex != 0 && f.kind == "u32" &&
            std::find(f.redirects.begin(), f.redirects.end(), ifbIndex) != f.redirects.end()) ||
           orphaned(f);
  };
  const auto samePriority = [](const kernel::IngressFilter& a, const kernel::IngressFilter& b) {
    return a.priority == b.priority && a.protocol == b.protocol;
  };
  auto filters = table.ingressFilters(plan.interface);
  if (!filters && filters.error() == std::errc::no_such_device) {
    return std::string();
  }
  if (!filters) {
    return failure("revert: cannot read the ingress filters", filters.error());
  }
  std::vector<kernel::IngressFilter> ours;
  std::vector<kernel::IngressFilter> others;
  for (const auto& f : *filters) {
    if (toIfb(f)) {
      ours.push_back(f);
    }
  }
  for (const auto& f : *filters) {
    // Counted: filters. Not: a priority's classifier itself (handle 0) and u32's hash tables (node
    // bits 0), which the kernel lists with the filters in them.
    if (f.handle == 0 || toIfb(f) || (f.kind == "u32" && (f.handle & 0xFFF) == 0)) {
      continue;
    }
    others.push_back(f);
  }
  const auto deleteQdisc = [&]() -> tl::expected<std::string, FaultError> {
    auto deleted = table.deleteIngressQdisc(plan.interface);
    if (!deleted && deleted.error() != std::errc::no_such_device && deleted.error() != std::errc::invalid_argument &&
        deleted.error() != std::errc::no_such_file_or_directory) {
      return failure(fmt::format("revert: cannot delete the ingress qdisc of {}", plan.interface), deleted.error());
    }
    return fmt::format("ingress qdisc of {} deleted", plan.interface);
  };
  if (others.empty()) {
    if (!ours.empty() || (createdIngress && ingress.kind == "ingress")) {
      return deleteQdisc();
    }
    return std::string();  // not faultline's: no redirect to its ifb, and not made by this fault
  }
  std::vector<std::string> othersText;
  for (const auto& f : others) {
    othersText.push_back(ingressFilterText(f));
  }
  if (ours.empty()) {
    return std::string();  // nothing of faultline's on it (the ifb, if there, goes next)
  }
  for (const auto& o : ours) {
    // The whole priority when it holds nothing else (its classifier and hash table go too), else
    // only faultline's node.
    const bool shared =
        std::any_of(others.begin(), others.end(), [&](const kernel::IngressFilter& f) { return samePriority(o, f); });
    kernel::IngressFilter target = o;
    if (!shared) {
      target.handle = 0;
    }
    auto deleted = table.deleteIngressFilter(plan.interface, target);
    if (!deleted && deleted.error() != std::errc::no_such_file_or_directory) {
      return failure(fmt::format("revert: cannot delete faultline's redirect filter ({}) of {}", ingressFilterText(o),
                                 plan.interface),
                     deleted.error());
    }
  }
  auto after = table.ingressFilters(plan.interface);
  if (!after) {
    return failure("revert: cannot read the ingress filters to verify", after.error());
  }
  if (std::any_of(after->begin(), after->end(), toIfb)) {
    return tl::unexpected(faultError(std::make_error_code(std::errc::io_error),
                                     fmt::format("{}: revert did not take: a filter of {} still redirects to {}",
                                                 context(plan), plan.interface, plan.ifb)));
  }
  return fmt::format(
      "faultline's {} redirect filter(s) deleted from the {} qdisc of {}, which stays for {} filter(s) that are not "
      "faultline's ({}; remove the qdisc with `{}` once nothing needs them)",
      ours.size(), ingress.kind, plan.interface, others.size(), fmt::join(othersText, "; "),
      inNamespace(plan.netns, fmt::format("tc qdisc del dev {} {}", plan.interface, ingress.kind)));
}

// Removes faultline's ingress path of plan (the interface's ingress qdisc, then the ifb) and
// reads back that both are gone. See removeIngressPath() in net_driver.h.
tl::expected<std::string, FaultError> removeIngress(QdiscTable& table, const Plan& plan, bool createdIngress) {
  const auto failure = [&](std::string_view doing, std::error_code code) {
    return tl::unexpected(faultError(code, fmt::format("{}: {}: {}", context(plan), doing, code.message())));
  };
  auto links = table.links();
  if (!links) {
    return failure("revert: cannot list the interfaces", links.error());
  }
  const auto ifb = std::find_if(links->begin(), links->end(),
                                [&](const kernel::LinkInfo& l) { return l.name == plan.ifb && l.kind == "ifb"; });
  const int ifbIndex = ifb != links->end() ? ifb->index : 0;
  std::vector<std::string> done;
  const bool interfaceThere =
      !plan.interface.empty() &&
      std::any_of(links->begin(), links->end(), [&](const kernel::LinkInfo& l) { return l.name == plan.interface; });
  if (interfaceThere) {
    auto ingress = table.ingressQdisc(plan.interface);
    if (!ingress && ingress.error() != std::errc::no_such_device) {
      return failure("revert: cannot read the ingress qdisc", ingress.error());
    }
    if (ingress && *ingress) {
      auto removed = removeRedirects(table, plan, **ingress, ifbIndex, createdIngress);
      if (!removed) {
        return tl::unexpected(removed.error());
      }
      if (!removed->empty()) {
        done.push_back(*removed);
      }
    }
  }
  if (ifbIndex != 0) {
    auto deleted = table.deleteLink(plan.ifb);
    if (!deleted && deleted.error() != std::errc::no_such_device) {
      return failure(fmt::format("revert: cannot delete the ifb device {}", plan.ifb), deleted.error());
    }
    done.push_back(fmt::format("ifb {} deleted", plan.ifb));
  }
  // Read back: no ifb of that name, and no redirect to it left on the interface.
  auto after = table.links();
  if (!after) {
    return failure("revert: cannot list the interfaces to verify", after.error());
  }
  if (std::any_of(after->begin(), after->end(), [&](const kernel::LinkInfo& l) { return l.name == plan.ifb; })) {
    return tl::unexpected(
        faultError(std::make_error_code(std::errc::io_error),
                   fmt::format("{}: revert did not take: the ifb {} is still there", context(plan), plan.ifb)));
  }
  return done.empty() ? std::string("no ingress path left") : fmt::format("{}", fmt::join(done, ", "));
}

class AppliedNetworkFault final : public AppliedFault {
 public:
  AppliedNetworkFault(QdiscTableOpener open, Plan plan, std::optional<QdiscInfo> saved, std::vector<TcObject> below)
      : open_(std::move(open)),
        plan_(std::move(plan)),
        ourKind_(rootKind(plan_)),
        what_(paramsText(plan_.params) + (plan_.tree
                                              ? fmt::format(" on matched traffic ({} u32 filter{})",
                                                            plan_.filters.size(), plan_.filters.size() == 1 ? "" : "s")
                                              : "")),
        saved_(std::move(saved)),
        below_(std::move(below)) {}
  // From an undo record: only the kind of faultline's qdisc is known, not its parameters.
  AppliedNetworkFault(QdiscTableOpener open, Plan plan, std::string ourKind, std::optional<QdiscInfo> saved,
                      std::vector<TcObject> below)
      : open_(std::move(open)),
        plan_(std::move(plan)),
        ourKind_(std::move(ourKind)),
        what_(ourKind_),
        saved_(std::move(saved)),
        below_(std::move(below)) {}

  tl::expected<void, FaultError> revert() override {
    if (reverted_) {
      return {};
    }
    auto table = open_(plan_.netns);
    if (!table) {
      // ENOENT: the namespace file is gone (its process exited, `ip netns del`); EINVAL: the path
      // is no longer a namespace. Either way the namespace, and the fault in it, is out of reach.
      if (!plan_.netns.empty() &&
          (table.error() == std::errc::no_such_file_or_directory || table.error() == std::errc::invalid_argument)) {
        return nothingToRevert(fmt::format("network namespace {} no longer exists", plan_.netns));
      }
      return tl::unexpected(
          faultError(table.error(), openErrorText(plan_, "revert: cannot open the network namespace", table.error())));
    }
    // Ingress first: the redirect stops before the ifb (and the tree on it) goes.
    if (plan_.ingress && !ingressRemoved_) {
      auto removed = removeIngress(**table, plan_, true);
      if (!removed) {
        return tl::unexpected(removed.error());
      }
      ingressRemoved_ = true;
      ingressOutcome_ = *removed;
    }
    if (!plan_.egress) {
      reverted_ = true;
      return {};
    }
    auto current = (*table)->root(plan_.interface);
    if (!current && current.error() == std::errc::no_such_device) {
      return interfaceGone();
    }
    if (!current) {
      return tl::unexpected(
          faultError(current.error(), tableErrorText(plan_, "revert: cannot read the root qdisc", current.error())));
    }
    if (isRestored(*current, saved_)) {
      // An earlier attempt (or someone) already put the saved root back; a crash or an error may
      // have stopped it before the whole tree below was back.
      return finishBelow(**table);
    }
    // Someone deleted faultline's root (e.g. `tc qdisc del dev X root`) and the kernel attached
    // its default: that default is nobody's, so the saved root and its tree go back over it.
    const bool kernelDefault = !*current || (*current)->handle == 0;
    if (kernelDefault) {
      outcome_ = fmt::format(
          "faultline's root had been deleted (the kernel's default {} was there); the root "
          "saved before the fault was put back over it",
          *current ? (*current)->kind : std::string("none"));
    } else if (!isOurs(*current, ourKind_)) {
      return tl::unexpected(notOursError(fmt::format(
          "{}: revert refused: the root qdisc is now {}, not faultline's {} {}; someone else replaced "
          "it, so faultline left it alone (before the fault it was {})",
          context(plan_), qdiscText(*current), ourKind_, handleText(kFaultlineRootHandle), qdiscText(saved_))));
    }
    if (auto undone = undo(**table, plan_.interface, saved_); !undone) {
      if (undone.error() == std::errc::no_such_device) {
        return interfaceGone();
      }
      return tl::unexpected(
          faultError(undone.error(),
                     tableErrorText(plan_, fmt::format("revert: cannot put back the root qdisc {}", qdiscText(saved_)),
                                    undone.error())));
    }
    auto after = (*table)->root(plan_.interface);
    if (!after && after.error() == std::errc::no_such_device) {
      return interfaceGone();
    }
    if (!after) {
      return tl::unexpected(faultError(
          after.error(),
          tableErrorText(plan_, "revert: reverted, but cannot read the root qdisc back to verify", after.error())));
    }
    if (isRestored(*after, saved_)) {
      return finishBelow(**table);
    }
    const std::string expected = fmt::format("{} (with its original options)", qdiscText(saved_));
    if (isOurs(*after, ourKind_)) {
      return tl::unexpected(faultError(std::make_error_code(std::errc::io_error),
                                       fmt::format("{}: revert did not take: the root qdisc is still {}, expected {}",
                                                   context(plan_), qdiscText(*after), expected)));
    }
    return tl::unexpected(notOursError(fmt::format(
        "{}: revert did not take: the root qdisc is now {}, expected {}; it is not faultline's, so faultline left it "
        "alone",
        context(plan_), qdiscText(*after), expected)));
  }

  std::string describe() const override {
    std::string text = plan_.ingress ? fmt::format("{} on {} in {}, direction {}, ingress through ifb {}{}", what_,
                                                   plan_.interface, where(plan_.netns), directionText(plan_), plan_.ifb,
                                                   plan_.egress ? fmt::format(" (root was {})", qdiscText(saved_)) : "")
                                     : fmt::format("{} on {} in {} (root was {})", what_, plan_.interface,
                                                   where(plan_.netns), qdiscText(saved_));
    if (!ingressOutcome_.empty()) {
      text += "; " + ingressOutcome_;
    }
    if (!outcome_.empty()) {
      text += "; " + outcome_;
    }
    return text;
  }

  // Reads what the fault installed (net_driver.h, "lost()"): egress, one dump of the interface's
  // root; ingress, the interface's ingress filters, the ifb's root and index. Nothing is reported
  // when a read fails or the namespace or interface is gone (revert() finds the fault went with it).
  std::optional<std::string> lost() const override {
    if (reverted_) {
      return std::nullopt;
    }
    auto table = open_(plan_.netns);
    if (!table) {
      return std::nullopt;
    }
    std::vector<std::string> changes;
    if (plan_.egress) {
      auto current = (*table)->root(plan_.interface);
      if (!current) {
        return std::nullopt;
      }
      if (!isOurs(*current, ourKind_)) {
        changes.push_back(rootLostText(plan_.interface, *current));
      }
    }
    if (plan_.ingress) {
      if (auto gone = ingressLost(**table)) {
        changes.push_back(std::move(*gone));
      }
    }
    if (changes.empty()) {
      return std::nullopt;
    }
    return fmt::format("{}: the fault is no longer in place: {}", context(plan_), fmt::join(changes, "; "));
  }

 private:
  // "the root qdisc of veth0 is now tbf 5:, not faultline's netem fa17: (someone replaced it)".
  std::string rootLostText(const std::string& device, const std::optional<QdiscInfo>& current) const {
    const std::string ours = fmt::format("faultline's {} {}", ourKind_, handleText(kFaultlineRootHandle));
    if (!current) {
      return fmt::format("{} has no root qdisc, not {}", device, ours);
    }
    if (current->handle == 0) {
      return fmt::format("the root qdisc of {} is now {}, the kernel's default, not {} (someone deleted it)", device,
                         qdiscText(current), ours);
    }
    return fmt::format("the root qdisc of {} is now {}, not {} (someone replaced it)", device, qdiscText(current),
                       ours);
  }

  // The ingress path's part of lost(): the ifb is there with faultline's root, and the interface's
  // ingress qdisc redirects to it. nullopt when it is, or when a read fails.
  std::optional<std::string> ingressLost(QdiscTable& table) const {
    auto filters = table.ingressFilters(plan_.interface);
    if (!filters) {
      return std::nullopt;  // ENODEV: the interface is gone (revert() says so); else a read error
    }
    auto ifbRoot = table.root(plan_.ifb);
    if (!ifbRoot && ifbRoot.error() == std::errc::no_such_device) {
      return fmt::format("the ifb {} no longer exists (someone deleted it): packets received on {} are not faulted",
                         plan_.ifb, plan_.interface);
    }
    auto ifbIndex = table.interfaceIndex(plan_.ifb);
    if (!ifbRoot || !ifbIndex) {
      return std::nullopt;
    }
    std::vector<std::string> changes;
    if (!isOurs(*ifbRoot, ourKind_)) {
      changes.push_back(rootLostText("the ifb " + plan_.ifb, *ifbRoot));
    }
    const bool redirected = std::any_of(filters->begin(), filters->end(), [&](const kernel::IngressFilter& f) {
      return f.kind == "u32" && std::find(f.redirects.begin(), f.redirects.end(), *ifbIndex) != f.redirects.end();
    });
    if (!redirected) {
      auto ingress = table.ingressQdisc(plan_.interface);
      if (ingress && !*ingress) {
        changes.push_back(fmt::format(
            "{} has no ingress qdisc any more (someone deleted it): its received packets no longer go through the "
            "ifb {}",
            plan_.interface, plan_.ifb));
      } else {
        std::vector<std::string> texts;
        for (const auto& f : *filters) {
          if (f.handle != 0 && !(f.kind == "u32" && (f.handle & 0xFFF) == 0)) {
            texts.push_back(ingressFilterText(f));
          }
        }
        changes.push_back(fmt::format(
            "the ingress qdisc of {} no longer redirects to the ifb {} (its filters now: {}): its received packets "
            "are not faulted",
            plan_.interface, plan_.ifb,
            texts.empty() ? std::string("none") : fmt::format("{}", fmt::join(texts, "; "))));
      }
    }
    if (changes.empty()) {
      return std::nullopt;
    }
    return fmt::format("{}", fmt::join(changes, "; "));
  }

  // The fault went away with its interface or namespace: revert() succeeds, describe() says why.
  tl::expected<void, FaultError> nothingToRevert(const std::string& why) {
    outcome_ = why + "; nothing to revert";
    reverted_ = true;
    return {};
  }

  tl::expected<void, FaultError> interfaceGone() {
    return nothingToRevert(fmt::format("interface {} no longer exists", plan_.interface));
  }

  // The saved root is back: puts back the classes, qdiscs and filters that were below it.
  tl::expected<void, FaultError> finishBelow(QdiscTable& table) {
    if (saved_ && saved_->handle != 0) {
      if (auto restored = restoreBelow(table, plan_.interface, *saved_, below_); !restored) {
        if (restored.error().first == std::errc::no_such_device) {
          return interfaceGone();
        }
        return tl::unexpected(
            faultError(restored.error().first, tableErrorText(plan_,
                                                              fmt::format("revert: the root qdisc {} is back, but {}",
                                                                          qdiscText(saved_), restored.error().second),
                                                              restored.error().first)));
      }
    }
    reverted_ = true;
    return {};
  }

  QdiscTableOpener open_;
  Plan plan_;
  std::string ourKind_;             // the kind of faultline's root qdisc: "netem" or "tbf"
  std::string what_;                // faultline's qdisc in words, for describe()
  std::optional<QdiscInfo> saved_;  // the undo record: the root before apply()
  std::vector<TcObject> below_;     // and the tree below it (QdiscTable::dumpTree())
  bool reverted_ = false;
  bool ingressRemoved_ = false;
  std::string outcome_;         // set when revert() found nothing to revert
  std::string ingressOutcome_;  // what revert() removed of the ingress path
};

// Builds faultline's tree for plan (see Plan::tree); on any failure puts the saved root back and
// reports the step that failed.
tl::expected<void, FaultError> buildTree(QdiscTable& table, const Plan& plan, const std::optional<QdiscInfo>& before,
                                         const std::vector<TcObject>& below) {
  std::string step;
  std::error_code code;
  const auto attempt = [&](std::string what, tl::expected<void, std::error_code> result) {
    if (!result && !code) {
      code = result.error();
      step = std::move(what);
    }
    return result.has_value();
  };
  // Unclassified packets go to htb's direct queue: nothing is faulted until the filters are in.
  (void)(attempt("htb root fa17:", table.replaceRoot(plan.interface, kFaultlineRootHandle, kernel::HtbParams{})) &&
         attempt("htb class fa17:1", table.addHtbClass(plan.interface, kFaultlineClass,
                                                       kernel::HtbClassParams{.rateBitsPerSecond = kUnlimitedBps})) &&
         attempt(fmt::format("{} fa18: below fa17:1", kernel::qdiscKind(plan.params)),
                 table.addQdisc(plan.interface, kFaultlineClass, kFaultlineLeafHandle, plan.params)));
  for (size_t i = 0; !code && i < plan.filters.size(); ++i) {
    attempt(fmt::format("u32 filter {} of {}", i + 1, plan.filters.size()),
            table.addU32Filter(plan.interface, plan.filters[i]));
  }
  if (!code) {
    return {};
  }
  std::string message =
      code == std::errc::no_such_file_or_directory
          ? fmt::format("{}: cannot add the {}: {} (or the kernel lacks the module: {})", context(plan), step,
                        code.message(),
                        step.starts_with("u32")
                            ? "cls_u32, `modprobe cls_u32`"
                            : missingQdiscMessage(step.starts_with("htb") ? "htb" : kernel::qdiscKind(plan.params)))
          : tableErrorText(plan, fmt::format("cannot add the {}", step), code);
  FaultError error = faultError(code, std::move(message));
  auto after = table.root(plan.interface);
  if (!after) {
    error.message += fmt::format(" (and the root qdisc could not be read back to remove the half-built tree: {})",
                                 after.error().message());
    error.mayBeChanged = true;
  } else if (*after && isFaultlineHandle((*after)->handle)) {
    if (auto undone = undo(table, plan.interface, before); !undone) {
      error.message += fmt::format(" (and removing the half-built tree to put back {} failed: {})", qdiscText(before),
                                   undone.error().message());
      error.mayBeChanged = true;
    } else if (auto rest = before ? restoreBelow(table, plan.interface, *before, below)
                                  : tl::expected<void, std::pair<std::error_code, std::string>>{};
               !rest) {
      error.message += fmt::format(" (the half-built tree was removed and the root qdisc {} put back, but {}: {})",
                                   qdiscText(before), rest.error().second, rest.error().first.message());
      error.mayBeChanged = true;
    } else {
      error.message +=
          fmt::format("; the half-built tree was removed and the root qdisc {} put back", qdiscText(before));
    }
  }
  return tl::unexpected(std::move(error));
}

// Replaces plan.interface's root with faultline's qdisc, or builds faultline's tree there; on any
// failure puts before back (buildTree) or makes sure nothing changed.
tl::expected<void, FaultError> installRoot(QdiscTable& table, const Plan& plan, const std::optional<QdiscInfo>& before,
                                           const std::vector<TcObject>& below) {
  if (plan.tree) {
    return buildTree(table, plan, before, below);
  }
  auto replaced = table.replaceRoot(plan.interface, kFaultlineRootHandle, plan.params);
  if (replaced) {
    return {};
  }
  const std::error_code code = replaced.error();
  std::string message = code == std::errc::no_such_file_or_directory
                            ? fmt::format("{}: {}", context(plan), missingQdiscMessage(kernel::qdiscKind(plan.params)))
                            : tableErrorText(plan, fmt::format("the kernel refused {}", paramsText(plan.params)), code);
  // A refused replace changes nothing in the kernel; make sure of it before reporting.
  bool mayBeChanged = false;
  auto after = table.root(plan.interface);
  if (!after) {
    message += fmt::format(" (and the root qdisc could not be read back to check it is unchanged: {})",
                           after.error().message());
    mayBeChanged = true;
  } else if (*after && isFaultlineHandle((*after)->handle)) {
    if (auto undone = undo(table, plan.interface, before); !undone) {
      message +=
          fmt::format(" (and putting back the root qdisc {} failed: {})", qdiscText(before), undone.error().message());
      mayBeChanged = true;
    } else if (auto rest = before ? restoreBelow(table, plan.interface, *before, below)
                                  : tl::expected<void, std::pair<std::error_code, std::string>>{};
               !rest) {
      message += fmt::format(" (the root qdisc {} was put back, but {}: {})", qdiscText(before), rest.error().second,
                             rest.error().first.message());
      mayBeChanged = true;
    }
  }
  FaultError error = faultError(code, std::move(message));
  error.mayBeChanged = mayBeChanged;
  return tl::unexpected(std::move(error));
}

// Builds the ingress path of plan: the ifb (up), faultline's qdisc or tree on its root, the
// interface's ingress qdisc, and a u32 + mirred redirect of IPv4 (priority 1) and IPv6 (2) to the
// ifb. The redirect goes in last, so no packet meets a half-built path. On any failure removes what
// it built (removeIngress) and says which step and module failed.
tl::expected<void, FaultError> buildIngress(QdiscTable& table, const Plan& plan) {
  Plan onIfb = plan;
  onIfb.interface = plan.ifb;
  std::optional<FaultError> error;
  if (auto created = table.createIfb(plan.ifb); !created) {
    const std::error_code code = created.error();
    if (code == std::errc::operation_not_supported) {
      return tl::unexpected(faultError(
          code, fmt::format("{}: cannot create the ifb device {}: the kernel has no ifb (CONFIG_IFB): load it with "
                            "`modprobe ifb`; nothing was changed",
                            context(plan), plan.ifb)));
    }
    return tl::unexpected(
        faultError(code, tableErrorText(plan, fmt::format("cannot create the ifb device {}", plan.ifb), code)));
  }
  if (auto installed = installRoot(table, onIfb, std::nullopt, {}); !installed) {
    error = installed.error();
  }
  if (!error) {
    if (auto added = table.addIngressQdisc(plan.interface); !added) {
      const std::error_code code = added.error();
      error = faultError(code, code == std::errc::no_such_file_or_directory
                                   ? fmt::format("{}: cannot add the ingress qdisc: the kernel has no sch_ingress "
                                                 "(CONFIG_NET_SCH_INGRESS): load it with `modprobe sch_ingress`",
                                                 context(plan))
                                   : tableErrorText(plan, "cannot add the ingress qdisc", code));
    }
  }
  for (const auto& [priority, protocol] : {std::pair<uint16_t, uint16_t>{kIngressRedirectPriority, 0x0800},
                                           std::pair<uint16_t, uint16_t>{kIngressRedirectPriority + 1, 0x86DD}}) {
    if (error) {
      break;
    }
    if (auto added = table.addRedirectFilter(plan.interface, kernel::RedirectFilter{priority, protocol, plan.ifb});
        !added) {
      const std::error_code code = added.error();
      const std::string doing = fmt::format("cannot add the u32 filter with the mirred redirect to {} ({})", plan.ifb,
                                            protocol == 0x0800 ? "IPv4" : "IPv6");
      error = faultError(code, code == std::errc::no_such_file_or_directory
                                   ? fmt::format("{}: {}: the kernel lacks cls_u32 or act_mirred (CONFIG_NET_CLS_U32, "
                                                 "CONFIG_NET_ACT_MIRRED): `modprobe cls_u32 act_mirred`",
                                                 context(plan), doing)
                                   : tableErrorText(plan, doing, code));
    }
  }
  if (!error) {
    return {};
  }
  if (auto removed = removeIngress(table, plan, true); !removed) {
    error->message += fmt::format(" (and removing the half-built ingress path failed: {})", removed.error().message);
    error->mayBeChanged = true;
  } else {
    error->message += fmt::format("; the half-built ingress path was removed ({})", *removed);
  }
  return tl::unexpected(std::move(*error));
}

}  // namespace

namespace net_driver_internal {

FaultError faultError(std::error_code code, std::string message) {
  return FaultError{code, std::move(message)};
}

std::string context(const Plan& plan) {
  return fmt::format("{} on {} in {}", plan.faultName, plan.interface, where(plan.netns));
}

// tc's notation: "8001:" or "1:a"; "0:" for the kernel's defaults.
std::string handleText(uint32_t handle) {
  const uint32_t minor = handle & 0xFFFF;
  return minor != 0 ? fmt::format("{:x}:{:x}", handle >> 16, minor) : fmt::format("{:x}:", handle >> 16);
}

// tc's notation for a parent: "7:1", or ":1" under a default root (major 0).
std::string parentText(uint32_t parent) {
  const uint32_t major = parent >> 16;
  return major != 0 ? fmt::format("{:x}:{:x}", major, parent & 0xFFFF) : fmt::format(":{:x}", parent & 0xFFFF);
}

std::string qdiscText(const std::optional<QdiscInfo>& q) {
  if (!q) {
    return "none";
  }
  return q->handle == 0 ? q->kind : fmt::format("{} {}", q->kind, handleText(q->handle));
}

tl::expected<std::string, FaultError> revertRecorded(const QdiscTableOpener& open, Plan plan, std::string ourKind,
                                                     std::optional<QdiscInfo> saved, std::vector<TcObject> below) {
  AppliedNetworkFault fault(open, std::move(plan), std::move(ourKind), std::move(saved), std::move(below));
  if (auto reverted = fault.revert(); !reverted) {
    return tl::unexpected(reverted.error());
  }
  return fault.describe();
}

}  // namespace net_driver_internal

std::string ifbName(int ifindex) {
  return fmt::format("{}{:x}", kIfbPrefix, static_cast<unsigned>(ifindex));
}

tl::expected<std::string, FaultError> removeIngressPath(kernel::QdiscTable& table, const std::string& netns,
                                                        const std::string& interface, const std::string& ifb) {
  Plan plan;
  plan.faultName = "network fault";
  plan.netns = netns;
  plan.interface = interface;
  plan.ifb = ifb;
  plan.ingress = true;
  return removeIngress(table, plan, false);
}

NetworkFaultDriver::NetworkFaultDriver(QdiscTableOpener open) : open_(std::move(open)) {}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> NetworkFaultDriver::apply(const v1::FaultSpec& spec,
                                                                                  const PersistUndo& persist) {
  const v1::NetworkTarget* target = networkTarget(spec);
  if (resolver_ == nullptr || target == nullptr || !validateFaultSpec(spec)) {
    return applyResolved(spec, persist);  // validation errors are reported there
  }
  return applyOnResolvedTarget(
      *resolver_, spec, persist,
      [this](const v1::FaultSpec& resolvedSpec, const ResolvedNetworkTarget& resolved,
             const PersistUndo& persistResolved) -> tl::expected<std::unique_ptr<AppliedFault>, FaultError> {
        v1::FaultSpec concrete = resolvedSpec;
        // tbf drops every packet larger than its burst: keep the burst at least one full-size
        // packet of the interface (MTU + the 14-byte Ethernet header), so a bandwidth limit never
        // becomes a partition for big packets (jumbo frames, lo's 65536).
        if (concrete.kind_case() == v1::FaultSpec::kNetworkBandwidth) {
          if (auto mtu = kernel::interfaceMtu(resolved.netns, resolved.interface)) {
            constexpr uint32_t kLinkHeaderBytes = 14;
            const uint32_t needed = *mtu + kLinkHeaderBytes;
            auto* b = concrete.mutable_network_bandwidth();
            if (b->burst_bytes() == 0 && bandwidthParams(*b).burstBytes < needed) {
              b->set_burst_bytes(needed);
            } else if (b->burst_bytes() != 0 && b->burst_bytes() < needed) {
              return tl::unexpected(faultError(
                  std::make_error_code(std::errc::invalid_argument),
                  fmt::format("network.bandwidth on {}: burst {}B is smaller than a full-size packet there (MTU {} + "
                              "{} B link header = {} B): tbf would drop every such packet; accepted: burst of at "
                              "least {}b, or leave burst out (the agent then sizes it); nothing was changed",
                              resolved.interface, b->burst_bytes(), *mtu, kLinkHeaderBytes, needed, needed)));
            }
          }  // MTU unknown (no such interface): apply reports that in its own words
        }
        return applyResolved(concrete, persistResolved);
      });
}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> NetworkFaultDriver::applyResolved(const v1::FaultSpec& spec,
                                                                                          const PersistUndo& persist) {
  if (auto valid = validateFaultSpec(spec); !valid) {
    const auto name = faultKindName(spec);
    return tl::unexpected(faultError(std::make_error_code(std::errc::invalid_argument),
                                     fmt::format("{}: invalid field '{}': {}", name.empty() ? "fault" : name,
                                                 valid.error().field, valid.error().message)));
  }
  // netem reorders delayed packets whenever the jitter gives one a shorter delay than the one
  // before it (its tfifo sends by time); only with a rate does it time each packet from the one
  // before it, which keeps them in order.
  if (spec.has_network_delay() && spec.network_delay().keep_order() && spec.network_delay().rate_bps() == 0) {
    return tl::unexpected(faultError(
        std::make_error_code(std::errc::not_supported),
        "network.delay: keepOrder needs a rate with netem: netem reorders packets whose jitter gives them a shorter "
        "delay than the one before, and keeps them in order only when it paces them (rate); accepted: keepOrder with "
        "a rate, or the userspace driver (--network-driver nfqueue), which keeps each flow in order, or leave "
        "keepOrder out"));
  }
  auto plan = planFor(spec, exempt_);
  if (!plan) {
    return tl::unexpected(plan.error());
  }
  auto table = open_(plan->netns);
  if (!table) {
    return tl::unexpected(
        faultError(table.error(), openErrorText(*plan, "cannot open the network namespace", table.error())));
  }
  // The undo record, read before anything changes.
  auto before = (*table)->root(plan->interface);
  if (!before) {
    return tl::unexpected(
        faultError(before.error(), tableErrorText(*plan, "cannot read the root qdisc", before.error())));
  }
  std::vector<TcObject> below;  // the tree below the interface's root, saved for egress and both
  if (plan->egress) {
    if (*before && isFaultlineHandle((*before)->handle)) {
      return tl::unexpected(faultError(
          std::make_error_code(std::errc::file_exists),
          fmt::format("{}: interface {} already carries a faultline fault ({}); one network fault per interface; if "
                      "no faultline run holds it (e.g. after an agent was killed), start that agent again or run "
                      "`faultline-agent revert-all`: both put back the root saved in the journal (deleting it by "
                      "hand, `{}`, leaves the kernel's default root instead)",
                      context(*plan), plan->interface, qdiscText(*before), deleteRootCommand(*plan))));
    }
    // The interface's own egress tree (the ifb of ingress is faultline's own: nothing to save).
    auto dumped = (*table)->dumpTree(plan->interface);
    if (!dumped) {
      return tl::unexpected(faultError(
          dumped.error(), tableErrorText(*plan, "cannot read the tree below the root qdisc", dumped.error())));
    }
    if (auto why = cannotRestore(*plan, *before, *dumped)) {
      return tl::unexpected(faultError(std::make_error_code(std::errc::not_supported),
                                       fmt::format("{}: {}; nothing was changed", context(*plan), *why)));
    }
    below = std::move(*dumped);
  }
  if (plan->ingress) {
    auto index = (*table)->interfaceIndex(plan->interface);
    if (!index) {
      return tl::unexpected(
          faultError(index.error(), tableErrorText(*plan, "cannot read the interface index", index.error())));
    }
    plan->ifb = ifbName(*index);
    auto links = (*table)->links();
    if (!links) {
      return tl::unexpected(
          faultError(links.error(), tableErrorText(*plan, "cannot list the interfaces", links.error())));
    }
    if (auto leftover =
            std::find_if(links->begin(), links->end(), [&](const kernel::LinkInfo& l) { return l.name == plan->ifb; });
        leftover != links->end()) {
      // The hint names the ingress qdisc only when its filters redirect to that ifb: another tool's
      // ingress qdisc is not faultline's to suggest deleting.
      auto filters = (*table)->ingressFilters(plan->interface);
      const bool redirected =
          filters && std::any_of(filters->begin(), filters->end(), [&](const kernel::IngressFilter& f) {
            return std::find(f.redirects.begin(), f.redirects.end(), leftover->index) != f.redirects.end();
          });
      const std::string remove =
          redirected
              ? fmt::format("`{}` and `{}`",
                            inNamespace(plan->netns, fmt::format("tc qdisc del dev {} ingress", plan->interface)),
                            inNamespace(plan->netns, fmt::format("ip link del {}", plan->ifb)))
              : fmt::format("`{}`", inNamespace(plan->netns, fmt::format("ip link del {}", plan->ifb)));
      return tl::unexpected(faultError(
          std::make_error_code(std::errc::file_exists),
          fmt::format("{}: the ifb device {} (faultline's ingress path of {}) exists already: one network fault per "
                      "interface and direction; if no faultline run holds it, remove it with {}, or every "
                      "faultline leftover on this host with `faultline-agent revert-all`; nothing was changed",
                      context(*plan), plan->ifb, plan->interface, remove)));
    }
    auto ingress = (*table)->ingressQdisc(plan->interface);
    if (!ingress) {
      return tl::unexpected(
          faultError(ingress.error(), tableErrorText(*plan, "cannot read the ingress qdisc", ingress.error())));
    }
    if (*ingress) {
      return tl::unexpected(faultError(
          std::make_error_code(std::errc::device_or_resource_busy),
          fmt::format("{}: interface {} already has {} {} qdisc (handle {}) that is not faultline's; faultline "
                      "does not share an interface's ingress with another tool, so direction {} is refused there; "
                      "nothing was changed",
                      context(*plan), plan->interface, (*ingress)->kind == "ingress" ? "an" : "a", (*ingress)->kind,
                      handleText((*ingress)->handle), directionText(*plan))));
    }
  }
  if (persist) {
    if (auto persisted = persist(undoRecord(*plan, *before, below)); !persisted) {
      return tl::unexpected(
          FaultError{persisted.error().code, fmt::format("{}: cannot journal the undo record, nothing was changed: {}",
                                                         context(*plan), persisted.error().message)});
    }
  }
  if (plan->egress) {
    if (auto installed = installRoot(**table, *plan, *before, below); !installed) {
      return tl::unexpected(installed.error());
    }
  }
  if (plan->ingress) {
    if (auto built = buildIngress(**table, *plan); !built) {
      FaultError error = built.error();
      if (plan->egress) {
        if (auto undone = undo(**table, plan->interface, *before); !undone) {
          error.message += fmt::format(" (and putting back the egress root qdisc {} failed: {})", qdiscText(*before),
                                       undone.error().message());
          error.mayBeChanged = true;
        } else if (auto rest = *before ? restoreBelow(**table, plan->interface, **before, below)
                                       : tl::expected<void, std::pair<std::error_code, std::string>>{};
                   !rest) {
          error.message += fmt::format(" (the egress root qdisc {} was put back, but {}: {})", qdiscText(*before),
                                       rest.error().second, rest.error().first.message());
          error.mayBeChanged = true;
        } else {
          error.message += fmt::format("; the egress root qdisc {} was put back", qdiscText(*before));
        }
      }
      return tl::unexpected(std::move(error));
    }
  }
  return std::make_unique<AppliedNetworkFault>(open_, std::move(*plan), std::move(*before), std::move(below));
}

}  // namespace faultline::agent
