#include "agent/session/inject_bounds.h"

#include <algorithm>
#include <vector>

#include <fmt/format.h>

#include "agent/faults/spec.h"

namespace faultline::agent {
namespace {

// The longest chain of nested messages checkInjectBounds() walks into (a spec is 3 or 4 deep).
constexpr int kMaxSpecDepth = 8;

// The first string, list or map of msg (and the messages in it) over its bound, as words.
std::optional<std::string> oversized(const google::protobuf::Message& msg, const std::string& path, int depth) {
  if (depth > kMaxSpecDepth) {
    return fmt::format("{} is nested more than {} deep", path, kMaxSpecDepth);
  }
  const auto* reflection = msg.GetReflection();
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  reflection->ListFields(msg, &fields);
  for (const auto* field : fields) {
    const std::string name = path.empty() ? field->name() : path + "." + field->name();
    const bool isString = field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_STRING;
    const bool isMessage = field->cpp_type() == google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE;
    if (field->is_repeated()) {
      const int n = reflection->FieldSize(msg, field);
      if (n > kMaxSpecListItems) {
        return fmt::format("{} has {} items, more than {}", name, n, kMaxSpecListItems);
      }
      for (int i = 0; i < n; ++i) {
        if (isString && reflection->GetRepeatedStringReference(msg, field, i, nullptr).size() > kMaxSpecStringBytes) {
          return fmt::format("{}[{}] is longer than {} bytes", name, i, kMaxSpecStringBytes);
        }
        if (isMessage) {
          if (auto bad = oversized(reflection->GetRepeatedMessage(msg, field, i), name, depth + 1)) {
            return bad;
          }
        }
      }
    } else if (isString) {
      std::string scratch;
      const auto& value = reflection->GetStringReference(msg, field, &scratch);
      if (value.size() > kMaxSpecStringBytes) {
        return fmt::format("{} is {} bytes long, more than {}", name, value.size(), kMaxSpecStringBytes);
      }
    } else if (isMessage) {
      if (auto bad = oversized(reflection->GetMessage(msg, field), name, depth + 1)) {
        return bad;
      }
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> checkInjectBounds(const v1::Inject& inject, std::chrono::system_clock::time_point now) {
  if (const auto size = inject.ByteSizeLong(); size > kMaxInjectBytes) {
    return fmt::format("the inject is {} bytes, more than {}", size, kMaxInjectBytes);
  }
  const std::string& id = inject.fault_id();
  if (id.empty()) {
    return "the fault id is empty";
  }
  if (id.size() > kMaxFaultIdBytes) {
    return fmt::format("the fault id is {} bytes long, more than {}", id.size(), kMaxFaultIdBytes);
  }
  if (std::any_of(id.begin(), id.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; })) {
    return "the fault id has a control character";
  }
  if (auto bad = oversized(inject.spec(), "spec", 0)) {
    return "spec too large: " + *bad;
  }
  if (inject.has_start_at()) {
    // In seconds first: 2^62 s in the clock's nanoseconds would overflow.
    const auto& at = inject.start_at();
    const int64_t nowSeconds = std::chrono::duration_cast<std::chrono::seconds>(now.time_since_epoch()).count();
    if (at.nanos() < 0 || at.nanos() > 999'999'999) {
      return fmt::format("start_at has {} nanoseconds, outside 0 to 999999999", at.nanos());
    }
    if (at.seconds() > nowSeconds + kMaxStartAhead.count()) {
      return fmt::format(
          "start_at {} s since the epoch is more than {} ahead of this host's clock ({} s): are the clocks of the "
          "controller and this host synchronised (NTP)?",
          at.seconds(), formatDuration(kMaxStartAhead), nowSeconds);
    }
    if (at.seconds() < nowSeconds - kMaxStartBehind.count()) {
      return fmt::format(
          "start_at {} s since the epoch is more than {} behind this host's clock ({} s): the step started without "
          "this host, or the clocks of the controller and this host disagree (NTP)",
          at.seconds(), formatDuration(kMaxStartBehind), nowSeconds);
    }
  }
  return std::nullopt;
}

}  // namespace faultline::agent
