#include "agent/faults/network/net_target.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

#include "agent/faults/process/process_selector.h"
#include "agent/faults/spec.h"
#include "agent/kernel/netns.h"
#include "agent/kernel/route.h"
#include "agent/kernel/spec_files.h"
#include "common/unique_fd.h"

namespace faultline::agent {
namespace {

std::error_code errnoCode(int e) {
  return {e, std::generic_category()};
}

FaultError failure(std::error_code code, std::string message) {
  return FaultError{code, std::move(message)};
}

// The calling thread's namespace: what "" means to the kernel code (openQdiscTable() opens its
// socket there). Not /proc/self: that is the main thread's, which may stand in another namespace
// for a moment (openQdiscTable(path) enters the target's on the calling thread).
std::optional<NetnsIdentity> ownIdentity() {
  auto own = netnsIdentity("/proc/thread-self/ns/net");
  return own ? std::optional<NetnsIdentity>(*own) : std::nullopt;
}

std::string where(const std::string& netns) {
  return netns.empty() ? "the agent's network namespace" : netns;
}

}  // namespace

tl::expected<NetnsIdentity, std::error_code> netnsIdentity(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return tl::unexpected(errnoCode(errno));
  }
  return NetnsIdentity{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
}

NetworkTargetResolver::NetworkTargetResolver(kernel::ProcessTable* processes, std::filesystem::path pinDir)
    : processes_(processes), pinDir_(std::move(pinDir)) {}

tl::expected<ResolvedNetworkTarget, FaultError> NetworkTargetResolver::resolve(const v1::NetworkTarget& target,
                                                                               std::string_view faultKind) {
  ResolvedNetworkTarget out;
  out.netns = target.netns();
  out.interface = target.interface();
  std::vector<std::string> notes;
  const auto own = ownIdentity();

  if (target.has_netns_process()) {
    if (processes_ == nullptr) {
      return tl::unexpected(failure(std::make_error_code(std::errc::not_supported),
                                    fmt::format("{}: target.netns by process is not available in this agent; nothing "
                                                "was changed",
                                                faultKind)));
    }
    ProcessPicker picker(*processes_, {}, rng_, ::getpid());
    auto picked = picker.select(target.netns_process(), fmt::format("{} target.netns", faultKind));
    if (!picked) {
      return tl::unexpected(picked.error());
    }
    // Every process picked must be in one namespace.
    std::map<std::pair<uint64_t, uint64_t>, std::vector<const kernel::ProcessInfo*>> byNamespace;
    for (const auto& p : picked->chosen) {
      auto id = netnsIdentity(fmt::format("/proc/{}/ns/net", p.pid));
      if (id) {
        byNamespace[{id->dev, id->ino}].push_back(&p);
      }
    }
    if (byNamespace.empty()) {
      return tl::unexpected(failure(
          errnoCode(ESRCH), fmt::format("{}: target.netns: the {} process(es) picked by {} exited before their "
                                        "network namespace was read; nothing was changed",
                                        faultKind, picked->chosen.size(), describeSelector(target.netns_process()))));
    }
    if (byNamespace.size() > 1) {
      std::string list;
      for (const auto& [id, processes] : byNamespace) {
        list += fmt::format("{}net:[{}] holds {}", list.empty() ? "" : "; ", id.second, describeProcess(*processes[0]));
        if (processes.size() > 1) {
          list += fmt::format(" and {} more", processes.size() - 1);
        }
      }
      return tl::unexpected(failure(
          std::make_error_code(std::errc::invalid_argument),
          fmt::format("{}: target.netns: {} picks processes in {} network namespaces ({}); a fault goes to one: "
                      "narrow the selector (e.g. a pid or a cgroup); nothing was changed",
                      faultKind, describeSelector(target.netns_process()), byNamespace.size(), list)));
    }
    const auto& [key, processes] = *byNamespace.begin();
    const kernel::ProcessInfo& first = *processes.front();
    const NetnsIdentity identity{key.first, key.second};
    const std::string procPath = fmt::format("/proc/{}/ns/net", first.pid);
    if (own && identity == *own) {
      out.netns.clear();
      notes.push_back(fmt::format("namespace of {}, which is the agent's own", describeProcess(first)));
    } else {
      // Open the namespace, then make sure the pid is still the process the scan saw (same start
      // time, alive): the namespace opened before is then that process's, not a reused pid's.
      UniqueFd ns(::open(procPath.c_str(), O_RDONLY | O_CLOEXEC));
      if (ns.get() < 0 || processes_->signal(first.pid, 0).has_value() == false) {
        return tl::unexpected(
            failure(errnoCode(ESRCH), fmt::format("{}: target.netns: {} exited before its network namespace could be "
                                                  "pinned; nothing was changed",
                                                  faultKind, describeProcess(first))));
      }
      struct stat st {};
      if (::fstat(ns.get(), &st) != 0 ||
          NetnsIdentity{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)} != identity) {
        return tl::unexpected(
            failure(errnoCode(ESRCH), fmt::format("{}: target.netns: {} changed its network namespace while it was "
                                                  "being pinned; nothing was changed",
                                                  faultKind, describeProcess(first))));
      }
      auto pin = pinNamespace(ns.get(), fmt::format("pid{}", first.pid), describeProcess(first), faultKind);
      if (!pin) {
        return tl::unexpected(pin.error());
      }
      out.netns = *pin;
      out.pin = *pin;
      out.identity = identity;
      notes.push_back(fmt::format("namespace of {}{}, pinned at {}", describeProcess(first),
                                  processes.size() > 1 ? fmt::format(" and {} more", processes.size() - 1) : "", *pin));
    }
  } else if (!out.netns.empty()) {
    // A path from the spec: opened without blocking and checked to be a network namespace before
    // anything else opens it (a FIFO's open() would hold this thread until a writer came).
    auto ns = kernel::openNetnsFile(out.netns);
    if (!ns && ns.error().code == std::errc::invalid_argument) {
      return tl::unexpected(failure(ns.error().code, fmt::format("{}: target.netns {} {}; nothing was changed",
                                                                 faultKind, out.netns, ns.error().why)));
    }
    struct stat st {};
    if (ns && ::fstat(ns->get(), &st) == 0) {
      const NetnsIdentity id{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
      if (own && id == *own) {
        notes.push_back(fmt::format("namespace {} is the agent's own", out.netns));
        out.netns.clear();
      } else if (out.netns.starts_with("/proc/")) {
        // /proc/PID/ns/net names the namespace only while PID lives: pin it, so that the revert
        // reaches the namespace after the process exited (it may live on, held by others).
        const auto slash = out.netns.find('/', 6);
        const std::string label = "proc" + out.netns.substr(6, slash == std::string::npos ? 0 : slash - 6);
        auto pin = pinNamespace(ns->get(), label, out.netns, faultKind);
        if (!pin) {
          return tl::unexpected(pin.error());
        }
        notes.push_back(fmt::format("namespace {} pinned at {}", out.netns, *pin));
        out.netns = *pin;
        out.pin = *pin;
        out.identity = id;
      } else {
        out.identity = id;
      }
    }  // else: the driver reports the missing or unreadable path in its own words
  }

  if (out.interface == "default") {
    auto name = kernel::defaultRouteInterface(out.netns);
    if (!name) {
      const std::error_code code = name.error();
      std::string why = code == std::errc::network_unreachable
                            ? fmt::format("{} has no default route (IPv4 or IPv6)", where(out.netns))
                            : fmt::format("cannot read the routes of {}: {}", where(out.netns), code.message());
      if (!out.pin.empty()) {
        (void)releaseNetnsPin(out.pin);
      }
      return tl::unexpected(failure(code, fmt::format("{}: target.interface default: {}; name the interface instead; "
                                                      "nothing was changed",
                                                      faultKind, why)));
    }
    out.interface = *name;
    notes.insert(notes.begin(), fmt::format("interface default is {}", *name));
  }
  for (const auto& n : notes) {
    out.note += (out.note.empty() ? "" : "; ") + n;
  }
  return out;
}

tl::expected<std::string, FaultError> NetworkTargetResolver::pinNamespace(int nsFd, const std::string& label,
                                                                          const std::string& what,
                                                                          std::string_view faultKind) {
  std::error_code ec;
  std::filesystem::create_directories(pinDir_, ec);
  if (ec) {
    return tl::unexpected(failure(ec, fmt::format("{}: target.netns: cannot create {} to pin the namespace of {}: "
                                                  "{}; nothing was changed",
                                                  faultKind, pinDir_.string(), what, ec.message())));
  }
  std::string pin = (pinDir_ / (label + "-XXXXXX")).string();
  const int pinFd = ::mkstemp(pin.data());
  if (pinFd < 0) {
    const int e = errno;
    return tl::unexpected(failure(errnoCode(e), fmt::format("{}: target.netns: cannot create a pin file in {}: "
                                                            "{}; nothing was changed",
                                                            faultKind, pinDir_.string(), errnoCode(e).message())));
  }
  ::close(pinFd);
  const std::string source = fmt::format("/proc/self/fd/{}", nsFd);
  if (::mount(source.c_str(), pin.c_str(), nullptr, MS_BIND, nullptr) != 0) {
    const int e = errno;
    ::unlink(pin.c_str());
    return tl::unexpected(
        failure(errnoCode(e), fmt::format("{}: target.netns: cannot pin the network namespace of {} at {}: {}{}; "
                                          "nothing was changed",
                                          faultKind, what, pin, errnoCode(e).message(),
                                          e == EPERM ? " (the agent needs CAP_SYS_ADMIN)" : "")));
  }
  return pin;
}

tl::expected<void, std::string> releaseNetnsPin(const std::string& path) {
  if (::umount2(path.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT) {
    return tl::unexpected(fmt::format("cannot unmount the namespace pin {}: {}", path, errnoCode(errno).message()));
  }
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
    return tl::unexpected(fmt::format("cannot remove the namespace pin {}: {}", path, errnoCode(errno).message()));
  }
  return {};
}

std::vector<std::string> releaseAllNetnsPins(const std::filesystem::path& dir) {
  std::vector<std::string> problems;
  std::error_code ec;
  std::vector<std::string> pins;
  for (std::filesystem::directory_iterator it(dir, ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec)) {
    pins.push_back(it->path().string());
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    problems.push_back(fmt::format("cannot read {}: {}", dir.string(), ec.message()));
  }
  std::sort(pins.begin(), pins.end());
  for (const auto& pin : pins) {
    if (auto released = releaseNetnsPin(pin); !released) {
      problems.push_back(released.error());
    }
  }
  return problems;
}

NetnsRelocation relocateNetns(nlohmann::json& undo) {
  using State = NetnsRelocation::State;
  if (!undo.is_object() || !undo.contains("netnsIdentity") || !undo["netnsIdentity"].is_object() ||
      !undo.contains("netns") || !undo["netns"].is_string()) {
    return {};
  }
  const auto& idJson = undo["netnsIdentity"];
  if (!idJson.contains("dev") || !idJson.contains("ino") || !idJson["dev"].is_number_unsigned() ||
      !idJson["ino"].is_number_unsigned()) {
    return {};
  }
  const NetnsIdentity wanted{idJson["dev"].get<uint64_t>(), idJson["ino"].get<uint64_t>()};
  const std::string recorded = undo["netns"].get<std::string>();
  if (auto id = netnsIdentity(recorded); id && *id == wanted) {
    return {};
  }
  for (const auto& path : kernel::listNetworkNamespaces().paths) {
    const std::string statPath = path.empty() ? "/proc/thread-self/ns/net" : path;
    if (auto id = netnsIdentity(statPath); id && *id == wanted) {
      undo["netns"] = path;
      return {State::kMoved, fmt::format("{} no longer names network namespace net:[{}]; it is {}", recorded,
                                         wanted.ino, where(path))};
    }
  }
  return {State::kGone,
          fmt::format("network namespace net:[{}] (recorded as {}) no longer exists", wanted.ino, recorded)};
}

void addResolvedTarget(nlohmann::json& undo, const ResolvedNetworkTarget& target) {
  if (target.identity) {
    undo["netnsIdentity"] = {{"dev", target.identity->dev}, {"ino", target.identity->ino}};
  }
  if (!target.pin.empty()) {
    undo["pin"] = target.pin;
  }
}

namespace {

class ResolvedTargetFault final : public AppliedFault {
 public:
  ResolvedTargetFault(std::unique_ptr<AppliedFault> inner, ResolvedNetworkTarget target)
      : inner_(std::move(inner)), target_(std::move(target)) {}

