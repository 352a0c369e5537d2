// Test support: fault specs the process tests build.
#pragma once

#include <string>

#include <sys/types.h>

#include "faultline/v1/faults.pb.h"

namespace faultline::testing {

inline v1::FaultSpec killByName(const std::string& name, const std::string& signal = "") {
  v1::FaultSpec spec;
  spec.mutable_process_kill()->set_name(name);
  spec.mutable_process_kill()->set_signal(signal);
  return spec;
}

inline v1::FaultSpec killByPid(pid_t pid, const std::string& signal = "") {
  v1::FaultSpec spec;
  spec.mutable_process_kill()->set_pid(pid);
  spec.mutable_process_kill()->set_signal(signal);
  return spec;
}

}  // namespace faultline::testing
