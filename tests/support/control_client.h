// Test and benchmark support without doctest: runs submitted to a controller through its Control
// API and watched to their end, as the end-to-end tests and the benches that drive a controller
// do it.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "faultline/v1/control.grpc.pb.h"

namespace faultline::testing {

struct WatchedRun {
  std::string runId;                 // empty when SubmitRun failed
  std::vector<v1::RunEvent> events;  // in the order the controller sent them
  std::string error;                 // empty, or the call that failed and why
};

// Every event of run runId, to its end (replayed from the record when it has ended). Blocks until
// the controller ends the stream, or at most timeout when it is not zero.
inline WatchedRun watchRun(v1::Control::Stub& stub, const std::string& runId,
                           std::chrono::milliseconds timeout = std::chrono::milliseconds::zero()) {
  WatchedRun w;
  w.runId = runId;
  grpc::ClientContext ctx;
  if (timeout > std::chrono::milliseconds::zero()) {
    ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  }
  v1::WatchRunRequest req;
  req.set_run_id(runId);
  auto reader = stub.WatchRun(&ctx, req);
  v1::RunEvent e;
  while (reader->Read(&e)) {
    w.events.push_back(e);
  }
  if (const auto status = reader->Finish(); !status.ok()) {
    w.error = "WatchRun: " + status.error_message();
  }
  return w;
}

// Submits req and watches the run to its end (watchRun()).
inline WatchedRun submitAndWatch(v1::Control::Stub& stub, const v1::SubmitRunRequest& req) {
  grpc::ClientContext ctx;
  v1::SubmitRunResponse resp;
  if (const auto status = stub.SubmitRun(&ctx, req, &resp); !status.ok()) {
    WatchedRun w;
    w.error = "SubmitRun: " + status.error_message();
    return w;
  }
  return watchRun(stub, resp.run_id());
}

}  // namespace faultline::testing
