// The agent's deadlines run on their own thread (agent.h, "Threading"): a fault ends within its
// duration plus one second, and the lease reverts, whatever the io thread that handles input is
// blocked on. Fake driver; the two threads are real and the times are measured.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "agent/faults/spec.h"
#include "agent/session/agent.h"
#include "agent/session/session.h"

using namespace std::chrono_literals;
using namespace faultline;
using namespace faultline::agent;
using Clock = std::chrono::steady_clock;

namespace {

double ms(Clock::duration d) {
  return std::chrono::duration<double, std::milli>(d).count();
}

// What the fake kernel saw of each fault, keyed by the spec's interface name.
struct FakeKernelLog {
  std::mutex mutex;
  std::map<std::string, Clock::time_point> applyReturned;
  std::map<std::string, Clock::time_point> reverted;  // the first revert
  std::map<std::string, int> reverts;
  // Calls into the driver or its faults in progress, and how often one began while another was
  // in progress (drivers are not thread-safe: the agent must serialise them). Each call lasts
  // at least callTime, to widen the window.
  std::atomic<int> inside{0};
  std::atomic<int> overlaps{0};
  std::atomic<int> calls{0};
  Clock::duration callTime{0};
};

// Marks one call into the fake driver for its lifetime.
class DriverCall {
 public:
  explicit DriverCall(FakeKernelLog& log) : log_(log) {
    ++log_.calls;
    if (log_.inside.fetch_add(1) != 0) {
      ++log_.overlaps;
    }
    if (log_.callTime > Clock::duration::zero()) {
      std::this_thread::sleep_for(log_.callTime);
    }
  }
  ~DriverCall() { --log_.inside; }
  DriverCall(const DriverCall&) = delete;
  DriverCall& operator=(const DriverCall&) = delete;

 private:
  FakeKernelLog& log_;
};

class FakeFault final : public AppliedFault {
 public:
  FakeFault(std::string name, FakeKernelLog& log) : name_(std::move(name)), log_(log) {}
  ~FakeFault() override { DriverCall call(log_); }
  tl::expected<void, FaultError> revert() override {
    DriverCall call(log_);
    std::lock_guard lock(log_.mutex);
    log_.reverted.try_emplace(name_, Clock::now());
    ++log_.reverts[name_];
    return {};
  }
  std::string describe() const override {
    DriverCall call(log_);
    return "fake " + name_;
  }
  std::optional<std::string> lost() const override {
    DriverCall call(log_);
    return std::nullopt;
  }

 private:
  std::string name_;
  FakeKernelLog& log_;
};

// Applies at once, except that an interface named in blockFor blocks the calling thread (the io
// thread) that long first: an input that makes the io thread wait.
class BlockingDriver final : public FaultDriver {
 public:
  using FaultDriver::apply;
  tl::expected<std::unique_ptr<AppliedFault>, FaultError> apply(const v1::FaultSpec& spec,
                                                                const PersistUndo& /*persist*/) override {
    DriverCall call(log);
    const std::string name = spec.network_bandwidth().target().interface();
    if (auto it = blockFor.find(name); it != blockFor.end()) {
      std::this_thread::sleep_for(it->second);
    }
    std::lock_guard lock(log.mutex);
    log.applyReturned[name] = Clock::now();
    return std::make_unique<FakeFault>(name, log);
  }
  std::map<std::string, Clock::duration> blockFor;  // set before the io thread starts
  FakeKernelLog log;
};

// Reports from any thread, with their arrival time.
struct Reports {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<v1::FaultReport> all;

  void add(const v1::FaultReport& r) {
    std::lock_guard lock(mutex);
    all.push_back(r);
    changed.notify_all();
  }
  // Waits until id has a report in state; false after timeout.
  bool waitFor(const std::string& id, v1::FaultState state, Clock::duration timeout) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, timeout, [&] {
      return std::any_of(all.begin(), all.end(),
                         [&](const auto& r) { return r.fault_id() == id && r.state() == state; });
    });
  }
  std::vector<v1::FaultState> statesOf(const std::string& id) {
    std::lock_guard lock(mutex);
    std::vector<v1::FaultState> out;
    for (const auto& r : all) {
      if (r.fault_id() == id) {
        out.push_back(r.state());
      }
    }
    return out;
  }
};

