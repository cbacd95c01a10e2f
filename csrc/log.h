#pragma once
// llama.cpp logs through one process-wide callback. We keep it silent (unless
// BAKEOFF_DEBUG is set, then it goes to stderr, never stdout) and, while a file
// is being loaded, capture its error lines so our exceptions can quote them.
#include <string>

#include <ggml.h>

namespace bakeoff {

// Install the quiet logger (idempotent). Called at module import.
void install_quiet_logger();

// RAII: for its lifetime, llama.cpp's log is silenced and its warnings and errors
// are collected; the previous logger is restored afterwards.
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  // The captured warning and error lines, joined with "; ".
  std::string messages() const;

 private:
  ggml_log_callback previous_cb_ = nullptr;
  void* previous_data_ = nullptr;
  std::string lines_;
  static void callback(ggml_log_level level, const char* text, void* self);
};

}  // namespace bakeoff
