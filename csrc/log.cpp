#include "log.h"

#include <cstdio>
#include <cstdlib>

#include <llama.h>

namespace bakeoff {
namespace {

bool debug_enabled() {
  static const bool enabled = std::getenv("BAKEOFF_DEBUG") != nullptr;
  return enabled;
}

void quiet_callback(ggml_log_level, const char* text, void*) {
  if (debug_enabled()) std::fputs(text, stderr);
}

}  // namespace

void install_quiet_logger() { llama_log_set(quiet_callback, nullptr); }

LogCapture::LogCapture() {
  llama_log_get(&previous_cb_, &previous_data_);
  llama_log_set(&LogCapture::callback, this);
}

LogCapture::~LogCapture() { llama_log_set(previous_cb_, previous_data_); }

void LogCapture::callback(ggml_log_level level, const char* text, void* self) {
  if (debug_enabled()) std::fputs(text, stderr);
  if (level != GGML_LOG_LEVEL_ERROR && level != GGML_LOG_LEVEL_WARN) return;
  auto* capture = static_cast<LogCapture*>(self);
  std::string line(text);
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
  if (line.empty() || capture->lines_.size() > 4000) return;
  if (!capture->lines_.empty()) capture->lines_ += "; ";
  capture->lines_ += line;
}

std::string LogCapture::messages() const { return lines_; }

}  // namespace bakeoff
