// NetworkFaultDriver against the in-memory qdisc table.
#include <algorithm>
#include <memory>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <nlohmann/json.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/session/agent.h"
#include "tests/fakes/fake_qdisc_table.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;
using faultline::testing::FakeKernel;
using faultline::testing::fakeQdiscOpener;

namespace {

const std::string kNetns = "/proc/4242/ns/net";

v1::FaultSpec delaySpec(const std::string& interface = "veth0", std::chrono::milliseconds delay = 100ms,
                        std::chrono::milliseconds jitter = 10ms) {
  v1::FaultSpec spec;
  auto* d = spec.mutable_network_delay();
  d->mutable_target()->set_interface(interface);
  d->mutable_target()->set_netns(kNetns);
  *d->mutable_delay() = toProto(delay);
  *d->mutable_jitter() = toProto(jitter);
  return spec;
}

v1::FaultSpec bandwidthSpec(uint64_t rateBps = 1'000'000) {
  v1::FaultSpec spec;
  auto* b = spec.mutable_network_bandwidth();
  b->mutable_target()->set_interface("veth0");
  b->mutable_target()->set_netns(kNetns);
  b->set_rate_bps(rateBps);
  return spec;
}

struct Fixture {
  std::shared_ptr<FakeKernel> kernel = std::make_shared<FakeKernel>();
  NetworkFaultDriver driver{fakeQdiscOpener(kernel)};

  Fixture() { kernel->addInterface(kNetns, "veth0"); }

  std::optional<kernel::QdiscInfo>& root() { return kernel->rootOf(kNetns, "veth0"); }

  [[nodiscard]] bool called(const std::string& call) const {
    return std::find(kernel->calls.begin(), kernel->calls.end(), call) != kernel->calls.end();
  }
};

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "previous default root: apply installs netem fa17:, revert deletes it") {
  auto applied = driver.apply(delaySpec());
  REQUIRE(applied.has_value());
  REQUIRE(root().has_value());
  CHECK(root()->kind == "netem");
  CHECK(root()->handle == kFaultlineRootHandle);
  const auto& params = std::get<kernel::NetemParams>(*kernel->lastParams);
  CHECK(params.delay == 100ms);
  CHECK(params.jitter == 10ms);
  CHECK((*applied)->describe() ==
        "netem delay 100ms jitter 10ms limit 91667 on veth0 in /proc/4242/ns/net (root was noqueue)");
  // The undo record is read before the change.
  CHECK(kernel->calls ==
        std::vector<std::string>{"open " + kNetns, "root veth0", "tree veth0", "replace veth0 fa170000 netem"});

  REQUIRE((*applied)->revert().has_value());
  CHECK(called("delete veth0"));
  CHECK_FALSE(called("restore veth0 0 noqueue"));
  CHECK(root()->kind == "noqueue");
  CHECK(root()->handle == 0);

  SUBCASE("a second revert is a no-op") {
    const auto changes = kernel->changes;
    CHECK((*applied)->revert().has_value());
    CHECK(kernel->changes == changes);
  }
}

TEST_CASE_FIXTURE(Fixture, "previous tbf root: revert restores it with identical bytes") {
  const kernel::QdiscInfo saved{"tbf", 0x80010000, 0xFFFFFFFF, {0x28, 0x00, 0x01, 0x00, 0xaa, 0xbb}};
  root() = saved;
  auto applied = driver.apply(bandwidthSpec());
  REQUIRE(applied.has_value());
  CHECK(root()->handle == kFaultlineRootHandle);
  CHECK(root()->kind == "tbf");
  CHECK(contains((*applied)->describe(), "(root was tbf 8001:)"));

  REQUIRE((*applied)->revert().has_value());
  CHECK(called("restore veth0 80010000 tbf"));
  CHECK_FALSE(called("delete veth0"));
  REQUIRE(root().has_value());
  CHECK(root()->kind == saved.kind);
  CHECK(root()->handle == saved.handle);
  CHECK(root()->options == saved.options);
}

TEST_CASE_FIXTURE(Fixture,
                  "faultline's root deleted behind its back: revert puts the saved root back over the default") {
  const kernel::QdiscInfo saved{"tbf", 0x80010000, 0xFFFFFFFF, {0x28, 0x00, 0x01, 0x00, 0xaa, 0xbb}};
  root() = saved;
  auto applied = driver.apply(bandwidthSpec());
  REQUIRE(applied.has_value());
  root() = kernel::QdiscInfo{"noqueue", 0, 0xFFFFFFFF, {}};  // `tc qdisc del dev veth0 root`
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  CHECK(root()->kind == "tbf");
  CHECK(root()->handle == saved.handle);
  CHECK(root()->options == saved.options);
  CHECK_MESSAGE(contains((*applied)->describe(),
                         "faultline's root had been deleted (the kernel's default noqueue was "
                         "there); the root saved before the fault was put back over it"),
                (*applied)->describe());
}

TEST_CASE_FIXTURE(Fixture, "a foreign root after apply: revert refuses and leaves it alone") {
  auto applied = driver.apply(delaySpec());
  REQUIRE(applied.has_value());
  const kernel::QdiscInfo foreign{"tbf", 0x00010000, 0xFFFFFFFF, {9, 9}};
  root() = foreign;
  const auto changes = kernel->changes;

  auto reverted = (*applied)->revert();
  REQUIRE_FALSE(reverted.has_value());
  CHECK(reverted.error().code == std::errc::device_or_resource_busy);
  CHECK(reverted.error().permanent);
  CHECK(contains(reverted.error().message, "the root qdisc is now tbf 1:, not faultline's netem fa17:"));
  CHECK(contains(reverted.error().message, "faultline left it alone"));
  CHECK(kernel->changes == changes);
  CHECK_FALSE(called("delete veth0"));
  CHECK(root()->options == foreign.options);
}

TEST_CASE_FIXTURE(Fixture, "a second network fault on the same interface is refused before any change") {
  auto first = driver.apply(delaySpec());
  REQUIRE(first.has_value());
  const auto changes = kernel->changes;
  const auto ours = *root();

  auto second = driver.apply(bandwidthSpec());
  REQUIRE_FALSE(second.has_value());
  CHECK(second.error().code == std::errc::file_exists);
  CHECK(contains(second.error().message, "interface veth0 already carries a faultline fault"));
  CHECK(contains(second.error().message, "one network fault per interface"));
  CHECK(contains(second.error().message,
                 "if no faultline run holds it (e.g. after an agent was killed), start that agent again or run "
                 "`faultline-agent revert-all`: both put back the root saved in the journal"));
  CHECK(contains(second.error().message, "`nsenter --net=/proc/4242/ns/net tc qdisc del dev veth0 root`"));
  CHECK(kernel->changes == changes);
  CHECK(root()->kind == ours.kind);
  CHECK(root()->options == ours.options);
}

TEST_CASE_FIXTURE(Fixture, "replace fails with ENOENT: the netem message, nothing changed") {
  kernel->failNextReplace = std::make_error_code(std::errc::no_such_file_or_directory);
  auto applied = driver.apply(delaySpec());
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::no_such_file_or_directory);
  CHECK(contains(applied.error().message, "network.delay on veth0"));
  CHECK(contains(applied.error().message, "CONFIG_NET_SCH_NETEM"));
  CHECK(contains(applied.error().message, "modprobe sch_netem"));
  CHECK(contains(applied.error().message, "kernel-modules-extra"));
  CHECK(kernel->changes == 0);
  CHECK(root()->kind == "noqueue");
  CHECK(root()->handle == 0);
}

