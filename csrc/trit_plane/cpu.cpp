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
using trit_plane::kTriplesPerWord;

inline float half_to_float(uint16_t bits) { return static_cast<float>(c10::Half(bits, c10::Half::from_bits())); }
inline double round_half(double v) { return static_cast<float>(c10::Half(static_cast<float>(v))); }

// Where column j of group g of a row lives: word and bit within the row's words.
struct BitPos {
  int64_t word;
  int bit;
};
inline BitPos bit_pos(const Layout& l, int64_t g, int64_t j) {
  const int64_t t = l.group_first_triple(g) + j / 3;
  return {t / kTriplesPerWord, static_cast<int>(3 * (t % kTriplesPerWord) + j % 3)};
}

// Writes one row's masks (words_per_row x 4, row-local) into the block-interleaved tensor.
void store_row(const Layout& l, int64_t r, const uint32_t* words, int32_t* packed) {
  for (int64_t w = 0; w < l.words_per_row; ++w)
    for (int m = 0; m < kMasks; ++m) packed[l.word_index(r, w, m)] = static_cast<int32_t>(words[w * kMasks + m]);
}

// Mask index of (plane p, trit t != 0).
inline int mask_of(int p, int t) { return 2 * p + (t < 0 ? 1 : 0); }

// ---------------------------------------------------------------- matmul: shared pieces

