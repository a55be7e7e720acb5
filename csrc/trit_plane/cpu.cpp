#include "trit_plane/cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/cpu_target.h"
#include "common/parallel_units.h"
#include "trit_plane/quantizer.h"

namespace weightkit::trit_plane_cpu {
namespace {

using trit_plane::kCodeBits;
using trit_plane::kCodesPerWord;
using trit_plane::kColsPerCode;
using trit_plane::kPlanes;
using trit_plane::kRowsPerBlock;

inline double round_half(double v) { return static_cast<float>(c10::Half(static_cast<float>(v))); }

// Where column j of group g of a row lives: word (per plane) and the bit of a +1 trit; a -1 trit
// sets bit + 2.
struct BitPos {
  int64_t word;
  int bit;
};
inline BitPos bit_pos(const Layout& l, int64_t g, int64_t j) {
  const int64_t t = l.group_first_pair(g) + j / kColsPerCode;
  return {t / kCodesPerWord, static_cast<int>(kCodeBits * (t % kCodesPerWord) + j % kColsPerCode)};
}
inline uint32_t trit_bit(const BitPos& bp, int trit) { return 1u << (bp.bit + (trit < 0 ? 2 : 0)); }

// Writes one row's words (words_per_row x 2, row-local) into the block-interleaved tensor.
void store_row(const Layout& l, int64_t r, const uint32_t* words, int32_t* packed) {
  for (int64_t w = 0; w < l.words_per_row; ++w)
    for (int k = 0; k < kPlanes; ++k) packed[l.word_index(r, w, k)] = static_cast<int32_t>(words[w * kPlanes + k]);
}

// ---------------------------------------------------------------- matmul: shared pieces

// Per activation pair (x0, x1) a lookup table for each batch row, indexed by a pair code
// (pos | neg << 2), wide = false: the 4 subset sums {0, x0, x1, x0 + x1} (indexed by pos and neg
// separately); wide = true: the 16 signed sums (pos bits add, neg bits subtract; codes with a
// column both positive and negative never occur). tables[(b * pairs_per_row + p) * E + i].
void build_tables(const float* x, int64_t batch, const Layout& l, bool wide, float* tables) {
  const int64_t E = wide ? 16 : 4;
  at::parallel_for(0, batch * l.n_groups, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / l.n_groups, g = bg % l.n_groups;
      const float* xg = x + b * l.in + g * l.group;
      const int64_t len = l.group_len(g);
      float* T = tables + (b * l.pairs_per_row + l.group_first_pair(g)) * E;
      for (int64_t q = 0; q < l.group_pairs(g); ++q, T += E) {
        const float x0 = xg[2 * q];
        const float x1 = 2 * q + 1 < len ? xg[2 * q + 1] : 0.f;
        const float sub[4] = {0.f, x0, x1, x0 + x1};
        if (wide) {
          for (int i = 0; i < 16; ++i) T[i] = sub[i & 3] - sub[i >> 2];
        } else {
          for (int i = 0; i < 4; ++i) T[i] = sub[i];
        }
      }
    }
  });
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
          const int shift = static_cast<int>(kCodeBits * (t % kCodesPerWord));
          const float* T = Tb + t * 4;
          for (int k = 0; k < kPlanes; ++k) {
            const uint32_t code = (static_cast<uint32_t>(P[(w * kPlanes + k) * kRowsPerBlock + j]) >> shift) & 15u;
            s[k] += T[code & 3u] - T[code >> 2];
          }
        }
        y += sc[(g * 2) * kRowsPerBlock + j] * s[0] + sc[(g * 2 + 1) * kRowsPerBlock + j] * s[1];
      }
      out[b * kRowsPerBlock + j] = y;
    }
  }
}

