// In-memory QdiscTable for unit tests: network namespaces by path, each with interfaces, their
// root qdisc and the qdiscs below it, changed the way the kernel changes them (a new root drops
// the qdiscs below the old one). Erase an interface or a namespace to make it vanish. Every call
// is logged; the next change can be made to fail. Tables opened by fakeQdiscOpener() share one
// FakeKernel. Not thread-safe.
#pragma once

#include <algorithm>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "agent/faults/network/net_driver.h"
#include "agent/kernel/qdisc_table.h"

namespace faultline::testing {

inline constexpr uint32_t kTcRoot = 0xFFFFFFFF;  // TC_H_ROOT

// The kernel's default root: what a veth gets, and what deleting a root leaves.
inline kernel::QdiscInfo defaultRoot() {
  return kernel::QdiscInfo{"noqueue", 0, kTcRoot, {}};
}

struct FakeKernel {
  using Interfaces = std::map<std::string, std::optional<kernel::QdiscInfo>, std::less<>>;

  std::map<std::string, Interfaces, std::less<>> namespaces{{"", {}}};  // "" = the agent's own
  // Qdiscs below the root, by namespace and interface.
  std::map<std::pair<std::string, std::string>, std::vector<kernel::QdiscInfo>, std::less<>> below;
  // "open NS", "root IF", "children IF", "replace IF HANDLE KIND", "restore ...", "delete IF"
  std::vector<std::string> calls;
  std::optional<std::error_code> failNextOpen;
  std::optional<std::error_code> failNextReplace;
  std::optional<std::error_code> failNextRestore;
  std::optional<std::error_code> failNextDelete;
  std::optional<std::error_code> failNextAdd;  // addQdisc, addHtbClass, addU32Filter
  int addsBeforeFailure = 0;                   // adds that succeed before failNextAdd strikes
  // Classes and filters below the root, by namespace and interface, as "class fa17:1" and
  // "filter prio 2 proto 800 -> fa17:1 keys N"; dropped with the root like below.
  std::map<std::pair<std::string, std::string>, std::vector<std::string>, std::less<>> tree;
  // Classes, qdiscs and filters below the root as dumpTree() lists them (after the qdiscs of
  // below) and restoreObject() adds them; dropped with the root like below.
  std::map<std::pair<std::string, std::string>, std::vector<kernel::TcObject>, std::less<>> objects;
  std::optional<std::error_code> failNextRestoreObject;
  std::optional<kernel::QdiscParams> lastParams;
  // The ingress path, by namespace and interface: link kinds ("ifb"; absent = none), indexes,
  // ingress qdiscs and their redirect filters. Interfaces get indexes in the order they appear.
  std::map<std::pair<std::string, std::string>, std::string, std::less<>> kinds;
  std::map<std::pair<std::string, std::string>, int, std::less<>> indexes;
  std::map<std::pair<std::string, std::string>, kernel::QdiscInfo, std::less<>> ingress;
  std::map<std::pair<std::string, std::string>, std::vector<kernel::RedirectFilter>, std::less<>> redirects;
  // Other filters on those ingress qdiscs (someone else's), listed after the redirects.
  std::map<std::pair<std::string, std::string>, std::vector<kernel::IngressFilter>, std::less<>> otherFilters;
  int nextIndex = 2;                                // 1 is lo
  std::optional<std::error_code> failNextIfb;       // createIfb
  std::optional<std::error_code> failNextIngress;   // addIngressQdisc
  std::optional<std::error_code> failNextRedirect;  // addRedirectFilter
  int redirectsBeforeFailure = 0;
  int opens = 0;
  int changes = 0;  // successful replace/restore/delete calls

  void addInterface(const std::string& netns, const std::string& name,
                    std::optional<kernel::QdiscInfo> root = defaultRoot()) {
    namespaces[netns][name] = std::move(root);
    indexes.try_emplace(std::make_pair(netns, name), nextIndex++);
  }

  int indexOf(const std::string& netns, const std::string& name) { return indexes.at(std::make_pair(netns, name)); }

