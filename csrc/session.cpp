#include "session.h"

#include <algorithm>
#include <chrono>
#include <map>

#include "errors.h"
#include "log.h"
#include "text.h"

namespace bakeoff {
namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

double per_second(int32_t n, double ms) { return ms > 0 ? n * 1000.0 / ms : 0.0; }

ggml_type kv_type_from_name(const std::string& name) {
  static const std::map<std::string, ggml_type> types = {
      {"f32", GGML_TYPE_F32},   {"f16", GGML_TYPE_F16},   {"bf16", GGML_TYPE_BF16},
      {"q8_0", GGML_TYPE_Q8_0}, {"q4_0", GGML_TYPE_Q4_0}, {"q4_1", GGML_TYPE_Q4_1},
      {"q5_0", GGML_TYPE_Q5_0}, {"q5_1", GGML_TYPE_Q5_1}, {"iq4_nl", GGML_TYPE_IQ4_NL},
  };
  auto it = types.find(name);
  if (it == types.end()) {
    throw InvalidInput("unknown kv_type '" + name + "': use one of f16, bf16, f32, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl");
  }
  return it->second;
}

}  // namespace

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
  params.n_seq_max = 1;
  params.n_threads = options.n_threads;
  params.n_threads_batch = options.n_threads_batch;
  params.flash_attn_type = static_cast<llama_flash_attn_type>(options.flash_attn);
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
  n_ctx_ = llama_n_ctx(ctx_.get());
  n_batch_ = llama_n_batch(ctx_.get());
  batch_ = llama_batch_init(static_cast<int32_t>(n_batch_), 0, 1);
  if (options.warmup) {
    const llama_vocab* vocab = model_->vocab();
    llama_token token = llama_vocab_bos(vocab);
    if (token == LLAMA_TOKEN_NULL) token = llama_vocab_eos(vocab);
    if (token == LLAMA_TOKEN_NULL) token = 0;
    decode(&token, 1, true);
    llama_memory_clear(llama_get_memory(ctx_.get()), true);
    cached_.clear();
  }
}

Session::~Session() {
  llama_batch_free(batch_);
  ctx_.reset();  // before the adapters it points at
}

bool Session::abort_requested(void* self) { return static_cast<Session*>(self)->cancel_.load(); }

std::vector<llama_token> Session::cached_tokens() const { return cached_; }

void Session::reset() {
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  if (!lock.owns_lock()) throw Busy("cannot reset while a generation is running: cancel() it first");
  llama_memory_clear(llama_get_memory(ctx_.get()), true);
  cached_.clear();
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
  cached_.clear();
}

void Session::rollback() {
  // After a failed or aborted llama_decode some ubatches may sit in the cache
  // beyond what cached_ records: drop them so cache and bookkeeping agree.
  llama_memory_t mem = llama_get_memory(ctx_.get());
  if (!llama_memory_seq_rm(mem, 0, static_cast<llama_pos>(cached_.size()), -1)) {
    llama_memory_clear(mem, true);
    cached_.clear();
  }
}

void Session::decode(const llama_token* tokens, size_t n, bool logits_last) {
  for (size_t start = 0; start < n; start += n_batch_) {
    const size_t count = std::min<size_t>(n_batch_, n - start);
    batch_.n_tokens = static_cast<int32_t>(count);
    for (size_t j = 0; j < count; ++j) {
      batch_.token[j] = tokens[start + j];
      batch_.pos[j] = static_cast<llama_pos>(cached_.size() + j);
      batch_.n_seq_id[j] = 1;
      batch_.seq_id[j][0] = 0;
      batch_.logits[j] = logits_last && start + j == n - 1;
    }
    const int32_t rc = llama_decode(ctx_.get(), batch_);
    if (rc != 0) {
      rollback();
      if (rc == 2 || cancel_.load()) throw Cancelled("generation cancelled");
      if (rc == 1) {
        throw ContextOverflow("no room left in the KV cache (n_ctx=" + std::to_string(n_ctx_) +
                              "): use a larger n_ctx or a shorter prompt");
      }
      throw GenerationFailure("llama_decode failed with code " + std::to_string(rc) +
                              ": the model could not evaluate the batch; try again, or reload the model");
    }
    cached_.insert(cached_.end(), tokens + start, tokens + start + count);
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

Result Session::generate(const Request& request, const PieceCallback& on_piece) {
  std::unique_lock<std::mutex> lock(busy_, std::try_to_lock);
  if (!lock.owns_lock()) {
    throw Busy("this session is already generating on another thread: wait for it, or use one Generator per thread");
  }
  cancel_.store(false);
  Result result;
  Timings& t = result.timings;
  const auto t0 = Clock::now();

  std::vector<llama_token> prompt = model_->tokenize(request.prompt, true, true);
  const auto t_tokenized = Clock::now();
  t.tokenize_ms = ms_between(t0, t_tokenized);
  if (prompt.empty()) throw InvalidInput("the prompt is empty: give at least one token of text");
  if (request.max_tokens <= 0) throw InvalidInput("max_tokens must be >= 1");

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

  auto sampler = make_sampler(request.sampling);
  attach(request.adapters);

  // Prefix reuse: keep the cached K/V of the longest common prefix, evaluate the rest.
  llama_memory_t mem = llama_get_memory(ctx_.get());
  size_t reuse = 0;
  if (request.reuse_prefix) {
    const size_t limit = std::min(cached_.size(), prompt.size());
    while (reuse < limit && cached_[reuse] == prompt[reuse]) ++reuse;
    if (reuse == prompt.size()) --reuse;  // the last prompt token must be evaluated for its logits
  }
  if (reuse < cached_.size()) {
    if (!llama_memory_seq_rm(mem, 0, static_cast<llama_pos>(reuse), -1)) {
      llama_memory_clear(mem, true);
      reuse = 0;
    }
    cached_.resize(reuse);
  }
  t.reused_tokens = static_cast<int32_t>(reuse);

  const auto t_prefill = Clock::now();
  decode(prompt.data() + reuse, prompt.size() - reuse, true);
  const auto t_prefilled = Clock::now();
  t.prefill_tokens = static_cast<int32_t>(prompt.size() - reuse);
  t.prefill_ms = ms_between(t_prefill, t_prefilled);
  t.prefill_tokens_per_s = per_second(t.prefill_tokens, t.prefill_ms);

  TextAssembler text(request.stop);
  auto emit = [&](const std::string& piece) {
    if (piece.empty()) return;
    result.text += piece;
    if (on_piece) on_piece(piece);
  };

  llama_token token = llama_sampler_sample(sampler.get(), ctx_.get(), -1);
  const auto t_first = Clock::now();
  auto t_last = t_first;
  t.ttft_ms = ms_between(t0, t_first);
  result.stop_reason = "length";
  while (true) {
    if (!request.sampling.ignore_eos && model_->is_eog(token)) {
      result.stop_reason = "eos";
      break;
    }
    result.tokens.push_back(token);
    emit(text.push(model_->token_piece(token, false)));
    if (text.stopped()) {
      result.stop_reason = "stop";
      break;
    }
    if (static_cast<int32_t>(result.tokens.size()) >= request.max_tokens) break;
    if (cached_.size() + 1 >= n_ctx_) {
      result.stop_reason = "context_full";
      break;
    }
    if (cancel_.load()) throw Cancelled("generation cancelled");
    decode(&token, 1, true);
    token = llama_sampler_sample(sampler.get(), ctx_.get(), -1);
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

}  // namespace bakeoff
