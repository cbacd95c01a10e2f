#include "state_shift.h"

#include <cmath>
#include <cstring>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <limits>
#include <vector>

#include <ggml-cpu.h>
#include <ggml.h>

#include "model.h"

namespace bakeoff {
namespace {

// Bounds-checked reads of the native-endian fields llama.cpp writes.
class Reader {
 public:
  explicit Reader(std::string_view bytes) : bytes_(bytes) {}
  template <typename T>
  bool get(T& value) {
    if (bytes_.size() - at_ < sizeof(T)) return false;
    std::memcpy(&value, bytes_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return true;
  }
  bool skip(uint64_t n) {
    if (n > bytes_.size() - at_) return false;
    at_ += static_cast<size_t>(n);
    return true;
  }
  size_t at() const { return at_; }

 private:
  std::string_view bytes_;
  size_t at_ = 0;
};

// Where a state's parts are; see llama_kv_cache::state_write (src/llama-kv-cache.cpp).
struct Layout {
  StateCells cells;
  size_t meta_at = 0;            // n_cells records of (int32 pos, uint32 n_seq_id = 1, int32 seq_id)
  std::vector<size_t> keys_at;   // each layer's key rows: n_cells rows of row_bytes
  size_t row_bytes = 0;
};

constexpr uint32_t kSeqStateMagic = 0xaf143cd8;  // io_magic in src/llama-context.cpp
constexpr size_t kCellMetaBytes = sizeof(int32_t) + sizeof(uint32_t) + sizeof(int32_t);

std::optional<Layout> parse(const KeyRotation& rotation, std::string_view state) {
  Reader in(state);
  uint32_t magic = 0;
  int32_t seq_id = 0;
  uint32_t n_stream = 0;
  Layout layout;
  uint32_t& n_cells = layout.cells.n_cells;
  // llama_context::state_seq_get_data's header (src/llama-context.cpp), then one stream:
  // the Session's cache is unified (every sequence in one stream).
  if (!in.get(magic) || magic != kSeqStateMagic || !in.get(seq_id)) return std::nullopt;
  if (!in.get(n_stream) || n_stream != 1 || !in.get(n_cells) || n_cells == 0) return std::nullopt;
  layout.meta_at = in.at();
  for (uint32_t i = 0; i < n_cells; ++i) {
    int32_t pos = 0;
    uint32_t n_seq_id = 0;
    int32_t seq_id = 0;
    // No per-cell extension (M-RoPE, per-layer n-gram embeddings) and one sequence per
    // cell: what a single sequence's state of a llama-style model holds.
    if (!in.get(pos) || !in.get(n_seq_id) || n_seq_id != 1 || !in.get(seq_id)) return std::nullopt;
    layout.cells.lo = i == 0 ? pos : std::min(layout.cells.lo, pos);
    layout.cells.hi = i == 0 ? pos : std::max(layout.cells.hi, pos);
  }
  uint32_t v_trans = 0;
  uint32_t n_layer = 0;
  if (!in.get(v_trans) || v_trans > 1 || !in.get(n_layer) || n_layer != static_cast<uint32_t>(rotation.n_layer)) {
    return std::nullopt;
  }
  layout.row_bytes = static_cast<size_t>(rotation.n_head_kv) * rotation.head_dim * sizeof(ggml_fp16_t);
  for (uint32_t il = 0; il < n_layer; ++il) {
    int32_t k_type = 0;
    uint64_t k_row = 0;
    if (!in.get(k_type) || k_type != GGML_TYPE_F16 || !in.get(k_row) || k_row != layout.row_bytes) return std::nullopt;
    layout.keys_at.push_back(in.at());
    if (!in.skip(static_cast<uint64_t>(n_cells) * k_row)) return std::nullopt;
  }
  // The values are copied as they are; their records are only walked, so that the
  // whole state is accounted for.
  const uint64_t limit = state.size();
  for (uint32_t il = 0; il < n_layer; ++il) {
    int32_t v_type = 0;
    if (!in.get(v_type)) return std::nullopt;
    uint64_t bytes = 0;
    if (v_trans == 0) {
      uint64_t v_row = 0;
      if (!in.get(v_row) || v_row > limit) return std::nullopt;
      bytes = v_row * n_cells;
    } else {
      uint32_t v_el = 0;
      uint32_t n_embd_v = 0;
      if (!in.get(v_el) || !in.get(n_embd_v) || v_el > limit || n_embd_v > limit) return std::nullopt;
      bytes = static_cast<uint64_t>(v_el) * n_embd_v;
      if (bytes > limit) return std::nullopt;
      bytes *= n_cells;
    }
    if (!in.skip(bytes)) return std::nullopt;
  }
  if (in.at() != state.size()) return std::nullopt;
  return layout;
}

// The rotation by `delta` positions of each pair: (cos, sin) as ggml's CPU RoPE computes
// them with no YaRN extrapolation and an attention factor of 1 (ggml_rope_cache_init
// and rope_yarn in ggml/src/ggml-cpu/ops.cpp), so that the keys come out as llama.cpp's
// K-shift would leave them.
std::vector<float> rotation_table(const KeyRotation& rotation, int32_t delta) {
  std::vector<float> table(static_cast<size_t>(rotation.n_rot));
  const float theta_scale = std::pow(rotation.freq_base, -2.0f / static_cast<float>(rotation.n_rot));
  float theta = static_cast<float>(delta);
  for (int32_t i = 0; i < rotation.n_rot / 2; ++i) {
    const float angle = rotation.freq_scale * theta;
    table[2 * i] = std::cos(angle);
    table[2 * i + 1] = std::sin(angle);
    theta *= theta_scale;
  }
  return table;
}

// Rotates the first n_rot elements of every head of `rows` (n_rows x n_head_kv x head_dim).
// The products are fused as GCC fuses ggml's rotate_pairs (ggml-cpu/ops.cpp) when
// llama.cpp is built for an FMA-capable CPU: the keys then come out bit for bit as
// llama.cpp's K-shift leaves them. A clone for such CPUs keeps the fma in registers.
#if defined(__x86_64__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
void rotate_rows(const KeyRotation& rotation, const std::vector<float>& table, float* rows, size_t n_rows) {
  const size_t n_heads = n_rows * static_cast<size_t>(rotation.n_head_kv);
  const int32_t half = rotation.n_rot / 2;
  // NORM pairs neighbours (2i, 2i + 1); NEOX pairs the halves (i, i + n_rot/2).
  const int32_t stride = rotation.neox ? 1 : 2;
  const int32_t offset = rotation.neox ? half : 1;
  for (size_t h = 0; h < n_heads; ++h) {
    float* head = rows + h * static_cast<size_t>(rotation.head_dim);
    for (int32_t i = 0; i < half; ++i) {
      const float c = table[2 * i];
      const float s = table[2 * i + 1];
      float* x = head + static_cast<size_t>(i) * stride;
      const float x0 = x[0];
      const float x1 = x[offset];
      x[0] = std::fma(x0, c, -(x1 * s));
      x[offset] = std::fma(x0, s, x1 * c);
    }
  }
}

#if defined(__x86_64__)
// The same rotation for one layer's keys, f16 in and out, 8 elements at a time (AVX2,
// FMA, F16C): the products fused the same way, so the result is the same bits. NORM
// needs n_rot % 8 == 0, NEOX (n_rot / 2) % 8 == 0; rotate_keys checks.
__attribute__((target("avx2,fma,f16c")))
void rotate_keys_avx2(const KeyRotation& rotation, const std::vector<float>& table, const ggml_fp16_t* src,
                      ggml_fp16_t* dst, size_t n_heads) {
  const int32_t half = rotation.n_rot / 2;
  const size_t head_dim = static_cast<size_t>(rotation.head_dim);
  const size_t tail = head_dim - static_cast<size_t>(rotation.n_rot);  // not rotated: copied
  // Per element: the cosine and sine of its pair, laid out as the loads below read them.
  alignas(32) float cos_at[512];
  alignas(32) float sin_at[512];
  for (int32_t i = 0; i < half; ++i) {
    if (rotation.neox) {
      cos_at[i] = table[2 * i];
      sin_at[i] = table[2 * i + 1];
    } else {
      cos_at[2 * i] = cos_at[2 * i + 1] = table[2 * i];
      sin_at[2 * i] = sin_at[2 * i + 1] = table[2 * i + 1];
    }
  }
  for (size_t h = 0; h < n_heads; ++h) {
    const ggml_fp16_t* in = src + h * head_dim;
    ggml_fp16_t* out = dst + h * head_dim;
    if (rotation.neox) {
      for (int32_t j = 0; j < half; j += 8) {
        const __m256 x0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + j)));
        const __m256 x1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + half + j)));
        const __m256 c = _mm256_load_ps(cos_at + j);
        const __m256 s = _mm256_load_ps(sin_at + j);
        const __m256 y0 = _mm256_fmadd_ps(x0, c, _mm256_xor_ps(_mm256_mul_ps(x1, s), _mm256_set1_ps(-0.0f)));
        const __m256 y1 = _mm256_fmadd_ps(x0, s, _mm256_mul_ps(x1, c));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm256_cvtps_ph(y0, _MM_FROUND_TO_NEAREST_INT));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + half + j), _mm256_cvtps_ph(y1, _MM_FROUND_TO_NEAREST_INT));
      }
    } else {
      for (int32_t j = 0; j < rotation.n_rot; j += 8) {
        // x = (a0, b0, a1, b1, ...): even lanes become a*c - b*s, odd lanes a*s + b*c.
        const __m256 x = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + j)));
        const __m256 swapped = _mm256_permute_ps(x, 0xB1);  // (b0, a0, b1, a1, ...)
        const __m256 c = _mm256_load_ps(cos_at + j);
        const __m256 s = _mm256_load_ps(sin_at + j);
        const __m256 even = _mm256_fmadd_ps(x, c, _mm256_xor_ps(_mm256_mul_ps(swapped, s), _mm256_set1_ps(-0.0f)));
        const __m256 odd = _mm256_fmadd_ps(swapped, s, _mm256_mul_ps(x, c));
        const __m256 y = _mm256_blend_ps(even, odd, 0xAA);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + j), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT));
      }
    }
    if (tail) std::memcpy(out + rotation.n_rot, in + rotation.n_rot, tail * sizeof(ggml_fp16_t));
  }
}