  tl::expected<void, FaultError> revert() override {
    // A permanent failure is never retried (the journal entry is closed): the pin goes too.
    if (auto reverted = inner_->revert(); !reverted && !reverted.error().permanent) {
      return reverted;
    } else if (!reverted) {
      if (!target_.pin.empty()) {
        (void)releaseNetnsPin(target_.pin);
        target_.pin.clear();
      }
      return reverted;
    }
    if (!target_.pin.empty()) {
      if (auto released = releaseNetnsPin(target_.pin); !released) {
        spdlog::warn("{} (the fault itself is reverted; `faultline-agent revert-all` removes leftover pins)",
                     released.error());
      }
      target_.pin.clear();
    }
    return {};
  }

  std::string describe() const override {
    std::string text = inner_->describe();
    if (!target_.note.empty()) {
      text += fmt::format(" [{}]", target_.note);
    }
    return text;
  }

  std::vector<v1::ProcessHit> processHits() const override { return inner_->processHits(); }

  // The agent's watch reads the fault itself (the pinned namespace stays until revert()).
  std::optional<std::string> lost() const override { return inner_->lost(); }

 private:
  std::unique_ptr<AppliedFault> inner_;
  ResolvedNetworkTarget target_;
};

}  // namespace

std::unique_ptr<AppliedFault> withResolvedTarget(std::unique_ptr<AppliedFault> fault, ResolvedNetworkTarget target) {
  if (target.note.empty() && target.pin.empty()) {
    return fault;
  }
  return std::make_unique<ResolvedTargetFault>(std::move(fault), std::move(target));
}

tl::expected<std::unique_ptr<AppliedFault>, FaultError> applyOnResolvedTarget(NetworkTargetResolver& resolver,
                                                                              const v1::FaultSpec& spec,
                                                                              const PersistUndo& persist,
                                                                              const ResolvedApply& apply) {
  const v1::NetworkTarget* target = networkTarget(spec);
  if (target == nullptr) {
    return tl::unexpected(FaultError{std::make_error_code(std::errc::invalid_argument),
                                     fmt::format("{} is not a network fault", faultKindName(spec))});
  }
  auto resolved = resolver.resolve(*target, faultKindName(spec));
  if (!resolved) {
    return tl::unexpected(resolved.error());
  }
  v1::FaultSpec concrete = spec;
  // networkTarget() points into concrete, which is not const: the cast only undoes the accessor's.
  auto* t = const_cast<v1::NetworkTarget*>(networkTarget(concrete));
  t->clear_netns_process();
  t->set_netns(resolved->netns);
  t->set_interface(resolved->interface);
  PersistUndo persistResolved;
  if (persist) {
    persistResolved = [&persist, &resolved](const nlohmann::json& undo) {
      nlohmann::json record = undo;
      addResolvedTarget(record, *resolved);
      return persist(record);
    };
  }
  auto applied = apply(concrete, *resolved, persistResolved);
  if (!applied) {
    // A fault that may still be in place keeps its pin: the recovery reverts it through the pin.
    if (!resolved->pin.empty() && !applied.error().mayBeChanged) {
      if (auto released = releaseNetnsPin(resolved->pin); !released) {
        applied.error().message += "; " + released.error();
      }
    }
    return applied;
  }
  return withResolvedTarget(std::move(*applied), std::move(*resolved));
}

}  // namespace faultline::agent
