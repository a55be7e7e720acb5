// CPU kernels of the palette family (see cpu.h for the packed layout).
#include "palette/cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

namespace weightkit::palette_cpu {

#define WK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define WK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
#define WK_INLINE inline __attribute__((always_inline))

namespace {

// ------------------------------------------------------------------------------- Hadamard

// In-place unnormalized Walsh-Hadamard transform of m consecutive segments of length P (a power
// of two). Plain loops: the compiler vectorizes the inner loop once h >= the vector width, and
// the wrappers below compile it for each ISA.
WK_INLINE void fwht_segments(float* buf, int64_t m, int64_t P) {
  for (int64_t a = 0; a < m; ++a) {
    float* s = buf + a * P;
    for (int64_t h = 1; h < P; h *= 2)
      for (int64_t i = 0; i < P; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          const float u = s[j], v = s[j + h];
          s[j] = u + v;
          s[j + h] = u - v;
        }
  }
}

WK_INLINE void hadamard_row(const float* x, float* y, float* buf, int64_t n, int m, const int8_t* Hm,
                            const float* signs, float scale) {
  if (signs != nullptr)
    for (int64_t i = 0; i < n; ++i) buf[i] = x[i] * signs[i];
  else
    std::memcpy(buf, x, sizeof(float) * n);
  const int64_t P = n / m;
  fwht_segments(buf, m, P);
  if (m == 1) {
    for (int64_t i = 0; i < n; ++i) y[i] = buf[i] * scale;
    return;
  }
  // y[a, :] = scale * sum_a' H[a, a'] buf[a', :]: the small factor of the Kronecker product.
  for (int a = 0; a < m; ++a) {
    float* out = y + a * P;
    for (int64_t b = 0; b < P; ++b) out[b] = 0.f;
    for (int a2 = 0; a2 < m; ++a2) {
      const float h = Hm[a * m + a2] > 0 ? scale : -scale;
      const float* in = buf + a2 * P;
      for (int64_t b = 0; b < P; ++b) out[b] += h * in[b];
    }
  }
}

void hadamard_row_scalar(const float* x, float* y, float* buf, int64_t n, int m, const int8_t* Hm, const float* s,
                         float scale) {
  hadamard_row(x, y, buf, n, m, Hm, s, scale);
}
WK_AVX2 void hadamard_row_avx2(const float* x, float* y, float* buf, int64_t n, int m, const int8_t* Hm,
                               const float* s, float scale) {
  hadamard_row(x, y, buf, n, m, Hm, s, scale);
}
WK_AVX512 void hadamard_row_avx512(const float* x, float* y, float* buf, int64_t n, int m, const int8_t* Hm,
                                   const float* s, float scale) {
  hadamard_row(x, y, buf, n, m, Hm, s, scale);
}

// ------------------------------------------------------------------------------------ GEMV

// xs: (T, d, upad) activations split by codeword component and zero-padded to whole blocks;
// lut: (d, ls) codebook components, ls = max(16, 2^c) (zero-padded so a 16-entry table load is
// always in bounds).
struct GemvArgs {
  const float* xs;
  int64_t T, upad;
  const int32_t* packed;
  int64_t rows, nblk;
  const float* lut;
  int64_t ls;
  const float* scales;
  float* y;
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

template <int C>
WK_AVX2 WK_INLINE __m256 decode8(__m256i i, const __m256* t, const float* table) {
  if constexpr (C <= 3) {
    return _mm256_permutevar8x32_ps(t[0], i);
  } else if constexpr (C == 4) {
    const __m256 lo = _mm256_permutevar8x32_ps(t[0], i), hi = _mm256_permutevar8x32_ps(t[1], i);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(i, 28)));
  } else {
    return _mm256_i32gather_ps(table, i, 4);
  }
}

WK_AVX2 WK_INLINE float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
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
      switch (nt) {
        case 1: gemv_rows_avx2<C, D, 1>(a, r0, r1, t0); break;
        case 2: gemv_rows_avx2<C, D, 2>(a, r0, r1, t0); break;
        case 3: gemv_rows_avx2<C, D, 3>(a, r0, r1, t0); break;
        default: gemv_rows_avx2<C, D, 4>(a, r0, r1, t0); break;
      }
    } else {
      gemv_rows_scalar<C, D>(a, r0, r1, t0, nt);
    }
  }
}

