#pragma once
// A llama_context on a shared Model: the KV cache with prefix reuse, the decode
// loop, sampling, LoRA attachment per request, cancellation and timings, and the
// splicing of chunk states (splice.h; those members are defined in chunk_states.cpp and splice.cpp).
// One generation at a time per Session (a second concurrent call raises Busy).
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <llama.h>

#include "lora.h"
#include "model.h"
#include "splice.h"
#include "state_shift.h"

namespace bakeoff {

struct SessionOptions {
  uint32_t n_ctx = 2048;
  uint32_t n_batch = 512;
  int32_t n_threads = 1;
  int32_t n_threads_batch = 1;
  int32_t flash_attn = -1;  // -1 auto, 0 off, 1 on
  std::string kv_type = "f16";  // K and V cache element type: one of kv_type_names()
  bool warmup = true;  // evaluate one token at creation so the first request does not pay for page faults
  // Most chunk states one request may splice (0: splicing off, and the context is made
  // exactly as before). Each spliced chunk is restored into a scratch sequence of its
  // own, so the context gets 1 + splice_slots sequences in one unified KV cache.
  uint32_t splice_slots = 0;
  // Move a spliced state by rotating its own keys before restoring it (state_shift.h),
  // when the model's RoPE and the state's layout are ones it reimplements and the
  // Session's one-time check against llama.cpp agrees; false, or otherwise: llama.cpp's
  // K-shift, which rotates every cell of the cache in the next decode.
  bool rotate_splices = true;
};

// The kv_type names a Session takes, in the order users see them (the table is in
// session.cpp; the bindings expose it to Python as _core.KV_TYPES).
const std::vector<std::string>& kv_type_names();

struct SamplingOptions {
  float temperature = 0.0f;  // <= 0: greedy
  int32_t top_k = 40;        // <= 0: off
  float top_p = 0.95f;       // >= 1: off
  float min_p = 0.05f;       // <= 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int32_t repeat_last_n = 64;
  uint32_t seed = 0;
  std::string grammar;  // GBNF with a "root" rule; "" for none
  bool ignore_eos = false;
};

struct AttachedAdapter {
  std::shared_ptr<LoraAdapter> adapter;
  float scale = 1.0f;
};

// One request's cancellation flag. It is made when the request is submitted, before
// the request waits for the session, so a cancel between submission and the start of
// decoding is never lost, and cancelling one request never touches another.
class CancelToken {
 public:
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

 private:
  std::atomic<bool> cancelled_{false};
};

// Called between decode steps (before each prompt batch and each generated token) with
// the GIL released; it may throw to stop the request (the bindings raise
// KeyboardInterrupt through it). The session stays consistent when it does.
using StepCheck = std::function<void()>;

struct Request {
  std::string prompt;  // tokenized with BOS and special tokens parsed, unless prompt_tokens is set
  std::optional<std::vector<llama_token>> prompt_tokens;  // the prompt already tokenized: used as is
  int32_t max_tokens = 128;
  SamplingOptions sampling;
  std::vector<std::string> stop;
  std::vector<AttachedAdapter> adapters;
  bool truncate_left = false;  // drop the oldest prompt tokens instead of raising ContextOverflow
  bool reuse_prefix = true;
  std::shared_ptr<CancelToken> cancel;  // null: generate() makes one, reachable through Session::cancel()
  std::vector<Splice> splices;  // in prompt order, not overlapping; the rest of the prompt is evaluated
  bool return_logits = false;   // keep the prompt's last position's logits in Result::logits
};

struct Timings {
  double tokenize_ms = 0;        // 0 when the prompt came as token ids
  int32_t prompt_tokens = 0;     // after truncation
  int32_t truncated_tokens = 0;  // dropped from the left of the prompt
  int32_t reused_tokens = 0;     // taken from the KV cache, not evaluated
  int32_t spliced_tokens = 0;    // taken from spliced chunk states, not evaluated
  double splice_ms = 0;          // moving, restoring and joining the chunk states
  int32_t k_shifted_tokens = 0;  // spliced tokens moved by llama.cpp's K-shift (runs in prefill, over every cell)
  double prefill_ms = 0;
  int32_t prefill_tokens = 0;
  double prefill_tokens_per_s = 0;
  double ttft_ms = 0;           // request start to first token sampled
  double decode_ms = 0;         // first token sampled to last token sampled
  int32_t decode_tokens = 0;    // tokens evaluated one at a time after the first
  double decode_tokens_per_s = 0;
  double total_ms = 0;
};

struct Result {
  std::string text;
  std::vector<llama_token> tokens;
  std::string stop_reason;  // "eos", "stop", "length" or "context_full"
  Timings timings;
  std::vector<float> logits;  // n_vocab logits after the prompt, when the request asked (return_logits)
};

// What Session::chunk_states computed: the states in the order of the chunks given,
// and how many llama_decode calls and groups of chunks that took.
struct ChunkStateBatch {
  std::vector<std::string> states;
  int32_t batches = 0;
  int32_t groups = 0;
};

// Called with each piece of final text (valid UTF-8) as it is produced.
using PieceCallback = std::function<void(const std::string&)>;

// A llama_batch, freed with llama_batch_free when it goes (also when the Session
// constructor throws after allocating it).
class Batch {
 public:
  explicit Batch(int32_t capacity) : batch_(llama_batch_init(capacity, 0, 1)) {}
  ~Batch() { llama_batch_free(batch_); }
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;
  llama_batch& get() { return batch_; }

