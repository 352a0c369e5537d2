#include "agent/faults/process/kill_driver.h"

#include <chrono>
#include <condition_variable>
#include <memory>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <string.h>  // sigabbrev_np
#include <unistd.h>  // getpid

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "agent/faults/spec.h"

namespace faultline::agent {
namespace {

using kernel::ProcessInfo;
using std::chrono::milliseconds;

// How long a kill waits, in all, for the signalled processes to exit before it reports.
constexpr milliseconds kExitWait{200};
// A kill loop keeps at most this many hits for its report.
constexpr size_t kMaxHits = 1000;

FaultError failure(std::errc code, std::string message) {
  return FaultError{std::make_error_code(code), "process.kill: " + std::move(message)};
}

bool missedHit(const v1::ProcessHit& h) {
  return h.action().rfind("missed", 0) == 0;
}

class KilledProcesses final : public AppliedFault {
 public:
  KilledProcesses(ProcessKillDriver& driver, v1::ProcessSelector selector, int sig, ProcessKillDriver::Round first,
                  milliseconds every)
      : driver_(driver), selector_(std::move(selector)), sig_(sig), every_(every) {
    hits_ = std::move(first.hits);
    skipped_ = std::move(first.skipped);
    if (every_ > milliseconds{0}) {
      thread_ = std::thread([this] { loop(); });
    }
  }

  ~KilledProcesses() override { stop(); }

  tl::expected<void, FaultError> revert() override {
    stop();  // a signal cannot be taken back; a kill loop ends
    return {};
  }

  std::string describeRevert(std::string_view why) const override {
    std::lock_guard lock(mutex_);
    if (every_ > milliseconds{0}) {
      return fmt::format(
          "ended ({}): kill loop stopped after {} round(s); nothing to undo (a sent signal cannot be "
          "taken back)",
          why, rounds_);
    }
    return fmt::format("ended ({}): nothing to undo (a sent signal cannot be taken back)", why);
  }

  std::string describe() const override {
    std::lock_guard lock(mutex_);
    std::vector<std::string> parts;
    std::vector<std::string> missed;
    for (const auto& h : hits_) {
      if (!missedHit(h)) {
        parts.push_back(fmt::format("pid {} ({}) {}", h.pid(), h.cmdline(), h.exited() ? "exited" : "still running"));
      } else if (h.exited()) {
        missed.push_back(fmt::format("pid {} ({}) had exited", h.pid(), h.cmdline()));
      } else {
        missed.push_back(fmt::format("pid {} ({}): {}", h.pid(), h.cmdline(), h.action().substr(8)));
      }
    }
    std::string text = fmt::format("{} sent to {}", signalName(sig_), fmt::join(parts, ", "));
    if (!missed.empty()) {
      text += fmt::format("; not signalled: {}", fmt::join(missed, "; "));
    }
    if (every_ > milliseconds{0}) {
      text += fmt::format("; every {}: {} round(s)", formatDuration(every_), rounds_);
      if (emptyRounds_ > 0) {
        text += fmt::format(", {} matched nothing", emptyRounds_);
      }
    }
    if (!skipped_.empty()) {
      text += fmt::format("; protected matches skipped: {}", fmt::join(skipped_, "; "));
    }
    return text;
  }

  std::vector<v1::ProcessHit> processHits() const override {
    std::lock_guard lock(mutex_);
    return hits_;
  }

 private:
  void loop() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
      if (wake_.wait_for(lock, every_, [this] { return stopping_; })) {
        break;
      }
      lock.unlock();
      auto round = driver_.killOnce(selector_, sig_);
      lock.lock();
      ++rounds_;
      if (!round) {
        ++emptyRounds_;
        continue;
      }
      for (auto& h : round->hits) {
        if (hits_.size() < kMaxHits) {
          hits_.push_back(std::move(h));
        }
      }
    }
  }

  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) {
      thread_.join();
    }
  }

  ProcessKillDriver& driver_;
  const v1::ProcessSelector selector_;
  const int sig_;
  const milliseconds every_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::vector<v1::ProcessHit> hits_;
  std::vector<std::string> skipped_;
  size_t rounds_ = 1;
  size_t emptyRounds_ = 0;
  std::thread thread_;
};

}  // namespace