// ------------------------------------------- 2-D VQ with 7- or 8-bit codes: bf16 byte tables
//
// 128 or 256 codewords are too many for the 16/32-entry permutes above, and the gather path (two
// AVX-512 gathers per 16 codes, one per component) is compute-bound. Instead each codeword
// component is rounded to bf16 and split into a low-byte and a high-byte table of 128/256
// entries; VPERMI2B looks up 64 codes per instruction in 128 of them (bit 7 of an 8-bit code
// picks between two such halves), two byte unpacks rebuild the bf16 values, and VDPBF16PS
// multiplies them by the activations (rounded to bf16 as torch's bf16 F.linear rounds them) and
// accumulates in fp32. A 16-word block holds 64 codes (4 per word) whose bytes are the lookup
// indices: directly for 8-bit codes, through VPMULTISHIFTQB for 7-bit ones. The bf16 rounding
// (relative 2^-9) is far below the error of a 3.5-4 bit quantizer.

// fp32 -> bf16 bits, round to nearest even as torch rounds (NaN stays NaN).
inline uint16_t bf16_bits(float f) { return c10::BFloat16(f).x; }

// xq: (T, nblk, 4, 16) words of two bf16 activations each, ordered as the byte unpacks leave the
// decoded values (see vq_bytes_activations); tab: (4, 256) bytes, component 0 low / high byte,
// component 1 low / high byte.
struct ByteGemvArgs {
  const uint32_t* xq;
  int64_t T, nblk;
  const int32_t* packed;
  int64_t rows;
  const uint8_t* tab;
  const float* scales;
  float* y;
};

#define WK_VBMI_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512bf16,fma,f16c")))

template <int C>
WK_VBMI_BF16 WK_INLINE __m512i byte_plane(__m512i idx, __mmask64 high, const __m512i* t) {
  const __m512i lo = _mm512_permutex2var_epi8(t[0], idx, t[1]);  // entries 0..127 (7 index bits)
  if constexpr (C == 7) {
    return lo;
  } else {
    return _mm512_mask_blend_epi8(high, lo, _mm512_permutex2var_epi8(t[2], idx, t[3]));
  }
}

template <int C, int NT>
WK_VBMI_BF16 void gemv_vq_bytes_avx512(const ByteGemvArgs& a, int64_t r0, int64_t r1, int64_t t0) {
  constexpr int R = C == 8 ? 4 : 2;  // registers per 128/256-byte plane
  __m512i tab[4][R];
  for (int q = 0; q < 4; ++q)
    for (int k = 0; k < R; ++k) tab[q][k] = _mm512_loadu_si512(a.tab + 256 * q + 64 * k);
  // Bit offsets of the four 7-bit codes of each 32-bit word, per 64-bit lane.
  const __m512i shifts = _mm512_set1_epi64(0x352E2720150E0700LL);
  constexpr int ACC = accumulators<NT>();
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* w = a.packed + r * a.nblk * 16;
    __m512 acc[NT * ACC];
    for (int t = 0; t < NT * ACC; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < a.nblk; ++blk) {
      __m512i idx = _mm512_loadu_si512(w + blk * 16);
      if constexpr (C == 7) idx = _mm512_multishift_epi64_epi8(shifts, idx);
      const __mmask64 high = C == 8 ? _mm512_movepi8_mask(idx) : 0;
      for (int comp = 0; comp < 2; ++comp) {
        const __m512i lo = byte_plane<C>(idx, high, tab[2 * comp]);
        const __m512i hi = byte_plane<C>(idx, high, tab[2 * comp + 1]);
        const __m512bh v[2] = {(__m512bh)_mm512_unpacklo_epi8(lo, hi), (__m512bh)_mm512_unpackhi_epi8(lo, hi)};
        for (int h = 0; h < 2; ++h)
          for (int t = 0; t < NT; ++t) {
            const uint32_t* xb = a.xq + (((t0 + t) * a.nblk + blk) * 4 + 2 * comp + h) * 16;
            __m512& ac = acc[t * ACC + (2 * comp + h) % ACC];
            ac = _mm512_dpbf16_ps(ac, v[h], (__m512bh)_mm512_loadu_si512(xb));
          }
      }
    }
    store_row_sums<NT, ACC>(acc, a.y + t0 * a.rows + r, a.rows, a.scales[r]);
  }
}

template <int C>
void gemv_vq_bytes_rows(const ByteGemvArgs& a, int64_t r0, int64_t r1) {
  for (int64_t t0 = 0; t0 < a.T; t0 += 4) {
    switch (std::min<int64_t>(4, a.T - t0)) {
      case 1: gemv_vq_bytes_avx512<C, 1>(a, r0, r1, t0); break;
      case 2: gemv_vq_bytes_avx512<C, 2>(a, r0, r1, t0); break;
      case 3: gemv_vq_bytes_avx512<C, 3>(a, r0, r1, t0); break;
      default: gemv_vq_bytes_avx512<C, 4>(a, r0, r1, t0); break;
    }
  }
}

