// NfqueueFaultDriver's logic above the seams: which rules and queue each fault gets, the undo
// record, the one-fault-per-interface rule, roll-back on failure and the revert order, against
// in-memory steering and queues. The real rules and queue are tested in tests/kernel/.
#include <algorithm>
#include <map>
#include <memory>
#include <set>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "agent/faults/network/nfqueue_driver.h"
#include "agent/faults/spec.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;
using kernel::SteeringBackend;
using kernel::SteeringRules;

namespace {

const std::string kNetns = "/proc/4242/ns/net";

// Every namespace's installed rules by backend and slot, and a log of the calls, in order.
struct FakeNetfilter {
  std::map<std::tuple<SteeringBackend, std::string, uint16_t>, SteeringRules> installed;
  std::vector<std::string> calls;
  std::optional<std::pair<std::error_code, std::string>> failInstall;
  std::optional<std::error_code> failOpenQueue;
  int queuesOpen = 0;
  int queuesStopped = 0;
  std::optional<Impairment> lastImpairment;
  bool lastEgress = false;
  std::set<std::pair<std::string, uint16_t>> boundQueues;  // namespace and queue a (fake) program serves
  std::set<uint16_t> readNone;                             // bound queues whose packets wait unread (inspect's waiting)
  std::vector<std::string> leftByRemove;                   // remove()'s words of what stayed (foreign rules)
};

class FakeSteering final : public kernel::PacketSteering {
 public:
  FakeSteering(std::shared_ptr<FakeNetfilter> nf, SteeringBackend backend, std::string netns)
      : nf_(std::move(nf)), backend_(backend), netns_(std::move(netns)) {}
  tl::expected<void, std::pair<std::error_code, std::string>> install(const SteeringRules& rules) override {
    nf_->calls.push_back(fmt::format("install {} slot {}", kernel::steeringBackendName(backend_), rules.slot));
    if (nf_->failInstall) {
      return tl::unexpected(*std::exchange(nf_->failInstall, std::nullopt));
    }
    auto [it, added] = nf_->installed.try_emplace({backend_, netns_, rules.slot}, rules);
    if (!added) {
      return tl::unexpected(std::make_pair(std::make_error_code(std::errc::file_exists), std::string("exists")));
    }
    return {};
  }
  tl::expected<Removal, std::pair<std::error_code, std::string>> remove(uint16_t slot) override {
    nf_->calls.push_back(fmt::format("remove {} slot {}", kernel::steeringBackendName(backend_), slot));
    Removal removal{nf_->leftByRemove};
    if (removal.left.empty()) {
      nf_->installed.erase({backend_, netns_, slot});
    }
    return removal;
  }
  tl::expected<Owned, std::error_code> owned() override {
    Owned out;
    for (const auto& [key, rules] : nf_->installed) {
      if (std::get<0>(key) == backend_ && std::get<1>(key) == netns_) {
        out.slots.push_back(std::get<2>(key));
        out.steered.push_back(Steered{std::get<2>(key), rules.interface, rules.egress, rules.ingress});
      }
    }
    for (const auto& [netns, queue] : nf_->boundQueues) {
      if (netns == netns_) {
        out.served.push_back(static_cast<uint16_t>(queue - kernel::kQueueBase));
      }
    }
    return out;
  }
  // One part per direction, with the rules' interface in its name; the queue as boundQueues says.
  tl::expected<kernel::SlotState, std::error_code> inspect(uint16_t slot) override {
    kernel::SlotState state;
    auto it = nf_->installed.find({backend_, netns_, slot});
    if (it != nf_->installed.end()) {
      const auto& rules = it->second;
      state.parts.push_back({fmt::format("chain {}", slot), 3, rules.match.destination_cidrs_size() + 7u});
      if (rules.egress) {
        state.parts.push_back({"jump rule OUTPUT -o " + rules.interface, 1, 0});
      }
    }
    const auto queue = static_cast<uint16_t>(kernel::kQueueBase + slot);
    state.queue.bound = nf_->boundQueues.contains({netns_, queue});
    state.queue.waiting = nf_->readNone.contains(queue) ? 5 : 0;
    return state;
  }

