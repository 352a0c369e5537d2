// libFuzzer target for the experiment parser: any bytes, with and without variables, must give
// either an experiment or diagnostics with a place and a message; never a crash, a hang, a leak or
// undefined behaviour. Built and run by scripts/fuzz (clang++ -fsanitize=fuzzer,address,undefined).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "controller/experiment/experiment.h"
#include "tests/fuzz/fuzz_support.h"

using faultline::controller::Diagnostic;
using faultline::controller::parseExperiment;
using faultline::controller::Variables;

namespace {

using faultline::fuzz::check;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  static const Variables kVars{{"HOST", "10.0.0.1"}, {"IF", "eth0"}, {"D", "1s"}, {"NL", "a\n  b: [c"}};
  for (const Variables* vars : {static_cast<const Variables*>(nullptr), &kVars}) {
    auto result = vars == nullptr ? parseExperiment(text, "fuzz.yaml") : parseExperiment(text, "fuzz.yaml", *vars);
    if (result) {
      check(!result->method.empty());
      check(!result->name.empty());
      continue;
    }
    check(!result.error().empty());
    for (const Diagnostic& d : result.error()) {
      check(!d.message.empty());
      check(d.line >= 0 && d.column >= 0);
      check((d.line == 0) == (d.column == 0));
      check(!format(d).empty());
    }
  }
  return 0;
}
