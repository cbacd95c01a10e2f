// Computing chunk states: the prefix's state kept once, the missing chunks of a prompt
// evaluated in one llama_decode (one sequence each, on attention-tile boundaries), each
// chunk's sequence state taken out to be cached and spliced later (splice.cpp).
#include "splice.h"

#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <llama.h>

#include "errors.h"
#include "log.h"
#include "session.h"
#include "state_shift.h"
#include "timing.h"

namespace bakeoff {

namespace {

// llama.cpp's CPU flash attention (ggml_compute_forward_flash_attn_ext_f16 in
// ggml/src/ggml-cpu/ops.cpp) reads the K/V cells in tiles of 64 (GGML_FA_TILE_KV) and
// takes a batch of at least 64 query rows (GGML_FA_TILE_Q) through that tiled path,
// a smaller one cell by cell. In the tiled path a row's result depends on which cells
// share a tile with which: its online softmax is rescaled tile by tile and summed in
// fixed SIMD lanes. A cell no query of the row may see adds exact zeros wherever it
// sits, so a chunk whose cells start on a tile boundary, after the same prefix cells,
// gets the same K/V bytes whatever else the batch holds.
constexpr size_t kAttentionTile = 64;

size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// A group of chunks evaluated in one llama_decode (one sequence each): where each
// chunk's cells start, the query rows, and the padding rows that keep the last
// decode at or above kAttentionTile rows.
struct Placement {
  std::vector<size_t> chunks;  // indices into the call's chunks
  std::vector<size_t> starts;  // first cell (= position) of each chunk's tokens
  size_t rows = 0;
  size_t padding = 0;
  size_t cells = 0;  // cells used, from 0
};

Placement place(const std::vector<std::vector<llama_token>>& chunks, const std::vector<size_t>& group,
                size_t prefix_size, size_t n_batch) {
  Placement p;
  p.chunks = group;
  size_t at = round_up(prefix_size, kAttentionTile);
  for (const size_t k : group) {
    p.starts.push_back(at);
    p.rows += chunks[k].size();
    at = round_up(at + chunks[k].size(), kAttentionTile);
  }
  // Below kAttentionTile rows every decode takes the cell-by-cell path, which no
  // placement changes; a batch too small to hold the padding never reaches the tiled one.
  const size_t tail = p.rows % n_batch;
  if (n_batch >= kAttentionTile && tail != 0 && tail < kAttentionTile) p.padding = kAttentionTile - tail;
  p.cells = p.starts.back() + chunks[group.back()].size() + p.padding;
  return p;
}

}  // namespace

void Session::check_chunk_inputs(const std::vector<llama_token>& prefix, const std::vector<llama_token>& chunk) const {
  if (options_.splice_slots == 0) {
    throw InvalidInput("this context was made without splice slots: create the Generator with splice_slots >= 1");
  }
  if (prefix.empty()) throw InvalidInput("the prefix is empty: give at least one token (e.g. BOS)");
  if (chunk.empty()) throw InvalidInput("the chunk is empty: give at least one token");
  model_->check_tokens(prefix, "prefix token");
  model_->check_tokens(chunk, "chunk token");
  if (prefix.size() + chunk.size() >= n_ctx_) {
    throw ContextOverflow("prefix and chunk are " + std::to_string(prefix.size() + chunk.size()) +
                          " tokens but the context holds " + std::to_string(n_ctx_) +
                          ": use shorter chunks, or a larger n_ctx");
  }
}

std::string Session::sequence_state(llama_seq_id seq, const char* what) {
  const size_t size = llama_state_seq_get_size(ctx_.get(), seq);
  std::string state(size, '\0');
  const size_t written = llama_state_seq_get_data(ctx_.get(), reinterpret_cast<uint8_t*>(state.data()), size, seq);
  if (written != size) throw GenerationFailure("llama.cpp wrote " + std::to_string(written) + " of " +
                                               std::to_string(size) + " bytes of " + what);
  return state;
}

std::string Session::chunk_state(const std::vector<llama_token>& prefix, const std::vector<llama_token>& chunk,
                                 const std::vector<AttachedAdapter>& adapters, const StepCheck& between_steps) {
  const std::unique_lock<std::mutex> lock = claim();
  check_chunk_inputs(prefix, chunk);
  std::vector<llama_token> tokens(prefix);
  tokens.insert(tokens.end(), chunk.begin(), chunk.end());
  attach(adapters);
  const size_t reuse = keep_prefix(tokens, tokens.size() - 1);
  const size_t n_new = tokens.size() - reuse;
  decode(tokens.data() + reuse, n_new, n_new - 1, {}, between_steps);

  llama_memory_t mem = llama_get_memory(ctx_.get());
  const auto p0 = static_cast<llama_pos>(prefix.size());
  const auto p1 = static_cast<llama_pos>(tokens.size());
  // The chunk's cells join scratch sequence 1 (sharing, not copying, in a unified
  // cache), whose state is then exactly the chunk.
  llama_memory_seq_cp(mem, 0, 1, p0, p1);
  struct ClearScratch {
    llama_memory_t mem;
    ~ClearScratch() { llama_memory_seq_rm(mem, 1, -1, -1); }
  } clear{mem};
  return sequence_state(1, "the chunk state");
}

std::string Session::prefix_state(const std::vector<llama_token>& prefix, const std::vector<AttachedAdapter>& adapters,
                                  const StepCheck& between_steps) {
  const std::unique_lock<std::mutex> lock = claim();
  if (prefix.empty()) throw InvalidInput("the prefix is empty: give at least one token (e.g. BOS)");
  check_chunk_inputs(prefix, {prefix.front()});
  attach(adapters);
  llama_memory_clear(llama_get_memory(ctx_.get()), true);
  set_cached_size(0);
  decode(prefix.data(), prefix.size(), prefix.size() - 1, {}, between_steps);
  return sequence_state(0, "the prefix state");
}

void Session::restore_prefix(const std::vector<llama_token>& prefix, std::string_view prefix_state) {
  llama_memory_t mem = llama_get_memory(ctx_.get());
  llama_memory_clear(mem, true);
  set_cached_size(0);
  {
    LogCapture capture;
    const size_t read = llama_state_seq_set_data(ctx_.get(), reinterpret_cast<const uint8_t*>(prefix_state.data()),
                                                 prefix_state.size(), 0);
    if (read != prefix_state.size()) {
      llama_memory_clear(mem, true);
      throw InvalidInput("the prefix state does not fit this context (" + capture.messages() +
                         "): make it with this Generator's prefix_state()");
    }
  }
  const llama_pos lo = llama_memory_seq_pos_min(mem, 0);
  const llama_pos hi = llama_memory_seq_pos_max(mem, 0);
  if (lo != 0 || hi + 1 != static_cast<llama_pos>(prefix.size())) {
    llama_memory_clear(mem, true);
    throw InvalidInput("the prefix state holds positions " + std::to_string(lo) + ".." + std::to_string(hi) +
                       ", not the " + std::to_string(prefix.size()) + " tokens of the prefix: make it with "
                       "prefix_state(prefix)");
  }
  // Restored bytes are the K/V prefix_state() evaluated: exact, reusable by the next request.
  append_cached(prefix.data(), prefix.size(), true);
}

ChunkStateBatch Session::chunk_states(const std::vector<llama_token>& prefix, std::string_view prefix_state,
                                      const std::vector<std::vector<llama_token>>& chunks,
                                      const std::vector<AttachedAdapter>& adapters, const StepCheck& between_steps) {
  const std::unique_lock<std::mutex> lock = claim();
  if (chunks.empty()) throw InvalidInput("no chunks given: pass at least one");
  for (const auto& chunk : chunks) check_chunk_inputs(prefix, chunk);
  if (prefix_state.empty()) throw InvalidInput("the prefix state is empty: make it with prefix_state(prefix)");
  attach(adapters);
  llama_memory_t mem = llama_get_memory(ctx_.get());
  const size_t n_prefix = prefix.size();
  const auto p_prefix = static_cast<llama_pos>(n_prefix);
  // Whatever happens, leave the cache holding the prefix alone (or nothing, after a failure).
  struct Cleanup {
    Session* session;
    llama_memory_t mem;
    llama_pos n_prefix;
    bool ok = false;
    ~Cleanup() {
      for (uint32_t s = 1; s <= session->options_.splice_slots; ++s) {
        llama_memory_seq_rm(mem, static_cast<llama_seq_id>(s), -1, -1);
      }
      if (ok && llama_memory_seq_rm(mem, 0, n_prefix, -1)) {
        session->set_cached_size(static_cast<size_t>(n_prefix));
        return;
      }
      llama_memory_clear(mem, true);
      session->set_cached_size(0);
    }
  } cleanup{this, mem, p_prefix};

  ChunkStateBatch out;
  out.states.resize(chunks.size());
  // Blank cells keep each chunk where it is placed; a state layout blank_state cannot
  // read leaves every chunk to be evaluated alone, right after the prefix.
  const bool can_place = blank_state(prefix_state, 1, 0).has_value();
  auto fits = [&](const Placement& p) { return p.cells <= n_ctx_ && (p.chunks.size() == 1 || p.rows <= n_batch_); };
  size_t next = 0;
  while (next < chunks.size()) {
    if (between_steps) between_steps();
    std::vector<size_t> group{next++};
    Placement placed = place(chunks, group, n_prefix, n_batch_);
    if (!can_place || !fits(placed)) {
      // Alone, its cells straight after the prefix's: the same for this chunk every time.
      restore_prefix(prefix, prefix_state);
      const auto& chunk = chunks[group[0]];
      decode(chunk.data(), chunk.size(), chunk.size() - 1, {}, between_steps);
      ++out.batches;
      llama_memory_seq_cp(mem, 0, 1, p_prefix, -1);
      out.states[group[0]] = sequence_state(1, "the chunk state");
      llama_memory_seq_rm(mem, 1, -1, -1);
      continue;
    }
    while (next < chunks.size() && group.size() < options_.splice_slots) {
      std::vector<size_t> wider = group;
      wider.push_back(next);
      Placement p = place(chunks, wider, n_prefix, n_batch_);
      if (!fits(p)) break;
      group = std::move(wider);
      placed = std::move(p);
      ++next;
    }

    restore_prefix(prefix, prefix_state);
    // Blank cells from the prefix's end to the last chunk's start, in sequence 0 only (no
    // chunk sees them), with each earlier chunk's cells freed again: the batch's tokens
    // then fill exactly those holes, in order, and the last chunk the cells after. The
    // blank's cell i sits at cell n_prefix + i with position n_prefix + i, so a position
    // range names a cell range.
    const size_t blank_cells = placed.starts.back() - n_prefix;
    if (blank_cells > 0) {
      const auto blank = blank_state(prefix_state, static_cast<uint32_t>(blank_cells), p_prefix);
      LogCapture capture;
      if (!blank || llama_state_seq_set_data(ctx_.get(), reinterpret_cast<const uint8_t*>(blank->data()),
                                             blank->size(), 1) != blank->size()) {
        throw GenerationFailure("cannot place " + std::to_string(blank_cells) + " blank cells after the prefix (" +
                                capture.messages() + ")");
      }
      llama_memory_seq_cp(mem, 1, 0, -1, -1);
      llama_memory_seq_rm(mem, 1, -1, -1);
      for (size_t j = 0; j + 1 < placed.chunks.size(); ++j) {
        const auto start = static_cast<llama_pos>(placed.starts[j]);
        llama_memory_seq_rm(mem, 0, start, start + static_cast<llama_pos>(chunks[placed.chunks[j]].size()));
      }
    }
    for (size_t j = 0; j < placed.chunks.size(); ++j) {
      llama_memory_seq_cp(mem, 0, static_cast<llama_seq_id>(j + 1), 0, p_prefix);
    }

    // Rows: each chunk in its own sequence at positions n_prefix.., then the padding in
    // sequence 0 after its blank cells (seen by no chunk).
    struct Row {
      llama_token token;
      llama_pos pos;
      llama_seq_id seq;
    };
    std::vector<Row> rows;
    rows.reserve(placed.rows + placed.padding);
    for (size_t j = 0; j < placed.chunks.size(); ++j) {
      const auto& chunk = chunks[placed.chunks[j]];
      for (size_t t = 0; t < chunk.size(); ++t) {
        rows.push_back({chunk[t], p_prefix + static_cast<llama_pos>(t), static_cast<llama_seq_id>(j + 1)});
      }
    }
    const llama_pos pad_from = llama_memory_seq_pos_max(mem, 0) + 1;
    for (size_t t = 0; t < placed.padding; ++t) {
      rows.push_back({prefix.back(), pad_from + static_cast<llama_pos>(t), 0});
    }
    llama_batch& batch = batch_->get();
    for (size_t from = 0; from < rows.size(); from += n_batch_) {
      if (between_steps) between_steps();
      const size_t count = std::min<size_t>(n_batch_, rows.size() - from);
      batch.n_tokens = static_cast<int32_t>(count);
      for (size_t r = 0; r < count; ++r) {
        const Row& row = rows[from + r];
        batch.token[r] = row.token;
        batch.pos[r] = row.pos;
        batch.n_seq_id[r] = 1;
        batch.seq_id[r][0] = row.seq;
        batch.logits[r] = r + 1 == count;
      }
      const int32_t rc = llama_decode(ctx_.get(), batch);
      ++out.batches;
      if (rc != 0) {
        if (rc == 2 || abort_requested(this)) throw Cancelled("generation cancelled");
        if (rc == 1) throw ContextOverflow("no room left in the KV cache (n_ctx=" + std::to_string(n_ctx_) + ")");
        throw GenerationFailure("llama_decode failed with code " + std::to_string(rc) + " on a batch of chunks");
      }
    }

    // Each chunk's cells alone in scratch sequence 1, read as chunk_state reads them.
    for (size_t j = 0; j < placed.chunks.size(); ++j) {
      const auto seq = static_cast<llama_seq_id>(j + 1);
      if (seq == 1) {
        llama_memory_seq_rm(mem, 1, 0, p_prefix);
      } else {
        llama_memory_seq_rm(mem, 1, -1, -1);
        llama_memory_seq_cp(mem, seq, 1, p_prefix, -1);
      }
      out.states[placed.chunks[j]] = sequence_state(1, "the chunk state");
    }
    ++out.groups;
  }
  cleanup.ok = true;
  return out;
}

}  // namespace bakeoff
