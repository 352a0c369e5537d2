// libFuzzer target for the agent's handling of an Inject, up to the driver: the input is a
// v1::Inject in protobuf text format (seeds: tests/fuzz/seeds/inject/, and the large ones
// scripts/fuzz writes). Each input goes through what Agent::inject() runs before it calls a driver
// (agent/session/agent.cpp): checkInjectBounds() (agent/session/inject_bounds.h),
// validateFaultSpec(), the duration's range, the policy's check() under three policies; then, for a
// valid spec, what the drivers do before they change anything: a process selector is resolved
// against a synthetic process table (its pidfile read by the real table: agent/kernel/spec_files)
// and checked against the policy's process limits, and a network target's netns path is opened as
// the agent opens it (O_PATH first, a device is never opened). Nothing is applied: the table's
// signal() aborts, and no driver is linked in. Every refusal must have words; no input may crash,
// hang, leak or hit undefined behaviour. Built and run by scripts/fuzz.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "agent/faults/process/process_selector.h"
#include "agent/faults/spec.h"
#include "agent/kernel/process_table.h"
#include "agent/kernel/spec_files.h"
#include "agent/safety/policy.h"
#include "agent/session/inject_bounds.h"
#include "faultline/v1/agent_gateway.pb.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

namespace v1 = faultline::v1;
namespace kernel = faultline::kernel;
using faultline::agent::checkProcessLimits;
using faultline::agent::Policy;
using faultline::agent::ProcessPicker;
using faultline::agent::ProcessRules;

using faultline::fuzz::check;

// Files the seeds name where a netns or a pidfile belongs: a FIFO with no writer (a blocking open
// never returns), a pidfile, a large file, and /dev/zero (named directly).
constexpr const char* kFiles = "/tmp/faultline-fuzz-files";

void makeFiles() {
  ::mkdir(kFiles, 0700);
  ::mkfifo((std::string(kFiles) + "/fifo").c_str(), 0600);
  std::ofstream(std::string(kFiles) + "/pidfile") << "4242\n";
  std::ofstream big(std::string(kFiles) + "/big");
  big << std::string(1 << 20, '7');
}

// The processes every selection sees: pid 1, a kernel thread, the agent (this process) and its
// parent, sshd, faultline's own, 30 workers and one with a 28 KB command line. Signals abort.
class FixtureTable final : public kernel::ProcessTable {
 public:
  FixtureTable() : real_(kernel::openProcessTable()) {
    const pid_t self = ::getpid();
    const pid_t parent = ::getppid();
    add({1, 0, "systemd", "/usr/lib/systemd/systemd", "/sbin/init", false, "/init.scope"});
    add({2, 0, "kthreadd", "", "", true});
    add({parent, 1, "supervisor", "/usr/bin/supervisor", "supervisor", false, "/system.slice/x.service"});
    add({self, parent, "faultline-agent", "/usr/bin/faultline-agent", "faultline-agent --controller x", false,
         "/system.slice/faultline-agent.service"});
    const pid_t base = std::max(self, parent) + 100;
    add({base, 1, "sshd", "/usr/sbin/sshd", "sshd -D", false, "/system.slice/ssh.service"});
    add({base + 1, self, "faultline-agent", "/usr/bin/faultline-agent", "faultline-agent --queue-watchdog", false,
         "/system.slice/faultline-agent.service"});
    add({base + 2, 1, "faultline", "/usr/bin/faultline", "faultline controller", false, "/system.slice/c.service"});
    for (pid_t i = 0; i < 30; ++i) {
      add({base + 10 + i, 1, "worker", "/opt/app/worker", "worker --id " + std::to_string(i), false,
           "/system.slice/app.service"});
    }
    add({4242, 1, "java", "/usr/bin/java", "java " + std::string(28 * 1024, 'x'), false, "/system.slice/j.service"});
  }
  std::vector<kernel::ProcessInfo> list() override { return processes_; }
  tl::expected<void, std::error_code> signal(pid_t /*pid*/, int /*sig*/) override {
    std::abort();  // validation only: nothing is ever signalled
  }
  bool exited(pid_t /*pid*/, std::chrono::milliseconds /*wait*/) override { std::abort(); }
  tl::expected<std::unique_ptr<kernel::PinnedProcess>, std::error_code> pin(pid_t /*pid*/,
                                                                            unsigned long long /*start*/) override {
    std::abort();  // validation only: nothing is ever pinned
  }
  tl::expected<pid_t, kernel::SpecFileError> readPidfile(const std::string& path) override {
    return real_->readPidfile(path);
  }

