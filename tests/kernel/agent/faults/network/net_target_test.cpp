// Network fault targets resolved on this machine's kernel (agent/faults/network/net_target.h): a namespace chosen
// by process and pinned, the interface of the default route, a path that is the agent's own
// namespace, and the crash recovery finding a namespace by its identity. Every namespace is held
// by a child of the test (tests/support/netns_holder.h) and pins go to a directory of the test's
// own. Needs root.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <boost/asio/io_context.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/network/net_target.h"
#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/kernel/route.h"
#include "agent/safety/journal.h"
#include "agent/safety/recovery.h"
#include "agent/session/agent.h"
#include "tests/support/dying_agent.h"
#include "tests/support/fifo.h"
#include "tests/support/netns_holder.h"
#include "tests/support/text.h"

using namespace faultline;
using namespace faultline::agent;

namespace {

using testing::NetnsHolder;

using testing::contains;

std::optional<kernel::QdiscInfo> rootAt(const std::string& netns, const std::string& ifname) {
  auto table = kernel::openQdiscTable(netns);
  REQUIRE(table.has_value());
  auto r = (*table)->root(ifname);
  REQUIRE(r.has_value());
  return *r;
}

// A temporary directory, removed with what is in it (pins are unmounted first).
struct TempDir {
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "faultline-target-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() {
    (void)releaseAllNetnsPins(path / "pins");
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  [[nodiscard]] size_t pins() const {
    std::error_code ec;
    size_t n = 0;
    for (std::filesystem::directory_iterator it(path / "pins", ec); !ec && it != std::filesystem::directory_iterator();
         it.increment(ec)) {
      ++n;
    }
    return n;
  }
  std::filesystem::path path;
};

v1::FaultSpec bandwidth(const std::string& interface) {
  v1::FaultSpec spec;
  auto* b = spec.mutable_network_bandwidth();
  b->mutable_target()->set_interface(interface);
  b->set_rate_bps(1'000'000);
  return spec;
}

struct Drivers {
  explicit Drivers(const std::filesystem::path& pinDir) : resolver(processes.get(), pinDir) {
    driver.setTargetResolver(&resolver);
  }
  std::unique_ptr<kernel::ProcessTable> processes = kernel::openProcessTable();
  NetworkTargetResolver resolver;
  NetworkFaultDriver driver{kernel::openQdiscTable};
};

}  // namespace

TEST_CASE("netns chosen by pid: the namespace is pinned, faulted, and reverted after its process exited") {
  NetnsHolder holder;
  REQUIRE_MESSAGE(holder.error().empty(), holder.error());
  TempDir dir;
  Drivers d(dir.path / "pins");
  auto spec = bandwidth("veth0");
  spec.mutable_network_bandwidth()->mutable_target()->mutable_netns_process()->set_pid(holder.pid());
  REQUIRE(validateFaultSpec(spec).has_value());

  nlohmann::json record;
  auto applied = d.driver.apply(spec, [&record](const nlohmann::json& undo) -> tl::expected<void, FaultError> {
    record = undo;
    return {};
  });
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK(dir.pins() == 1);
  const auto during = rootAt(holder.path(), "veth0");
  REQUIRE(during.has_value());
  CHECK(during->kind == "tbf");
  CHECK(during->handle == kFaultlineRootHandle);
  const std::string text = (*applied)->describe();
  CHECK_MESSAGE(contains(text, fmt::format("namespace of pid {}", holder.pid())), text);
  CHECK_MESSAGE(contains(text, "pinned at " + (dir.path / "pins").string()), text);
  // The undo record names the pin and the namespace's identity, for the crash recovery.
  REQUIRE(record.contains("pin"));
  CHECK(record["netns"] == record["pin"]);
  const auto identity = netnsIdentity(holder.path());
  REQUIRE(identity.has_value());
  CHECK(record["netnsIdentity"]["ino"].get<uint64_t>() == identity->ino);

  // The process goes; the pin keeps the namespace, and the revert still reaches it.
  const std::string pin = record["pin"].get<std::string>();
  holder.kill();
  const auto stillThere = rootAt(pin, "veth0");
  REQUIRE(stillThere.has_value());
  CHECK(stillThere->handle == kFaultlineRootHandle);
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  CHECK(dir.pins() == 0);
}

