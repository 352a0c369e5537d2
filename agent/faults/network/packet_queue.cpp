#include "agent/faults/network/packet_queue.h"

#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink_queue.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <queue>
#include <random>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "agent/faults/network/net_driver.h"
#include "agent/faults/network/netem_dist.h"
#include "agent/faults/spec.h"
#include "agent/kernel/packet_steering.h"
#include "agent/kernel/spec_files.h"
#include "common/unique_fd.h"

namespace faultline::agent {

namespace {

using std::chrono::nanoseconds;

nanoseconds toNanos(const google::protobuf::Duration& d) {
  return std::chrono::seconds(d.seconds()) + nanoseconds(d.nanos());
}

// A percentage on netem's scale: 0 = never, UINT32_MAX = always (tc's get_percent()).
uint32_t toScale(double percent) {
  return static_cast<uint32_t>(std::nearbyint(std::clamp(percent, 0.0, 100.0) / 100.0 *
                                              static_cast<double>(std::numeric_limits<uint32_t>::max())));
}

// netem's correlated random numbers (get_crandom()): each draw is a weighted mean of a fresh
// uniform u32 and the previous draw, the previous one weighted by rho / 2^32.
struct Correlated {
  uint32_t rho = 0;
  uint32_t last = 0;

  uint32_t next(std::mt19937& rng) {
    const uint32_t fresh = rng();
    if (rho == 0) {
      return fresh;
    }
    const uint64_t weight = uint64_t{rho} + 1;
    const uint64_t mixed = (uint64_t{fresh} * ((uint64_t{1} << 32) - weight) + uint64_t{last} * weight) >> 32;
    last = static_cast<uint32_t>(mixed);
    return last;
  }
};

}  // namespace

tl::expected<Impairment, std::string> impairmentFromSpec(const v1::FaultSpec& spec) {
  if (auto valid = validateFaultSpec(spec); !valid) {
    return tl::unexpected(fmt::format("{}: {}", valid.error().field, valid.error().message));
  }
  Impairment out;
  switch (spec.kind_case()) {
    case v1::FaultSpec::kNetworkDelay: {
      const auto& d = spec.network_delay();
      if (d.rate_bps() != 0) {
        return tl::unexpected(fmt::format(
            "rate_bps {} needs sch_netem, which this kernel lacks: the userspace path delays packets but does not "
            "pace them; accepted: rate_bps 0 here, or a network.bandwidth fault (tbf) for the rate",
            d.rate_bps()));
      }
      out.delay = toNanos(d.delay());
      out.jitter = toNanos(d.jitter());
      out.delayCorrelation = d.correlation();
      out.distribution = d.distribution();
      out.keepOrder = d.keep_order();
      // The same queue size the netem driver gives sch_netem, so the delay does not tail-drop.
      out.limitPackets = d.limit_packets() != 0
                             ? d.limit_packets()
                             : netemLimitPackets(std::chrono::duration_cast<std::chrono::microseconds>(out.delay),
                                                 std::chrono::duration_cast<std::chrono::microseconds>(out.jitter), 0);
      return out;
    }
    case v1::FaultSpec::kNetworkLoss: {
      const auto& l = spec.network_loss();
      if (l.has_gilbert_elliott()) {
        out.gilbertElliott = l.gilbert_elliott();
      } else {
        out.lossPercent = l.percent();
        out.lossCorrelation = l.correlation();
      }
      if (l.limit_packets() != 0) {
        out.limitPackets = l.limit_packets();
      }
      return out;
    }
    case v1::FaultSpec::kNetworkDuplicate:
      out.duplicatePercent = spec.network_duplicate().percent();
      out.duplicateCorrelation = spec.network_duplicate().correlation();
      return out;
    case v1::FaultSpec::kNetworkCorrupt:
      out.corruptPercent = spec.network_corrupt().percent();
      out.corruptCorrelation = spec.network_corrupt().correlation();
      return out;
    case v1::FaultSpec::kNetworkReorder: {
      const auto& r = spec.network_reorder();
      out.delay = toNanos(r.delay());
      out.reorderPercent = r.percent();
      out.reorderCorrelation = r.correlation();
      out.gap = std::max<uint32_t>(r.gap(), 1);  // as tc(8): no gap is gap 1, every packet a candidate
      return out;
    }
    default:
      break;
  }
  const std::string_view kind = faultKindName(spec);
  return tl::unexpected(fmt::format(
      "{} has no userspace impairment; accepted: network.delay, network.loss, network.duplicate, network.corrupt, "
      "network.reorder (network.partition and plain loss can be pure drop rules)",
      kind.empty() ? "an empty spec" : kind));
}

uint64_t flowKey(const uint8_t* p, size_t length) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
  const auto mix = [&h](const uint8_t* bytes, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      h = (h ^ bytes[i]) * 0x100000001b3ULL;
    }
  };
  if (length >= 20 && (p[0] >> 4) == 4) {
    const size_t headerLength = size_t{p[0] & 0x0fU} * 4;
    mix(p, 1);       // version
    mix(p + 9, 1);   // protocol
    mix(p + 12, 8);  // source, destination
    const bool laterFragment = ((p[6] << 8 | p[7]) & 0x1fff) != 0;
    if ((p[9] == IPPROTO_TCP || p[9] == IPPROTO_UDP) && !laterFragment && headerLength >= 20 &&
        length >= headerLength + 4) {
      mix(p + headerLength, 4);  // ports
    }
    return h;
  }
  if (length >= 40 && (p[0] >> 4) == 6) {
    mix(p, 1);
    mix(p + 6, 1);   // next header
    mix(p + 8, 32);  // source, destination
    if ((p[6] == IPPROTO_TCP || p[6] == IPPROTO_UDP) && length >= 44) {
      mix(p + 40, 4);
    }
    return h;
  }
  return 0;
}

