// Packet steering (agent/kernel/packet_steering.h) against the real kernel, in two network
// namespaces the test creates (veth0 in A, its peer in B): both backends install, own and remove
// their rules; matched traffic is really steered (dropped, or queued) and unmatched traffic is
// not; IPv6; exempt endpoints and the injected mark are never matched; a failing install leaves
// nothing and remove leaves the namespace's netfilter state exactly as before (`nft list ruleset`,
// `iptables-legacy-save`, `ip6tables-legacy-save`, read only). The nftables queue statement is
// tested where the kernel has nft_queue (Debian's, in the guest: tests/vm/agent/kernel/packet_steering_test.cpp);
// where it has not (this machine's), the clear error instead. Needs root.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "agent/kernel/packet_steering.h"
#include "common/unique_fd.h"
#include "tests/support/check_cost.h"
#include "tests/support/fifo.h"
#include "tests/support/netns.h"
#include "tests/support/text.h"

using namespace faultline;
using kernel::PacketSteering;
using kernel::SteeringBackend;
using kernel::SteeringRules;
using testing::sh;
using testing::socketIn;

namespace {

using testing::contains;

bool readable(int fd, int timeoutMs) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, timeoutMs) == 1;
}

// The netfilter state that `prefix`nft list ruleset, iptables-legacy-save and ip6tables-legacy-save
// print, without comments and counters (traffic and time change those).
std::string stateText(const std::string& prefix) {
  static const std::regex kCounters(R"(\[\d+:\d+\])");
  std::string out;
  for (const char* command : {"nft list ruleset", "iptables-legacy-save", "ip6tables-legacy-save"}) {
    auto r = sh(prefix + command);
    REQUIRE_MESSAGE(r.status == 0, command, ": ", r.output);
    std::string kept;
    size_t start = 0;
    while (start < r.output.size()) {
      size_t end = r.output.find('\n', start);
      end = end == std::string::npos ? r.output.size() : end + 1;
      if (r.output[start] != '#') {
        kept += r.output.substr(start, end - start);
      }
      start = end;
    }
    out += fmt::format("== {}\n{}", command, std::regex_replace(kept, kCounters, "[]"));
  }
  return out;
}

// Binds a queue over nfnetlink in netns and holds it (no verdicts: queued packets wait) until
// this object goes; then the kernel forgets the queue.
class BoundQueue {
 public:
  BoundQueue(const std::string& netns, uint16_t queue) : fd_(socketIn(netns, AF_NETLINK, SOCK_RAW, NETLINK_NETFILTER)) {
    REQUIRE(fd_.get() >= 0);
    struct Request {
      nlmsghdr header;
      nfgenmsg message;
      nlattr attribute;
      nfqnl_msg_config_cmd command;
    } request{};
    request.header.nlmsg_len = sizeof request;
    request.header.nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG;
    request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    request.message.nfgen_family = AF_UNSPEC;
    request.message.version = NFNETLINK_V0;
    request.message.res_id = htons(queue);
    request.attribute.nla_len = sizeof(nlattr) + sizeof(nfqnl_msg_config_cmd);
    request.attribute.nla_type = NFQA_CFG_CMD;
    request.command.command = NFQNL_CFG_CMD_BIND;
    sockaddr_nl kernelAddress{};
    kernelAddress.nl_family = AF_NETLINK;
    REQUIRE(::sendto(fd_.get(), &request, sizeof request, 0, reinterpret_cast<sockaddr*>(&kernelAddress),
                     sizeof kernelAddress) == static_cast<ssize_t>(sizeof request));
    alignas(nlmsghdr) char reply[512];
    REQUIRE(::recv(fd_.get(), reply, sizeof reply, 0) > 0);
    const auto* h = reinterpret_cast<const nlmsghdr*>(reply);
    REQUIRE(h->nlmsg_type == NLMSG_ERROR);
    REQUIRE(static_cast<const nlmsgerr*>(NLMSG_DATA(h))->error == 0);
  }
  void unbind() { fd_.reset(); }

 private:
  UniqueFd fd_;
};

// veth0 in A (the fixture's namespace) with 10.77.1.1, 10.77.2.1, fd77:1::1, fd77:2::1; its peer
// in B with .2 / ::2 of each.
class Steering : public testing::PeerNetnsFixture {
 public:
  Steering()
      : PeerNetnsFixture({"10.77.1.1/24", "10.77.2.1/24", "fd77:1::1/64", "fd77:2::1/64"},
                         {"10.77.1.2/24", "10.77.2.2/24", "fd77:1::2/64", "fd77:2::2/64"}) {}

  std::unique_ptr<PacketSteering> open(SteeringBackend backend) {
    auto s = kernel::openPacketSteering(backend, netns_);
    REQUIRE_MESSAGE(s.has_value(), (s ? "" : s.error().message()));
    return std::move(*s);
  }

  static SteeringRules rules(uint16_t slot, SteeringRules::Verdict verdict) {
    SteeringRules r;
    r.slot = slot;
    r.interface = "veth0";
    r.verdict = verdict;
    r.queue = static_cast<uint16_t>(kernel::kQueueBase + slot);
    r.dropPercent = verdict == SteeringRules::Verdict::kDropRandom ? 50 : 0;
    return r;
  }

  static void install(PacketSteering& s, const SteeringRules& r) {
    auto installed = s.install(r);
    REQUIRE_MESSAGE(installed.has_value(), (installed ? "" : installed.error().second));
  }