// Per activation triple (x0, x1, x2) the 8 subset sums, entry i = sum of x_b over the set bits b
// of i, for each batch row: tables[(b * triples_per_row + t) * 8 + i]. Padded columns read as 0.
void build_tables(const float* x, int64_t batch, const Layout& l, float* tables) {
  at::parallel_for(0, batch * l.n_groups, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / l.n_groups, g = bg % l.n_groups;
      const float* xg = x + b * l.in + g * l.group;
      const int64_t len = l.group_len(g);
      float* T = tables + (b * l.triples_per_row + l.group_first_triple(g)) * 8;
      for (int64_t q = 0; q < l.group_triples(g); ++q, T += 8) {
        const float x0 = xg[3 * q];
        const float x1 = 3 * q + 1 < len ? xg[3 * q + 1] : 0.f;
        const float x2 = 3 * q + 2 < len ? xg[3 * q + 2] : 0.f;
        T[0] = 0.f;
        T[1] = x0;
        T[2] = x1;
        T[3] = x0 + x1;
        T[4] = x2;
        T[5] = x0 + x2;
        T[6] = x1 + x2;
        T[7] = (x0 + x1) + x2;
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
    const float* Tb = tables + b * l.triples_per_row * 8;
    for (int j = 0; j < kRowsPerBlock; ++j) {
      float y = 0.f;
      for (int64_t g = 0; g < l.n_groups; ++g) {
        float s[2] = {0.f, 0.f};
        const int64_t t0 = l.group_first_triple(g);
        for (int64_t t = t0; t < t0 + l.group_triples(g); ++t) {
          const int64_t w = t / kTriplesPerWord;
          const int shift = static_cast<int>(3 * (t % kTriplesPerWord));
          const float* T = Tb + t * 8;
          for (int p = 0; p < 2; ++p) {
            const uint32_t pos = static_cast<uint32_t>(P[(w * kMasks + 2 * p) * kRowsPerBlock + j]);
            const uint32_t neg = static_cast<uint32_t>(P[(w * kMasks + 2 * p + 1) * kRowsPerBlock + j]);
            s[p] += T[(pos >> shift) & 7u] - T[(neg >> shift) & 7u];
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

// NB batch rows at once for one block of 8 rows (lanes = rows). Per triple and batch row: 4
// table lookups (plane 1/2, positive/negative) into 4 independent accumulators.
template <int NB>
WK_AVX2 void block_avx2(const float* tables, const int32_t* P, const float* sc, const Layout& l, float* out) {
  const int64_t tstride = l.triples_per_row * 8;
  __m256 y[NB];
  for (int b = 0; b < NB; ++b) y[b] = _mm256_setzero_ps();
  const __m256i* Pv = reinterpret_cast<const __m256i*>(P);
  int64_t t = 0, w = 0;
  int k = 0;
  __m256i m0, m1, m2, m3;
  auto load_word = [&](int64_t wi) WK_AVX2 {
    m0 = _mm256_loadu_si256(Pv + wi * 4 + 0);
    m1 = _mm256_loadu_si256(Pv + wi * 4 + 1);
    m2 = _mm256_loadu_si256(Pv + wi * 4 + 2);
    m3 = _mm256_loadu_si256(Pv + wi * 4 + 3);
  };
  if (l.words_per_row > 0) load_word(0);
  for (int64_t g = 0; g < l.n_groups; ++g) {
    __m256 a[NB][4];
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < 4; ++i) a[b][i] = _mm256_setzero_ps();
    const int64_t nt = l.group_triples(g);
    for (int64_t q = 0; q < nt; ++q, ++t) {
      for (int b = 0; b < NB; ++b) {
        const __m256 T = _mm256_loadu_ps(tables + b * tstride + t * 8);
        a[b][0] = _mm256_add_ps(a[b][0], _mm256_permutevar8x32_ps(T, m0));
        a[b][1] = _mm256_add_ps(a[b][1], _mm256_permutevar8x32_ps(T, m1));
        a[b][2] = _mm256_add_ps(a[b][2], _mm256_permutevar8x32_ps(T, m2));
        a[b][3] = _mm256_add_ps(a[b][3], _mm256_permutevar8x32_ps(T, m3));
      }
      if (++k == kTriplesPerWord) {
        k = 0;
        if (++w < l.words_per_row) load_word(w);
      } else {
        m0 = _mm256_srli_epi32(m0, 3);
        m1 = _mm256_srli_epi32(m1, 3);
        m2 = _mm256_srli_epi32(m2, 3);
        m3 = _mm256_srli_epi32(m3, 3);
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
  const int64_t tstride = l.triples_per_row * 8;
  int64_t b = 0;
  for (; b + 2 <= batch; b += 2) block_avx2<2>(tables + b * tstride, P, sc, l, out + b * kRowsPerBlock);
  if (b < batch) block_avx2<1>(tables + b * tstride, P, sc, l, out + b * kRowsPerBlock);
}

// ---------------------------------------------------------------- AVX-512 path

#define WK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))

// Two row blocks (16 rows) per register: the index vector is the two blocks' masks side by side
// and the 8-entry table is repeated in both halves, so vpermps's fourth index bit (the next
// triple's first bit) selects the same entry.
template <int NB>
WK_AVX512 void block2_avx512(const float* tables, const int32_t* P0, const int32_t* P1, const float* sc0,
                             const float* sc1, const Layout& l, float* out0, float* out1) {
  const int64_t tstride = l.triples_per_row * 8;
  __m512 y[NB];
  for (int b = 0; b < NB; ++b) y[b] = _mm512_setzero_ps();
  const __m256i* A = reinterpret_cast<const __m256i*>(P0);
  const __m256i* B = reinterpret_cast<const __m256i*>(P1);
  int64_t t = 0, w = 0;
  int k = 0;
  __m512i m[4];
  auto load_word = [&](int64_t wi) WK_AVX512 {
    for (int i = 0; i < 4; ++i)
      m[i] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(A + wi * 4 + i)),
                                _mm256_loadu_si256(B + wi * 4 + i), 1);
  };
  if (l.words_per_row > 0) load_word(0);
  for (int64_t g = 0; g < l.n_groups; ++g) {
    __m512 a[NB][4];
    for (int b = 0; b < NB; ++b)
      for (int i = 0; i < 4; ++i) a[b][i] = _mm512_setzero_ps();
    const int64_t nt = l.group_triples(g);
    for (int64_t q = 0; q < nt; ++q, ++t) {
      for (int b = 0; b < NB; ++b) {
        const __m512 T = _mm512_broadcast_f32x8(_mm256_loadu_ps(tables + b * tstride + t * 8));
        for (int i = 0; i < 4; ++i) a[b][i] = _mm512_add_ps(a[b][i], _mm512_permutexvar_ps(m[i], T));
      }
      if (++k == kTriplesPerWord) {
        k = 0;
        if (++w < l.words_per_row) load_word(w);
      } else {
        for (int i = 0; i < 4; ++i) m[i] = _mm512_srli_epi32(m[i], 3);
      }
    }
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
  const int64_t tstride = l.triples_per_row * 8;
  int64_t b = 0;
  for (; b + 4 <= batch; b += 4)
    block2_avx512<4>(tables + b * tstride, P0, P1, sc0, sc1, l, out0 + b * kRowsPerBlock, out1 + b * kRowsPerBlock);
  for (; b < batch; ++b)
    block2_avx512<1>(tables + b * tstride, P0, P1, sc0, sc1, l, out0 + b * kRowsPerBlock, out1 + b * kRowsPerBlock);
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

void dequantize_rows(const int32_t* packed, const uint16_t* scales, const Layout& l, int64_t r0, int64_t r1,
                     float* W) {
  at::parallel_for(r0, r1, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = W + (r - r0) * l.in;
      for (int64_t g = 0; g < l.n_groups; ++g) {
        const float a1 = half_to_float(scales[(r * l.n_groups + g) * 2]);
        const float a2 = half_to_float(scales[(r * l.n_groups + g) * 2 + 1]);
        for (int64_t j = 0; j < l.group_len(g); ++j) {
          const BitPos bp = bit_pos(l, g, j);
          float v = 0.f;
          const uint32_t p1 = static_cast<uint32_t>(packed[l.word_index(r, bp.word, 0)]) >> bp.bit;
          const uint32_t n1 = static_cast<uint32_t>(packed[l.word_index(r, bp.word, 1)]) >> bp.bit;
          const uint32_t p2 = static_cast<uint32_t>(packed[l.word_index(r, bp.word, 2)]) >> bp.bit;
          const uint32_t n2 = static_cast<uint32_t>(packed[l.word_index(r, bp.word, 3)]) >> bp.bit;
          if (p1 & 1u) v += a1;
          if (n1 & 1u) v -= a1;
          if (p2 & 1u) v += a2;
          if (n2 & 1u) v -= a2;
          row[g * l.group + j] = v;
        }
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
  std::vector<float> tables(static_cast<size_t>(batch * l.triples_per_row * 8));
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