TEST_CASE_FIXTURE(Fixture, "an invalid spec is refused before the table is opened") {
  auto applied = driver.apply(delaySpec("veth0", 10ms, 20ms));  // jitter > delay
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::invalid_argument);
  CHECK(contains(applied.error().message, "'jitter'"));
  CHECK(kernel->opens == 0);
  CHECK(kernel->calls.empty());

  v1::FaultSpec kill;
  kill.mutable_process_kill()->set_pid(1234);
  auto notNetwork = driver.apply(kill);
  REQUIRE_FALSE(notNetwork.has_value());
  CHECK(contains(notNetwork.error().message, "not a network fault"));
  CHECK(kernel->opens == 0);
}

TEST_CASE_FIXTURE(Fixture, "a missing interface is ENODEV and names it") {
  auto applied = driver.apply(delaySpec("nosuch0"));
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::no_such_device);
  CHECK(contains(applied.error().message, "interface nosuch0 does not exist in /proc/4242/ns/net"));
  CHECK(kernel->changes == 0);
}

TEST_CASE_FIXTURE(Fixture, "a failed restore can be retried") {
  root() = kernel::QdiscInfo{"tbf", 0x80010000, 0xFFFFFFFF, {1, 2, 3}};
  auto applied = driver.apply(bandwidthSpec());
  REQUIRE(applied.has_value());
  kernel->failNextRestore = std::make_error_code(std::errc::no_buffer_space);
  auto first = (*applied)->revert();
  REQUIRE_FALSE(first.has_value());
  CHECK(first.error().code == std::errc::no_buffer_space);
  CHECK(root()->handle == kFaultlineRootHandle);
  REQUIRE((*applied)->revert().has_value());
  CHECK(root()->handle == 0x80010000);
}

TEST_CASE("a leftover faultline root: the clean-up hint runs tc in the right namespace") {
  const auto hintFor = [](const std::string& netns) {
    auto kernel = std::make_shared<FakeKernel>();
    kernel->addInterface(netns, "eth0",
                         kernel::QdiscInfo{"netem", kFaultlineRootHandle, faultline::testing::kTcRoot, {1}});
    NetworkFaultDriver driver{fakeQdiscOpener(kernel)};
    v1::FaultSpec spec = bandwidthSpec();
    spec.mutable_network_bandwidth()->mutable_target()->set_interface("eth0");
    spec.mutable_network_bandwidth()->mutable_target()->set_netns(netns);
    auto applied = driver.apply(spec);
    REQUIRE_FALSE(applied.has_value());
    CHECK(applied.error().code == std::errc::file_exists);
    CHECK(kernel->changes == 0);
    return applied.error().message;
  };
  CHECK(contains(hintFor(""), "(deleting it by hand, `tc qdisc del dev eth0 root`"));
  CHECK(contains(hintFor("/var/run/netns/blue"),
                 "(deleting it by hand, `ip netns exec blue tc qdisc del dev eth0 root`"));
  CHECK(contains(hintFor("/run/netns/blue"), "(deleting it by hand, `ip netns exec blue tc qdisc del dev eth0 root`"));
  CHECK(contains(hintFor("/proc/77/ns/net"),
                 "(deleting it by hand, `nsenter --net=/proc/77/ns/net tc qdisc del dev eth0 root`"));
}

TEST_CASE_FIXTURE(Fixture, "classful roots other than htb, prio and mq are refused before any change") {
  for (const std::string kind : {"hfsc", "drr", "ets", "mqprio", "taprio", "cbq"}) {
    CAPTURE(kind);
    root() = kernel::QdiscInfo{kind, 0x00010000, faultline::testing::kTcRoot, {}};
    auto refused = driver.apply(delaySpec());
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == std::errc::not_supported);
    CHECK(contains(refused.error().message, fmt::format("the classful root qdisc {} 1:", kind)));
    CHECK(contains(refused.error().message, "nothing was changed"));
  }
  CHECK(kernel->changes == 0);
}

TEST_CASE_FIXTURE(Fixture, "roots the kernel does not re-create exactly are refused; defaults (0:) are fine") {
  for (const std::string kind : {"sfq", "red", "fq_pie"}) {
    CAPTURE(kind);
    root() = kernel::QdiscInfo{kind, 0x80010000, faultline::testing::kTcRoot, {1}};
    auto refused = driver.apply(delaySpec());
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == std::errc::not_supported);
    CHECK(
        contains(refused.error().message, fmt::format("has the root qdisc {} 8001:, which the kernel does not", kind)));
    CHECK(contains(refused.error().message, "nothing was changed"));
  }
  root() = kernel::QdiscInfo{"dualpi9", 0x80010000, faultline::testing::kTcRoot, {1}};
  auto unknown = driver.apply(delaySpec());
  REQUIRE_FALSE(unknown.has_value());
  CHECK(unknown.error().code == std::errc::not_supported);
  CHECK(contains(unknown.error().message, "a kind faultline has not verified"));
  CHECK(kernel->changes == 0);

  // The kernel's own defaults, handle 0:, come back when faultline's root is deleted.
  for (const std::string kind : {"mq", "pfifo_fast", "noqueue", "fq_codel"}) {
    CAPTURE(kind);
    root() = kernel::QdiscInfo{kind, 0, faultline::testing::kTcRoot, {}};
    auto applied = driver.apply(delaySpec());
    REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
    REQUIRE((*applied)->revert().has_value());
  }
  // Classless roots with a handle that restore byte for byte.
  for (const std::string kind : {"tbf", "pfifo", "bfifo", "fq", "netem", "cake", "fq_codel", "codel"}) {
    CAPTURE(kind);
    root() = kernel::QdiscInfo{kind, 0x00070000, faultline::testing::kTcRoot, {4, 2}};
    auto applied = driver.apply(bandwidthSpec());
    REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
    REQUIRE((*applied)->revert().has_value());
    CHECK(root()->kind == kind);
  }
}

TEST_CASE_FIXTURE(Fixture, "a root with someone's qdisc below it is restored with it; below a default root, refused") {
  root() = kernel::QdiscInfo{"tbf", 0x00070000, faultline::testing::kTcRoot, {1}};
  kernel->below[{kNetns, "veth0"}] = {kernel::QdiscInfo{"netem", 0x00100000, 0x00070001, {2}}};
  auto withChild = driver.apply(delaySpec());
  REQUIRE_MESSAGE(withChild.has_value(), (withChild ? "" : withChild.error().message));
  CHECK(kernel->below[{kNetns, "veth0"}].empty());
  REQUIRE((*withChild)->revert().has_value());
  CHECK(called("restore-object veth0 qdisc netem 10: parent 7:1"));
  CHECK(root()->kind == "tbf");
  kernel->below.clear();
  kernel->objects.clear();

  // mq 0: with its per-queue defaults (handle 0:) is the kernel's; one replaced by someone is not.
  root() = kernel::QdiscInfo{"mq", 0, faultline::testing::kTcRoot, {}};
  kernel->below[{kNetns, "veth0"}] = {kernel::QdiscInfo{"fq_codel", 0, 0x00000001, {}},
                                      kernel::QdiscInfo{"fq_codel", 0, 0x00000002, {}}};
  auto applied = driver.apply(delaySpec());
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  REQUIRE((*applied)->revert().has_value());

  root() = kernel::QdiscInfo{"mq", 0, faultline::testing::kTcRoot, {}};
  kernel->below[{kNetns, "veth0"}] = {kernel::QdiscInfo{"fq_codel", 0, 0x00000001, {}},
                                      kernel::QdiscInfo{"fq", 0x80020000, 0x00000002, {}}};
  const auto changes = kernel->changes;
  auto custom = driver.apply(delaySpec());
  REQUIRE_FALSE(custom.has_value());
  CHECK(custom.error().code == std::errc::not_supported);
  CHECK(contains(custom.error().message,
                 "the kernel's default root qdisc mq with qdiscs attached below it (fq 8002: at parent :2)"));
  CHECK(kernel->changes == changes);
}

