#include <csignal>

#include <doctest/doctest.h>

#include "agent/faults/spec.h"

using namespace faultline;
using namespace std::chrono_literals;

TEST_CASE("interface names follow the kernel's rules") {
  CHECK(isValidInterfaceName("eth0"));
  CHECK(isValidInterfaceName("eth0.100"));
  CHECK(isValidInterfaceName("enp6s0"));
  CHECK(isValidInterfaceName("abcdefghijklmno"));         // 15 bytes
  CHECK_FALSE(isValidInterfaceName("abcdefghijklmnop"));  // 16 bytes
  CHECK_FALSE(isValidInterfaceName(""));
  CHECK_FALSE(isValidInterfaceName("a/b"));
  CHECK_FALSE(isValidInterfaceName("eth0:1"));
  CHECK_FALSE(isValidInterfaceName("eth 0"));
  CHECK_FALSE(isValidInterfaceName(".."));
}

TEST_CASE("signals by name and number") {
  CHECK(parseSignal("") == SIGKILL);
  CHECK(parseSignal("SIGTERM") == SIGTERM);
  CHECK(parseSignal("term") == SIGTERM);
  CHECK(parseSignal("9") == SIGKILL);
  CHECK(parseSignal("SIGNOPE") == 0);
  CHECK(parseSignal("0") == 0);
  CHECK(parseSignal("999") == 0);
}

TEST_CASE("durations parse with units and print back") {
  CHECK(parseDuration("100ms").value() == 100ms);
  CHECK(parseDuration("1.5s").value() == 1500ms);
  CHECK(parseDuration("250us").value() == 250us);
  CHECK(parseDuration("2m").value() == 120s);
  CHECK_FALSE(parseDuration("100").has_value());
  CHECK_FALSE(parseDuration("ms").has_value());
  CHECK_FALSE(parseDuration("10 parsecs").has_value());
  // Finer than 1ns is refused, not rounded; a tenth of a second is exact enough.
  REQUIRE_FALSE(parseDuration("1.0000000001s").has_value());
  CHECK(parseDuration("1.0000000001s").error().find("finer than 1ns") != std::string::npos);
  CHECK(parseDuration("0.1s").value() == 100ms);
  CHECK(parseDuration("1.000001ms").value() == 1000001ns);
  REQUIRE_FALSE(parseDuration("99999999999999999999h").has_value());
  CHECK(parseDuration("99999999999999999999h").error().find("accepted:") != std::string::npos);
  CHECK(formatDuration(100ms) == "100ms");
  CHECK(formatDuration(1500ms) == "1.5s");
  CHECK(formatDuration(2min) == "2m");
}

TEST_CASE("delay spec: jitter may not exceed delay") {
  v1::FaultSpec spec;
  auto* d = spec.mutable_network_delay();
  d->mutable_target()->set_interface("veth0");
  *d->mutable_delay() = toProto(100ms);
  *d->mutable_jitter() = toProto(10ms);
  CHECK(validateFaultSpec(spec).has_value());
  *d->mutable_jitter() = toProto(200ms);
  auto r = validateFaultSpec(spec);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().field == "jitter");
  *d->mutable_jitter() = toProto(0ms);
  d->mutable_target()->set_interface("bad/name");
  r = validateFaultSpec(spec);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().field == "interface");
}

TEST_CASE("loss spec: percent in (0, 100]") {
  v1::FaultSpec spec;
  auto* l = spec.mutable_network_loss();
  l->mutable_target()->set_interface("veth0");
  l->set_percent(30);
  CHECK(validateFaultSpec(spec).has_value());
  l->set_percent(101);
  CHECK(validateFaultSpec(spec).error().field == "percent");
  l->set_percent(0);
  CHECK(validateFaultSpec(spec).error().field == "percent");
  l->set_percent(50);
  l->set_correlation(-1);
  CHECK(validateFaultSpec(spec).error().field == "correlation");
}

TEST_CASE("kill spec refuses pid 1 and unknown signals") {
  v1::FaultSpec spec;
  spec.mutable_process_kill()->set_pid(1);
  CHECK(validateFaultSpec(spec).error().field == "pid");
  spec.mutable_process_kill()->set_name("demo");
  spec.mutable_process_kill()->set_signal("SIGWHAT");
  CHECK(validateFaultSpec(spec).error().field == "signal");
  spec.mutable_process_kill()->set_signal("TERM");
  CHECK(validateFaultSpec(spec).has_value());
  CHECK(validateFaultSpec(v1::FaultSpec{}).error().field == "type");
}

TEST_CASE("a cmdline of 20,000 nested parentheses is refused at once, with the cap, not a crash") {
  v1::FaultSpec spec;
  spec.mutable_process_kill()->mutable_process()->set_cmdline(std::string(20000, '(') + "a" + std::string(20000, ')'));
  auto r = validateFaultSpec(spec);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().field == "process.cmdline");
  CHECK_MESSAGE(r.error().message.find("is 40001 bytes long, more than the 4096 accepted") != std::string::npos,
                r.error().message);
  CHECK(r.error().message.find("accepted: an RE2 regular expression") != std::string::npos);
  spec.mutable_process_kill()->mutable_process()->set_cmdline("(orders)-\\1");
  r = validateFaultSpec(spec);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().message.find("a backreference: RE2 has none") != std::string::npos);
}

TEST_CASE("process.pause mechanism: auto and freeze; an unknown number is refused") {
  v1::FaultSpec spec;
  spec.mutable_process_pause()->mutable_process()->set_name("db");
  CHECK(validateFaultSpec(spec));
  spec.mutable_process_pause()->set_mechanism(v1::PAUSE_MECHANISM_FREEZE);
  CHECK(validateFaultSpec(spec));
  spec.mutable_process_pause()->set_mechanism(static_cast<v1::PauseMechanism>(7));
  auto bad = validateFaultSpec(spec);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().field == "mechanism");
  CHECK(bad.error().message.find("7 is not a pause mechanism; accepted: auto") != std::string::npos);
}