 private:
  std::shared_ptr<FakeNetfilter> nf_;
  SteeringBackend backend_;
  std::string netns_;
};

// An opener of FakeSteering over nf, as kernel::openPacketSteering opens the real one.
SteeringOpener fakeOpener(const std::shared_ptr<FakeNetfilter>& nf) {
  return [nf](SteeringBackend backend,
              const std::string& netns) -> tl::expected<std::unique_ptr<kernel::PacketSteering>, std::error_code> {
    return std::make_unique<FakeSteering>(nf, backend, netns);
  };
}

class FakeQueue final : public PacketQueue {
 public:
  FakeQueue(std::shared_ptr<FakeNetfilter> nf, std::string netns, uint16_t queue)
      : nf_(std::move(nf)), queue_(std::move(netns), queue) {
    nf_->boundQueues.insert(queue_);
  }
  void stop() override {
    if (!stopped_) {
      stopped_ = true;
      nf_->boundQueues.erase(queue_);
      ++nf_->queuesStopped;
      nf_->calls.push_back("stop queue");
    }
  }
  QueueStats stats() const override {
    QueueStats s;
    s.received = 10;
    s.accepted = 7;
    s.dropped = 3;
    return s;
  }

 private:
  std::shared_ptr<FakeNetfilter> nf_;
  std::pair<std::string, uint16_t> queue_;
  bool stopped_ = false;
};

kernel::SteeringSupport xtablesOnly() {
  kernel::SteeringSupport s;
  s.nftables = true;  // as this machine: nftables without nft_queue
  s.nftNumgen = true;
  s.xtables = true;
  s.xtNfqueue = true;
  s.xtStatistic = true;
  s.nfqueue = true;
  return s;
}

struct Fixture {
  std::shared_ptr<FakeNetfilter> nf = std::make_shared<FakeNetfilter>();
  NfqueueFaultDriver driver{
      xtablesOnly(),
      [nf = nf](SteeringBackend backend,
                const std::string& netns) -> tl::expected<std::unique_ptr<kernel::PacketSteering>, std::error_code> {
        nf->calls.push_back(fmt::format("open {}", kernel::steeringBackendName(backend)));
        return std::make_unique<FakeSteering>(nf, backend, netns);
      },
      [nf = nf](const std::string& netns, uint16_t queue, Impairment impairment, bool egress, uint64_t /*seed*/)
          -> tl::expected<std::unique_ptr<PacketQueue>, std::pair<std::error_code, std::string>> {
        nf->calls.push_back(fmt::format("open queue {}", queue));
        if (nf->failOpenQueue) {
          return tl::unexpected(
              std::make_pair(*std::exchange(nf->failOpenQueue, std::nullopt), std::string("bound by another program")));
        }
        ++nf->queuesOpen;
        nf->lastImpairment = impairment;
        nf->lastEgress = egress;
        return std::make_unique<FakeQueue>(nf, netns, queue);
      }};

