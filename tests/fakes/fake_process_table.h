// In-memory ProcessTable for unit tests: a list of processes, signals recorded instead of sent.
// Not thread-safe.
#pragma once

#include <algorithm>
#include <chrono>
#include <csignal>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "agent/kernel/process_table.h"

namespace faultline::testing {

class FakeProcessTable final : public kernel::ProcessTable {
 public:
  struct Sent {
    pid_t pid = 0;
    int sig = 0;
  };

  // Adds (or replaces) a process; returns it for chaining edits.
  kernel::ProcessInfo& add(kernel::ProcessInfo p) {
    auto& slot = processes_[p.pid];
    slot = std::move(p);
    return slot;
  }

  // A user process with the given name as comm, /usr/bin/NAME as exe and "NAME ARGS" as cmdline.
  kernel::ProcessInfo& addUser(pid_t pid, pid_t ppid, const std::string& name, const std::string& args = "") {
    return add(kernel::ProcessInfo{pid, ppid, name.substr(0, 15), "/usr/bin/" + name,
                                   args.empty() ? name : name + " " + args, false});
  }

  kernel::ProcessInfo& addKernelThread(pid_t pid, const std::string& comm) {
    return add(kernel::ProcessInfo{pid, 2, comm, "", "", true});
  }

  kernel::ProcessInfo& processes(pid_t pid) { return processes_.at(pid); }

  // signal(pid) fails with error from now on (the process stays listed).
  void failSignal(pid_t pid, std::errc error) { failures_[pid] = std::make_error_code(error); }

  std::vector<kernel::ProcessInfo> list() override {
    std::vector<kernel::ProcessInfo> out;
    for (const auto& [pid, p] : processes_) {
      out.push_back(p);
    }
    ++listCalls_;
    return out;
  }

  tl::expected<void, std::error_code> signal(pid_t pid, int sig) override {
    if (auto f = failures_.find(pid); f != failures_.end()) {
      return tl::unexpected(f->second);
    }
    if (processes_.count(pid) == 0) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_process));
    }
    sent_.push_back(Sent{pid, sig});
    if (sig == SIGSTOP) {
      processes_[pid].state = 'T';
    } else if (sig == SIGCONT) {
      processes_[pid].state = 'S';
    }
    if (exitOnSignal_) {
      gone_.insert(pid);
    }
    return {};
  }

  // A pinned process of this table: signals go through signal(pid) while the listed process still
  // has the start time it was pinned with (replace it with add() to play a reused pid).
  class Pinned final : public kernel::PinnedProcess {
   public:
    Pinned(FakeProcessTable& table, pid_t pid, unsigned long long startTime)
        : table_(table), pid_(pid), startTime_(startTime) {}
    pid_t pid() const override { return pid_; }
    unsigned long long startTime() const override { return startTime_; }
    tl::expected<void, std::error_code> signal(int sig) override {
      if (exited(std::chrono::milliseconds{0})) {
        return tl::unexpected(std::make_error_code(std::errc::no_such_process));
      }
      return table_.signal(pid_, sig);
    }
    bool exited(std::chrono::milliseconds wait) override {
      auto it = table_.processes_.find(pid_);
      return it == table_.processes_.end() || it->second.startTime != startTime_ || table_.exited(pid_, wait);
    }

   private:
    FakeProcessTable& table_;
    pid_t pid_;
    unsigned long long startTime_;
  };

  tl::expected<std::unique_ptr<kernel::PinnedProcess>, std::error_code> pin(pid_t pid,
                                                                            unsigned long long startTime) override {
    ++pinCalls_;
    auto it = processes_.find(pid);
    if (it == processes_.end() || it->second.startTime != startTime || gone_.count(pid) != 0) {
      return tl::unexpected(std::make_error_code(std::errc::no_such_process));
    }
    return std::make_unique<Pinned>(*this, pid, startTime);
  }
  [[nodiscard]] int pinCalls() const { return pinCalls_; }

  // The process leaves the table (it exited and was reaped).
  void remove(pid_t pid) { processes_.erase(pid); }

  // exited(pid) answers true for these (e.g. those a SIGKILL "killed").
  void exitOnSignal(bool on) { exitOnSignal_ = on; }
  void setPidfile(const std::string& path, tl::expected<pid_t, std::error_code> pid) { pidfiles_[path] = pid; }

  bool exited(pid_t pid, std::chrono::milliseconds /*wait*/) override {
    return processes_.count(pid) == 0 || gone_.count(pid) != 0;
  }

  tl::expected<pid_t, kernel::SpecFileError> readPidfile(const std::string& path) override {
    auto it = pidfiles_.find(path);
    const auto code = it == pidfiles_.end() ? std::make_error_code(std::errc::no_such_file_or_directory)
                      : it->second          ? std::error_code()
                                            : it->second.error();
    if (code) {
      return tl::unexpected(kernel::SpecFileError{code, "cannot be opened: " + code.message()});
    }
    return *it->second;
  }

  [[nodiscard]] const std::vector<Sent>& sent() const { return sent_; }
  [[nodiscard]] std::set<pid_t> signalledPids() const {
    std::set<pid_t> pids;
    for (const auto& s : sent_) {
      pids.insert(s.pid);
    }
    return pids;
  }
  [[nodiscard]] int listCalls() const { return listCalls_; }

 private:
  std::map<pid_t, kernel::ProcessInfo> processes_;
  std::map<pid_t, std::error_code> failures_;
  std::vector<Sent> sent_;
  int listCalls_ = 0;
  int pinCalls_ = 0;
  bool exitOnSignal_ = false;
  std::set<pid_t> gone_;
  std::map<std::string, tl::expected<pid_t, std::error_code>> pidfiles_;
};

}  // namespace faultline::testing