TEST_CASE_FIXTURE(Fixture, "the interface vanished during the fault: revert succeeds and says so") {
  auto applied = driver.apply(delaySpec());
  REQUIRE(applied.has_value());
  kernel->namespaces.at(kNetns).erase("veth0");
  const auto changes = kernel->changes;

  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  CHECK(kernel->changes == changes);
  CHECK(contains((*applied)->describe(), "; interface veth0 no longer exists; nothing to revert"));
  const auto calls = kernel->calls.size();
  CHECK((*applied)->revert().has_value());  // done: no kernel call
  CHECK(kernel->calls.size() == calls);
}

TEST_CASE_FIXTURE(Fixture, "the interface vanishes between the read and the restore: revert succeeds") {
  auto applied = driver.apply(delaySpec());
  REQUIRE(applied.has_value());
  kernel->failNextDelete = std::make_error_code(std::errc::no_such_device);
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  CHECK(contains((*applied)->describe(), "interface veth0 no longer exists; nothing to revert"));
}

TEST_CASE_FIXTURE(Fixture, "the namespace vanished during the fault: revert succeeds and says so") {
  auto applied = driver.apply(delaySpec());
  REQUIRE(applied.has_value());
  kernel->namespaces.erase(kNetns);
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  CHECK(contains((*applied)->describe(), "; network namespace /proc/4242/ns/net no longer exists; nothing to revert"));
}

TEST_CASE_FIXTURE(Fixture, "a transient revert failure is not permanent; EPERM on open is retried") {
  auto applied = driver.apply(delaySpec());
  REQUIRE(applied.has_value());
  kernel->failNextOpen = std::make_error_code(std::errc::operation_not_permitted);
  auto first = (*applied)->revert();
  REQUIRE_FALSE(first.has_value());
  CHECK(first.error().code == std::errc::operation_not_permitted);
  CHECK_FALSE(first.error().permanent);
  REQUIRE((*applied)->revert().has_value());
  CHECK(root()->handle == 0);
  CHECK(contains((*applied)->describe(), "(root was noqueue)"));
  CHECK_FALSE(contains((*applied)->describe(), "nothing to revert"));
}

TEST_CASE_FIXTURE(Fixture, "a path that is not a network namespace is named as such") {
  kernel->failNextOpen = std::make_error_code(std::errc::invalid_argument);  // what setns() says
  auto applied = driver.apply(delaySpec());
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::invalid_argument);
  CHECK(contains(applied.error().message, "/proc/4242/ns/net is not a network namespace"));
  CHECK_FALSE(contains(applied.error().message, "Invalid argument"));

  kernel->namespaces.erase(kNetns);
  auto gone = driver.apply(delaySpec());
  REQUIRE_FALSE(gone.has_value());
  CHECK(gone.error().code == std::errc::no_such_file_or_directory);
  CHECK(contains(gone.error().message, "network namespace /proc/4242/ns/net does not exist"));
}

TEST_CASE("restorability: measured kinds") {
  CHECK(kernel::restorability("tbf") == kernel::Restorability::kExact);
  CHECK(kernel::restorability("netem") == kernel::Restorability::kExact);
  CHECK(kernel::restorability("htb") == kernel::Restorability::kClassful);
  CHECK(kernel::restorability("mq") == kernel::Restorability::kClassful);
  CHECK(kernel::restorability("fq_codel") == kernel::Restorability::kExact);
  CHECK(kernel::restorability("sfq") == kernel::Restorability::kInexact);
  CHECK(kernel::restorability("") == kernel::Restorability::kUnverified);
}