FlowOrder::TimePoint FlowOrder::earliest(uint64_t flow, TimePoint wanted) const {
  const auto it = last_.find(flow);
  return it != last_.end() && it->second > wanted ? it->second : wanted;
}

void FlowOrder::held(uint64_t flow, TimePoint release, TimePoint now) {
  last_[flow] = release;
  if (last_.size() > forgetAbove_) {
    std::erase_if(last_, [now](const auto& entry) { return entry.second <= now; });
    forgetAbove_ = std::max<size_t>(1024, last_.size() * 2);
  }
}

struct ImpairmentModel::State {
  Impairment impairment;
  std::vector<int16_t> table;  // empty: uniform
  std::mt19937 rng;
  Correlated delayCor, lossCor, duplicateCor, corruptCor, reorderCor;
  uint32_t loss = 0, duplicate = 0, corrupt = 0, reorder = 0;
  // Gilbert-Elliott (loss gemodel p r 1-h 1-k): a1 = p, a2 = r, a3 = h, a4 = 1-k
  uint32_t geP = 0, geR = 0, geH = 0, geK = 0;
  bool geBad = false;
  uint32_t counter = 0;  // packets delayed since the last reordered one

  State(Impairment imp, uint64_t seed) : impairment(std::move(imp)) {
    std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)};
    rng.seed(seq);
    const auto correlated = [this](double percent) {
      return Correlated{toScale(percent), static_cast<uint32_t>(rng())};
    };
    delayCor = correlated(impairment.delayCorrelation);
    lossCor = correlated(impairment.lossCorrelation);
    duplicateCor = correlated(impairment.duplicateCorrelation);
    corruptCor = correlated(impairment.corruptCorrelation);
    reorderCor = correlated(impairment.reorderCorrelation);
    loss = toScale(impairment.lossPercent);
    duplicate = toScale(impairment.duplicatePercent);
    corrupt = toScale(impairment.corruptPercent);
    reorder = toScale(impairment.reorderPercent);
    if (impairment.gilbertElliott) {
      const auto& ge = *impairment.gilbertElliott;
      geP = toScale(ge.p());
      geR = toScale(ge.r());
      geH = toScale(100.0 - ge.bad_loss());
      geK = toScale(ge.good_loss());
    }
    if (impairment.jitter.count() > 0) {
      table = delayDistributionTable(impairment.distribution).values;
    }
  }

  bool lost() {
    if (!impairment.gilbertElliott) {
      return loss != 0 && loss >= lossCor.next(rng);
    }
    // The state's own loss applies to this packet; the transition is drawn first (gilbert_elliott()).
    if (!geBad) {
      if (rng() < geP) {
        geBad = true;
      }
      return rng() < geK;
    }
    if (rng() < geR) {
      geBad = false;
    }
    return rng() > geH;
  }

  // tabledist(): delay + jitter x (a uniform draw in [-1, 1), or a table value / 8192).
  nanoseconds delay() {
    const int64_t mu = impairment.delay.count();
    const int64_t sigma = impairment.jitter.count();
    if (sigma == 0) {
      return impairment.delay;
    }
    const uint32_t rnd = delayCor.next(rng);
    int64_t value = 0;
    if (table.empty()) {
      const double offset = static_cast<double>(rnd) / 4294967296.0 * 2.0 * static_cast<double>(sigma);
      value = mu - sigma + static_cast<int64_t>(offset);
    } else {
      constexpr int64_t kScale = 8192;  // NETEM_DIST_SCALE
      const int64_t t = table[rnd % table.size()];
      int64_t x = sigma * t;
      x += x >= 0 ? kScale / 2 : -kScale / 2;
      value = mu + x / kScale;
    }
    return nanoseconds(std::max<int64_t>(0, value));
  }
};