  // Replies to count pings from A to ip, 5 ms apart.
  int ping(const std::string& ip, int count = 5) {
    auto r = sh(fmt::format("nsenter --net={} ping -q -n -c {} -i 0.005 -W 1 {}", netns_, count, ip));
    std::smatch m;
    static const std::regex kReceived(R"((\d+) received)");
    REQUIRE_MESSAGE(std::regex_search(r.output, m, kReceived), r.output);
    return std::stoi(m[1]);
  }

  // Whether a UDP datagram from A (with skb mark, when not 0) reaches ip:port in B.
  bool udpArrives(const std::string& ip, uint16_t port, uint32_t mark = 0) {
    const auto udp = testing::udpPair(netns_, peer_.path(), ip, port);
    REQUIRE_MESSAGE(udp.error.empty(), udp.error);
    if (mark != 0) {
      REQUIRE(::setsockopt(udp.sender.get(), SOL_SOCKET, SO_MARK, &mark, sizeof mark) == 0);
    }
    // A drop in OUTPUT fails sendto() with EPERM: that datagram did not arrive either.
    const bool sent = ::sendto(udp.sender.get(), "x", 1, 0, udp.to.get(), udp.to.length) == 1;
    return sent && readable(udp.receiver.get(), 700);
  }

  // Whether a TCP connection from A to ip:port in B (a listener there) completes.
  bool tcpConnects(const std::string& ip, uint16_t port) {
    const auto listener = testing::tcpListener(peer_.path(), ip, port, 4);
    REQUIRE_MESSAGE(listener.error.empty(), listener.error);
    UniqueFd client = socketIn(netns_, listener.at.family, SOCK_STREAM | SOCK_NONBLOCK);
    REQUIRE(client.get() >= 0);
    const int rc = ::connect(client.get(), listener.at.get(), listener.at.length);
    REQUIRE((rc == 0 || errno == EINPROGRESS));
    pollfd p{client.get(), POLLOUT, 0};
    if (::poll(&p, 1, 700) != 1) {
      return false;
    }
    int error = 0;
    socklen_t len = sizeof error;
    REQUIRE(::getsockopt(client.get(), SOL_SOCKET, SO_ERROR, &error, &len) == 0);
    return error == 0;
  }

  // A's netfilter state as the nft and legacy iptables tools print it (stateText()).
  std::string netfilterState() { return stateText(fmt::format("nsenter --net={} ", netns_)); }

  // Someone else's netfilter state in A, which steering must leave alone; it also makes the kernel
  // instantiate the legacy mangle tables, so the before/after comparison sees them both times.
  void addForeignState() {
    inNetns("nft add table inet user");
    inNetns("nft add chain inet user out '{ type filter hook output priority 0; policy accept; }'");
    inNetns("nft add rule inet user out udp dport 9 counter accept");
    inNetns("iptables-legacy -t mangle -A OUTPUT -p udp --dport 9 -j ACCEPT");
    inNetns("ip6tables-legacy -t mangle -A OUTPUT -p udp --dport 9 -j ACCEPT");
  }

  static kernel::SteeringSupport support() {
    static const kernel::SteeringSupport probed = kernel::probeSteeringSupport();
    return probed;
  }
};

// Sets backend to each backend in turn: doctest runs the test case once per subcase.
#define EACH_BACKEND(backend)             \
  SteeringBackend backend{};              \
  SUBCASE("nftables") {                   \
    backend = SteeringBackend::kNftables; \
  }                                       \
  SUBCASE("xtables") {                    \
    backend = SteeringBackend::kXtables;  \
  }                                       \
  CAPTURE(kernel::steeringBackendName(backend))

// Runs fn on a thread without CAP_NET_ADMIN in its effective set (capabilities are per thread).
template <typename F>
void withoutNetAdmin(F fn) {
  std::thread worker([&] {
    __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2]{};
    // No REQUIRE on this thread: a throw here would end the process.
    const bool dropped = ::syscall(SYS_capget, &header, data) == 0 &&
                         (data[CAP_NET_ADMIN / 32].effective &= ~(1u << (CAP_NET_ADMIN % 32)),
                          ::syscall(SYS_capset, &header, data) == 0);
    CHECK(dropped);
    if (dropped) {
      fn();
    }
  });
  worker.join();
}

}  // namespace

TEST_CASE("the support probe agrees with nft and iptables-legacy in a throwaway namespace") {
  const std::string hostBefore = stateText("");
  const auto s = kernel::probeSteeringSupport();
  const auto works = [](const std::string& script) { return sh("unshare -n sh -c '" + script + "'").status == 0; };
  const std::string chain =
      "nft add table inet t && nft add chain inet t c \"{ type filter hook output priority -150; }\"";
  CHECK(s.nftables == works(chain));
  CHECK(s.nftQueue == works(chain + " && nft add rule inet t c queue num 7 bypass"));
  CHECK(s.nftNumgen == works(chain + " && nft add rule inet t c numgen random mod 100 \\< 1 drop"));
  CHECK(s.xtables == works("iptables-legacy -t mangle -N X && ip6tables-legacy -t mangle -N X"));
  CHECK(s.xtNfqueue == works("iptables-legacy -t mangle -A OUTPUT -p udp -j NFQUEUE --queue-num 7 --queue-bypass && "
                             "ip6tables-legacy -t mangle -A OUTPUT -p udp -j NFQUEUE --queue-num 7 --queue-bypass"));
  CHECK(s.xtStatistic ==
        works("iptables-legacy -t mangle -A OUTPUT -m statistic --mode random --probability 0.1 -j DROP"));
  CHECK_MESSAGE(s.nfqueue, "the kernels faultline is tested on have nfnetlink_queue");
  MESSAGE("nftables " << s.nftables << " nftQueue " << s.nftQueue << " nftNumgen " << s.nftNumgen << " xtables "
                      << s.xtables << " xtNfqueue " << s.xtNfqueue << " xtStatistic " << s.xtStatistic << " nfqueue "
                      << s.nfqueue);
  // The probe never touched this namespace.
  CHECK(stateText("") == hostBefore);
}