  [[nodiscard]] bool called(const std::string& call) const {
    return std::find(nf->calls.begin(), nf->calls.end(), call) != nf->calls.end();
  }
  [[nodiscard]] size_t position(const std::string& call) const {
    return static_cast<size_t>(std::find(nf->calls.begin(), nf->calls.end(), call) - nf->calls.begin());
  }
};

v1::NetworkTarget* targetOf(v1::FaultSpec& spec) {
  return const_cast<v1::NetworkTarget*>(networkTarget(spec));
}

v1::FaultSpec delaySpec(v1::Direction direction = v1::DIRECTION_EGRESS) {
  v1::FaultSpec spec;
  auto* d = spec.mutable_network_delay();
  d->mutable_target()->set_interface("veth0");
  d->mutable_target()->set_netns(kNetns);
  d->mutable_target()->set_direction(direction);
  *d->mutable_delay() = toProto(100ms);
  *d->mutable_jitter() = toProto(10ms);
  return spec;
}

v1::FaultSpec lossSpec(double percent, double correlation) {
  v1::FaultSpec spec;
  auto* l = spec.mutable_network_loss();
  l->mutable_target()->set_interface("veth0");
  l->mutable_target()->set_netns(kNetns);
  l->set_percent(percent);
  l->set_correlation(correlation);
  return spec;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "nfqueue driver: a delay binds the slot's queue, then steers to it; revert undoes both") {
  nlohmann::json record;
  auto applied = driver.apply(delaySpec(), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
    record = r;
    return {};
  });
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  // The journal first, then the queue, then the rules (the first packet steered finds it bound).
  CHECK(record["driver"] == "nfqueue");
  CHECK(record["backend"] == "xtables");  // no nft_queue here
  CHECK(record["slot"] == 0);
  CHECK(record["queue"] == kernel::kQueueBase);
  CHECK(record["interface"] == "veth0");
  CHECK(record["direction"] == "egress");
  CHECK(position("open queue 64000") < position("install xtables slot 0"));
  const auto& rules = nf->installed.at({SteeringBackend::kXtables, kNetns, 0});
  CHECK(rules.verdict == SteeringRules::Verdict::kQueue);
  CHECK(rules.queue == kernel::kQueueBase);
  CHECK(rules.interface == "veth0");
  CHECK(rules.egress);
  CHECK_FALSE(rules.ingress);
  CHECK(nf->lastEgress);  // the queue may send egress packets itself (orphaned, held ones)
  REQUIRE(nf->lastImpairment.has_value());
  CHECK(nf->lastImpairment->delay == 100ms);
  CHECK(nf->lastImpairment->jitter == 10ms);
  CHECK(contains((*applied)->describe(), "delay 100ms jitter 10ms on veth0"));
  CHECK(contains((*applied)->describe(), "(userspace: xtables chains mangle FAULTLINE-0, queue 64000)"));
  REQUIRE((*applied)->revert().has_value());
  // The rules first (nothing new reaches the queue), then the held packets go.
  CHECK(position("remove xtables slot 0") < position("stop queue"));
  CHECK(nf->installed.empty());
  CHECK(nf->queuesStopped == 1);
  CHECK(contains((*applied)->describe(), "10 packets through the queue: 7 accepted, 3 dropped"));
  REQUIRE((*applied)->revert().has_value());  // again: nothing to do
  CHECK(nf->queuesStopped == 1);
}

TEST_CASE_FIXTURE(Fixture, "nfqueue driver: the queue tally counts live queues and keeps ended ones (metrics)") {
  const auto tally = driver.queueTally();
  CHECK(tally->total().received == 0);
  auto first = driver.apply(delaySpec(v1::DIRECTION_EGRESS),
                            [](const nlohmann::json&) -> tl::expected<void, FaultError> { return {}; });
  REQUIRE(first.has_value());
  auto second = driver.apply(delaySpec(v1::DIRECTION_INGRESS),
                             [](const nlohmann::json&) -> tl::expected<void, FaultError> { return {}; });
  REQUIRE_MESSAGE(second.has_value(), (second ? "" : second.error().message));
  CHECK(tally->total().received == 20);  // two live queues of 10
  CHECK(tally->total().accepted == 14);
  REQUIRE((*first)->revert().has_value());
  CHECK(tally->total().received == 20);  // the ended one is kept
  CHECK(tally->total().dropped == 6);
  second->reset();  // dropped without a revert: its counts are kept too
  CHECK(tally->total().received == 20);
  CHECK(tally->total().held == 0);
  first->reset();
  CHECK(tally->total().accepted == 14);
}

