#pragma once
// Typed failures of the native core. bindings.cpp maps each one to its class in
// engine/errors.py, so Python callers only ever see the engine error hierarchy.
#include <stdexcept>
#include <string>

namespace bakeoff {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A model file is missing, not GGUF, truncated, or of an unsupported architecture.
struct ModelLoadError : Error { using Error::Error; };
// A LoRA adapter cannot be loaded or does not match the base model.
struct AdapterLoadError : Error { using Error::Error; };
// The prompt does not fit the context window.
struct ContextOverflow : Error { using Error::Error; };
// Generation stopped because cancel() was called.
struct Cancelled : Error { using Error::Error; };
// Another thread is generating on the same session.
struct Busy : Error { using Error::Error; };
// An argument the caller gave is unusable (bad grammar, no chat template, ...).
struct InvalidInput : Error { using Error::Error; };
// llama.cpp failed while decoding.
struct GenerationFailure : Error { using Error::Error; };

}  // namespace bakeoff
