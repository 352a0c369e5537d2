// Redis probe: hiredis formats the command and parses the replies (its protocol reader); the probe
// owns the socket, so one deadline bounds connect, AUTH, the command and the reply, and a reply
// is read only up to kMaxProtocolReply bytes.
#include <hiredis/hiredis.h>

#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "controller/probes/protocol.h"

namespace faultline::controller {
namespace {

struct ReaderFree {
  void operator()(redisReader* r) const { redisReaderFree(r); }
};
struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

std::string formatCommand(const std::vector<std::string>& words) {
  std::vector<const char*> argv;
  std::vector<size_t> lengths;
  for (const auto& w : words) {
    argv.push_back(w.data());
    lengths.push_back(w.size());
  }
  char* out = nullptr;
  const int n = redisFormatCommandArgv(&out, static_cast<int>(argv.size()), argv.data(), lengths.data());
  if (n < 0 || out == nullptr) {
    return "";
  }
  std::string text(out, static_cast<size_t>(n));
  redisFreeCommand(out);
  return text;
}

// hiredis 0.14 allocates an array reply's element pointers as soon as it reads the "*N" header,
// before any element arrives, and freeing it walks all N: a 14-byte "*2147483647" would cost 16 GiB.
// The reader's createArray is wrapped to refuse more elements, over the whole reply, than the
// kMaxProtocolReply bytes could carry (each element takes at least 3 bytes: "+\r\n").
constexpr long long kMaxReplyElements = static_cast<long long>(kMaxProtocolReply) / 3;

struct ArrayBudget {
  long long announced = 0;  // elements of every array header read so far
  long long refused = 0;    // the count of the header refused, 0 when none
};

const redisReplyObjectFunctions& defaultReplyFunctions() {
  static const redisReplyObjectFunctions fns = [] {
    std::unique_ptr<redisReader, ReaderFree> probe(redisReaderCreate());
    return probe ? *probe->fn : redisReplyObjectFunctions{};
  }();
  return fns;
}

void* boundedCreateArray(const redisReadTask* task, int elements) {
  auto* budget = static_cast<ArrayBudget*>(task->privdata);
  if (budget != nullptr) {
    budget->announced += elements;
    if (budget->announced > kMaxReplyElements) {
      budget->refused = elements;
      return nullptr;  // the reader reports "Out of memory" and stops
    }
  }
  return defaultReplyFunctions().createArray(task, elements);
}

redisReplyObjectFunctions* boundedReplyFunctions() {
  static redisReplyObjectFunctions fns = [] {
    redisReplyObjectFunctions f = defaultReplyFunctions();
    f.createArray = f.createArray != nullptr ? &boundedCreateArray : nullptr;
    return f;
  }();
  return &fns;
}

// Sends one command and reads its reply; the error is a sample's detail.
tl::expected<Reply, std::string> exchange(int fd, const std::vector<std::string>& words,
                                          ProbeClock::time_point deadline) {
  const std::string request = formatCommand(words);
  if (request.empty()) {
    return tl::unexpected(std::string("cannot format the command"));
  }
  if (auto sent = sendAll(fd, request, deadline); !sent) {
    return tl::unexpected(sent.error());
  }
  ArrayBudget budget;
  std::unique_ptr<redisReader, ReaderFree> reader(redisReaderCreateWithFunctions(boundedReplyFunctions()));
  if (!reader || reader->fn->createArray == nullptr) {
    return tl::unexpected(std::string("out of memory"));
  }
  reader->privdata = &budget;
  const auto readerError = [&] {
    return budget.refused != 0 ? fmt::format(
                                     "the reply announces an array of {} elements, more than the {} its {}-byte bound "
                                     "could carry",
                                     budget.refused, kMaxReplyElements, kMaxProtocolReply)
                               : fmt::format("not a Redis reply: {}", reader->errstr);
  };
  size_t received = 0;
  while (true) {
    void* raw = nullptr;
    if (redisReaderGetReply(reader.get(), &raw) != REDIS_OK) {
      return tl::unexpected(readerError());
    }
    if (raw != nullptr) {
      return Reply(static_cast<redisReply*>(raw));
    }
    if (received >= kMaxProtocolReply) {
      return tl::unexpected(fmt::format("the reply is larger than {} bytes", kMaxProtocolReply));
    }
    auto chunk = receiveSome(fd, kMaxProtocolReply - received, deadline);
    if (!chunk) {
      return tl::unexpected(chunk.error());
    }
    if (chunk->empty()) {
      return tl::unexpected(std::string("connection closed before a complete reply"));
    }
    received += chunk->size();
    if (redisReaderFeed(reader.get(), chunk->data(), chunk->size()) != REDIS_OK) {
      return tl::unexpected(readerError());
    }
  }
}

// The reply as one text value, or an error detail.
tl::expected<std::string, std::string> replyText(const redisReply& r) {
  switch (r.type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      return std::string(r.str, r.len);
    case REDIS_REPLY_INTEGER:
      return std::to_string(r.integer);
    case REDIS_REPLY_NIL:
      return tl::unexpected(std::string("a nil reply"));
    case REDIS_REPLY_ERROR:
      return tl::unexpected("error reply: " + shownValue(std::string_view(r.str, r.len)));
    case REDIS_REPLY_ARRAY:
      return tl::unexpected(
          fmt::format("an array reply of {} elements; accepted: a command whose reply is one value", r.elements));
    default:
      return tl::unexpected(fmt::format("a reply of type {}", r.type));
  }
}

}  // namespace

Sample runRedisProbe(const RedisProbe& spec) {
  Sample sample;
  const auto start = ProbeClock::now();
  const auto deadline = start + spec.timeout;
  const auto fail = [&](const std::string& why) {
    sample.latency = since(start);
    sample.detail = why == "timeout" ? "timeout after " + formatLimit(spec.timeout) : why;
    return sample;
  };
  auto fd = connectByDeadline(spec.address, deadline);
  if (!fd) {
    return fail(fd.error());
  }
  if (spec.password) {
    std::vector<std::string> auth{"AUTH"};
    if (spec.username) {
      auth.push_back(*spec.username);
    }
    auth.push_back(*spec.password);
    auto reply = exchange(fd->get(), auth, deadline);
    if (!reply) {
      return fail(reply.error());
    }
    if ((*reply)->type == REDIS_REPLY_ERROR) {
      // The server's words only: they never hold the password.
      return fail("AUTH refused: " + shownValue(std::string_view((*reply)->str, (*reply)->len)));
    }
  }
  auto reply = exchange(fd->get(), spec.command, deadline);
  if (!reply) {
    return fail(reply.error());
  }
  sample.latency = since(start);
  auto text = replyText(**reply);
  if (!text) {
    sample.detail = text.error();
    return sample;
  }
  if (auto why = checkValue(spec.expect, *text, sample.value); !why.empty()) {
    sample.detail = why;
    return sample;
  }
  sample.detail = fmt::format("{} in {}", shownValue(*text), formatLatency(sample.latency));
  if (sample.latency > spec.maxLatency) {
    sample.detail += ", above maxLatency " + formatLimit(spec.maxLatency);
    return sample;
  }
  sample.ok = true;
  return sample;
}

}  // namespace faultline::controller
