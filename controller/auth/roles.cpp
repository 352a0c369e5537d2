#include "controller/auth/roles.h"

namespace faultline::controller::auth {

std::string_view roleName(Role role) {
  switch (role) {
    case Role::kViewer:
      return "viewer";
    case Role::kOperator:
      return "operator";
    case Role::kAdmin:
      return "admin";
  }
  return "unknown";
}

std::optional<Role> parseRole(std::string_view text) {
  for (Role r : {Role::kViewer, Role::kOperator, Role::kAdmin}) {
    if (text == roleName(r)) {
      return r;
    }
  }
  return std::nullopt;
}

std::optional<Role> requiredRole(std::string_view rpc) {
  for (const auto& entry : kRpcRoles) {
    if (entry.rpc == rpc) {
      return entry.role;
    }
  }
  return std::nullopt;
}

Role localPeerRole(uid_t peer, uid_t controllerEuid, Role localRole) {
  return peer == 0 || peer == controllerEuid ? Role::kAdmin : localRole;
}

}  // namespace faultline::controller::auth
