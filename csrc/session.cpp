#include "session.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>

#include "errors.h"
#include "log.h"
#include "text.h"
#include "timing.h"

namespace bakeoff {
namespace {

// The K/V cache element types a Session takes, in the order users see them. The one
// list: error messages are built from it and Python reads it as _core.KV_TYPES.
constexpr std::array<std::pair<const char*, ggml_type>, 9> kKvTypes = {{
    {"f16", GGML_TYPE_F16},   {"bf16", GGML_TYPE_BF16}, {"f32", GGML_TYPE_F32},
    {"q8_0", GGML_TYPE_Q8_0}, {"q4_0", GGML_TYPE_Q4_0}, {"q4_1", GGML_TYPE_Q4_1},
    {"q5_0", GGML_TYPE_Q5_0}, {"q5_1", GGML_TYPE_Q5_1}, {"iq4_nl", GGML_TYPE_IQ4_NL},
}};

ggml_type kv_type_from_name(const std::string& name) {
  for (const auto& [known, type] : kKvTypes) {
    if (name == known) return type;
  }
  std::string names;
  for (const std::string& known : kv_type_names()) names += (names.empty() ? "" : ", ") + known;
  throw InvalidInput("unknown kv_type '" + name + "': use one of " + names);
}

// llama.cpp aborts the process on a value outside its enum (llama_flash_attn_type_name).
llama_flash_attn_type flash_attn_from_int(int32_t value) {
  switch (value) {
    case -1: return LLAMA_FLASH_ATTN_TYPE_AUTO;
    case 0: return LLAMA_FLASH_ATTN_TYPE_DISABLED;
    case 1: return LLAMA_FLASH_ATTN_TYPE_ENABLED;
    default:
      throw InvalidInput("flash_attn must be -1 (auto), 0 (off) or 1 (on), got " + std::to_string(value));
  }
}

}  // namespace

const std::vector<std::string>& kv_type_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& entry : kKvTypes) out.emplace_back(entry.first);
    return out;
  }();
  return names;
}

void ContextDeleter::operator()(llama_context* c) const {
  LogCapture quiet;  // another library (llama_cpp) may have installed a chatty logger since
  llama_free(c);
}

Session::Session(std::shared_ptr<Model> model, const SessionOptions& options)
    : model_(std::move(model)), options_(options) {
  llama_context_params params = llama_context_default_params();
  params.n_ctx = options.n_ctx;
  params.n_batch = options.n_batch;
  params.n_ubatch = options.n_batch;
  params.n_seq_max = 1 + options.splice_slots;
  // Splicing copies cells between sequences (llama_memory_seq_cp); across the streams
  // of a non-unified cache that copy resets the destination stream instead, silently.
  params.kv_unified = options.splice_slots > 0;
  params.n_threads = options.n_threads;
  params.n_threads_batch = options.n_threads_batch;
  params.flash_attn_type = flash_attn_from_int(options.flash_attn);
  params.type_k = kv_type_from_name(options.kv_type);
  params.type_v = params.type_k;
  params.no_perf = true;
  params.abort_callback = &Session::abort_requested;
  params.abort_callback_data = this;
  LogCapture capture;
  ctx_.reset(llama_init_from_model(model_->get(), params));
  if (!ctx_) {
    throw InvalidInput("cannot create a llama.cpp context (n_ctx=" + std::to_string(options.n_ctx) +
                       ", n_batch=" + std::to_string(options.n_batch) + ", kv_type=" + options.kv_type +
                       "): " + capture.messages() +
                       " — lower n_ctx, or use kv_type='f16' (quantized V cache needs flash attention)");
  }
  if (options.splice_slots > 0 && options.rotate_splices) rotation_ = key_rotation_of(*model_);
  n_ctx_ = llama_n_ctx(ctx_.get());
  n_batch_ = llama_n_batch(ctx_.get());
  batch_.emplace(static_cast<int32_t>(n_batch_));
  if (options.warmup) {
    const llama_vocab* vocab = model_->vocab();
    llama_token token = llama_vocab_bos(vocab);
    if (token == LLAMA_TOKEN_NULL) token = llama_vocab_eos(vocab);
    if (token == LLAMA_TOKEN_NULL) token = 0;
    decode(&token, 1, 0, {}, {});
    llama_memory_clear(llama_get_memory(ctx_.get()), true);
    set_cached_size(0);
  }
}

Session::~Session() = default;  // members go in reverse order (see session.h)

bool Session::abort_requested(void* self) {
  const CancelToken* token = static_cast<Session*>(self)->running_.load();
  return token != nullptr && token->cancelled();
}

void Session::cancel() {
  std::lock_guard<std::mutex> guard(token_mutex_);
  if (CancelToken* token = running_.load()) token->cancel();
}

