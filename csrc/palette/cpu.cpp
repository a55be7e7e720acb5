// CPU kernels of the palette family (see cpu.h for the packed layout).
#include "palette/cpu.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "common/cpu_target.h"
#include "common/simd.h"

namespace weightkit::palette_cpu {

namespace {

// ------------------------------------------------------------------------------------ GEMV

// xs: (T, d, upad) activations split by codeword component and zero-padded to whole blocks;
// lut: (d, ls) codebook components, ls = max(16, 2^c) (zero-padded so a 16-entry table load is
// always in bounds). Both null where uses_vq_pairs, which reads xi and pairs instead.
struct GemvArgs {
  const float* xs;
  int64_t T, upad;
  const int32_t* packed;
  int64_t rows, nblk;
  const float* lut;
  int64_t ls;
  const float* scales;
  float* y;
  // uses_vq_pairs only (else null): activations (T, upad, 2) with each unit's two components
  // side by side, and the codewords as 64-bit (c0, c1) pairs.
  const float* xi = nullptr;
  const double* pairs = nullptr;
};

template <int C>
WK_AVX512 WK_INLINE __m512 decode16(__m512i i, const __m512* t, const float* table) {
  if constexpr (C <= 4) {
    return _mm512_permutexvar_ps(i, t[0]);
  } else if constexpr (C == 5) {
    return _mm512_permutex2var_ps(t[0], i, t[1]);
  } else if constexpr (C == 6) {
    const __m512 lo = _mm512_permutex2var_ps(t[0], i, t[1]);
    const __m512 hi = _mm512_permutex2var_ps(t[2], i, t[3]);
    return _mm512_mask_blend_ps(_mm512_test_epi32_mask(i, _mm512_set1_epi32(32)), lo, hi);
  } else {
    return _mm512_i32gather_ps(i, table, 4);
  }
}

// Independent accumulator chains per token: ACC of them, so FMA latency is hidden even for one
// token; NT tokens share each decoded weight vector.
template <int NT>
constexpr int accumulators() {
  return NT == 1 ? 4 : NT == 2 ? 2 : 1;
}

// y[t * stride] = scale * (sum of token t's ACC accumulators, all lanes), t < NT.
template <int NT, int ACC>
WK_AVX512 WK_INLINE void store_row_sums(const __m512* acc, float* y, int64_t stride, float scale) {
  for (int t = 0; t < NT; ++t) {
    __m512 sum = acc[t * ACC];
    for (int k = 1; k < ACC; ++k) sum = _mm512_add_ps(sum, acc[t * ACC + k]);
    y[t * stride] = scale * _mm512_reduce_add_ps(sum);
  }
}

template <int C, int D, int NT>
WK_AVX512 void gemv_rows_avx512(const GemvArgs& a, int64_t r0, int64_t r1, int64_t t0) {
  constexpr int P = 32 / C;
  constexpr int NTAB = C <= 6 ? 4 : 1;
  __m512 tab[D][NTAB];
  for (int dim = 0; dim < D; ++dim)
    for (int q = 0; q < NTAB; ++q)
      tab[dim][q] = (16 * (q + 1) <= a.ls) ? _mm512_loadu_ps(a.lut + dim * a.ls + 16 * q) : _mm512_setzero_ps();
  const __m512i mask = _mm512_set1_epi32((1 << C) - 1);
  constexpr int ACC = accumulators<NT>();
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* w = a.packed + r * a.nblk * 16;
    __m512 acc[NT * ACC];
    for (int t = 0; t < NT * ACC; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < a.nblk; ++blk) {
      _mm_prefetch(reinterpret_cast<const char*>(w + blk * 16) + kPrefetchBytes, _MM_HINT_T0);
      __m512i wv = _mm512_loadu_si512(w + blk * 16);
      const float* xb = a.xs + t0 * D * a.upad + blk * P * 16;
#pragma GCC unroll 32
      for (int p = 0; p < P; ++p) {
        const __m512i i = _mm512_and_si512(wv, mask);
        wv = _mm512_srli_epi32(wv, C);
        for (int dim = 0; dim < D; ++dim) {
          const __m512 v = decode16<C>(i, tab[dim], a.lut + dim * a.ls);
          for (int t = 0; t < NT; ++t) {
            __m512& ac = acc[t * ACC + (p * D + dim) % ACC];
            ac = _mm512_fmadd_ps(v, _mm512_loadu_ps(xb + (t * D + dim) * a.upad + p * 16), ac);
          }
        }
      }
    }
    store_row_sums<NT, ACC>(acc, a.y + t0 * a.rows + r, a.rows, a.scales[r]);
  }
}

// 32-entry tables (C = 5; the scalar quantizer's, as 2-D VQ takes gemv_rows_avx2_pairs): register
// permutes over the table's four 8-entry slices (vpermps reads only an index's low 3 bits), then
// blends on index bits 3 and 4: 4 permutes and 3 blends per 8 codes, the slices read from L1 as
// memory operands. On the Zen 3 EPYC (AVX2 only) this took VQ 2.5-bit at 4096², 2 threads, from
// 4.8 ms (one 8-lane gather per 8 codes) to 3.3 ms. For 64 entries the 8 permutes and 7 blends
// lost to the gather, so C >= 6 keeps it.
template <int C>
WK_AVX2 WK_INLINE __m256 decode8_tree(__m256i i, const float* table) {
  constexpr int S = 1 << (C - 3);
  __m256 v[S];
  for (int s = 0; s < S; ++s) v[s] = _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8 * s), i);
