// A real Gateway served by a real gRPC server on 127.0.0.1, and an agent stream speaking to it, for
// the gateway's and TLS's tests.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "controller/server/gateway.h"
#include "faultline/v1/agent_gateway.grpc.pb.h"
#include "tests/support/eventually.h"

namespace faultline::testing {

// Declared before the server: destroyed after it (the gateway must outlive the server's shutdown).
struct GatewayServer {
  explicit GatewayServer(controller::GatewayOptions options,
                         std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials())
      : gateway(options) {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", credentials, &port);
    builder.RegisterService(&gateway);
    server = builder.BuildAndStart();
    REQUIRE(server);
    REQUIRE(port > 0);
    address = fmt::format("127.0.0.1:{}", port);
  }
  ~GatewayServer() { server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds{2}); }

  controller::Gateway gateway;
  int port = 0;
  std::unique_ptr<grpc::Server> server;
  std::string address;
};

// One AgentGateway.Connect stream; every call has a 10 s deadline so that a test never hangs.
class AgentStream {
 public:
  explicit AgentStream(const std::shared_ptr<grpc::Channel>& channel) : stub_(v1::AgentGateway::NewStub(channel)) {
    ctx_.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds{10});
    stream_ = stub_->Connect(&ctx_);
  }
  ~AgentStream() {
    if (!finished_) {
      ctx_.TryCancel();
      (void)finish();
    }
  }
  bool write(const v1::AgentMessage& m) { return stream_->Write(m); }
  bool hello(const std::string& agentId) {
    v1::AgentMessage m;
    m.mutable_hello()->set_agent_id(agentId);
    return write(m);
  }
  bool report(const std::string& faultId, v1::FaultState state) {
    v1::AgentMessage m;
    m.mutable_report()->set_fault_id(faultId);
    m.mutable_report()->set_state(state);
    return write(m);
  }
  // The next message, heartbeats included; false when the stream ended.
  bool readRaw(v1::ControllerMessage& m) { return stream_->Read(&m); }
  // The next message that is not a heartbeat; false when the stream ended.
  bool next(v1::ControllerMessage& m) {
    do {
      if (!stream_->Read(&m)) {
        return false;
      }
    } while (m.has_heartbeat());
    return true;
  }
  bool welcomed() {
    v1::ControllerMessage m;
    return next(m) && m.has_welcome();
  }
  // Reads to the end of the stream and returns how the controller ended it.
  grpc::Status finish() {
    v1::ControllerMessage m;
    while (stream_->Read(&m)) {
    }
    finished_ = true;
    return stream_->Finish();
  }

 private:
  std::unique_ptr<v1::AgentGateway::Stub> stub_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::AgentMessage, v1::ControllerMessage>> stream_;
  bool finished_ = false;
};

}  // namespace faultline::testing