TEST_CASE("bandwidth defaults: burst 10 ms of traffic but two frames at least, limit 50 ms on top of the burst") {
  v1::NetworkBandwidth b;
  b.set_rate_bps(1'000'000);  // 125000 B/s
  auto p = bandwidthParams(b);
  CHECK(p.rateBitsPerSecond == 1'000'000);
  CHECK(p.burstBytes == 3028);         // 10 ms would be 1250 B
  CHECK(p.limitBytes == 6250 + 3028);  // 50 ms of queue beyond the burst

  b.set_rate_bps(1'000'000'000);  // 125 MB/s
  p = bandwidthParams(b);
  CHECK(p.burstBytes == 1'250'000);
  CHECK(p.limitBytes == 6'250'000 + 1'250'000);

  b.set_rate_bps(8'000);  // 1000 B/s: a slow link still queues 50 ms, rather than dropping
  p = bandwidthParams(b);
  CHECK(p.burstBytes == 3028);
  CHECK(p.limitBytes == 50 + 3028);

  b.set_rate_bps(uint64_t{1} << 40);
  p = bandwidthParams(b);
  CHECK(p.limitBytes == 0xFFFFFFFF);  // capped at the kernel's u32

  b.set_burst_bytes(10'000);
  b.set_limit_bytes(20'000);
  p = bandwidthParams(b);
  CHECK(p.burstBytes == 10'000);
  CHECK(p.limitBytes == 20'000);
}

TEST_CASE("missing qdisc messages name the config option and the module") {
  CHECK(contains(missingQdiscMessage("tbf"), "CONFIG_NET_SCH_TBF"));
  CHECK(contains(missingQdiscMessage("tbf"), "modprobe sch_tbf"));
  CHECK(contains(missingQdiscMessage("fq_codel"), "CONFIG_NET_SCH_FQ_CODEL"));
  CHECK(contains(missingQdiscMessage("fq_codel"), "modprobe sch_fq_codel"));
}

namespace {

kernel::TcObject fakeClass(uint32_t id, uint32_t parent) {
  return kernel::TcObject{kernel::TcObjectType::kClass, "htb", id, parent, 0, 0, {7, uint8_t(id)}};
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "an htb tree is journaled whole and put back parent first on revert") {
  root() = kernel::QdiscInfo{"htb", 0x00010000, faultline::testing::kTcRoot, {1, 2}};
  kernel->below[{kNetns, "veth0"}] = {kernel::QdiscInfo{"pfifo", 0x00100000, 0x00010010, {5}}};
  kernel->objects[{kNetns, "veth0"}] = {fakeClass(0x00010010, 0x00010001), fakeClass(0x00010001, 0x00010000)};
  nlohmann::json record;
  auto applied = driver.apply(bandwidthSpec(), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
    record = r;
    CHECK(kernel->changes == 0);  // journaled before the kernel is touched
    return {};
  });
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  REQUIRE(record.contains("below"));
  REQUIRE(record["below"].size() == 3);
  CHECK(record["below"][0] == nlohmann::json{{"type", "qdisc"},
                                             {"kind", "pfifo"},
                                             {"handle", 0x00100000},
                                             {"parent", 0x00010010},
                                             {"info", 0},
                                             {"chain", 0},
                                             {"options", "05"}});
  CHECK(record["below"][1]["type"] == "class");
  CHECK(kernel->objects[{kNetns, "veth0"}].empty());

  kernel->calls.clear();
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  std::vector<std::string> restores;
  for (const auto& c : kernel->calls) {
    if (c.starts_with("restore")) {
      restores.push_back(c);
    }
  }
  const std::vector<std::string> expected = {
      "restore veth0 10000 htb",
      "restore-object veth0 class htb 1:1 parent 1:",
      "restore-object veth0 class htb 1:10 parent 1:1",
      "restore-object veth0 qdisc pfifo 10: parent 1:10",
  };
  CHECK(restores == expected);
}

TEST_CASE_FIXTURE(Fixture, "a part of the tree that fails to come back: transient error naming it, retry finishes") {
  root() = kernel::QdiscInfo{"htb", 0x00010000, faultline::testing::kTcRoot, {1}};
  kernel->objects[{kNetns, "veth0"}] = {fakeClass(0x00010001, 0x00010000), fakeClass(0x00010002, 0x00010000)};
  auto applied = driver.apply(bandwidthSpec());
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  kernel->failNextRestoreObject = std::make_error_code(std::errc::no_buffer_space);
  auto failed = (*applied)->revert();
  REQUIRE_FALSE(failed.has_value());
  CHECK(failed.error().code == std::errc::no_buffer_space);
  CHECK_FALSE(failed.error().permanent);
  CHECK(contains(failed.error().message,
                 "revert: the root qdisc htb 1: is back, but cannot put back the class htb 1:1 parent 1:"));
  auto retried = (*applied)->revert();
  REQUIRE_MESSAGE(retried.has_value(), (retried ? "" : retried.error().message));
  CHECK(kernel->objects[{kNetns, "veth0"}].size() == 2);

  // Something the kernel gives back differently is reported, not taken for done.
  root() = kernel::QdiscInfo{"htb", 0x00020000, faultline::testing::kTcRoot, {1}};
  kernel->objects[{kNetns, "veth0"}] = {fakeClass(0x00020001, 0x00020000)};
  auto second = driver.apply(bandwidthSpec());
  REQUIRE_MESSAGE(second.has_value(), (second ? "" : second.error().message));
  // Someone put the root back already, with a class that was not there before.
  root() = kernel::QdiscInfo{"htb", 0x00020000, faultline::testing::kTcRoot, {1}};
  kernel->objects[{kNetns, "veth0"}] = {fakeClass(0x00020001, 0x00020000), fakeClass(0x00020009, 0x00020000)};
  auto differs = (*second)->revert();
  REQUIRE_FALSE(differs.has_value());
  CHECK(differs.error().code == std::errc::io_error);
  CHECK(contains(differs.error().message, "class htb 2:9 parent 2: was not there before"));
}

TEST_CASE_FIXTURE(Fixture, "revertRecord restores the tree from the record; old records without it still revert") {
  root() = kernel::QdiscInfo{"htb", 0x00010000, faultline::testing::kTcRoot, {1}};
  kernel->objects[{kNetns, "veth0"}] = {fakeClass(0x00010001, 0x00010000)};
  nlohmann::json record;
  {
    auto applied = driver.apply(bandwidthSpec(), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
      record = r;
      return {};
    });
    REQUIRE(applied.has_value());
  }
  auto done = NetworkFaultDriver::revertRecord(nlohmann::json::parse(record.dump()), fakeQdiscOpener(kernel));
  REQUIRE_MESSAGE(done.has_value(), (done ? "" : done.error().message));
  REQUIRE(kernel->objects[{kNetns, "veth0"}].size() == 1);
  CHECK(kernel->objects[{kNetns, "veth0"}][0] == fakeClass(0x00010001, 0x00010000));

  // A record from before "below" existed: a single saved root.
  root() = kernel::QdiscInfo{"tbf", kFaultlineRootHandle, faultline::testing::kTcRoot, {9}};
  const nlohmann::json old = {
      {"fault", "network.delay"},
      {"netns", kNetns},
      {"interface", "veth0"},
      {"handle", kFaultlineRootHandle},
      {"qdisc", "tbf"},
      {"saved", {{"kind", "pfifo"}, {"handle", 0x00070000u}, {"parent", 0xFFFFFFFFu}, {"options", "0a0b"}}}};
  auto oldDone = NetworkFaultDriver::revertRecord(old, fakeQdiscOpener(kernel));
  REQUIRE_MESSAGE(oldDone.has_value(), (oldDone ? "" : oldDone.error().message));
  CHECK(root()->kind == "pfifo");
  CHECK(root()->options == std::vector<uint8_t>{0x0a, 0x0b});

  auto bad = old;
  bad["below"] = {
      {{"type", "tunnel"}, {"kind", "x"}, {"handle", 1}, {"parent", 1}, {"info", 0}, {"chain", 0}, {"options", ""}}};
  auto refused = NetworkFaultDriver::revertRecord(bad, fakeQdiscOpener(kernel));
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == std::errc::invalid_argument);
  CHECK(refused.error().permanent);
  CHECK(contains(refused.error().message, "below needs an array of {type (qdisc, class, filter)"));
}

// --- direction ingress and both: an ifb, an ingress qdisc and a mirred redirect ---

namespace {

v1::FaultSpec ingressBandwidth(v1::Direction direction = v1::DIRECTION_INGRESS) {
  v1::FaultSpec spec = bandwidthSpec();
  spec.mutable_network_bandwidth()->mutable_target()->set_direction(direction);
  return spec;
}

v1::FaultSpec partitionSpec(v1::Direction direction) {
  v1::FaultSpec spec;
  auto* p = spec.mutable_network_partition();
  p->mutable_target()->set_interface("veth0");
  p->mutable_target()->set_netns(kNetns);
  p->mutable_target()->set_direction(direction);
  p->mutable_target()->mutable_match()->add_source_cidrs("10.0.0.0/8");
  return spec;
}

}  // namespace

TEST_CASE_FIXTURE(Fixture, "ingress: an ifb with the fault, the ingress qdisc and two redirects; revert removes them") {
  const std::string ifb = ifbName(kernel->indexOf(kNetns, "veth0"));
  CHECK(ifb == "flt-ifb2");
  nlohmann::json record;
  auto applied = driver.apply(ingressBandwidth(), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
    record = r;
    CHECK(kernel->changes == 0);  // journalled before any change
    return {};
  });
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK(record["direction"] == "ingress");
  CHECK(record["ifb"] == ifb);
  CHECK(record["ingressQdisc"] == "ingress");
  // The interface's own root is untouched; the ifb carries faultline's tbf.
  CHECK(root()->kind == "noqueue");
  REQUIRE(kernel->rootOf(kNetns, ifb).has_value());
  CHECK(kernel->rootOf(kNetns, ifb)->kind == "tbf");
  CHECK(kernel->rootOf(kNetns, ifb)->handle == kFaultlineRootHandle);
  CHECK(kernel->kinds.at({kNetns, ifb}) == "ifb");
  CHECK(kernel->ingress.at({kNetns, "veth0"}).kind == "ingress");
  const auto& redirects = kernel->redirects.at({kNetns, "veth0"});
  REQUIRE(redirects.size() == 2);
  CHECK(redirects[0].protocol == 0x0800);
  CHECK(redirects[1].protocol == 0x86DD);
  CHECK(redirects[0].target == ifb);
  // The redirect goes in last: the ifb's qdisc is ready before any packet is sent to it.
  const auto at = [&](const std::string& call) {
    return std::find(kernel->calls.begin(), kernel->calls.end(), call) - kernel->calls.begin();
  };
  CHECK(at("create-ifb " + ifb) < at(fmt::format("replace {} fa170000 tbf", ifb)));
  CHECK(at(fmt::format("replace {} fa170000 tbf", ifb)) < at("add-ingress veth0"));
  CHECK(at("add-ingress veth0") < at("add-redirect veth0 prio 1 -> " + ifb));
  CHECK(contains((*applied)->describe(), "direction ingress, ingress through ifb flt-ifb2"));

  REQUIRE((*applied)->revert().has_value());
  CHECK_FALSE(kernel->ingress.contains({kNetns, "veth0"}));
  CHECK_FALSE(kernel->namespaces.at(kNetns).contains(ifb));
  CHECK(root()->kind == "noqueue");
  CHECK(at("delete-ingress veth0") < at("delete-link " + ifb));  // the redirect stops first
  CHECK_FALSE(called("delete veth0"));                           // the egress root was never faultline's
}

TEST_CASE_FIXTURE(Fixture, "both: the egress tree on the interface and the same tree on the ifb") {
  auto applied = driver.apply(partitionSpec(v1::DIRECTION_BOTH));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const std::string ifb = ifbName(kernel->indexOf(kNetns, "veth0"));
  CHECK(root()->kind == "htb");
  CHECK(kernel->rootOf(kNetns, ifb)->kind == "htb");
  CHECK(kernel->tree.at({kNetns, "veth0"}) == kernel->tree.at({kNetns, ifb}));
  CHECK(kernel->redirects.at({kNetns, "veth0"}).size() == 2);
  REQUIRE((*applied)->revert().has_value());
  CHECK(root()->kind == "noqueue");
  CHECK_FALSE(kernel->namespaces.at(kNetns).contains(ifb));
  CHECK_FALSE(kernel->ingress.contains({kNetns, "veth0"}));
}

TEST_CASE_FIXTURE(Fixture, "ingress: someone's ingress or clsact qdisc is refused before any change") {
  kernel->ingress[{kNetns, "veth0"}] = kernel::QdiscInfo{"clsact", 0xFFFF0000, 0xFFFFFFF1, {}};
  bool persisted = false;
  auto refused = driver.apply(ingressBandwidth(), [&](const nlohmann::json&) -> tl::expected<void, FaultError> {
    persisted = true;
    return {};
  });
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == std::errc::device_or_resource_busy);
  CHECK(contains(refused.error().message, "already has a clsact qdisc (handle ffff:) that is not faultline's"));
  CHECK(contains(refused.error().message, "nothing was changed"));
  CHECK_FALSE(persisted);
  CHECK(kernel->changes == 0);
}

TEST_CASE_FIXTURE(Fixture, "ingress: a leftover ifb of faultline's is EEXIST with the commands to remove it") {
  auto first = driver.apply(ingressBandwidth());
  REQUIRE(first.has_value());
  const int changes = kernel->changes;
  auto second = driver.apply(ingressBandwidth());
  REQUIRE_FALSE(second.has_value());
  CHECK(second.error().code == std::errc::file_exists);
  CHECK(contains(second.error().message, "nsenter --net=/proc/4242/ns/net ip link del flt-ifb2"));
  CHECK(contains(second.error().message, "nsenter --net=/proc/4242/ns/net tc qdisc del dev veth0 ingress"));
  CHECK(kernel->changes == changes);
  // An ingress qdisc whose filters do not redirect to that ifb is not named: it is not faultline's.
  const auto key = std::make_pair(std::string(kNetns), std::string("veth0"));
  const auto redirects = kernel->redirects[key];
  kernel->redirects[key].clear();
  auto third = driver.apply(ingressBandwidth());
  REQUIRE_FALSE(third.has_value());
  CHECK(third.error().code == std::errc::file_exists);
  CHECK(contains(third.error().message, "remove it with `nsenter --net=/proc/4242/ns/net ip link del flt-ifb2`, or"));
  CHECK_FALSE(contains(third.error().message, "tc qdisc del"));
  kernel->redirects[key] = redirects;
  REQUIRE((*first)->revert().has_value());
}

TEST_CASE_FIXTURE(Fixture, "ingress: each step that fails removes what was built before the error") {
  const std::string ifb = "flt-ifb2";
  const auto clean = [&] {
    CHECK_FALSE(kernel->namespaces.at(kNetns).contains(ifb));
    CHECK_FALSE(kernel->ingress.contains({kNetns, "veth0"}));
    CHECK(root()->kind == "noqueue");
  };
  SUBCASE("no ifb in the kernel") {
    kernel->failNextIfb = std::make_error_code(std::errc::operation_not_supported);
    auto r = driver.apply(ingressBandwidth());
    REQUIRE_FALSE(r.has_value());
    CHECK(contains(r.error().message, "`modprobe ifb`"));
    clean();
  }
  SUBCASE("the fault's qdisc on the ifb") {
    kernel->failNextReplace = std::make_error_code(std::errc::no_such_file_or_directory);
    auto r = driver.apply(ingressBandwidth());
    REQUIRE_FALSE(r.has_value());
    CHECK(contains(r.error().message, "modprobe sch_tbf"));
    CHECK(contains(r.error().message, "the half-built ingress path was removed (ifb flt-ifb2 deleted)"));
    clean();
  }
  SUBCASE("no sch_ingress") {
    kernel->failNextIngress = std::make_error_code(std::errc::no_such_file_or_directory);
    auto r = driver.apply(ingressBandwidth());
    REQUIRE_FALSE(r.has_value());
    CHECK(contains(r.error().message, "`modprobe sch_ingress`"));
    clean();
  }
  SUBCASE("the IPv6 redirect, after the IPv4 one went in; direction both puts the egress root back too") {
    kernel->failNextRedirect = std::make_error_code(std::errc::no_such_file_or_directory);
    kernel->redirectsBeforeFailure = 1;
    auto r = driver.apply(partitionSpec(v1::DIRECTION_BOTH));
    REQUIRE_FALSE(r.has_value());
    CHECK(contains(r.error().message, "cls_u32 or act_mirred"));
    CHECK(contains(r.error().message, "(IPv6)"));
    CHECK(contains(r.error().message, "ingress qdisc of veth0 deleted, ifb flt-ifb2 deleted"));
    CHECK(contains(r.error().message, "the egress root qdisc noqueue was put back"));
    CHECK_FALSE(r.error().mayBeChanged);
    clean();
  }
}

TEST_CASE_FIXTURE(Fixture, "ingress revert keeps an ingress qdisc that someone else's filters now use") {
  auto applied = driver.apply(ingressBandwidth());
  REQUIRE(applied.has_value());
  const auto key = std::make_pair(std::string(kNetns), std::string("veth0"));
  SUBCASE("a redirect elsewhere at its own priority: faultline's priorities go, the qdisc and theirs stay") {
    kernel->addInterface(kNetns, "other0");
    kernel->redirects[key].push_back(kernel::RedirectFilter{9, 0x0800, "other0"});
    auto reverted = (*applied)->revert();
    REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
    CHECK(kernel->ingress.contains(key));
    REQUIRE(kernel->redirects[key].size() == 1);
    CHECK(kernel->redirects[key][0].target == "other0");
    CHECK_FALSE(kernel->namespaces.at(kNetns).contains("flt-ifb2"));
    // Whole priorities (handle 0): nothing else of someone's was in them.
    CHECK(std::count(kernel->calls.begin(), kernel->calls.end(), "delete-filter veth0 prio 1 handle 0") == 1);
    CHECK(std::count(kernel->calls.begin(), kernel->calls.end(), "delete-filter veth0 prio 2 handle 0") == 1);
    const std::string text = (*applied)->describeRevert("end");
    CHECK_MESSAGE(contains(text,
                           "faultline's 2 redirect filter(s) deleted from the ingress qdisc of veth0, which "
                           "stays for 1 filter(s) that are not faultline's (u32 prio 9 protocol ip handle "
                           "808::800; remove the qdisc with"),
                  text);
    CHECK_MESSAGE(contains(text, "ifb flt-ifb2 deleted"), text);
  }
  SUBCASE("a filter without a redirect is not deleted with the qdisc either") {
    kernel->otherFilters[key].push_back(kernel::IngressFilter{20, 0x0003, 1, "matchall", {}});
    auto reverted = (*applied)->revert();
    REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
    CHECK(kernel->ingress.contains(key));
    CHECK(kernel->redirects[key].empty());
    CHECK(kernel->otherFilters[key].size() == 1);
    CHECK_MESSAGE(contains((*applied)->describeRevert("end"), "matchall prio 20 protocol all handle 0x1"),
                  (*applied)->describeRevert("end"));
  }
  SUBCASE("a filter added in faultline's priority: only faultline's node goes") {
    // Same priority and protocol: u32 puts it in the same hash table, 800::801.
    kernel->otherFilters[key].push_back(kernel::IngressFilter{1, 0x0800, 0x80000801, "u32", {}});
    // The priority's classifier and hash table, as the kernel lists them: not counted as someone's.
    kernel->otherFilters[key].push_back(kernel::IngressFilter{1, 0x0800, 0, "u32", {}});
    kernel->otherFilters[key].push_back(kernel::IngressFilter{1, 0x0800, 0x80000000, "u32", {}});
    auto reverted = (*applied)->revert();
    REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
    CHECK(std::count(kernel->calls.begin(), kernel->calls.end(), "delete-filter veth0 prio 1 handle 80000800") == 1);
    CHECK(kernel->ingress.contains(key));
    CHECK(kernel->otherFilters[key].size() == 3);
    CHECK_MESSAGE(contains((*applied)->describeRevert("end"), "stays for 1 filter(s)"),
                  (*applied)->describeRevert("end"));
  }
  SUBCASE("with only faultline's filters, the qdisc goes") {
    kernel->otherFilters[key].push_back(kernel::IngressFilter{1, 0x0800, 0, "u32", {}});
    auto reverted = (*applied)->revert();
    REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
    CHECK_FALSE(kernel->ingress.contains(key));
  }
}

TEST_CASE_FIXTURE(Fixture, "crash recovery: revertRecord removes the ingress path from the record alone") {
  nlohmann::json record;
  auto applied =
      driver.apply(partitionSpec(v1::DIRECTION_BOTH), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
        record = r;
        return {};
      });
  REQUIRE(applied.has_value());
  auto recovered = NetworkFaultDriver::revertRecord(record, fakeQdiscOpener(kernel));
  REQUIRE_MESSAGE(recovered.has_value(), (recovered ? "" : recovered.error().message));
  CHECK(contains(*recovered, "ifb flt-ifb2 deleted"));
  CHECK(root()->kind == "noqueue");
  CHECK_FALSE(kernel->namespaces.at(kNetns).contains("flt-ifb2"));
  CHECK_FALSE(kernel->ingress.contains({kNetns, "veth0"}));
  // Again: nothing left to do.
  REQUIRE(NetworkFaultDriver::revertRecord(record, fakeQdiscOpener(kernel)).has_value());
  // A record whose ifb is not named as faultline's is refused: only faultline's devices are deleted.
  record["ifb"] = "eth0";
  auto refused = NetworkFaultDriver::revertRecord(record, fakeQdiscOpener(kernel));
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == std::errc::invalid_argument);
}

