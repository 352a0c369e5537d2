// The real QdiscTable and NetworkFaultDriver against this machine's kernel, inside a network
// namespace held by a child process that dies with the test (PR_SET_PDEATHSIG), so nothing leaks
// even when the test crashes. Needs root.
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/pkt_sched.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <boost/asio/io_context.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/safety/journal.h"
#include "agent/safety/recovery.h"
#include "agent/session/agent.h"
#include "tests/support/check_cost.h"
#include "tests/support/dying_agent.h"
#include "tests/support/fifo.h"
#include "tests/support/netns.h"
#include "tests/support/text.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;

namespace {

using testing::contains;
using testing::sh;

ino_t netnsInode(const char* path) {
  struct stat st {};
  return ::stat(path, &st) == 0 ? st.st_ino : 0;
}

// The shared throwaway namespace with veth0/veth1, plus the driver and specs these tests use.
class NetnsFixture : public testing::NetnsFixture {
 public:
  std::optional<kernel::QdiscInfo> root(const std::string& ifname = "veth0") {
    auto table = kernel::openQdiscTable(netns_);
    REQUIRE(table.has_value());
    auto r = (*table)->root(ifname);
    REQUIRE(r.has_value());
    return *r;
  }

  v1::FaultSpec bandwidthSpec(uint64_t rateBps, const std::string& interface = "veth0") const {
    v1::FaultSpec spec;
    auto* b = spec.mutable_network_bandwidth();
    b->mutable_target()->set_interface(interface);
    b->mutable_target()->set_netns(netns_);
    b->set_rate_bps(rateBps);
    return spec;
  }

  v1::FaultSpec delaySpec(const std::string& interface = "veth0") const {
    v1::FaultSpec spec;
    auto* d = spec.mutable_network_delay();
    d->mutable_target()->set_interface(interface);
    d->mutable_target()->set_netns(netns_);
    *d->mutable_delay() = toProto(100ms);
    *d->mutable_jitter() = toProto(10ms);
    return spec;
  }

  NetworkFaultDriver driver{kernel::openQdiscTable};
};

// struct tc_tbf_qopt from the TCA_TBF_PARMS attribute of dumped tbf options.
tc_tbf_qopt tbfParms(const std::vector<uint8_t>& options) {
  tc_tbf_qopt qopt{};
  size_t at = 0;
  while (at + 4 <= options.size()) {
    uint16_t len = 0;
    uint16_t type = 0;
    std::memcpy(&len, options.data() + at, 2);
    std::memcpy(&type, options.data() + at + 2, 2);
    if (len < 4) {
      break;
    }
    if (type == TCA_TBF_PARMS && len >= 4 + sizeof(qopt)) {
      std::memcpy(&qopt, options.data() + at + 4, sizeof(qopt));
      break;
    }
    at += (len + 3u) & ~3u;
  }
  return qopt;
}

}  // namespace

TEST_CASE_FIXTURE(NetnsFixture, "tbf through NetworkFaultDriver is installed and removed") {
  const auto before = root();
  REQUIRE(before.has_value());
  CHECK(before->handle == 0);

  auto applied = driver.apply(bandwidthSpec(1'000'000));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));

  // Read back over rtnetlink.
  const auto during = root();
  REQUIRE(during.has_value());
  CHECK(during->kind == "tbf");
  CHECK(during->handle == kFaultlineRootHandle);
  CHECK(during->parent == TC_H_ROOT);
  const auto qopt = tbfParms(during->options);
  CHECK(qopt.rate.rate == 125'000);
  CHECK(qopt.limit == 6250 + 3028);  // 50 ms of the rate on top of the burst
  // And by tc's own reading.
  const auto shown = inNetns("tc qdisc show dev veth0");
  CHECK_MESSAGE(contains(shown, "qdisc tbf fa17: root"), shown);
  CHECK_MESSAGE(contains(shown, "rate 1Mbit"), shown);
  CHECK_MESSAGE(contains(shown, "burst 3028b"), shown);

  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  const auto after = root();
  REQUIRE(after.has_value());
  CHECK(after->kind == before->kind);
  CHECK(after->handle == 0);
  const auto shownAfter = inNetns("tc qdisc show dev veth0");
  CHECK_MESSAGE(!contains(shownAfter, "fa17:"), shownAfter);
}