TEST_CASE("netns given as /proc/PID/ns/net is pinned too: the revert reaches it after PID exited") {
  NetnsHolder holder;
  REQUIRE_MESSAGE(holder.error().empty(), holder.error());
  TempDir dir;
  Drivers d(dir.path / "pins");
  auto spec = bandwidth("veth0");
  spec.mutable_network_bandwidth()->mutable_target()->set_netns(holder.path());
  REQUIRE(validateFaultSpec(spec).has_value());
  nlohmann::json record;
  auto applied = d.driver.apply(spec, [&record](const nlohmann::json& undo) -> tl::expected<void, FaultError> {
    record = undo;
    return {};
  });
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK(dir.pins() == 1);
  REQUIRE(record.contains("pin"));
  const std::string pin = record["pin"].get<std::string>();
  CHECK(record["netns"] == pin);
  CHECK_MESSAGE(contains((*applied)->describe(), fmt::format("namespace {} pinned at", holder.path())),
                (*applied)->describe());
  // Before, the path went with the process: the revert said "no longer exists" and left the
  // fault on a namespace that lived on (held here by the pin, in the trial by `ip netns`).
  const int keep = ::open(holder.path().c_str(), O_RDONLY | O_CLOEXEC);  // to look after the pin is gone
  REQUIRE(keep >= 0);
  holder.kill();
  REQUIRE(rootAt(pin, "veth0")->handle == kFaultlineRootHandle);
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  CHECK_FALSE(contains((*applied)->describe(), "no longer exists"));
  CHECK(dir.pins() == 0);
  const auto after = rootAt(fmt::format("/proc/self/fd/{}", keep), "veth0");
  ::close(keep);
  REQUIRE(after.has_value());
  CHECK(after->handle == 0);  // the kernel's default again
}

TEST_CASE("netns chosen by a selector that picks processes in two namespaces is refused, nothing pinned") {
  NetnsHolder a;
  NetnsHolder b;
  REQUIRE(a.error().empty());
  REQUIRE(b.error().empty());
  TempDir dir;
  Drivers d(dir.path / "pins");
  // Both holders are forks of this test binary: the same command line (the test process itself
  // and its ancestors are never picked).
  std::string self = std::filesystem::read_symlink("/proc/self/exe").filename().string();
  auto spec = bandwidth("veth0");
  spec.mutable_network_bandwidth()->mutable_target()->mutable_netns_process()->set_name(self);
  auto applied = d.driver.apply(spec);
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::invalid_argument);
  CHECK_MESSAGE(contains(applied.error().message, "network namespaces"), applied.error().message);
  CHECK_MESSAGE(contains(applied.error().message, "nothing was changed"), applied.error().message);
  CHECK(dir.pins() == 0);
  CHECK_FALSE(rootAt(a.path(), "veth0")->handle == kFaultlineRootHandle);
  CHECK_FALSE(rootAt(b.path(), "veth0")->handle == kFaultlineRootHandle);
}

TEST_CASE("netns chosen by a selector that matches nothing names what was searched") {
  TempDir dir;
  Drivers d(dir.path / "pins");
  auto spec = bandwidth("veth0");
  spec.mutable_network_bandwidth()->mutable_target()->mutable_netns_process()->set_name("no-such-process-fl");
  auto applied = d.driver.apply(spec);
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::no_such_process);
  CHECK_MESSAGE(contains(applied.error().message, "no-such-process-fl"), applied.error().message);
  CHECK(dir.pins() == 0);
}

