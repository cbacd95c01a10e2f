#pragma once
// Sizes across llama.cpp's C API. Its lengths are int32_t, so every size_t we hand it
// goes through llama_length. Its string getters work like snprintf: they return the
// length they need and write at most the buffer they are given, so the caller grows
// the buffer and calls again; read_grown does that dance for every getter.
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "errors.h"

namespace bakeoff {

constexpr size_t kLlamaMaxLength = static_cast<size_t>(std::numeric_limits<int32_t>::max());

// n as a llama.cpp length. A cast of a larger size would wrap to a negative or short
// length that llama.cpp reads silently, so that throws InvalidInput instead, naming
// `what` (e.g. "the text to tokenize") and the unit its size is counted in.
inline int32_t llama_length(size_t n, const std::string& what, const std::string& unit) {
  if (n > kLlamaMaxLength) {
    throw InvalidInput(what + " is " + std::to_string(n) + " " + unit + ", over llama.cpp's limit of " +
                       std::to_string(kLlamaMaxLength) + " " + unit + ": split it into smaller pieces");
  }
  return static_cast<int32_t>(n);
}

// Calls read(buf, size), a llama.cpp getter returning the length it needs (< 0 on
// failure), with first_size bytes, then once more with a buffer that fits. nullopt when
// the first call fails: an absent key, an unknown template, the caller names which.
// When the second call fails or wants still more, llama.cpp contradicted itself and
// its length cannot be trusted as a size: throws Failure saying what failed, then hint.
template <typename Failure, typename Read>
std::optional<std::string> read_grown(Read read, size_t first_size, const std::string& what,
                                      const std::string& hint) {
  std::string buf(first_size, '\0');
  int32_t n = read(buf.data(), buf.size());
  if (n < 0) return std::nullopt;
  if (static_cast<size_t>(n) >= buf.size()) {
    const int32_t needed = n;
    buf.resize(static_cast<size_t>(n) + 1);  // + 1: snprintf-like getters end with a NUL
    n = read(buf.data(), buf.size());
    if (n < 0 || static_cast<size_t>(n) >= buf.size()) {
      throw Failure("llama.cpp failed to " + what + ": it asked for " + std::to_string(needed) +
                    " bytes, then returned " + std::to_string(n) + " with a buffer that size — " + hint);
    }
  }
  buf.resize(static_cast<size_t>(n));
  return buf;
}

}  // namespace bakeoff