TEST_CASE_FIXTURE(Fixture, "nfqueue driver: partition and loss go through the queue too (no rule outlives the agent)") {
  v1::FaultSpec partition;
  partition.mutable_network_partition()->mutable_target()->set_interface("veth0");
  partition.mutable_network_partition()->mutable_target()->set_netns(kNetns);
  partition.mutable_network_partition()->mutable_target()->set_direction(v1::DIRECTION_BOTH);
  auto both = driver.apply(partition);
  REQUIRE_MESSAGE(both.has_value(), (both ? "" : both.error().message));
  CHECK(nf->queuesOpen == 1);
  CHECK(nf->lastImpairment->lossPercent == doctest::Approx(100));
  const auto& rules = nf->installed.at({SteeringBackend::kXtables, kNetns, 0});
  CHECK(rules.verdict == SteeringRules::Verdict::kQueue);
  CHECK(rules.egress);
  CHECK(rules.ingress);
  REQUIRE((*both)->revert().has_value());

  auto ingressLoss = lossSpec(30, 0);
  targetOf(ingressLoss)->set_direction(v1::DIRECTION_INGRESS);
  auto plain = driver.apply(ingressLoss);
  REQUIRE_MESSAGE(plain.has_value(), (plain ? "" : plain.error().message));
  CHECK(nf->queuesOpen == 2);
  CHECK_FALSE(nf->lastEgress);
  CHECK(nf->installed.at({SteeringBackend::kXtables, kNetns, 0}).verdict == SteeringRules::Verdict::kQueue);
  CHECK(nf->lastImpairment->lossPercent == doctest::Approx(30));
  REQUIRE((*plain)->revert().has_value());

  auto correlated = driver.apply(lossSpec(30, 25));
  REQUIRE_MESSAGE(correlated.has_value(), (correlated ? "" : correlated.error().message));
  CHECK(nf->queuesOpen == 3);
  CHECK(nf->lastImpairment->lossCorrelation == doctest::Approx(25));
  REQUIRE((*correlated)->revert().has_value());
}

TEST_CASE_FIXTURE(Fixture, "nfqueue driver: one fault per interface and direction; slots taken are skipped") {
  auto first = driver.apply(delaySpec(v1::DIRECTION_EGRESS));
  REQUIRE(first.has_value());
  auto second = driver.apply(delaySpec(v1::DIRECTION_EGRESS));
  REQUIRE_FALSE(second.has_value());
  CHECK(second.error().code == std::errc::file_exists);
  CHECK_MESSAGE(contains(second.error().message, "already carries a faultline userspace fault in direction egress"),
                second.error().message);
  CHECK(nf->queuesOpen == 1);
  // The other direction is free; it gets the next slot and queue.
  auto ingress = driver.apply(delaySpec(v1::DIRECTION_INGRESS));
  REQUIRE_MESSAGE(ingress.has_value(), (ingress ? "" : ingress.error().message));
  CHECK(nf->installed.contains({SteeringBackend::kXtables, kNetns, 1}));
  CHECK(nf->installed.at({SteeringBackend::kXtables, kNetns, 1}).queue == kernel::kQueueBase + 1);
  REQUIRE((*first)->revert().has_value());
  REQUIRE((*ingress)->revert().has_value());
  // After the revert the interface is free again.
  auto again = driver.apply(delaySpec(v1::DIRECTION_EGRESS));
  REQUIRE_MESSAGE(again.has_value(), (again ? "" : again.error().message));
  REQUIRE((*again)->revert().has_value());
}

TEST_CASE_FIXTURE(Fixture, "nfqueue driver: a failure half-way leaves nothing bound, held or installed") {
  SUBCASE("the rules cannot be installed: the queue is unbound") {
    nf->failInstall = std::make_pair(std::make_error_code(std::errc::operation_not_supported),
                                     std::string("the kernel lacks the NFQUEUE target"));
    auto failed = driver.apply(delaySpec());
    REQUIRE_FALSE(failed.has_value());
    CHECK(failed.error().code == std::errc::operation_not_supported);
    CHECK_MESSAGE(contains(failed.error().message, "the kernel lacks the NFQUEUE target; nothing was changed"),
                  failed.error().message);
    CHECK(nf->queuesStopped == 1);
  }
  SUBCASE("the queue cannot be bound: no rule is installed") {
    nf->failOpenQueue = std::make_error_code(std::errc::device_or_resource_busy);
    auto failed = driver.apply(delaySpec());
    REQUIRE_FALSE(failed.has_value());
    CHECK(failed.error().code == std::errc::device_or_resource_busy);
    CHECK_MESSAGE(contains(failed.error().message, "cannot bind queue 64000: bound by another program"),
                  failed.error().message);
    CHECK_FALSE(called("install xtables slot 0"));
  }
  SUBCASE("the journal cannot be written: nothing is touched") {
    auto failed = driver.apply(delaySpec(), [](const nlohmann::json&) -> tl::expected<void, FaultError> {
      return tl::unexpected(FaultError{std::make_error_code(std::errc::no_space_on_device), "disk full"});
    });
    REQUIRE_FALSE(failed.has_value());
    CHECK(nf->queuesOpen == 0);
    CHECK_FALSE(called("install xtables slot 0"));
  }
  CHECK(nf->installed.empty());
  // The interface is not held by the failed fault.
  auto next = driver.apply(delaySpec());
  REQUIRE_MESSAGE(next.has_value(), (next ? "" : next.error().message));
  REQUIRE((*next)->revert().has_value());
}