ImpairmentModel::ImpairmentModel(Impairment impairment, uint64_t seed)
    : state_(std::make_shared<State>(std::move(impairment), seed)) {}

ImpairmentModel::Decision ImpairmentModel::next(size_t length) {
  State& s = *state_;
  Decision d;
  // In netem_enqueue()'s order: duplicate, loss (a lost duplicated packet still goes once),
  // corrupt, then reorder or delay.
  const bool duplicated = s.duplicate != 0 && s.duplicate >= s.duplicateCor.next(s.rng);
  const bool lost = s.lost();
  if (lost && !duplicated) {
    d.drop = true;
    return d;
  }
  d.duplicate = duplicated && !lost;
  if (s.corrupt != 0 && s.corrupt >= s.corruptCor.next(s.rng) && length > 0) {
    const size_t byte = s.rng() % length;
    d.corruptBit = byte * 8 + s.rng() % 8;
  }
  const Impairment& imp = s.impairment;
  if (imp.gap == 0 || s.counter < imp.gap - 1 || s.reorder < s.reorderCor.next(s.rng)) {
    d.hold = s.delay();
    ++s.counter;
  } else {
    d.reordered = true;
    s.counter = 0;
  }
  return d;
}

namespace {

using ErrorPair = std::pair<std::error_code, std::string>;

std::error_code errnoCode(int e) {
  return {e, std::generic_category()};
}

// Runs make on a short-lived thread that joined the namespace at netns ("" = here): sockets it
// creates belong to that namespace, and the caller's thread never moves.
tl::expected<void, ErrorPair> inNamespace(const std::string& netns,
                                          const std::function<tl::expected<void, ErrorPair>()>& make) {
  if (netns.empty()) {
    return make();
  }
  auto opened = kernel::openNetnsFile(netns);  // typed and non-blocking: a FIFO is refused at once
  if (!opened) {
    return tl::unexpected(
        ErrorPair{opened.error().code, fmt::format("network namespace {} {}", netns, opened.error().why)});
  }
  const int fd = opened->release();
  tl::expected<void, ErrorPair> result;
  std::thread worker([&] {
    if (::setns(fd, CLONE_NEWNET) != 0) {
      const int e = errno;
      result = tl::unexpected(
          ErrorPair{errnoCode(e), fmt::format("cannot enter network namespace {}: {}{}", netns, std::strerror(e),
                                              e == EINVAL ? " (not a network namespace file)" : "")});
      return;
    }
    result = make();
  });
  worker.join();
  ::close(fd);
  return result;
}

// Send buffer of the raw sockets: the packets released at one moment (a burst held behind one
// delay) are sent back to back, and a qdisc under them (tbf) may hold them for a while.
constexpr int kRawSendBufferBytes = 32 << 20;

// A raw socket for sending whole IP packets (IPPROTO_RAW: the header is the caller's; copies, and
// held egress packets), marked so the steering rules skip them.
tl::expected<UniqueFd, ErrorPair> rawSocket(int family) {
  UniqueFd fd(::socket(family, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW));
  if (fd.get() < 0) {
    const int e = errno;
    return tl::unexpected(ErrorPair{errnoCode(e), fmt::format("cannot open a raw {} socket to send packets: {}",
                                                              family == AF_INET ? "IPv4" : "IPv6", std::strerror(e))});
  }
  const uint32_t mark = kernel::kInjectedMark;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) != 0) {
    const int e = errno;
    return tl::unexpected(
        ErrorPair{errnoCode(e), fmt::format("cannot mark the raw socket that sends packets: {}", std::strerror(e))});
  }
  if (family == AF_INET6) {
    const int one = 1;
    ::setsockopt(fd.get(), IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof(one));
  }
  const int size = kRawSendBufferBytes;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof(size)) != 0) {
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));  // capped by net.core.wmem_max
  }
  return fd;
}