#endif

// One layer's keys (n_heads heads of head_dim f16) rotated from src into dst.
void rotate_keys(const KeyRotation& rotation, const std::vector<float>& table, const ggml_fp16_t* src,
                 ggml_fp16_t* dst, size_t n_heads, std::vector<float>& values) {
#if defined(__x86_64__)
  static const bool avx2 =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  const int32_t lanes = rotation.neox ? rotation.n_rot / 2 : rotation.n_rot;
  if (avx2 && lanes % 8 == 0 && rotation.n_rot <= 512) {
    rotate_keys_avx2(rotation, table, src, dst, n_heads);
    return;
  }
#endif
  const size_t n_values = n_heads * static_cast<size_t>(rotation.head_dim);
  values.resize(n_values);
  ggml_cpu_fp16_to_fp32(src, values.data(), static_cast<int64_t>(n_values));
  rotate_rows(rotation, table, values.data(), n_heads / static_cast<size_t>(rotation.n_head_kv));
  ggml_cpu_fp32_to_fp16(values.data(), dst, static_cast<int64_t>(n_values));
}

template <typename T>
bool parse_number(const std::string& text, T& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  if constexpr (std::is_floating_point_v<T>) {
    out = static_cast<T>(std::strtod(text.c_str(), &end));
  } else {
    const long long value = std::strtoll(text.c_str(), &end, 10);
    if (value < std::numeric_limits<T>::min() || value > std::numeric_limits<T>::max()) return false;
    out = static_cast<T>(value);
  }
  return end != nullptr && *end == '\0';
}