TEST_CASE_FIXTURE(Fixture, "nfqueue driver: what it does not do is refused before any change, naming why") {
  SUBCASE("duplicate on ingress") {
    v1::FaultSpec spec;
    auto* d = spec.mutable_network_duplicate();
    d->mutable_target()->set_interface("veth0");
    d->mutable_target()->set_netns(kNetns);
    d->mutable_target()->set_direction(v1::DIRECTION_INGRESS);
    d->set_percent(10);
    auto refused = driver.apply(spec);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == std::errc::invalid_argument);
    CHECK_MESSAGE(contains(refused.error().message, "works on egress only"), refused.error().message);
  }
  SUBCASE("bandwidth is tc's") {
    v1::FaultSpec spec;
    spec.mutable_network_bandwidth()->mutable_target()->set_interface("veth0");
    spec.mutable_network_bandwidth()->set_rate_bps(1'000'000);
    auto refused = driver.apply(spec);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == std::errc::not_supported);
  }
  SUBCASE("a delay's rate: named as the file names it, with what to do") {
    auto spec = delaySpec();
    spec.mutable_network_delay()->set_rate_bps(10'000'000);
    auto refused = driver.apply(spec);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == std::errc::not_supported);
    const std::string& message = refused.error().message;
    CHECK_MESSAGE(contains(message, "network.delay's rate (10000000 bit/s) needs sch_netem"), message);
    CHECK_MESSAGE(contains(message, "add a network.bandwidth fault"), message);
    CHECK_MESSAGE(contains(message, "a kernel with sch_netem"), message);
    CHECK_FALSE(contains(message, "rate_bps"));
  }
  SUBCASE("an invalid spec") {
    auto spec = delaySpec();
    *spec.mutable_network_delay()->mutable_jitter() = toProto(200ms);  // > delay
    auto refused = driver.apply(spec);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == std::errc::invalid_argument);
  }
  SUBCASE("interface default without a resolver") {
    auto spec = delaySpec();
    targetOf(spec)->set_interface("default");
    auto refused = driver.apply(spec);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == std::errc::not_supported);
  }
  CHECK(nf->calls.empty());
}

TEST_CASE("nfqueue driver: a kernel without nfnetlink_queue refuses queued faults, naming the module") {
  auto nf = std::make_shared<FakeNetfilter>();
  kernel::SteeringSupport none = xtablesOnly();
  none.nfqueue = false;
  NfqueueFaultDriver driver{none, fakeOpener(nf), nullptr};
  auto refused = driver.apply(delaySpec());
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == std::errc::not_supported);
  CHECK_MESSAGE(contains(refused.error().message, "CONFIG_NETFILTER_NETLINK_QUEUE"), refused.error().message);
  CHECK(nf->installed.empty());
}