// Whether this thread has CAP_NET_ADMIN in effect (CapEff of /proc/thread-self/status).
bool hasNetAdmin() {
  std::ifstream status("/proc/thread-self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("CapEff:", 0) == 0) {
      const uint64_t caps = std::strtoull(line.c_str() + 7, nullptr, 16);
      return (caps >> 12 & 1) != 0;  // CAP_NET_ADMIN = 12
    }
  }
  return false;
}

// The queue's thread releases packets at their time only if it runs when its timer fires: on a
// busy host a normal thread waits milliseconds for a CPU (p99 delay error 4-5 ms measured at load 8
// on 2 CPUs, 0.6 ms with this). SCHED_FIFO at the lowest real-time priority, as netem's release
// runs in softirq context ahead of every task; the thread only blocks or does bounded work per
// packet, and the kernel's real-time throttling (sched_rt_runtime_us) bounds it in any case. Where
// that is not allowed (no CAP_SYS_NICE, a cgroup without real-time time) it stays a normal thread.
void raisePriority() {
  sched_param param{};
  param.sched_priority = 1;
  if (const int e = ::pthread_setschedparam(::pthread_self(), SCHED_FIFO, &param); e != 0) {
    spdlog::debug("packet queue: stays a normal thread, SCHED_FIFO refused: {}", std::strerror(e));
  }
}

// Extra room in the kernel's queue over limitPackets, for packets not yet read: the limit itself
// is applied here, with netem's tail drop; the kernel's (fail open) only when this thread lags.
constexpr uint32_t kKernelQueueHeadroom = 4096;
constexpr int kReceiveBufferBytes = 16 << 20;
constexpr uint32_t kCopyWholePacket = 0xffff;
constexpr uint32_t kCopyHeader = 128;  // enough for the headers; the payload is not needed

class NfPacketQueue final : public PacketQueue {
 public:
  NfPacketQueue(Impairment impairment, bool egress, uint64_t seed)
      : impairment_(impairment),
        model_(impairment, seed),
        duplicates_(egress && impairment.duplicatePercent > 0),
        orphans_(egress && impairment.delay.count() > 0),
        timer_(io_),
        stream_(io_) {}

  ~NfPacketQueue() override { NfPacketQueue::stop(); }

