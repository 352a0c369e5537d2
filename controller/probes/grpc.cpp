// gRPC probe: grpc.health.v1.Health/Check (the standard health protocol, proto/grpc/health/v1)
// on a fresh plaintext channel per sample, so a sample sees connection faults; the call's
// deadline bounds connect and answer, and answers over 64 KiB are refused by the channel.
#include <sys/socket.h>

#include <grpcpp/grpcpp.h>

#include <string>

#include <fmt/format.h>

#include "controller/probes/protocol.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace faultline::controller {

Sample runGrpcProbe(const GrpcProbe& spec) {
  Sample sample;
  const auto start = ProbeClock::now();
  const auto deadline = start + spec.timeout;
  std::string target;
  if (!spec.address.unixSocket.empty()) {
    target = "unix:" + spec.address.unixSocket;
  } else {
    // Resolved here, with the probe's deadline: gRPC's own resolver runs in its threads.
    auto addresses = resolveName(spec.address.host, AF_UNSPEC, "", 0, deadline);
    if (!addresses) {
      sample.latency = since(start);
      sample.detail =
          addresses.error().rfind("timeout", 0) == 0 ? "timeout after " + formatLimit(spec.timeout) : addresses.error();
      return sample;
    }
    // gRPC's ipv4: and ipv6: targets list addresses of one family: the IPv4 ones when there are.
    std::string v4;
    std::string v6;
    for (const auto& a : *addresses) {
      std::string& list = a.find(':') == std::string::npos ? v4 : v6;
      list += (list.empty() ? "" : ",") + addressText(ProbeAddress{a, spec.address.port, ""});
    }
    target = v4.empty() ? "ipv6:" + v6 : "ipv4:" + v4;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 * 1024);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of this sample's own
  auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  // gRPC takes system_clock deadlines: the time left on the probe's steady clock, from now.
  context.set_deadline(std::chrono::system_clock::now() + (deadline - ProbeClock::now()));
  // Fail fast: a connection that cannot be made fails the sample now (UNAVAILABLE), it is not
  // retried until the deadline.
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(spec.service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  sample.latency = since(start);
  const std::string what = spec.service.empty() ? std::string("server") : "service '" + spec.service + "'";
  if (!status.ok()) {
    if (status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      sample.detail = "timeout after " + formatLimit(spec.timeout);
    } else if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      sample.detail = what + " unknown to the health service (NOT_FOUND)";
    } else if (status.error_code() == grpc::StatusCode::UNAVAILABLE) {
      sample.detail = "unavailable: " + status.error_message().substr(0, 300);
    } else if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      sample.detail = "the server has no grpc.health.v1 health service (UNIMPLEMENTED)";
    } else {
      sample.detail = fmt::format("health check failed: code {}: {}", static_cast<int>(status.error_code()),
                                  status.error_message().substr(0, 300));
    }
    return sample;
  }
  const auto serving = response.status();
  if (serving != grpc::health::v1::HealthCheckResponse::SERVING) {
    sample.detail = fmt::format("{} is {}", what, grpc::health::v1::HealthCheckResponse::ServingStatus_Name(serving));
    return sample;
  }
  sample.detail = fmt::format("{} SERVING in {}", what, formatLatency(sample.latency));
  if (sample.latency > spec.maxLatency) {
    sample.detail += ", above maxLatency " + formatLimit(spec.maxLatency);
    return sample;
  }
  sample.ok = true;
  return sample;
}

}  // namespace faultline::controller
