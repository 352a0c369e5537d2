// A revert the kernel refuses for lack of privilege is loud: reported as FAILED with the
// kernel's reason, kept held and retried, and reported REVERTED only once it really happened.
// Capabilities are per thread in Linux: the test drops CAP_NET_ADMIN from its own thread's
// effective set (where the agent's calls run) and raises it again, inside its own namespace.
// Needs root.
#include <linux/capability.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <boost/asio/io_context.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/spec.h"
#include "agent/kernel/qdisc_table.h"
#include "agent/session/agent.h"
#include "tests/support/netns.h"

using namespace faultline;
using namespace faultline::agent;
using namespace std::chrono_literals;

namespace {

// Sets or clears CAP_NET_ADMIN in the calling thread's effective set (the permitted set keeps
// it, so it can be raised again). True on success.
bool setNetAdminEffective(bool on) {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};  // pid 0: this thread
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capget, &header, data) != 0) {
    return false;
  }
  const unsigned word = CAP_NET_ADMIN / 32;
  const unsigned bit = 1u << (CAP_NET_ADMIN % 32);
  if (on) {
    data[word].effective |= bit;
  } else {
    data[word].effective &= ~bit;
  }
  return ::syscall(SYS_capset, &header, data) == 0;
}

// Restores CAP_NET_ADMIN whatever happens to the test.
struct NetAdminDropped {
  NetAdminDropped() { REQUIRE(setNetAdminEffective(false)); }
  ~NetAdminDropped() { setNetAdminEffective(true); }
  NetAdminDropped(const NetAdminDropped&) = delete;
  NetAdminDropped& operator=(const NetAdminDropped&) = delete;
};

}  // namespace

TEST_CASE_FIXTURE(testing::NetnsFixture,
                  "a revert without CAP_NET_ADMIN is reported as failed with the reason and retried until it works") {
  NetworkFaultDriver driver{kernel::openQdiscTable};
  boost::asio::io_context io;
  std::vector<v1::FaultReport> reports;
  Agent agent(io, driver, [&](const v1::FaultReport& r) { reports.push_back(r); });

  v1::Inject inject;
  inject.set_fault_id("priv-1");
  auto* b = inject.mutable_spec()->mutable_network_bandwidth();
  b->mutable_target()->set_interface("veth0");
  b->mutable_target()->set_netns(netns());
  b->set_rate_bps(1'000'000);
  *inject.mutable_duration() = toProto(60s);
  agent.inject(inject);
  REQUIRE(reports.size() == 1);
  REQUIRE_MESSAGE(reports[0].state() == v1::FAULT_STATE_APPLIED, reports[0].error());
  CHECK(inNetns("tc qdisc show dev veth0").find("tbf fa17:") != std::string::npos);

  {
    NetAdminDropped dropped;
    agent.revert("priv-1");
    REQUIRE(reports.size() == 2);
    CHECK(reports[1].state() == v1::FAULT_STATE_FAILED);
    CHECK(reports[1].error_code() != v1::FAULT_ERROR_PERMANENT);
    CHECK_MESSAGE(reports[1].error().find("revert failed (retrying every second)") != std::string::npos,
                  reports[1].error());
    CHECK_MESSAGE(reports[1].error().find("ermi") != std::string::npos, reports[1].error());  // "not permitted"
    CHECK(agent.activeCount() == 1);  // never dropped while it may still be active
    // Retried (still refused): no second report of the same failure, and still held.
    io.run_for(1500ms);
    CHECK(reports.size() == 2);
    CHECK(agent.activeCount() == 1);
  }
  CHECK(inNetns("tc qdisc show dev veth0").find("tbf fa17:") != std::string::npos);  // not reverted: said so

  // Privilege back: the next retry reverts it, and only now is it reported REVERTED.
  io.run_for(1500ms);
  REQUIRE(reports.size() == 3);
  CHECK(reports[2].state() == v1::FAULT_STATE_REVERTED);
  CHECK(agent.activeCount() == 0);
  CHECK(inNetns("tc qdisc show dev veth0").find("fa17:") == std::string::npos);
}
