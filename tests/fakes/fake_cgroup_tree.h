// In-memory CgroupTree for unit tests: cgroups with files and processes; writes recorded; a
// write can be made to fail. cgroup.freeze writes update cgroup.events at once. Not thread-safe.
#pragma once

#include <map>
#include <set>
#include <string>
#include <system_error>
#include <vector>

#include "agent/kernel/cgroup_tree.h"

namespace faultline::testing {

class FakeCgroupTree final : public kernel::CgroupTree {
 public:
  struct Cgroup {
    std::map<std::string, std::string> files;
    std::vector<pid_t> procs;
  };

  FakeCgroupTree() { add("/"); }

  Cgroup& add(const std::string& path, std::vector<pid_t> procs = {}) {
    auto& c = cgroups_[path];
    c.procs = std::move(procs);
    if (path != "/") {
      c.files["cgroup.freeze"] = "0";
      c.files["cgroup.events"] = "populated 1\nfrozen 0";
    }
    return c;
  }
  void failWrite(const std::string& path, const std::string& file, std::errc error) {
    failures_[path + ":" + file] = std::make_error_code(error);
  }
  void setSelf(std::string self) { self_ = std::move(self); }
  [[nodiscard]] const std::vector<std::string>& writes() const { return writes_; }
  [[nodiscard]] std::string file(const std::string& path, const std::string& name) const {
    return cgroups_.at(path).files.at(name);
  }

  const std::string& mountPoint() const override { return mount_; }
  tl::expected<std::string, std::error_code> selfCgroup() override { return self_; }

  tl::expected<std::string, std::error_code> read(const std::string& cgroup, const std::string& name) override {
    auto c = cgroups_.find(cgroup);
    if (c == cgroups_.end() || c->second.files.count(name) == 0) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_file_or_directory));
    }
    return c->second.files.at(name);
  }
  tl::expected<void, std::error_code> write(const std::string& cgroup, const std::string& name,
                                            const std::string& value) override {
    if (auto f = failures_.find(cgroup + ":" + name); f != failures_.end()) {
      return tl::unexpected(f->second);
    }
    auto c = cgroups_.find(cgroup);
    if (c == cgroups_.end() || c->second.files.count(name) == 0) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_file_or_directory));
    }
    writes_.push_back(cgroup + " " + name + " " + value);
    c->second.files[name] = value;
    if (name == "cgroup.freeze") {
      c->second.files["cgroup.events"] = std::string("populated 1\nfrozen ") + (value == "1" ? "1" : "0");
    }
    return {};
  }
  tl::expected<void, std::error_code> create(const std::string& cgroup) override {
    if (!cgroups_.emplace(cgroup, Cgroup{}).second) {
      return tl::unexpected(std::make_error_code(std::errc::file_exists));
    }
    return {};
  }
  tl::expected<void, std::error_code> remove(const std::string& cgroup) override {
    if (cgroups_.erase(cgroup) == 0) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_file_or_directory));
    }
    return {};
  }
  tl::expected<std::vector<std::string>, std::error_code> children(const std::string& cgroup) override {
    if (cgroups_.count(cgroup) == 0) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_file_or_directory));
    }
    std::vector<std::string> out;
    const std::string prefix = cgroup == "/" ? "/" : cgroup + "/";
    for (const auto& [path, c] : cgroups_) {
      if (path.size() > prefix.size() && path.rfind(prefix, 0) == 0 &&
          path.find('/', prefix.size()) == std::string::npos) {
        out.push_back(path.substr(prefix.size()));
      }
    }
    return out;
  }
  tl::expected<std::vector<pid_t>, std::error_code> procs(const std::string& cgroup) override {
    auto c = cgroups_.find(cgroup);
    if (c == cgroups_.end()) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_file_or_directory));
    }
    return c->second.procs;
  }
  tl::expected<bool, std::error_code> waitEvent(const std::string& cgroup, const std::string& key,
                                                const std::string& value, std::chrono::milliseconds) override {
    auto events = read(cgroup, "cgroup.events");
    if (!events) {
      return tl::unexpected(events.error());
    }
    return ("\n" + *events + "\n").find("\n" + key + " " + value + "\n") != std::string::npos;
  }

 private:
  std::string mount_ = "/sys/fs/cgroup";
  std::string self_ = "/agent.service";
  std::map<std::string, Cgroup> cgroups_;
  std::map<std::string, std::error_code> failures_;
  std::vector<std::string> writes_;
};

}  // namespace faultline::testing
