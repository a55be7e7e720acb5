#include "newton_schulz/cpu_bf16_products.h"

#include <ATen/Parallel.h>
#include <c10/core/CPUAllocator.h>
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "common/cpu_target.h"

namespace weightkit::newton_schulz_cpu {
namespace {

// Register tile: kRows x kCols fp32 accumulators (8 rows x 2 zmm). Per pair of k values, 2 loads
// of the right operand and 8 broadcasts of the left one feed 16 independent vdpbf16ps, which
// keeps the dot-product units busy (measured with both operands in L1: 227 GF/s on one Zen 4
// core at ~3.5 GHz, its peak of 64 flop a cycle).
constexpr int kRows = 8;
constexpr int kCols = 32;

WK_INLINE __mmask16 first_lanes(int64_t count) {
  return count >= 16 ? __mmask16(0xffff) : count <= 0 ? __mmask16(0) : __mmask16((1u << count) - 1u);
}

// Words per packed row: k / 2 rounded up (with odd k the last word holds the last value alone,
// its second half zero, so it adds nothing).
inline int64_t words(int64_t k) { return (k + 1) / 2; }

// 16 x 16 transpose of 32-bit words held in registers: r[i] word j <- r[j] word i.
WK_AVX512_BF16 inline void transpose16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // pairs of rows interleaved by words
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // then by 64-bit pairs: each 128-bit lane holds a 4 x 4 block
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {  // the 4 x 4 blocks moved across lanes in two rounds
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// Rows j0... of one matrix X (m x k) packed as one block of words(k) steps of kCols words: word
// (p, j) = values 2p and 2p + 1 of row j0 + j, zero past the matrix's end.
WK_AVX512_BF16 void pack_block(const uint16_t* X, int64_t m, int64_t k, int64_t j0, uint32_t* out) {
  const int64_t rows = std::min<int64_t>(kCols, m - j0), kp = words(k);
  // 16 steps (64 bytes of each row) of 16 rows at a time, transposed in registers.
  for (int64_t p0 = 0; p0 < kp; p0 += 16) {
    const int64_t values = std::min<int64_t>(32, k - 2 * p0);  // masked: zero past the row's end
    const __mmask32 mask = values >= 32 ? ~__mmask32(0) : (__mmask32(1) << values) - 1;
    for (int h = 0; h < kCols; h += 16) {
      __m512i r[16];
      for (int j = 0; j < 16; ++j)
        r[j] = h + j < rows ? _mm512_maskz_loadu_epi16(mask, X + (j0 + h + j) * k + 2 * p0) : _mm512_setzero_si512();
      transpose16(r);
      for (int64_t q = 0; q < std::min<int64_t>(16, kp - p0); ++q)
        _mm512_storeu_si512(out + (p0 + q) * kCols + h, r[q]);
    }
  }
}

// Every matrix of X (batch, m, k) packed in blocks of kCols rows (pack_block). Block t is the
// right operand of X X^T for output columns t * kCols..., and kRows of its words per step are
// the left operand for those rows: the symmetric product packs X once. The buffer comes from
// torch's CPU allocator (a clear error if it cannot be had) and is not zero-filled: every word
// is written before it is read.
c10::DataPtr pack_rows(const uint16_t* X, int64_t batch, int64_t m, int64_t k) {
  const int64_t blocks = (m + kCols - 1) / kCols, block_words = words(k) * kCols;
  c10::DataPtr packed = c10::GetCPUAllocator()->allocate(static_cast<size_t>(batch * blocks * block_words) * 4);
  auto* out = static_cast<uint32_t*>(packed.get());
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item)
      pack_block(X + item / blocks * m * k, m, k, item % blocks * kCols, out + item * block_words);
  });
  return packed;
}

