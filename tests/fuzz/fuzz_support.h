// What the libFuzzer targets under tests/fuzz share: check() (a broken promise becomes a crash
// libFuzzer saves) and parseText() (a message in protobuf text format, partial messages allowed,
// its errors not logged: malformed text is most of what a fuzzer sends).
#pragma once

#include <cstdlib>
#include <string>
#include <string_view>

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/message.h>
#include <google/protobuf/text_format.h>

namespace faultline::fuzz {

inline void check(bool ok) {
  if (!ok) {
    std::abort();  // libFuzzer saves the input as a crash
  }
}

// text parsed into *message; false when it is not a message of that type.
inline bool parseText(std::string_view text, google::protobuf::Message* message) {
  class Quiet final : public google::protobuf::io::ErrorCollector {
   public:
    void AddError(int /*line*/, google::protobuf::io::ColumnNumber /*column*/,
                  const std::string& /*message*/) override {}
  };
  google::protobuf::TextFormat::Parser parser;
  parser.AllowPartialMessage(true);
  Quiet quiet;
  parser.RecordErrorsTo(&quiet);
  return parser.ParseFromString(std::string(text), message);
}

}  // namespace faultline::fuzz
