// Packet steering's capability probe: which backend this kernel can run and which of their parts
// (queue, random drop) it has, tried in a throwaway network namespace, and the choice between them.
#include "agent/kernel/packet_steering.h"
#include "agent/kernel/packet_steering_internal.h"

#include <arpa/inet.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include <fmt/format.h>

namespace faultline::kernel {
using namespace steering_internal;
namespace {

// Binds queue over nfnetlink (NFQNL_CFG_CMD_BIND) and unbinds it by closing the socket.
bool canBindQueue(uint16_t queue) {
  const int fd = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) {
    return false;
  }
  struct Request {
    nlmsghdr header;
    nfgenmsg message;
    nlattr attribute;
    nfqnl_msg_config_cmd command;
  };
  bool bound = false;
  for (int attempt = 0; attempt < 3 && !bound; ++attempt) {  // EAGAIN: the kernel loaded the module
    Request request{};
    request.header.nlmsg_len = sizeof request;
    request.header.nlmsg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG;
    request.header.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    request.header.nlmsg_seq = static_cast<uint32_t>(attempt + 1);
    request.message.nfgen_family = AF_UNSPEC;
    request.message.version = NFNETLINK_V0;
    request.message.res_id = htons(queue);
    request.attribute.nla_len = sizeof(nlattr) + sizeof(nfqnl_msg_config_cmd);
    request.attribute.nla_type = NFQA_CFG_CMD;
    request.command.command = NFQNL_CFG_CMD_BIND;
    sockaddr_nl kernel{};
    kernel.nl_family = AF_NETLINK;
    if (::sendto(fd, &request, sizeof request, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
      break;
    }
    alignas(nlmsghdr) char reply[512];
    const ssize_t n = ::recv(fd, reply, sizeof reply, 0);
    if (n < static_cast<ssize_t>(NLMSG_LENGTH(sizeof(nlmsgerr)))) {
      break;
    }
    const auto* h = reinterpret_cast<const nlmsghdr*>(reply);
    if (h->nlmsg_type != NLMSG_ERROR) {
      break;
    }
    const auto* err = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
    bound = err->error == 0;
    if (err->error != -EAGAIN) {
      break;
    }
  }
  ::close(fd);
  return bound;
}

}  // namespace

namespace steering_internal {

// The words and errno for a kernel part the probe says is missing, for the rules' backend;
// nullopt when the probe finds every part the rules need.
std::optional<Failure> missingPart(SteeringBackend backend, const SteeringRules& rules) {
  const SteeringSupport s = probeSteeringSupport();
  const auto missing = [](std::string words) { return Failure{errnoCode(ENOENT), std::move(words)}; };
  if (backend == SteeringBackend::kNftables) {
    if (!s.nftables) {
      return missing("this kernel lacks nf_tables with inet base chains (CONFIG_NF_TABLES_INET)");
    }
    if (rules.verdict == SteeringRules::Verdict::kQueue && !s.nftQueue) {
      return missing(
          "this kernel lacks nftables' queue statement: nft_queue (CONFIG_NFT_QUEUE); the xtables backend's "
          "NFQUEUE target may work instead");
    }
    if (rules.verdict == SteeringRules::Verdict::kDropRandom && !s.nftNumgen) {
      return missing("this kernel lacks nftables' numgen expression: nft_numgen (CONFIG_NFT_NUMGEN)");
    }
    return std::nullopt;
  }
  if (!s.xtables) {
    return missing(
        "this kernel lacks the legacy mangle tables, or their modules are not loaded: ip_tables, "
        "ip6_tables, iptable_mangle, ip6table_mangle (CONFIG_IP_NF_MANGLE, CONFIG_IP6_NF_MANGLE); faultline "
        "loads no module itself");
  }
  if (rules.verdict == SteeringRules::Verdict::kQueue && !s.xtNfqueue) {
    return missing("this kernel lacks the NFQUEUE target: xt_NFQUEUE (CONFIG_NETFILTER_XT_TARGET_NFQUEUE)");
  }
  if (rules.verdict == SteeringRules::Verdict::kDropRandom && !s.xtStatistic) {
    return missing("this kernel lacks the statistic match: xt_statistic (CONFIG_NETFILTER_XT_MATCH_STATISTIC)");
  }
  return std::nullopt;
}

}  // namespace steering_internal

SteeringSupport probeSteeringSupport() {
  SteeringSupport support;
  auto probe = [&support] {
    // Only this short-lived thread moves; it and its namespace are gone after join().
    if (::unshare(CLONE_NEWNET) != 0) {
      return;
    }
    probeNftables(support);
    probeXtables(support);
    support.nfqueue = canBindQueue(kQueueBase);
  };
  try {
    std::thread worker(probe);
    worker.join();
  } catch (const std::system_error&) {
    // No thread, no probe: everything stays false, and chooseBackend() says what is missing.
  }
  return support;
}

tl::expected<SteeringBackend, std::string> chooseBackend(const SteeringSupport& s, bool needsQueue) {
  if (needsQueue) {
    if (!s.nfqueue) {
      return tl::unexpected(std::string(
          "this kernel cannot bind a packet queue: nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE) is missing"));
    }
    if (s.nftables && s.nftQueue) {
      return SteeringBackend::kNftables;
    }
    if (s.xtables && s.xtNfqueue) {
      return SteeringBackend::kXtables;
    }
    return tl::unexpected(fmt::format(
        "this kernel can steer no packet to a queue: nftables' queue statement needs nf_tables ({}) and nft_queue "
        "(CONFIG_NFT_QUEUE, {}); the xtables NFQUEUE target needs the legacy mangle tables ({}) and xt_NFQUEUE "
        "(CONFIG_NETFILTER_XT_TARGET_NFQUEUE, {})",
        s.nftables ? "present" : "missing", s.nftQueue ? "present" : "missing", s.xtables ? "present" : "missing",
        s.xtNfqueue ? "present" : "missing"));
  }
  if (s.nftables && s.nftNumgen) {
    return SteeringBackend::kNftables;
  }
  if (s.xtables && s.xtStatistic) {
    return SteeringBackend::kXtables;
  }
  if (s.nftables) {
    return SteeringBackend::kNftables;
  }
  if (s.xtables) {
    return SteeringBackend::kXtables;
  }
  return tl::unexpected(std::string(
      "this kernel has neither nftables (CONFIG_NF_TABLES_INET) nor the legacy mangle tables (CONFIG_IP_NF_MANGLE, "
      "CONFIG_IP6_NF_MANGLE)"));
}

}  // namespace faultline::kernel
