#pragma once
// Moving a chunk's K/V state to other positions before it is restored, so that
// llama.cpp has nothing to shift. llama.cpp's own way (llama_memory_seq_add) marks
// the cells and its next decode runs a K-shift over every cell of the cache, moved
// or not (~16 ms at n_ctx 2048 for SmolLM2-135M). Here only the moved chunk is
// touched: every cell's position + delta and every key rotated by delta (RoPE is a
// rotation: a key computed at p and rotated by delta is the key computed at
// p + delta, up to f16 rounding), the values copied as they are.
//
// The state is llama.cpp's sequence state (llama_state_seq_get_data) of a unified
// cache; its layout is read from llama.cpp's sources in llama-cpp-python 0.3.36
// (llama_context::state_seq_get_data in src/llama-context.cpp: a magic and the sequence
// id; llama_kv_cache::state_write in src/llama-kv-cache.cpp: the cells' positions, then
// the keys layer by layer, then the values) and checked field by field: anything else
// is refused (std::nullopt) and the caller falls back to llama.cpp's K-shift.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <llama.h>

namespace bakeoff {

class Model;

// How the model rotates its keys, read from its metadata once. `usable` is false
// when the model does something this file does not reimplement (a rope type other
// than llama.cpp's NORM or NEOX, rope scaling, sliding-window layers); `why_not` says
// what. Frequency factors (rope_freqs tensors) are invisible in the metadata: the
// Session checks the rotation against llama.cpp's own K-shift once before using it.
struct KeyRotation {
  bool usable = false;
  std::string why_not;
  bool neox = false;  // pairs (i, i + n_rot/2) of each head; NORM pairs (2i, 2i + 1)
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;  // key elements per head
  int32_t n_rot = 0;     // the first n_rot elements of each head are rotated
  float freq_base = 10000.0f;
  float freq_scale = 1.0f;
};

KeyRotation key_rotation_of(const Model& model);

// Where a chunk state's cells sit, read from its bytes.
struct StateCells {
  uint32_t n_cells = 0;
  llama_pos lo = 0;  // smallest and largest position
  llama_pos hi = 0;
};

// Reads `state`'s cells when its layout is the one described above, with f16 keys of
// the model's shape; std::nullopt otherwise (nothing is ever read out of bounds).
std::optional<StateCells> read_state_cells(const KeyRotation& rotation, std::string_view state);

// Writes into `out` (reused across calls: its capacity stays) the state moved by
// `delta` positions. Returns std::nullopt, `out` unspecified, when read_state_cells
// would. Requires rotation.usable.
std::optional<StateCells> move_state(const KeyRotation& rotation, std::string_view state, int32_t delta,
                                     std::string& out);

// True when two states of the same cells agree: identical bytes except the keys, and
// every key element within `max_ulps` f16 steps. For checking move_state against
// llama.cpp's K-shift of the same state.
bool same_state(const KeyRotation& rotation, std::string_view a, std::string_view b, int max_ulps);

// A state of `n_cells` cells at positions pos0, pos0 + 1, ... whose keys and values are
// all zero bytes, laid out like `like` (a sequence state of the same context, any K/V
// type). Restored into a sequence no query attends to, it occupies cells without
// evaluating anything: Session::chunk_states uses it to place each chunk's cells where
// it wants them. std::nullopt when `like` is not a layout this file reads.
std::optional<std::string> blank_state(std::string_view like, uint32_t n_cells, llama_pos pos0);

}  // namespace bakeoff
