#pragma once
// One loaded GGUF model (weights memory-mapped), its metadata, tokenizer and chat
// template. Shared (std::shared_ptr) by every Session and LoraAdapter built on it,
// so the weights outlive them and are never loaded twice.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <llama.h>

namespace bakeoff {

struct ModelOptions {
  int32_t n_gpu_layers = 0;  // layers to offload; negative = all
  bool use_mmap = true;
  // llama.cpp's extra CPU buffer types (weight repacking, AMX). Whether to use them
  // is policy, decided in Python (engine.hardware): llama.cpp's AMX path crashes on
  // multi-token batches (upstream issue 20824), so "auto" turns them off there.
  bool use_extra_bufts = true;
};

struct ModelInfo {
  std::string path;
  std::string name;
  std::string architecture;
  std::string description;   // llama.cpp's one-line description, e.g. "llama ?B Q4_1"
  std::string quantization;  // file type, e.g. "Q4_1"
  uint64_t n_params = 0;
  uint64_t size_bytes = 0;   // bytes of all weight tensors
  int32_t n_ctx_train = 0;
  int32_t n_layer = 0;
  int32_t n_embd = 0;
  int32_t n_vocab = 0;
  std::string chat_template;  // empty when the GGUF carries none
  int32_t n_gpu_layers_requested = 0;
  int32_t n_layers_offloaded = 0;
  bool extra_buffer_types = true;  // the use_extra_bufts the model was loaded with
};

struct ModelDeleter {
  void operator()(llama_model* m) const;  // frees with llama.cpp's log silenced
};

class Model {
 public:
  // Loads path; throws ModelLoadError with llama.cpp's reason on failure.
  // Call with the GIL released: it reads the file.
  Model(const std::string& path, const ModelOptions& options);

  const ModelInfo& info() const { return info_; }
  llama_model* get() const { return model_.get(); }
  const llama_vocab* vocab() const { return vocab_; }

  // The value of a GGUF metadata key, or "" when absent.
  std::string meta(const std::string& key) const;

  // text is a view: the binding passes Python's own buffer, uncopied. Throws InvalidInput
  // for text over llama.cpp's 2 GiB limit.
  std::vector<llama_token> tokenize(std::string_view text, bool add_special, bool parse_special) const;
  // Bytes of the tokens (may be invalid UTF-8 when cut mid-character).
  std::string detokenize(const std::vector<llama_token>& tokens, bool render_special) const;
  std::string token_piece(llama_token token, bool render_special) const;
  // Throws InvalidInput naming `what` unless every id is in [0, n_vocab).
  void check_tokens(const std::vector<llama_token>& tokens, const std::string& what) const;
  bool is_eog(llama_token token) const { return llama_vocab_is_eog(vocab_, token); }

  // Render (role, content) messages with the model's own template (or tmpl when
  // not empty); add_assistant appends the assistant turn opener.
  std::string apply_chat_template(const std::vector<std::pair<std::string, std::string>>& messages,
                                  bool add_assistant, const std::string& tmpl = "") const;

 private:
  std::unique_ptr<llama_model, ModelDeleter> model_;
  const llama_vocab* vocab_ = nullptr;
  ModelInfo info_;
};

// llama_backend_init(), once per process (it loads the ggml backends registered
// at build time); every path that needs the backends calls this, never llama.cpp's.
void backend_init_once();

// Checks that path exists and starts with the GGUF magic; throws ModelLoadError
// (or AdapterLoadError when for_adapter) naming the problem.
void check_gguf_file(const std::string& path, bool for_adapter);

}  // namespace bakeoff