  std::optional<kernel::QdiscInfo>& rootOf(const std::string& netns, const std::string& name) {
    return namespaces.at(netns).at(name);
  }

  // The options bytes the fake stores for params: a readable stand-in for the kernel's encoding.
  static std::vector<uint8_t> optionsFor(const kernel::QdiscParams& params) {
    std::string text;
    if (const auto* n = std::get_if<kernel::NetemParams>(&params)) {
      text = fmt::format("delay={} jitter={} loss={}", n->delay.count(), n->jitter.count(), n->lossPercent);
    } else if (const auto* t = std::get_if<kernel::TbfParams>(&params)) {
      text = fmt::format("rate={} burst={} limit={}", t->rateBitsPerSecond, t->burstBytes, t->limitBytes);
    } else {
      text = fmt::format("default={}", std::get<kernel::HtbParams>(params).defaultClass);
    }
    return {text.begin(), text.end()};
  }
};

class FakeQdiscTable final : public kernel::QdiscTable {
 public:
  FakeQdiscTable(std::shared_ptr<FakeKernel> kernel, std::string netns)
      : kernel_(std::move(kernel)), netns_(std::move(netns)) {}

  tl::expected<std::optional<kernel::QdiscInfo>, std::error_code> root(std::string_view ifname) override {
    kernel_->calls.push_back(fmt::format("root {}", ifname));
    auto* slot = find(ifname);
    if (slot == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    return *slot;
  }

  tl::expected<void, std::error_code> replaceRoot(std::string_view ifname, uint32_t handle,
                                                  const kernel::QdiscParams& params) override {
    kernel_->calls.push_back(fmt::format("replace {} {:x} {}", ifname, handle, kernel::qdiscKind(params)));
    if (auto e = takeFailure(kernel_->failNextReplace)) {
      return tl::unexpected(*e);
    }
    auto* slot = find(ifname);
    if (slot == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    // Like the kernel: the same handle with another kind is a change the old kind cannot take.
    if (*slot && (*slot)->handle == handle && (*slot)->kind != kernel::qdiscKind(params)) {
      return tl::unexpected(std::make_error_code(std::errc::invalid_argument));
    }
    *slot = kernel::QdiscInfo{std::string(kernel::qdiscKind(params)), handle, kTcRoot, FakeKernel::optionsFor(params)};
    dropChildren(ifname);
    kernel_->lastParams = params;
    ++kernel_->changes;
    return {};
  }

  tl::expected<void, std::error_code> restoreRoot(std::string_view ifname, const kernel::QdiscInfo& saved) override {
    kernel_->calls.push_back(fmt::format("restore {} {:x} {}", ifname, saved.handle, saved.kind));
    if (auto e = takeFailure(kernel_->failNextRestore)) {
      return tl::unexpected(*e);
    }
    auto* slot = find(ifname);
    if (slot == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    *slot = saved;
    dropChildren(ifname);
    ++kernel_->changes;
    return {};
  }

  tl::expected<void, std::error_code> deleteRoot(std::string_view ifname) override {
    kernel_->calls.push_back(fmt::format("delete {}", ifname));
    if (auto e = takeFailure(kernel_->failNextDelete)) {
      return tl::unexpected(*e);
    }
    auto* slot = find(ifname);
    if (slot == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    if (!*slot || (*slot)->handle == 0) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_file_or_directory));
    }
    *slot = defaultRoot();
    dropChildren(ifname);
    ++kernel_->changes;
    return {};
  }

  tl::expected<std::vector<kernel::QdiscInfo>, std::error_code> rootChildren(std::string_view ifname) override {
    kernel_->calls.push_back(fmt::format("children {}", ifname));
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    auto it = kernel_->below.find(std::make_pair(netns_, std::string(ifname)));
    return it == kernel_->below.end() ? std::vector<kernel::QdiscInfo>{} : it->second;
  }

  tl::expected<void, std::error_code> addQdisc(std::string_view ifname, uint32_t parent, uint32_t handle,
                                               const kernel::QdiscParams& params) override {
    kernel_->calls.push_back(
        fmt::format("add-qdisc {} {:x} {:x} {}", ifname, parent, handle, kernel::qdiscKind(params)));
    if (auto e = takeAddFailure()) {
      return tl::unexpected(*e);
    }
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    kernel_->below[std::make_pair(netns_, std::string(ifname))].push_back(
        kernel::QdiscInfo{std::string(kernel::qdiscKind(params)), handle, parent, FakeKernel::optionsFor(params)});
    kernel_->lastParams = params;
    ++kernel_->changes;
    return {};
  }

  tl::expected<void, std::error_code> addHtbClass(std::string_view ifname, uint32_t classid,
                                                  const kernel::HtbClassParams& /*params*/) override {
    kernel_->calls.push_back(fmt::format("add-class {} {:x}", ifname, classid));
    return addToTree(ifname, fmt::format("class {:x}", classid));
  }

  tl::expected<void, std::error_code> addU32Filter(std::string_view ifname, const kernel::U32Filter& filter) override {
    kernel_->calls.push_back(fmt::format("add-filter {} prio {}", ifname, filter.priority));
    return addToTree(ifname, fmt::format("filter prio {} proto {:x} -> {:x} keys {}", filter.priority, filter.protocol,
                                         filter.classid, filter.keys.size()));
  }

  tl::expected<std::vector<kernel::TcObject>, std::error_code> dumpTree(std::string_view ifname) override {
    kernel_->calls.push_back(fmt::format("tree {}", ifname));
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    std::vector<kernel::TcObject> out;
    const auto key = std::make_pair(netns_, std::string(ifname));
    if (auto it = kernel_->below.find(key); it != kernel_->below.end()) {
      for (const auto& q : it->second) {
        out.push_back(kernel::TcObject{kernel::TcObjectType::kQdisc, q.kind, q.handle, q.parent, 0, 0, q.options});
      }
    }
    if (auto it = kernel_->objects.find(key); it != kernel_->objects.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
    }
    return out;
  }

  tl::expected<void, std::error_code> restoreObject(std::string_view ifname, const kernel::TcObject& object) override {
    kernel_->calls.push_back(fmt::format("restore-object {} {}", ifname, kernel::tcObjectText(object)));
    if (auto e = takeFailure(kernel_->failNextRestoreObject)) {
      return tl::unexpected(*e);
    }
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    kernel_->objects[std::make_pair(netns_, std::string(ifname))].push_back(object);
    ++kernel_->changes;
    return {};
  }

  tl::expected<std::vector<kernel::InterfaceRoot>, std::error_code> roots() override {
    kernel_->calls.push_back("roots");
    std::vector<kernel::InterfaceRoot> out;
    auto ns = kernel_->namespaces.find(netns_);
    if (ns == kernel_->namespaces.end()) {
      return out;  // the kernel answers an emptied namespace with no interfaces
    }
    for (const auto& [name, root] : ns->second) {
      if (root) {
        out.push_back(kernel::InterfaceRoot{name, *root});
      }
    }
    return out;
  }

  tl::expected<std::vector<kernel::LinkInfo>, std::error_code> links() override {
    kernel_->calls.push_back("links");
    std::vector<kernel::LinkInfo> out;
    auto ns = kernel_->namespaces.find(netns_);
    if (ns == kernel_->namespaces.end()) {
      return out;
    }
    for (const auto& entry : ns->second) {
      const auto key = std::make_pair(netns_, entry.first);
      auto kind = kernel_->kinds.find(key);
      out.push_back(
          kernel::LinkInfo{indexOf(entry.first), entry.first, kind == kernel_->kinds.end() ? "" : kind->second});
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.index < b.index; });
    return out;
  }