// f16 bits as integers ordered like the values they encode, so that neighbours differ by one.
int32_t ordered(uint16_t bits) {
  const int32_t magnitude = bits & 0x7fff;
  return (bits & 0x8000) ? -magnitude : magnitude;
}

}  // namespace

KeyRotation key_rotation_of(const Model& model) {
  KeyRotation r;
  llama_model* m = model.get();
  const std::string& arch = model.info().architecture;
  auto meta = [&](const char* key) { return model.meta(arch + "." + key); };
  auto refuse = [&](std::string why) {
    r.usable = false;
    r.why_not = std::move(why);
    return r;
  };
  switch (llama_model_rope_type(m)) {
    case LLAMA_ROPE_TYPE_NORM: r.neox = false; break;
    case LLAMA_ROPE_TYPE_NEOX: r.neox = true; break;
    default: return refuse("rope type " + std::to_string(llama_model_rope_type(m)) + " (only NORM and NEOX)");
  }
  if (llama_model_n_swa(m) != 0) return refuse("sliding-window layers (another cache layout)");
  const std::string scaling = meta("rope.scaling.type");
  if (!scaling.empty() && scaling != "none") return refuse("rope scaling '" + scaling + "'");
  if (!meta("rope.scaling.attn_factor").empty()) return refuse("a rope attention factor");
  r.freq_scale = llama_model_rope_freq_scale_train(m);
  if (r.freq_scale != 1.0f) return refuse("rope frequency scaling");
  r.n_layer = llama_model_n_layer(m);
  const int32_t n_head = llama_model_n_head(m);
  r.n_head_kv = llama_model_n_head_kv(m);
  if (r.n_layer <= 0 || n_head <= 0 || r.n_head_kv <= 0) return refuse("no attention heads");
  if (!parse_number(meta("attention.key_length"), r.head_dim)) r.head_dim = llama_model_n_embd(m) / n_head;
  if (!parse_number(meta("rope.dimension_count"), r.n_rot)) r.n_rot = r.head_dim;
  if (r.head_dim <= 0 || r.n_rot <= 0 || r.n_rot % 2 != 0 || r.n_rot > r.head_dim) {
    return refuse("rotated dimensions " + std::to_string(r.n_rot) + " of heads of " + std::to_string(r.head_dim));
  }
  const std::string base = meta("rope.freq_base");
  if (!base.empty() && !parse_number(base, r.freq_base)) return refuse("an unreadable rope.freq_base '" + base + "'");
  if (!(r.freq_base > 0.0f) || !std::isfinite(r.freq_base)) return refuse("rope.freq_base " + base);
  r.usable = true;
  return r;
}

