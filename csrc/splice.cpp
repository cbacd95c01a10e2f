// Splicing: cached chunk states restored into a request's scratch sequences, moved to
// where they land and joined to the prompt's sequence; the rest of the prompt prefilled.
#include "splice.h"

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

void Session::check_splices(const std::vector<Splice>& splices, size_t prompt_size) const {
  if (splices.empty()) return;
  if (splices.size() > options_.splice_slots) {
    throw InvalidInput("a request may splice at most " + std::to_string(options_.splice_slots) + " chunk states, got " +
                       std::to_string(splices.size()) + ": create the Generator with more splice_slots");
  }
  size_t end = 1;  // the first prompt token is always evaluated (it starts the sequence)
  for (const Splice& s : splices) {
    if (s.n_tokens <= 0 || s.position < 0 || s.state.empty()) {
      throw InvalidInput("a splice needs a non-empty state of at least one token at a position >= 0");
    }
    if (s.start < end) throw InvalidInput("splices must be in prompt order, not overlapping, after the first token");
    end = s.start + static_cast<size_t>(s.n_tokens);
    // The last prompt token is evaluated for its logits, so no splice may cover it.
    if (end >= prompt_size) throw InvalidInput("a splice reaches the prompt's last token: end the prompt with text");
  }
}

std::string Session::splice_shift() const {
  if (!options_.rotate_splices) return "k-shift: rotate_splices is off";
  if (!rotation_.usable) {
    return "k-shift: " + (rotation_.why_not.empty() ? std::string("no splice slots") : rotation_.why_not);
  }
  switch (rotation_check_) {
    case RotationCheck::passed: return "rotated";
    case RotationCheck::failed: return "k-shift: the rotation disagreed with llama.cpp's K-shift";
    case RotationCheck::pending: break;
  }
  return "unchecked";
}

void Session::restore_state(std::string_view state, llama_seq_id seq, size_t index) {
  LogCapture capture;
  const size_t read =
      llama_state_seq_set_data(ctx_.get(), reinterpret_cast<const uint8_t*>(state.data()), state.size(), seq);
  if (read != state.size()) {
    throw InvalidInput("chunk state " + std::to_string(index) + " does not fit this context (" + capture.messages() +
                       "): it was made by another model or KV setting, or the context is full; recompute it");
  }
}

namespace {

void check_positions(const Splice& s, size_t index, llama_pos lo, llama_pos hi) {
  if (lo != s.position || hi - lo + 1 != s.n_tokens) {
    throw InvalidInput("chunk state " + std::to_string(index) + " holds positions " + std::to_string(lo) + ".." +
                       std::to_string(hi) + ", not the " + std::to_string(s.n_tokens) + " tokens from " +
                       std::to_string(s.position) + " its splice names: recompute it");
  }
}

}  // namespace

void Session::check_rotation(const Splice& s, size_t index, llama_seq_id seq, llama_pos delta, llama_token probe) {
  llama_memory_t mem = llama_get_memory(ctx_.get());
  struct Clear {
    llama_memory_t mem;
    llama_seq_id seq;
    ~Clear() { llama_memory_seq_rm(mem, seq, -1, -1); }
  } clear{mem, seq};
  restore_state(s.state, seq, index);
  llama_memory_seq_add(mem, seq, -1, -1, delta);
  // The K-shift runs at the next decode: one token after the chunk, in its sequence only.
  const llama_pos after = llama_memory_seq_pos_max(mem, seq) + 1;
  llama_batch& batch = batch_->get();
  batch.n_tokens = 1;
  batch.token[0] = probe;
  batch.pos[0] = after;
  batch.n_seq_id[0] = 1;
  batch.seq_id[0][0] = seq;
  batch.logits[0] = true;
  {
    LogCapture quiet;
    if (llama_decode(ctx_.get(), batch) != 0) return;  // undecided: checked again next time
  }
  llama_memory_seq_rm(mem, seq, after, -1);
  const size_t size = llama_state_seq_get_size(ctx_.get(), seq);
  std::string shifted(size, '\0');
  if (llama_state_seq_get_data(ctx_.get(), reinterpret_cast<uint8_t*>(shifted.data()), size, seq) != size) return;
  // Both are f16(rotate(key)) with the same angles; 2 steps of f16 allow for an FMA
  // contraction in one and not the other. A misread base or frequency factors are far off.
  rotation_check_ = same_state(rotation_, moved_, shifted, 2) ? RotationCheck::passed : RotationCheck::failed;
}

