#include "trit_plane/cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "trit_plane/quantizer.h"

namespace weightkit::trit_plane_cpu {
namespace {

using trit_plane::kMasks;
using trit_plane::kRowsPerBlock;
using trit_plane::kCodesPerWord;
using trit_plane::kColsPerCode;

inline float half_to_float(uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }
inline double round_half(double v) { return static_cast<float>(c10::Half(static_cast<float>(v))); }

// Where column j of group g of a row lives: word and bit within the row's words.
struct BitPos {
  int64_t word;
  int bit;
};
inline BitPos bit_pos(const Layout& l, int64_t g, int64_t j) {
  const int64_t t = l.group_first_pair(g) + j / kColsPerCode;
  return {t / kCodesPerWord, static_cast<int>(kColsPerCode * (t % kCodesPerWord) + j % kColsPerCode)};
}

// Writes one row's masks (words_per_row x 4, row-local) into the block-interleaved tensor.
void store_row(const Layout& l, int64_t r, const uint32_t* words, int32_t* packed) {
  for (int64_t w = 0; w < l.words_per_row; ++w)
    for (int m = 0; m < kMasks; ++m) packed[l.word_index(r, w, m)] = static_cast<int32_t>(words[w * kMasks + m]);
}

// Mask index of (plane p, trit t != 0).
inline int mask_of(int p, int t) { return 2 * p + (t < 0 ? 1 : 0); }

// ---------------------------------------------------------------- matmul: shared pieces

// Per activation pair (x0, x1) the 4 subset sums {0, x0, x1, x0 + x1}, for each batch row:
// tables[(b * pairs_per_row + p) * 4 + i]. A padded column reads as 0.
void build_tables(const float* x, int64_t batch, const Layout& l, float* tables) {
  at::parallel_for(0, batch * l.n_groups, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / l.n_groups, g = bg % l.n_groups;
      const float* xg = x + b * l.in + g * l.group;
      const int64_t len = l.group_len(g);
      float* T = tables + (b * l.pairs_per_row + l.group_first_pair(g)) * 4;
      for (int64_t q = 0; q < l.group_pairs(g); ++q, T += 4) {
        const float x0 = xg[2 * q];
        const float x1 = 2 * q + 1 < len ? xg[2 * q + 1] : 0.f;
        T[0] = 0.f;
        T[1] = x0;
        T[2] = x1;
        T[3] = x0 + x1;
      }
    }
  });
}

// fp32 scales of row block rb: sc[(g * 2 + p) * 8 + j] = alpha_{p+1} of row 8 rb + j (0 past out).
void block_scales(const uint16_t* scales, const Layout& l, int64_t rb, float* sc) {
  for (int64_t g = 0; g < l.n_groups; ++g)
    for (int p = 0; p < 2; ++p)
      for (int j = 0; j < kRowsPerBlock; ++j) {
        const int64_t r = rb * kRowsPerBlock + j;
        sc[(g * 2 + p) * kRowsPerBlock + j] = r < l.out ? half_to_float(scales[(r * l.n_groups + g) * 2 + p]) : 0.f;
      }
}

// ---------------------------------------------------------------- scalar path

void block_scalar(const float* tables, int64_t batch, const int32_t* P, const float* sc, const Layout& l,
                  float* out /* batch x 8 */) {
  for (int64_t b = 0; b < batch; ++b) {
    const float* Tb = tables + b * l.pairs_per_row * 4;
    for (int j = 0; j < kRowsPerBlock; ++j) {
      float y = 0.f;
      for (int64_t g = 0; g < l.n_groups; ++g) {
        float s[2] = {0.f, 0.f};
        const int64_t t0 = l.group_first_pair(g);
        for (int64_t t = t0; t < t0 + l.group_pairs(g); ++t) {
          const int64_t w = t / kCodesPerWord;
          const int shift = static_cast<int>(kColsPerCode * (t % kCodesPerWord));
          const float* T = Tb + t * 4;
          for (int p = 0; p < 2; ++p) {
            const uint32_t pos = static_cast<uint32_t>(P[(w * kMasks + 2 * p) * kRowsPerBlock + j]);
            const uint32_t neg = static_cast<uint32_t>(P[(w * kMasks + 2 * p + 1) * kRowsPerBlock + j]);
            s[p] += T[(pos >> shift) & 3u] - T[(neg >> shift) & 3u];
          }
        }
        y += sc[(g * 2) * kRowsPerBlock + j] * s[0] + sc[(g * 2 + 1) * kRowsPerBlock + j] * s[1];
      }
      out[b * kRowsPerBlock + j] = y;
    }
  }
}