#pragma GCC unroll 8
  for (int bit = 3; bit < C; ++bit) {
    const __m256 sel = _mm256_castsi256_ps(_mm256_slli_epi32(i, 31 - bit));  // bit -> sign
    const int n = S >> (bit - 2);
    for (int s = 0; s < n; ++s) v[s] = _mm256_blendv_ps(v[2 * s], v[2 * s + 1], sel);
  }
  return v[0];
}

// Codes of at least this many bits take gemv_rows_avx2_pairs for 2-D VQ on AVX2.
constexpr int kPairsMinC = 5;
constexpr bool uses_vq_pairs(int c, int d, CpuIsa isa) { return isa == CpuIsa::Avx2 && d == 2 && c >= kPairsMinC; }

template <int C>
WK_AVX2 WK_INLINE __m256 decode8(__m256i i, const __m256* t, const float* table) {
  if constexpr (C <= 3) {
    return _mm256_permutevar8x32_ps(t[0], i);
  } else if constexpr (C == 4) {
    const __m256 lo = _mm256_permutevar8x32_ps(t[0], i), hi = _mm256_permutevar8x32_ps(t[1], i);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)));
  } else if constexpr (C == 5) {
    return decode8_tree<C>(i, table);
  } else {
    return _mm256_i32gather_ps(table, i, 4);
  }
}

template <int C, int D, int NT>
WK_AVX2 void gemv_rows_avx2(const GemvArgs& a, int64_t r0, int64_t r1, int64_t t0) {
  constexpr int P = 32 / C;
  __m256 tab[D][2];
  for (int dim = 0; dim < D; ++dim)
    for (int q = 0; q < 2; ++q) tab[dim][q] = _mm256_loadu_ps(a.lut + dim * a.ls + 8 * q);
  const __m256i mask = _mm256_set1_epi32((1 << C) - 1);
  constexpr int ACC = accumulators<NT>();
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* w = a.packed + r * a.nblk * 16;
    __m256 acc[NT * ACC];
    for (int t = 0; t < NT * ACC; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t blk = 0; blk < a.nblk; ++blk) {
      for (int half = 0; half < 2; ++half) {
        __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + blk * 16 + 8 * half));
        const float* xb = a.xs + t0 * D * a.upad + blk * P * 16 + 8 * half;
#pragma GCC unroll 32
        for (int p = 0; p < P; ++p) {
          const __m256i i = _mm256_and_si256(wv, mask);
          wv = _mm256_srli_epi32(wv, C);
          for (int dim = 0; dim < D; ++dim) {
            const __m256 v = decode8<C>(i, tab[dim], a.lut + dim * a.ls);
            for (int t = 0; t < NT; ++t) {
              __m256& ac = acc[t * ACC + (p * D + dim) % ACC];
              ac = _mm256_fmadd_ps(v, _mm256_loadu_ps(xb + (t * D + dim) * a.upad + p * 16), ac);
            }
          }
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      __m256 sum = acc[t * ACC];
      for (int k = 1; k < ACC; ++k) sum = _mm256_add_ps(sum, acc[t * ACC + k]);
      a.y[(t0 + t) * a.rows + r] = a.scales[r] * hsum256(sum);
    }
  }
}

