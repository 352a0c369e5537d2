// libFuzzer target for the controller's checks of a SubmitRun (and PlanRun) request: what the
// Control service runs before a run starts (parseRequest in controller/server/controller.cpp): the
// bounds on every field (overLimits, controller/server/limits.cpp), then the experiment parser with
// the request's variables. Input: a v1::SubmitRunRequest in protobuf text format (file_name,
// trigger, variables, perhaps experiment), then a line "%%", then the experiment file's bytes (which
// replace the experiment field); without "%%" the whole input is the experiment. Seeds:
// tests/fuzz/seeds/submit_run/ and those scripts/fuzz writes (experiments/, oversized labels and
// variables). Every refusal must have words; no input may crash, hang, leak or hit undefined
// behaviour. Built and run by scripts/fuzz.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "controller/experiment/experiment.h"
#include "controller/server/limits.h"
#include "faultline/v1/control.pb.h"
#include "tests/fuzz/fuzz_support.h"

namespace {

using faultline::controller::Diagnostic;
using faultline::controller::overLimits;
using faultline::controller::parseExperiment;
using faultline::controller::Variables;

using faultline::fuzz::check;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  faultline::v1::SubmitRunRequest request;
  std::string_view experiment = input;
  if (const auto split = input.find("\n%%\n"); split != std::string_view::npos || input.rfind("%%\n", 0) == 0) {
    const size_t headerEnd = split == std::string_view::npos ? 0 : split;
    const size_t bodyStart = split == std::string_view::npos ? 3 : split + 4;
    if (!faultline::fuzz::parseText(input.substr(0, headerEnd), &request)) {
      return 0;
    }
    experiment = input.substr(bodyStart);
  }
  request.set_experiment(std::string(experiment));

  // parseRequest(): the bounds first, then the parser.
  if (auto over = overLimits(request)) {
    check(!over->empty());
    return 0;
  }
  const std::string fileName = request.file_name().empty() ? "experiment.yaml" : request.file_name();
  auto parsed = parseExperiment(request.experiment(), fileName,
                                Variables(request.variables().begin(), request.variables().end()));
  if (parsed) {
    check(!parsed->method.empty());
    check(!parsed->name.empty());
    return 0;
  }
  check(!parsed.error().empty());
  for (const Diagnostic& d : parsed.error()) {
    check(!d.message.empty());
    check(d.line >= 0 && d.column >= 0);
    check(!format(d).empty());
  }
  return 0;
}
