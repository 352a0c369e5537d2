// UndoJournal on a temporary directory, recovery against the in-memory qdisc table, and the
// Agent writing begin/applied/done through both.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/safety/journal.h"
#include "agent/safety/recovery.h"
#include "agent/session/agent.h"
#include "tests/fakes/fake_qdisc_table.h"

using namespace faultline;
using namespace faultline::agent;
using faultline::testing::FakeKernel;
using faultline::testing::fakeQdiscOpener;

namespace {

const std::string kNs = "/proc/777/ns/net";

class JournalDir {
 public:
  JournalDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "faultline-journal-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~JournalDir() {
    std::error_code ec;
    std::filesystem::permissions(path_, std::filesystem::perms::owner_all, ec);
    std::filesystem::remove_all(path_, ec);
  }
  JournalDir(const JournalDir&) = delete;
  JournalDir& operator=(const JournalDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path file() const { return path_ / UndoJournal::kFileName; }
  std::string text() const {
    std::ifstream in(file());
    std::stringstream s;
    s << in.rdbuf();
    return s.str();
  }
  void write(const std::string& text) const {
    std::ofstream out(file(), std::ios::trunc);
    out << text;
  }

 private:
  std::filesystem::path path_;
};

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

v1::FaultSpec bandwidthSpec() {
  v1::FaultSpec spec;
  auto* b = spec.mutable_network_bandwidth();
  b->mutable_target()->set_interface("veth0");
  b->mutable_target()->set_netns(kNs);
  b->set_rate_bps(1'000'000);
  return spec;
}

nlohmann::json someUndo() {
  return {{"netns", ""}, {"interface", "eth0"}, {"handle", kFaultlineRootHandle}, {"qdisc", "tbf"}, {"saved", nullptr}};
}

}  // namespace

TEST_CASE("journal: begin, applied and done round-trip; done of the last open entry compacts") {
  JournalDir dir;
  {
    auto opened = UndoJournal::open(dir.path());
    REQUIRE(opened.has_value());
    CHECK(opened->open.empty());
    CHECK(opened->problems.empty());
    REQUIRE(opened->journal->begin("f1", "network.bandwidth", someUndo()).has_value());
    REQUIRE(opened->journal->applied("f1").has_value());
    REQUIRE(opened->journal->begin("f2", "network.delay", someUndo()).has_value());
    REQUIRE(opened->journal->done("f2").has_value());
    CHECK(opened->journal->openCount() == 1);
  }
  const auto text = dir.text();
  CHECK(contains(text, R"("op":"begin")"));
  CHECK(contains(text, R"("fault_id":"f1")"));
  CHECK(contains(text, R"("v":1)"));
  CHECK(std::count(text.begin(), text.end(), '\n') == 4);

  auto reopened = UndoJournal::open(dir.path());
  REQUIRE(reopened.has_value());
  REQUIRE(reopened->open.size() == 1);
  const auto& e = reopened->open[0];
  CHECK(e.faultId == "f1");
  CHECK(e.kind == "network.bandwidth");
  CHECK(e.applied);
  CHECK(e.at.count() > 0);
  CHECK(e.undo == someUndo());
  CHECK(reopened->problems.empty());

  REQUIRE(reopened->journal->done("f1").has_value());
  CHECK(std::filesystem::file_size(dir.file()) == 0);
}

