#pragma once
// A GGUF LoRA adapter loaded once against a base Model. Sessions attach it per
// request with a scale; the base weights are shared, never copied.
#include <map>
#include <memory>
#include <string>

#include <llama.h>

#include "model.h"

namespace bakeoff {

struct AdapterDeleter {
  void operator()(llama_adapter_lora* a) const { llama_adapter_lora_free(a); }
};

class LoraAdapter {
 public:
  // Loads path for model; throws AdapterLoadError when the file is not a LoRA
  // adapter or does not match the model (architecture, tensor names or shapes).
  LoraAdapter(std::shared_ptr<Model> model, const std::string& path);

  llama_adapter_lora* get() const { return adapter_.get(); }
  const Model& model() const { return *model_; }
  const std::string& path() const { return path_; }
  float alpha() const { return alpha_; }
  // The value of a GGUF metadata key as text, or "" when absent.
  std::string meta(const std::string& key) const;
  // Every GGUF key/value of the adapter file, values as llama.cpp renders them as
  // text (arrays as "[a, b]"); invalid UTF-8 becomes U+FFFD, so Python can read it.
  std::map<std::string, std::string> metadata() const;

 private:
  std::shared_ptr<Model> model_;  // declared first: the adapter is freed before the model
  std::unique_ptr<llama_adapter_lora, AdapterDeleter> adapter_;
  std::string path_;
  float alpha_ = 0.0f;
};

}  // namespace bakeoff