TEST_CASE("interface default: the default route's interface, IPv4 first, then IPv6; none is a clear error") {
  NetnsHolder holder;
  REQUIRE_MESSAGE(holder.error().empty(), holder.error());
  // No route at all yet.
  auto none = kernel::defaultRouteInterface(holder.path());
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error() == std::errc::network_unreachable);

  REQUIRE(holder.inNetns("ip -6 route add default dev veth1"));
  auto v6 = kernel::defaultRouteInterface(holder.path());
  REQUIRE_MESSAGE(v6.has_value(), v6.error().message());
  CHECK(*v6 == "veth1");

  REQUIRE(holder.inNetns("ip addr add 10.77.0.1/24 dev veth0"));
  REQUIRE(holder.inNetns("ip route add default via 10.77.0.2 dev veth0"));
  auto v4 = kernel::defaultRouteInterface(holder.path());
  REQUIRE(v4.has_value());
  CHECK(*v4 == "veth0");

  TempDir dir;
  Drivers d(dir.path / "pins");
  auto spec = bandwidth("default");
  spec.mutable_network_bandwidth()->mutable_target()->set_netns(holder.path());
  auto applied = d.driver.apply(spec);
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK(rootAt(holder.path(), "veth0")->handle == kFaultlineRootHandle);
  CHECK_FALSE(rootAt(holder.path(), "veth1")->handle == kFaultlineRootHandle);
  CHECK_MESSAGE(contains((*applied)->describe(), "interface default is veth0"), (*applied)->describe());
  REQUIRE((*applied)->revert().has_value());
  CHECK_FALSE(rootAt(holder.path(), "veth0")->handle == kFaultlineRootHandle);
}

TEST_CASE("interface default in a namespace without a default route: refused, nothing changed") {
  NetnsHolder holder;
  REQUIRE_MESSAGE(holder.error().empty(), holder.error());
  TempDir dir;
  Drivers d(dir.path / "pins");
  auto spec = bandwidth("default");
  spec.mutable_network_bandwidth()->mutable_target()->set_netns(holder.path());
  const auto before = rootAt(holder.path(), "veth0");
  auto applied = d.driver.apply(spec);
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::network_unreachable);
  CHECK_MESSAGE(contains(applied.error().message, "has no default route"), applied.error().message);
  CHECK_MESSAGE(contains(applied.error().message, "name the interface instead"), applied.error().message);
  const auto after = rootAt(holder.path(), "veth0");
  CHECK(before.has_value() == after.has_value());
  if (before && after) {
    CHECK(before->kind == after->kind);
    CHECK(before->handle == after->handle);
  }
}

TEST_CASE("a netns path that is the agent's own namespace is targeted as its own (the controller stays exempt)") {
  TempDir dir;
  NetworkTargetResolver resolver(nullptr, dir.path / "pins");
  v1::NetworkTarget target;
  target.set_interface("eth0");
  target.set_netns("/proc/self/ns/net");
  auto resolved = resolver.resolve(target, "network.bandwidth");  // resolves only: no kernel change
  REQUIRE(resolved.has_value());
  CHECK(resolved->netns.empty());
  CHECK_FALSE(resolved->identity.has_value());
  CHECK_MESSAGE(contains(resolved->note, "is the agent's own"), resolved->note);

  NetnsHolder holder;
  REQUIRE(holder.error().empty());
  target.set_netns(holder.path());
  resolved = resolver.resolve(target, "network.bandwidth");
  REQUIRE(resolved.has_value());
  // Another namespace, named through its process: pinned (the revert must reach it after the
  // process exits).
  CHECK(resolved->netns == resolved->pin);
  CHECK(resolved->pin.starts_with((dir.path / "pins").string()));
  CHECK(resolved->identity.has_value());
  CHECK_MESSAGE(contains(resolved->note, fmt::format("namespace {} pinned at", holder.path())), resolved->note);
  CHECK(releaseNetnsPin(resolved->pin).has_value());
}

TEST_CASE("crash recovery finds a namespace by its identity when the recorded path no longer names it") {
  NetnsHolder holder;
  REQUIRE(holder.error().empty());
  const auto identity = netnsIdentity(holder.path());
  REQUIRE(identity.has_value());
  nlohmann::json undo = {{"netns", "/proc/999999999/ns/net"},
                         {"netnsIdentity", {{"dev", identity->dev}, {"ino", identity->ino}}}};
  const auto moved = relocateNetns(undo);
  CHECK(moved.state == NetnsRelocation::State::kMoved);
  const auto found = netnsIdentity(undo["netns"].get<std::string>());
  REQUIRE(found.has_value());
  CHECK(*found == *identity);

  holder.kill();
  undo["netns"] = "/proc/999999999/ns/net";
  const auto gone = relocateNetns(undo);
  CHECK(gone.state == NetnsRelocation::State::kGone);
  CHECK_MESSAGE(contains(gone.note, "no longer exists"), gone.note);
}