TEST_CASE("journal: a truncated last line and a garbage line are reported; the rest still counts") {
  JournalDir dir;
  const std::string begin1 =
      R"({"v":1,"op":"begin","fault_id":"a","kind":"network.loss","at":5,"undo":{"interface":"x"}})";
  const std::string begin2 = R"({"v":1,"op":"begin","fault_id":"b","kind":"network.delay","at":6,"undo":null})";
  dir.write(begin1 + "\nthis is not json\n" + begin2 + "\n" + R"({"v":1,"op":"done","fault_id":"b","a)");
  auto opened = UndoJournal::open(dir.path());
  REQUIRE(opened.has_value());
  REQUIRE(opened->problems.size() == 2);
  CHECK(contains(opened->problems[0], "line 2: not JSON"));
  CHECK(contains(opened->problems[1], "line 4: not JSON"));
  CHECK(contains(opened->problems[1], "unterminated"));
  // The cut-short "done" of b did not count: both stay open.
  REQUIRE(opened->open.size() == 2);
  CHECK(opened->open[0].faultId == "a");
  CHECK_FALSE(opened->open[0].applied);
  CHECK(opened->open[1].faultId == "b");
  CHECK(opened->open[1].undo.is_null());

  // The next entry starts on a line of its own.
  REQUIRE(opened->journal->done("b").has_value());
  opened->journal.reset();
  auto again = UndoJournal::open(dir.path());
  REQUIRE(again.has_value());
  REQUIRE(again->open.size() == 1);
  CHECK(again->open[0].faultId == "a");
}

TEST_CASE("journal: with nothing open, open() truncates the file") {
  JournalDir dir;
  dir.write(R"({"v":1,"op":"begin","fault_id":"a","kind":"network.loss","at":5,"undo":null})"
            "\n"
            R"({"v":1,"op":"done","fault_id":"a","at":6})"
            "\ngarbage\n");
  auto opened = UndoJournal::open(dir.path());
  REQUIRE(opened.has_value());
  CHECK(opened->open.empty());
  CHECK(opened->problems.size() == 1);
  CHECK(std::filesystem::file_size(dir.file()) == 0);
  // Appends after the truncation land at the start.
  REQUIRE(opened->journal->begin("c", "network.delay", nullptr).has_value());
  INFO(dir.text());
  CHECK(dir.text().starts_with(R"({"v":1,"op":"begin","fault_id":"c")"));
}

TEST_CASE("journal: one agent per state directory; the second open is EBUSY and touches nothing") {
  JournalDir dir;
  auto first = UndoJournal::open(dir.path());
  REQUIRE(first.has_value());
  REQUIRE(first->journal->begin("held", "network.bandwidth", nullptr).has_value());
  const std::string before = dir.text();
  auto second = UndoJournal::open(dir.path());
  REQUIRE(!second.has_value());
  CHECK(second.error().code == std::errc::device_or_resource_busy);
  CHECK(contains(second.error().message, dir.file().string()));
  CHECK(contains(second.error().message, "in use by another running faultline agent"));
  CHECK(dir.text() == before);  // the open entry of the first is neither read as left over nor truncated
  first->journal.reset();       // the lock goes with the first
  auto third = UndoJournal::open(dir.path());
  REQUIRE(third.has_value());
  CHECK(third->open.size() == 1);
}

