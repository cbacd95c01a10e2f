#pragma once
// The monotonic clock of every timing the core reports (Timings, session.h).
#include <chrono>
#include <cstdint>

namespace bakeoff {

using Clock = std::chrono::steady_clock;

inline double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

inline double per_second(int32_t n, double ms) { return ms > 0 ? n * 1000.0 / ms : 0.0; }

}  // namespace bakeoff