v1::Inject injectOf(const std::string& id, const std::string& interface, std::chrono::nanoseconds duration) {
  v1::Inject inject;
  inject.set_fault_id(id);
  auto* b = inject.mutable_spec()->mutable_network_bandwidth();
  b->mutable_target()->set_interface(interface);
  b->set_rate_bps(1'000'000);
  *inject.mutable_duration() = toProto(duration);
  return inject;
}

// An io_context run by a thread of its own until stop().
struct RunningContext {
  boost::asio::io_context io;
  std::thread thread;
  void start() {
    thread = std::thread([this] {
      auto guard = boost::asio::make_work_guard(io);
      io.run();
    });
  }
  void stop() {
    io.stop();
    if (thread.joinable()) {
      thread.join();
    }
  }
  ~RunningContext() { stop(); }
};

// The agent erases a fault just after its end report (sent while it still holds it).
bool becomesIdle(const Agent& agent) {
  const auto until = Clock::now() + 1s;
  while (agent.activeCount() > 0 && Clock::now() < until) {
    std::this_thread::sleep_for(1ms);
  }
  return agent.activeCount() == 0;
}

// Posts to the io thread a handler that blocks it for `d`; returns when it has started, and
// stores when it ends.
void blockIoThread(boost::asio::io_context& io, Clock::duration d, Clock::time_point& until) {
  std::promise<void> started;
  boost::asio::post(io, [&, d] {
    until = Clock::now() + d;
    started.set_value();
    std::this_thread::sleep_for(d);
  });
  started.get_future().wait();
}

// An agent whose io thread and expiry thread run, as in faultline-agent (runtime.cpp). forward:
// also given every report (the session's sink).
struct TwoThreads {
  explicit TwoThreads(std::chrono::milliseconds watchInterval = kWatchInterval)
      : agent(
            io.io, driver,
            [this](const v1::FaultReport& r) {
              reports.add(r);
              if (forward) {
                forward(r);
              }
            },
            nullptr, Policy{}, watchInterval, &expiry.io) {}
  BlockingDriver driver;
  Reports reports;
  std::function<void(const v1::FaultReport&)> forward;
  RunningContext io;
  RunningContext expiry;
  Agent agent;

  void start() {
    io.start();
    expiry.start();
  }
  // Runs f on the io thread and waits for it.
  void onIoThread(const std::function<void()>& f) {
    std::promise<void> done;
    boost::asio::post(io.io, [&] {
      f();
      done.set_value();
    });
    done.get_future().wait();
  }
  // Both threads stop before the agent goes (agent.h).
  ~TwoThreads() {
    io.stop();
    expiry.stop();
  }
};

// The same, with the watch (AppliedFault::lost()) every millisecond on the io thread.
struct TwoThreadsFastWatch : TwoThreads {
  TwoThreadsFastWatch() : TwoThreads(1ms) {}
};

}  // namespace

TEST_CASE_FIXTURE(TwoThreads, "agent timers: a 2 s fault ends within 3 s while the io thread is blocked") {
  start();
  const auto t0 = Clock::now();
  onIoThread([&] { agent.inject(injectOf("held", "eth0", 2s)); });
  REQUIRE(reports.statesOf("held") == std::vector{v1::FAULT_STATE_APPLIED});
  Clock::time_point blockedUntil;
  blockIoThread(io.io, 5s, blockedUntil);  // e.g. an input the io thread waits for

  REQUIRE(reports.waitFor("held", v1::FAULT_STATE_EXPIRED, 6s));
  std::lock_guard lock(driver.log.mutex);
  const auto reverted = driver.log.reverted.at("eth0");
  MESSAGE(fmt::format("held 2 s: reverted after {:.0f} ms; the io thread was blocked until {:.0f} ms",
                      ms(reverted - t0), ms(blockedUntil - t0)));
  CHECK(reverted - t0 >= 2s);
  CHECK(reverted - t0 < 3s);       // its duration + 1 s
  CHECK(reverted < blockedUntil);  // while the io thread was still blocked
  CHECK(driver.log.reverts.at("eth0") == 1);
  CHECK(reports.statesOf("held") == std::vector{v1::FAULT_STATE_APPLIED, v1::FAULT_STATE_EXPIRED});
}