TEST_CASE("journal: a state directory it cannot write gives a clear error") {
  JournalDir dir;
  SUBCASE("not a directory") {
    const auto notDir = dir.path() / "plain-file";
    std::ofstream(notDir) << "x";
    auto opened = UndoJournal::open(notDir);
    REQUIRE_FALSE(opened.has_value());
    CHECK(opened.error().code == std::errc::not_a_directory);
    CHECK(contains(opened.error().message, "cannot open the undo journal " + (notDir / "journal.jsonl").string()));
  }
  SUBCASE("read-only (not for root, who may write anyway)") {
    if (::geteuid() == 0) {
      return;
    }
    std::filesystem::permissions(dir.path(), std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
    auto opened = UndoJournal::open(dir.path());
    REQUIRE_FALSE(opened.has_value());
    CHECK(opened.error().code == std::errc::permission_denied);
    CHECK(contains(opened.error().message, "must exist and be writable"));
  }
}

struct RecoveryFixture {
  JournalDir dir;
  std::shared_ptr<FakeKernel> kernel = std::make_shared<FakeKernel>();
  NetworkFaultDriver driver{fakeQdiscOpener(kernel)};
  nlohmann::json record;

  RecoveryFixture() { kernel->addInterface(kNs, "veth0"); }
  std::optional<kernel::QdiscInfo>& root() { return kernel->rootOf(kNs, "veth0"); }

  // Runs apply() up to the journal write, capturing the record, and stops it there (as a crash
  // before the kernel change would).
  void crashBeforeChange() {
    auto applied = driver.apply(bandwidthSpec(), [&](const nlohmann::json& undo) -> tl::expected<void, FaultError> {
      record = undo;
      return tl::unexpected(FaultError{std::make_error_code(std::errc::io_error), "simulated crash"});
    });
    REQUIRE_FALSE(applied.has_value());
  }
  // Applies and "crashes" (the AppliedFault is dropped without revert).
  void crashAfterChange() {
    auto applied = driver.apply(bandwidthSpec(), [&](const nlohmann::json& undo) -> tl::expected<void, FaultError> {
      record = undo;
      return {};
    });
    REQUIRE(applied.has_value());
    REQUIRE(root()->handle == kFaultlineRootHandle);
  }
  RecoveryReport recover() {
    {
      auto opened = UndoJournal::open(dir.path());
      REQUIRE(opened.has_value());
      REQUIRE(opened->journal->begin("f1", "network.bandwidth", record).has_value());
    }
    auto opened = UndoJournal::open(dir.path());
    REQUIRE(opened.has_value());
    REQUIRE(opened->open.size() == 1);
    return recoverOpenFaults(*opened->journal, opened->open, fakeQdiscOpener(kernel));
  }
};

TEST_CASE_FIXTURE(RecoveryFixture, "a failed persist: apply changes nothing and returns the error") {
  crashBeforeChange();
  CHECK(kernel->changes == 0);
  CHECK(record["interface"] == "veth0");
  CHECK(record["netns"] == kNs);
  CHECK(record["qdisc"] == "tbf");
  CHECK(record["handle"] == kFaultlineRootHandle);
  CHECK(record["saved"].is_null());
}

TEST_CASE_FIXTURE(RecoveryFixture, "recovery after a crash before the kernel change is a no-op success") {
  root() = kernel::QdiscInfo{"tbf", 0x80010000, 0xFFFFFFFF, {1, 2, 3}};
  crashBeforeChange();
  const auto report = recover();
  CHECK(report.failed.empty());
  REQUIRE(report.reverted.size() == 1);
  CHECK(kernel->changes == 0);
  CHECK(std::filesystem::file_size(dir.file()) == 0);
}

TEST_CASE_FIXTURE(RecoveryFixture, "recovery after the change puts the saved root back byte for byte") {
  const kernel::QdiscInfo saved{"tbf", 0x80010000, 0xFFFFFFFF, {0x28, 0x00, 0x01, 0x00, 0xaa, 0xbb, 0x00, 0xff}};
  root() = saved;
  crashAfterChange();
  CHECK(record["saved"]["options"] == "28000100aabb00ff");
  const auto report = recover();
  CHECK(report.failed.empty());
  REQUIRE(report.reverted.size() == 1);
  CHECK(contains(report.reverted[0], "fault f1 (network.bandwidth): reverted"));
  REQUIRE(root().has_value());
  CHECK(root()->kind == saved.kind);
  CHECK(root()->handle == saved.handle);
  CHECK(root()->parent == saved.parent);
  CHECK(root()->options == saved.options);
  CHECK(std::filesystem::file_size(dir.file()) == 0);
}

TEST_CASE_FIXTURE(RecoveryFixture, "recovery over a default root deletes ours") {
  crashAfterChange();
  const auto report = recover();
  CHECK(report.failed.empty());
  CHECK(root()->kind == "noqueue");
  CHECK(root()->handle == 0);
  CHECK(std::find(kernel->calls.begin(), kernel->calls.end(), "delete veth0") != kernel->calls.end());
}

TEST_CASE_FIXTURE(RecoveryFixture, "recovery leaves a foreign root alone and gives up on it") {
  crashAfterChange();
  root() = kernel::QdiscInfo{"tbf", 0x00010000, 0xFFFFFFFF, {9}};
  const auto changes = kernel->changes;
  const auto report = recover();
  REQUIRE(report.failed.size() == 1);
  CHECK(contains(report.failed[0], "given up"));
  CHECK(kernel->changes == changes);
  CHECK(std::filesystem::file_size(dir.file()) == 0);
}

TEST_CASE_FIXTURE(RecoveryFixture, "recovery with the interface or namespace gone has nothing to do") {
  crashAfterChange();
  SUBCASE("interface") {
    kernel->namespaces.at(kNs).erase("veth0");
  }
  SUBCASE("namespace") {
    kernel->namespaces.erase(kNs);
  }
  const auto report = recover();
  CHECK(report.failed.empty());
  REQUIRE(report.reverted.size() == 1);
  CHECK(contains(report.reverted[0], "nothing to revert"));
}

TEST_CASE_FIXTURE(RecoveryFixture, "a transient revert failure stays open for the next start") {
  crashAfterChange();
  kernel->failNextDelete = std::make_error_code(std::errc::no_buffer_space);
  const auto report = recover();
  REQUIRE(report.failed.size() == 1);
  CHECK(contains(report.failed[0], "left open for the next start"));
  auto opened = UndoJournal::open(dir.path());
  REQUIRE(opened.has_value());
  CHECK(opened->open.size() == 1);
}

TEST_CASE_FIXTURE(RecoveryFixture, "the agent journals begin and applied, and done after the revert") {
  auto opened = UndoJournal::open(dir.path());
  REQUIRE(opened.has_value());
  boost::asio::io_context io;
  Agent agent(io, driver, nullptr, opened->journal.get());
  v1::Inject inject;
  inject.set_fault_id("f9");
  *inject.mutable_spec() = bandwidthSpec();
  *inject.mutable_duration() = toProto(std::chrono::seconds{30});
  agent.inject(inject);
  REQUIRE(agent.activeCount() == 1);
  const auto text = dir.text();
  CHECK(contains(text, R"("op":"begin")"));
  CHECK(contains(text, R"("op":"applied")"));
  CHECK(contains(text, R"("kind":"network.bandwidth")"));
  CHECK(opened->journal->openCount() == 1);

  agent.revert("f9");
  CHECK(agent.activeCount() == 0);
  CHECK(opened->journal->openCount() == 0);
  CHECK(std::filesystem::file_size(dir.file()) == 0);
}

namespace {

// Persists a record, then fails the way apply() does, with or without a possible leftover.
class FailingDriver final : public FaultDriver {
 public:
  explicit FailingDriver(bool mayBeChanged) : mayBeChanged_(mayBeChanged) {}
  using FaultDriver::apply;
  tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& /*spec*/,
                                                                const PersistUndo& persist) override {
    if (auto p = persist(someUndo()); !p) {
      return tl::unexpected(p.error());
    }
    FaultError error{std::make_error_code(std::errc::invalid_argument), "the kernel refused it"};
    error.mayBeChanged = mayBeChanged_;
    return tl::unexpected(error);
  }

 private:
  bool mayBeChanged_;
};

}  // namespace

TEST_CASE("a failed apply closes its journal entry, unless it may have left a change") {
  JournalDir dir;
  auto opened = UndoJournal::open(dir.path());
  REQUIRE(opened.has_value());
  bool mayBeChanged = false;
  SUBCASE("rolled back") {
    mayBeChanged = false;
  }
  SUBCASE("may have left a change") {
    mayBeChanged = true;
  }
  FailingDriver driver(mayBeChanged);
  boost::asio::io_context io;
  std::vector<v1::FaultReport> reports;
  Agent agent(
      io, driver, [&](const v1::FaultReport& r) { reports.push_back(r); }, opened->journal.get());
  v1::Inject inject;
  inject.set_fault_id("f1");
  *inject.mutable_spec() = bandwidthSpec();
  *inject.mutable_duration() = toProto(std::chrono::seconds{30});
  agent.inject(inject);
  REQUIRE(reports.size() == 1);
  CHECK(reports[0].state() == v1::FAULT_STATE_FAILED);
  CHECK(opened->journal->openCount() == (mayBeChanged ? 1 : 0));
}
