#include "common/regex.h"

#include <re2/re2.h>

#include <fmt/format.h>

namespace faultline {
namespace {

// A hint for the ECMAScript features RE2 refuses, from the fragment RE2 names in its error.
std::string unsupportedHint(const re2::RE2& re) {
  const std::string& arg = re.error_arg();
  if (re.error_code() == re2::RE2::ErrorBadEscape && arg.size() == 2 && arg[0] == '\\' && arg[1] >= '1' &&
      arg[1] <= '9') {
    return " (a backreference: RE2 has none)";
  }
  if (arg.starts_with("(?=") || arg.starts_with("(?!")) {
    return " (lookaround: RE2 has none)";
  }
  if (arg.starts_with("(?<")) {  // RE2 names it without what follows: (?<= (?<! or (?<name>
    return " (lookaround: RE2 has none; a named group is written (?P<name>...))";
  }
  return "";
}

// The pattern in quotes, its first bytes only when it is long.
std::string quoted(std::string_view pattern) {
  constexpr size_t kShown = 64;
  return pattern.size() <= kShown ? fmt::format("'{}'", pattern) : fmt::format("'{}...'", pattern.substr(0, kShown));
}

}  // namespace

tl::expected<Regex, std::string> Regex::compile(std::string_view pattern, RegexAnchors anchors) {
  if (pattern.size() > kMaxRegexPatternBytes) {
    return tl::unexpected(fmt::format("{} is {} bytes long, more than the {} accepted", quoted(pattern), pattern.size(),
                                      kMaxRegexPatternBytes));
  }
  re2::RE2::Options options;
  options.set_encoding(re2::RE2::Options::EncodingLatin1);
  options.set_log_errors(false);
  options.set_max_mem(kMaxRegexMemoryBytes);
  // ECMAScript's multiline is RE2's flag m, set for the whole pattern.
  const std::string text = anchors == RegexAnchors::kLineEnds ? fmt::format("(?m){}", pattern) : std::string(pattern);
  auto re = std::make_shared<const re2::RE2>(text, options);
  if (!re->ok()) {
    if (re->error_code() == re2::RE2::ErrorPatternTooLarge) {
      return tl::unexpected(fmt::format("{} compiles to more than the {} bytes of memory accepted", quoted(pattern),
                                        kMaxRegexMemoryBytes));
    }
    // RE2's words, e.g. "missing ): (a", quote the rest of the pattern: keep them short.
    constexpr size_t kShown = 120;
    std::string why = re->error();
    if (why.size() > kShown) {
      why = why.substr(0, kShown) + "...";
    }
    return tl::unexpected(
        fmt::format("{} is not a valid regular expression ({}{})", quoted(pattern), why, unsupportedHint(*re)));
  }
  if (re->ProgramSize() > kMaxRegexProgramSize) {
    return tl::unexpected(fmt::format("{} compiles to {} RE2 instructions, more than the {} accepted", quoted(pattern),
                                      re->ProgramSize(), kMaxRegexProgramSize));
  }
  return Regex(std::move(re));
}

bool Regex::search(std::string_view text) const {
  return re2::RE2::PartialMatch(re2::StringPiece(text.data(), text.size()), *re_);
}

}  // namespace faultline