TEST_CASE_FIXTURE(NetnsFixture, "a pre-existing tbf root is restored exactly") {
  inNetns("tc qdisc add dev veth0 root handle 8001: tbf rate 2mbit burst 10kb latency 50ms");
  const auto saved = root();
  REQUIRE(saved.has_value());
  REQUIRE(saved->kind == "tbf");
  REQUIRE(saved->handle == 0x80010000);
  REQUIRE_FALSE(saved->options.empty());

  auto applied = driver.apply(bandwidthSpec(500'000));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  CHECK(contains((*applied)->describe(), "root was tbf 8001:"));
  const auto during = root();
  REQUIRE(during.has_value());
  CHECK(during->handle == kFaultlineRootHandle);
  CHECK(tbfParms(during->options).rate.rate == 62'500);

  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  const auto after = root();
  REQUIRE(after.has_value());
  CHECK(after->kind == saved->kind);
  CHECK(after->handle == saved->handle);
  CHECK(after->parent == saved->parent);
  CHECK(after->options == saved->options);
  const auto shown = inNetns("tc qdisc show dev veth0");
  CHECK_MESSAGE(contains(shown, "qdisc tbf 8001: root"), shown);
  CHECK_MESSAGE(contains(shown, "rate 2Mbit"), shown);
}

TEST_CASE_FIXTURE(NetnsFixture, "netem: a clear message where the kernel lacks it, and the root unchanged") {
  const auto before = root();
  auto applied = driver.apply(delaySpec());
  if (kernel::probeQdiscSupport().netem) {
    // A kernel with sch_netem (e.g. Debian's, in the VM tier): the fault works and goes away.
    REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
    CHECK(root()->kind == "netem");
    REQUIRE((*applied)->revert().has_value());
  } else {
    REQUIRE_FALSE(applied.has_value());
    CHECK(applied.error().code == std::errc::no_such_file_or_directory);
    CHECK_MESSAGE(contains(applied.error().message, "CONFIG_NET_SCH_NETEM"), applied.error().message);
    CHECK_MESSAGE(contains(applied.error().message, "modprobe sch_netem"), applied.error().message);
  }
  const auto after = root();
  REQUIRE(after.has_value());
  CHECK(after->kind == before->kind);
  CHECK(after->handle == before->handle);
  CHECK(after->options == before->options);
}

TEST_CASE_FIXTURE(NetnsFixture, "a missing interface is ENODEV with a message naming it") {
  auto table = kernel::openQdiscTable(netns_);
  REQUIRE(table.has_value());
  CHECK((*table)->root("nosuch0").error() == std::errc::no_such_device);
  CHECK((*table)->replaceRoot("nosuch0", kFaultlineRootHandle, kernel::TbfParams{8000, 3028, 3028}).error() ==
        std::errc::no_such_device);
  CHECK((*table)->deleteRoot("veth0").error() == std::errc::no_such_file_or_directory);  // a default root

  auto applied = driver.apply(bandwidthSpec(1'000'000, "nosuch0"));
  REQUIRE_FALSE(applied.has_value());
  CHECK(applied.error().code == std::errc::no_such_device);
  CHECK_MESSAGE(contains(applied.error().message, "interface nosuch0 does not exist in " + netns_),
                applied.error().message);
}

TEST_CASE_FIXTURE(NetnsFixture, "other classless roots with a handle are restored exactly") {
  for (const std::string qdisc : {"pfifo limit 50", "bfifo limit 20000", "pfifo_head_drop limit 30"}) {
    CAPTURE(qdisc);
    inNetns(fmt::format("tc qdisc replace dev veth0 root handle 7: {}", qdisc));
    const auto saved = root();
    REQUIRE(saved.has_value());
    auto applied = driver.apply(bandwidthSpec(1'000'000));
    REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
    auto reverted = (*applied)->revert();
    REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
    const auto after = root();
    REQUIRE(after.has_value());
    CHECK(after->kind == saved->kind);
    CHECK(after->handle == 0x00070000);
    CHECK(after->options == saved->options);
    inNetns("tc qdisc del dev veth0 root");  // the next kind may not replace this one in place
  }
}

TEST_CASE_FIXTURE(NetnsFixture, "rootChildren lists the qdiscs attached below the root") {
  inNetns("tc qdisc add dev veth0 root handle 7: tbf rate 2mbit burst 10kb latency 50ms");
  inNetns("tc qdisc add dev veth0 parent 7:1 handle 10: pfifo limit 50");
  auto table = kernel::openQdiscTable(netns_);
  REQUIRE(table.has_value());
  auto children = (*table)->rootChildren("veth0");
  REQUIRE(children.has_value());
  REQUIRE(children->size() == 1);
  CHECK((*children)[0].kind == "pfifo");
  CHECK((*children)[0].handle == 0x00100000);
  CHECK((*children)[0].parent == 0x00070001);

  // The default noqueue root has nothing below it; a tbf's hidden inner bfifo is not listed.
  inNetns("tc qdisc del dev veth0 root");
  CHECK((*table)->rootChildren("veth0")->empty());
  inNetns("tc qdisc add dev veth0 root handle 7: tbf rate 2mbit burst 10kb latency 50ms");
  CHECK((*table)->rootChildren("veth0")->empty());
}

TEST_CASE_FIXTURE(NetnsFixture, "the interface deleted during the fault: revert succeeds with nothing to do") {
  auto applied = driver.apply(bandwidthSpec(1'000'000));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  inNetns("ip link del veth0");
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  CHECK_MESSAGE(contains((*applied)->describe(), "interface veth0 no longer exists; nothing to revert"),
                (*applied)->describe());
}

TEST_CASE_FIXTURE(NetnsFixture, "the namespace gone during the fault: revert succeeds with nothing to do") {
  auto applied = driver.apply(bandwidthSpec(1'000'000));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  holder_.kill();
  auto reverted = (*applied)->revert();
  REQUIRE_MESSAGE(reverted.has_value(), (reverted ? "" : reverted.error().message));
  CHECK_MESSAGE(contains((*applied)->describe(), fmt::format("network namespace {} no longer exists", netns_)),
                (*applied)->describe());
}

TEST_CASE_FIXTURE(NetnsFixture, "a root someone put in place of faultline's is left alone: EBUSY, permanent") {
  auto applied = driver.apply(bandwidthSpec(1'000'000));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  inNetns("tc qdisc replace dev veth0 root handle 1: pfifo limit 77");
  auto reverted = (*applied)->revert();
  REQUIRE_FALSE(reverted.has_value());
  CHECK(reverted.error().code == std::errc::device_or_resource_busy);
  CHECK(reverted.error().permanent);
  CHECK_MESSAGE(contains(reverted.error().message, "the root qdisc is now pfifo 1:, not faultline's tbf fa17:"),
                reverted.error().message);
  const auto shown = inNetns("tc qdisc show dev veth0");
  CHECK_MESSAGE(contains(shown, "qdisc pfifo 1: root"), shown);
  CHECK_MESSAGE(contains(shown, "limit 77p"), shown);
}

TEST_CASE("a path that is not a network namespace is named as such") {
  NetworkFaultDriver driver{kernel::openQdiscTable};
  for (const std::string path : {"/etc/passwd", "/tmp", "/proc/self/ns/mnt"}) {
    CAPTURE(path);
    v1::FaultSpec spec;
    auto* b = spec.mutable_network_bandwidth();
    b->mutable_target()->set_interface("veth0");
    b->mutable_target()->set_netns(path);
    b->set_rate_bps(1'000'000);
    auto applied = driver.apply(spec);
    REQUIRE_FALSE(applied.has_value());
    CHECK(applied.error().code == std::errc::invalid_argument);
    CHECK_MESSAGE(contains(applied.error().message, fmt::format("{} is not a network namespace", path)),
                  applied.error().message);
    CHECK_FALSE(contains(applied.error().message, "Invalid argument"));
  }
}

TEST_CASE("openQdiscTable leaves the caller's namespace and reports bad paths") {
  const ino_t before = netnsInode("/proc/thread-self/ns/net");
  CHECK(kernel::openQdiscTable("/nonexistent/netns").error() == std::errc::no_such_file_or_directory);
  CHECK(kernel::openQdiscTable("/proc/self/ns/uts").error() == std::errc::invalid_argument);
  {
    NetnsFixture ns;
    auto table = kernel::openQdiscTable(ns.netns());
    REQUIRE(table.has_value());
    CHECK(netnsInode("/proc/thread-self/ns/net") == before);
    CHECK((*table)->root("veth0").has_value());  // the socket answers from the other namespace
  }
  CHECK(netnsInode("/proc/thread-self/ns/net") == before);
}

TEST_CASE("probeQdiscSupport matches tc and leaves the caller's namespace unchanged") {
  const ino_t before = netnsInode("/proc/thread-self/ns/net");
  REQUIRE(before != 0);
  const auto support = kernel::probeQdiscSupport();
  CHECK(netnsInode("/proc/thread-self/ns/net") == before);
  CHECK(support.tbf);
  // The same question asked through tc in a throwaway namespace (this machine: no sch_netem).
  const bool tcNetem = sh("unshare --net tc qdisc add dev lo root netem delay 1ms").status == 0;
  CHECK(support.netem == tcNetem);
  MESSAGE("netem: ", support.netem, ", tbf: ", support.tbf);
}

TEST_CASE_FIXTURE(NetnsFixture, "an agent killed mid-fault: recovery at the next start puts the root back") {
  inNetns("tc qdisc add dev veth0 root handle 8001: tbf rate 2mbit burst 10kb latency 50ms");
  const auto saved = root();
  REQUIRE(saved.has_value());
  const auto shownBefore = inNetns("tc qdisc show dev veth0");
  std::string pattern = (std::filesystem::temp_directory_path() / "faultline-journal-XXXXXX").string();
  REQUIRE(::mkdtemp(pattern.data()) != nullptr);
  const std::filesystem::path stateDir = pattern;

  // A child applies network.bandwidth through an Agent with a journal and dies without
  // reverting, as a crashed agent would.
  testing::agentDiesHoldingFault(
      stateDir, [&]() -> FaultDriver& { return driver; }, "crash-1", bandwidthSpec(1'000'000));

  const auto during = root();
  REQUIRE(during.has_value());
  CHECK(during->kind == "tbf");
  CHECK(during->handle == kFaultlineRootHandle);
  CHECK(std::filesystem::file_size(stateDir / UndoJournal::kFileName) > 0);

  // The next start.
  auto journal = openJournalAndRecover(stateDir, kernel::openQdiscTable);
  REQUIRE_MESSAGE(journal.has_value(), (journal ? "" : journal.error().message));
  CHECK((*journal)->openCount() == 0);
  CHECK(std::filesystem::file_size(stateDir / UndoJournal::kFileName) == 0);
  const auto after = root();
  REQUIRE(after.has_value());
  CHECK(after->kind == saved->kind);
  CHECK(after->handle == saved->handle);
  CHECK(after->parent == saved->parent);
  CHECK(after->options == saved->options);
  CHECK(inNetns("tc qdisc show dev veth0") == shownBefore);

  std::error_code ec;
  std::filesystem::remove_all(stateDir, ec);
}

TEST_CASE("a read-only state directory: the journal does not open and says why") {
  std::string pattern = (std::filesystem::temp_directory_path() / "faultline-rostate-XXXXXX").string();
  REQUIRE(::mkdtemp(pattern.data()) != nullptr);
  const std::filesystem::path stateDir = pattern;
  // Root writes through file modes, so make the directory a read-only mount in a private mount
  // namespace of a child.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("tmpfs", stateDir.c_str(), "tmpfs", MS_RDONLY, nullptr) != 0) {
      ::_exit(2);
    }
    auto opened = UndoJournal::open(stateDir);
    if (opened) {
      ::_exit(3);
    }
    const bool clear =
        opened.error().code == std::errc::read_only_file_system &&
        opened.error().message.find("cannot open the undo journal " + stateDir.string()) != std::string::npos &&
        opened.error().message.find("must exist and be writable") != std::string::npos;
    ::_exit(clear ? 0 : 4);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  std::error_code ec;
  std::filesystem::remove_all(stateDir, ec);
}

TEST_CASE_FIXTURE(NetnsFixture, "the agent's watch: a root replaced with tc mid-fault is reported lost within ~2 s") {
  boost::asio::io_context io;
  std::vector<v1::FaultReport> reports;
  Agent agent(io, driver, [&](const v1::FaultReport& r) { reports.push_back(r); });
  v1::Inject inject;
  inject.set_fault_id("f1");
  *inject.mutable_spec() = bandwidthSpec(1'000'000);
  *inject.mutable_duration() = toProto(30s);
  agent.inject(inject);
  REQUIRE(reports.size() == 1);
  REQUIRE_MESSAGE(reports[0].state() == v1::FAULT_STATE_APPLIED, reports[0].error());
  io.run_for(1500ms);  // a check or two with the fault in place: nothing to say
  CHECK(reports.size() == 1);

  inNetns("tc qdisc replace dev veth0 root handle 5: tbf rate 8mbit burst 10kb latency 50ms");
  const auto replaced = std::chrono::steady_clock::now();
  while (reports.size() < 2 && std::chrono::steady_clock::now() - replaced < 5s) {
    io.run_one_for(100ms);
  }
  const auto after = std::chrono::steady_clock::now() - replaced;
  REQUIRE(reports.size() == 2);
  MESSAGE(fmt::format("lost reported {:.0f} ms after the tc replace",
                      std::chrono::duration<double, std::milli>(after).count()));
  CHECK(after < 2500ms);
  CHECK(reports[1].state() == v1::FAULT_STATE_FAILED);
  CHECK_MESSAGE(contains(reports[1].error(),
                         "the fault is no longer in place: the root qdisc of veth0 is now tbf 5:, not faultline's tbf "
                         "fa17: (someone replaced it)"),
                reports[1].error());
  io.run_for(2500ms);
  CHECK(reports.size() == 2);  // reported once
  CHECK(agent.activeCount() == 1);

  // The revert still runs and leaves someone's root alone.
  agent.revert("f1");
  REQUIRE(reports.size() == 3);
  CHECK(reports[2].error_code() == v1::FAULT_ERROR_PERMANENT);
  CHECK(contains(inNetns("tc qdisc show dev veth0"), "qdisc tbf 5: root"));
}

TEST_CASE_FIXTURE(NetnsFixture, "lost(): the root deleted is named; one check costs microseconds (printed)") {
  auto applied = driver.apply(bandwidthSpec(1'000'000));
  REQUIRE_MESSAGE(applied.has_value(), (applied ? "" : applied.error().message));
  MESSAGE(fmt::format("egress lost(): {}", testing::checkCost(200, [&] { return !(*applied)->lost().has_value(); })));
  inNetns("tc qdisc del dev veth0 root");
  const auto lost = (*applied)->lost();
  REQUIRE(lost.has_value());
  CHECK_MESSAGE(contains(*lost,
                         "the root qdisc of veth0 is now noqueue, the kernel's default, not faultline's tbf "
                         "fa17: (someone deleted it)"),
                *lost);
  REQUIRE((*applied)->revert().has_value());  // the default it found is what it saved
}

TEST_CASE("openQdiscTable: a FIFO or a regular file named as the netns is refused at once (EINVAL), never waited on") {
  faultline::testing::TempFifo fifo;
  const auto [table, took] = fifo.callWithin(2s, [&] { return kernel::openQdiscTable(fifo.path()); });
  MESSAGE("a FIFO as netns refused in ", std::chrono::duration_cast<std::chrono::microseconds>(took).count(), " us");
  CHECK(took < 100ms);
  REQUIRE_FALSE(table.has_value());
  CHECK(table.error() == std::errc::invalid_argument);
  auto proc = kernel::openQdiscTable("/proc/self/stat");
  REQUIRE_FALSE(proc.has_value());
  CHECK(proc.error() == std::errc::invalid_argument);
}