template <int C, int D>
void gemv_rows_scalar(const GemvArgs& a, int64_t r0, int64_t r1, int64_t t0, int nt) {
  constexpr int P = 32 / C;
  constexpr uint32_t mask = (1u << C) - 1;
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* w = a.packed + r * a.nblk * 16;
    for (int t = 0; t < nt; ++t) {
      const float* xt = a.xs + (t0 + t) * D * a.upad;
      float acc = 0.f;
      for (int64_t blk = 0; blk < a.nblk; ++blk)
        for (int l = 0; l < 16; ++l) {
          const uint32_t word = static_cast<uint32_t>(w[blk * 16 + l]);
          for (int p = 0; p < P; ++p) {
            const uint32_t code = (word >> (C * p)) & mask;
            const int64_t u = (blk * P + p) * 16 + l;
            for (int dim = 0; dim < D; ++dim) acc += a.lut[dim * a.ls + code] * xt[dim * a.upad + u];
          }
        }
      a.y[(t0 + t) * a.rows + r] = a.scales[r] * acc;
    }
  }
}

// 2-D VQ with 32 to 256 codewords on AVX2: each codeword is one 64-bit (c0, c1) pair, loaded
// with plain scalar loads four to a vector and multiplied with activations interleaved the same
// way. A Zen 3 AVX2 gather costs ~3 cycles per element (two per codeword, one per component), a
// 64-bit load into a vector ~0.8 cycles per codeword (standalone loop on the AVX2 EPYC).
template <int C, int NT>
WK_AVX2 void gemv_rows_avx2_pairs(const GemvArgs& a, int64_t r0, int64_t r1, int64_t t0) {
  constexpr int P = 32 / C;
  constexpr int SETS = NT <= 2 ? 2 : 1;  // accumulator sets alternating by slot: FMA latency
  const __m256i mask = _mm256_set1_epi32((1 << C) - 1);
  alignas(32) int32_t code[8 * P];
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* w = a.packed + r * a.nblk * 16;
    __m256 acc[SETS][NT][2];
    for (auto& set : acc)
      for (auto& tok : set) tok[0] = tok[1] = _mm256_setzero_ps();
    for (int64_t blk = 0; blk < a.nblk; ++blk) {
      _mm_prefetch(reinterpret_cast<const char*>(w + blk * 16) + kPrefetchBytes, _MM_HINT_T0);
      for (int half = 0; half < 2; ++half) {
        __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + blk * 16 + 8 * half));
        // Unit blk*16*P + p*16 + 8*half + j (j < 8) is lane j of slot p.
        const float* xb = a.xi + 2 * ((t0 * a.upad) + blk * 16 * P + 8 * half);
        // All slots' codes to memory first, then one load per code: GCC would otherwise turn the
        // reads of a just-stored vector into vpextrd + sign extension, ~3 uops per code.
        for (int p = 0; p < P; ++p) {
          _mm256_store_si256(reinterpret_cast<__m256i*>(code + 8 * p), _mm256_and_si256(wv, mask));
          wv = _mm256_srli_epi32(wv, C);
        }
        asm volatile("" : : "r"(code) : "memory");
#pragma GCC unroll 8
        for (int p = 0; p < P; ++p) {
          // Two codes per 64-bit load: fewer load uops than one per code (a few % faster).
          uint64_t cc[4];
          std::memcpy(cc, code + 8 * p, sizeof(cc));
          const double* pr = a.pairs;
          const __m256 lo = _mm256_castpd_ps(_mm256_setr_pd(pr[uint32_t(cc[0])], pr[cc[0] >> 32],
                                                            pr[uint32_t(cc[1])], pr[cc[1] >> 32]));
          const __m256 hi = _mm256_castpd_ps(_mm256_setr_pd(pr[uint32_t(cc[2])], pr[cc[2] >> 32],
                                                            pr[uint32_t(cc[3])], pr[cc[3] >> 32]));
          for (int t = 0; t < NT; ++t) {
            const float* xt = xb + 2 * t * a.upad + 32 * p;
            __m256* ac = acc[p % SETS][t];
            ac[0] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xt), ac[0]);
            ac[1] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xt + 8), ac[1]);
          }
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      __m256 sum = _mm256_add_ps(acc[0][t][0], acc[0][t][1]);
      for (int k = 1; k < SETS; ++k) sum = _mm256_add_ps(sum, _mm256_add_ps(acc[k][t][0], acc[k][t][1]));
      a.y[(t0 + t) * a.rows + r] = a.scales[r] * hsum256(sum);
    }
  }
}

