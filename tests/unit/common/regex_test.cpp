// common/regex.h: RE2 behind the project's one regex type: ECMAScript-like search, the two anchor
// modes, byte-wise matching, and the caps that refuse what could not be matched in linear time
// and memory.
#include <chrono>
#include <string>

#include <doctest/doctest.h>

#include "common/regex.h"

using faultline::Regex;
using faultline::RegexAnchors;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

bool searches(const std::string& pattern, const std::string& text, RegexAnchors anchors = RegexAnchors::kTextEnds) {
  auto re = Regex::compile(pattern, anchors);
  REQUIRE_MESSAGE(re, (re ? "" : re.error()));
  return re->search(text);
}

}  // namespace

TEST_CASE("a search anywhere in the text; ^ and $ at line ends only when asked") {
  CHECK(searches("-jar (orders|billing)\\.jar", "java -Xmx1g -jar orders.jar --port 8080"));
  CHECK_FALSE(searches("-jar orders\\.jar", "java -jar ordersXjar"));
  CHECK_FALSE(searches("^ok$", "status\nok\n"));
  CHECK(searches("^ok$", "status\nok\n", RegexAnchors::kLineEnds));
  CHECK(searches("\\d+ ms\\b", "took 12 ms."));
  // Byte by byte, as std::regex was: '.' is one byte, a UTF-8 literal still matches itself.
  CHECK(searches("^.$", "\xc3"));
  CHECK_FALSE(searches("^.$", "\xc3\xa9"));
  CHECK(searches("caf\xc3\xa9", "un caf\xc3\xa9"));
}

TEST_CASE("what RE2 lacks is refused with the reason: backreferences and lookaround") {
  auto back = Regex::compile("(a)\\1", RegexAnchors::kTextEnds);
  REQUIRE_FALSE(back);
  CHECK(contains(back.error(), "'(a)\\1' is not a valid regular expression"));
  CHECK(contains(back.error(), "a backreference: RE2 has none"));
  auto ahead = Regex::compile("orders(?=\\.jar)", RegexAnchors::kTextEnds);
  REQUIRE_FALSE(ahead);
  CHECK(contains(ahead.error(), "lookaround: RE2 has none"));
  auto unclosed = Regex::compile("(a", RegexAnchors::kLineEnds);
  REQUIRE_FALSE(unclosed);
  CHECK(contains(unclosed.error(), "missing )"));
}

TEST_CASE("caps: pattern bytes and compiled size") {
  CHECK(Regex::compile(std::string(faultline::kMaxRegexPatternBytes, 'a'), RegexAnchors::kTextEnds));
  auto longer = Regex::compile(std::string(faultline::kMaxRegexPatternBytes + 1, 'a'), RegexAnchors::kTextEnds);
  REQUIRE_FALSE(longer);
  CHECK(contains(longer.error(), "is 4097 bytes long, more than the 4096 accepted"));
  CHECK(contains(longer.error(), "'aaaa"));
  CHECK(longer.error().size() < 200);  // the pattern is quoted by its first bytes only

  // Short, but huge once compiled: 25 counted repeats of 1000 (RE2 refuses nested ones itself).
  std::string repeats;
  for (int i = 0; i < 25; ++i) {
    repeats += ".{1000}";
  }
  auto big = Regex::compile(repeats, RegexAnchors::kTextEnds);
  REQUIRE_FALSE(big);
  CHECK_MESSAGE(contains(big.error(), "RE2 instructions, more than the 20000 accepted"), big.error());
  CHECK(Regex::compile(".{1000}", RegexAnchors::kTextEnds));
}

TEST_CASE("(a+)+$ against 28 characters that do not match takes microseconds, not seconds") {
  const std::string text = std::string(27, 'a') + "!";
  const auto start = std::chrono::steady_clock::now();
  CHECK_FALSE(searches("(a+)+$", text));
  const auto took = std::chrono::steady_clock::now() - start;
  MESSAGE("(a+)+$ on 28 characters: ", std::chrono::duration_cast<std::chrono::microseconds>(took).count(), " us");
  CHECK(took < std::chrono::milliseconds(50));
}