// ---------------------------------------------------------------- AVX2 path

#define WK_AVX2 __attribute__((target("avx2,fma,f16c")))

// NB batch rows at once for one block of 8 rows (lanes = rows). Per pair and batch row: 4 table
// lookups (plane 1/2, positive/negative; vpermilps reads the low 2 bits of each lane, and the
// 4-entry table sits in both 128-bit halves) into 4 independent accumulators. Everything the
// loop touches is a local so the masks and accumulators stay in registers.
template <int NB>
WK_AVX2 void block_avx2(const float* tables, const int32_t* P, const float* sc, const Layout& l, float* out) {
  const int64_t tstride = l.pairs_per_row * 4, n_groups = l.n_groups, words = l.words_per_row;
  const int64_t nt_full = l.pairs_full, nt_last = l.pairs_last;
  __m256 y[NB];
  for (int b = 0; b < NB; ++b) y[b] = _mm256_setzero_ps();
  const __m256i* Pv = reinterpret_cast<const __m256i*>(P);
  const float* T = tables;
  int64_t w = 0;
  int k = 0;
  __m256i m0 = _mm256_setzero_si256(), m1 = m0, m2 = m0, m3 = m0;
  if (words > 0) {
    m0 = _mm256_loadu_si256(Pv);
    m1 = _mm256_loadu_si256(Pv + 1);
    m2 = _mm256_loadu_si256(Pv + 2);
    m3 = _mm256_loadu_si256(Pv + 3);
  }
  for (int64_t g = 0; g < n_groups; ++g) {
    __m256 a[NB][4];
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < 4; ++i) a[b][i] = _mm256_setzero_ps();
    const int64_t nt = g + 1 == n_groups ? nt_last : nt_full;
    for (int64_t q = 0; q < nt; ++q, T += 4) {
      for (int b = 0; b < NB; ++b) {
        const __m256 tb = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(T + b * tstride));
        a[b][0] = _mm256_add_ps(a[b][0], _mm256_permutevar_ps(tb, m0));
        a[b][1] = _mm256_add_ps(a[b][1], _mm256_permutevar_ps(tb, m1));
        a[b][2] = _mm256_add_ps(a[b][2], _mm256_permutevar_ps(tb, m2));
        a[b][3] = _mm256_add_ps(a[b][3], _mm256_permutevar_ps(tb, m3));
      }
      if (++k == kCodesPerWord) {
        k = 0;
        if (++w < words) {
          m0 = _mm256_loadu_si256(Pv + w * 4);
          m1 = _mm256_loadu_si256(Pv + w * 4 + 1);
          m2 = _mm256_loadu_si256(Pv + w * 4 + 2);
          m3 = _mm256_loadu_si256(Pv + w * 4 + 3);
        }
      } else {
        m0 = _mm256_srli_epi32(m0, kColsPerCode);
        m1 = _mm256_srli_epi32(m1, kColsPerCode);
        m2 = _mm256_srli_epi32(m2, kColsPerCode);
        m3 = _mm256_srli_epi32(m3, kColsPerCode);
      }
    }
    const __m256 s1 = _mm256_loadu_ps(sc + g * 16), s2 = _mm256_loadu_ps(sc + g * 16 + 8);
    for (int b = 0; b < NB; ++b) {
      y[b] = _mm256_fmadd_ps(s1, _mm256_sub_ps(a[b][0], a[b][1]), y[b]);
      y[b] = _mm256_fmadd_ps(s2, _mm256_sub_ps(a[b][2], a[b][3]), y[b]);
    }
  }
  for (int b = 0; b < NB; ++b) _mm256_storeu_ps(out + b * kRowsPerBlock, y[b]);
}

