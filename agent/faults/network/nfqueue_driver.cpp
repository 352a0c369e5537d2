#include "agent/faults/network/nfqueue_driver.h"

#include <algorithm>
#include <random>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/route.h"

namespace faultline::agent {

namespace {

using kernel::SteeringBackend;
using kernel::SteeringRules;

constexpr std::string_view kDriverName = "nfqueue";

FaultError faultError(std::error_code code, std::string message) {
  return FaultError{code, std::move(message)};
}

std::error_code errc(std::errc e) {
  return std::make_error_code(e);
}

std::string where(const std::string& netns) {
  return netns.empty() ? "the agent's network namespace" : netns;
}

std::string_view directionName(bool egress, bool ingress) {
  return ingress ? (egress ? "both" : "ingress") : "egress";
}

std::string ms(const google::protobuf::Duration& d) {
  const double value = static_cast<double>(d.seconds()) * 1e3 + static_cast<double>(d.nanos()) / 1e6;
  return fmt::format("{:g}ms", value);
}

std::string withCorrelation(double percent, double correlation) {
  return correlation > 0 ? fmt::format("{:g}% (correlation {:g}%)", percent, correlation)
                         : fmt::format("{:g}%", percent);
}

// What the fault does, in tc-netem(8)'s words.
std::string impairmentText(const v1::FaultSpec& spec) {
  switch (spec.kind_case()) {
    case v1::FaultSpec::kNetworkDelay: {
      const auto& d = spec.network_delay();
      std::string text = "delay " + ms(d.delay());
      if (d.has_jitter() && (d.jitter().seconds() != 0 || d.jitter().nanos() != 0)) {
        text += " jitter " + ms(d.jitter());
      }
      if (d.correlation() > 0) {
        text += fmt::format(" correlation {:g}%", d.correlation());
      }
      if (d.keep_order()) {
        text += ", each flow kept in order";
      }
      return text;
    }
    case v1::FaultSpec::kNetworkLoss: {
      const auto& l = spec.network_loss();
      if (l.has_gilbert_elliott()) {
        const auto& ge = l.gilbert_elliott();
        return fmt::format("loss gemodel p {:g}% r {:g}% 1-h {:g}% 1-k {:g}%", ge.p(), ge.r(), ge.bad_loss(),
                           ge.good_loss());
      }
      return "loss " + withCorrelation(l.percent(), l.correlation());
    }
    case v1::FaultSpec::kNetworkDuplicate:
      return "duplicate " + withCorrelation(spec.network_duplicate().percent(), spec.network_duplicate().correlation());
    case v1::FaultSpec::kNetworkCorrupt:
      return "corrupt " + withCorrelation(spec.network_corrupt().percent(), spec.network_corrupt().correlation());
    case v1::FaultSpec::kNetworkReorder: {
      const auto& o = spec.network_reorder();
      return fmt::format("delay {} reorder {}{}", ms(o.delay()), withCorrelation(o.percent(), o.correlation()),
                         o.gap() > 0 ? fmt::format(" gap {}", o.gap()) : "");
    }
    case v1::FaultSpec::kNetworkPartition:
      return "partition (every packet dropped in the queue)";
    default:
      return std::string(faultKindName(spec));
  }
}

// The namespace's identity for the one-fault-per-interface rule: two paths may name one namespace.
std::string namespaceKey(const std::string& netns) {
  if (netns.empty()) {
    return "";
  }
  if (auto id = netnsIdentity(netns)) {
    return fmt::format("{}:{}", id->dev, id->ino);
  }
  return netns;
}

std::string ruleNames(SteeringBackend backend, uint16_t slot) {
  return backend == SteeringBackend::kNftables
             ? fmt::format("nftables table inet {}{}", kernel::kNftTablePrefix, slot)
             : fmt::format("xtables chains mangle {}{}", kernel::kXtChainPrefix, slot);
}

std::string countersText(const QueueStats& s) {
  return fmt::format(
             "{} packets through the queue: {} accepted, {} dropped, {} over the limit, {} duplicated, {} "
             "corrupted, {} reordered",
             s.received, s.accepted, s.dropped, s.overLimit, s.duplicated, s.corrupted, s.reordered) +
         (s.keptInOrder == 0
              ? std::string()
              : fmt::format(", {} held behind an earlier packet of their flow (keepOrder)", s.keptInOrder)) +
         (s.sendFailed == 0 ? std::string()
                            : fmt::format(", {} held egress packets lost (the raw socket refused them)", s.sendFailed));
}

class AppliedUserspaceFault final : public AppliedFault {
 public:
  AppliedUserspaceFault(SteeringOpener open, std::shared_ptr<NfqueueFaultDriver::Holding> holding,
                        std::tuple<std::string, std::string, int> key, std::string netns, SteeringBackend backend,
                        uint16_t slot, std::unique_ptr<PacketQueue> queue, std::string context, std::string what,
                        std::optional<kernel::SlotState> installed, std::shared_ptr<SteeringWatchdog> watchdog,
                        std::shared_ptr<QueueTally> tally)
      : open_(std::move(open)),
        holding_(std::move(holding)),
        key_(std::move(key)),
        netns_(std::move(netns)),
        backend_(backend),
        slot_(slot),
        queue_(std::move(queue)),
        context_(std::move(context)),
        what_(std::move(what)),
        installed_(std::move(installed)),
        watchdog_(std::move(watchdog)),
        tally_(std::move(tally)) {
    if (queue_ && tally_) {
      tally_->add(queue_.get());
    }
  }