TEST_CASE_FIXTURE(
    TwoThreads,
    "agent timers: a fault closed during its apply is reverted as soon as the apply returns, after APPLIED") {
  driver.blockFor["slow0"] = 1s;  // a slow kernel
  start();
  boost::asio::post(io.io, [&] { agent.inject(injectOf("slow", "slow0", 60s)); });
  std::this_thread::sleep_for(100ms);  // the io thread is in the apply
  const auto t0 = Clock::now();
  agent.close("agent stopped (SIGTERM)");
  const auto closing = Clock::now() - t0;
  REQUIRE(reports.waitFor("slow", v1::FAULT_STATE_REVERTED, 5s));
  CHECK(becomesIdle(agent));
  std::lock_guard lock(driver.log.mutex);
  const auto late = driver.log.reverted.at("slow0") - driver.log.applyReturned.at("slow0");
  MESSAGE(fmt::format("close() returned after {:.1f} ms; the fault was reverted {:.1f} ms after its 1 s apply returned",
                      ms(closing), ms(late)));
  CHECK(closing < 100ms);
  CHECK(late < 100ms);
  CHECK(driver.log.reverts.at("slow0") == 1);
  CHECK(reports.statesOf("slow") == std::vector{v1::FAULT_STATE_APPLIED, v1::FAULT_STATE_REVERTED});
}

TEST_CASE_FIXTURE(TwoThreadsFastWatch,
                  "agent timers: a revert racing the expiry reverts once, the revert is always confirmed, and no two "
                  "driver calls overlap") {
  constexpr int kFaults = 200;
  driver.log.callTime = 20us;  // every driver call lasts a while: overlaps would show
  start();
  for (int i = 0; i < kFaults; ++i) {
    const std::string id = fmt::format("f{}", i);
    boost::asio::post(io.io, [this, id, i] {
      agent.inject(injectOf(id, "eth" + std::to_string(i), std::chrono::microseconds{500 + 10 * (i % 50)}));
      std::this_thread::sleep_for(std::chrono::microseconds{10 * (i % 80)});
      agent.revert(id);  // around its deadline: before, during or after its expiry's revert
    });
  }
  for (int i = 0; i < kFaults; ++i) {
    REQUIRE(reports.waitFor(fmt::format("f{}", i), v1::FAULT_STATE_REVERTED, 5s));
  }
  CHECK(becomesIdle(agent));
  int expired = 0;
  std::lock_guard lock(driver.log.mutex);
  for (int i = 0; i < kFaults; ++i) {
    const auto states = reports.statesOf(fmt::format("f{}", i));
    CHECK(driver.log.reverts.at("eth" + std::to_string(i)) == 1);
    REQUIRE(states.size() >= 2);
    if (states[1] == v1::FAULT_STATE_EXPIRED) {
      ++expired;
      CHECK(states == std::vector{v1::FAULT_STATE_APPLIED, v1::FAULT_STATE_EXPIRED, v1::FAULT_STATE_REVERTED});
    } else {
      CHECK(states == std::vector{v1::FAULT_STATE_APPLIED, v1::FAULT_STATE_REVERTED});
    }
  }
  MESSAGE(fmt::format("{} of {} faults expired before (or while) their revert came; {} driver calls on two threads",
                      expired, kFaults, driver.log.calls.load()));
  CHECK(expired > 0);  // both threads did reverts
  CHECK(driver.log.overlaps.load() == 0);
}

TEST_CASE_FIXTURE(TwoThreads,
                  "agent timers: close() from another thread reverts at once while the io thread is blocked") {
  start();
  onIoThread([&] { agent.inject(injectOf("held", "eth0", 60s)); });
  REQUIRE(reports.statesOf("held") == std::vector{v1::FAULT_STATE_APPLIED});
  Clock::time_point blockedUntil;
  blockIoThread(io.io, 1s, blockedUntil);
  const auto t0 = Clock::now();
  agent.close("agent stopped (SIGTERM)");
  const auto closing = Clock::now() - t0;
  MESSAGE(fmt::format("close() returned after {:.1f} ms with the io thread blocked", ms(closing)));
  CHECK(closing < 100ms);
  CHECK(Clock::now() < blockedUntil);
  CHECK(reports.statesOf("held") == std::vector{v1::FAULT_STATE_APPLIED, v1::FAULT_STATE_REVERTED});
  onIoThread([&] { agent.inject(injectOf("late", "eth1", 60s)); });
  CHECK(reports.statesOf("late") == std::vector{v1::FAULT_STATE_FAILED});
  CHECK(becomesIdle(agent));
}

