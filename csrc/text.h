#pragma once
// Turns the byte pieces of generated tokens into text that is always valid UTF-8
// and never shows a stop string: a piece that ends mid-character, or a tail that
// could be the start of a stop string, is held back until the next token decides.
#include <string>
#include <vector>

namespace bakeoff {

class TextAssembler {
 public:
  explicit TextAssembler(std::vector<std::string> stops);

  // Appends the bytes of one token; returns the text that is now final (maybe "").
  // After a stop string matched, stopped() is true and the rest is discarded.
  std::string push(const std::string& bytes);
  // Releases whatever is held back at the end of generation (invalid bytes become U+FFFD).
  std::string finish();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string raw_;
  size_t emitted_ = 0;
  bool stopped_ = false;
  std::string release(size_t end, bool final);
};

// s with every invalid UTF-8 sequence replaced by U+FFFD.
std::string sanitize_utf8(const std::string& s);

}  // namespace bakeoff