  tl::expected<void, ErrorPair> bind(const std::string& netns, uint16_t queue) {
    auto made = inNamespace(netns, [&]() -> tl::expected<void, ErrorPair> {
      handle_ = nfq_open();
      if (handle_ == nullptr) {
        const int e = errno != 0 ? errno : EPROTONOSUPPORT;
        return tl::unexpected(ErrorPair{
            errnoCode(e),
            fmt::format("cannot open nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE): {}", std::strerror(e))});
      }
      if (duplicates_ || orphans_) {
        auto v4 = rawSocket(AF_INET);
        if (!v4) {
          return tl::unexpected(v4.error());
        }
        auto v6 = rawSocket(AF_INET6);
        if (!v6) {
          return tl::unexpected(v6.error());
        }
        raw4_ = std::move(*v4);
        raw6_ = std::move(*v6);
      }
      return {};
    });
    if (!made) {
      closeHandle();
      return made;
    }
    const auto fail = [&](std::string what) {
      int e = errno != 0 ? errno : EIO;
      std::string hint;
      if (e == EPERM && hasNetAdmin()) {
        // nfnetlink_queue answers EPERM both without CAP_NET_ADMIN and for a queue another
        // socket has bound; with the capability it is the latter.
        e = EBUSY;
        hint = " (another program has bound this queue)";
      } else if (e == EPERM) {
        hint = " (needs CAP_NET_ADMIN)";
      }
      closeHandle();
      return tl::unexpected(ErrorPair{errnoCode(e), fmt::format("{} {}: {}{}", what, queue, std::strerror(e), hint)});
    };
    errno = 0;
    queue_ = nfq_create_queue(handle_, queue, &NfPacketQueue::onPacket, this);
    if (queue_ == nullptr) {
      return fail("cannot bind NFQUEUE");
    }
    const bool whole = impairment_.corruptPercent > 0 || duplicates_ || orphans_;
    if (nfq_set_mode(queue_, NFQNL_COPY_PACKET, whole ? kCopyWholePacket : kCopyHeader) < 0) {
      return fail("cannot set the copy mode of NFQUEUE");
    }
    const uint32_t maxlen = static_cast<uint32_t>(std::min<uint64_t>(
        uint64_t{impairment_.limitPackets} + kKernelQueueHeadroom, std::numeric_limits<uint32_t>::max()));
    if (nfq_set_queue_maxlen(queue_, maxlen) < 0) {
      return fail("cannot set the length of NFQUEUE");
    }
    if (nfq_set_queue_flags(queue_, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN) < 0) {
      return fail("cannot set NFQUEUE to fail open (NFQA_CFG_F_FAIL_OPEN, Linux >= 3.6) on queue");
    }
    nfnl_rcvbufsiz(nfq_nfnlh(handle_), kReceiveBufferBytes);
    const int fd = nfq_fd(handle_);
    const int one = 1;
    ::setsockopt(fd, SOL_NETLINK, NETLINK_NO_ENOBUFS, &one, sizeof(one));
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
    stream_.assign(::dup(fd));
    waitReadable();
    thread_ = std::thread([this] {
      ::pthread_setname_np(::pthread_self(), "faultline-nfq");  // for top -H, ps -L and perf
      raisePriority();
      io_.run();
    });
    return {};
  }

  void stop() override {
    std::call_once(stopped_, [this] {
      if (thread_.joinable()) {
        boost::asio::post(io_, [this] { shutdown(); });
        thread_.join();
      }
      closeHandle();
    });
  }

  [[nodiscard]] int netlinkFd() const override { return handle_ != nullptr ? nfq_fd(handle_) : -1; }

  [[nodiscard]] QueueStats stats() const override {
    QueueStats s;
    s.received = received_.load();
    s.accepted = accepted_.load();
    s.dropped = dropped_.load();
    s.overLimit = overLimit_.load();
    s.duplicated = duplicated_.load();
    s.corrupted = corrupted_.load();
    s.reordered = reordered_.load();
    s.keptInOrder = keptInOrder_.load();
    s.held = held_.load();
    s.orphaned = orphaned_.load();
    s.sendFailed = sendFailed_.load();
    return s;
  }

 private:
  struct Held {
    std::chrono::steady_clock::time_point release;
    uint64_t sequence = 0;  // arrival order among packets of the same release time
    uint32_t id = 0;
    std::vector<uint8_t> payload;  // the packet to send (corrupt, duplicate, orphaned); empty: unchanged
    bool modified = false;
    bool duplicate = false;
    uint32_t outdev = 0;    // the interface a locally sent packet was leaving by (0: received or forwarded)
    bool orphaned = false;  // taken from the kernel (NF_DROP) when held: release sends payload
  };
  struct Later {
    bool operator()(const Held& a, const Held& b) const {
      return a.release != b.release ? a.release > b.release : a.sequence > b.sequence;
    }
  };

  static int onPacket(nfq_q_handle* /*queue*/, nfgenmsg* /*message*/, nfq_data* data, void* self) {
    static_cast<NfPacketQueue*>(self)->handle(data);
    return 0;
  }