  ~AppliedUserspaceFault() override {
    // An agent that drops a fault without reverting it (it never does) must not leave packets held.
    if (queue_) {
      queue_->stop();
      if (tally_) {
        tally_->remove(queue_.get());
      }
    }
    release();
  }

  tl::expected<void, FaultError> revert() override {
    if (reverted_) {
      return {};
    }
    // The rules first: no new packet reaches the queue; then the held ones go.
    if (!rulesRemoved_) {
      auto steering = open_(backend_, netns_);
      if (!steering && !netns_.empty() &&
          (steering.error() == std::errc::no_such_file_or_directory ||
           steering.error() == std::errc::invalid_argument)) {
        outcome_ = fmt::format("network namespace {} no longer exists; nothing to revert", netns_);
      } else if (!steering) {
        return tl::unexpected(faultError(steering.error(), fmt::format("{}: revert: cannot open the {} in {}: {}",
                                                                       what_, kernel::steeringBackendName(backend_),
                                                                       where(netns_), steering.error().message())));
      } else if (auto removed = (*steering)->remove(slot_); !removed) {
        return tl::unexpected(
            faultError(removed.error().first, fmt::format("{}: revert: cannot remove the {}: {}", what_,
                                                          ruleNames(backend_, slot_), removed.error().second)));
      } else if (removed->left.empty()) {
        outcome_ = ruleNames(backend_, slot_) + " removed";
      } else {
        outcome_ = fmt::format("{} removed but for what other rules use: {}", ruleNames(backend_, slot_),
                               fmt::join(removed->left, "; "));
      }
      rulesRemoved_ = true;
      if (watchdog_) {
        watchdog_->untrack(netns_, backend_, slot_);
        watchdog_.reset();
      }
    }
    if (queue_) {
      queue_->stop();
      outcome_ += "; " + countersText(queue_->stats());
      if (tally_) {
        tally_->remove(queue_.get());
      }
      queue_.reset();
    }
    reverted_ = true;
    release();
    return {};
  }

