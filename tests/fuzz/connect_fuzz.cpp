// libFuzzer target for the controller's side of AgentGateway.Connect: the real Gateway
// (controller/server/gateway.cpp, instrumented) serves a real gRPC server on a Unix socket in this
// process, and each input is one agent stream: AgentMessages in protobuf text format separated by
// lines "%%" (a Hello, reports, heartbeats, in any order and number: two Hellos, a report before
// the Hello, oversized labels). The harness writes them, half-closes, reads until the controller
// ends the stream (at most 5 s) and checks that the stream ended with OK or a status that has
// words. No run is active and no store is attached, so a report reaches no database; nothing here
// touches the kernel. Leak checking is off for this target (gRPC keeps per-process state across
// inputs). Seeds: tests/fuzz/seeds/connect/ and those scripts/fuzz writes. Built and run by
// scripts/fuzz.
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/stubs/logging.h>
#include <grpcpp/grpcpp.h>
#include <spdlog/spdlog.h>

#include "controller/server/gateway.h"
#include "controller/server/limits.h"
#include "faultline/v1/agent_gateway.grpc.pb.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

namespace v1 = faultline::v1;

// Messages of one stream at most: each costs a write and the gateway's handling.
constexpr size_t kMaxMessages = 64;

using faultline::fuzz::check;

struct Server {
  Server() : gateway(faultline::controller::GatewayOptions{}) {
    spdlog::set_level(spdlog::level::off);     // a warning per refused stream would drown the fuzzer's output
    google::protobuf::SetLogHandler(nullptr);  // and so would protobuf's, on each string that is not UTF-8
    address = "unix:/tmp/faultline-fuzz-connect-" + std::to_string(::getpid()) + ".sock";
    ::unlink(address.substr(5).c_str());
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials());
    builder.RegisterService(&gateway);
    server = builder.BuildAndStart();
    check(server != nullptr);
    stub = v1::AgentGateway::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }
  faultline::controller::Gateway gateway;
  std::string address;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<v1::AgentGateway::Stub> stub;
};

Server& server() {
  static Server* s = new Server();  // never destroyed: gRPC's threads outlive static destruction
  return *s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  std::vector<v1::AgentMessage> messages;
  size_t at = 0;
  while (at <= input.size() && messages.size() < kMaxMessages) {
    const size_t end = std::min(input.find("\n%%\n", at), input.size());
    v1::AgentMessage m;
    if (!faultline::fuzz::parseText(input.substr(at, end - at), &m)) {
      return 0;
    }
    // The pure checks the gateway runs on each message.
    if (m.has_hello()) {
      if (auto over = faultline::controller::overLimits(m.hello())) {
        check(!over->empty());
      }
    } else if (m.has_report()) {
      if (auto over = faultline::controller::overLimits(m.report())) {
        check(!over->empty());
      }
    }
    messages.push_back(std::move(m));
    at = end + 4;
  }

  Server& s = server();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto stream = s.stub->Connect(&ctx);
  for (const auto& m : messages) {
    if (!stream->Write(m)) {
      break;  // the controller ended the stream
    }
  }
  stream->WritesDone();
  v1::ControllerMessage reply;
  while (stream->Read(&reply)) {
  }
  const grpc::Status status = stream->Finish();
  check(status.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED);  // a stream must never hang
  check(status.ok() || !status.error_message().empty());
  return 0;
}
