#pragma once
// A llama_context on a shared Model: the KV cache with prefix reuse, the decode
// loop, sampling, LoRA attachment per request, cancellation and timings.
// One generation at a time per Session (a second concurrent call raises Busy).
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <llama.h>

#include "lora.h"
#include "model.h"

namespace bakeoff {

struct SessionOptions {
  uint32_t n_ctx = 2048;
  uint32_t n_batch = 512;
  int32_t n_threads = 1;
  int32_t n_threads_batch = 1;
  int32_t flash_attn = -1;  // -1 auto, 0 off, 1 on
  std::string kv_type = "f16";  // K and V cache type: f16, bf16, f32, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl
  bool warmup = true;  // evaluate one token at creation so the first request does not pay for page faults
};

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

struct Request {
  std::string prompt;
  int32_t max_tokens = 128;
  SamplingOptions sampling;
  std::vector<std::string> stop;
  std::vector<AttachedAdapter> adapters;
  bool truncate_left = false;  // drop the oldest prompt tokens instead of raising ContextOverflow
  bool reuse_prefix = true;
};

struct Timings {
  double tokenize_ms = 0;
  int32_t prompt_tokens = 0;     // after truncation
  int32_t truncated_tokens = 0;  // dropped from the left of the prompt
  int32_t reused_tokens = 0;     // taken from the KV cache, not evaluated
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
};

// Called with each piece of final text (valid UTF-8) as it is produced.
using PieceCallback = std::function<void(const std::string&)>;

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
  // ContextOverflow, InvalidInput or GenerationFailure.
  Result generate(const Request& request, const PieceCallback& on_piece);
  // Asks the running generate() to stop; safe from any thread.
  void cancel() { cancel_.store(true); }
  // Forgets the KV cache, so the next request evaluates its whole prompt.
  void reset();

  uint32_t n_ctx() const { return n_ctx_; }
  uint32_t n_batch() const { return n_batch_; }
  const SessionOptions& options() const { return options_; }
  std::vector<llama_token> cached_tokens() const;

 private:
  std::shared_ptr<Model> model_;
  std::vector<AttachedAdapter> attached_;  // keeps the adapters the context points at alive
  std::unique_ptr<llama_context, ContextDeleter> ctx_;
  llama_batch batch_{};
  SessionOptions options_;
  uint32_t n_ctx_ = 0;
  uint32_t n_batch_ = 0;
  std::vector<llama_token> cached_;  // tokens whose K/V sit in sequence 0, in order
  std::atomic<bool> cancel_{false};
  std::mutex busy_;

  void attach(const std::vector<AttachedAdapter>& adapters);
  void decode(const llama_token* tokens, size_t n, bool logits_last);
  void rollback();
  std::unique_ptr<llama_sampler, SamplerDeleter> make_sampler(const SamplingOptions& s) const;
  static bool abort_requested(void* self);
};

}  // namespace bakeoff