// Group g of row blocks [rb0, rb1) dequantized into the transposed tile: Wt[c * ld + 8 (rb - rb0) + j]
// = W[8 rb + j, c]. The loop runs along each tile row (column c of W) so the writes are
// sequential. scb: block scales of every row block, scb[rb * n_groups * 16 + g * 16 + k * 8 + j].
void dequant_group_scalar(const int32_t* packed, const float* scb, const Layout& l, int64_t g, int64_t rb0, int64_t rb1,
                          float* Wt, int64_t ld) {
  const int64_t block_elems = l.words_per_row * kPlanes * kRowsPerBlock;
  for (int64_t c = 0; c < l.group_len(g); ++c) {
    const BitPos bp = bit_pos(l, g, c);
    float* dst = Wt + (g * l.group + c) * ld;
    for (int64_t rb = rb0; rb < rb1; ++rb, dst += kRowsPerBlock) {
      const int32_t* P = packed + rb * block_elems + bp.word * kPlanes * kRowsPerBlock;
      const float* sc = scb + (rb * l.n_groups + g) * 16;
      for (int j = 0; j < kRowsPerBlock; ++j) {
        float v = 0.f;
        for (int k = 0; k < kPlanes; ++k) {
          const uint32_t word = static_cast<uint32_t>(P[k * kRowsPerBlock + j]);
          if ((word >> bp.bit) & 1u) v += sc[k * 8 + j];
          if ((word >> (bp.bit + 2)) & 1u) v -= sc[k * 8 + j];
        }
        dst[j] = v;
      }
    }
  }
}

// ---------------------------------------------------------------- AVX2 path