  // Reads the slot back (nfqueue_driver.h, "lost()"): its table or chains, their jump rules and
  // rules as installed, and its queue bound and read. A read error or a namespace that is gone is
  // not a loss (revert() says what it finds).
  std::optional<std::string> lost() const override {
    if (reverted_ || rulesRemoved_ || !installed_) {
      return std::nullopt;
    }
    auto steering = open_(backend_, netns_);
    if (!steering) {
      return std::nullopt;
    }
    auto now = (*steering)->inspect(slot_);
    if (!now) {
      return std::nullopt;
    }
    std::vector<std::string> changes = kernel::steeringChanges(*installed_, *now);
    if (queue_) {
      const uint16_t queue = static_cast<uint16_t>(kernel::kQueueBase + slot_);
      const QueueStats stats = queue_->stats();
      if (!now->queue.bound) {
        changes.push_back(fmt::format(
            "queue {} is no longer bound in {} (nobody serves it): its packets pass unimpaired", queue, where(netns_)));
        unreadBefore_ = false;
      } else {
        // Packets wait in the kernel that the queue's thread has not read (it holds fewer than
        // the kernel counts), at two checks in a row, and it read nothing in between. Held egress
        // packets are copies (the kernel's are freed at once): counted by the queue only, they
        // make this check later, never wrong.
        const bool unread = now->queue.waiting > stats.held;
        if (unread && unreadBefore_ && stats.received == receivedBefore_) {
          changes.push_back(fmt::format(
              "queue {} is not served: {} packets wait in the kernel and the agent's queue thread has read none since "
              "the last check (it stopped or hangs)",
              queue, now->queue.waiting - stats.held));
        }
        unreadBefore_ = unread;
        receivedBefore_ = stats.received;
      }
    }
    if (changes.empty()) {
      return std::nullopt;
    }
    return fmt::format("{}: the fault is no longer in place: {}", context_, fmt::join(changes, "; "));
  }

  std::string describe() const override {
    std::string text = what_;
    if (!outcome_.empty()) {
      text += "; " + outcome_;
    }
    return text;
  }

 private:
  void release() {
    if (holding_) {
      std::lock_guard lock(holding_->mutex);
      holding_->held.erase(key_);
      holding_.reset();
    }
  }

