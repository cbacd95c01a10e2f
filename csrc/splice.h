#pragma once
// Splicing: a chunk's K/V, computed once after a shared prefix, stands in for the
// chunk's tokens in later prompts instead of being evaluated again. The Session
// members that do it are declared with the Session (session.h): those that compute
// states (prefix_state, chunk_state, chunk_states) are defined in chunk_states.cpp,
// those that splice them (check_splices, prefill_spliced) in splice.cpp.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace bakeoff {

// A chunk's K/V, computed once by Session::chunk_state and spliced into a prompt:
// prompt tokens [start, start + n_tokens) take their K/V from `state` (llama.cpp's
// sequence state) instead of being evaluated. The state was computed at positions
// [position, position + n_tokens); its keys are re-rotated to where it lands (state_shift.h).
// `state` is a view, not a copy (a state is megabytes and a request splices several):
// whoever builds the Request keeps those bytes alive and unchanged until generate()
// returns.
struct Splice {
  size_t start = 0;
  std::string_view state;
  int32_t n_tokens = 0;
  int32_t position = 0;
};

}  // namespace bakeoff