// NB batch rows at once for one block of 8 rows (lanes = rows). Per pair, plane and batch row:
// two lookups of the 4 subset sums (vpermilps reads the low 2 bits of each lane: the positive
// half of the code, then, shifted by 2, the negative half) into separate accumulators.
// Everything the loop touches is a local so the codes and accumulators stay in registers.
template <int NB>
WK_AVX2 void block_avx2(const float* tables, const int32_t* P, const float* sc, const Layout& l, float* out) {
  const int64_t tstride = l.pairs_per_row * 4, n_groups = l.n_groups, words = l.words_per_row;
  const int64_t np_full = l.pairs_full, np_last = l.pairs_last;
  __m256 y[NB];
  for (int b = 0; b < NB; ++b) y[b] = _mm256_setzero_ps();
  const __m256i* Pv = reinterpret_cast<const __m256i*>(P);
  const float* T = tables;
  int64_t w = 0;
  int k = 0;
  __m256i m0 = _mm256_setzero_si256(), m1 = m0;
  if (words > 0) {
    m0 = _mm256_loadu_si256(Pv);
    m1 = _mm256_loadu_si256(Pv + 1);
  }
  for (int64_t g = 0; g < n_groups; ++g) {
    __m256 a[NB][4];
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < 4; ++i) a[b][i] = _mm256_setzero_ps();
    const int64_t np = g + 1 == n_groups ? np_last : np_full;
    for (int64_t q = 0; q < np; ++q, T += 4) {
      const __m256i n0 = _mm256_srli_epi32(m0, 2), n1 = _mm256_srli_epi32(m1, 2);
      for (int b = 0; b < NB; ++b) {
        const __m256 tb = _mm256_broadcast_ps(reinterpret_cast<const __m128*>(T + b * tstride));
        a[b][0] = _mm256_add_ps(a[b][0], _mm256_permutevar_ps(tb, m0));
        a[b][1] = _mm256_add_ps(a[b][1], _mm256_permutevar_ps(tb, n0));
        a[b][2] = _mm256_add_ps(a[b][2], _mm256_permutevar_ps(tb, m1));
        a[b][3] = _mm256_add_ps(a[b][3], _mm256_permutevar_ps(tb, n1));
      }
      if (++k == kCodesPerWord) {
        k = 0;
        if (++w < words) {
          _mm_prefetch(reinterpret_cast<const char*>(Pv + w * 2) + kPrefetchBytes, _MM_HINT_T0);
          m0 = _mm256_loadu_si256(Pv + w * 2);
          m1 = _mm256_loadu_si256(Pv + w * 2 + 1);
        }
      } else {
        m0 = _mm256_srli_epi32(m0, kCodeBits);
        m1 = _mm256_srli_epi32(m1, kCodeBits);
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

WK_AVX2 void dequant_group_avx2(const int32_t* packed, const float* scb, const Layout& l, int64_t g, int64_t rb0,
                                int64_t rb1, float* Wt, int64_t ld) {
  const int64_t block_elems = l.words_per_row * kPlanes * kRowsPerBlock;
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t c = 0; c < l.group_len(g); ++c) {
    const BitPos bp = bit_pos(l, g, c);
    // blendv reads only the sign bit: move the wanted bit there.
    const __m128i sp = _mm_cvtsi32_si128(31 - bp.bit), sn = _mm_cvtsi32_si128(29 - bp.bit);
    float* dst = Wt + (g * l.group + c) * ld;
    for (int64_t rb = rb0; rb < rb1; ++rb, dst += kRowsPerBlock) {
      const __m256i* Pv = reinterpret_cast<const __m256i*>(packed + rb * block_elems + bp.word * kPlanes * kRowsPerBlock);
      const float* sc = scb + (rb * l.n_groups + g) * 16;
      const __m256 s1 = _mm256_loadu_ps(sc), s2 = _mm256_loadu_ps(sc + 8);
      const __m256i w1 = _mm256_loadu_si256(Pv), w2 = _mm256_loadu_si256(Pv + 1);
      const __m256 p1 = _mm256_castsi256_ps(_mm256_sll_epi32(w1, sp)), n1 = _mm256_castsi256_ps(_mm256_sll_epi32(w1, sn));
      const __m256 p2 = _mm256_castsi256_ps(_mm256_sll_epi32(w2, sp)), n2 = _mm256_castsi256_ps(_mm256_sll_epi32(w2, sn));
      __m256 v = _mm256_sub_ps(_mm256_blendv_ps(zero, s1, p1), _mm256_blendv_ps(zero, s1, n1));
      v = _mm256_add_ps(v, _mm256_sub_ps(_mm256_blendv_ps(zero, s2, p2), _mm256_blendv_ps(zero, s2, n2)));
      _mm256_storeu_ps(dst, v);
    }
  }
}

// ---------------------------------------------------------------- AVX-512 path

// Two row blocks (16 rows) per register: the code vector is the two blocks' words side by side,
// and one vpermps looks the low 4 bits of every lane up in the pair's 16-entry table of signed
// sums. Two accumulator sets alternate between pairs to hide the add latency.
template <int NB>
WK_AVX512 void block2_avx512(const float* tables, const int32_t* P0, const int32_t* P1, const float* sc0,
                             const float* sc1, const Layout& l, float* out0, float* out1) {
  const int64_t tstride = l.pairs_per_row * 16, n_groups = l.n_groups, words = l.words_per_row;
  const int64_t np_full = l.pairs_full, np_last = l.pairs_last;
  __m512 y[NB];
  for (int b = 0; b < NB; ++b) y[b] = _mm512_setzero_ps();
  const __m256i* A = reinterpret_cast<const __m256i*>(P0);
  const __m256i* B = reinterpret_cast<const __m256i*>(P1);
  const float* T = tables;
  int64_t w = 0;
  int k = 0;
#define WK_LOAD512(i, wi) \
  _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(A + (wi) * 2 + (i))), _mm256_loadu_si256(B + (wi) * 2 + (i)), 1)
  __m512i m0 = _mm512_setzero_si512(), m1 = m0;
  if (words > 0) {
    m0 = WK_LOAD512(0, 0);
    m1 = WK_LOAD512(1, 0);
  }
  for (int64_t g = 0; g < n_groups; ++g) {
    __m512 a[NB][2], c[NB][2];
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < 2; ++i) a[b][i] = c[b][i] = _mm512_setzero_ps();
    const int64_t np = g + 1 == n_groups ? np_last : np_full;
    // Two bodies per iteration, each with its own accumulators (a, then c).
#define WK_PAIR512(acc)                                                  \
  do {                                                                   \
    for (int b = 0; b < NB; ++b) {                                       \
      const __m512 tb = _mm512_loadu_ps(T + b * tstride);                \
      acc[b][0] = _mm512_add_ps(acc[b][0], _mm512_permutexvar_ps(m0, tb)); \
      acc[b][1] = _mm512_add_ps(acc[b][1], _mm512_permutexvar_ps(m1, tb)); \
    }                                                                    \
    T += 16;                                                             \
    if (++k == kCodesPerWord) {                                          \
      k = 0;                                                             \
      if (++w < words) {                                                 \
        m0 = WK_LOAD512(0, w);                                           \
        m1 = WK_LOAD512(1, w);                                           \
      }                                                                  \
    } else {                                                             \
      m0 = _mm512_srli_epi32(m0, kCodeBits);                             \
      m1 = _mm512_srli_epi32(m1, kCodeBits);                             \
    }                                                                    \
  } while (0)
    int64_t q = 0;
    for (; q + 2 <= np; q += 2) {
      WK_PAIR512(a);
      WK_PAIR512(c);
    }
    if (q < np) WK_PAIR512(a);
#undef WK_PAIR512
#undef WK_LOAD512
    const __m512 s1 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(sc0 + g * 16)),
                                         _mm256_loadu_ps(sc1 + g * 16), 1);
    const __m512 s2 = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(sc0 + g * 16 + 8)),
                                         _mm256_loadu_ps(sc1 + g * 16 + 8), 1);
    for (int b = 0; b < NB; ++b) {
      y[b] = _mm512_fmadd_ps(s1, _mm512_add_ps(a[b][0], c[b][0]), y[b]);
      y[b] = _mm512_fmadd_ps(s2, _mm512_add_ps(a[b][1], c[b][1]), y[b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    _mm256_storeu_ps(out0 + b * kRowsPerBlock, _mm512_castps512_ps256(y[b]));
    _mm256_storeu_ps(out1 + b * kRowsPerBlock, _mm512_extractf32x8_ps(y[b], 1));
  }
}

WK_AVX512 void blocks2_avx512(const float* tables, int64_t batch, const int32_t* P0, const int32_t* P1,
                              const float* sc0, const float* sc1, const Layout& l, float* out0, float* out1) {
  const int64_t tstride = l.pairs_per_row * 16;
  int64_t b = 0;
  for (; b + 4 <= batch; b += 4)
    block2_avx512<4>(tables + b * tstride, P0, P1, sc0, sc1, l, out0 + b * kRowsPerBlock, out1 + b * kRowsPerBlock);
  for (; b + 2 <= batch; b += 2)
    block2_avx512<2>(tables + b * tstride, P0, P1, sc0, sc1, l, out0 + b * kRowsPerBlock, out1 + b * kRowsPerBlock);
  for (; b < batch; ++b)
    block2_avx512<1>(tables + b * tstride, P0, P1, sc0, sc1, l, out0 + b * kRowsPerBlock, out1 + b * kRowsPerBlock);
}

}  // namespace