TEST_CASE_FIXTURE(Fixture, "nfqueue driver: the agent's own namespace exempts the controller; others do not") {
  Endpoint controller;
  controller.address = *parseCidr("10.0.0.9/32");
  controller.port = 7443;
  driver.setExempt({controller});
  auto own = delaySpec();
  targetOf(own)->set_netns("");
  auto a = driver.apply(own);
  REQUIRE_MESSAGE(a.has_value(), (a ? "" : a.error().message));
  REQUIRE(nf->installed.at({SteeringBackend::kXtables, "", 0}).exempt.size() == 1);
  CHECK(nf->installed.at({SteeringBackend::kXtables, "", 0}).exempt[0].port == 7443);
  auto b = driver.apply(delaySpec());
  REQUIRE_MESSAGE(b.has_value(), (b ? "" : b.error().message));
  CHECK(nf->installed.at({SteeringBackend::kXtables, kNetns, 0}).exempt.empty());
  REQUIRE((*a)->revert().has_value());
  REQUIRE((*b)->revert().has_value());
}

TEST_CASE_FIXTURE(Fixture, "nfqueue driver: crash recovery removes the record's rules; a bad record is permanent") {
  nlohmann::json record;
  auto applied = driver.apply(delaySpec(), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
    record = r;
    return {};
  });
  REQUIRE(applied.has_value());
  CHECK(NfqueueFaultDriver::isNfqueueRecord(record));
  const SteeringOpener open = fakeOpener(nf);
  nf->boundQueues.clear();  // the agent died: its queue went with its socket
  auto recovered = NfqueueFaultDriver::revertRecord(record, open);
  REQUIRE_MESSAGE(recovered.has_value(), (recovered ? "" : recovered.error().message));
  CHECK(*recovered ==
        "xtables chains mangle FAULTLINE-0 in /proc/4242/ns/net removed; the queue they fed closed when the agent that "
        "served it stopped");
  CHECK(nf->installed.empty());
  auto again = NfqueueFaultDriver::revertRecord(record, open);
  CHECK(again.has_value());
  record["slot"] = 9999;
  auto bad = NfqueueFaultDriver::revertRecord(record, open);
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error().permanent);
  record["slot"] = 0;
  record["backend"] = "ebtables";
  CHECK_FALSE(NfqueueFaultDriver::revertRecord(record, open).has_value());
  // The live fault's queue still goes on its revert.
  REQUIRE((*applied)->revert().has_value());
  CHECK(nf->queuesStopped == 1);
}

TEST_CASE("removeAllSteering: every slot of both backends in the namespace, nothing elsewhere") {
  auto nf = std::make_shared<FakeNetfilter>();
  const SteeringOpener open = fakeOpener(nf);
  nf->installed[{SteeringBackend::kXtables, kNetns, 0}] = {};
  nf->installed[{SteeringBackend::kNftables, kNetns, 3}] = {};
  nf->installed[{SteeringBackend::kXtables, "/run/netns/other", 1}] = {};
  auto sweep = removeAllSteering(kNetns, open);
  CHECK(sweep.failed.empty());
  REQUIRE(sweep.removed.size() == 2);
  CHECK(contains(sweep.removed[0], "nftables table inet faultline-3"));
  CHECK(contains(sweep.removed[1], "xtables chains mangle FAULTLINE-0"));
  CHECK(nf->installed.size() == 1);
}

TEST_CASE_FIXTURE(Fixture,
                  "nfqueue driver: what remove() leaves for a rule faultline did not add is in the revert's words, "
                  "revert-all's kept and recovery's words") {
  const std::string left = "the IPv4 chain FAULTLINE-0 was left in place, emptied of faultline's rules";
  auto applied = driver.apply(delaySpec());
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  nf->leftByRemove = {left};
  REQUIRE((*applied)->revert().has_value());
  CHECK(contains((*applied)->describe(),
                 "xtables chains mangle FAULTLINE-0 removed but for what other rules use: " + left));
  CHECK(nf->queuesStopped == 1);  // the queue goes all the same

  const SteeringOpener open = fakeOpener(nf);
  auto sweep = removeAllSteering(kNetns, open);
  CHECK(sweep.removed.empty());
  CHECK(sweep.failed.empty());
  REQUIRE(sweep.kept.size() == 1);
  CHECK(contains(sweep.kept[0], "xtables chains mangle FAULTLINE-0 in /proc/4242/ns/net: " + left));

  const nlohmann::json record{
      {"fault", "network.delay"}, {"driver", "nfqueue"},  {"netns", kNetns}, {"interface", "veth0"},
      {"direction", "egress"},    {"backend", "xtables"}, {"slot", 0U},      {"queue", kernel::kQueueBase}};
  auto recovered = NfqueueFaultDriver::revertRecord(record, open);
  REQUIRE_MESSAGE(recovered.has_value(), (recovered ? "" : recovered.error().message));
  CHECK(contains(*recovered, "removed but for what other rules use: " + left));
}

