#include "agent/session/runtime.h"

#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include <algorithm>
#include <atomic>
#include <future>
#include <thread>

#include <spdlog/spdlog.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>

#include <fmt/ranges.h>

#include "agent/kernel/cgroup_tree.h"
#include "agent/kernel/packet_steering.h"
#include "agent/kernel/privileges.h"
#include "agent/kernel/qdisc_table.h"
#include "common/service_notify.h"

namespace faultline::agent {

std::string hostName() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') {
    return "localhost";
  }
  return buf;
}

std::vector<Endpoint> controllerEndpoints(const std::string& address) {
  std::vector<Endpoint> out;
  const auto colon = address.rfind(':');
  if (address.rfind("unix:", 0) == 0 || colon == std::string::npos) {
    return out;
  }
  std::string host = address.substr(0, colon);
  const std::string port = address.substr(colon + 1);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    spdlog::warn("cannot resolve the controller {} to exempt its traffic from network faults: {}", address,
                 gai_strerror(rc));
    return out;
  }
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    Endpoint e;
    e.address.family = a->ai_family;
    if (a->ai_family == AF_INET) {
      const auto* sin = reinterpret_cast<const sockaddr_in*>(a->ai_addr);
      std::memcpy(e.address.address.data(), &sin->sin_addr, 4);
      e.address.prefixLength = 32;
      e.port = ntohs(sin->sin_port);
    } else if (a->ai_family == AF_INET6) {
      const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(a->ai_addr);
      std::memcpy(e.address.address.data(), &sin6->sin6_addr, 16);
      e.address.prefixLength = 128;
      e.port = ntohs(sin6->sin6_port);
    } else {
      continue;
    }
    out.push_back(e);
  }
  ::freeaddrinfo(found);
  return out;
}

namespace {

// Probes netfilter, fills caps' netfilter fields, and picks the driver of netem's kinds: "netem",
// "nfqueue", or "auto" (netem where the kernel has it, else nfqueue where it can work).
NetworkDriverChoice chooseNetworkDriver(const std::string& wanted, bool hasNetem, v1::Capabilities& caps) {
  NetworkDriverChoice choice;
  choice.steering = kernel::probeSteeringSupport();
  const auto& s = choice.steering;
  for (const auto& [name, has] :
       {std::pair{"nf_tables", s.nftables}, std::pair{"nft_queue", s.nftQueue}, std::pair{"nft_numgen", s.nftNumgen},
        std::pair{"ip_tables", s.xtables}, std::pair{"xt_NFQUEUE", s.xtNfqueue},
        std::pair{"xt_statistic", s.xtStatistic}, std::pair{"nfnetlink_queue", s.nfqueue}}) {
    if (has) {
      caps.add_netfilter(name);
    }
  }
  const auto backend = kernel::chooseBackend(s, true);
  const bool canQueue = s.nfqueue && backend.has_value();
  choice.userspace = wanted == "nfqueue" || (wanted == "auto" && !hasNetem && canQueue);
  caps.set_network_driver(choice.userspace ? "nfqueue" : "netem");
  if (choice.userspace && backend) {
    caps.set_steering_backend(std::string(kernel::steeringBackendName(*backend)));
  }
  spdlog::info("netfilter: {}; network driver {} ({})", fmt::join(caps.netfilter(), " "), caps.network_driver(),
               wanted == "auto" ? (choice.userspace ? "auto: no sch_netem" : "auto") : "chosen");
  if (choice.userspace && !canQueue) {
    spdlog::warn("network driver nfqueue: {}; only network.partition can run here",
                 !s.nfqueue ? std::string("the kernel has no nfnetlink_queue (CONFIG_NETFILTER_NETLINK_QUEUE)")
                            : backend.error());
  }
  if (!choice.userspace && !hasNetem && caps.tc_probed()) {  // not probed: the privilege was named already
    spdlog::warn(
        "network driver netem without sch_netem: network.delay, loss, duplicate, corrupt, reorder and "
        "partition will be refused{}",
        canQueue ? "; --network-driver nfqueue (or auto) would run them" : "");
  }
  return choice;
}

// The fault capabilities of the agent's effective set (Capabilities.privileges), logged with what
// each missing one refuses. True when CAP_NET_ADMIN is among them: without it the kernel's traffic
// control cannot be probed (creating a qdisc is refused whether or not the kernel has its module).
bool probePrivileges(v1::Capabilities& caps) {
  auto held = kernel::effectiveFaultCapabilities();
  if (!held) {
    spdlog::warn("cannot read the agent's capabilities (capget: {}): not reported; faults are tried as asked",
                 held.error().message());
    return true;
  }
  caps.set_privileges_probed(true);
  for (const auto& name : *held) {
    caps.add_privileges(name);
  }
  const auto has = [&](std::string_view name) { return std::find(held->begin(), held->end(), name) != held->end(); };
  std::vector<std::string> lacking;
  for (const auto& name : kernel::faultCapabilities()) {
    if (!has(name)) {
      lacking.push_back(name);
    }
  }
  spdlog::info("capabilities: {}{}",
               held->empty() ? "none of those faults need" : fmt::format("{}", fmt::join(*held, " ")),
               lacking.empty() ? "" : fmt::format(" (lacking {})", fmt::join(lacking, " ")));
  if (!has("CAP_NET_ADMIN")) {
    spdlog::warn(
        "the agent lacks CAP_NET_ADMIN: every network fault will be refused, and the kernel's traffic control is not "
        "probed (run it as root, or grant CAP_NET_ADMIN: AmbientCapabilities= in its systemd unit)");
  }
  return has("CAP_NET_ADMIN");
}

// Capabilities.cgroup_writable: the agent may create cgroups next to its own, where stress.*
// creates its workers' cgroups.
void probeCgroupWrite(v1::Capabilities& caps) {
  auto cgroups = kernel::openCgroupTree();
  if (!cgroups) {
    return;
  }
  auto self = (*cgroups)->selfCgroup();
  if (!self) {
    return;
  }
  const std::string parent = kernel::parentCgroup(*self);
  const std::string dir = (*cgroups)->mountPoint() + (parent == "/" ? "" : parent);
  caps.set_cgroup_writable(kernel::canCreateIn(dir));
  if (!caps.cgroup_writable()) {
    spdlog::warn("the agent cannot create cgroups in {}: stress.cpu and stress.memory will be refused", dir);
  }
}

}  // namespace