void Session::prefill_spliced(const std::vector<llama_token>& prompt, size_t from, const std::vector<Splice>& splices,
                              const StepCheck& between_steps, Timings& timings) {
  llama_memory_t mem = llama_get_memory(ctx_.get());
  // Scratch sequences 1..n hold the restored states until they join sequence 0.
  struct ClearScratch {
    llama_memory_t mem;
    size_t n;
    ~ClearScratch() {
      for (size_t i = 1; i <= n; ++i) llama_memory_seq_rm(mem, static_cast<llama_seq_id>(i), -1, -1);
    }
  } clear{mem, splices.size()};

  // Move and restore every state first. A state whose keys we rotate (state_shift.h)
  // lands where it is used and llama.cpp has nothing to shift; one left to llama.cpp
  // (llama_memory_seq_add) is K-shifted in the next llama_decode, which rotates every
  // cell of the cache, so those shifts run together, once.
  const auto t0 = Clock::now();
  for (size_t i = 0; i < splices.size(); ++i) {
    const Splice& s = splices[i];
    const auto seq = static_cast<llama_seq_id>(i + 1);
    const llama_pos delta = static_cast<llama_pos>(s.start) - s.position;
    std::optional<StateCells> moved;
    if (delta != 0 && rotation_.usable && rotation_check_ != RotationCheck::failed) {
      moved = move_state(rotation_, s.state, delta, moved_);
      if (moved) {
        check_positions(s, i, moved->lo - delta, moved->hi - delta);
        if (rotation_check_ == RotationCheck::pending) check_rotation(s, i, seq, delta, prompt[s.start]);
        if (rotation_check_ != RotationCheck::passed) moved.reset();
      }
    }
    if (moved) {
      restore_state(moved_, seq, i);
      const llama_pos lo = llama_memory_seq_pos_min(mem, seq);
      const llama_pos hi = llama_memory_seq_pos_max(mem, seq);
      if (lo != moved->lo || hi != moved->hi) {
        throw GenerationFailure("chunk state " + std::to_string(i) + " restored at positions " + std::to_string(lo) +
                                ".." + std::to_string(hi) + ", not where it was moved to");
      }
      continue;
    }
    restore_state(s.state, seq, i);
    check_positions(s, i, llama_memory_seq_pos_min(mem, seq), llama_memory_seq_pos_max(mem, seq));
    if (delta != 0) {
      llama_memory_seq_add(mem, seq, -1, -1, delta);
      timings.k_shifted_tokens += s.n_tokens;
    }
  }
  timings.splice_ms = ms_between(t0, Clock::now());

  size_t cursor = from;
  for (size_t i = 0; i < splices.size(); ++i) {
    const Splice& s = splices[i];
    if (s.start > cursor) decode(prompt.data() + cursor, s.start - cursor, s.start - cursor, {}, between_steps);
    const auto t_copy = Clock::now();
    const auto seq = static_cast<llama_seq_id>(i + 1);
    llama_memory_seq_cp(mem, seq, 0, -1, -1);  // in a unified cache: the cells join sequence 0, nothing moves
    llama_memory_seq_rm(mem, seq, -1, -1);
    append_cached(prompt.data() + s.start, static_cast<size_t>(s.n_tokens), false);
    timings.splice_ms += ms_between(t_copy, Clock::now());
    timings.spliced_tokens += s.n_tokens;
    cursor = s.start + static_cast<size_t>(s.n_tokens);
  }
  const size_t rest = prompt.size() - cursor;
  decode(prompt.data() + cursor, rest, rest - 1, {}, between_steps);
}

}  // namespace bakeoff
