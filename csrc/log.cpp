#include "log.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include <llama.h>

namespace bakeoff {

namespace {

bool debug_enabled() {
  static const bool enabled = std::getenv("BAKEOFF_DEBUG") != nullptr;
  return enabled;
}

// The innermost capture alive on this thread, or null.
thread_local LogCapture* t_capture = nullptr;

}  // namespace

// Process-wide state of the dispatcher; every read and write holds `mutex`, and no
// llama.cpp call made under it logs.
struct LogDispatch {
  static std::mutex mutex;
  static int active;                     // LogCaptures alive, on all threads
  static ggml_log_callback foreign_cb;   // another library's logger we took over from, or null
  static void* foreign_data;

  static void callback(ggml_log_level level, const char* text, void*) {
    if (LogCapture* capture = t_capture) {
      capture->add(level, text);
      return;
    }
    ggml_log_callback cb = nullptr;
    void* data = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex);
      cb = foreign_cb;
      data = foreign_data;
    }
    if (cb) {
      cb(level, text, data);  // outside the lock: that logger may take locks of its own (the GIL)
    } else if (debug_enabled()) {
      std::fputs(text, stderr);
    }
  }

  // Point llama.cpp at the dispatcher in place of `previous`. llama.cpp stores the
  // callback and its data as two plain fields that a logging thread may read while
  // we write them: keeping the previous logger's data (which the dispatcher ignores)
  // changes only the callback field, so no thread can read a mismatched pair.
  static void take_over(void* previous_data) { llama_log_set(&LogDispatch::callback, previous_data); }
};

std::mutex LogDispatch::mutex;
int LogDispatch::active = 0;
ggml_log_callback LogDispatch::foreign_cb = nullptr;
void* LogDispatch::foreign_data = nullptr;

void install_quiet_logger() {
  std::lock_guard<std::mutex> lock(LogDispatch::mutex);
  LogDispatch::foreign_cb = nullptr;  // at import we choose silence over llama.cpp's default stderr logger
  LogDispatch::foreign_data = nullptr;
  llama_log_set(&LogDispatch::callback, nullptr);
}

LogCapture::LogCapture() : outer_(t_capture) {
  t_capture = this;
  std::lock_guard<std::mutex> lock(LogDispatch::mutex);
  if (LogDispatch::active++ == 0) {
    ggml_log_callback cb = nullptr;
    void* data = nullptr;
    llama_log_get(&cb, &data);
    if (cb != &LogDispatch::callback) {
      LogDispatch::foreign_cb = cb;
      LogDispatch::foreign_data = data;
      LogDispatch::take_over(data);
    }
  }
}

LogCapture::~LogCapture() {
  t_capture = outer_;
  std::lock_guard<std::mutex> lock(LogDispatch::mutex);
  if (--LogDispatch::active == 0 && LogDispatch::foreign_cb) {
    ggml_log_callback cb = nullptr;
    void* data = nullptr;
    llama_log_get(&cb, &data);
    // Give the log back only if nobody replaced the dispatcher meanwhile.
    if (cb == &LogDispatch::callback) llama_log_set(LogDispatch::foreign_cb, LogDispatch::foreign_data);
    LogDispatch::foreign_cb = nullptr;
    LogDispatch::foreign_data = nullptr;
  }
}

void LogCapture::add(ggml_log_level level, const char* text) {
  if (debug_enabled()) std::fputs(text, stderr);
  if (level != GGML_LOG_LEVEL_ERROR && level != GGML_LOG_LEVEL_WARN) return;
  std::string line(text);
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
  if (line.empty() || lines_.size() > 4000) return;
  if (!lines_.empty()) lines_ += "; ";
  lines_ += line;
}

std::string LogCapture::messages() const { return lines_; }

}  // namespace bakeoff