 private:
  void add(kernel::ProcessInfo p) {
    p.state = 'S';
    processes_.push_back(std::move(p));
  }
  std::unique_ptr<kernel::ProcessTable> real_;
  std::vector<kernel::ProcessInfo> processes_;
};

struct Fixture {
  Fixture() {
    makeFiles();
    auto strict = faultline::agent::parsePolicy(R"(maxDuration: 10m
forbidKinds: [stress.memory]
interfaces:
  allow: [eth*, 'veth?', lo]
  deny: [eth0]
netns:
  allow: [/run/netns/chaos-*, /tmp/faultline-fuzz-files/*, host]
processes:
  protect: [java]
  maxProcesses: 3
  maxMatches: 20
maxPercent: 20
maxDelay: 500ms
)",
                                                "strict.yaml");
    check(strict.has_value());
    policies.push_back(Policy());
    policies.push_back(std::move(*strict));
  }
  FixtureTable table;
  std::vector<Policy> policies;
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

void selectProcesses(const v1::ProcessSelector& selector, std::string_view kind, const Policy& policy) {
  const ProcessRules rules = policy.processRules();
  std::mt19937_64 rng(1);
  ProcessPicker picker(fixture().table, rules.protect, rng, ::getpid());
  auto selection = picker.select(selector, kind);
  if (!selection) {
    check(!selection.error().message.empty());
    check(selection.error().message.rfind(std::string(kind), 0) == 0);
    return;
  }
  for (const auto& p : selection->chosen) {
    check(p.pid != 1 && !p.kernelThread && p.pid != ::getpid() && p.pid != ::getppid());
    check(p.comm != "sshd" && p.comm != "faultline-agent" && p.comm != "faultline");
  }
  if (auto allowed = checkProcessLimits(*selection, selector, rules.limits, kind); allowed) {
    check(selection->chosen.size() <= rules.limits.maxProcesses);
    check(selection->matched <= rules.limits.maxMatches);
  } else {
    check(allowed.error().message.find("nothing was") != std::string::npos);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& f = fixture();
  v1::Inject inject;
  if (!faultline::fuzz::parseText(std::string_view(reinterpret_cast<const char*>(data), size), &inject)) {
    return 0;
  }
  // Agent::inject(): the bounds and start_at, then the spec, the duration, the policy.
  if (auto over = faultline::agent::checkInjectBounds(inject, std::chrono::system_clock::now())) {
    check(!over->empty());
    return 0;
  }
  const v1::FaultSpec& spec = inject.spec();
  if (auto valid = faultline::validateFaultSpec(spec); !valid) {
    check(!valid.error().field.empty() || !valid.error().message.empty());
    check(!valid.error().message.empty());
    return 0;
  }
  const auto duration = faultline::toMicros(inject.duration());
  check(!faultline::formatDuration(duration).empty());
  if (duration <= std::chrono::microseconds{0} || duration > faultline::agent::kMaxFaultDuration) {
    return 0;
  }
  for (const Policy& policy : f.policies) {
    auto allowed = policy.check(spec, duration);
    if (!allowed) {
      check(allowed.error().rule.rfind("policy ", 0) == 0);
      check(allowed.error().message.rfind(allowed.error().rule, 0) == 0);
      continue;
    }
    // What a driver resolves before it changes anything.
    if (spec.has_process_kill()) {
      selectProcesses(faultline::agent::selectorOf(spec.process_kill()), "process.kill", policy);
    } else if (spec.has_process_pause()) {
      selectProcesses(spec.process_pause().process(), "process.pause", policy);
    } else if (const v1::NetworkTarget* target = faultline::networkTarget(spec); target != nullptr) {
      if (!target->netns().empty()) {
        auto opened = kernel::openNetnsFile(target->netns());
        check(opened.has_value() || !opened.error().why.empty());
      }
      if (target->has_netns_process()) {
        selectProcesses(target->netns_process(), "netns", policy);
      }
    }
  }
  return 0;
}