std::optional<StateCells> read_state_cells(const KeyRotation& rotation, std::string_view state) {
  if (!rotation.usable) return std::nullopt;
  const std::optional<Layout> layout = parse(rotation, state);
  if (!layout) return std::nullopt;
  return layout->cells;
}

std::optional<StateCells> move_state(const KeyRotation& rotation, std::string_view state, int32_t delta,
                                     std::string& out) {
  if (!rotation.usable) return std::nullopt;
  const std::optional<Layout> layout = parse(rotation, state);
  if (!layout) return std::nullopt;
  const uint32_t n_cells = layout->cells.n_cells;
  if (static_cast<int64_t>(layout->cells.hi) + delta > std::numeric_limits<llama_pos>::max() ||
      static_cast<int64_t>(layout->cells.lo) + delta < 0) {
    return std::nullopt;
  }
  out.resize(state.size());
  char* dst = out.data();
  const char* src = state.data();
  const size_t block = static_cast<size_t>(n_cells) * layout->row_bytes;
  // Everything but the key rows is copied as it is: the parts between the key blocks.
  size_t copied = 0;
  for (size_t at : layout->keys_at) {
    std::memcpy(dst + copied, src + copied, at - copied);
    copied = at + block;
  }
  std::memcpy(dst + copied, src + copied, state.size() - copied);

  for (uint32_t i = 0; i < n_cells; ++i) {
    const size_t at = layout->meta_at + i * kCellMetaBytes;
    llama_pos pos = 0;
    std::memcpy(&pos, src + at, sizeof(pos));
    pos += delta;
    std::memcpy(dst + at, &pos, sizeof(pos));
  }

  const std::vector<float> table = rotation_table(rotation, delta);
  const size_t n_heads = static_cast<size_t>(n_cells) * static_cast<size_t>(rotation.n_head_kv);
  std::vector<float> values;  // the portable path's f32 copy of one layer
  for (size_t at : layout->keys_at) {
    rotate_keys(rotation, table, reinterpret_cast<const ggml_fp16_t*>(src + at),
                reinterpret_cast<ggml_fp16_t*>(dst + at), n_heads, values);
  }
  StateCells moved = layout->cells;
  moved.lo += delta;
  moved.hi += delta;
  return moved;
}