TEST_CASE_FIXTURE(Fixture, "crash between the ingress qdisc and its filters: recovery removes the empty qdisc") {
  nlohmann::json record;
  kernel->failNextRedirect = std::make_error_code(std::errc::no_such_file_or_directory);
  // Simulate the crash: the journal record as apply writes it, then the kernel as it stood.
  auto failed = driver.apply(ingressBandwidth(), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
    record = r;
    return {};
  });
  REQUIRE_FALSE(failed.has_value());
  kernel->ingress[{kNetns, "veth0"}] = kernel::QdiscInfo{"ingress", 0xFFFF0000, 0xFFFFFFF1, {}};
  REQUIRE(fakeQdiscOpener(kernel)(kNetns).value()->createIfb("flt-ifb2").has_value());
  auto recovered = NetworkFaultDriver::revertRecord(record, fakeQdiscOpener(kernel));
  REQUIRE(recovered.has_value());
  CHECK_FALSE(kernel->ingress.contains({kNetns, "veth0"}));
  CHECK_FALSE(kernel->namespaces.at(kNetns).contains("flt-ifb2"));
}

TEST_CASE("ingress in the agent's own namespace: packets from the controller go to the ifb's direct queue") {
  auto kernel = std::make_shared<FakeKernel>();
  kernel->addInterface("", "eth0");
  NetworkFaultDriver driver{fakeQdiscOpener(kernel)};
  driver.setExempt({Endpoint{*parseCidr("192.0.2.10"), 7443}});
  v1::FaultSpec spec;
  auto* b = spec.mutable_network_bandwidth();
  b->mutable_target()->set_interface("eth0");
  b->mutable_target()->set_direction(v1::DIRECTION_INGRESS);
  b->set_rate_bps(1'000'000);
  auto applied = driver.apply(spec);
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const std::string ifb = ifbName(kernel->indexOf("", "eth0"));
  REQUIRE(kernel->rootOf("", ifb)->kind == "htb");
  const auto& tree = kernel->tree.at({"", ifb});
  // The exemption (to and from the controller, priority 1) ahead of the fault's match-all filters.
  const auto count = [&](std::string_view prefix) {
    return std::count_if(tree.begin(), tree.end(), [&](const std::string& f) { return f.starts_with(prefix); });
  };
  CHECK(count("filter prio 1 proto 800 -> fa170000 ") == 2);
  CHECK(count("filter prio 3 proto 800 -> fa170001 ") == 1);
  CHECK(count("filter prio 4 proto 86dd -> fa170001 ") == 1);
  CHECK(kernel->rootOf("", "eth0")->kind == "noqueue");  // the egress root is untouched
  REQUIRE((*applied)->revert().has_value());
  CHECK_FALSE(kernel->namespaces.at("").contains(ifb));
}

