// Packet steering's nftables backend: one inet table per fault, written as one nft script (one
// transaction) and read back as nft's JSON listing, through libnftables' command parser.
#include "agent/kernel/packet_steering.h"
#include "agent/kernel/packet_steering_internal.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <nftables/libnftables.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

namespace faultline::kernel {
using namespace steering_internal;
namespace {

std::string cidrText(const Cidr& c) {
  char buf[INET6_ADDRSTRLEN] = {};
  ::inet_ntop(c.family, c.address.data(), buf, sizeof buf);
  return fmt::format("{}/{}", buf, c.prefixLength);
}

struct NftResult {
  bool ok = false;
  std::string output;
  std::string error;
};

// Runs commands (one transaction) in the calling thread's namespace.
NftResult nftRun(const std::string& commands, bool json = false) {
  NftResult result;
  nft_ctx* ctx = nft_ctx_new(NFT_CTX_DEFAULT);
  if (ctx == nullptr) {
    result.error = "libnftables could not make a context";
    return result;
  }
  nft_ctx_buffer_output(ctx);
  nft_ctx_buffer_error(ctx);
  if (json) {
    nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON);
  }
  result.ok = nft_run_cmd_from_buffer(ctx, commands.c_str()) == 0;
  if (const char* out = nft_ctx_get_output_buffer(ctx); out != nullptr) {
    result.output = out;
  }
  if (const char* err = nft_ctx_get_error_buffer(ctx); err != nullptr) {
    result.error = err;
  }
  nft_ctx_free(ctx);
  // nft's error text ends with the failing command and a caret line: keep the first line.
  if (auto nl = result.error.find('\n'); nl != std::string::npos) {
    result.error.resize(nl);
  }
  return result;
}

std::string nftTableName(uint16_t slot) {
  return fmt::format("{}{}", kNftTablePrefix, slot);
}

// The inet tables of this namespace whose names start with faultline's prefix.
tl::expected<std::vector<std::string>, Failure> nftFaultlineTables() {
  NftResult r = nftRun("list tables inet", true);
  if (!r.ok) {
    if (!hasNetAdmin()) {
      return fail(EPERM, "listing nftables tables needs CAP_NET_ADMIN");
    }
    return fail(ENOENT, fmt::format("cannot list nftables tables (nf_tables missing?): {}", r.error));
  }
  std::vector<std::string> names;
  try {
    const auto doc = nlohmann::json::parse(r.output.empty() ? std::string("{}") : r.output);
    if (doc.contains("nftables")) {
      for (const auto& item : doc.at("nftables")) {
        if (item.contains("table")) {
          const auto& t = item.at("table");
          const std::string name = t.value("name", "");
          if (t.value("family", "") == "inet" && name.rfind(kNftTablePrefix, 0) == 0) {
            names.push_back(name);
          }
        }
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return fail(EIO, fmt::format("cannot read nft's JSON table list: {}", e.what()));
  }
  return names;
}

std::string nftVerdict(const SteeringRules& rules) {
  switch (rules.verdict) {
    case SteeringRules::Verdict::kQueue:
      return fmt::format("queue num {} bypass", rules.queue);
    case SteeringRules::Verdict::kDrop:
      return "drop";
    case SteeringRules::Verdict::kDropRandom:
      return fmt::format("numgen random mod 1000000 < {} drop",
                         static_cast<uint32_t>(std::llround(rules.dropPercent * 10000.0)));
  }
  return "drop";
}

// The whole install as one nft script (one transaction).
std::string nftScript(const SteeringRules& rules, const std::vector<Combination>& combos) {
  const std::string table = nftTableName(rules.slot);
  std::string s = fmt::format("create table inet {}\n", table);
  // Egress: what this host sends (output) and what it forwards (forward) out of the interface, as
  // netem on the interface sees both.
  struct Hook {
    const char* chain;
    const char* hook;
    bool egress;
  };
  for (const Hook& h :
       {Hook{"egress", "output", true}, Hook{"forward", "forward", true}, Hook{"ingress", "prerouting", false}}) {
    const bool egress = h.egress;
    if (egress ? !rules.egress : !rules.ingress) {
      continue;
    }
    const char* chain = h.chain;
    s += fmt::format("add chain inet {} {} {{ type filter hook {} priority -150; policy accept; }}\n", table, chain,
                     h.hook);
    const std::string prefix = fmt::format("add rule inet {} {} ", table, chain);
    s += prefix + fmt::format("meta mark {:#x} accept\n", kInjectedMark);
    for (const auto& e : rules.exempt) {
      const char* ip = e.address.family == AF_INET ? "ip" : "ip6";
      s += prefix + fmt::format("{} daddr {} tcp dport {} accept\n", ip, cidrText(e.address), e.port);
      s += prefix + fmt::format("{} saddr {} tcp sport {} accept\n", ip, cidrText(e.address), e.port);
    }
    const std::string verdict = nftVerdict(rules);
    for (const auto& c : combos) {
      const char* ip = c.family == AF_INET ? "ip" : "ip6";
      std::string rule = fmt::format("{} \"{}\" meta nfproto {}", egress ? "oifname" : "iifname", rules.interface,
                                     c.family == AF_INET ? "ipv4" : "ipv6");
      if (c.source) {
        rule += fmt::format(" {} saddr {}", ip, cidrText(*c.source));
      }
      if (c.destination) {
        rule += fmt::format(" {} daddr {}", ip, cidrText(*c.destination));
      }
      if (c.protocol != 0) {
        rule += fmt::format(" meta l4proto {}", c.protocol);
      }
      const char* l4 = c.protocol == IPPROTO_TCP ? "tcp" : "udp";
      if (c.sourcePort) {
        rule += fmt::format(" {} sport {}", l4, *c.sourcePort);
      }
      if (c.destinationPort) {
        rule += fmt::format(" {} dport {}", l4, *c.destinationPort);
      }
      s += prefix + rule + " " + verdict + "\n";
    }
  }
  return s;
}

// The document of `list table inet NAME` (JSON); nullopt when the table does not exist.
tl::expected<std::optional<nlohmann::json>, Failure> nftTableDocument(const std::string& table) {
  NftResult r = nftRun(fmt::format("list table inet {}", table), true);
  if (!r.ok) {
    auto tables = nftFaultlineTables();
    if (!tables) {
      return tl::unexpected(tables.error());
    }
    if (std::find(tables->begin(), tables->end(), table) == tables->end()) {
      return std::nullopt;
    }
    return fail(EIO, fmt::format("cannot list nftables table inet {}: {}", table, r.error));
  }
  try {
    return std::optional<nlohmann::json>(nlohmann::json::parse(r.output.empty() ? std::string("{}") : r.output));
  } catch (const nlohmann::json::exception& e) {
    return fail(EIO, fmt::format("cannot read nft's JSON listing of table inet {}: {}", table, e.what()));
  }
}

// The chains (name -> hook) and rules of a `list table` document, in listing order.
struct NftListing {
  std::vector<std::pair<std::string, std::string>> chains;
  std::vector<std::pair<std::string, const nlohmann::json*>> rules;  // chain, the rule's expr
};

NftListing nftListing(const nlohmann::json& doc) {
  NftListing listing;
  if (!doc.contains("nftables") || !doc.at("nftables").is_array()) {
    return listing;
  }
  for (const auto& item : doc.at("nftables")) {
    if (item.contains("chain")) {
      const auto& c = item.at("chain");
      listing.chains.emplace_back(c.value("name", ""), c.value("hook", ""));
    } else if (item.contains("rule")) {
      const auto& r = item.at("rule");
      if (r.contains("expr")) {
        listing.rules.emplace_back(r.value("chain", ""), &r.at("expr"));
      }
    }
  }
  return listing;
}

// The interface a rule's `oifname "X"` / `iifname "X"` names, or "".
std::string nftRuleInterface(const nlohmann::json& expr) {
  if (!expr.is_array()) {
    return "";
  }
  for (const auto& e : expr) {
    if (!e.contains("match")) {
      continue;
    }
    const auto& m = e.at("match");
    if (!m.contains("left") || !m.at("left").contains("meta") || !m.contains("right") || !m.at("right").is_string()) {
      continue;
    }
    const std::string key = m.at("left").at("meta").value("key", "");
    if (key == "oifname" || key == "iifname") {
      return m.at("right").get<std::string>();
    }
  }
  return "";
}

class NftSteering final : public PacketSteering {
 public:
  explicit NftSteering(int fd) : ns_(fd) {}

  tl::expected<void, Failure> install(const SteeringRules& rules) override {
    auto combos = checkRules(rules);
    if (!combos) {
      return tl::unexpected(combos.error());
    }
    const std::string script = nftScript(rules, *combos);
    const std::string table = nftTableName(rules.slot);
    auto result = onThreadIn<VoidResult>(
        ns_.fd(),
        [&]() -> VoidResult {
          auto before = nftFaultlineTables();
          if (!before) {
            return tl::unexpected(before.error());
          }
          if (std::find(before->begin(), before->end(), table) != before->end()) {
            return fail(EEXIST,
                        fmt::format("nftables table inet {} exists already: slot {} is taken", table, rules.slot));
          }
          NftResult r = nftRun(script);
          if (r.ok) {
            return {};
          }
          if (!hasNetAdmin()) {
            return fail(EPERM, "changing nftables rules needs CAP_NET_ADMIN");
          }
          return fail(EIO, fmt::format("nft refused table inet {}: {}", table, r.error));
        },
        voidOnError);
    if (!result &&
        (result.error().first == std::errc::io_error || result.error().first == std::errc::no_such_file_or_directory)) {
      // The transaction is atomic: nothing of it stays. Name a missing kernel part if there is one.
      if (auto missing = missingPart(SteeringBackend::kNftables, rules)) {
        return tl::unexpected(*missing);
      }
    }
    return result;
  }

  // A rule can jump only to a chain of its own table: no rule outside faultline's table refers to
  // it, so the table goes whole.
  tl::expected<Removal, Failure> remove(uint16_t slot) override {
    if (slot >= kMaxSlots) {
      return fail(EINVAL, fmt::format("slot {} is out of range; accepted: 0 to {}", slot, kMaxSlots - 1));
    }
    const std::string table = nftTableName(slot);
    auto removed = onThreadIn<VoidResult>(
        ns_.fd(),
        [&]() -> VoidResult {
          auto tables = nftFaultlineTables();
          if (!tables) {
            // No nf_tables at all: nothing of ours can be there.
            return tables.error().first == std::errc::no_such_file_or_directory ? VoidResult{}
                                                                                : tl::unexpected(tables.error());
          }
          if (std::find(tables->begin(), tables->end(), table) == tables->end()) {
            return {};
          }
          NftResult r = nftRun(fmt::format("delete table inet {}\n", table));
          auto after = nftFaultlineTables();
          if (after && std::find(after->begin(), after->end(), table) == after->end()) {
            return {};
          }
          if (!hasNetAdmin()) {
            return fail(EPERM, "removing nftables rules needs CAP_NET_ADMIN");
          }
          return fail(EIO, fmt::format("nftables table inet {} is still there after its removal{}{}", table,
                                       r.ok ? "" : ": ", r.error));
        },
        voidOnError);
    if (!removed) {
      return tl::unexpected(removed.error());
    }
    return Removal{};
  }

  tl::expected<Owned, std::error_code> owned() override {
    return onThreadIn<tl::expected<Owned, std::error_code>>(
        ns_.fd(),
        []() -> tl::expected<Owned, std::error_code> {
          auto tables = nftFaultlineTables();
          if (!tables) {
            return tl::unexpected(tables.error().first);
          }
          Owned owned = sortOwned(*tables, kNftTablePrefix);
          for (const uint16_t slot : owned.slots) {
            auto doc = nftTableDocument(nftTableName(slot));
            if (!doc || !*doc) {
              continue;  // gone meanwhile, or unreadable: its slot is still taken
            }
            const NftListing listing = nftListing(**doc);
            Steered steered;
            steered.slot = slot;
            for (const auto& [chain, hook] : listing.chains) {
              steered.egress = steered.egress || hook == "output";
              steered.ingress = steered.ingress || hook == "prerouting";
            }
            for (const auto& [chain, expr] : listing.rules) {
              if (steered.interface = nftRuleInterface(*expr); !steered.interface.empty()) {
                break;
              }
            }
            owned.steered.push_back(std::move(steered));
          }
          owned.served = servedSlots();
          return owned;
        },
        ownedOnError);
  }

  tl::expected<SlotState, std::error_code> inspect(uint16_t slot) override {
    return inspectSlot(ns_.fd(), slot, [slot]() -> tl::expected<SlotState, std::error_code> {
      const std::string table = nftTableName(slot);
      auto doc = nftTableDocument(table);
      if (!doc) {
        return tl::unexpected(doc.error().first);
      }
      SlotState state;
      if (*doc) {
        const NftListing listing = nftListing(**doc);
        state.parts.push_back(SteeringPart{fmt::format("nftables table inet {}", table), listing.chains.size(), 0});
        for (const auto& [chain, hook] : listing.chains) {
          SteeringPart part{fmt::format("nftables chain {} of table inet {}", chain, table), 0, kFnvBasis};
          for (const auto& [ruleChain, expr] : listing.rules) {
            if (ruleChain == chain) {
              ++part.rules;
              const std::string text = expr->dump();
              part.digest = fnv1a(text.data(), text.size(), part.digest);
            }
          }
          state.parts.push_back(std::move(part));
        }
      }
      return state;
    });
  }

 private:
  Namespace ns_;
};

}  // namespace

namespace steering_internal {

std::unique_ptr<PacketSteering> makeNftSteering(int fd) {
  return std::make_unique<NftSteering>(fd);
}

void probeNftables(SteeringSupport& support) {
  support.nftables = nftRun(
                         "add table inet faultline-probe\n"
                         "add chain inet faultline-probe c { type filter hook output priority -150; "
                         "policy accept; }\n")
                         .ok;
  if (support.nftables) {
    support.nftQueue =
        nftRun(fmt::format("add rule inet faultline-probe c meta l4proto udp queue num {} bypass\n", kQueueBase)).ok;
    support.nftNumgen = nftRun("add rule inet faultline-probe c numgen random mod 100 < 1 drop\n").ok;
  }
}

}  // namespace steering_internal
}  // namespace faultline::kernel