// Two threads (agent.h, session.h): the io thread handles the controller's messages and
// applies faults; the expiry thread owns every deadline (durations, revert retries, the lease)
// and the reverts they trigger, and the signals that stop the agent. It never waits for the io
// thread, so faults end on time and on SIGTERM whatever an input makes the io thread wait for.
struct AgentRuntime::Impl {
  Impl(SessionOptions options, std::unique_ptr<UndoJournal> undoJournal, Policy policy, NetworkDriverChoice network)
      : journal(std::move(undoJournal)),
        drivers(policy.processRules(), controllerEndpoints(options.controller), network),
        agent(
            io, drivers.router(),
            [this](const v1::FaultReport& r) {
              if (sessionAlive) {
                session.report(r);
              }
            },
            journal.get(), std::move(policy), kWatchInterval, &expiry, options.metrics),
        session(io, agent, std::move(options), &expiry) {
    // options was moved into the session; its metrics pointer, copied by the move, is still set.
    if (options.metrics != nullptr && drivers.queueTally() != nullptr) {
      options.metrics->watchQueues(drivers.queueTally());
    }
  }

  ~Impl() {
    agent.close("agent shutting down");
    stopExpiry();
    session.stop();
    sessionAlive = false;  // the agent, destroyed after the session, may still report
  }

  boost::asio::io_context io;
  boost::asio::io_context expiry;
  std::unique_ptr<UndoJournal> journal;  // outlives the agent
  SystemDrivers drivers;
  Agent agent;
  Session session;
  std::thread thread;
  std::thread expiryThread;
  bool stopped = false;
  std::atomic<bool> sessionAlive{true};

  void startExpiry() {
    expiryThread = std::thread([this] {
      auto guard = boost::asio::make_work_guard(expiry);
      expiry.run();
    });
  }
  // Joins the expiry thread; whatever it still had to do is dropped (after agent.close()).
  void stopExpiry() {
    expiry.stop();
    if (expiryThread.joinable()) {
      expiryThread.join();
    }
  }
};

AgentRuntime::AgentRuntime(SessionOptions options, bool probeKernel, std::unique_ptr<UndoJournal> journal,
                           Policy policy) {
  NetworkDriverChoice network;
  if (probeKernel) {
    const bool netAdmin = probePrivileges(options.capabilities);
    const auto support = netAdmin ? kernel::probeQdiscSupport() : kernel::QdiscSupport{};
    options.capabilities.set_netem(support.netem);
    options.capabilities.set_tbf(support.tbf);
    for (const auto& [name, has] :
         {std::pair{"netem", support.netem}, std::pair{"tbf", support.tbf}, std::pair{"htb", support.htb}}) {
      if (has) {
        options.capabilities.add_qdiscs(name);
      }
    }
    if (support.ingress) {
      options.capabilities.add_qdiscs("ingress");
    }
    if (support.u32) {
      options.capabilities.add_classifiers("u32");
    }
    if (support.mirred) {
      options.capabilities.add_actions("mirred");
    }
    options.capabilities.set_ifb(support.ifb);
    options.capabilities.set_tc_probed(netAdmin);  // without it, nothing could be learnt
    network = chooseNetworkDriver(options.networkDriver, support.netem, options.capabilities);
    if (netAdmin) {
      spdlog::info(
          "kernel {}: netem qdisc {}, tbf qdisc {}, htb qdisc {}, u32 classifier {}, ifb {}, ingress qdisc {}, mirred "
          "action {}",
          kernelRelease(), support.netem ? "yes" : "no", support.tbf ? "yes" : "no", support.htb ? "yes" : "no",
          support.u32 ? "yes" : "no", support.ifb ? "yes" : "no", support.ingress ? "yes" : "no",
          support.mirred ? "yes" : "no");
    }
    if (auto cgroups = kernel::openCgroupTree()) {
      options.capabilities.set_cgroup2_mount((*cgroups)->foundAt());
      auto self = (*cgroups)->selfCgroup();
      options.capabilities.set_cgroup_freeze(self && *self != "/" &&
                                             (*cgroups)->read(*self, "cgroup.freeze").has_value());
      if (auto controllers = (*cgroups)->read("/", "cgroup.controllers")) {
        std::string_view rest = *controllers;
        while (!rest.empty()) {
          const auto space = rest.find(' ');
          options.capabilities.add_cgroup_controllers(std::string(rest.substr(0, space)));
          rest = space == std::string_view::npos ? std::string_view{} : rest.substr(space + 1);
        }
      }
      spdlog::info("cgroup v2 at {} (controllers: {})", (*cgroups)->foundAt(),
                   fmt::join(options.capabilities.cgroup_controllers(), " "));
    } else {
      spdlog::warn("{}", kernel::cgroupV2MissingMessage("process.pause freezing, stress.* and cgroup.squeeze"));
    }
    probeCgroupWrite(options.capabilities);
  }
  impl_ = std::make_unique<Impl>(std::move(options), std::move(journal), std::move(policy), network);
}