  tl::expected<int, std::error_code> interfaceIndex(std::string_view ifname) override {
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    return indexOf(std::string(ifname));
  }

  tl::expected<void, std::error_code> createIfb(std::string_view name) override {
    kernel_->calls.push_back(fmt::format("create-ifb {}", name));
    if (auto e = takeFailure(kernel_->failNextIfb)) {
      return tl::unexpected(*e);
    }
    if (find(name) != nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::file_exists));
    }
    kernel_->addInterface(netns_, std::string(name), kernel::QdiscInfo{"pfifo_fast", 0, kTcRoot, {}});
    kernel_->kinds[std::make_pair(netns_, std::string(name))] = "ifb";
    ++kernel_->changes;
    return {};
  }

  tl::expected<void, std::error_code> deleteLink(std::string_view ifname) override {
    kernel_->calls.push_back(fmt::format("delete-link {}", ifname));
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    const auto key = std::make_pair(netns_, std::string(ifname));
    kernel_->namespaces.at(netns_).erase(key.second);
    dropChildren(ifname);
    kernel_->kinds.erase(key);
    kernel_->indexes.erase(key);
    kernel_->ingress.erase(key);
    kernel_->redirects.erase(key);
    kernel_->otherFilters.erase(key);
    ++kernel_->changes;
    return {};
  }

  tl::expected<std::optional<kernel::QdiscInfo>, std::error_code> ingressQdisc(std::string_view ifname) override {
    kernel_->calls.push_back(fmt::format("ingress {}", ifname));
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    auto it = kernel_->ingress.find(std::make_pair(netns_, std::string(ifname)));
    return it == kernel_->ingress.end() ? std::nullopt : std::optional<kernel::QdiscInfo>(it->second);
  }

  tl::expected<void, std::error_code> addIngressQdisc(std::string_view ifname) override {
    kernel_->calls.push_back(fmt::format("add-ingress {}", ifname));
    if (auto e = takeFailure(kernel_->failNextIngress)) {
      return tl::unexpected(*e);
    }
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    if (!kernel_->ingress
             .try_emplace(std::make_pair(netns_, std::string(ifname)),
                          kernel::QdiscInfo{"ingress", 0xFFFF0000, 0xFFFFFFF1, {}})
             .second) {
      return tl::unexpected(std::make_error_code(std::errc::file_exists));
    }
    ++kernel_->changes;
    return {};
  }

  tl::expected<void, std::error_code> deleteIngressQdisc(std::string_view ifname) override {
    kernel_->calls.push_back(fmt::format("delete-ingress {}", ifname));
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    const auto key = std::make_pair(netns_, std::string(ifname));
    if (kernel_->ingress.erase(key) == 0) {
      return tl::unexpected(std::make_error_code(std::errc::invalid_argument));
    }
    kernel_->redirects.erase(key);
    kernel_->otherFilters.erase(key);
    ++kernel_->changes;
    return {};
  }

  tl::expected<void, std::error_code> addRedirectFilter(std::string_view ifname,
                                                        const kernel::RedirectFilter& filter) override {
    kernel_->calls.push_back(fmt::format("add-redirect {} prio {} -> {}", ifname, filter.priority, filter.target));
    if (kernel_->failNextRedirect) {
      if (kernel_->redirectsBeforeFailure > 0) {
        --kernel_->redirectsBeforeFailure;
      } else {
        return tl::unexpected(*takeFailure(kernel_->failNextRedirect));
      }
    }
    if (find(ifname) == nullptr || find(filter.target) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    const auto key = std::make_pair(netns_, std::string(ifname));
    if (!kernel_->ingress.contains(key)) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_file_or_directory));
    }
    kernel_->redirects[key].push_back(filter);
    ++kernel_->changes;
    return {};
  }

  // A redirect at priority P lists as u32 node (0x800 + P - 1)::800, as the kernel numbers them.
  static uint32_t redirectHandle(uint16_t priority) { return ((0x800U + priority - 1) << 20) | 0x800U; }

  tl::expected<std::vector<kernel::IngressFilter>, std::error_code> ingressFilters(std::string_view ifname) override {
    kernel_->calls.push_back(fmt::format("ingress-filters {}", ifname));
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    std::vector<kernel::IngressFilter> out;
    const auto key = std::make_pair(netns_, std::string(ifname));
    if (auto it = kernel_->redirects.find(key); it != kernel_->redirects.end()) {
      for (const auto& f : it->second) {
        auto target = kernel_->indexes.find(std::make_pair(netns_, f.target));
        out.push_back(kernel::IngressFilter{f.priority,
                                            f.protocol,
                                            redirectHandle(f.priority),
                                            "u32",
                                            {target == kernel_->indexes.end() ? 0 : target->second}});
      }
    }
    if (auto it = kernel_->otherFilters.find(key); it != kernel_->otherFilters.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
    }
    return out;
  }

  tl::expected<void, std::error_code> deleteIngressFilter(std::string_view ifname,
                                                          const kernel::IngressFilter& filter) override {
    kernel_->calls.push_back(
        fmt::format("delete-filter {} prio {} handle {:x}", ifname, filter.priority, filter.handle));
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    const auto key = std::make_pair(netns_, std::string(ifname));
    size_t removed = std::erase_if(kernel_->redirects[key], [&](const kernel::RedirectFilter& f) {
      return f.priority == filter.priority && f.protocol == filter.protocol &&
             (filter.handle == 0 || filter.handle == redirectHandle(f.priority));
    });
    removed += std::erase_if(kernel_->otherFilters[key], [&](const kernel::IngressFilter& f) {
      return f.priority == filter.priority && f.protocol == filter.protocol &&
             (filter.handle == 0 || filter.handle == f.handle);
    });
    if (removed == 0) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_file_or_directory));
    }
    ++kernel_->changes;
    return {};
  }

 private:
  int indexOf(const std::string& name) {
    auto [it, added] = kernel_->indexes.try_emplace(std::make_pair(netns_, name), kernel_->nextIndex);
    if (added) {
      ++kernel_->nextIndex;
    }
    return it->second;
  }

  static std::optional<std::error_code> takeFailure(std::optional<std::error_code>& failure) {
    return std::exchange(failure, std::nullopt);
  }

  void dropChildren(std::string_view ifname) {
    kernel_->below.erase(std::make_pair(netns_, std::string(ifname)));
    kernel_->tree.erase(std::make_pair(netns_, std::string(ifname)));
    kernel_->objects.erase(std::make_pair(netns_, std::string(ifname)));
  }

  std::optional<std::error_code> takeAddFailure() {
    if (!kernel_->failNextAdd) {
      return std::nullopt;
    }
    if (kernel_->addsBeforeFailure > 0) {
      --kernel_->addsBeforeFailure;
      return std::nullopt;
    }
    return takeFailure(kernel_->failNextAdd);
  }

  tl::expected<void, std::error_code> addToTree(std::string_view ifname, std::string entry) {
    if (auto e = takeAddFailure()) {
      return tl::unexpected(*e);
    }
    if (find(ifname) == nullptr) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_device));
    }
    kernel_->tree[std::make_pair(netns_, std::string(ifname))].push_back(std::move(entry));
    ++kernel_->changes;
    return {};
  }

  std::optional<kernel::QdiscInfo>* find(std::string_view ifname) {
    auto ns = kernel_->namespaces.find(netns_);
    if (ns == kernel_->namespaces.end()) {
      return nullptr;
    }
    auto it = ns->second.find(ifname);
    return it == ns->second.end() ? nullptr : &it->second;
  }

  std::shared_ptr<FakeKernel> kernel_;
  std::string netns_;
};

// An opener for NetworkFaultDriver over kernel: ENOENT for a namespace it does not have.
inline agent::QdiscTableOpener fakeQdiscOpener(std::shared_ptr<FakeKernel> kernel) {
  return [kernel](const std::string& netns) -> tl::expected<std::unique_ptr<kernel::QdiscTable>, std::error_code> {
    kernel->calls.push_back(fmt::format("open {}", netns));
    ++kernel->opens;
    if (auto e = std::exchange(kernel->failNextOpen, std::nullopt)) {
      return tl::unexpected(*e);
    }
    if (!kernel->namespaces.contains(netns)) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_file_or_directory));
    }
    return std::make_unique<FakeQdiscTable>(kernel, netns);
  };
}

}  // namespace faultline::testing
