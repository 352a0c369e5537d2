// revertAllFaults() (faultline-agent revert-all) against the in-memory qdisc table: the journal's
// open entries are reverted, then faultline's leftover roots are deleted and nothing else; what
// cannot be removed is reported.
#include <unistd.h>

#include <filesystem>

#include <doctest/doctest.h>

#include "agent/faults/network/net_driver.h"
#include "agent/safety/journal.h"
#include "agent/safety/revert_all.h"
#include "tests/fakes/fake_qdisc_table.h"

using namespace faultline;
using namespace faultline::agent;
using faultline::testing::FakeKernel;
using faultline::testing::fakeQdiscOpener;

namespace {

const std::string kNs = "/proc/777/ns/net";
const std::string kNamed = "/run/netns/blue";

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

struct RevertAllFixture {
  std::filesystem::path dir;
  std::shared_ptr<FakeKernel> kernel = std::make_shared<FakeKernel>();
  const kernel::QdiscInfo foreign{"tbf", 0x80010000, 0xFFFFFFFF, {1, 2, 3}};
  const kernel::QdiscInfo ours{"tbf", kFaultlineRootHandle, 0xFFFFFFFF, {9, 9}};

  RevertAllFixture() {
    std::string pattern = (std::filesystem::temp_directory_path() / "faultline-revert-all-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    dir = pattern;
    kernel->addInterface("", "eth0");
    kernel->addInterface(kNs, "veth0", ours);  // journalled: the saved root was foreign
    kernel->addInterface(kNs, "veth1", foreign);
    kernel->addInterface(kNamed, "eth1", kernel::QdiscInfo{"netem", kFaultlineRootHandle, 0xFFFFFFFF, {7}});
  }
  ~RevertAllFixture() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }

  void journalVeth0() {
    auto opened = UndoJournal::open(dir);
    REQUIRE(opened.has_value());
    const nlohmann::json undo = {
        {"fault", "network.bandwidth"},
        {"netns", kNs},
        {"interface", "veth0"},
        {"handle", kFaultlineRootHandle},
        {"qdisc", "tbf"},
        {"saved", {{"kind", "tbf"}, {"handle", 0x80010000}, {"parent", 0xFFFFFFFF}, {"options", "010203"}}}};
    REQUIRE(opened->journal->begin("f1", "network.bandwidth", undo).has_value());
    REQUIRE(opened->journal->applied("f1").has_value());
  }
  RevertAllReport revertAll() { return revertAllFaults(dir, {"", kNs, kNamed}, fakeQdiscOpener(kernel)); }
};

}  // namespace

TEST_CASE_FIXTURE(RevertAllFixture, "revert-all: the journal first, then faultline's leftovers, nothing else") {
  journalVeth0();
  const auto report = revertAll();
  CHECK(report.clean());
  REQUIRE(report.reverted.size() == 1);
  CHECK(contains(report.reverted[0], "fault f1 (network.bandwidth): reverted"));
  REQUIRE(report.removed.size() == 1);
  CHECK(report.removed[0] == "netem fa17: on eth1 in /run/netns/blue");
  CHECK(report.namespaces == 3);
  CHECK(report.interfaces == 4);
  // veth0 got its saved root back from the journal (the scan alone would have left the default).
  CHECK(kernel->rootOf(kNs, "veth0")->handle == 0x80010000);
  CHECK(kernel->rootOf(kNs, "veth0")->options == std::vector<uint8_t>{1, 2, 3});
  CHECK(kernel->rootOf(kNs, "veth1")->options == foreign.options);
  CHECK(kernel->rootOf(kNamed, "eth1")->handle == 0);
  CHECK(kernel->rootOf("", "eth0")->handle == 0);
  CHECK(std::filesystem::file_size(dir / UndoJournal::kFileName) == 0);  // nothing open

  // A second run finds nothing to do.
  const auto again = revertAll();
  CHECK(again.clean());
  CHECK(again.reverted.empty());
  CHECK(again.removed.empty());
}

TEST_CASE_FIXTURE(RevertAllFixture, "revert-all with an agent running on the state directory touches nothing") {
  journalVeth0();
  auto running = UndoJournal::open(dir);  // the running agent holds the journal
  REQUIRE(running.has_value());
  const auto report = revertAll();
  CHECK_FALSE(report.clean());
  CHECK(report.agentRunning);
  REQUIRE(report.failed.size() == 1);
  CHECK(contains(report.failed[0], "in use by another running faultline agent"));
  CHECK(contains(report.failed[0], "nothing was reverted or removed"));
  CHECK(report.removed.empty());
  CHECK(report.reverted.empty());
  CHECK(kernel->rootOf(kNs, "veth0")->handle == kFaultlineRootHandle);  // the agent's live fault stays
  CHECK(kernel->rootOf(kNamed, "eth1")->handle == kFaultlineRootHandle);
}

