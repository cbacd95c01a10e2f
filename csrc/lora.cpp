#include "lora.h"

#include <cstdlib>
#include <optional>

#include "errors.h"
#include "llama_sizes.h"
#include "log.h"
#include "text.h"

namespace bakeoff {

LoraAdapter::LoraAdapter(std::shared_ptr<Model> model, const std::string& path)
    : model_(std::move(model)), path_(path) {
  check_gguf_file(path, true);
  LogCapture capture;
  adapter_.reset(llama_adapter_lora_init(model_->get(), path.c_str()));
  if (!adapter_) {
    std::string reason = capture.messages();
    throw AdapterLoadError("failed to load LoRA adapter '" + path + "' for model '" + model_->info().path +
                           "': " + (reason.empty() ? std::string("llama.cpp gave no reason") : reason) +
                           " — use an adapter trained for this base model (same architecture and tensor shapes),"
                           " converted with convert_lora_to_gguf.py");
  }
  const std::string alpha = meta("adapter.lora.alpha");
  if (!alpha.empty()) alpha_ = std::strtof(alpha.c_str(), nullptr);
}

namespace {

// An adapter's metadata string (a llama_adapter_meta_* getter), sanitized as text for
// Python; nullopt when absent.
template <typename Read>
std::optional<std::string> read_meta_string(Read read, const std::string& what, const std::string& path) {
  auto value = read_grown<AdapterLoadError>(read, 256, "read " + what + " of adapter '" + path + "'",
                                            "the file's metadata may be damaged: export the adapter again");
  if (value) *value = sanitize_utf8(*value);
  return value;
}

}  // namespace

std::string LoraAdapter::meta(const std::string& key) const {
  auto value = read_meta_string(
      [&](char* buf, size_t size) { return llama_adapter_meta_val_str(adapter_.get(), key.c_str(), buf, size); },
      "metadata key '" + key + "'", path_);
  return value.value_or("");
}

std::map<std::string, std::string> LoraAdapter::metadata() const {
  std::map<std::string, std::string> out;
  const int32_t count = llama_adapter_meta_count(adapter_.get());
  for (int32_t i = 0; i < count; ++i) {
    const std::string index = std::to_string(i);
    auto key = read_meta_string(
        [&](char* buf, size_t size) { return llama_adapter_meta_key_by_index(adapter_.get(), i, buf, size); },
        "the name of metadata key #" + index, path_);
    auto value = read_meta_string(
        [&](char* buf, size_t size) { return llama_adapter_meta_val_str_by_index(adapter_.get(), i, buf, size); },
        "the value of metadata key #" + index, path_);
    if (key && value) out.emplace(std::move(*key), std::move(*value));
  }
  return out;
}

}  // namespace bakeoff