TEST_CASE_FIXTURE(TwoThreads, "session: the lease expires and reverts while the io thread is blocked") {
  SessionOptions options;
  options.controller = "unix:/nonexistent/faultline-lease-test.sock";  // never answers
  options.agentId = "a1";
  options.defaultLease = 300ms;
  options.minBackoff = 50ms;
  options.maxBackoff = 100ms;
  Session session(io.io, agent, options, &expiry.io);
  forward = [&](const v1::FaultReport& r) { session.report(r); };
  start();
  const auto t0 = Clock::now();
  onIoThread([&] {
    session.start();
    agent.inject(injectOf("f1", "eth0", 60s));
  });
  REQUIRE(reports.waitFor("f1", v1::FAULT_STATE_APPLIED, 5s));
  Clock::time_point blockedUntil;
  blockIoThread(io.io, 3s, blockedUntil);
  REQUIRE(reports.waitFor("f1", v1::FAULT_STATE_EXPIRED, 5s));
  {
    std::lock_guard lock(driver.log.mutex);
    const auto reverted = driver.log.reverted.at("eth0");
    MESSAGE(fmt::format("lease 300 ms: reverted {:.0f} ms after the start, the io thread blocked until {:.0f} ms",
                        ms(reverted - t0), ms(blockedUntil - t0)));
    CHECK(reverted - t0 < 1300ms);  // the lease + 1 s
    CHECK(reverted < blockedUntil);
    CHECK(driver.log.reverts.at("eth0") == 1);
  }
  onIoThread([&] { session.stop(); });
  io.stop();  // before the session goes (session.h)
  expiry.stop();
  forward = nullptr;
}

TEST_CASE("agent: start_at and sizes are checked against stated bounds before anything is applied") {
  BlockingDriver driver;
  boost::asio::io_context io;
  std::vector<v1::FaultReport> reports;
  Agent agent(io, driver, [&](const v1::FaultReport& r) { reports.push_back(r); });
  const auto refusal = [&](v1::Inject inject) {
    reports.clear();
    agent.inject(inject);
    REQUIRE(reports.size() == 1);
    CHECK(reports[0].state() == v1::FAULT_STATE_FAILED);
    return reports[0].error();
  };
  const int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();

  auto far = injectOf("f1", "eth0", 10s);
  far.mutable_start_at()->set_seconds(int64_t{1} << 62);  // was applied at once (overflow)
  CHECK(refusal(far).find(fmt::format("start_at {} s since the epoch is more than 30s ahead of this host's clock",
                                      int64_t{1} << 62)) == 0);

  auto past = injectOf("f1", "eth0", 10s);
  past.mutable_start_at()->set_seconds(now - 3600);
  CHECK(refusal(past).find("is more than 30s behind this host's clock") != std::string::npos);

  auto ancient = injectOf("f1", "eth0", 10s);
  ancient.mutable_start_at()->set_seconds(-(int64_t{1} << 62));
  CHECK(refusal(ancient).find("behind this host's clock") != std::string::npos);

  auto nanos = injectOf("f1", "eth0", 10s);
  nanos.mutable_start_at()->set_seconds(now);
  nanos.mutable_start_at()->set_nanos(-1);
  CHECK(refusal(nanos) == "start_at has -1 nanoseconds, outside 0 to 999999999");

  CHECK(refusal(injectOf(std::string(kMaxFaultIdBytes + 1, 'x'), "eth0", 10s)) ==
        "the fault id is 513 bytes long, more than 512");
  CHECK(reports[0].fault_id().size() == kMaxFaultIdBytes);
  CHECK(refusal(injectOf("", "eth0", 10s)) == "the fault id is empty");
  CHECK(refusal(injectOf("f\n1", "eth0", 10s)) == "the fault id has a control character");
  CHECK(refusal(injectOf("f1", std::string(kMaxSpecStringBytes + 1, 'e'), 10s)) ==
        "spec too large: spec.network_bandwidth.target.interface is 4097 bytes long, more than 4096");
  auto huge = injectOf("f1", "eth0", 10s);
  huge.mutable_spec()->mutable_network_bandwidth()->mutable_target()->set_netns(std::string(kMaxInjectBytes, 'n'));
  CHECK(refusal(huge).find("the inject is ") == 0);
  CHECK(driver.log.applyReturned.empty());  // none reached the driver

  // Within the bounds: applied (a start_at just past applies at once).
  auto soon = injectOf("f1", "eth0", 10s);
  soon.mutable_start_at()->set_seconds(now - 1);
  reports.clear();
  agent.inject(soon);
  REQUIRE(reports.size() == 1);
  CHECK(reports[0].state() == v1::FAULT_STATE_APPLIED);
}
