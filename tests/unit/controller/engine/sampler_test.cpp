// ProbeSampler (controller/engine/sampler.h) with the real probe runner against real HTTP servers
// on loopback: the demo service, and a socket that accepts connections and never answers.
#include <chrono>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include "controller/engine/sampler.h"
#include "demo/server.h"

using namespace faultline;
using namespace faultline::controller;
using namespace std::chrono_literals;
namespace asio = boost::asio;

TEST_CASE("ProbeSampler: a hanging HTTP server never delays another probe's samples nor thins out its own") {
  auto server = demo::Server::start({});
  REQUIRE(server.has_value());
  // A listening socket nobody accepts from: the handshake completes, no answer ever comes.
  asio::io_context ioc;
  asio::ip::tcp::acceptor hanging(ioc, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));

  std::vector<Probe> probes(2);
  probes[0].name = "fast";
  probes[0].http.url = "http://127.0.0.1:" + std::to_string((*server)->endpoint().port()) + "/";
  probes[0].http.timeout = 1s;
  probes[1].name = "hanging";
  probes[1].http.url = "http://127.0.0.1:" + std::to_string(hanging.local_endpoint().port()) + "/";
  probes[1].http.timeout = 800ms;
  auto runner = makeProbeRunner();
  ProbeSampler sampler(probes, *runner, 100ms);
  sampler.setPhase("during", "2");
  sampler.start();
  std::this_thread::sleep_for(2s);
  sampler.stop();  // waits for the hanging sample in flight (at most its timeout)
  (*server)->stop();

  std::map<std::string, std::vector<ProbeSampler::Taken>> byProbe;
  for (auto& t : sampler.take()) {
    byProbe[probes[t.probe].name].push_back(std::move(t));
  }
  const auto& fast = byProbe["fast"];
  const auto& slow = byProbe["hanging"];
  MESSAGE("fast samples: ", fast.size(), ", hanging samples: ", slow.size());
  // Every 100 ms for 2 s: about 20, whatever the hanging probe does.
  CHECK(fast.size() >= 15);
  size_t longGaps = 0;
  for (size_t i = 0; i < fast.size(); ++i) {
    CHECK(fast[i].sample.ok);
    CHECK(fast[i].phase == "during");
    CHECK(fast[i].step == "2");
    // Each started about 100 ms after the one before: never held back by the other probe's 800 ms
    // (a round of both probes would start one every 800 ms). A loaded machine may stall a thread
    // once or twice.
    if (i > 0 && fast[i].started - fast[i - 1].started >= 400ms) {
      ++longGaps;
    }
  }
  CHECK(longGaps <= 2);
  // The hanging probe too starts on schedule (open model): its samples overlap, each ends in a
  // timeout and is counted then, as a failure.
  CHECK(slow.size() >= 15);
  for (size_t i = 0; i < slow.size(); ++i) {
    CHECK_FALSE(slow[i].sample.ok);
    CHECK(slow[i].sample.detail == "timeout after 800ms");
    CHECK(slow[i].sample.latency >= 800ms);
  }
  CHECK(sampler.skipped() == 0);
}

TEST_CASE("ProbeSampler: a load probe's next sample starts after the one before has ended, never beside it") {
  auto server = demo::Server::start({});
  REQUIRE(server.has_value());
  std::vector<Probe> probes(1);
  probes[0].name = "load";
  probes[0].http.url = "http://127.0.0.1:" + std::to_string((*server)->endpoint().port()) + "/";
  probes[0].http.timeout = 1s;
  probes[0].http.load = LoadSpec{20.0, 4, 500ms};
  auto runner = makeProbeRunner();
  ProbeSampler sampler(probes, *runner, 100ms);  // a tick every 100 ms, each sample 500 ms long
  sampler.start();
  std::this_thread::sleep_for(2s);
  sampler.stop();
  (*server)->stop();
  const auto taken = sampler.take();
  MESSAGE("load samples in 2 s: ", taken.size());
  // Overlapping, a tick every 100 ms would start about 20 samples (20 x the probe's rate).
  CHECK(taken.size() >= 2);
  CHECK(taken.size() <= 5);
  // A sample schedules 10 requests, the last at +450 ms, and ends when it is answered: the next
  // starts no earlier.
  for (size_t i = 1; i < taken.size(); ++i) {
    CHECK(taken[i].started - taken[i - 1].started >= 450ms);
  }
  CHECK(sampler.skipped() == 0);
}
