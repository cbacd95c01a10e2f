#include "splice.h"

#include <mutex>
#include <string>
#include <vector>

#include <llama.h>

#include "errors.h"
#include "log.h"
#include "session.h"
#include "timing.h"

namespace bakeoff {

std::string Session::chunk_state(const std::vector<llama_token>& prefix, const std::vector<llama_token>& chunk,
                                 const std::vector<AttachedAdapter>& adapters, const StepCheck& between_steps) {
  const std::unique_lock<std::mutex> lock = claim();
  if (options_.splice_slots == 0) {
    throw InvalidInput("this context was made without splice slots: create the Generator with splice_slots >= 1");
  }
  if (prefix.empty()) throw InvalidInput("the prefix is empty: give at least one token (e.g. BOS)");
  if (chunk.empty()) throw InvalidInput("the chunk is empty: give at least one token");
  model_->check_tokens(prefix, "prefix token");
  model_->check_tokens(chunk, "chunk token");
  std::vector<llama_token> tokens(prefix);
  tokens.insert(tokens.end(), chunk.begin(), chunk.end());
  if (tokens.size() >= n_ctx_) {
    throw ContextOverflow("prefix and chunk are " + std::to_string(tokens.size()) + " tokens but the context holds " +
                          std::to_string(n_ctx_) + ": use shorter chunks, or a larger n_ctx");
  }
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
  const size_t size = llama_state_seq_get_size(ctx_.get(), 1);
  std::string state(size, '\0');
  const size_t written = llama_state_seq_get_data(ctx_.get(), reinterpret_cast<uint8_t*>(state.data()), size, 1);
  if (written != size) throw GenerationFailure("llama.cpp wrote " + std::to_string(written) + " of " +
                                               std::to_string(size) + " bytes of the chunk state");
  return state;
}

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

  // Restore and shift every state first: their K-shifts then run together, once, in
  // the next llama_decode (a K-shift rotates every cell of the cache, so its cost is
  // per decode, not per chunk).
  const auto t0 = Clock::now();
  for (size_t i = 0; i < splices.size(); ++i) {
    const Splice& s = splices[i];
    const auto seq = static_cast<llama_seq_id>(i + 1);
    LogCapture capture;
    const size_t read = llama_state_seq_set_data(ctx_.get(), reinterpret_cast<const uint8_t*>(s.state.data()),
                                                 s.state.size(), seq);
    if (read != s.state.size()) {
      throw InvalidInput("chunk state " + std::to_string(i) + " does not fit this context (" + capture.messages() +
                         "): it was made by another model or KV setting, or the context is full; recompute it");
    }
    const llama_pos lo = llama_memory_seq_pos_min(mem, seq);
    const llama_pos hi = llama_memory_seq_pos_max(mem, seq);
    if (lo != s.position || hi - lo + 1 != s.n_tokens) {
      throw InvalidInput("chunk state " + std::to_string(i) + " holds positions " + std::to_string(lo) + ".." +
                         std::to_string(hi) + ", not the " + std::to_string(s.n_tokens) + " tokens from " +
                         std::to_string(s.position) + " its splice names: recompute it");
    }
    const llama_pos delta = static_cast<llama_pos>(s.start) - lo;
    if (delta != 0) llama_memory_seq_add(mem, seq, -1, -1, delta);
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