TEST_CASE("chooseBackend: nftables queue where nft_queue exists, else the xtables NFQUEUE target") {
  kernel::SteeringSupport all{true, true, true, true, true, true, true};
  CHECK(kernel::chooseBackend(all, true).value() == SteeringBackend::kNftables);
  CHECK(kernel::chooseBackend(all, false).value() == SteeringBackend::kNftables);
  auto noNftQueue = all;
  noNftQueue.nftQueue = false;  // this machine's kernel
  CHECK(kernel::chooseBackend(noNftQueue, true).value() == SteeringBackend::kXtables);
  CHECK(kernel::chooseBackend(noNftQueue, false).value() == SteeringBackend::kNftables);
  auto noQueueAtAll = noNftQueue;
  noQueueAtAll.xtNfqueue = false;
  auto none = kernel::chooseBackend(noQueueAtAll, true);
  REQUIRE_FALSE(none.has_value());
  CHECK(contains(none.error(), "nft_queue (CONFIG_NFT_QUEUE, missing)"));
  CHECK(contains(none.error(), "xt_NFQUEUE (CONFIG_NETFILTER_XT_TARGET_NFQUEUE, missing)"));
  CHECK(kernel::chooseBackend(noQueueAtAll, false).value() == SteeringBackend::kNftables);
  auto noBinding = all;
  noBinding.nfqueue = false;
  REQUIRE_FALSE(kernel::chooseBackend(noBinding, true).has_value());
  CHECK(contains(kernel::chooseBackend(noBinding, true).error(), "CONFIG_NETFILTER_NETLINK_QUEUE"));
  auto xtOnly = kernel::SteeringSupport{false, false, false, true, true, true, true};
  CHECK(kernel::chooseBackend(xtOnly, false).value() == SteeringBackend::kXtables);
  auto noNumgen = all;
  noNumgen.nftNumgen = false;  // random loss: the statistic match
  CHECK(kernel::chooseBackend(noNumgen, false).value() == SteeringBackend::kXtables);
  CHECK_FALSE(kernel::chooseBackend(kernel::SteeringSupport{}, false).has_value());
}

TEST_CASE_FIXTURE(Steering, "a drop verdict drops matched IPv4 traffic only, and remove restores the state exactly") {
  EACH_BACKEND(backend);
  addForeignState();
  const std::string before = netfilterState();
  REQUIRE(ping("10.77.1.2") == 5);
  auto steering = open(backend);
  auto r = rules(3, SteeringRules::Verdict::kDrop);
  r.match.add_destination_cidrs("10.77.1.2/32");
  install(*steering, r);
  const std::string during = netfilterState();
  if (backend == SteeringBackend::kNftables) {
    CHECK_MESSAGE(contains(during, "table inet faultline-3"), during);
    CHECK_MESSAGE(contains(during, "type filter hook output priority mangle; policy accept;"), during);
    CHECK_MESSAGE(contains(during, "oifname \"veth0\""), during);
    CHECK_MESSAGE(contains(during, "ip daddr 10.77.1.2 drop"), during);
  } else {
    CHECK_MESSAGE(contains(during, "-A OUTPUT -o veth0 -j FAULTLINE-3"), during);
    CHECK_MESSAGE(contains(during, "-A FAULTLINE-3 -d 10.77.1.2/32 -j DROP"), during);
    CHECK_MESSAGE(contains(during, "-A FAULTLINE-3 -m mark --mark 0xfa170001 -j RETURN"), during);
  }
  CHECK(ping("10.77.1.2") == 0);
  CHECK(ping("10.77.2.2") == 5);
  CHECK_FALSE(udpArrives("10.77.1.2", 5001));
  CHECK(udpArrives("10.77.2.2", 5001));
  CHECK_FALSE(tcpConnects("10.77.1.2", 5002));
  CHECK(tcpConnects("10.77.2.2", 5002));

  auto owned = steering->owned();
  REQUIRE(owned.has_value());
  CHECK(owned->slots == std::vector<uint16_t>{3});
  CHECK(owned->strays.empty());

  REQUIRE(steering->remove(3).has_value());
  CHECK(netfilterState() == before);
  CHECK(ping("10.77.1.2") == 5);
  CHECK(udpArrives("10.77.1.2", 5001));
  REQUIRE(steering->remove(3).has_value());  // idempotent
  CHECK(netfilterState() == before);
  CHECK(steering->owned()->slots.empty());
}

TEST_CASE_FIXTURE(Steering, "ports and protocol: only the matched TCP destination port is dropped") {
  EACH_BACKEND(backend);
  auto steering = open(backend);
  auto r = rules(4, SteeringRules::Verdict::kDrop);
  r.match.set_protocol(v1::PROTOCOL_TCP);
  r.match.add_destination_ports(7001);
  install(*steering, r);
  CHECK_FALSE(tcpConnects("10.77.1.2", 7001));
  CHECK_FALSE(tcpConnects("fd77:1::2", 7001));
  CHECK(tcpConnects("10.77.1.2", 7002));
  CHECK(udpArrives("10.77.1.2", 7001));  // UDP to the same port: another protocol
  CHECK(ping("10.77.1.2") == 5);
  REQUIRE(steering->remove(4).has_value());
  CHECK(tcpConnects("10.77.1.2", 7001));
}