TEST_CASE_FIXTURE(Fixture, "nfqueue driver: lost() names rules deleted behind the agent's back") {
  auto applied = driver.apply(delaySpec());
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK_FALSE((*applied)->lost().has_value());
  CHECK_FALSE((*applied)->lost().has_value());
  SUBCASE("all of it") {
    nf->installed.clear();
    auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK_MESSAGE(contains(*lost,
                           "network.delay on veth0 in /proc/4242/ns/net: the fault is no longer in place: none "
                           "of its rules is left: chain 0, jump rule OUTPUT -o veth0 are gone"),
                  *lost);
  }
  SUBCASE("the rules changed") {
    nf->installed.at({SteeringBackend::kXtables, kNetns, 0}).match.add_destination_cidrs("10.0.0.0/8");
    auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK_MESSAGE(contains(*lost, "the rules of the chain 0 are not those installed (someone replaced them)"), *lost);
  }
  SUBCASE("the queue is unbound") {
    nf->boundQueues.clear();
    auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK_MESSAGE(contains(*lost, "queue 64000 is no longer bound in /proc/4242/ns/net (nobody serves it)"), *lost);
  }
  SUBCASE("the queue's packets wait unread: reported at the second check in a row") {
    nf->readNone.insert(kernel::kQueueBase);
    CHECK_FALSE((*applied)->lost().has_value());
    auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK_MESSAGE(contains(*lost, "queue 64000 is not served: 5 packets wait in the kernel"), *lost);
  }
  REQUIRE((*applied)->revert().has_value());
  CHECK_FALSE((*applied)->lost().has_value());
}

TEST_CASE_FIXTURE(Fixture,
                  "nfqueue driver: a second agent is refused the interface another steers; slots in use are "
                  "skipped") {
  // A second driver over the same netfilter stands for another agent on the host.
  NfqueueFaultDriver other{
      xtablesOnly(), fakeOpener(nf),
      [nf = nf](const std::string& netns, uint16_t queue, Impairment, bool,
                uint64_t) -> tl::expected<std::unique_ptr<PacketQueue>, std::pair<std::error_code, std::string>> {
        nf->calls.push_back(fmt::format("open queue {}", queue));
        return std::make_unique<FakeQueue>(nf, netns, queue);
      }};
  auto first = driver.apply(delaySpec(v1::DIRECTION_EGRESS));
  REQUIRE(first.has_value());
  const auto calls = nf->calls.size();
  auto clash = other.apply(delaySpec(v1::DIRECTION_EGRESS));
  REQUIRE_FALSE(clash.has_value());
  CHECK(clash.error().code == std::errc::file_exists);
  CHECK_MESSAGE(contains(clash.error().message,
                         "interface veth0 already carries a faultline userspace fault in direction egress: the "
                         "xtables chains mangle FAULTLINE-0 in /proc/4242/ns/net steer it to queue 64000, which a "
                         "running program serves"),
                clash.error().message);
  CHECK(contains(clash.error().message, "nothing was changed"));
  // Only read: no queue opened (the second driver logs its queue opens), nothing installed.
  CHECK(nf->calls.size() == calls);
  CHECK(nf->installed.size() == 1);

  // A leftover (its queue unbound: the agent died) is named so.
  nf->boundQueues.clear();
  clash = other.apply(delaySpec(v1::DIRECTION_EGRESS));
  REQUIRE_FALSE(clash.has_value());
  CHECK_MESSAGE(contains(clash.error().message, "which nobody serves (a leftover of an agent that died"),
                clash.error().message);
  CHECK(contains(clash.error().message, "revert-all"));
  nf->boundQueues.insert({kNetns, kernel::kQueueBase});

  // The other direction is free; slot 1's queue is bound by someone: slot 2.
  nf->boundQueues.insert({kNetns, kernel::kQueueBase + 1});
  auto ingress = other.apply(delaySpec(v1::DIRECTION_INGRESS));
  REQUIRE_MESSAGE(ingress.has_value(), (ingress ? "" : ingress.error().message));
  CHECK(nf->installed.contains({SteeringBackend::kXtables, kNetns, 2}));
  CHECK(called("open queue 64002"));
  REQUIRE((*ingress)->revert().has_value());
  REQUIRE((*first)->revert().has_value());
}