AgentRuntime::~AgentRuntime() {
  stop();
}

void AgentRuntime::start() {
  impl_->startExpiry();
  boost::asio::post(impl_->io, [this] { impl_->session.start(); });
  impl_->thread = std::thread([this] {
    auto guard = boost::asio::make_work_guard(impl_->io);
    impl_->io.run();
  });
}

void AgentRuntime::stop(const std::string& reason) {
  if (!impl_ || impl_->stopped) {
    return;
  }
  impl_->stopped = true;
  // On this thread, whatever the io thread is doing (a fault it is still applying is reverted
  // there as soon as its apply returns).
  impl_->agent.close(reason);
  if (impl_->thread.joinable()) {
    std::promise<void> done;
    boost::asio::post(impl_->io, [this, &done] {
      impl_->session.stop();  // flushes the reports of the reverts
      done.set_value();
    });
    done.get_future().wait();
    impl_->io.stop();
    impl_->thread.join();
  } else {
    impl_->session.stop();
  }
  impl_->stopExpiry();
}

namespace {

// Beats heartbeat on timer's io_context every `every`, for as long as that context runs.
void beatEvery(boost::asio::steady_timer& timer, service::Heartbeat& heartbeat, std::chrono::milliseconds every) {
  heartbeat.beat();
  timer.expires_after(every);
  timer.async_wait([&timer, &heartbeat, every](const boost::system::error_code& ec) {
    if (!ec) {
      beatEvery(timer, heartbeat, every);
    }
  });
}

}  // namespace

void AgentRuntime::runUntilSignal(const std::string& status) {
  // The watchdog pings only while both loops go round: the io thread (input, injects) and the
  // expiry thread (every deadline and revert).
  service::Heartbeat ioLoop("agent io thread");
  service::Heartbeat expiryLoop("agent expiry thread");
  service::Watchdog watchdog({&ioLoop, &expiryLoop});
  const auto every = watchdog.beatEvery(std::chrono::seconds{1});
  boost::asio::steady_timer ioTimer(impl_->io);
  boost::asio::steady_timer expiryTimer(impl_->expiry);
  boost::asio::post(impl_->io, [&] { beatEvery(ioTimer, ioLoop, every); });
  boost::asio::post(impl_->expiry, [&] { beatEvery(expiryTimer, expiryLoop, every); });
  // SIGHUP and SIGQUIT too: an agent started from a shell that goes away must not die with its
  // faults in place.
  // Handled on the expiry thread: the faults are reverted even while the io thread is stuck in
  // an input; the session is then closed on the io thread once it is free.
  boost::asio::signal_set signals(impl_->expiry, SIGTERM, SIGINT, SIGHUP);
  signals.add(SIGQUIT);
  signals.async_wait([this, &watchdog](const boost::system::error_code& ec, int sig) {
    if (ec) {
      return;
    }
    spdlog::info("SIG{}: reverting every fault and exiting", sigabbrev_np(sig));
    watchdog.stop();  // STOPPING=1 ends the service manager's watchdog
    service::notifyStopping(fmt::format("SIG{}: reverting every fault", sigabbrev_np(sig)));
    impl_->agent.close(fmt::format("agent stopped (SIG{})", sigabbrev_np(sig)));
    boost::asio::post(impl_->io, [this] {
      impl_->session.stop();
      impl_->io.stop();
    });
  });
  impl_->startExpiry();
  impl_->session.start();
  boost::asio::post(impl_->io, [&status] { service::notifyReady(status); });
  auto guard = boost::asio::make_work_guard(impl_->io);  // runs until the handler above stops it
  impl_->io.run();
  impl_->stopped = true;
  impl_->stopExpiry();
}

}  // namespace faultline::agent
