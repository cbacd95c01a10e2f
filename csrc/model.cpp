#include "model.h"

#include <algorithm>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <mutex>

#include "errors.h"
#include "llama_sizes.h"
#include "log.h"
#include "text.h"

namespace bakeoff {

void backend_init_once() {
  static std::once_flag once;
  std::call_once(once, [] { llama_backend_init(); });
}

void ModelDeleter::operator()(llama_model* m) const {
  LogCapture quiet;
  llama_model_free(m);
}

void check_gguf_file(const std::string& path, bool for_adapter) {
  auto raise = [&](const std::string& what) {
    if (for_adapter) throw AdapterLoadError(what);
    throw ModelLoadError(what);
  };
  std::ifstream file(path, std::ios::binary);
  if (!file) raise("cannot open '" + path + "': check the path exists and is readable");
  char magic[4] = {0, 0, 0, 0};
  file.read(magic, 4);
  if (file.gcount() != 4 || std::memcmp(magic, "GGUF", 4) != 0) {
    raise("'" + path + "' is not a GGUF file (no GGUF magic): convert it with llama.cpp's convert_hf_to_gguf.py"
          " (or convert_lora_to_gguf.py for an adapter)");
  }
}

Model::Model(const std::string& path, const ModelOptions& options) {
  backend_init_once();
  check_gguf_file(path, false);
  llama_model_params params = llama_model_default_params();
  params.n_gpu_layers = options.n_gpu_layers;
  params.load_mode = options.use_mmap ? LLAMA_LOAD_MODE_MMAP : LLAMA_LOAD_MODE_NONE;
  params.use_extra_bufts = options.use_extra_bufts;
  {
    LogCapture capture;
    model_.reset(llama_model_load_from_file(path.c_str(), params));
    if (!model_) {
      std::string reason = capture.messages();
      std::string hint = "check that the file is complete (re-download it) and that its architecture is one "
                         "llama.cpp supports";
      if (reason.find("unknown model architecture") != std::string::npos) {
        hint = "this llama.cpp build does not support the model's architecture: use a supported model or "
               "upgrade llama-cpp-python and rebuild";
      } else if (reason.find("bounds") != std::string::npos || reason.find("truncat") != std::string::npos ||
                 reason.find("read") != std::string::npos) {
        hint = "the file looks truncated or corrupted: download it again";
      }
      throw ModelLoadError("failed to load GGUF model '" + path + "': " +
                           (reason.empty() ? std::string("llama.cpp gave no reason") : reason) + " — " + hint);
    }
  }
  vocab_ = llama_model_get_vocab(model_.get());
  info_.path = path;
  info_.name = meta("general.name");
  info_.architecture = meta("general.architecture");
  char buf[256];
  if (llama_model_desc(model_.get(), buf, sizeof buf) > 0) info_.description = buf;
  info_.quantization = llama_ftype_name(llama_model_ftype(model_.get()));
  // llama_ftype_name spells it "Q4_1" or "MOSTLY_Q4_1" depending on the version.
  const std::string mostly = "MOSTLY_";
  if (info_.quantization.rfind(mostly, 0) == 0) info_.quantization = info_.quantization.substr(mostly.size());
  info_.n_params = llama_model_n_params(model_.get());
  info_.size_bytes = llama_model_size(model_.get());
  info_.n_ctx_train = llama_model_n_ctx_train(model_.get());
  info_.n_layer = llama_model_n_layer(model_.get());
  info_.n_embd = llama_model_n_embd(model_.get());
  info_.n_vocab = llama_vocab_n_tokens(vocab_);
  if (const char* tmpl = llama_model_chat_template(model_.get(), nullptr)) info_.chat_template = sanitize_utf8(tmpl);
  info_.n_gpu_layers_requested = options.n_gpu_layers;
  info_.extra_buffer_types = options.use_extra_bufts;
  if (llama_supports_gpu_offload() && options.n_gpu_layers != 0) {
    const int32_t all = info_.n_layer + 1;  // repeating layers plus the output layer
    info_.n_layers_offloaded = options.n_gpu_layers < 0 ? all : std::min(options.n_gpu_layers, all);
  }
}

std::string Model::meta(const std::string& key) const {
  const auto value = read_grown<ModelLoadError>(
      [&](char* buf, size_t size) { return llama_model_meta_val_str(model_.get(), key.c_str(), buf, size); }, 256,
      "read metadata key '" + key + "' of model '" + info_.path + "'",
      "the file's metadata may be damaged: download the model again");
  return sanitize_utf8(value.value_or(""));  // an untrusted file's bytes; Python needs UTF-8
}

std::vector<llama_token> Model::tokenize(std::string_view text, bool add_special, bool parse_special) const {
  const int32_t text_len = llama_length(text.size(), "the text to tokenize", "bytes");
  // At most one id per byte plus the special ones, but no more than llama.cpp can count;
  // when that is too few, it says how many it needs (n < 0) and the second call has them.
  std::vector<llama_token> tokens(std::min(text.size() + 8, kLlamaMaxLength));
  auto run = [&] {
    return llama_tokenize(vocab_, text.data(), text_len, tokens.data(),
                          llama_length(tokens.size(), "the token buffer", "tokens"), add_special, parse_special);
  };
  int32_t n = run();
  if (n == INT32_MIN) throw InvalidInput("text is too long to tokenize: split it");
  if (n < 0) {
    tokens.resize(-static_cast<int64_t>(n));
    n = run();
  }
  tokens.resize(std::max(n, 0));
  return tokens;
}

std::string Model::token_piece(llama_token token, bool render_special) const {
  char buf[128];
  int32_t n = llama_token_to_piece(vocab_, token, buf, sizeof buf, 0, render_special);
  if (n >= 0) return std::string(buf, n);
  std::string out(-static_cast<int64_t>(n), '\0');
  n = llama_token_to_piece(vocab_, token, out.data(), llama_length(out.size(), "a token's text", "bytes"), 0,
                           render_special);
  out.resize(std::max(n, 0));
  return out;
}

void Model::check_tokens(const std::vector<llama_token>& tokens, const std::string& what) const {
  for (llama_token t : tokens) {
    if (t < 0 || t >= info_.n_vocab) {
      throw InvalidInput(what + " id " + std::to_string(t) + " is outside the vocabulary (0.." +
                         std::to_string(info_.n_vocab - 1) + "): pass ids made by this model's tokenize()");
    }
  }
}

std::string Model::detokenize(const std::vector<llama_token>& tokens, bool render_special) const {
  check_tokens(tokens, "token");
  const int32_t n_tokens = llama_length(tokens.size(), "the tokens to detokenize", "tokens");
  std::string out(std::min(tokens.size() * 8 + 16, kLlamaMaxLength), '\0');
  auto run = [&] {
    return llama_detokenize(vocab_, tokens.data(), n_tokens, out.data(),
                            llama_length(out.size(), "the detokenized text", "bytes"), false, render_special);
  };
  int32_t n = run();
  if (n < 0) {
    out.resize(-static_cast<int64_t>(n));
    n = run();
  }
  out.resize(std::max(n, 0));
  return out;
}

std::string Model::apply_chat_template(const std::vector<std::pair<std::string, std::string>>& messages,
                                       bool add_assistant, const std::string& tmpl) const {
  const std::string& chosen = tmpl.empty() ? info_.chat_template : tmpl;
  if (chosen.empty()) {
    throw InvalidInput("model '" + info_.path + "' has no chat template: pass a plain prompt string instead of "
                       "messages, or give chat_template=");
  }
  std::vector<llama_chat_message> chat;
  size_t total = 0;
  for (const auto& [role, content] : messages) {
    chat.push_back({role.c_str(), content.c_str()});
    total += role.size() + content.size();
  }
  llama_length(total, "the text of the chat messages", "bytes");
  auto rendered = read_grown<InvalidInput>(
      [&](char* buf, size_t size) {
        return llama_chat_apply_template(chosen.c_str(), chat.data(), chat.size(), add_assistant, buf,
                                         llama_length(size, "the rendered chat", "bytes"));
      },
      std::min(2 * total + 256, kLlamaMaxLength), "render the chat template of model '" + info_.path + "'",
      "format the prompt yourself and pass it as a string");
  if (!rendered) {
    throw InvalidInput("llama.cpp does not recognise this model's chat template: format the prompt yourself and "
                       "pass it as a string");
  }
  return std::move(*rendered);
}

}  // namespace bakeoff