WK_AVX2 void blocks_avx2(const float* tables, int64_t batch, const int32_t* P, const float* sc, const Layout& l,
                         float* out) {
  const int64_t tstride = l.pairs_per_row * 4;
  int64_t b = 0;
  for (; b + 2 <= batch; b += 2) block_avx2<2>(tables + b * tstride, P, sc, l, out + b * kRowsPerBlock);
  if (b < batch) block_avx2<1>(tables + b * tstride, P, sc, l, out + b * kRowsPerBlock);
}

// ---------------------------------------------------------------- AVX-512 path

#define WK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

// Two row blocks (16 rows) per register: the index vector is the two blocks' masks side by side
// and the 4-entry table is repeated in all four 128-bit lanes.
template <int NB>
WK_AVX512 void block2_avx512(const float* tables, const int32_t* P0, const int32_t* P1, const float* sc0,
                             const float* sc1, const Layout& l, float* out0, float* out1) {
  const int64_t tstride = l.pairs_per_row * 4, n_groups = l.n_groups, words = l.words_per_row;
  const int64_t nt_full = l.pairs_full, nt_last = l.pairs_last;
  __m512 y[NB];
  for (int b = 0; b < NB; ++b) y[b] = _mm512_setzero_ps();
  const __m256i* A = reinterpret_cast<const __m256i*>(P0);
  const __m256i* B = reinterpret_cast<const __m256i*>(P1);
  const float* T = tables;
  int64_t w = 0;
  int k = 0;
#define WK_LOAD512(i, wi) \
  _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(A + (wi) * 4 + (i))), _mm256_loadu_si256(B + (wi) * 4 + (i)), 1)
  __m512i m0 = _mm512_setzero_si512(), m1 = m0, m2 = m0, m3 = m0;
  if (words > 0) {
    m0 = WK_LOAD512(0, 0);
    m1 = WK_LOAD512(1, 0);
    m2 = WK_LOAD512(2, 0);
    m3 = WK_LOAD512(3, 0);
  }
  for (int64_t g = 0; g < n_groups; ++g) {
    __m512 a[NB][4];
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < 4; ++i) a[b][i] = _mm512_setzero_ps();
    const int64_t nt = g + 1 == n_groups ? nt_last : nt_full;
    for (int64_t q = 0; q < nt; ++q, T += 4) {
      for (int b = 0; b < NB; ++b) {
        const __m512 tb = _mm512_broadcast_f32x4(_mm_loadu_ps(T + b * tstride));
        a[b][0] = _mm512_add_ps(a[b][0], _mm512_permutevar_ps(tb, m0));
        a[b][1] = _mm512_add_ps(a[b][1], _mm512_permutevar_ps(tb, m1));
        a[b][2] = _mm512_add_ps(a[b][2], _mm512_permutevar_ps(tb, m2));
        a[b][3] = _mm512_add_ps(a[b][3], _mm512_permutevar_ps(tb, m3));
      }
      if (++k == kCodesPerWord) {
        k = 0;
        if (++w < words) {
          m0 = WK_LOAD512(0, w);
          m1 = WK_LOAD512(1, w);
          m2 = WK_LOAD512(2, w);
          m3 = WK_LOAD512(3, w);
        }
      } else {
        m0 = _mm512_srli_epi32(m0, kColsPerCode);
        m1 = _mm512_srli_epi32(m1, kColsPerCode);
        m2 = _mm512_srli_epi32(m2, kColsPerCode);
        m3 = _mm512_srli_epi32(m3, kColsPerCode);
      }
    }
