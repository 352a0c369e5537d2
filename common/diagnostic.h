// Diagnostic: one error at a place in a file the user wrote (an experiment file, an agent policy
// file), and its one-line text. Plain values; no project includes (common/ is the lowest folder).
#pragma once

#include <string>

namespace faultline {

// One error in a file. line and column are 1-based (0 when unknown). field is the dotted path of
// the offending key, e.g. "method[2].fault.delay" or "interfaces.deny[1]"; empty for errors about
// the file as a whole. Where line and column point is the reader's to say (see yaml_fields.h).
struct Diagnostic {
  std::string file;
  int line = 0;
  int column = 0;
  std::string field;
  std::string message;  // what is wrong, the value, and what would be accepted
};

// "FILE:LINE:COLUMN: FIELD: MESSAGE", or "FILE:LINE:COLUMN: MESSAGE" when field is empty;
// without ":LINE:COLUMN" when line is 0 (no place in the file, e.g. a file over a size limit).
// Pure, thread-safe.
[[nodiscard]] std::string format(const Diagnostic& d);

}  // namespace faultline
