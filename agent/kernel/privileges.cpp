#include "agent/kernel/privileges.h"

#include <fcntl.h>
#include <sys/capability.h>
#include <unistd.h>

#include <cerrno>
#include <memory>

namespace faultline::kernel {

namespace {

struct CapFree {
  void operator()(cap_t c) const { cap_free(c); }
};

}  // namespace

const std::vector<std::string>& faultCapabilities() {
  static const std::vector<std::string> names = {"CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_KILL", "CAP_SYS_PTRACE"};
  return names;
}

tl::expected<std::vector<std::string>, std::error_code> effectiveFaultCapabilities() {
  std::unique_ptr<std::remove_pointer_t<cap_t>, CapFree> caps(cap_get_proc());
  if (!caps) {
    return tl::unexpected(std::error_code(errno, std::generic_category()));
  }
  std::vector<std::string> out;
  for (const auto& name : faultCapabilities()) {
    cap_value_t value = 0;
    if (cap_from_name(name.c_str(), &value) != 0) {
      continue;  // a name this libcap does not know: not held, as far as we can tell
    }
    cap_flag_value_t set = CAP_CLEAR;
    if (cap_get_flag(caps.get(), value, CAP_EFFECTIVE, &set) == 0 && set == CAP_SET) {
      out.push_back(name);
    }
  }
  return out;
}

bool canCreateIn(const std::string& path) {
  return ::faccessat(AT_FDCWD, path.c_str(), W_OK | X_OK, AT_EACCESS) == 0;
}

}  // namespace faultline::kernel