#undef WK_LOAD512
    const __m512 s1 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(sc0 + g * 16)),
                                         _mm256_loadu_ps(sc1 + g * 16), 1);
    const __m512 s2 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(sc0 + g * 16 + 8)),
                                         _mm256_loadu_ps(sc1 + g * 16 + 8), 1);
    for (int b = 0; b < NB; ++b) {
      y[b] = _mm512_fmadd_ps(s1, _mm512_sub_ps(a[b][0], a[b][1]), y[b]);
      y[b] = _mm512_fmadd_ps(s2, _mm512_sub_ps(a[b][2], a[b][3]), y[b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    _mm256_storeu_ps(out0 + b * kRowsPerBlock, _mm512_castps512_ps256(y[b]));
    _mm256_storeu_ps(out1 + b * kRowsPerBlock, _mm512_extractf32x8_ps(y[b], 1));
  }
}

WK_AVX512 void blocks2_avx512(const float* tables, int64_t batch, const int32_t* P0, const int32_t* P1,
                              const float* sc0, const float* sc1, const Layout& l, float* out0, float* out1) {
  const int64_t tstride = l.pairs_per_row * 4;
  int64_t b = 0;
  for (; b + 4 <= batch; b += 4)
    block2_avx512<4>(tables + b * tstride, P0, P1, sc0, sc1, l, out0 + b * kRowsPerBlock, out1 + b * kRowsPerBlock);
  for (; b < batch; ++b)
    block2_avx512<1>(tables + b * tstride, P0, P1, sc0, sc1, l, out0 + b * kRowsPerBlock, out1 + b * kRowsPerBlock);
}

// Row blocks [rb0, rb1) dequantized and transposed: Wt[c * ld + 8 * (rb - rb0) + j] = W[8 rb + j, c]
// (rows past out are 0). The transposed tile lets the 8 rows of a block be decoded in the lanes
// of one register and stored contiguously.
void dequant_tile_scalar(const int32_t* packed, const float* sc, const Layout& l, int64_t rb, float* Wt, int64_t ld) {
  const int32_t* P = packed + rb * l.words_per_row * kMasks * kRowsPerBlock;
  for (int64_t g = 0; g < l.n_groups; ++g)
    for (int64_t c = 0; c < l.group_len(g); ++c) {
      const BitPos bp = bit_pos(l, g, c);
      for (int j = 0; j < kRowsPerBlock; ++j) {
        float v = 0.f;
        for (int p = 0; p < 2; ++p) {
          const uint32_t pos = static_cast<uint32_t>(P[(bp.word * kMasks + 2 * p) * kRowsPerBlock + j]);
          const uint32_t neg = static_cast<uint32_t>(P[(bp.word * kMasks + 2 * p + 1) * kRowsPerBlock + j]);
          const float a = sc[(g * 2 + p) * kRowsPerBlock + j];
          if ((pos >> bp.bit) & 1u) v += a;
          if ((neg >> bp.bit) & 1u) v -= a;
        }
        Wt[(g * l.group + c) * ld + j] = v;
      }
    }
}

WK_AVX2 void dequant_tile_avx2(const int32_t* packed, const float* sc, const Layout& l, int64_t rb, float* Wt,
                               int64_t ld) {
  const __m256i* Pv = reinterpret_cast<const __m256i*>(packed + rb * l.words_per_row * kMasks * kRowsPerBlock);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t g = 0; g < l.n_groups; ++g) {
    const __m256 s1 = _mm256_loadu_ps(sc + g * 16), s2 = _mm256_loadu_ps(sc + g * 16 + 8);
    for (int64_t c = 0; c < l.group_len(g); ++c) {
      const BitPos bp = bit_pos(l, g, c);
      const __m128i sh = _mm_cvtsi32_si128(31 - bp.bit);
      // Bit `bit` moved to the sign position, which is all blendv reads.
      auto top = [&](int m) WK_AVX2 { return _mm256_castsi256_ps(_mm256_sll_epi32(_mm256_loadu_si256(Pv + bp.word * 4 + m), sh)); };
      __m256 v = _mm256_sub_ps(_mm256_blendv_ps(zero, s1, top(0)), _mm256_blendv_ps(zero, s1, top(1)));
      v = _mm256_add_ps(v, _mm256_sub_ps(_mm256_blendv_ps(zero, s2, top(2)), _mm256_blendv_ps(zero, s2, top(3))));
      _mm256_storeu_ps(Wt + (g * l.group + c) * ld, v);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------- quantizer

bool quantize(const float* W, const Layout& l, int64_t max_iters, double tol, int32_t* packed, uint16_t* scales) {
  std::memset(packed, 0, static_cast<size_t>(l.packed_numel()) * sizeof(int32_t));
  std::atomic<bool> ok{true};
  at::parallel_for(0, l.out, 4, [&](int64_t begin, int64_t end) {
    trit_plane::GroupQuantizer gq(l.group);
    std::vector<uint32_t> words(static_cast<size_t>(l.words_per_row * kMasks));
    std::vector<int8_t> t1(static_cast<size_t>(l.group)), t2(static_cast<size_t>(l.group));
    for (int64_t r = begin; r < end; ++r) {
      std::fill(words.begin(), words.end(), 0u);
      for (int64_t g = 0; g < l.n_groups; ++g) {
        const int64_t len = l.group_len(g);
        double alpha[2];
        gq.run(W + r * l.in + g * l.group, len, max_iters, tol, alpha, t1.data(), t2.data(), round_half);
        for (int p = 0; p < 2; ++p) {
          const c10::Half h(static_cast<float>(alpha[p]));
          if (!std::isfinite(static_cast<float>(h))) ok.store(false, std::memory_order_relaxed);
          scales[(r * l.n_groups + g) * 2 + p] = h.x;
        }
        for (int64_t j = 0; j < len; ++j) {
          const BitPos bp = bit_pos(l, g, j);
          if (t1[j]) words[bp.word * kMasks + mask_of(0, t1[j])] |= 1u << bp.bit;
          if (t2[j]) words[bp.word * kMasks + mask_of(1, t2[j])] |= 1u << bp.bit;
        }
      }
      store_row(l, r, words.data(), packed);
    }
  });
  return ok.load();
}

// ---------------------------------------------------------------- packing

void pack(const int8_t* trits, const Layout& l, int32_t* packed) {
  std::memset(packed, 0, static_cast<size_t>(l.packed_numel()) * sizeof(int32_t));
  const int64_t plane = l.out * l.in;
  at::parallel_for(0, l.out, 16, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> words(static_cast<size_t>(l.words_per_row * kMasks));
    for (int64_t r = begin; r < end; ++r) {
      std::fill(words.begin(), words.end(), 0u);
      for (int64_t g = 0; g < l.n_groups; ++g)
        for (int64_t j = 0; j < l.group_len(g); ++j) {
          const BitPos bp = bit_pos(l, g, j);
          for (int p = 0; p < 2; ++p) {
            const int8_t v = trits[p * plane + r * l.in + g * l.group + j];
            if (v) words[bp.word * kMasks + mask_of(p, v)] |= 1u << bp.bit;
          }
        }
      store_row(l, r, words.data(), packed);
    }
  });
}

void unpack_trits(const int32_t* packed, const Layout& l, int8_t* trits) {
  const int64_t plane = l.out * l.in;
  at::parallel_for(0, l.out, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t g = 0; g < l.n_groups; ++g)
        for (int64_t j = 0; j < l.group_len(g); ++j) {
          const BitPos bp = bit_pos(l, g, j);
          for (int p = 0; p < 2; ++p) {
            const uint32_t pos = static_cast<uint32_t>(packed[l.word_index(r, bp.word, 2 * p)]);
            const uint32_t neg = static_cast<uint32_t>(packed[l.word_index(r, bp.word, 2 * p + 1)]);
            trits[p * plane + r * l.in + g * l.group + j] =
                static_cast<int8_t>(static_cast<int>((pos >> bp.bit) & 1u) - static_cast<int>((neg >> bp.bit) & 1u));
          }
        }
  });
}