 private:
  llama_batch batch_;
};

struct ContextDeleter {
  void operator()(llama_context* c) const;  // frees with llama.cpp's log silenced
};
struct SamplerDeleter {
  void operator()(llama_sampler* s) const { llama_sampler_free(s); }
};

class Session {
 public:
  Session(std::shared_ptr<Model> model, const SessionOptions& options);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Runs one request; call with the GIL released. Throws Cancelled, Busy,
  // ContextOverflow, InvalidInput or GenerationFailure, or whatever between_steps throws.
  Result generate(const Request& request, const PieceCallback& on_piece, const StepCheck& between_steps = {});
  // Natural-log probability of each continuation token given the context and the
  // continuation tokens before it, with `adapters` attached. Evaluates (with prefix
  // reuse) context + continuation minus its last token, logits of the needed
  // positions only; the cache then holds exactly those tokens. Call with the GIL
  // released. Throws Busy, ContextOverflow, InvalidInput, GenerationFailure.
  std::vector<double> log_probs(const std::vector<llama_token>& context, const std::vector<llama_token>& continuation,
                                const std::vector<AttachedAdapter>& adapters, const StepCheck& between_steps = {});
  // llama.cpp's sequence state of `chunk` evaluated after `prefix` (with `adapters`),
  // to splice later (see Splice): its cells sit at positions [prefix.size(),
  // prefix.size() + chunk.size()). The cache keeps prefix + chunk, exact, for reuse.
  // Needs splice_slots >= 1. Call with the GIL released. Throws Busy, ContextOverflow,
  // InvalidInput, GenerationFailure, Cancelled (between_steps).
  std::string chunk_state(const std::vector<llama_token>& prefix, const std::vector<llama_token>& chunk,
                          const std::vector<AttachedAdapter>& adapters, const StepCheck& between_steps = {});
  // llama.cpp's sequence state of `prefix` evaluated alone, in one batch, from an empty
  // cache (cells 0.. of sequence 0), for chunk_states(); the cache keeps the prefix,
  // exact. Needs splice_slots >= 1. Call with the GIL released. Throws like chunk_state.
  std::string prefix_state(const std::vector<llama_token>& prefix, const std::vector<AttachedAdapter>& adapters,
                           const StepCheck& between_steps = {});
  // The states of `chunks`, each as if evaluated after `prefix`, whose K/V
  // `prefix_state` holds (restored, not evaluated again): up to splice_slots chunks per
  // llama_decode, one sequence each (chunk_states.cpp says how each chunk's cells are placed so
  // that its bytes do not depend on the chunks beside it). Each state is read like
  // chunk_state's: cells at positions [prefix.size(), prefix.size() + chunk.size()) of
  // sequence 1. The cache keeps the prefix, exact. Call with the GIL released. Throws
  // Busy, ContextOverflow, InvalidInput (also a prefix_state of other positions or
  // another context), GenerationFailure, Cancelled (between_steps).
  ChunkStateBatch chunk_states(const std::vector<llama_token>& prefix, std::string_view prefix_state,
                               const std::vector<std::vector<llama_token>>& chunks,
                               const std::vector<AttachedAdapter>& adapters, const StepCheck& between_steps = {});
  // Cancels the request generate() is running now, if any; safe from any thread.
  void cancel();
  // Forgets the KV cache, so the next request evaluates its whole prompt.
  void reset();

  uint32_t n_ctx() const { return n_ctx_; }
  uint32_t n_batch() const { return n_batch_; }
  const SessionOptions& options() const { return options_; }
  // How spliced states are moved: "rotated" (their own keys, checked against llama.cpp),
  // "unchecked" (not needed yet), or "k-shift: <why>" (llama.cpp's whole-cache K-shift).
  std::string splice_shift() const;
  // A snapshot of the tokens whose K/V sit in the cache; safe during generate().
  std::vector<llama_token> cached_tokens() const;