template <int C, int D>
void gemv_rows(CpuIsa isa, const GemvArgs& a, int64_t r0, int64_t r1) {
  for (int64_t t0 = 0; t0 < a.T; t0 += 4) {
    const int nt = static_cast<int>(std::min<int64_t>(4, a.T - t0));
    if (isa == CpuIsa::Avx512) {
      switch (nt) {
        case 1: gemv_rows_avx512<C, D, 1>(a, r0, r1, t0); break;
        case 2: gemv_rows_avx512<C, D, 2>(a, r0, r1, t0); break;
        case 3: gemv_rows_avx512<C, D, 3>(a, r0, r1, t0); break;
        default: gemv_rows_avx512<C, D, 4>(a, r0, r1, t0); break;
      }
    } else if (isa == CpuIsa::Avx2) {
      if constexpr (uses_vq_pairs(C, D, CpuIsa::Avx2)) {  // gemv() filled a.xi and a.pairs
        switch (nt) {
          case 1: gemv_rows_avx2_pairs<C, 1>(a, r0, r1, t0); break;
          case 2: gemv_rows_avx2_pairs<C, 2>(a, r0, r1, t0); break;
          case 3: gemv_rows_avx2_pairs<C, 3>(a, r0, r1, t0); break;
          default: gemv_rows_avx2_pairs<C, 4>(a, r0, r1, t0); break;
        }
      } else {
        switch (nt) {
          case 1: gemv_rows_avx2<C, D, 1>(a, r0, r1, t0); break;
          case 2: gemv_rows_avx2<C, D, 2>(a, r0, r1, t0); break;
          case 3: gemv_rows_avx2<C, D, 3>(a, r0, r1, t0); break;
          default: gemv_rows_avx2<C, D, 4>(a, r0, r1, t0); break;
        }
      }
    } else {
      gemv_rows_scalar<C, D>(a, r0, r1, t0, nt);
    }
  }
}

template <int D>
void gemv_dispatch_c(int c, CpuIsa isa, const GemvArgs& a, int64_t r0, int64_t r1) {
  switch (c) {
    case 1: gemv_rows<1, D>(isa, a, r0, r1); break;
    case 2: gemv_rows<2, D>(isa, a, r0, r1); break;
    case 3: gemv_rows<3, D>(isa, a, r0, r1); break;
    case 4: gemv_rows<4, D>(isa, a, r0, r1); break;
    case 5: gemv_rows<5, D>(isa, a, r0, r1); break;
    case 6: gemv_rows<6, D>(isa, a, r0, r1); break;
    case 7: gemv_rows<7, D>(isa, a, r0, r1); break;
    default: gemv_rows<8, D>(isa, a, r0, r1); break;
  }
}

}  // namespace

void encode_nearest(const float* W, int64_t rows, int64_t units, int d, const float* codebook, int ncb,
                    int32_t* idx) {
  if (d == 1) {
    // Sorted codewords and the midpoints between neighbours: a binary search per weight.
    std::vector<int32_t> order(ncb);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t i, int32_t j) { return codebook[i] < codebook[j]; });
    std::vector<float> mid(std::max(ncb - 1, 0));
    for (int k = 0; k + 1 < ncb; ++k) mid[k] = 0.5f * (codebook[order[k]] + codebook[order[k + 1]]);
    at::parallel_for(0, rows * units, 65536, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t k = std::upper_bound(mid.begin(), mid.end(), W[i]) - mid.begin();
        idx[i] = order[k];
      }
    });
    return;
  }
  at::parallel_for(0, rows * units, 4096, [&](int64_t u0, int64_t u1) {
    constexpr int B = 16;
    for (int64_t ub = u0; ub < u1; ub += B) {
      const int nb = static_cast<int>(std::min<int64_t>(B, u1 - ub));
      float best[B];
      int32_t bi[B];
      for (int j = 0; j < B; ++j) best[j] = 3.4e38f, bi[j] = 0;
      for (int k = 0; k < ncb; ++k)
        for (int j = 0; j < nb; ++j) {
          float dist = 0.f;
          for (int e = 0; e < d; ++e) {
            const float diff = W[(ub + j) * d + e] - codebook[k * d + e];
            dist += diff * diff;
          }
          if (dist < best[j]) best[j] = dist, bi[j] = k;
        }
      for (int j = 0; j < nb; ++j) idx[ub + j] = bi[j];
    }
  });
}