std::vector<llama_token> Session::cached_tokens() const {
  std::lock_guard<std::mutex> guard(state_);
  return cached_;
}

std::unique_lock<std::mutex> Session::claim() {
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  if (!lock.owns_lock()) {
    throw Busy("this session is already generating on another thread: wait for it, or use one Generator per thread");
  }
  return lock;
}

void Session::set_cached_size(size_t n) {
  std::lock_guard<std::mutex> guard(state_);
  cached_.resize(std::min(n, cached_.size()));
  exact_ = std::min(exact_, cached_.size());
}

void Session::append_cached(const llama_token* tokens, size_t n, bool exact) {
  std::lock_guard<std::mutex> guard(state_);
  const bool all_exact = exact && exact_ == cached_.size();
  cached_.insert(cached_.end(), tokens, tokens + n);
  if (all_exact) exact_ = cached_.size();
}

void Session::reset() {
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  if (!lock.owns_lock()) throw Busy("cannot reset while a generation is running: cancel() it first");
  llama_memory_clear(llama_get_memory(ctx_.get()), true);
  set_cached_size(0);
}

void Session::attach(const std::vector<AttachedAdapter>& adapters) {
  bool same = adapters.size() == attached_.size();
  for (size_t i = 0; same && i < adapters.size(); ++i) {
    same = adapters[i].adapter == attached_[i].adapter && adapters[i].scale == attached_[i].scale;
  }
  if (same) return;
  std::vector<llama_adapter_lora*> handles;
  std::vector<float> scales;
  for (const auto& a : adapters) {
    if (!a.adapter) throw InvalidInput("adapter is None: pass a LoraAdapter");
    if (&a.adapter->model() != model_.get()) {
      throw InvalidInput("adapter '" + a.adapter->path() + "' was loaded for another model: load it with this "
                         "Generator's load_adapter()");
    }
    handles.push_back(a.adapter->get());
    scales.push_back(a.scale);
  }
  if (llama_set_adapters_lora(ctx_.get(), handles.data(), handles.size(), scales.data()) != 0) {
    throw GenerationFailure("llama.cpp refused to attach the LoRA adapters");
  }
  attached_ = adapters;
  // K/V computed with other adapters would not be what these adapters compute.
  llama_memory_clear(llama_get_memory(ctx_.get()), true);
  set_cached_size(0);
}

size_t Session::keep_prefix(const std::vector<llama_token>& tokens, size_t limit) {
  size_t reuse = 0;
  const size_t n = std::min({exact_, tokens.size(), limit});
  while (reuse < n && cached_[reuse] == tokens[reuse]) ++reuse;
  if (reuse < cached_.size()) {
    llama_memory_t mem = llama_get_memory(ctx_.get());
    if (!llama_memory_seq_rm(mem, 0, static_cast<llama_pos>(reuse), -1)) {
      llama_memory_clear(mem, true);
      reuse = 0;
    }
    set_cached_size(reuse);
  }
  return reuse;
}

void Session::rollback() {
  // After a failed or aborted llama_decode some ubatches may sit in the cache
  // beyond what cached_ records: drop them so cache and bookkeeping agree.
  llama_memory_t mem = llama_get_memory(ctx_.get());
  if (!llama_memory_seq_rm(mem, 0, static_cast<llama_pos>(cached_.size()), -1)) {
    llama_memory_clear(mem, true);
    set_cached_size(0);
  }
}