  void handle(nfq_data* data) {
    const nfqnl_msg_packet_hdr* header = nfq_get_msg_packet_hdr(data);
    if (header == nullptr) {
      return;
    }
    const uint32_t id = ntohl(header->packet_id);
    ++received_;
    if (stopping_) {
      accept(id, nullptr, 0);
      return;
    }
    unsigned char* payload = nullptr;
    const int length = nfq_get_payload(data, &payload);
    const auto d = model_.next(length > 0 ? static_cast<size_t>(length) : 1);
    if (d.drop) {
      nfq_set_verdict(queue_, id, NF_DROP, 0, nullptr);
      ++dropped_;
      return;
    }
    Held h{.release = {},
           .sequence = sequence_++,
           .id = id,
           .payload = {},
           .modified = false,
           .duplicate = false,
           // A forwarded packet (it came in on an interface) is the kernel's to send: sent again as
           // this host's own it would miss its connection's NAT (conntrack sees a new flow).
           .outdev = nfq_get_indev(data) == 0 ? nfq_get_outdev(data) : 0,
           .orphaned = false};
    // A packet larger than its interface's MTU (a UDP datagram the kernel fragments after this
    // hook) cannot go through a raw socket whole (EMSGSIZE): it stays in the kernel while held.
    const bool orphan = orphans_ && (d.hold.count() > 0 || impairment_.keepOrder) && h.outdev != 0 && length > 0 &&
                        socketTraffic(payload, static_cast<size_t>(length)) &&
                        static_cast<uint32_t>(length) <= mtu(h.outdev);
    if ((d.corruptBit || (d.duplicate && duplicates_) || orphan) && length > 0) {
      h.payload.assign(payload, payload + length);
      if (d.corruptBit && *d.corruptBit / 8 < h.payload.size()) {
        h.payload[*d.corruptBit / 8] ^= static_cast<uint8_t>(1U << (*d.corruptBit % 8));
        h.modified = true;
        ++corrupted_;
      }
      h.duplicate = d.duplicate && duplicates_ && h.outdev != 0;  // sent as this host's: local packets only
    }
    if (d.reordered) {
      ++reordered_;
    }
    const auto now = std::chrono::steady_clock::now();
    h.release = now + d.hold;
    uint64_t flow = 0;
    if (impairment_.keepOrder) {
      flow = length > 0 ? flowKey(payload, static_cast<size_t>(length)) : 0;
      if (const auto earliest = order_.earliest(flow, h.release); earliest > h.release) {
        h.release = earliest;  // behind the flow's last packet: sequence_ keeps ties in arrival order
        ++keptInOrder_;
      }
    }
    if (h.release <= now) {
      release(h);
      return;
    }
    if (held_.load() >= impairment_.limitPackets) {  // netem's limit: tail drop
      nfq_set_verdict(queue_, id, NF_DROP, 0, nullptr);
      ++overLimit_;
      return;
    }
    if (impairment_.keepOrder) {
      order_.held(flow, h.release, now);
    }
    if (orphan) {
      // netem orphans a delayed packet from its socket (skb_orphan_partial()); held here, it would
      // stay charged to the sender, and TCP small queues would let ~2 packets a round trip through.
      // So the kernel frees it now and the queue sends the copy at its time, as the sender's.
      nfq_set_verdict(queue_, id, NF_DROP, 0, nullptr);
      h.orphaned = true;
      ++orphaned_;
    }
    const bool earliest = heap_.empty() || Later{}(heap_.top(), h);
    heap_.push(std::move(h));
    ++held_;
    if (earliest) {
      arm();
    }
  }

  void accept(uint32_t id, const uint8_t* payload, uint32_t length) {
    nfq_set_verdict(queue_, id, NF_ACCEPT, length, payload);
    ++accepted_;
  }

  void release(const Held& h) {
    if (h.orphaned) {
      if (send(h.payload, h.outdev)) {
        ++accepted_;
      } else {
        ++sendFailed_;
      }
      if (h.duplicate && send(h.payload, h.outdev)) {
        ++duplicated_;
      }
      return;
    }
    if (h.modified) {
      accept(h.id, h.payload.data(), static_cast<uint32_t>(h.payload.size()));
    } else {
      accept(h.id, nullptr, 0);
    }
    if (h.duplicate && send(h.payload, h.outdev)) {
      ++duplicated_;
    }
  }

