// libFuzzer target for the schedules' time logic (controller/scheduler/cron.h): any bytes as a
// cron expression and as a blackout spec must give either a value or a CronError with a column
// in the text (or one past its end); an accepted expression's next() must answer (a fire after
// the start, or none) from instants around DST changes in two zones, and an accepted blackout
// must read back from its canonical text. Never a crash, a hang or undefined behaviour. Built
// and run by scripts/fuzz (clang++ -fsanitize=fuzzer,address,undefined).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "controller/scheduler/cron.h"
#include "tests/fuzz/fuzz_support.h"

using faultline::controller::scheduler::Blackout;
using faultline::controller::scheduler::CronError;
using faultline::controller::scheduler::CronExpression;
using faultline::controller::scheduler::findZone;
using faultline::fuzz::check;
using std::chrono::sys_seconds;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  static const date::time_zone* const kZones[] = {nullptr, findZone("Europe/Berlin"), findZone("America/New_York")};
  // 2026-03-29T00:30:00Z (Berlin's spring change ahead) and 2026-11-01T05:30:00Z (in New York's
  // repeated hour)
  static const sys_seconds kStarts[] = {sys_seconds{std::chrono::seconds{1774744200}},
                                        sys_seconds{std::chrono::seconds{1793511000}}};
  try {
    CronExpression e = CronExpression::parse(text);
    check(e.text() == text);
    for (const date::time_zone* zone : kZones) {
      for (sys_seconds start : kStarts) {
        auto n = e.next(start, zone);
        check(!n || *n > start);
      }
    }
  } catch (const CronError& error) {
    check(error.column <= text.size() + 1);
    check(error.what()[0] != '\0');
  }
  try {
    Blackout b = Blackout::parse(text);
    check(Blackout::parse(b.text()).text() == b.text());
    for (const date::time_zone* zone : kZones) {
      for (sys_seconds start : kStarts) {
        (void)b.contains(start, zone);
      }
    }
  } catch (const CronError& error) {
    check(error.column <= text.size() + 1);
    check(error.what()[0] != '\0');
  }
  try {
    (void)findZone(text);
  } catch (const CronError& error) {
    check(error.column == 0);
  }
  return 0;
}