TEST_CASE_FIXTURE(Steering, "IPv6: a matched /128 is dropped, another address on the link is not") {
  EACH_BACKEND(backend);
  addForeignState();
  const std::string before = netfilterState();
  REQUIRE(ping("fd77:1::2") == 5);
  auto steering = open(backend);
  auto r = rules(5, SteeringRules::Verdict::kDrop);
  r.match.add_destination_cidrs("fd77:1::2/128");
  install(*steering, r);
  CHECK(ping("fd77:1::2") == 0);
  CHECK(ping("fd77:2::2") == 5);
  CHECK(ping("10.77.1.2") == 5);  // an IPv6 match leaves IPv4 alone
  CHECK_FALSE(udpArrives("fd77:1::2", 5003));
  CHECK(udpArrives("fd77:2::2", 5003));
  REQUIRE(steering->remove(5).has_value());
  CHECK(ping("fd77:1::2") == 5);
  CHECK(netfilterState() == before);
}

TEST_CASE_FIXTURE(Steering, "ingress: replies from the matched source are dropped on the way in") {
  EACH_BACKEND(backend);
  auto steering = open(backend);
  auto r = rules(6, SteeringRules::Verdict::kDrop);
  r.egress = false;
  r.ingress = true;
  r.match.add_source_cidrs("10.77.1.2/32");
  install(*steering, r);
  const std::string state = netfilterState();
  CHECK_MESSAGE(contains(state, backend == SteeringBackend::kNftables ? "hook prerouting" : "-A PREROUTING -i veth0"),
                state);
  CHECK(ping("10.77.1.2") == 0);
  CHECK(ping("10.77.2.2") == 5);
  REQUIRE(steering->remove(6).has_value());
  CHECK(ping("10.77.1.2") == 5);
}

TEST_CASE_FIXTURE(Steering, "a random drop drops about its percentage") {
  EACH_BACKEND(backend);
  auto steering = open(backend);
  auto r = rules(7, SteeringRules::Verdict::kDropRandom);
  r.dropPercent = 50;
  r.match.add_destination_cidrs("10.77.1.2/32");
  install(*steering, r);
  const int received = ping("10.77.1.2", 400);
  MESSAGE("50 % random drop of echo requests: " << received << " of 400 replies");
  CHECK(received >= 140);  // 200 expected; 3 standard deviations is +-30
  CHECK(received <= 260);
  CHECK(ping("10.77.2.2", 50) == 50);
  REQUIRE(steering->remove(7).has_value());
}

TEST_CASE_FIXTURE(Steering, "a queue verdict: bypass while no program is bound, held while one is, fail-open after") {
  EACH_BACKEND(backend);
  addForeignState();
  const std::string before = netfilterState();
  auto steering = open(backend);
  auto r = rules(8, SteeringRules::Verdict::kQueue);
  r.match.add_destination_cidrs("10.77.1.2/32");
  auto installed = steering->install(r);
  if (backend == SteeringBackend::kNftables && !support().nftQueue) {
    // This machine's kernel: the clear error, and nothing stays.
    REQUIRE_FALSE(installed.has_value());
    CHECK(installed.error().first == std::errc::no_such_file_or_directory);
    CHECK_MESSAGE(contains(installed.error().second, "nft_queue (CONFIG_NFT_QUEUE)"), installed.error().second);
    CHECK(netfilterState() == before);
    CHECK(steering->owned()->slots.empty());
    return;
  }
  REQUIRE_MESSAGE(installed.has_value(), (installed ? "" : installed.error().second));
  const std::string state = netfilterState();
  CHECK_MESSAGE(contains(state, backend == SteeringBackend::kNftables
                                    ? "ip daddr 10.77.1.2 queue flags bypass to 64008"
                                    : "-A FAULTLINE-8 -d 10.77.1.2/32 -j NFQUEUE --queue-num 64008 --queue-bypass"),
                state);
  CHECK(ping("10.77.1.2") == 5);  // no program bound: bypass
  {
    BoundQueue queue(netns_, r.queue);
    CHECK(ping("10.77.1.2") == 0);  // bound and never answered: the packets wait in the queue
    CHECK(ping("10.77.2.2") == 5);
    CHECK_FALSE(udpArrives("10.77.1.2", 5004));
    queue.unbind();                 // the program stopped or died
    CHECK(ping("10.77.1.2") == 5);  // fail-open
  }
  REQUIRE(steering->remove(8).has_value());
  CHECK(netfilterState() == before);
}

TEST_CASE_FIXTURE(Steering, "exempt endpoints and the injected mark are never matched") {
  EACH_BACKEND(backend);
  auto steering = open(backend);
  // Every IPv4 and IPv6 packet on veth0 is matched, neighbour discovery's too: resolve first.
  REQUIRE(ping("fd77:1::2") == 5);
  REQUIRE(ping("fd77:2::2") == 5);
  auto r = rules(9, SteeringRules::Verdict::kDrop);
  r.exempt.push_back(agent::Endpoint{*parseCidr("10.77.1.2"), 7100});
  r.exempt.push_back(agent::Endpoint{*parseCidr("fd77:1::2"), 7100});
  install(*steering, r);
  CHECK(ping("10.77.1.2") == 0);
  CHECK(ping("fd77:2::2") == 0);
  CHECK(tcpConnects("10.77.1.2", 7100));
  CHECK(tcpConnects("fd77:1::2", 7100));
  CHECK_FALSE(tcpConnects("10.77.1.2", 7101));
  CHECK_FALSE(tcpConnects("10.77.2.2", 7100));
  CHECK_FALSE(udpArrives("10.77.2.2", 7102));
  CHECK(udpArrives("10.77.2.2", 7102, kernel::kInjectedMark));
  CHECK(udpArrives("fd77:2::2", 7102, kernel::kInjectedMark));
  CHECK_FALSE(udpArrives("10.77.2.2", 7102, kernel::kInjectedMark + 1));
  REQUIRE(steering->remove(9).has_value());
}

