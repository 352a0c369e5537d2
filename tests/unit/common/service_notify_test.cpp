// common/service_notify.h against a real Unix datagram socket standing in for systemd's
// NOTIFY_SOCKET: what is sent, and that the watchdog pings only while its heartbeats are fresh.
#include "common/service_notify.h"

#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <doctest/doctest.h>

#include "tests/support/notify_socket.h"

using namespace std::chrono_literals;
namespace service = faultline::service;
using faultline::testing::NotifySocket;

TEST_CASE("service notify: READY, STATUS and STOPPING reach NOTIFY_SOCKET, a status cut at its first newline") {
  NotifySocket socket;
  socket.setNotifyEnv();
  CHECK(service::notifyReady("listening on 127.0.0.1:7443"));
  CHECK(socket.next(1s) == "READY=1\nSTATUS=listening on 127.0.0.1:7443");
  CHECK(service::notifyStatus("2 agent(s)\nREADY=1"));
  CHECK(socket.next(1s) == "STATUS=2 agent(s)");
  CHECK(service::notifyStopping("SIGTERM: aborting 1 active run(s)"));
  CHECK(socket.next(1s) == "STOPPING=1\nSTATUS=SIGTERM: aborting 1 active run(s)");
}

TEST_CASE("service notify: without NOTIFY_SOCKET nothing is sent and no watchdog thread runs") {
  ::unsetenv("NOTIFY_SOCKET");
  ::setenv("WATCHDOG_USEC", "100000", 1);
  CHECK_FALSE(service::notifyReady("x"));
  service::Heartbeat loop("loop");
  service::Watchdog watchdog({&loop});
  CHECK(watchdog.beatEvery(1s) == 25ms);  // the timeout is known, but nothing pings
  ::unsetenv("WATCHDOG_USEC");
  CHECK_FALSE(service::watchdogTimeout().has_value());
}

TEST_CASE("service notify: the watchdog pings at half the timeout while the loop beats, and stops when it hangs") {
  NotifySocket socket;
  socket.setNotifyEnv("200000");  // 200 ms: a ping every 100 ms
  REQUIRE(service::watchdogTimeout() == std::chrono::microseconds{200'000});
  service::Heartbeat loop("test loop");
  service::Watchdog watchdog({&loop});
  CHECK(watchdog.beatEvery(1s) == 50ms);
  std::atomic<bool> beating{true};
  std::atomic<bool> done{false};
  std::thread beater([&] {
    while (!done) {
      if (beating) {
        loop.beat();
      }
      std::this_thread::sleep_for(20ms);
    }
  });
  const int alive = socket.count("WATCHDOG=1", 1s);
  beating = false;  // the loop "hangs"
  std::this_thread::sleep_for(200ms);
  socket.drain();  // what was sent before the pings stopped
  const int hung = socket.count("WATCHDOG=1", 600ms);
  beating = true;
  const int again = socket.count("WATCHDOG=1", 600ms);
  watchdog.stop();
  const int stopped = socket.count("WATCHDOG=1", 300ms);
  done = true;
  beater.join();
  CHECK(alive >= 7);  // about 10
  CHECK(alive <= 11);
  CHECK(hung == 0);
  CHECK(again >= 3);
  CHECK(stopped == 0);
}

// libsystemd's sd_notify() sent with a blocking sendmsg(): a NOTIFY_SOCKET whose reader had
// stopped held SIGTERM's shutdown for good (attacker trial, issue 16). Now a full queue drops.
TEST_CASE("service notify: a NOTIFY_SOCKET nobody reads never blocks; what does not fit is dropped") {
  NotifySocket socket;  // never read below until the end
  socket.setNotifyEnv();
  const auto start = std::chrono::steady_clock::now();
  int sent = 0;
  for (int i = 0; i < 2000; ++i) {
    sent += service::notifyStatus(std::string(1000, 'x')) ? 1 : 0;
  }
  CHECK(service::notifyStopping("SIGTERM") == false);  // the queue is full: dropped, not waited for
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(took < 2s);
  CHECK(sent > 0);
  CHECK(sent < 2000);
  CHECK(socket.next(1s).rfind("STATUS=x", 0) == 0);
}