bool same_state(const KeyRotation& rotation, std::string_view a, std::string_view b, int max_ulps) {
  if (a.size() != b.size()) return false;
  const std::optional<Layout> la = parse(rotation, a);
  const std::optional<Layout> lb = parse(rotation, b);
  if (!la || !lb || la->keys_at != lb->keys_at || la->cells.n_cells != lb->cells.n_cells) return false;
  // The sequence id (in the header and in every cell) is whichever sequence the state was
  // read from: the positions must agree, not the ids.
  for (uint32_t i = 0; i < la->cells.n_cells; ++i) {
    const size_t at = la->meta_at + i * kCellMetaBytes;
    if (std::memcmp(a.data() + at, b.data() + at, sizeof(int32_t) + sizeof(uint32_t)) != 0) return false;
  }
  const size_t block = static_cast<size_t>(la->cells.n_cells) * la->row_bytes;
  size_t from = la->meta_at + la->cells.n_cells * kCellMetaBytes;
  for (size_t at : la->keys_at) {
    if (std::memcmp(a.data() + from, b.data() + from, at - from) != 0) return false;
    for (size_t i = at; i < at + block; i += sizeof(uint16_t)) {
      uint16_t x = 0;
      uint16_t y = 0;
      std::memcpy(&x, a.data() + i, sizeof(x));
      std::memcpy(&y, b.data() + i, sizeof(y));
      if (std::abs(ordered(x) - ordered(y)) > max_ulps) return false;
    }
    from = at + block;
  }
  return std::memcmp(a.data() + from, b.data() + from, a.size() - from) == 0;
}


std::optional<std::string> blank_state(std::string_view like, uint32_t n_cells, llama_pos pos0) {
  // Walks `like` record by record as parse() does, without asking for f16 keys or the
  // model's shape: only the sizes matter here, and zero bytes are a valid row of every type.
  Reader in(like);
  uint32_t magic = 0;
  int32_t seq_id = 0;
  uint32_t n_stream = 0;
  uint32_t like_cells = 0;
  if (n_cells == 0 || !in.get(magic) || magic != kSeqStateMagic || !in.get(seq_id)) return std::nullopt;
  if (!in.get(n_stream) || n_stream != 1 || !in.get(like_cells) || like_cells == 0) return std::nullopt;
  for (uint32_t i = 0; i < like_cells; ++i) {
    int32_t pos = 0;
    uint32_t n_seq_id = 0;
    int32_t cell_seq = 0;
    if (!in.get(pos) || !in.get(n_seq_id) || n_seq_id != 1 || !in.get(cell_seq)) return std::nullopt;
  }
  uint32_t v_trans = 0;
  uint32_t n_layer = 0;
  if (!in.get(v_trans) || v_trans > 1 || !in.get(n_layer) || n_layer == 0) return std::nullopt;
  struct Record {
    int32_t type = 0;
    uint64_t row = 0;     // keys, and values when not transposed: bytes per cell
    uint32_t v_el = 0;    // transposed values: bytes per element,
    uint32_t n_embd = 0;  // and elements per cell
  };
  const uint64_t limit = like.size();
  std::vector<Record> keys(n_layer);
  std::vector<Record> values(n_layer);
  for (Record& k : keys) {
    if (!in.get(k.type) || !in.get(k.row) || k.row > limit || !in.skip(k.row * like_cells)) return std::nullopt;
  }
  for (Record& v : values) {
    if (!in.get(v.type)) return std::nullopt;
    if (v_trans == 0) {
      if (!in.get(v.row) || v.row > limit || !in.skip(v.row * like_cells)) return std::nullopt;
    } else {
      if (!in.get(v.v_el) || !in.get(v.n_embd) || v.v_el > limit || v.n_embd > limit) return std::nullopt;
      v.row = static_cast<uint64_t>(v.v_el) * v.n_embd;
      if (v.row > limit || !in.skip(v.row * like_cells)) return std::nullopt;
    }
  }
  if (in.at() != like.size()) return std::nullopt;

  std::string out;
  auto put = [&out](const auto& value) { out.append(reinterpret_cast<const char*>(&value), sizeof(value)); };
  put(magic);
  put(seq_id);
  put(n_stream);
  put(n_cells);
  for (uint32_t i = 0; i < n_cells; ++i) {
    put(static_cast<int32_t>(pos0 + static_cast<llama_pos>(i)));
    put(uint32_t{1});
    put(seq_id);
  }
  put(v_trans);
  put(n_layer);
  for (const Record& k : keys) {
    put(k.type);
    put(k.row);
    out.append(static_cast<size_t>(k.row * n_cells), '\0');
  }
  for (const Record& v : values) {
    put(v.type);
    if (v_trans == 0) {
      put(v.row);
    } else {
      put(v.v_el);
      put(v.n_embd);
    }
    out.append(static_cast<size_t>(v.row * n_cells), '\0');
  }
  return out;
}

}  // namespace bakeoff