TEST_CASE_FIXTURE(Steering, "owned lists faultline's slots and strays; a taken slot is EEXIST and stays as it was") {
  EACH_BACKEND(backend);
  addForeignState();
  const std::string before = netfilterState();
  auto steering = open(backend);
  auto a = rules(3, SteeringRules::Verdict::kDrop);
  a.match.add_destination_cidrs("10.77.1.2/32");
  auto b = rules(17, SteeringRules::Verdict::kDrop);
  b.ingress = true;
  b.match.add_destination_cidrs("10.77.2.2/32");
  install(*steering, a);
  install(*steering, b);
  const std::string both = netfilterState();
  auto again = steering->install(b);
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error().first == std::errc::file_exists);
  CHECK_MESSAGE(contains(again.error().second, "slot 17 is taken"), again.error().second);
  CHECK(netfilterState() == both);
  if (backend == SteeringBackend::kNftables) {
    inNetns("nft add table inet faultline-x");
  } else {
    inNetns("iptables-legacy -t mangle -N FAULTLINE-x");
  }
  auto owned = steering->owned();
  REQUIRE(owned.has_value());
  CHECK(owned->slots == std::vector<uint16_t>{3, 17});
  CHECK(owned->strays ==
        std::vector<std::string>{backend == SteeringBackend::kNftables ? "faultline-x" : "FAULTLINE-x"});
  REQUIRE(steering->remove(17).has_value());
  CHECK(steering->owned()->slots == std::vector<uint16_t>{3});
  REQUIRE(steering->remove(3).has_value());
  CHECK(steering->owned()->slots.empty());
  if (backend == SteeringBackend::kNftables) {
    inNetns("nft delete table inet faultline-x");
  } else {
    inNetns("iptables-legacy -t mangle -X FAULTLINE-x");
  }
  CHECK(netfilterState() == before);
}

TEST_CASE_FIXTURE(Steering, "xtables: an IPv6 failure after the IPv4 commit takes the IPv4 chain back") {
  addForeignState();
  inNetns("ip6tables-legacy -t mangle -N FAULTLINE-12");  // someone else's chain of that name, IPv6 only
  const std::string before = netfilterState();
  auto steering = open(SteeringBackend::kXtables);
  auto r = rules(12, SteeringRules::Verdict::kDrop);
  auto installed = steering->install(r);
  REQUIRE_FALSE(installed.has_value());
  CHECK(installed.error().first == std::errc::file_exists);
  CHECK_MESSAGE(contains(installed.error().second, "IPv6"), installed.error().second);
  CHECK(netfilterState() == before);  // IPv4's chain and jump gone; the IPv6 chain untouched
  CHECK(ping("10.77.1.2") == 5);
}

TEST_CASE_FIXTURE(Steering, "bad rules are EINVAL and change nothing") {
  EACH_BACKEND(backend);
  addForeignState();
  const std::string before = netfilterState();
  auto steering = open(backend);
  const auto refused = [&](const SteeringRules& r, std::string_view words) {
    auto installed = steering->install(r);
    REQUIRE_FALSE(installed.has_value());
    CHECK(installed.error().first == std::errc::invalid_argument);
    CHECK_MESSAGE(contains(installed.error().second, words), installed.error().second);
  };
  auto r = rules(256, SteeringRules::Verdict::kDrop);
  refused(r, "slot 256 is out of range; accepted: 0 to 255");
  r = rules(1, SteeringRules::Verdict::kDrop);
  r.interface = "bad/name";
  refused(r, "interface 'bad/name' is not a valid interface name");
  r = rules(1, SteeringRules::Verdict::kDropRandom);
  r.dropPercent = 0;
  refused(r, "drop percent 0 is out of range");
  r = rules(1, SteeringRules::Verdict::kDrop);
  r.egress = false;
  refused(r, "neither egress nor ingress");
  r = rules(1, SteeringRules::Verdict::kDrop);
  r.match.add_destination_ports(80);
  refused(r, "ports need protocol tcp or udp");
  r = rules(1, SteeringRules::Verdict::kDrop);
  r.match.set_protocol(v1::PROTOCOL_UDP);
  for (uint32_t p = 1; p <= 20; ++p) {
    r.match.add_destination_ports(p);
    r.match.add_source_ports(p);
  }
  refused(r, "the match needs 800 rules");
  r = rules(1, SteeringRules::Verdict::kDrop);
  r.match.add_destination_cidrs("10.0.0.1/8");
  refused(r, "10.0.0.1/8");
  CHECK(netfilterState() == before);
  CHECK(steering->remove(256).error().first == std::errc::invalid_argument);
}

TEST_CASE_FIXTURE(Steering, "without CAP_NET_ADMIN: EPERM, and nothing changes") {
  EACH_BACKEND(backend);
  const std::string before = netfilterState();
  auto steering = open(backend);
  withoutNetAdmin([&] {
    auto installed = steering->install(rules(2, SteeringRules::Verdict::kDrop));
    CHECK_FALSE(installed.has_value());
    if (!installed) {
      CHECK_MESSAGE(installed.error().first == std::errc::operation_not_permitted, installed.error().second);
      CHECK_MESSAGE(contains(installed.error().second, "CAP_NET_ADMIN"), installed.error().second);
    }
    auto removed = steering->remove(2);
    CHECK((!removed && removed.error().first == std::errc::operation_not_permitted));
    auto owned = steering->owned();
    CHECK((!owned && owned.error() == std::errc::operation_not_permitted));
  });
  CHECK(netfilterState() == before);
}