 private:
  // Called for each position that asked for logits, after its batch: (index into
  // the tokens decode() was given, that position's n_vocab logits).
  using LogitsSink = std::function<void(size_t, const float*)>;

  // Destroyed in reverse order: the batch, then the context, then the adapters it
  // points at, then the model.
  std::shared_ptr<Model> model_;
  std::vector<AttachedAdapter> attached_;  // keeps the adapters the context points at alive
  std::unique_ptr<llama_context, ContextDeleter> ctx_;
  std::optional<Batch> batch_;
  SessionOptions options_;
  uint32_t n_ctx_ = 0;
  uint32_t n_batch_ = 0;
  std::mutex busy_;  // held for a whole request: one at a time
  // cached_ is written only under busy_ and state_; the request's own thread reads
  // it without state_, every other thread (cached_tokens) with it.
  mutable std::mutex state_;
  std::vector<llama_token> cached_;  // tokens whose K/V sit in sequence 0, in order
  // How many of cached_'s first tokens hold K/V computed exactly (by evaluation with
  // everything before them): only those are reused. K/V from a splice, and all K/V
  // evaluated after it, saw less than a full prefill does.
  size_t exact_ = 0;
  // The running request's token: the abort callback reads it lock-free while
  // llama_decode runs (generate() keeps the token alive); cancel() and generate()'s
  // exit take token_mutex_, so cancel() never touches a token being freed.
  std::mutex token_mutex_;
  std::atomic<CancelToken*> running_{nullptr};
  // Moving spliced states ourselves (state_shift.h): the model's RoPE, whether this
  // Session has checked it against llama.cpp's K-shift, and the moved state's bytes
  // (kept: a state is megabytes, allocated once).
  enum class RotationCheck { pending, passed, failed };
  KeyRotation rotation_;
  RotationCheck rotation_check_ = RotationCheck::pending;
  std::string moved_;

  // Takes busy_ for one request, or throws Busy when another request holds it.
  std::unique_lock<std::mutex> claim();
  void attach(const std::vector<AttachedAdapter>& adapters);
  // Keeps the cached K/V of the longest common prefix of the cache and `tokens`, at
  // most `limit` tokens, and drops the rest; returns the prefix length.
  size_t keep_prefix(const std::vector<llama_token>& tokens, size_t limit);
  // Evaluates tokens[0, n) after the cached ones, n_batch at a time, calling
  // between_steps before each batch; positions from logits_from on get logits.
  void decode(const llama_token* tokens, size_t n, size_t logits_from, const LogitsSink& on_logits,
              const StepCheck& between_steps);
  void rollback();
  // Splicing: the state computations above are defined in chunk_states.cpp, these two in splice.cpp.
  // Evaluates prompt[from, end) with the splices' K/V placed where they land; the
  // last prompt token gets logits. Leaves no scratch sequence behind, also on throw.
  void prefill_spliced(const std::vector<llama_token>& prompt, size_t from, const std::vector<Splice>& splices,
                       const StepCheck& between_steps, Timings& timings);
  void check_splices(const std::vector<Splice>& splices, size_t prompt_size) const;
  // The checks chunk_state and chunk_states make of their arguments.
  void check_chunk_inputs(const std::vector<llama_token>& prefix, const std::vector<llama_token>& chunk) const;
  // llama.cpp's state of sequence `seq`; throws GenerationFailure naming `what`.
  std::string sequence_state(llama_seq_id seq, const char* what);
  // Empties the cache and restores `prefix_state` into sequence 0, checked to hold the
  // prefix's positions; cached_ becomes the prefix, exact.
  void restore_prefix(const std::vector<llama_token>& prefix, std::string_view prefix_state);
  // Restores `state` into scratch sequence `seq`; throws InvalidInput naming splice `index`.
  void restore_state(std::string_view state, llama_seq_id seq, size_t index);
  // Once per Session, on the first moved state (its cost, a K-shift and a one-token
  // decode, lands in that request's splice_ms): restores splice `index` into `seq`, lets llama.cpp K-shift it by
  // `delta` (decoding `probe` after it) and compares with moved_, our move of the same
  // state; sets rotation_check_ (stays pending when llama.cpp could not decode), leaves
  // `seq` empty.
  void check_rotation(const Splice& s, size_t index, llama_seq_id seq, llama_pos delta, llama_token probe);
  void set_cached_size(size_t n);  // shrinks cached_ (and exact_) to at most n tokens, under state_
  void append_cached(const llama_token* tokens, size_t n, bool exact);  // under state_
  std::unique_ptr<llama_sampler, SamplerDeleter> make_sampler(const SamplingOptions& s) const;
  static bool abort_requested(void* self);
};

}  // namespace bakeoff