TEST_CASE_FIXTURE(RevertAllFixture, "revert-all without a journal deletes our roots and never creates one") {
  const auto missing = dir / "absent";
  const auto report = revertAllFaults(missing, {"", kNs, kNamed}, fakeQdiscOpener(kernel));
  CHECK(report.clean());
  CHECK(report.removed.size() == 2);
  REQUIRE(report.notes.size() == 1);
  CHECK(report.notes[0] == "no undo journal at " + (missing / "journal.jsonl").string());
  CHECK_FALSE(std::filesystem::exists(missing));
  CHECK(kernel->rootOf(kNs, "veth0")->handle == 0);  // nothing saved the root before ours
  CHECK(kernel->rootOf(kNs, "veth1")->handle == foreign.handle);
}

TEST_CASE_FIXTURE(RevertAllFixture, "revert-all reports a root it cannot delete and a namespace it cannot open") {
  kernel->failNextDelete = std::make_error_code(std::errc::operation_not_permitted);
  auto report = revertAllFaults(dir / "absent", {kNs}, fakeQdiscOpener(kernel));
  CHECK_FALSE(report.clean());
  REQUIRE(report.failed.size() == 1);
  CHECK(contains(report.failed[0], "tbf fa17: on veth0 in /proc/777/ns/net: cannot delete it: "));
  CHECK(kernel->rootOf(kNs, "veth0")->handle == kFaultlineRootHandle);

  kernel->failNextOpen = std::make_error_code(std::errc::operation_not_permitted);
  report = revertAllFaults(dir / "absent", {kNamed}, fakeQdiscOpener(kernel));
  CHECK_FALSE(report.clean());
  REQUIRE(report.failed.size() == 1);
  CHECK(contains(report.failed[0], "cannot scan /run/netns/blue: "));

  // A namespace gone meanwhile is a note.
  report = revertAllFaults(dir / "absent", {"/proc/999/ns/net"}, fakeQdiscOpener(kernel));
  CHECK(report.clean());
  CHECK(report.namespaces == 0);
  CHECK(contains(report.notes.back(), "/proc/999/ns/net went away before it was scanned"));
}

TEST_CASE_FIXTURE(RevertAllFixture,
                  "revert-all without a journal removes faultline's ifb and its redirecting ingress qdisc only") {
  // faultline's leftover ingress path on veth1: an ifb named for veth1's index, with fa17: on it.
  const std::string ifb = ifbName(kernel->indexOf(kNs, "veth1"));
  auto table = fakeQdiscOpener(kernel)(kNs).value();
  REQUIRE(table->createIfb(ifb).has_value());
  REQUIRE(table->replaceRoot(ifb, kFaultlineRootHandle, kernel::TbfParams{8000, 1600, 1600}).has_value());
  REQUIRE(table->addIngressQdisc("veth1").has_value());
  REQUIRE(table->addRedirectFilter("veth1", kernel::RedirectFilter{1, 0x0800, ifb}).has_value());
  // Someone else's: an ifb not named as faultline's, and an ingress qdisc on eth1 redirecting to it.
  auto named = fakeQdiscOpener(kernel)(kNamed).value();
  REQUIRE(named->createIfb("ifb0").has_value());
  REQUIRE(named->addIngressQdisc("eth1").has_value());
  REQUIRE(named->addRedirectFilter("eth1", kernel::RedirectFilter{1, 0x0800, "ifb0"}).has_value());

  const auto report = revertAllFaults(dir / "absent", {"", kNs, kNamed}, fakeQdiscOpener(kernel));
  CHECK(report.clean());
  CHECK(std::find(report.removed.begin(), report.removed.end(),
                  fmt::format("ingress path {} of veth1 in {}: ingress qdisc of veth1 deleted, ifb {} deleted", ifb,
                              kNs, ifb)) != report.removed.end());
  CHECK_FALSE(kernel->namespaces.at(kNs).contains(ifb));
  CHECK_FALSE(kernel->ingress.contains({kNs, "veth1"}));
  CHECK(kernel->rootOf(kNs, "veth1")->handle == foreign.handle);  // veth1's own root untouched
  CHECK(kernel->namespaces.at(kNamed).contains("ifb0"));
  CHECK(kernel->ingress.contains({kNamed, "eth1"}));
  CHECK(kernel->redirects.at({kNamed, "eth1"}).size() == 1);
}