TEST_CASE("an agent killed mid-fault on a pinned namespace: the recovery reverts through the pin and unpins") {
  NetnsHolder holder;
  REQUIRE_MESSAGE(holder.error().empty(), holder.error());
  TempDir dir;
  const std::filesystem::path stateDir = dir.path / "state";
  std::filesystem::create_directories(stateDir);
  const pid_t target = holder.pid();
  auto spec = bandwidth("veth0");
  spec.mutable_network_bandwidth()->mutable_target()->mutable_netns_process()->set_pid(target);
  std::optional<Drivers> drivers;  // made in the agent's child only: its pins die with it
  testing::agentDiesHoldingFault(
      stateDir,
      [&]() -> FaultDriver& {
        drivers.emplace(dir.path / "pins");
        return drivers->driver;
      },
      "pinned-1", spec);
  REQUIRE(dir.pins() == 1);
  CHECK(rootAt(holder.path(), "veth0")->handle == kFaultlineRootHandle);
  holder.kill();  // only the pin holds the namespace now

  auto journal = openJournalAndRecover(stateDir, kernel::openQdiscTable);
  REQUIRE_MESSAGE(journal.has_value(), (journal ? "" : journal.error().message));
  CHECK((*journal)->openCount() == 0);
  CHECK(dir.pins() == 0);
}

TEST_CASE("network.bandwidth keeps its burst at least one full-size packet of the interface (jumbo MTU)") {
  NetnsHolder holder;
  REQUIRE_MESSAGE(holder.error().empty(), holder.error());
  REQUIRE(holder.inNetns("ip link set veth0 mtu 9000"));
  TempDir dir;
  Drivers d(dir.path / "pins");
  auto spec = bandwidth("veth0");
  spec.mutable_network_bandwidth()->mutable_target()->set_netns(holder.path());
  auto applied = d.driver.apply(spec);
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  // 10 ms of 1 Mbit/s is 1250 B (3028 B at least): raised to 9000 + 14.
  CHECK_MESSAGE(contains((*applied)->describe(), "burst 9014B"), (*applied)->describe());
  REQUIRE((*applied)->revert().has_value());

  // An explicit burst below a full-size packet is refused before any change.
  auto small = bandwidth("veth1");
  small.mutable_network_bandwidth()->mutable_target()->set_netns(holder.path());
  small.mutable_network_bandwidth()->set_burst_bytes(1000);
  const auto before = rootAt(holder.path(), "veth1");
  auto refused = d.driver.apply(small);
  REQUIRE_FALSE(refused.has_value());
  CHECK(refused.error().code == std::errc::invalid_argument);
  CHECK_MESSAGE(contains(refused.error().message, "burst 1000B is smaller than a full-size packet there (MTU 1500"),
                refused.error().message);
  CHECK_MESSAGE(contains(refused.error().message, "at least 1514b"), refused.error().message);
  const auto after = rootAt(holder.path(), "veth1");
  CHECK(before.has_value() == after.has_value());
  if (before && after) {
    CHECK(before->handle == after->handle);
    CHECK(before->kind == after->kind);
  }
}

TEST_CASE("a netns path that is a FIFO or a device is refused at once, naming what it is, and nothing changes") {
  TempDir dir;
  Drivers d(dir.path / "pins");
  testing::TempFifo fifo;
  v1::FaultSpec spec = bandwidth("lo");
  spec.mutable_network_bandwidth()->mutable_target()->set_netns(fifo.path());
  const auto [applied, took] = fifo.callWithin(std::chrono::seconds(2), [&] { return d.driver.apply(spec); });
  MESSAGE("a FIFO as netns refused in ", std::chrono::duration_cast<std::chrono::microseconds>(took).count(), " us");
  CHECK(took < std::chrono::milliseconds(100));
  REQUIRE_FALSE(applied);
  CHECK(applied.error().code == std::errc::invalid_argument);
  CHECK_MESSAGE(contains(applied.error().message, fmt::format("target.netns {} is a FIFO, not a namespace; accepted: "
                                                              "a network namespace file",
                                                              fifo.path())),
                applied.error().message);
  CHECK(dir.pins() == 0);

  spec.mutable_network_bandwidth()->mutable_target()->set_netns("/dev/zero");
  auto device = d.driver.apply(spec);
  REQUIRE_FALSE(device);
  CHECK_MESSAGE(contains(device.error().message, "target.netns /dev/zero is a character device, not a namespace"),
                device.error().message);
}