  // Whether a packet is TCP or UDP with a source address: what a socket's send buffer and TCP small
  // queues hold back (orphaning is for them). Others stay in the kernel while held: neighbour
  // discovery and MLD (sent from :: before an address is usable, which a raw socket cannot route),
  // IPv6 extension headers, ICMP.
  static bool socketTraffic(const unsigned char* p, size_t length) {
    if (length >= 20 && (p[0] >> 4) == 4) {
      const bool fragment = ((p[6] << 8 | p[7]) & 0x3fff) != 0;
      return !fragment && (p[9] == IPPROTO_TCP || p[9] == IPPROTO_UDP) && (p[12] | p[13] | p[14] | p[15]) != 0;
    }
    if (length >= 40 && (p[0] >> 4) == 6) {
      const bool anySource = std::all_of(p + 8, p + 24, [](unsigned char b) { return b == 0; });
      return (p[6] == IPPROTO_TCP || p[6] == IPPROTO_UDP) && !anySource;
    }
    return false;
  }

  // The MTU of interface ifindex in the queue's namespace (asked through the raw socket, which lives
  // there), at most a second old; 0 when it cannot be read.
  uint32_t mtu(uint32_t ifindex) {
    const auto now = std::chrono::steady_clock::now();
    auto& entry = mtus_[ifindex];
    if (entry.second > now) {
      return entry.first;
    }
    ifreq request{};
    request.ifr_ifindex = static_cast<int>(ifindex);
    uint32_t value = 0;
    if (::ioctl(raw4_.get(), SIOCGIFNAME, &request) == 0 && ::ioctl(raw4_.get(), SIOCGIFMTU, &request) == 0 &&
        request.ifr_mtu > 0) {
      value = static_cast<uint32_t>(request.ifr_mtu);
    }
    entry = {value, now + std::chrono::seconds(1)};
    return value;
  }