// Activations in the order the kernel's byte unpacks produce decoded values: within a block of 64
// pairs, byte b of the 16 loaded words is unit (b % 4) * 16 + b / 4; unpacklo / unpackhi of 128-bit
// lane k yield bytes 16k + 0..7 / 16k + 8..15, and bf16 word j of a half pairs bytes
// 16 (j / 4) + 2 (j % 4) + {0, 1}.
std::vector<uint32_t> vq_bytes_activations(const float* x, int64_t T, int64_t units, int64_t nblk) {
  std::vector<uint32_t> xq(static_cast<size_t>(T * nblk * 64), 0u);
  auto value = [&](int64_t t, int64_t blk, int byte, int comp) -> uint32_t {
    const int64_t u = blk * 64 + (byte % 4) * 16 + byte / 4;
    return u < units ? bf16_bits(x[(t * units + u) * 2 + comp]) : 0u;
  };
  for (int64_t t = 0; t < T; ++t)
    for (int64_t blk = 0; blk < nblk; ++blk)
      for (int comp = 0; comp < 2; ++comp)
        for (int h = 0; h < 2; ++h)
          for (int j = 0; j < 16; ++j) {
            const int b0 = 16 * (j / 4) + 2 * (j % 4) + 8 * h;
            xq[((t * nblk + blk) * 4 + 2 * comp + h) * 16 + j] =
                value(t, blk, b0, comp) | (value(t, blk, b0 + 1, comp) << 16);
          }
  return xq;
}

void gemv_vq_bytes(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t units, int c,
                   const float* codebook, const float* scales, float* y) {
  const int64_t nblk = num_blocks(units, c);  // 64 codes per block for c = 7 and 8
  const std::vector<uint32_t> xq = vq_bytes_activations(x, T, units, nblk);
  std::vector<uint8_t> tab(4 * 256, 0);
  for (int64_t k = 0; k < (int64_t(1) << c); ++k)
    for (int comp = 0; comp < 2; ++comp) {
      const uint16_t v = bf16_bits(codebook[2 * k + comp]);
      tab[256 * (2 * comp) + k] = static_cast<uint8_t>(v & 0xff);
      tab[256 * (2 * comp + 1) + k] = static_cast<uint8_t>(v >> 8);
    }
  const ByteGemvArgs a{xq.data(), T, nblk, packed, rows, tab.data(), scales, y};
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(nblk * 16, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    if (c == 7) gemv_vq_bytes_rows<7>(a, r0, r1);
    else gemv_vq_bytes_rows<8>(a, r0, r1);
  });
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

void hadamard_rows(const float* x, float* y, int64_t rows, int64_t n, int m, const int8_t* Hm, const float* signs,
                   float scale, CpuIsa isa) {
  auto row_fn = isa == CpuIsa::Avx512 ? &hadamard_row_avx512 : isa == CpuIsa::Avx2 ? &hadamard_row_avx2
                                                                                   : &hadamard_row_scalar;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(n);
    for (int64_t r = r0; r < r1; ++r) row_fn(x + r * n, y + r * n, buf.data(), n, m, Hm, signs, scale);
  });
}

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
          const float* codebook, const float* scales, float* y, CpuIsa isa) {
  if (d == 2 && c >= 7 && isa == CpuIsa::Avx512 && cpu_features().avx512_bf16 && cpu_features().avx512_vbmi)
    return gemv_vq_bytes(x, T, packed, rows, units, c, codebook, scales, y);
  const int P = codes_per_word(c);
  const int64_t nblk = num_blocks(units, c), upad = nblk * 16 * P;
  // Activations split by component and zero-padded, so every block reads whole vectors.
  std::vector<float> xs(static_cast<size_t>(T * d * upad), 0.f);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t u = 0; u < units; ++u)
      for (int e = 0; e < d; ++e) xs[(t * d + e) * upad + u] = x[(t * units + u) * d + e];
  const int64_t ncb = int64_t(1) << c, ls = std::max<int64_t>(16, ncb);
  std::vector<float> lut(static_cast<size_t>(d * ls), 0.f);
  for (int64_t k = 0; k < ncb; ++k)
    for (int e = 0; e < d; ++e) lut[e * ls + k] = codebook[k * d + e];
  const GemvArgs a{xs.data(), T, upad, packed, rows, nblk, lut.data(), ls, scales, y};
  // Rows are independent; a grain of ~64 KiB of codes per task balances two to many threads.
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(nblk * 16, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    if (d == 1) gemv_dispatch_c<1>(c, isa, a, r0, r1);
    else gemv_dispatch_c<2>(c, isa, a, r0, r1);
  });
}

}  // namespace weightkit::palette_cpu