// --- direction both and ingress with a saved egress tree (QdiscTable::dumpTree()) ---

namespace {

// An htb root 1: with classes 1:1 and 1:10 and a pfifo 10: below 1:10 on veth0.
void addHtbTree(FakeKernel& kernel) {
  kernel.rootOf(kNetns, "veth0") = kernel::QdiscInfo{"htb", 0x00010000, faultline::testing::kTcRoot, {1, 2}};
  kernel.below[{kNetns, "veth0"}] = {kernel::QdiscInfo{"pfifo", 0x00100000, 0x00010010, {5}}};
  kernel.objects[{kNetns, "veth0"}] = {fakeClass(0x00010010, 0x00010001), fakeClass(0x00010001, 0x00010000)};
}

std::vector<std::string> restoreCalls(const FakeKernel& kernel) {
  std::vector<std::string> out;
  for (const auto& c : kernel.calls) {
    if (c.starts_with("restore")) {
      out.push_back(c);
    }
  }
  return out;
}

const std::vector<std::string> kHtbTreeRestores = {
    "restore veth0 10000 htb",
    "restore-object veth0 class htb 1:1 parent 1:",
    "restore-object veth0 class htb 1:10 parent 1:1",
    "restore-object veth0 qdisc pfifo 10: parent 1:10",
};

}  // namespace

TEST_CASE_FIXTURE(Fixture, "both: the interface's htb tree is journaled with the ingress path and put back whole") {
  addHtbTree(*kernel);
  nlohmann::json record;
  auto applied =
      driver.apply(partitionSpec(v1::DIRECTION_BOTH), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
        record = r;
        CHECK(kernel->changes == 0);
        return {};
      });
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK(record["direction"] == "both");
  CHECK(record["ifb"] == "flt-ifb2");
  CHECK(record["saved"]["kind"] == "htb");
  REQUIRE(record.contains("below"));
  CHECK(record["below"].size() == 3);
  CHECK(root()->handle == kFaultlineRootHandle);
  CHECK(kernel->objects[{kNetns, "veth0"}].empty());  // gone with the replaced root
  CHECK_FALSE(called("tree flt-ifb2"));               // faultline's own ifb: nothing to save

  kernel->calls.clear();
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  CHECK(restoreCalls(*kernel) == kHtbTreeRestores);
  CHECK(root()->kind == "htb");
  CHECK(kernel->objects[{kNetns, "veth0"}].size() == 3);
  CHECK_FALSE(kernel->namespaces.at(kNetns).contains("flt-ifb2"));
  CHECK_FALSE(kernel->ingress.contains({kNetns, "veth0"}));
}

