// Who may do what on the Control API. Three roles, each including the one below it:
//   viewer:   read the fleet and the records (ListAgents, ListRuns, GetRun, WatchRun, PlanRun,
//             ListSchedules, GetSchedule)
//   operator: also start and stop runs (SubmitRun, AbortRun, Halt) and manage schedules
//             (ApplySchedule, PauseSchedule, ResumeSchedule, DeleteSchedule, RunScheduleNow)
//   admin:    also manage tokens (CreateToken, ListTokens, RevokeToken) and submit or plan an
//             experiment with a `command` probe (it runs a program on the controller's host)
// kRpcRoles is the one table of what each Control RPC needs; docs/security.md prints it.
// A caller's role comes from one of (controller/server/controller.cpp):
//   - the Unix socket: the peer's uid (SO_PEERCRED), mapped by localPeerRole();
//   - a bearer token (`authorization: Bearer flt_...` metadata, tokens.h);
//   - a verified client certificate's OU (viewer, operator or admin; controller/server/tls.h).
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>

namespace faultline::controller::auth {

enum class Role { kViewer = 1, kOperator = 2, kAdmin = 3 };

// "viewer", "operator", "admin".
[[nodiscard]] std::string_view roleName(Role role);
// The role named by text (exactly one of the three names), or nullopt.
[[nodiscard]] std::optional<Role> parseRole(std::string_view text);
// True when a caller of role `has` may do what needs role `needs`.
[[nodiscard]] constexpr bool allows(Role has, Role needs) {
  return static_cast<int>(has) >= static_cast<int>(needs);
}

struct RpcRole {
  std::string_view rpc;  // the method's name in proto/faultline/v1/control.proto
  Role role;             // the least role that may call it
};

// Every Control RPC and the role it needs. SubmitRun and PlanRun of an experiment with a command
// probe need kCommandProbeRole on top, and so does ApplySchedule of one.
inline constexpr RpcRole kRpcRoles[] = {
    {"ListAgents", Role::kViewer},
    {"ListRuns", Role::kViewer},
    {"GetRun", Role::kViewer},
    {"WatchRun", Role::kViewer},
    {"PlanRun", Role::kViewer},
    {"SubmitRun", Role::kOperator},
    {"AbortRun", Role::kOperator},
    {"Halt", Role::kOperator},
    {"CreateToken", Role::kAdmin},
    {"ListTokens", Role::kAdmin},
    {"RevokeToken", Role::kAdmin},
    // Schedules: an experiment with a command probe needs kCommandProbeRole to be applied.
    {"ListSchedules", Role::kViewer},
    {"GetSchedule", Role::kViewer},
    {"ApplySchedule", Role::kOperator},
    {"PauseSchedule", Role::kOperator},
    {"ResumeSchedule", Role::kOperator},
    {"DeleteSchedule", Role::kOperator},
    {"RunScheduleNow", Role::kOperator},
};
inline constexpr Role kCommandProbeRole = Role::kAdmin;

// The role rpc needs, or nullopt for a name not in kRpcRoles (callers refuse it).
[[nodiscard]] std::optional<Role> requiredRole(std::string_view rpc);

// The role of a caller on the controller's Unix socket: uid 0 and the controller's own effective
// uid are admin (they could read the database and the controller's memory anyway); every other
// uid gets localRole (`faultline controller --local-role`, default operator).
[[nodiscard]] Role localPeerRole(uid_t peer, uid_t controllerEuid, Role localRole);

}  // namespace faultline::controller::auth
