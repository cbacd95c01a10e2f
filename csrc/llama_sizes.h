#pragma once
// Sizes across llama.cpp's C API. Its string getters work like snprintf: they return
// the length they need and write at most the buffer they are given, so the caller
// grows the buffer and calls again; one helper does that dance for every getter.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace bakeoff {

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