TEST_CASE_FIXTURE(Fixture, "both: crash recovery puts back the ingress path and the whole egress tree") {
  addHtbTree(*kernel);
  nlohmann::json record;
  auto applied =
      driver.apply(partitionSpec(v1::DIRECTION_BOTH), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
        record = r;
        return {};
      });
  REQUIRE(applied.has_value());
  kernel->calls.clear();
  auto recovered = NetworkFaultDriver::revertRecord(record, fakeQdiscOpener(kernel));
  REQUIRE_MESSAGE(recovered.has_value(), (recovered ? "" : recovered.error().message));
  CHECK(contains(*recovered, "ifb flt-ifb2 deleted"));
  CHECK(restoreCalls(*kernel) == kHtbTreeRestores);
  CHECK(kernel->objects[{kNetns, "veth0"}].size() == 3);
  CHECK_FALSE(kernel->namespaces.at(kNetns).contains("flt-ifb2"));
  // A crash half-way through the tree: the root is back, one class is missing; recovery adds it.
  kernel->objects[{kNetns, "veth0"}].pop_back();
  kernel->calls.clear();
  REQUIRE(NetworkFaultDriver::revertRecord(record, fakeQdiscOpener(kernel)).has_value());
  CHECK(restoreCalls(*kernel).size() == 1);
  CHECK(kernel->objects[{kNetns, "veth0"}].size() == 3);
}

TEST_CASE_FIXTURE(Fixture, "both: a failed redirect puts the egress root and the tree below it back") {
  addHtbTree(*kernel);
  kernel->failNextRedirect = std::make_error_code(std::errc::no_such_file_or_directory);
  kernel->calls.clear();
  auto failed = driver.apply(partitionSpec(v1::DIRECTION_BOTH));
  REQUIRE_FALSE(failed.has_value());
  CHECK(contains(failed.error().message, "cls_u32 or act_mirred"));
  CHECK(contains(failed.error().message, "the egress root qdisc htb 1: was put back"));
  CHECK_FALSE(failed.error().mayBeChanged);
  CHECK(restoreCalls(*kernel) == kHtbTreeRestores);
  CHECK(root()->kind == "htb");
  CHECK(kernel->objects[{kNetns, "veth0"}].size() == 3);
  CHECK_FALSE(kernel->namespaces.at(kNetns).contains("flt-ifb2"));
  CHECK_FALSE(kernel->ingress.contains({kNetns, "veth0"}));
}

TEST_CASE_FIXTURE(Fixture, "ingress alone leaves the interface's egress tree untouched and unread") {
  addHtbTree(*kernel);
  nlohmann::json record;
  auto applied = driver.apply(ingressBandwidth(), [&](const nlohmann::json& r) -> tl::expected<void, FaultError> {
    record = r;
    return {};
  });
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK_FALSE(record.contains("below"));
  CHECK_FALSE(called("tree veth0"));
  CHECK(root()->kind == "htb");
  CHECK(kernel->objects[{kNetns, "veth0"}].size() == 2);
  REQUIRE((*applied)->revert().has_value());
  CHECK(restoreCalls(*kernel).empty());
  CHECK(root()->kind == "htb");
  CHECK_FALSE(kernel->namespaces.at(kNetns).contains("flt-ifb2"));
}

// --- lost(): the agent's once-a-second check that a held fault is still in place. ---

namespace {

// What someone else does with tc behind the fault's back, through the fake kernel's own table.
std::unique_ptr<kernel::QdiscTable> behindTheBack(const std::shared_ptr<FakeKernel>& kernel) {
  auto table = fakeQdiscOpener(kernel)(kNetns);
  REQUIRE(table.has_value());
  return std::move(*table);
}

const kernel::TbfParams kSomeonesTbf{8'000'000, 10'000, 20'000};

}  // namespace

TEST_CASE_FIXTURE(Fixture, "lost: an egress root replaced or deleted behind the fault's back is named") {
  auto applied = driver.apply(delaySpec());
  REQUIRE(applied.has_value());
  CHECK_FALSE((*applied)->lost().has_value());
  // One read: the namespace opened and the interface's root dumped.
  kernel->calls.clear();
  CHECK_FALSE((*applied)->lost().has_value());
  CHECK(kernel->calls == std::vector<std::string>{"open " + kNetns, "root veth0"});

  SUBCASE("replaced (tc qdisc replace dev veth0 root handle 5: tbf ...)") {
    REQUIRE(behindTheBack(kernel)->replaceRoot("veth0", 0x00050000, kSomeonesTbf).has_value());
    const auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK(*lost ==
          "network.delay on veth0 in /proc/4242/ns/net: the fault is no longer in place: the root qdisc of veth0 is "
          "now tbf 5:, not faultline's netem fa17: (someone replaced it)");
  }
  SUBCASE("deleted (tc qdisc del dev veth0 root): the kernel's default is back") {
    REQUIRE(behindTheBack(kernel)->deleteRoot("veth0").has_value());
    const auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK(contains(*lost,
                   "the root qdisc of veth0 is now noqueue, the kernel's default, not faultline's netem fa17: "
                   "(someone deleted it)"));
  }
  SUBCASE("the same handle with another kind is not faultline's") {
    root() = kernel::QdiscInfo{"tbf", kFaultlineRootHandle, 0xFFFFFFFF, {}};
    REQUIRE((*applied)->lost().has_value());
    CHECK(contains(*(*applied)->lost(), "now tbf fa17:, not faultline's netem fa17:"));
  }
  SUBCASE("a read error is not a loss") {
    REQUIRE(behindTheBack(kernel)->replaceRoot("veth0", 0x00050000, kSomeonesTbf).has_value());
    kernel->failNextOpen = std::make_error_code(std::errc::operation_not_permitted);
    CHECK_FALSE((*applied)->lost().has_value());
  }
  SUBCASE("the interface or the namespace gone is not a loss (revert says the fault went with it)") {
    kernel->namespaces.at(kNetns).erase("veth0");
    CHECK_FALSE((*applied)->lost().has_value());
    kernel->namespaces.erase(kNetns);
    CHECK_FALSE((*applied)->lost().has_value());
  }
  SUBCASE("after a revert there is nothing to watch") {
    REQUIRE((*applied)->revert().has_value());
    kernel->calls.clear();
    CHECK_FALSE((*applied)->lost().has_value());
    CHECK(kernel->calls.empty());
  }
}

