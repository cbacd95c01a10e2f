#include "text.h"

#include <algorithm>

namespace bakeoff {
namespace {

const char kReplacement[] = "\xEF\xBF\xBD";

// Length of the UTF-8 sequence at p (avail bytes left). Returns 0 when the bytes
// are invalid; sets *incomplete when they are a valid start cut short by avail.
// *prefix is the length of the longest valid start (>= 1), which is replaced by one
// U+FFFD, as Python's decoder does.
size_t utf8_sequence(const unsigned char* p, size_t avail, bool* incomplete, size_t* prefix) {
  *incomplete = false;
  *prefix = 1;
  const unsigned char c = p[0];
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;  // no UTF-16 surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;
  }
  for (size_t i = 1; i < len; ++i) {
    if (i >= avail) {
      *incomplete = true;
      return 0;
    }
    const unsigned char b = p[i];
    const bool ok = i == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
    if (!ok) return 0;
    *prefix = i + 1;
  }
  return len;
}

}  // namespace

std::string sanitize_utf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t i = 0;
  while (i < s.size()) {
    bool incomplete = false;
    size_t prefix = 1;
    const size_t n = utf8_sequence(p + i, s.size() - i, &incomplete, &prefix);
    if (n == 0) {
      out += kReplacement;
      i += prefix;
    } else {
      out.append(s, i, n);
      i += n;
    }
  }
  return out;
}

TextAssembler::TextAssembler(std::vector<std::string> stops) : stops_(std::move(stops)) {
  stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

std::string TextAssembler::release(size_t end, bool final) {
  if (!final) {
    // Hold back a trailing character that is valid so far but not complete yet.
    const auto* p = reinterpret_cast<const unsigned char*>(raw_.data());
    size_t i = emitted_;
    while (i < end) {
      bool incomplete = false;
      size_t prefix = 1;
      const size_t n = utf8_sequence(p + i, end - i, &incomplete, &prefix);
      if (incomplete) {
        end = i;
        break;
      }
      i += n == 0 ? prefix : n;
    }
  }
  std::string out = sanitize_utf8(raw_.substr(emitted_, end - emitted_));
  emitted_ = end;
  return out;
}

std::string TextAssembler::push(const std::string& bytes) {
  if (stopped_) return "";
  raw_ += bytes;
  size_t first = std::string::npos;
  for (const auto& stop : stops_) first = std::min(first, raw_.find(stop, emitted_));
  if (first != std::string::npos) {
    raw_.resize(first);
    stopped_ = true;
    return release(raw_.size(), true);
  }
  size_t hold = 0;
  const size_t pending = raw_.size() - emitted_;
  for (const auto& stop : stops_) {
    for (size_t k = std::min(stop.size() - 1, pending); k > hold; --k) {
      if (raw_.compare(raw_.size() - k, k, stop, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  return release(raw_.size() - hold, false);
}

std::string TextAssembler::finish() {
  if (stopped_) return "";
  return release(raw_.size(), true);
}

}  // namespace bakeoff
