// faultline-demo --listen ADDR:PORT [--latency DURATION] [--error-rate PERCENT] [--body-bytes N] [--threads N]
// Prints "faultline-demo listening on ADDR:PORT" once it accepts connections; exits 0 on SIGTERM
// or SIGINT, 1 when it cannot listen, 2 on a usage error.
#include <csignal>
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "demo/server.h"

namespace {

std::string formatEndpoint(const boost::asio::ip::tcp::endpoint& e) {
  const std::string address = e.address().to_string();
  return (e.address().is_v6() ? "[" + address + "]" : address) + ":" + std::to_string(e.port());
}

}  // namespace

int main(int argc, char** argv) {
  using faultline::demo::ServerOptions;

  CLI::App app{
      "faultline-demo: a small HTTP service with configurable latency and error rate.\n"
      "GET / answers 200 \"ok\" after --latency, or 500 with probability --error-rate; "
      "GET /healthz always answers 200."};
  std::string listen;
  std::string latency = "0";
  double errorRate = 0;
  unsigned threads = 1;
  size_t bodyBytes = 0;
  app.add_option("--listen", listen, "ADDR:PORT to listen on, e.g. 127.0.0.1:8080 or [::]:8080 (port 0: any)")
      ->required();
  app.add_option("--latency", latency, "delay before each answer to GET /, e.g. 200ms, 1.5s")->capture_default_str();
  app.add_option("--error-rate", errorRate, "percent of GET / answered with 500, 0-100")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  app.add_option(
         "--body-bytes", bodyBytes,
         "size of the 200 answer to GET /, padded after \"ok\\n\" (a larger body makes bandwidth limits visible)")
      ->check(CLI::Range(size_t{0}, size_t{64} << 20))
      ->capture_default_str();
  app.add_option("--threads", threads, "threads serving connections")
      ->check(CLI::Range(1U, 256U))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help prints and succeeds; usage errors exit 2
  }

  ServerOptions options;
  auto endpoint = faultline::demo::parseListenAddress(listen);
  if (!endpoint) {
    std::cerr << "faultline-demo: --listen: " << endpoint.error() << "\n";
    return 2;
  }
  options.listen = *endpoint;
  auto delay = faultline::demo::parseLatency(latency);
  if (!delay) {
    std::cerr << "faultline-demo: --latency: " << delay.error() << "\n";
    return 2;
  }
  options.latency = *delay;
  options.errorRatePercent = errorRate;
  options.threads = threads;
  options.bodyBytes = bodyBytes;

  // Block the stop signals before any server thread starts, so only sigwait() below sees them.
  // A shell starting us in the background may have set SIGINT to "ignore"; sigwait() wants the
  // default disposition.
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGINT, SIG_DFL);
  sigset_t stopSignals;
  sigemptyset(&stopSignals);
  sigaddset(&stopSignals, SIGTERM);
  sigaddset(&stopSignals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stopSignals, nullptr);

  auto server = faultline::demo::Server::start(options);
  if (!server) {
    std::cerr << "faultline-demo: cannot listen on " << formatEndpoint(options.listen) << ": "
              << server.error().message() << "\n";
    return 1;
  }
  std::cout << "faultline-demo listening on " << formatEndpoint((*server)->endpoint()) << std::endl;

  int received = 0;
  sigwait(&stopSignals, &received);
  (*server)->stop();
  std::cout << "faultline-demo stopped (" << (received == SIGTERM ? "SIGTERM" : "SIGINT") << ")" << std::endl;
  return 0;
}