TEST_CASE_FIXTURE(Fixture, "lost: an ingress fault's ifb root replaced, ifb deleted or ingress qdisc deleted") {
  auto applied = driver.apply(ingressBandwidth());
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  const std::string ifb = ifbName(kernel->indexOf(kNetns, "veth0"));
  CHECK_FALSE((*applied)->lost().has_value());

  SUBCASE("the ifb's root replaced (tc qdisc replace dev flt-ifb2 root handle 9: ...)") {
    REQUIRE(behindTheBack(kernel)->replaceRoot(ifb, 0x00090000, kSomeonesTbf).has_value());
    const auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK(*lost ==
          "network.bandwidth on veth0 in /proc/4242/ns/net: the fault is no longer in place: the root qdisc of the "
          "ifb flt-ifb2 is now tbf 9:, not faultline's tbf fa17: (someone replaced it)");
  }
  SUBCASE("the interface's ingress qdisc deleted (tc qdisc del dev veth0 ingress)") {
    REQUIRE(behindTheBack(kernel)->deleteIngressQdisc("veth0").has_value());
    const auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK(contains(*lost,
                   "veth0 has no ingress qdisc any more (someone deleted it): its received packets no longer "
                   "go through the ifb flt-ifb2"));
  }
  SUBCASE("the redirects replaced by someone's filter") {
    kernel->redirects.erase({kNetns, "veth0"});
    kernel->otherFilters[{kNetns, "veth0"}] = {kernel::IngressFilter{9, 0x0800, 0x80000800, "u32", {}}};
    const auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK(contains(*lost,
                   "the ingress qdisc of veth0 no longer redirects to the ifb flt-ifb2 (its filters now: u32 "
                   "prio 9 protocol ip handle 800::800)"));
  }
  SUBCASE("the ifb deleted (ip link del flt-ifb2)") {
    REQUIRE(behindTheBack(kernel)->deleteLink(ifb).has_value());
    const auto lost = (*applied)->lost();
    REQUIRE(lost.has_value());
    CHECK(contains(*lost, "the ifb flt-ifb2 no longer exists (someone deleted it)"));
    // Its redirects now point at no device (target 0): the revert still knows them for faultline's.
    REQUIRE((*applied)->revert().has_value());
    CHECK_FALSE(kernel->ingress.contains({kNetns, "veth0"}));
  }
  SUBCASE("the interface's egress root is not watched for an ingress fault") {
    REQUIRE(behindTheBack(kernel)->replaceRoot("veth0", 0x00050000, kSomeonesTbf).has_value());
    CHECK_FALSE((*applied)->lost().has_value());
  }
}

TEST_CASE_FIXTURE(Fixture, "lost: direction both names each part that is gone") {
  auto applied = driver.apply(partitionSpec(v1::DIRECTION_BOTH));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK_FALSE((*applied)->lost().has_value());
  const std::string ifb = ifbName(kernel->indexOf(kNetns, "veth0"));
  REQUIRE(behindTheBack(kernel)->deleteRoot("veth0").has_value());
  REQUIRE(behindTheBack(kernel)->replaceRoot(ifb, 0x00090000, kSomeonesTbf).has_value());
  const auto lost = (*applied)->lost();
  REQUIRE(lost.has_value());
  CHECK(contains(*lost, "the root qdisc of veth0 is now noqueue, the kernel's default, not faultline's htb fa17:"));
  CHECK(contains(*lost, "; the root qdisc of the ifb flt-ifb2 is now tbf 9:, not faultline's htb fa17:"));
}

namespace {

v1::Inject injectOf(const std::string& id, const v1::FaultSpec& spec, std::chrono::milliseconds duration) {
  v1::Inject inject;
  inject.set_fault_id(id);
  *inject.mutable_spec() = spec;
  *inject.mutable_duration() = toProto(duration);
  return inject;
}

}  // namespace

TEST_CASE_FIXTURE(Fixture,
                  "agent: a fault whose root is replaced behind its back is reported FAILED once, still held") {
  boost::asio::io_context io;
  std::vector<v1::FaultReport> reports;
  Agent agent(io, driver, [&](const v1::FaultReport& r) { reports.push_back(r); });
  agent.inject(injectOf("f1", delaySpec(), 30s));
  REQUIRE(reports.size() == 1);
  CHECK(reports[0].state() == v1::FAULT_STATE_APPLIED);
  agent.watch();
  CHECK(reports.size() == 1);  // in place: nothing to say

  REQUIRE(behindTheBack(kernel)->replaceRoot("veth0", 0x00050000, kSomeonesTbf).has_value());
  agent.watch();
  REQUIRE(reports.size() == 2);
  CHECK(reports[1].fault_id() == "f1");
  CHECK(reports[1].state() == v1::FAULT_STATE_FAILED);
  CHECK(reports[1].error_code() == v1::FAULT_ERROR_UNSPECIFIED);  // not permanent: the agent still holds it
  CHECK(reports[1].error() ==
        "network.delay on veth0 in /proc/4242/ns/net: the fault is no longer in place: the root qdisc of veth0 is now "
        "tbf 5:, not faultline's netem fa17: (someone replaced it)");
  CHECK(contains(reports[1].detail(), "netem delay 100ms jitter 10ms"));
  CHECK(agent.activeCount() == 1);
  agent.watch();
  agent.watch();
  CHECK(reports.size() == 2);                                            // each loss once
  CHECK(agent.activeFaults().at(0).state() == v1::FAULT_STATE_APPLIED);  // held, for a Hello

  // Its revert still runs, and leaves someone else's root alone.
  agent.revert("f1");
  REQUIRE(reports.size() == 3);
  CHECK(reports[2].state() == v1::FAULT_STATE_FAILED);
  CHECK(reports[2].error_code() == v1::FAULT_ERROR_PERMANENT);
  CHECK(contains(reports[2].error(), "revert refused: the root qdisc is now tbf 5:"));
  CHECK(agent.activeCount() == 0);
  CHECK(root()->handle == 0x00050000);
}

TEST_CASE_FIXTURE(Fixture, "agent: the watch runs every interval on the io thread while faults are held, then stops") {
  boost::asio::io_context io;
  std::vector<v1::FaultReport> reports;
  // A loss is reported by the timer's check while the fault is still held, never by its end.
  Agent* self = nullptr;
  Agent agent(
      io, driver,
      [&](const v1::FaultReport& r) {
        reports.push_back(r);
        if (r.state() == v1::FAULT_STATE_FAILED) {
          CHECK(self->activeCount() == 1);
        }
      },
      nullptr, Policy{}, 10ms);
  self = &agent;
  SUBCASE("the root deleted mid-fault: FAILED once at the next check, EXPIRED at its end") {
    agent.inject(injectOf("f1", bandwidthSpec(), 300ms));
    boost::asio::steady_timer someone(io, 50ms);
    someone.async_wait(
        [&](const boost::system::error_code&) { REQUIRE(behindTheBack(kernel)->deleteRoot("veth0").has_value()); });
    io.run_for(10s);
    CHECK(io.stopped());  // nothing left: the watch timer went with the last fault
    REQUIRE(reports.size() == 3);
    CHECK(reports[0].state() == v1::FAULT_STATE_APPLIED);
    CHECK(reports[1].state() == v1::FAULT_STATE_FAILED);
    CHECK(contains(reports[1].error(), "the root qdisc of veth0 is now noqueue, the kernel's default"));
    CHECK(reports[2].state() == v1::FAULT_STATE_EXPIRED);  // the default root is what it found: nothing to undo
  }
  SUBCASE("a fault in place is never reported lost") {
    agent.inject(injectOf("f1", bandwidthSpec(), 100ms));
    io.run_for(10s);
    CHECK(io.stopped());
    REQUIRE(reports.size() == 2);
    CHECK(reports[1].state() == v1::FAULT_STATE_EXPIRED);
  }
}

TEST_CASE_FIXTURE(Fixture, "keepOrder: netem refuses it without a rate (it reorders with jitter), before any change") {
  auto spec = delaySpec();
  spec.mutable_network_delay()->set_keep_order(true);
  auto applied = driver.apply(spec);
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::not_supported);
  CHECK(contains(applied.error().message, "keepOrder needs a rate with netem"));
  CHECK(contains(applied.error().message, "--network-driver nfqueue"));
  CHECK(kernel->changes == 0);

  // With a rate netem times each packet from the one before it: order kept, accepted.
  spec.mutable_network_delay()->set_rate_bps(10'000'000);
  auto paced = driver.apply(spec);
  REQUIRE_MESSAGE(paced.has_value(), (paced ? std::string() : paced.error().message));
  REQUIRE((*paced)->revert().has_value());
}