// The right operand R = X (k rows of length n), columns j0 on, in the same layout: word (p, j)
// interleaves X[2p][j0 + j] and X[2p + 1][j0 + j], zero past X's end.
WK_AVX512_BF16 void pack_interleaved(const uint16_t* X, int64_t k, int64_t n, int64_t j0, uint32_t* panel) {
  const int64_t cols = std::min<int64_t>(kCols, n - j0);
  for (int64_t p = 0; p < words(k); ++p) {
    const uint16_t* lo = X + 2 * p * n + j0;
    const uint16_t* hi = 2 * p + 1 < k ? lo + n : nullptr;
    for (int h = 0; h < kCols; h += 16) {
      const __mmask16 mask = first_lanes(cols - h);
      const __m512i l = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, lo + h));
      const __m512i u = hi ? _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, hi + h)) : _mm512_setzero_si512();
      _mm512_storeu_si512(panel + p * kCols + h, _mm512_or_si512(l, _mm512_slli_epi32(u, 16)));
    }
  }
}

// tile[r][c] = sum_p left(p, r) . right(p, c) over kp steps, in fp32. Both operands advance
// kCols words a step; `left` points at the tile's first row within its block.
WK_AVX512_BF16 void tile_product(const uint32_t* left, const uint32_t* right, int64_t kp, float* tile) {
  __m512 acc[kRows][2];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(right + p * kCols);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(right + p * kCols + 16);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(static_cast<int>(left[p * kCols + r]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    _mm512_storeu_ps(tile + r * kCols, acc[r][0]);
    _mm512_storeu_ps(tile + r * kCols + 16, acc[r][1]);
  }
}

// Where one tile's results go: out[r][c] = bf16(alpha * tile[r][c] + beta * add[r][c]) for
// r < rows, c < cols, rounded to nearest even.
struct TileOutput {
  uint16_t* out;
  int64_t out_ld;
  const uint16_t* add;  // null: no addend
  int64_t add_ld;
  float alpha, beta;
};

WK_AVX512_BF16 inline __m512 widen_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// One row of 16 values of the tile, scaled, added to and rounded.
WK_AVX512_BF16 inline __m256i finish(const float* t, const TileOutput& o, const uint16_t* add, __mmask16 mask) {
  __m512 v = _mm512_mul_ps(_mm512_set1_ps(o.alpha), _mm512_loadu_ps(t));
  if (add) v = _mm512_fmadd_ps(_mm512_set1_ps(o.beta), widen_bf16(_mm256_maskz_loadu_epi16(mask, add)), v);
  return (__m256i)_mm512_cvtneps_pbh(v);
}

WK_AVX512_BF16 void store_tile(const float* tile, int rows, int64_t cols, const TileOutput& o) {
  for (int r = 0; r < rows; ++r)
    for (int h = 0; h < kCols; h += 16) {
      const __mmask16 mask = first_lanes(cols - h);
      if (!mask) break;
      const uint16_t* add = o.add ? o.add + r * o.add_ld + h : nullptr;
      _mm256_mask_storeu_epi16(o.out + r * o.out_ld + h, mask, finish(tile + r * kCols + h, o, add, mask));
    }
}

// The symmetric product's tile at (i0, j0) of an m x m output: its elements on or above the
// diagonal (j >= i) are stored in place and those strictly above also at (j, i), so every
// output element is written once, by the tile that owns its upper-triangle twin. `o` points at
// the output's (and addend's) element (0, 0).
WK_AVX512_BF16 void store_symmetric(const float* tile, int rows, int64_t cols, int64_t i0, int64_t j0,
                                    const TileOutput& o) {
  alignas(64) uint16_t vals[kCols];
  for (int r = 0; r < rows; ++r) {
    const int64_t i = i0 + r;
    const int64_t first = std::max<int64_t>(0, i - j0);  // first column with j >= i
    for (int h = 0; h < kCols; h += 16) {
      const __mmask16 valid = first_lanes(cols - h);
      const __mmask16 mask = valid & static_cast<__mmask16>(~first_lanes(first - h));
      if (!mask) continue;
      const int64_t at = i * o.out_ld + j0 + h;
      const uint16_t* add = o.add ? o.add + i * o.add_ld + j0 + h : nullptr;
      const __m256i v = finish(tile + r * kCols + h, o, add, valid);
      _mm256_mask_storeu_epi16(o.out + at, mask, v);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(vals + h), v);
    }
    for (int64_t c = std::max<int64_t>(first, i + 1 - j0); c < cols; ++c) o.out[(j0 + c) * o.out_ld + i] = vals[c];
  }
}

}  // namespace