void pack_codes(const int32_t* idx, int64_t rows, int64_t units, int c, int32_t* packed) {
  const int P = codes_per_word(c);
  const int64_t nblk = num_blocks(units, c);
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      uint32_t* out = reinterpret_cast<uint32_t*>(packed + r * nblk * 16);
      std::memset(out, 0, sizeof(uint32_t) * nblk * 16);
      for (int64_t u = 0; u < units; ++u) {
        const int64_t blk = u / (16 * P), rem = u % (16 * P), p = rem / 16, l = rem % 16;
        out[blk * 16 + l] |= static_cast<uint32_t>(idx[r * units + u]) << (c * p);
      }
    }
  });
}

void dequantize(const int32_t* packed, int64_t rows, int64_t units, int c, int d, const float* codebook,
                const float* scales, float* W) {
  const int P = codes_per_word(c);
  const int64_t nblk = num_blocks(units, c);
  const uint32_t mask = (1u << c) - 1;
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint32_t* in = reinterpret_cast<const uint32_t*>(packed + r * nblk * 16);
      for (int64_t u = 0; u < units; ++u) {
        const int64_t blk = u / (16 * P), rem = u % (16 * P), p = rem / 16, l = rem % 16;
        const uint32_t code = (in[blk * 16 + l] >> (c * p)) & mask;
        for (int e = 0; e < d; ++e) W[(r * units + u) * d + e] = scales[r] * codebook[code * d + e];
      }
    }
  });
}

void gemv(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t units, int c, int d,
          const float* codebook, const float* scales, float* y, CpuIsa isa, bool allow_int8) {
  if (allow_int8 && uses_int8_vq(c, d, isa) && gemv_vq_int8(x, T, packed, rows, units, c, codebook, scales, y, isa)) return;
  const int P = codes_per_word(c);
  const int64_t nblk = num_blocks(units, c), upad = nblk * 16 * P;
  const int64_t ncb = int64_t(1) << c, ls = std::max<int64_t>(16, ncb);
  GemvArgs a{nullptr, T, upad, packed, rows, nblk, nullptr, ls, scales, y};
  std::vector<float> xs, lut, xi;
  std::vector<double> pairs;
  if (uses_vq_pairs(c, d, isa)) {
    // x is already (T, units, 2): zero-pad each token to whole blocks.
    xi.assign(static_cast<size_t>(T * upad * 2), 0.f);
    for (int64_t t = 0; t < T; ++t) std::memcpy(&xi[t * upad * 2], x + t * units * 2, sizeof(float) * units * 2);
    pairs.resize(ncb);
    std::memcpy(pairs.data(), codebook, sizeof(float) * 2 * ncb);  // (c0, c1) bit patterns
    a.xi = xi.data();
    a.pairs = pairs.data();
  } else {
    // Activations split by component and zero-padded, so every block reads whole vectors.
    xs.assign(static_cast<size_t>(T * d * upad), 0.f);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t u = 0; u < units; ++u)
        for (int e = 0; e < d; ++e) xs[(t * d + e) * upad + u] = x[(t * units + u) * d + e];
    lut.assign(static_cast<size_t>(d * ls), 0.f);
    for (int64_t k = 0; k < ncb; ++k)
      for (int e = 0; e < d; ++e) lut[e * ls + k] = codebook[k * d + e];
    a.xs = xs.data();
    a.lut = lut.data();
  }
  // Rows are independent; a grain of ~64 KiB of codes per task balances two to many threads.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(nblk * 16, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    if (d == 1) gemv_dispatch_c<1>(c, isa, a, r0, r1);
    else gemv_dispatch_c<2>(c, isa, a, r0, r1);
  });
}

}  // namespace weightkit::palette_cpu
