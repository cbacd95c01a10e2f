#include "lora.h"

#include <cstdlib>
#include <vector>

#include "errors.h"
#include "log.h"

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

std::string LoraAdapter::meta(const std::string& key) const {
  std::vector<char> buf(256);
  int32_t n = llama_adapter_meta_val_str(adapter_.get(), key.c_str(), buf.data(), buf.size());
  if (n < 0) return "";
  if (static_cast<size_t>(n) >= buf.size()) {
    buf.resize(n + 1);
    n = llama_adapter_meta_val_str(adapter_.get(), key.c_str(), buf.data(), buf.size());
  }
  return std::string(buf.data(), n);
}

}  // namespace bakeoff
