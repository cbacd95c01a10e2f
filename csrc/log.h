#pragma once
// llama.cpp logs through one process-wide callback. We install one dispatcher for
// good and never point llama.cpp at anything that can die: each thread that loads a
// file registers a LogCapture of its own (a thread-local pointer), so threads
// loading models, adapters and contexts at the same time each collect their own
// error lines. Without a capture the log is silent (unless BAKEOFF_DEBUG is set,
// then it goes to stderr, never stdout).
#include <string>

#include <ggml.h>

namespace bakeoff {

// Install the dispatcher (idempotent). Called at module import.
void install_quiet_logger();

// RAII: for its lifetime, llama.cpp's log lines written by this thread are silenced
// and its warnings and errors collected. When another library installed its own
// logger since our import (llama_cpp does), the dispatcher takes over while any
// capture is alive, forwards other threads' lines to that logger, and hands the log
// back to it when the last capture ends. Construct and destroy on the same thread.
class LogCapture {
 public:
  LogCapture();
  ~LogCapture();
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  // The captured warning and error lines, joined with "; ".
  std::string messages() const;

 private:
  friend struct LogDispatch;
  LogCapture* outer_ = nullptr;  // the capture this one nests in, on the same thread
  std::string lines_;
  void add(ggml_log_level level, const char* text);
};

}  // namespace bakeoff