  SteeringOpener open_;
  std::shared_ptr<NfqueueFaultDriver::Holding> holding_;
  std::tuple<std::string, std::string, int> key_;
  std::string netns_;
  SteeringBackend backend_;
  uint16_t slot_;
  std::unique_ptr<PacketQueue> queue_;
  std::string context_;
  std::string what_;
  std::optional<kernel::SlotState> installed_;  // read back right after install(); lost() compares
  std::shared_ptr<SteeringWatchdog> watchdog_;  // told when the rules go; the driver keeps it running
  std::shared_ptr<QueueTally> tally_;           // the driver's count of every queue's packets
  mutable bool unreadBefore_ = false;
  mutable uint64_t receivedBefore_ = 0;
  std::string outcome_;
  bool rulesRemoved_ = false;
  bool reverted_ = false;
};

}  // namespace

NfqueueFaultDriver::NfqueueFaultDriver(kernel::SteeringSupport support, SteeringOpener openSteering,
                                       QueueOpener openQueue)
    : support_(support), openSteering_(std::move(openSteering)), openQueue_(std::move(openQueue)) {}

NfqueueFaultDriver::~NfqueueFaultDriver() = default;

tl::expected<std::unique_ptr<AppliedFault>, FaultError> NfqueueFaultDriver::apply(const v1::FaultSpec& spec,
                                                                                  const PersistUndo& persist) {
  const v1::NetworkTarget* target = networkTarget(spec);
  if (resolver_ == nullptr || target == nullptr || !validateFaultSpec(spec)) {
    return applyResolved(spec, persist);  // validation errors are reported there
  }
  return applyOnResolvedTarget(
      *resolver_, spec, persist,
      [this](const v1::FaultSpec& concrete, const ResolvedNetworkTarget& resolved,
             const PersistUndo& persistResolved) -> tl::expected<std::unique_ptr<AppliedFault>, FaultError> {
        // Netfilter takes rules for any interface name: check it exists, or a typo would be a
        // fault that matches nothing.
        if (auto mtu = kernel::interfaceMtu(resolved.netns, resolved.interface); !mtu) {
          const bool missing = mtu.error() == std::errc::no_such_device;
          return tl::unexpected(faultError(
              mtu.error(), fmt::format("{}: {}; nothing was changed", faultKindName(concrete),
                                       missing ? fmt::format("interface {} does not exist in {}", resolved.interface,
                                                             where(resolved.netns))
                                               : fmt::format("cannot read interface {} in {}: {}", resolved.interface,
                                                             where(resolved.netns), mtu.error().message()))));
        }
        return applyResolved(concrete, persistResolved);
      });
}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> NfqueueFaultDriver::applyResolved(const v1::FaultSpec& spec,
                                                                                          const PersistUndo& persist) {
  const std::string kind(faultKindName(spec));
  if (auto valid = validateFaultSpec(spec); !valid) {
    return tl::unexpected(faultError(errc(std::errc::invalid_argument),
                                     fmt::format("{}: invalid field '{}': {}", kind.empty() ? "fault" : kind,
                                                 valid.error().field, valid.error().message)));
  }
  const v1::NetworkTarget* target = networkTarget(spec);
  if (target == nullptr || spec.kind_case() == v1::FaultSpec::kNetworkBandwidth) {
    return tl::unexpected(
        faultError(errc(std::errc::not_supported),
                   fmt::format("{} is not done by the userspace network driver; it does network.delay, network.loss, "
                               "network.duplicate, network.corrupt, network.reorder and network.partition",
                               kind.empty() ? "an empty spec" : kind)));
  }
  if (target->interface() == kDefaultRouteInterface || target->has_netns_process()) {
    return tl::unexpected(faultError(errc(std::errc::not_supported),
                                     fmt::format("{}: interface default and a namespace chosen by process need the "
                                                 "agent's target resolver; nothing was changed",
                                                 kind)));
  }
  const std::string& netns = target->netns();
  const std::string& interface = target->interface();
  const bool ingress = target->direction() == v1::DIRECTION_INGRESS || target->direction() == v1::DIRECTION_BOTH;
  const bool egress = target->direction() != v1::DIRECTION_INGRESS;
  const std::string what = fmt::format("{} on {} in {}, direction {}", impairmentText(spec), interface, where(netns),
                                       directionName(egress, ingress));
  const auto refuse = [&](std::errc code, const std::string& why) {
    return tl::unexpected(faultError(errc(code), fmt::format("{}: {}; nothing was changed", what, why)));
  };

  // What the rules do, and what the queue does.
  SteeringRules rules;
  rules.interface = interface;
  rules.egress = egress;
  rules.ingress = ingress;
  if (target->has_match()) {
    rules.match = target->match();
  }
  if (netns.empty()) {
    rules.exempt = exempt_;
  }
  std::optional<Impairment> impairment;
  tl::expected<SteeringBackend, std::string> backend = tl::unexpected(std::string());
  // Every fault goes through the queue, whose rules pass packets on (bypass) when the agent is
  // gone: a pure drop rule would keep dropping after the agent died (a blackhole until the next
  // start), and in the output hook it fails the sender's send() with EPERM, which netem does not.
  if (rules.verdict == SteeringRules::Verdict::kQueue) {
    if (spec.has_network_duplicate() && ingress) {
      return refuse(std::errc::invalid_argument,
                    "network.duplicate works on egress only with the userspace driver (a copy of a received packet "
                    "cannot be put back into the receive path from userspace); accepted: direction egress, or a "
                    "host with sch_netem");
    }
    if (spec.has_network_delay() && spec.network_delay().rate_bps() != 0) {
      return refuse(std::errc::not_supported,
                    fmt::format("network.delay's rate ({} bit/s) needs sch_netem: the userspace driver delays packets "
                                "but does not pace them; accepted: leave rate out and add a network.bandwidth fault "
                                "for the rate, or run on a kernel with sch_netem",
                                spec.network_delay().rate_bps()));
    }
    if (spec.has_network_partition()) {
      impairment = Impairment{};
      impairment->lossPercent = 100;
    } else {
      auto built = impairmentFromSpec(spec);
      if (!built) {
        return refuse(std::errc::invalid_argument, built.error());
      }
      impairment = std::move(*built);
    }
    if (!support_.nfqueue) {
      return refuse(std::errc::not_supported,
                    "the kernel has no nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE; `modprobe nfnetlink_queue`)");
    }
    backend = kernel::chooseBackend(support_, true);
  }
  if (!backend) {
    return refuse(std::errc::not_supported, backend.error());
  }

  // One fault of this driver per interface and direction.
  const int bits = (egress ? 1 : 0) | (ingress ? 2 : 0);
  const std::string nsKey = namespaceKey(netns);
  auto key = std::make_tuple(nsKey, interface, bits);
  {
    std::lock_guard lock(holding_->mutex);
    for (const auto& [ns, ifname, held] : holding_->held) {
      if (ns == nsKey && ifname == interface && (held & bits) != 0) {
        return refuse(std::errc::file_exists,
                      fmt::format("interface {} already carries a faultline userspace fault in direction {}; one "
                                  "network fault per interface and direction",
                                  interface, directionName((held & 1) != 0, (held & 2) != 0)));
      }
    }
  }

  // A free slot: none of faultline's tables or chains, in either backend, uses it.
  auto steering = openSteering_(*backend, netns);
  if (!steering) {
    return refuse(steering.error() == std::errc::no_such_file_or_directory ? std::errc::no_such_file_or_directory
                                                                           : std::errc::io_error,
                  fmt::format("cannot open the {} in {}: {}", kernel::steeringBackendName(*backend), where(netns),
                              steering.error().message()));
  }
  std::set<uint16_t> used;
  std::set<uint16_t> served;
  std::vector<std::pair<SteeringBackend, kernel::PacketSteering::Steered>> steered;
  for (const SteeringBackend b : {SteeringBackend::kNftables, SteeringBackend::kXtables}) {
    const bool present = b == SteeringBackend::kNftables ? support_.nftables : support_.xtables;
    if (!present) {
      continue;
    }
    std::unique_ptr<kernel::PacketSteering> other;
    kernel::PacketSteering* s = steering->get();
    if (b != *backend) {
      auto opened = openSteering_(b, netns);
      if (!opened) {
        continue;
      }
      other = std::move(*opened);
      s = other.get();
    }
    if (auto owned = s->owned()) {
      used.insert(owned->slots.begin(), owned->slots.end());
      served.insert(owned->served.begin(), owned->served.end());
      for (auto& one : owned->steered) {
        steered.emplace_back(b, std::move(one));
      }
    } else if (b == *backend) {
      return refuse(std::errc::io_error,
                    fmt::format("cannot list faultline's {} rules in {}: {}", kernel::steeringBackendName(b),
                                where(netns), owned.error().message()));
    }
  }
  // Another agent's fault (or a leftover of one that died) on this interface and direction.
  for (const auto& [b, other] : steered) {
    const int otherBits = (other.egress ? 1 : 0) | (other.ingress ? 2 : 0);
    if (other.interface != interface || (otherBits & bits) == 0) {
      continue;
    }
    const uint16_t otherQueue = static_cast<uint16_t>(kernel::kQueueBase + other.slot);
    return refuse(
        std::errc::file_exists,
        fmt::format(
            "interface {} already carries a faultline userspace fault in direction {}: the {} in {} steer it to "
            "queue {}, {}; one network fault per interface and direction",
            interface, directionName(other.egress, other.ingress), ruleNames(b, other.slot), where(netns), otherQueue,
            served.contains(other.slot)
                ? "which a running program serves (another faultline agent or run --local: end that fault first)"
                : "which nobody serves (a leftover of an agent that died: its next start, or `faultline-agent "
                  "revert-all`, removes it)"));
  }
  // A free slot: no table or chain of it, and its queue bound by no one (another agent's).
  uint16_t slot = 0;
  while (slot < kernel::kMaxSlots && (used.contains(slot) || served.contains(slot))) {
    ++slot;
  }
  if (slot == kernel::kMaxSlots) {
    return refuse(std::errc::resource_unavailable_try_again,
                  fmt::format("all {} of faultline's rule slots in {} are in use", kernel::kMaxSlots, where(netns)));
  }
  rules.slot = slot;
  rules.queue = static_cast<uint16_t>(kernel::kQueueBase + slot);

  if (persist) {
    nlohmann::json undo = {{"fault", kind},
                           {"driver", kDriverName},
                           {"netns", netns},
                           {"interface", interface},
                           {"direction", directionName(egress, ingress)},
                           {"backend", kernel::steeringBackendName(*backend)},
                           {"slot", slot}};
    if (impairment) {
      undo["queue"] = rules.queue;
    }
    if (auto persisted = persist(undo); !persisted) {
      return tl::unexpected(FaultError{
          persisted.error().code,
          fmt::format("{}: cannot journal the undo record, nothing was changed: {}", what, persisted.error().message)});
    }
  }
  {
    std::lock_guard lock(holding_->mutex);
    holding_->held.insert(key);
  }
  const auto unhold = [&] {
    std::lock_guard lock(holding_->mutex);
    holding_->held.erase(key);
  };
  // The queue before the rules: the first packet steered finds it bound.
  std::unique_ptr<PacketQueue> queue;
  if (impairment) {
    auto opened = openQueue_(netns, rules.queue, *impairment, rules.egress, std::random_device{}());
    if (!opened) {
      unhold();
      return tl::unexpected(faultError(opened.error().first, fmt::format("{}: cannot bind queue {}: {}; nothing was "
                                                                         "changed",
                                                                         what, rules.queue, opened.error().second)));
    }
    queue = std::move(*opened);
  }
  if (auto installed = (*steering)->install(rules); !installed) {
    if (queue) {
      queue->stop();
    }
    unhold();
    return tl::unexpected(
        faultError(installed.error().first, fmt::format("{}: cannot install the {}: {}; nothing was changed", what,
                                                        ruleNames(*backend, slot), installed.error().second)));
  }
  const std::string applied = fmt::format("{} (userspace: {}{})", what, ruleNames(*backend, slot),
                                          impairment ? fmt::format(", queue {}", rules.queue) : std::string());
  if (startWatchdog_ && !watchdog_ && !watchdogFailed_) {
    if (auto started = startWatchdog_()) {
      watchdog_ = std::move(*started);
    } else {
      watchdogFailed_ = true;  // said once; the faults go on without it
      spdlog::warn("userspace driver: {}; a stopped agent's faults stay until it runs again", started.error().second);
    }
  }
  if (watchdog_) {
    watchdog_->track(netns, *backend, slot, queue ? queue->netlinkFd() : -1);
  }
  // The reference for lost(); without it (a read error) the fault is not watched.
  std::optional<kernel::SlotState> installed;
  if (auto read = (*steering)->inspect(slot)) {
    installed = std::move(*read);
  }
  return std::make_unique<AppliedUserspaceFault>(openSteering_, holding_, key, netns, *backend, slot, std::move(queue),
                                                 fmt::format("{} on {} in {}", kind, interface, where(netns)), applied,
                                                 std::move(installed), watchdog_, tally_);
}

bool NfqueueFaultDriver::isNfqueueRecord(const nlohmann::json& undo) {
  return undo.is_object() && undo.contains("driver") && undo["driver"].is_string() &&
         undo["driver"].get<std::string>() == kDriverName;
}

tl::expected<std::string, FaultError> NfqueueFaultDriver::revertRecord(const nlohmann::json& undo,
                                                                       const SteeringOpener& open) {
  const auto unreadable = [&](const std::string& why) {
    FaultError e{errc(std::errc::invalid_argument), "undo record of the userspace driver cannot be read: " + why};
    e.permanent = true;
    return tl::unexpected(e);
  };
  if (!isNfqueueRecord(undo) || !undo.contains("backend") || !undo["backend"].is_string() || !undo.contains("slot") ||
      !undo["slot"].is_number_unsigned()) {
    return unreadable(undo.dump());
  }
  const std::string backendName = undo["backend"].get<std::string>();
  SteeringBackend backend;
  if (backendName == kernel::steeringBackendName(SteeringBackend::kNftables)) {
    backend = SteeringBackend::kNftables;
  } else if (backendName == kernel::steeringBackendName(SteeringBackend::kXtables)) {
    backend = SteeringBackend::kXtables;
  } else {
    return unreadable("backend " + backendName);
  }
  const uint64_t slot = undo["slot"].get<uint64_t>();
  if (slot >= kernel::kMaxSlots) {
    return unreadable(fmt::format("slot {}", slot));
  }
  const std::string netns = undo.contains("netns") && undo["netns"].is_string() ? undo["netns"].get<std::string>() : "";
  auto steering = open(backend, netns);
  if (!steering) {
    if (!netns.empty() &&
        (steering.error() == std::errc::no_such_file_or_directory || steering.error() == std::errc::invalid_argument)) {
      return fmt::format("network namespace {} no longer exists; nothing to revert", netns);
    }
    return tl::unexpected(faultError(steering.error(), fmt::format("cannot open the {} in {}: {}", backendName,
                                                                   where(netns), steering.error().message())));
  }
  const auto names = ruleNames(backend, static_cast<uint16_t>(slot));
  // This agent's queue died with it: a slot whose queue is bound is a running agent's (this
  // fault's rules went before the crash, and another agent took the slot since).
  if (auto owned = (*steering)->owned();
      owned && std::find(owned->served.begin(), owned->served.end(), slot) != owned->served.end()) {
    return fmt::format(
        "the {} in {} were left alone: their queue {} is served by a running program (another faultline agent's "
        "fault, not this record's)",
        names, where(netns), kernel::kQueueBase + slot);
  }
  auto removed = (*steering)->remove(static_cast<uint16_t>(slot));
  if (!removed) {
    return tl::unexpected(faultError(removed.error().first, fmt::format("cannot remove the {} in {}: {}", names,
                                                                        where(netns), removed.error().second)));
  }
  if (!removed->left.empty()) {
    return fmt::format("{} in {} removed but for what other rules use: {}", names, where(netns),
                       fmt::join(removed->left, "; "));
  }
  return fmt::format("{} in {} removed; the queue they fed closed when the agent that served it stopped", names,
                     where(netns));
}

SteeringSweep removeAllSteering(const std::string& netns, const SteeringOpener& open) {
  SteeringSweep sweep;
  for (const SteeringBackend backend : {SteeringBackend::kNftables, SteeringBackend::kXtables}) {
    auto steering = open(backend, netns);
    if (!steering) {
      continue;  // the backend, or the namespace, is not there
    }
    auto owned = (*steering)->owned();
    if (!owned) {
      if (owned.error() != std::errc::no_such_file_or_directory && owned.error() != std::errc::not_supported &&
          owned.error() != std::errc::protocol_not_supported) {
        sweep.failed.push_back(fmt::format("cannot list faultline's {} rules in {}: {}",
                                           kernel::steeringBackendName(backend), where(netns),
                                           owned.error().message()));
      }
      continue;
    }
    for (const uint16_t slot : owned->slots) {
      if (std::find(owned->served.begin(), owned->served.end(), slot) != owned->served.end()) {
        sweep.kept.push_back(fmt::format(
            "{} in {} left alone: its queue {} is served by a running program (a live faultline agent's fault: "
            "end it there, or stop that agent, whose stop reverts it)",
            ruleNames(backend, slot), where(netns), kernel::kQueueBase + slot));
        continue;
      }
      if (auto removed = (*steering)->remove(slot); !removed) {
        sweep.failed.push_back(
            fmt::format("{} in {}: {}", ruleNames(backend, slot), where(netns), removed.error().second));
      } else if (!removed->left.empty()) {
        sweep.kept.push_back(
            fmt::format("{} in {}: {}", ruleNames(backend, slot), where(netns), fmt::join(removed->left, "; ")));
      } else {
        sweep.removed.push_back(fmt::format("{} in {}", ruleNames(backend, slot), where(netns)));
      }
    }
    for (const auto& stray : owned->strays) {
      sweep.failed.push_back(
          fmt::format("{} in {} has faultline's prefix but no slot number; remove it by hand if "
                      "it is a leftover",
                      stray, where(netns)));
    }
  }
  return sweep;
}

}  // namespace faultline::agent
