// Regex: the one regular-expression type of the project, compiled by RE2 (linear time in the
// text, no recursion, no backtracking), with caps on the pattern's bytes and on its compiled
// program. Every pattern that comes from a user (a process selector's cmdline, a probe's
// bodyMatch or stdoutMatch) is compiled here, in the agent, the controller and `faultline
// validate` alike, so all three accept and refuse the same patterns.
//
// Syntax: RE2's (https://github.com/google/re2/wiki/Syntax), which is ECMAScript's without
// backreferences (\1) and lookaround ((?=, (?!, (?<=, (?<!). Text is matched byte by byte (Latin-1:
// `.` is one byte), as std::regex did. Immutable once compiled: copies share the program and
// search() may be called from any thread at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <tl/expected.hpp>

namespace re2 {
class RE2;
}

namespace faultline {

// The longest pattern compiled, in bytes: ample for a selector or a probe's check, and short
// enough that no pattern can nest deeply (20,000 nested parentheses are refused here).
inline constexpr size_t kMaxRegexPatternBytes = 4096;
// The largest compiled program, in RE2 instructions (RE2::ProgramSize()); `(a{1000}){1000}` fits
// in the byte cap but not here.
inline constexpr int kMaxRegexProgramSize = 20000;
// RE2's max_mem: the memory for the compiled program and its DFA cache, in bytes. A search whose
// DFA would need more falls back to RE2's NFA: slower, still linear.
inline constexpr int64_t kMaxRegexMemoryBytes = 8 << 20;

// What a pattern must be, in the words every refusal ends with.
inline constexpr std::string_view kRegexAccepted =
    "an RE2 regular expression of at most 4096 bytes (ECMAScript syntax without backreferences or "
    "lookaround)";

// Where ^ and $ match.
enum class RegexAnchors {
  kTextEnds,  // at the start and end of the text only (ECMAScript's default)
  kLineEnds,  // also after and before each '\n' (ECMAScript's multiline)
};

class Regex {
 public:
  // Compiles pattern. errors: why it is refused, in words, quoting the pattern's first 64 bytes,
  // e.g. "'(a' is not a valid regular expression (missing ): (a)", "'((((...' is 40000 bytes long,
  // more than the 4096 accepted", "'(a)\1' is not a valid regular expression (invalid escape
  // sequence: \1 (a backreference: RE2 has none))". Callers name the field and add kRegexAccepted.
  [[nodiscard]] static tl::expected<Regex, std::string> compile(std::string_view pattern, RegexAnchors anchors);

  // Whether the pattern matches anywhere in text (a search, not a whole-text match). Linear in
  // text's size; never throws.
  [[nodiscard]] bool search(std::string_view text) const;

 private:
  explicit Regex(std::shared_ptr<const re2::RE2> re) : re_(std::move(re)) {}
  std::shared_ptr<const re2::RE2> re_;
};

}  // namespace faultline
