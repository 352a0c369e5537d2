// Test support without doctest: small checks on text that tools and the agent print.
#pragma once

#include <string_view>

namespace faultline::testing {

// Whether part occurs anywhere in text.
inline bool contains(std::string_view text, std::string_view part) {
  return text.find(part) != std::string_view::npos;
}

}  // namespace faultline::testing