TEST_CASE("openPacketSteering: a missing path is ENOENT, a file that is no network namespace EINVAL") {
  auto missing = kernel::openPacketSteering(SteeringBackend::kNftables, "/run/netns/faultline-no-such-namespace");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error() == std::errc::no_such_file_or_directory);
  auto uts = kernel::openPacketSteering(SteeringBackend::kXtables, "/proc/self/ns/uts");
  REQUIRE_FALSE(uts.has_value());
  CHECK(uts.error() == std::errc::invalid_argument);
}

TEST_CASE_FIXTURE(Steering,
                  "inspect reads back what a slot installed; steeringChanges names what someone deleted or changed") {
  EACH_BACKEND(backend);
  const bool nft = backend == SteeringBackend::kNftables;
  auto steering = open(backend);
  // The queue verdict where the backend has it (xtables here; nftables in the guest), else a drop.
  auto r = rules(5, nft && !support().nftQueue ? SteeringRules::Verdict::kDrop : SteeringRules::Verdict::kQueue);
  r.ingress = true;
  r.match.add_destination_cidrs("10.77.1.2/32");
  install(*steering, r);
  auto installed = steering->inspect(5);
  REQUIRE(installed.has_value());
  std::vector<std::string> names;
  for (const auto& p : installed->parts) {
    names.push_back(fmt::format("{} ({} rules)", p.name, p.rules));
  }
  MESSAGE(fmt::format("{} parts: {}", kernel::steeringBackendName(backend), fmt::join(names, "; ")));
  CHECK_FALSE(installed->queue.bound);
  if (nft) {
    CHECK(names == std::vector<std::string>{"nftables chain egress of table inet faultline-5 (2 rules)",
                                            "nftables chain forward of table inet faultline-5 (2 rules)",
                                            "nftables chain ingress of table inet faultline-5 (2 rules)",
                                            "nftables table inet faultline-5 (3 rules)"});
  } else {
    CHECK(names == std::vector<std::string>{
                       "IPv4 chain FAULTLINE-5 (2 rules)", "IPv4 jump rule FORWARD -o veth0 -> FAULTLINE-5 (1 rules)",
                       "IPv4 jump rule OUTPUT -o veth0 -> FAULTLINE-5 (1 rules)",
                       "IPv4 jump rule PREROUTING -i veth0 -> FAULTLINE-5 (1 rules)",
                       "IPv6 chain FAULTLINE-5 (1 rules)", "IPv6 jump rule FORWARD -o veth0 -> FAULTLINE-5 (1 rules)",
                       "IPv6 jump rule OUTPUT -o veth0 -> FAULTLINE-5 (1 rules)",
                       "IPv6 jump rule PREROUTING -i veth0 -> FAULTLINE-5 (1 rules)"});
  }
  // Traffic moves the counters, which are not compared.
  CHECK(ping("10.77.2.2") == 5);
  auto again = steering->inspect(5);
  REQUIRE(again.has_value());
  CHECK(kernel::steeringChanges(*installed, *again).empty());

  // owned(): what the slot steers, and whether a program serves its queue.
  {
    BoundQueue queue(netns_, r.queue);
    auto owned = steering->owned();
    REQUIRE(owned.has_value());
    REQUIRE(owned->steered.size() == 1);
    CHECK(owned->steered[0].slot == 5);
    CHECK(owned->steered[0].interface == "veth0");
    CHECK(owned->steered[0].egress);
    CHECK(owned->steered[0].ingress);
    CHECK(owned->served == std::vector<uint16_t>{5});
    auto bound = steering->inspect(5);
    REQUIRE(bound.has_value());
    CHECK(bound->queue.bound);
    CHECK(bound->queue.waiting == 0);
  }
  CHECK(steering->owned()->served.empty());

  // Cost of one check, as lost() pays it about once a second (the namespace's thread hop included).
  MESSAGE(fmt::format("inspect() ({}): {}", kernel::steeringBackendName(backend),
                      testing::checkCost(200, [&] { return steering->inspect(5).has_value(); })));

  // Someone changes and deletes parts behind faultline's back.
  if (nft) {
    inNetns("nft flush chain inet faultline-5 ingress");
  } else {
    inNetns("iptables-legacy -t mangle -D OUTPUT -o veth0 -j FAULTLINE-5");
    inNetns("iptables-legacy -t mangle -R FAULTLINE-5 2 -d 10.77.1.2/32 -j ACCEPT");
    inNetns("ip6tables-legacy -t mangle -F FAULTLINE-5");
  }
  auto now = steering->inspect(5);
  REQUIRE(now.has_value());
  const auto changes = kernel::steeringChanges(*installed, *now);
  MESSAGE(fmt::format("{}", fmt::join(changes, "\n")));
  if (nft) {
    CHECK(changes == std::vector<std::string>{"the nftables chain ingress of table inet faultline-5 now has 0 rules, "
                                              "not the 2 installed (someone changed it)"});
    inNetns("nft delete table inet faultline-5");
  } else {
    CHECK(changes ==
          std::vector<std::string>{
              "the IPv4 jump rule OUTPUT -o veth0 -> FAULTLINE-5 is gone (someone deleted it): packets no longer "
              "reach the chain",
              "the rules of the IPv4 chain FAULTLINE-5 are not those installed (someone replaced them)",
              "the IPv6 chain FAULTLINE-5 now has 0 rules, not the 1 installed (someone changed it)"});
    inNetns("iptables-legacy -t mangle -D PREROUTING -i veth0 -j FAULTLINE-5");
    inNetns("iptables-legacy -t mangle -D FORWARD -o veth0 -j FAULTLINE-5");
    inNetns("ip6tables-legacy -t mangle -D FORWARD -o veth0 -j FAULTLINE-5");
    inNetns("ip6tables-legacy -t mangle -D OUTPUT -o veth0 -j FAULTLINE-5");
    inNetns("ip6tables-legacy -t mangle -D PREROUTING -i veth0 -j FAULTLINE-5");
    inNetns("iptables-legacy -t mangle -F FAULTLINE-5");
    inNetns("iptables-legacy -t mangle -X FAULTLINE-5");
    inNetns("ip6tables-legacy -t mangle -X FAULTLINE-5");
  }
  auto gone = steering->inspect(5);
  REQUIRE(gone.has_value());
  CHECK(gone->parts.empty());
  const auto all = kernel::steeringChanges(*installed, *gone);
  REQUIRE(all.size() == 1);
  CHECK_MESSAGE(contains(all[0], "none of its rules is left: "), all[0]);
  REQUIRE(steering->remove(5).has_value());
}