void dequantize_tile_t(const int32_t* packed, const uint16_t* scales, const Layout& l, int64_t rb0, int64_t rb1,
                       float* Wt, CpuIsa isa) {
  const int64_t ld = (rb1 - rb0) * kRowsPerBlock;
  const int64_t sc_elems = l.n_groups * 2 * kRowsPerBlock;
  at::parallel_for(rb0, rb1, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sc(static_cast<size_t>(sc_elems));
    for (int64_t rb = begin; rb < end; ++rb) {
      block_scales(scales, l, rb, sc.data());
      float* dst = Wt + (rb - rb0) * kRowsPerBlock;
      if (isa == CpuIsa::Scalar) {
        dequant_tile_scalar(packed, sc.data(), l, rb, dst, ld);
      } else {
        dequant_tile_avx2(packed, sc.data(), l, rb, dst, ld);
      }
    }
  });
}

// ---------------------------------------------------------------- matmul

void matmul(const float* x, int64_t batch, const int32_t* packed, const uint16_t* scales, const Layout& l, float* y,
            CpuIsa isa) {
  if (batch == 0 || l.out == 0) return;
  if (l.in == 0) {
    std::fill(y, y + batch * l.out, 0.f);
    return;
  }
  std::vector<float> tables(static_cast<size_t>(batch * l.pairs_per_row * 4));
  build_tables(x, batch, l, tables.data());
  const int64_t block_elems = l.words_per_row * kMasks * kRowsPerBlock;
  const int64_t sc_elems = l.n_groups * 2 * kRowsPerBlock;
  // Work unit: one row block (two on the AVX-512 path, which fills 16 lanes with them).
  const int64_t per_unit = isa == CpuIsa::Avx512 ? 2 : 1;
  const int64_t units = (l.row_blocks + per_unit - 1) / per_unit;
  auto scatter = [&](int64_t rb, const float* out) {
    for (int64_t b = 0; b < batch; ++b)
      for (int j = 0; j < kRowsPerBlock; ++j) {
        const int64_t r = rb * kRowsPerBlock + j;
        if (r < l.out) y[b * l.out + r] = out[b * kRowsPerBlock + j];
      }
  };
  at::parallel_for(0, units, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sc(static_cast<size_t>(2 * sc_elems));
    std::vector<float> out(static_cast<size_t>(2 * batch * kRowsPerBlock));
    for (int64_t u = begin; u < end; ++u) {
      const int64_t rb = u * per_unit;
      const bool pair = per_unit == 2 && rb + 1 < l.row_blocks;
      block_scales(scales, l, rb, sc.data());
      if (pair) block_scales(scales, l, rb + 1, sc.data() + sc_elems);
      const int32_t* P = packed + rb * block_elems;
      float* o1 = out.data() + batch * kRowsPerBlock;
      if (pair) {
        blocks2_avx512(tables.data(), batch, P, P + block_elems, sc.data(), sc.data() + sc_elems, l, out.data(), o1);
      } else if (isa == CpuIsa::Scalar) {
        block_scalar(tables.data(), batch, P, sc.data(), l, out.data());
      } else {
        blocks_avx2(tables.data(), batch, P, sc.data(), l, out.data());
      }
      scatter(rb, out.data());
      if (pair) scatter(rb + 1, o1);
    }
  });
}

}  // namespace weightkit::trit_plane_cpu