void Session::decode(const llama_token* tokens, size_t n, size_t logits_from, const LogitsSink& on_logits,
                     const StepCheck& between_steps) {
  llama_batch& batch = batch_->get();
  for (size_t start = 0; start < n; start += n_batch_) {
    if (between_steps) between_steps();
    const size_t count = std::min<size_t>(n_batch_, n - start);
    batch.n_tokens = static_cast<int32_t>(count);
    for (size_t j = 0; j < count; ++j) {
      batch.token[j] = tokens[start + j];
      batch.pos[j] = static_cast<llama_pos>(cached_.size() + j);
      batch.n_seq_id[j] = 1;
      batch.seq_id[j][0] = 0;
      batch.logits[j] = start + j >= logits_from;
    }
    const int32_t rc = llama_decode(ctx_.get(), batch);
    if (rc != 0) {
      rollback();
      if (rc == 2 || abort_requested(this)) throw Cancelled("generation cancelled");
      if (rc == 1) {
        throw ContextOverflow("no room left in the KV cache (n_ctx=" + std::to_string(n_ctx_) +
                              "): use a larger n_ctx or a shorter prompt");
      }
      throw GenerationFailure("llama_decode failed with code " + std::to_string(rc) +
                              ": the model could not evaluate the batch; try again, or reload the model");
    }
    append_cached(tokens + start, count, true);
    if (on_logits) {
      for (size_t j = (logits_from > start ? logits_from - start : 0); j < count; ++j) {
        const float* row = llama_get_logits_ith(ctx_.get(), static_cast<int32_t>(j));
        if (!row) throw GenerationFailure("llama.cpp returned no logits for a position that asked for them");
        on_logits(start + j, row);
      }
    }
  }
}
std::unique_ptr<llama_sampler, SamplerDeleter> Session::make_sampler(const SamplingOptions& s) const {
  llama_sampler_chain_params params = llama_sampler_chain_default_params();
  params.no_perf = true;
  std::unique_ptr<llama_sampler, SamplerDeleter> chain(llama_sampler_chain_init(params));
  if (s.repeat_penalty != 1.0f && s.repeat_last_n != 0) {
    llama_sampler_chain_add(chain.get(), llama_sampler_init_penalties(model_->info().n_vocab, s.repeat_last_n,
                                                                      s.repeat_penalty, 0.0f, 0.0f));
  }
  if (!s.grammar.empty()) {
    LogCapture capture;
    llama_sampler* grammar = llama_sampler_init_grammar(model_->vocab(), s.grammar.c_str(), "root");
    if (!grammar) {
      throw InvalidInput("the grammar does not parse as GBNF with a 'root' rule: " + capture.messages());
    }
    llama_sampler_chain_add(chain.get(), grammar);
  }
  if (s.temperature <= 0.0f) {
    llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
    return chain;
  }
  if (s.top_k > 0) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(s.top_k));
  if (s.top_p < 1.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(s.top_p, 1));
  if (s.min_p > 0.0f) llama_sampler_chain_add(chain.get(), llama_sampler_init_min_p(s.min_p, 1));
  llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(s.temperature));
  llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(s.seed));
  return chain;
}

Result Session::generate(const Request& request, const PieceCallback& on_piece, const StepCheck& between_steps) {
  const std::unique_lock<std::mutex> lock = claim();
  const std::shared_ptr<CancelToken> token = request.cancel ? request.cancel : std::make_shared<CancelToken>();
  {
    std::lock_guard<std::mutex> guard(token_mutex_);
    running_.store(token.get());
  }
  // A local class of a member function has the member function's access.
  struct Unregister {
    Session* session;
    ~Unregister() {
      std::lock_guard<std::mutex> guard(session->token_mutex_);
      session->running_.store(nullptr);
    }
  } unregister{this};
  const StepCheck step = [&] {
    if (token->cancelled()) throw Cancelled("generation cancelled");
    if (between_steps) between_steps();
  };
  step();

  Result result;
  Timings& t = result.timings;
  const auto t0 = Clock::now();
  std::vector<llama_token> prompt;
  if (request.prompt_tokens) {
    prompt = *request.prompt_tokens;
    model_->check_tokens(prompt, "prompt token");
  } else {
    prompt = model_->tokenize(request.prompt, true, true);
    t.tokenize_ms = ms_between(t0, Clock::now());
  }
  if (prompt.empty()) throw InvalidInput("the prompt is empty: give at least one token of text");
  if (request.max_tokens <= 0) throw InvalidInput("max_tokens must be >= 1");
  if (!request.splices.empty() && request.truncate_left) {
    throw InvalidInput("truncate='left' cannot drop tokens from a prompt with spliced chunks: splice fewer chunks");
  }

  // At least one generated token must fit behind the prompt.
  if (prompt.size() >= n_ctx_) {
    if (!request.truncate_left) {
      throw ContextOverflow("the prompt is " + std::to_string(prompt.size()) + " tokens but the context holds " +
                            std::to_string(n_ctx_) + ": shorten it, create the Generator with a larger n_ctx (model "
                            "trained for " + std::to_string(model_->info().n_ctx_train) +
                            "), or pass truncate='left'");
    }
    const size_t room = std::max<size_t>(1, std::min<size_t>(request.max_tokens, n_ctx_ / 2));
    const size_t keep = n_ctx_ - room;
    const bool has_bos = llama_vocab_get_add_bos(model_->vocab()) && prompt.front() == llama_vocab_bos(model_->vocab());
    std::vector<llama_token> kept;
    if (has_bos) kept.push_back(prompt.front());
    kept.insert(kept.end(), prompt.end() - static_cast<long>(keep - kept.size()), prompt.end());
    t.truncated_tokens = static_cast<int32_t>(prompt.size() - kept.size());
    prompt = std::move(kept);
  }
  t.prompt_tokens = static_cast<int32_t>(prompt.size());
  check_splices(request.splices, prompt.size());

  auto sampler = make_sampler(request.sampling);
  attach(request.adapters);

  // Prefix reuse: keep the cached K/V of the longest common prefix, evaluate the
  // rest; the last prompt token is always evaluated, for its logits. Reuse stops
  // where the first splice starts: its chunk comes from its state.
  const size_t reuse_limit = request.splices.empty() ? prompt.size() - 1 : request.splices.front().start;
  const size_t reuse = keep_prefix(prompt, request.reuse_prefix ? reuse_limit : 0);
  t.reused_tokens = static_cast<int32_t>(reuse);

  const auto t_prefill = Clock::now();
  const size_t n_new = prompt.size() - reuse;
  if (request.splices.empty()) {
    decode(prompt.data() + reuse, n_new, n_new - 1, {}, step);
  } else {
    prefill_spliced(prompt, reuse, request.splices, step, t);
  }
  const auto t_prefilled = Clock::now();
  if (request.return_logits) {
    const float* row = llama_get_logits_ith(ctx_.get(), -1);
    if (!row) throw GenerationFailure("llama.cpp returned no logits for the prompt's last token");
    result.logits.assign(row, row + model_->info().n_vocab);
  }
  t.prefill_tokens = static_cast<int32_t>(n_new) - t.spliced_tokens;
  t.prefill_ms = ms_between(t_prefill, t_prefilled);
  t.prefill_tokens_per_s = per_second(t.prefill_tokens, t.prefill_ms);

  TextAssembler text(request.stop);
  auto emit = [&](const std::string& piece) {
    if (piece.empty()) return;
    result.text += piece;
    if (on_piece) on_piece(piece);
  };

  llama_token next = llama_sampler_sample(sampler.get(), ctx_.get(), -1);
  const auto t_first = Clock::now();
  auto t_last = t_first;
  t.ttft_ms = ms_between(t0, t_first);
  result.stop_reason = "length";
  while (true) {
    if (!request.sampling.ignore_eos && model_->is_eog(next)) {
      result.stop_reason = "eos";
      break;
    }
    result.tokens.push_back(next);
    emit(text.push(model_->token_piece(next, false)));
    if (text.stopped()) {
      result.stop_reason = "stop";
      break;
    }
    if (static_cast<int32_t>(result.tokens.size()) >= request.max_tokens) break;
    if (cached_.size() + 1 >= n_ctx_) {
      result.stop_reason = "context_full";
      break;
    }
    decode(&next, 1, 0, {}, step);
    next = llama_sampler_sample(sampler.get(), ctx_.get(), -1);
    t_last = Clock::now();
    ++t.decode_tokens;
  }
  emit(text.finish());
  const auto t_end = Clock::now();
  t.decode_ms = ms_between(t_first, t_last);
  t.decode_tokens_per_s = per_second(t.decode_tokens, t.decode_ms);
  t.total_ms = ms_between(t0, t_end);
  return result;
}