TEST_CASE("openPacketSteering: a FIFO named as the netns is refused at once (EINVAL), never waited on") {
  using namespace std::chrono_literals;
  testing::TempFifo fifo;
  for (const auto backend : {SteeringBackend::kNftables, SteeringBackend::kXtables}) {
    const auto [steering, took] = fifo.callWithin(2s, [&] { return kernel::openPacketSteering(backend, fifo.path()); });
    CHECK(took < 100ms);
    REQUIRE_FALSE(steering.has_value());
    CHECK(steering.error() == std::errc::invalid_argument);
  }
}

TEST_CASE_FIXTURE(Steering,
                  "xtables: a rule faultline did not add that jumps to its chain survives remove(), which names it and "
                  "leaves the chain empty; once that rule is gone, remove() takes the chain") {
  addForeignState();
  const std::string before = netfilterState();
  auto steering = open(SteeringBackend::kXtables);
  install(*steering, rules(11, SteeringRules::Verdict::kQueue));
  // owned() reads what the slot steers from faultline's own jump rules only: a foreign jump ahead
  // of them (another interface) or in a hook the slot does not use (ingress) changes nothing.
  inNetns("iptables-legacy -t mangle -I OUTPUT 1 -o veth7 -p tcp -j FAULTLINE-11");
  inNetns("iptables-legacy -t mangle -A PREROUTING -i veth0 -p tcp -j FAULTLINE-11");
  {
    auto owned = steering->owned();
    REQUIRE(owned.has_value());
    REQUIRE(owned->steered.size() == 1);
    CHECK(owned->steered[0].slot == 11);
    CHECK(owned->steered[0].interface == "veth0");
    CHECK(owned->steered[0].egress);
    CHECK_FALSE(owned->steered[0].ingress);
  }
  inNetns("iptables-legacy -t mangle -D OUTPUT -o veth7 -p tcp -j FAULTLINE-11");
  inNetns("iptables-legacy -t mangle -D PREROUTING -i veth0 -p tcp -j FAULTLINE-11");
  // Someone's rules: one in a chain faultline never uses, one in OUTPUT that is not of the shape
  // faultline's jump rules have (a protocol match).
  inNetns("iptables-legacy -t mangle -A INPUT -i veth0 -j FAULTLINE-11");
  inNetns("iptables-legacy -t mangle -A OUTPUT -o veth0 -p udp -j FAULTLINE-11");

  auto removed = steering->remove(11);
  REQUIRE_MESSAGE(removed.has_value(), (removed ? "" : removed.error().second));
  REQUIRE(removed->left.size() == 1);  // IPv4 only: nothing jumps to the IPv6 chain
  const std::string& words = removed->left[0];
  MESSAGE(words);
  CHECK(contains(words, "the IPv4 chain FAULTLINE-11 was left in place, emptied of faultline's rules"));
  CHECK(contains(words, "rule 1 of INPUT (-i veth0) in the IPv4 mangle table"));
  // Numbered as they are after the removal: OUTPUT was faultline's jump (inserted first), someone's
  // ACCEPT (addForeignState()), then the foreign jump; faultline's is gone.
  CHECK(contains(words, "rule 2 of OUTPUT (-o veth0) in the IPv4 mangle table"));
  CHECK(contains(words, "deletes no rule it did not add"));

  const std::string v4 = inNetns("iptables-legacy -t mangle -S");
  const std::string v6 = inNetns("ip6tables-legacy -t mangle -S");
  CHECK_MESSAGE(contains(v4, "-A INPUT -i veth0 -j FAULTLINE-11"), v4);
  CHECK_MESSAGE(contains(v4, "-A OUTPUT -o veth0 -p udp -j FAULTLINE-11"), v4);
  CHECK_MESSAGE(contains(v4, "-A OUTPUT -p udp -m udp --dport 9 -j ACCEPT"), v4);  // someone's, untouched
  CHECK_MESSAGE(contains(v4, "-N FAULTLINE-11"), v4);
  CHECK_MESSAGE(!contains(v4, "-A FAULTLINE-11"), v4);                     // emptied
  CHECK_MESSAGE(!contains(v4, "-A OUTPUT -o veth0 -j FAULTLINE-11"), v4);  // faultline's own jumps are gone
  CHECK_MESSAGE(!contains(v4, "-A FORWARD -o veth0 -j FAULTLINE-11"), v4);
  CHECK_MESSAGE(!contains(v6, "FAULTLINE-11"), v6);
  // The slot stays taken while its chain is there.
  auto owned = steering->owned();
  REQUIRE(owned.has_value());
  CHECK(owned->slots == std::vector<uint16_t>{11});

  // Again while the rules are there: the same words, nothing else changes.
  auto again = steering->remove(11);
  REQUIRE(again.has_value());
  CHECK(again->left == removed->left);
  CHECK(inNetns("iptables-legacy -t mangle -S") == v4);

  inNetns("iptables-legacy -t mangle -D INPUT -i veth0 -j FAULTLINE-11");
  inNetns("iptables-legacy -t mangle -D OUTPUT -o veth0 -p udp -j FAULTLINE-11");
  auto freed = steering->remove(11);
  REQUIRE_MESSAGE(freed.has_value(), (freed ? "" : freed.error().second));
  CHECK(freed->left.empty());
  CHECK(netfilterState() == before);
}