TEST_CASE("removeAllSteering and recovery leave a slot whose queue a running program serves") {
  auto nf = std::make_shared<FakeNetfilter>();
  const SteeringOpener open = fakeOpener(nf);
  nf->installed[{SteeringBackend::kXtables, kNetns, 0}] = {};
  nf->installed[{SteeringBackend::kXtables, kNetns, 1}] = {};
  nf->boundQueues.insert({kNetns, kernel::kQueueBase + 1});
  auto recovered = NfqueueFaultDriver::revertRecord(
      {{"driver", "nfqueue"}, {"backend", "xtables"}, {"slot", 1u}, {"netns", kNetns}}, open);
  REQUIRE(recovered.has_value());
  CHECK_MESSAGE(contains(*recovered, "were left alone: their queue 64001 is served by a running program"), *recovered);
  auto sweep = removeAllSteering(kNetns, open);
  CHECK(sweep.failed.empty());
  REQUIRE(sweep.removed.size() == 1);
  CHECK(contains(sweep.removed[0], "FAULTLINE-0"));
  REQUIRE(sweep.kept.size() == 1);
  CHECK_MESSAGE(contains(sweep.kept[0],
                         "xtables chains mangle FAULTLINE-1 in /proc/4242/ns/net left alone: its "
                         "queue 64001 is served by a running program"),
                sweep.kept[0]);
  CHECK(nf->installed.size() == 1);
}

TEST_CASE("steeringChanges: what is gone or changed, in words; parts added are no change") {
  kernel::SlotState installed;
  installed.parts = {{"IPv4 chain FAULTLINE-0", 3, 11},
                     {"IPv4 jump rule OUTPUT -o veth0 -> FAULTLINE-0", 1, 0},
                     {"IPv6 chain FAULTLINE-0", 3, 12}};
  CHECK(kernel::steeringChanges(installed, installed).empty());
  auto now = installed;
  now.parts.push_back({"IPv4 jump rule OUTPUT -o veth1 -> FAULTLINE-0", 1, 0});
  CHECK(kernel::steeringChanges(installed, now).empty());
  now = installed;
  now.parts.erase(now.parts.begin() + 1);
  now.parts[0].rules = 1;
  now.parts[1].digest = 13;
  auto changes = kernel::steeringChanges(installed, now);
  REQUIRE(changes.size() == 3);
  CHECK(changes[0] ==
        "the IPv4 jump rule OUTPUT -o veth0 -> FAULTLINE-0 is gone (someone deleted it): packets no longer reach the "
        "chain");
  CHECK(changes[1] == "the IPv4 chain FAULTLINE-0 now has 1 rule, not the 3 installed (someone changed it)");
  CHECK(changes[2] == "the rules of the IPv6 chain FAULTLINE-0 are not those installed (someone replaced them)");
  changes = kernel::steeringChanges(installed, kernel::SlotState{});
  REQUIRE(changes.size() == 1);
  CHECK(changes[0] ==
        "none of its rules is left: IPv4 chain FAULTLINE-0, IPv4 jump rule OUTPUT -o veth0 -> FAULTLINE-0, IPv6 chain "
        "FAULTLINE-0 are gone (someone removed them: nft, iptables, a faultline-agent revert-all, or faultline's "
        "watchdog while this agent was stopped)");
}
