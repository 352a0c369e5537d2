#include "common/diagnostic.h"

#include <fmt/format.h>

namespace faultline {

std::string format(const Diagnostic& d) {
  const std::string place = d.line > 0 ? fmt::format("{}:{}:{}", d.file, d.line, d.column) : d.file;
  if (d.field.empty()) {
    return fmt::format("{}: {}", place, d.message);
  }
  return fmt::format("{}: {}: {}", place, d.field, d.message);
}

}  // namespace faultline