namespace {

// Sets $XTABLES_LOCKFILE (read by the agent's XtablesLock and by iptables(8)) to a file of its own
// for its life, so that holding the lock here never holds up iptables elsewhere on the host.
class LockFileEnv {
 public:
  LockFileEnv() {
    std::string pattern = (std::filesystem::temp_directory_path() / "fl-xtlock-XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    dir_ = pattern;
    path_ = dir_ + "/xtables.lock";
    ::setenv("XTABLES_LOCKFILE", path_.c_str(), 1);
  }
  LockFileEnv(const LockFileEnv&) = delete;
  LockFileEnv& operator=(const LockFileEnv&) = delete;
  ~LockFileEnv() {
    ::unsetenv("XTABLES_LOCKFILE");
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  [[nodiscard]] const std::string& path() const { return path_; }

 private:
  std::string dir_;
  std::string path_;
};

// Another process (named xtables-holder) that holds flock(2) on path, as iptables -w does, until
// release() or the end of the object (killed and reaped).
class LockHolder {
 public:
  explicit LockHolder(const std::string& path) {
    int ready[2];
    REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {  // only system calls here: the test process has threads
      ::prctl(PR_SET_NAME, "xtables-holder");
      const int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
      if (fd < 0 || ::flock(fd, LOCK_EX) != 0 || ::write(ready[1], "x", 1) != 1) {
        ::_exit(1);
      }
      for (;;) {
        ::pause();
      }
    }
    ::close(ready[1]);
    char c = 0;
    const bool locked = ::read(ready[0], &c, 1) == 1;
    ::close(ready[0]);
    REQUIRE_MESSAGE(locked, "the lock holder could not take ", path);
  }
  LockHolder(const LockHolder&) = delete;
  LockHolder& operator=(const LockHolder&) = delete;
  ~LockHolder() { release(); }
  void release() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  [[nodiscard]] pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
};

}  // namespace

TEST_CASE("the xtables lock is /run/xtables.lock, or $XTABLES_LOCKFILE as iptables(8) reads it") {
  ::unsetenv("XTABLES_LOCKFILE");
  CHECK(kernel::xtablesLockPath() == "/run/xtables.lock");
  LockFileEnv env;
  CHECK(kernel::xtablesLockPath() == env.path());
}

TEST_CASE_FIXTURE(Steering,
                  "xtables: install() and remove() wait for the xtables lock another process holds, and fail (EBUSY, "
                  "naming the holder) rather than change anything without it") {
  using namespace std::chrono_literals;
  LockFileEnv env;
  addForeignState();
  const std::string before = netfilterState();
  auto waitShort = kernel::openPacketSteeringWithLockWait(SteeringBackend::kXtables, netns_, 300ms);
  REQUIRE(waitShort.has_value());
  auto& steering = **waitShort;

  {
    LockHolder holder(env.path());
    const auto start = std::chrono::steady_clock::now();
    auto installed = steering.install(rules(12, SteeringRules::Verdict::kQueue));
    const auto took = std::chrono::steady_clock::now() - start;
    REQUIRE_FALSE(installed.has_value());
    const std::string& words = installed.error().second;
    MESSAGE(words);
    CHECK(installed.error().first == std::errc::device_or_resource_busy);
    CHECK(contains(words, env.path()));
    // The holder is named from /proc/locks (on this machine's kernel it is: pid and command). In
    // the QEMU guest the holder is not found there, for a reason not yet known, and the error
    // says "another program"; both are accepted, the rest of the error is not.
    const bool named = contains(words, fmt::format("pid {} (xtables-holder)", holder.pid()));
    if (!named) {
      MESSAGE("the holder (pid ", holder.pid(), ") is not named: ", words);
    }
    CHECK((named || contains(words, "another program")));
    CHECK(contains(words, "nothing was changed"));
    CHECK(took >= 300ms);
    CHECK(took < 3s);
    CHECK(netfilterState() == before);
  }

  // Installed while the lock is free; then a remove() that cannot have the lock changes nothing.
  install(steering, rules(12, SteeringRules::Verdict::kQueue));
  const std::string installedState = netfilterState();
  {
    LockHolder holder(env.path());
    auto removed = steering.remove(12);
    REQUIRE_FALSE(removed.has_value());
    CHECK(removed.error().first == std::errc::device_or_resource_busy);
    CHECK(contains(removed.error().second, "nothing was changed"));
    CHECK(netfilterState() == installedState);

    // A longer wait: remove() goes on as soon as the holder lets go, not before.
    auto waitLong = kernel::openPacketSteeringWithLockWait(SteeringBackend::kXtables, netns_, 10s);
    REQUIRE(waitLong.has_value());
    std::thread releaser([&] {
      std::this_thread::sleep_for(500ms);
      holder.release();
    });
    const auto start = std::chrono::steady_clock::now();
    auto later = (*waitLong)->remove(12);
    const auto took = std::chrono::steady_clock::now() - start;
    releaser.join();
    REQUIRE_MESSAGE(later.has_value(), (later ? "" : later.error().second));
    CHECK(took >= 450ms);
    CHECK(took < 5s);
  }
  CHECK(netfilterState() == before);
}