  // Sends a whole IPv4 or IPv6 packet through a raw socket to its own destination, out of
  // interface outdev (IP_PKTINFO / IPV6_PKTINFO; 0: as routed), so it leaves where the original
  // was going, link-local destinations included. Whether all of it was sent.
  bool send(const std::vector<uint8_t>& packet, uint32_t outdev) {
    sockaddr_storage to{};
    socklen_t toLength = 0;
    int fd = -1;
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(in6_pktinfo))> control{};
    msghdr message{};
    if (!packet.empty() && (packet[0] >> 4) == 4 && packet.size() >= 20) {
      auto& v4 = reinterpret_cast<sockaddr_in&>(to);
      v4.sin_family = AF_INET;
      std::memcpy(&v4.sin_addr, packet.data() + 16, 4);
      toLength = sizeof(sockaddr_in);
      fd = raw4_.get();
      if (outdev != 0) {
        message.msg_control = control.data();
        message.msg_controllen = CMSG_SPACE(sizeof(in_pktinfo));
        cmsghdr* c = CMSG_FIRSTHDR(&message);
        c->cmsg_level = IPPROTO_IP;
        c->cmsg_type = IP_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(in_pktinfo));
        in_pktinfo info{};
        info.ipi_ifindex = static_cast<int>(outdev);
        std::memcpy(&info.ipi_spec_dst, packet.data() + 12, 4);  // routed from its own source
        std::memcpy(CMSG_DATA(c), &info, sizeof(info));
      }
    } else if (!packet.empty() && (packet[0] >> 4) == 6 && packet.size() >= 40) {
      auto& v6 = reinterpret_cast<sockaddr_in6&>(to);
      v6.sin6_family = AF_INET6;
      std::memcpy(&v6.sin6_addr, packet.data() + 24, 16);
      toLength = sizeof(sockaddr_in6);
      fd = raw6_.get();
      if (outdev != 0) {
        message.msg_control = control.data();
        message.msg_controllen = CMSG_SPACE(sizeof(in6_pktinfo));
        cmsghdr* c = CMSG_FIRSTHDR(&message);
        c->cmsg_level = IPPROTO_IPV6;
        c->cmsg_type = IPV6_PKTINFO;
        c->cmsg_len = CMSG_LEN(sizeof(in6_pktinfo));
        in6_pktinfo info{};
        info.ipi6_ifindex = outdev;
        // Routed from its own source (IPV6_FREEBIND: also a tentative one), with no source lookup;
        // the header's own is sent as is.
        std::memcpy(&info.ipi6_addr, packet.data() + 8, 16);
        std::memcpy(CMSG_DATA(c), &info, sizeof(info));
      }
    }
    if (fd < 0) {
      return false;
    }
    iovec io{const_cast<uint8_t*>(packet.data()), packet.size()};
    message.msg_name = &to;
    message.msg_namelen = toLength;
    message.msg_iov = &io;
    message.msg_iovlen = 1;
    const ssize_t sent = ::sendmsg(fd, &message, MSG_DONTWAIT);
    if (sent != static_cast<ssize_t>(packet.size()) && sendFailed_.load() == 0) {
      spdlog::warn("packet queue: cannot send a held packet of {} bytes: {}", packet.size(),
                   sent < 0 ? std::strerror(errno) : "sent in part");
    }
    return sent == static_cast<ssize_t>(packet.size());
  }

  void releaseDue() {
    const auto now = std::chrono::steady_clock::now();
    while (!heap_.empty() && heap_.top().release <= now) {
      release(heap_.top());
      heap_.pop();
      --held_;
    }
  }

  void arm() {
    if (heap_.empty()) {
      timer_.cancel();
      return;
    }
    timer_.expires_at(heap_.top().release);
    timer_.async_wait([this](const boost::system::error_code& ec) {
      if (ec || stopping_) {
        return;
      }
      releaseDue();
      arm();
    });
  }

  void waitReadable() {
    stream_.async_wait(boost::asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
      if (ec || stopping_) {
        return;
      }
      drain();
      releaseDue();
      waitReadable();
    });
  }

  // Reads every message waiting on the socket.
  void drain() {
    const int fd = nfq_fd(handle_);
    for (;;) {
      const ssize_t n = ::recv(fd, buffer_.data(), buffer_.size(), MSG_DONTWAIT);
      if (n < 0) {
        if (errno == EINTR || errno == ENOBUFS) {
          continue;
        }
        return;  // EAGAIN: all read
      }
      nfq_handle_packet(handle_, reinterpret_cast<char*>(buffer_.data()), static_cast<int>(n));
    }
  }

  // On the queue's thread: new packets pass the queue (length 0 with fail open: the kernel accepts
  // them without queueing), held and waiting ones are accepted, then the queue is unbound.
  void shutdown() {
    stopping_ = true;
    timer_.cancel();
    nfq_set_queue_maxlen(queue_, 0);
    while (!heap_.empty()) {
      release(heap_.top());
      heap_.pop();
      --held_;
    }
    drain();
    boost::system::error_code ignored;
    stream_.close(ignored);
    io_.stop();
  }

  void closeHandle() {
    if (queue_ != nullptr) {
      nfq_destroy_queue(queue_);
      queue_ = nullptr;
    }
    if (handle_ != nullptr) {
      nfq_close(handle_);
      handle_ = nullptr;
    }
    raw4_.reset();
    raw6_.reset();
  }

  Impairment impairment_;
  ImpairmentModel model_;
  bool duplicates_;
  bool orphans_;
  nfq_handle* handle_ = nullptr;
  nfq_q_handle* queue_ = nullptr;
  UniqueFd raw4_, raw6_;
  boost::asio::io_context io_;
  boost::asio::steady_timer timer_;
  boost::asio::posix::stream_descriptor stream_;
  std::thread thread_;
  std::once_flag stopped_;
  std::priority_queue<Held, std::vector<Held>, Later> heap_;
  std::map<uint32_t, std::pair<uint32_t, std::chrono::steady_clock::time_point>> mtus_;  // ifindex: MTU, until
  uint64_t sequence_ = 0;
  FlowOrder order_;  // keepOrder
  bool stopping_ = false;
  std::array<uint8_t, 0x10000 + 4096> buffer_{};
  std::atomic<uint64_t> received_{0}, accepted_{0}, dropped_{0}, overLimit_{0}, duplicated_{0}, corrupted_{0},
      reordered_{0}, keptInOrder_{0}, held_{0}, orphaned_{0}, sendFailed_{0};
};

}  // namespace

tl::expected<std::unique_ptr<PacketQueue>, std::pair<std::error_code, std::string>> PacketQueue::open(
    const std::string& netns, uint16_t queue, Impairment impairment, bool egress, uint64_t seed) {
  auto q = std::make_unique<NfPacketQueue>(impairment, egress, seed);
  if (auto bound = q->bind(netns, queue); !bound) {
    return tl::unexpected(bound.error());
  }
  return q;
}

}  // namespace faultline::agent