bool bf16_products_available(CpuIsa isa) { return isa == CpuIsa::Avx512 && cpu_features().avx512_bf16; }

void sym_product_bf16(const c10::BFloat16* X, const c10::BFloat16* D, c10::BFloat16* C, int64_t batch, int64_t m,
                      int64_t k, float alpha, float beta) {
  const auto* x = reinterpret_cast<const uint16_t*>(X);
  const auto* d = reinterpret_cast<const uint16_t*>(D);
  auto* c = reinterpret_cast<uint16_t*>(C);
  const bool add = d != nullptr && beta != 0.f;  // beta = 0 drops D, NaN or not, as baddbmm does
  const int64_t blocks = (m + kCols - 1) / kCols, kp = words(k);
  const c10::DataPtr packed_buffer = pack_rows(x, batch, m, k);
  const auto* packed = static_cast<const uint32_t*>(packed_buffer.get());
  // Column block J meets the upper triangle in 4 (J + 1) row tiles of 8 rows (fewer for a short
  // last block); an item pairs blocks J and blocks - 1 - J, so items have nearly the same work
  // (the unpaired middle block of an odd count, half) and parallel_for's static split balances.
  const int64_t pairs = (blocks + 1) / 2;
  at::parallel_for(0, batch * pairs, 1, [&](int64_t begin, int64_t end) {
    alignas(64) float tile[kRows * kCols];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / pairs, t = item % pairs;
      const uint32_t* xb = packed + b * blocks * kp * kCols;
      const TileOutput o{c + b * m * m, m, add ? d + b * m * m : nullptr, m, alpha, beta};
      const int64_t pair[2] = {t, blocks - 1 - t};
      for (int q = 0; q < (pair[0] == pair[1] ? 1 : 2); ++q) {
        const int64_t j0 = pair[q] * kCols, cols = std::min<int64_t>(kCols, m - j0);
        for (int64_t i0 = 0; i0 < j0 + cols; i0 += kRows) {  // row tiles holding some j >= i
          const int rows = static_cast<int>(std::min<int64_t>(kRows, m - i0));
          tile_product(xb + i0 / kCols * kp * kCols + i0 % kCols, xb + pair[q] * kp * kCols, kp, tile);
          store_symmetric(tile, rows, cols, i0, j0, o);
        }
      }
    }
  });
}

void left_product_bf16(const c10::BFloat16* B, const c10::BFloat16* X, c10::BFloat16* Y, int64_t batch, int64_t m,
                       int64_t n, float a) {
  const auto* bm = reinterpret_cast<const uint16_t*>(B);
  const auto* x = reinterpret_cast<const uint16_t*>(X);
  auto* y = reinterpret_cast<uint16_t*>(Y);
  const int64_t panels = (n + kCols - 1) / kCols, kp = words(m);
  const c10::DataPtr left_buffer = pack_rows(bm, batch, m, m);
  const auto* left = static_cast<const uint32_t*>(left_buffer.get());
  const int64_t blocks = (m + kCols - 1) / kCols;
  at::parallel_for(0, batch * panels, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> panel(static_cast<size_t>(kp * kCols));
    alignas(64) float tile[kRows * kCols];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / panels, j0 = item % panels * kCols, cols = std::min<int64_t>(kCols, n - j0);
      const uint16_t* xb = x + b * m * n;
      const uint32_t* bb = left + b * blocks * kp * kCols;
      pack_interleaved(xb, m, n, j0, panel.data());
      for (int64_t i0 = 0; i0 < m; i0 += kRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kRows, m - i0));
        tile_product(bb + i0 / kCols * kp * kCols + i0 % kCols, panel.data(), kp, tile);
        // a = 0 drops the addend, as bmm in place of baddbmm does.
        const TileOutput o{y + b * m * n + i0 * n + j0, n, a != 0.f ? xb + i0 * n + j0 : nullptr, n, 1.f, a};
        store_tile(tile, rows, cols, o);
      }
    }
  });
}

}  // namespace weightkit::newton_schulz_cpu