namespace {

inline float half_to_float(uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }

void block_scales_scalar(const uint16_t* scales, const Layout& l, int64_t rb, int64_t g0, float* sc) {
  for (int64_t g = g0; g < l.n_groups; ++g)
    for (int k = 0; k < kPlanes; ++k)
      for (int j = 0; j < kRowsPerBlock; ++j) {
        const int64_t r = rb * kRowsPerBlock + j;
        sc[(g * 2 + k) * kRowsPerBlock + j] = r < l.out ? half_to_float(scales[(r * l.n_groups + g) * 2 + k]) : 0.f;
      }
}

// Four groups at a time: per row the 8 halves (alpha1, alpha2 of 4 groups) converted to fp32, then
// an 8 x 8 transpose puts each (group, plane) across the 8 rows.
WK_AVX2 void block_scales_avx2(const uint16_t* scales, const Layout& l, int64_t rb, float* sc) {
  int64_t g0 = 0;
  for (; g0 + 4 <= l.n_groups; g0 += 4) {
    __m256 r[kRowsPerBlock];
    for (int j = 0; j < kRowsPerBlock; ++j) {
      const int64_t row = rb * kRowsPerBlock + j;
      r[j] = row < l.out ? _mm256_cvtph_ps(_mm_loadu_si128(
                               reinterpret_cast<const __m128i*>(scales + (row * l.n_groups + g0) * 2)))
                         : _mm256_setzero_ps();
    }
    __m256 t[8], u[8];
    for (int i = 0; i < 4; ++i) {
      t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int h = 0; h < 2; ++h) {  // rows 0-3, then 4-7
      u[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
      u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
      u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
      u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
    }
    float* dst = sc + g0 * 2 * kRowsPerBlock;
    for (int i = 0; i < 4; ++i) {
      _mm256_storeu_ps(dst + i * kRowsPerBlock, _mm256_permute2f128_ps(u[i], u[4 + i], 0x20));
      _mm256_storeu_ps(dst + (4 + i) * kRowsPerBlock, _mm256_permute2f128_ps(u[i], u[4 + i], 0x31));
    }
  }
  block_scales_scalar(scales, l, rb, g0, sc);
}

}  // namespace

void block_scales(const uint16_t* scales, const Layout& l, int64_t rb, float* sc, CpuIsa isa) {
  if (isa == CpuIsa::Scalar) {
    block_scales_scalar(scales, l, rb, 0, sc);
  } else {
    block_scales_avx2(scales, l, rb, sc);
  }
}

// ---------------------------------------------------------------- quantizer

bool quantize(const float* W, const Layout& l, int64_t max_iters, double tol, int32_t* packed, uint16_t* scales) {
  std::memset(packed, 0, static_cast<size_t>(l.packed_numel()) * sizeof(int32_t));
  std::atomic<bool> ok{true};
  at::parallel_for(0, l.out, 4, [&](int64_t begin, int64_t end) {
    trit_plane::GroupQuantizer gq(l.group);
    std::vector<uint32_t> words(static_cast<size_t>(l.words_per_row * kPlanes));
    std::vector<int8_t> t1(static_cast<size_t>(l.group)), t2(static_cast<size_t>(l.group));
    for (int64_t r = begin; r < end; ++r) {
      std::fill(words.begin(), words.end(), 0u);
      for (int64_t g = 0; g < l.n_groups; ++g) {
        const int64_t len = l.group_len(g);
        double alpha[2];
        gq.run(W + r * l.in + g * l.group, len, max_iters, tol, alpha, t1.data(), t2.data(), round_half);
        for (int k = 0; k < kPlanes; ++k) {
          const c10::Half h(static_cast<float>(alpha[k]));
          if (!std::isfinite(static_cast<float>(h))) ok.store(false, std::memory_order_relaxed);
          scales[(r * l.n_groups + g) * 2 + k] = h.x;
        }
        for (int64_t j = 0; j < len; ++j) {
          const BitPos bp = bit_pos(l, g, j);
          if (t1[j]) words[bp.word * kPlanes] |= trit_bit(bp, t1[j]);
          if (t2[j]) words[bp.word * kPlanes + 1] |= trit_bit(bp, t2[j]);
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
    std::vector<uint32_t> words(static_cast<size_t>(l.words_per_row * kPlanes));
    for (int64_t r = begin; r < end; ++r) {
      std::fill(words.begin(), words.end(), 0u);
      for (int64_t g = 0; g < l.n_groups; ++g)
        for (int64_t j = 0; j < l.group_len(g); ++j) {
          const BitPos bp = bit_pos(l, g, j);
          for (int k = 0; k < kPlanes; ++k) {
            const int8_t v = trits[k * plane + r * l.in + g * l.group + j];
            if (v) words[bp.word * kPlanes + k] |= trit_bit(bp, v);
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
          for (int k = 0; k < kPlanes; ++k) {
            const uint32_t word = static_cast<uint32_t>(packed[l.word_index(r, bp.word, k)]);
            trits[k * plane + r * l.in + g * l.group + j] = static_cast<int8_t>(
                static_cast<int>((word >> bp.bit) & 1u) - static_cast<int>((word >> (bp.bit + 2)) & 1u));
          }
        }
  });
}

void block_scales_all(const uint16_t* scales, const Layout& l, float* scb, CpuIsa isa) {
  at::parallel_for(0, l.row_blocks, 64, [&](int64_t begin, int64_t end) {
    for (int64_t rb = begin; rb < end; ++rb) block_scales(scales, l, rb, scb + rb * l.n_groups * 16, isa);
  });
}

void dequantize_tile_t(const int32_t* packed, const float* scb, const Layout& l, int64_t rb0, int64_t rb1, float* Wt,
                       CpuIsa isa) {
  const int64_t ld = (rb1 - rb0) * kRowsPerBlock;
  parallel_units(l.n_groups, [&](int64_t g) {
    if (isa == CpuIsa::Scalar) {
      dequant_group_scalar(packed, scb, l, g, rb0, rb1, Wt, ld);
    } else {
      dequant_group_avx2(packed, scb, l, g, rb0, rb1, Wt, ld);
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
  const bool wide = isa == CpuIsa::Avx512;
  std::vector<float> tables(static_cast<size_t>(batch * l.pairs_per_row * (wide ? 16 : 4)));
  build_tables(x, batch, l, wide, tables.data());
  const int64_t block_elems = l.words_per_row * kPlanes * kRowsPerBlock;
  const int64_t sc_elems = l.n_groups * 2 * kRowsPerBlock;
  // Work unit: one row block; two on the AVX-512 path, which fills 16 lanes with them (a lone
  // last block is paired with a zero block).
  const int64_t per_unit = wide ? 2 : 1;
  const int64_t units = (l.row_blocks + per_unit - 1) / per_unit;
  auto scatter = [&](int64_t rb, const float* out) {
    for (int64_t b = 0; b < batch; ++b)
      for (int j = 0; j < kRowsPerBlock; ++j) {
        const int64_t r = rb * kRowsPerBlock + j;
        if (r < l.out) y[b * l.out + r] = out[b * kRowsPerBlock + j];
      }
  };
  parallel_units(units, [&](int64_t u) {
    thread_local std::vector<float> sc, out;
    thread_local std::vector<int32_t> zero_block;
    sc.assign(static_cast<size_t>(2 * sc_elems), 0.f);
    out.resize(static_cast<size_t>(2 * batch * kRowsPerBlock));
    const int64_t rb = u * per_unit;
    const int32_t* P = packed + rb * block_elems;
    block_scales(scales, l, rb, sc.data(), isa);
    float* o1 = out.data() + batch * kRowsPerBlock;
    if (wide) {
      const bool pair = rb + 1 < l.row_blocks;
      if (pair) {
        block_scales(scales, l, rb + 1, sc.data() + sc_elems, isa);
      } else {
        zero_block.assign(static_cast<size_t>(block_elems), 0);
      }
      blocks2_avx512(tables.data(), batch, P, pair ? P + block_elems : zero_block.data(), sc.data(),
                     sc.data() + sc_elems, l, out.data(), o1);
      scatter(rb, out.data());
      if (pair) scatter(rb + 1, o1);
    } else {
      if (isa == CpuIsa::Scalar) {
        block_scalar(tables.data(), batch, P, sc.data(), l, out.data());
      } else {
        blocks_avx2(tables.data(), batch, P, sc.data(), l, out.data());
      }
      scatter(rb, out.data());
    }
  });
}

}  // namespace weightkit::trit_plane_cpu