std::vector<double> Session::log_probs(const std::vector<llama_token>& context,
                                       const std::vector<llama_token>& continuation,
                                       const std::vector<AttachedAdapter>& adapters, const StepCheck& between_steps) {
  const std::unique_lock<std::mutex> lock = claim();
  if (context.empty()) throw InvalidInput("the context is empty: give at least one token (e.g. BOS)");
  if (continuation.empty()) throw InvalidInput("the continuation is empty: give at least one token");
  model_->check_tokens(context, "context token");
  model_->check_tokens(continuation, "continuation token");
  // The continuation's last token is scored, never evaluated.
  std::vector<llama_token> tokens(context);
  tokens.insert(tokens.end(), continuation.begin(), continuation.end() - 1);
  if (tokens.size() > n_ctx_) {
    throw ContextOverflow("context and continuation are " + std::to_string(tokens.size() + 1) +
                          " tokens but the context holds " + std::to_string(n_ctx_) +
                          ": shorten them, or create the Generator with a larger n_ctx");
  }
  attach(adapters);

  // Reuse the cached prefix, but re-evaluate from the context's last token: its
  // logits (the first continuation token's distribution) are not cached.
  const size_t first = context.size() - 1;
  const size_t reuse = keep_prefix(tokens, first);
  const int32_t n_vocab = model_->info().n_vocab;
  std::vector<double> out(continuation.size());
  auto score = [&](size_t index, const float* logits) {
    const size_t k = reuse + index - first;  // continuation token predicted at this position
    const float max = *std::max_element(logits, logits + n_vocab);
    double sum = 0.0;
    for (int32_t v = 0; v < n_vocab; ++v) sum += std::exp(static_cast<double>(logits[v]) - max);
    out[k] = static_cast<double>(logits[continuation[k]]) - max - std::log(sum);
  };
  decode(tokens.data() + reuse, tokens.size() - reuse, first - reuse, score, between_steps);
  return out;
}

}  // namespace bakeoff
