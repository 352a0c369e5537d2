// The TCP connect shared by the tcp probe and its load. Internal to controller/probe*.cpp.
#pragma once

#include <chrono>
#include <functional>
#include <string>

#include <boost/asio/io_context.hpp>

#include "controller/probes/probe.h"

namespace faultline::controller {

// Starts one connect to spec.host:spec.port on ioc, ending by deadline (the connection is closed
// at once); done is called once, on ioc's thread, with "" on success or the failure ("timeout after
// 2s", "connection refused", "cannot resolve HOST: ..."). spec must outlive the connect. A host
// name is resolved for each connect.
using TcpDone = std::function<void(const std::string& failure)>;
void startTcpConnect(boost::asio::io_context& ioc, const TcpProbe& spec, std::chrono::steady_clock::time_point deadline,
                     TcpDone done);

// The tcp probe's checks of one connect (failure as startTcpConnect() reports it; maxLatency
// against latency), as a sample.
[[nodiscard]] Sample checkTcpConnect(const TcpProbe& spec, const std::string& failure,
                                     std::chrono::microseconds latency);

}  // namespace faultline::controller