std::string signalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev != nullptr ? fmt::format("SIG{}", abbrev) : fmt::format("signal {}", sig);
}

ProcessKillDriver::ProcessKillDriver(kernel::ProcessTable& processes, ProcessRules rules, uint64_t seed)
    : processes_(processes),
      rng_(seed),
      picker_(processes, std::move(rules.protect), rng_, ::getpid()),
      limits_(std::move(rules.limits)) {}

tl::expected<ProcessKillDriver::Round, FaultError> ProcessKillDriver::killOnce(const v1::ProcessSelector& selector,
                                                                               int sig) {
  std::lock_guard lock(mutex_);
  auto selection = picker_.select(selector, "process.kill");
  if (!selection) {
    return tl::unexpected(selection.error());
  }
  if (auto allowed = checkProcessLimits(*selection, selector, limits_, "process.kill"); !allowed) {
    return tl::unexpected(allowed.error());
  }
  // A signal cannot be taken back, so every chosen process is tried and the round succeeds when
  // at least one was signalled; the others are listed. Each is pinned (a pidfd checked against the
  // start time the selection saw) from here to the exit check: a process that rewrote its command
  // line since is still the one chosen; one whose pid is gone or reused has exited.
  Round round;
  round.skipped = std::move(selection->skipped);
  std::error_code firstError;
  std::vector<std::string> missed;
  std::vector<std::pair<size_t, std::unique_ptr<kernel::PinnedProcess>>> signalled;
  for (const auto& p : selection->chosen) {
    v1::ProcessHit hit;
    hit.set_pid(p.pid);
    hit.set_cmdline(commandLineOf(p));
    auto pinned = processes_.pin(p.pid, p.startTime);
    tl::expected<void, std::error_code> sent =
        pinned ? (*pinned)->signal(sig) : tl::expected<void, std::error_code>(tl::unexpected(pinned.error()));
    if (sent) {
      hit.set_action(signalName(sig));
      signalled.emplace_back(round.hits.size(), std::move(*pinned));
    } else {
      if (!firstError) {
        firstError = sent.error();
      }
      hit.set_exited(sent.error() == std::errc::no_such_process);
      hit.set_action(sent.error() == std::errc::no_such_process ? "missed: it had exited"
                                                                : "missed: " + sent.error().message());
      missed.push_back(fmt::format("{}: {}", describeProcess(p), hit.action()));
    }
    round.hits.push_back(std::move(hit));
  }
  if (signalled.empty()) {
    return tl::unexpected(FaultError{
        firstError, fmt::format("process.kill: could not send {}: {}", signalName(sig), fmt::join(missed, "; "))});
  }
  const auto deadline = std::chrono::steady_clock::now() + kExitWait;
  for (auto& [i, pinned] : signalled) {
    const auto left = std::max(milliseconds{0},
                               std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now()));
    round.hits[i].set_exited(pinned->exited(left));
  }
  return round;
}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> ProcessKillDriver::apply(
    const v1::FaultSpec& spec, const PersistUndo& /*persist: a kill leaves nothing to undo*/) {
  if (auto valid = validateFaultSpec(spec); !valid) {
    return tl::unexpected(failure(std::errc::invalid_argument,
                                  fmt::format("invalid spec: {}: {}", valid.error().field, valid.error().message)));
  }
  if (spec.kind_case() != v1::FaultSpec::kProcessKill) {
    return tl::unexpected(
        failure(std::errc::invalid_argument, fmt::format("the process driver cannot apply {}", faultKindName(spec))));
  }
  const auto& kill = spec.process_kill();
  const int sig = parseSignal(kill.signal());
  const v1::ProcessSelector selector = selectorOf(kill);
  auto first = killOnce(selector, sig);
  if (!first) {
    return tl::unexpected(first.error());
  }
  const auto every = std::chrono::duration_cast<milliseconds>(toMicros(kill.every()));
  return std::make_unique<KilledProcesses>(*this, selector, sig, std::move(*first), every);
}

}  // namespace faultline::agent
