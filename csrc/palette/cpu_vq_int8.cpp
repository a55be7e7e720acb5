// The 2-D VQ GEMV with int8 operands (palette_matmul's CPU path for 32- to 256-entry codebooks
// where uses_int8_vq; see cpu.h).
//
// Large VQ codebooks are too many entries for fp32 register permutes (or need several of them and
// blends per vector), and gathers are compute-bound (two per vector of codes, ~3 cycles per
// element on Zen 3). Here, as in llama.cpp's CPU kernels, both operands go to int8:
// - each codeword component is rounded to int8 on one scale for the whole codebook (s_c =
//   max|codebook| / 127) and stored as one table per component, which byte shuffles read for a
//   whole register of codes per instruction;
// - activations are rounded to int8 per token and block of codes (s_b = max|x| / 127 over the
//   block's values, the block being the packed layout's 16 words), laid out in the order of the
//   code bytes, so the looked-up bytes multiply them with no unpacking.
// Per block the int32 sum is scaled by s_b and accumulated in fp32. Error: each operand is off by
// at most half its step, s_c / 2 and s_b / 2, ~1% relative to the exact product on Gaussian data;
// tests/ops/test_palette.py checks the result against the float64 product of the rounded
// operands (tests/reference/palette.py: int8_vq_operands) and its distance to the exact product.
// Non-finite inputs return false, so the caller takes the exact fp32 path, which propagates them.
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/cpu_target.h"
#include "common/simd.h"
#include "palette/cpu.h"

namespace weightkit::palette_cpu {

namespace {

// xq: (T, nblk, regs, 2, reg_bytes) int8 activations in code-byte order (component 0, then 1, per
// code register), xs: (T, nblk) their block scales, offset: (T) 128 * sum_b xs[b] * sum(xq of
// block b) (the AVX-512 kernel's u8 table bias); tab: (2, 256) s8 codeword components, zero-padded.
struct Int8GemvArgs {
  const int8_t* xq;
  const float* xs;
  const float* offset;
  int64_t T, nblk;
  const int32_t* packed;
  int64_t rows;
  const int8_t* tab;
  float out_scale;  // s_c
  const float* scales;
  float* y;
};

// ------------------------------------------------- AVX-512 VBMI + VNNI: 6- to 8-bit codes
//
// The table is stored + 128 as u8 (64/128/256 entries per component), which a byte permute reads
// for 64 codes per instruction (VPERMB for 64 entries, VPERMI2B for 128; bit 7 of an 8-bit code
// picks between two 128-entry halves), and VPDPBUSD multiplies the u8 lookups by the s8
// activations; the +128 contributes 128 * sum(x_q) per block, which does not depend on the row
// and is taken off once per token. Two byte lookups per 64 codes instead of the four a bf16 table
// needs made the 7/8-bit kernel 2x faster (see docs/design-notes.md).
//
// Code bytes: 8-bit codes are the bytes of a block's 16 words; VPMULTISHIFTQB cuts 7-bit codes
// (4 per word) into one register and 6-bit codes (5 per word, 80 per block) into two, the second
// with 2 codes per 64-bit lane and 6 spare bytes (activation 0). Bits above the code are ignored
// by the permutes (VPERMB reads 6 index bits, VPERMI2B 7).

// Byte registers of codes per block: two for 6-bit codes, one for 7- and 8-bit codes.
constexpr int code_regs_avx512(int c) {
  return c == 6 ? 2 : 1;
}

// The unit (within its block) whose code lands in byte b of code register reg, or -1 (spare).
int unit_of_code_byte_avx512(int c, int reg, int b) {
  if (c >= 7) return (b % 4) * 16 + b / 4;
  const int q = b / 8, j = b % 8;  // 64-bit lane q holds words 2q and 2q + 1
  if (reg == 0) return j < 5 ? j * 16 + 2 * q : (j - 5) * 16 + 2 * q + 1;
  return j < 2 ? (j + 3) * 16 + 2 * q + 1 : -1;
}

template <int C>
WK_VBMI_VNNI WK_INLINE void code_bytes_avx512(const int32_t* w, __m512i* idx) {
  const __m512i v = _mm512_loadu_si512(w);
  if constexpr (C == 8) {
    idx[0] = v;
  } else if constexpr (C == 7) {  // bit offsets 0, 7, 14, 21 of each 32-bit word
    idx[0] = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x352E2720150E0700LL), v);
  } else {  // 0, 6, ..., 24 of word 2q, then 0, 6, 12 of word 2q + 1; then its 18 and 24
    idx[0] = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x2C262018120C0600LL), v);
    idx[1] = _mm512_multishift_epi64_epi8(_mm512_set1_epi64(0x3832LL), v);
  }
}

template <int C>
WK_VBMI_VNNI WK_INLINE __m512i byte_lookup_avx512(__m512i idx, const __m512i* t) {
  if constexpr (C == 6) {
    return _mm512_permutexvar_epi8(idx, t[0]);
  } else {
    const __m512i lo = _mm512_permutex2var_epi8(t[0], idx, t[1]);  // entries 0..127
    if constexpr (C == 7) return lo;
    else return _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, _mm512_permutex2var_epi8(t[2], idx, t[3]));
  }
}

template <int C, int NT>
WK_VBMI_VNNI void gemv_vq_int8_avx512(const Int8GemvArgs& a, int64_t r0, int64_t r1, int64_t t0) {
  constexpr int R = C == 8 ? 4 : C == 7 ? 2 : 1;  // registers per 256/128/64-byte table
  constexpr int NREG = code_regs_avx512(C);
  __m512i tab[2][R];
  for (int q = 0; q < 2; ++q)
    for (int k = 0; k < R; ++k)  // s8 -> u8 + 128
      tab[q][k] = _mm512_xor_si512(_mm512_loadu_si512(a.tab + 256 * q + 64 * k), _mm512_set1_epi8(-128));
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* w = a.packed + r * a.nblk * 16;
    __m512 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < a.nblk; ++blk) {
      __m512i idx[NREG], plane[NREG][2];
      _mm_prefetch(reinterpret_cast<const char*>(w + blk * 16) + kPrefetchBytes, _MM_HINT_T0);
      code_bytes_avx512<C>(w + blk * 16, idx);
      for (int g = 0; g < NREG; ++g)
        for (int comp = 0; comp < 2; ++comp) plane[g][comp] = byte_lookup_avx512<C>(idx[g], tab[comp]);
      for (int t = 0; t < NT; ++t) {
        const int64_t tb = (t0 + t) * a.nblk + blk;
        const int8_t* xb = a.xq + tb * NREG * 128;
        __m512i dot = _mm512_setzero_si512();
        for (int g = 0; g < NREG; ++g)
          for (int comp = 0; comp < 2; ++comp)
            dot = _mm512_dpbusd_epi32(dot, plane[g][comp], _mm512_loadu_si512(xb + (2 * g + comp) * 64));
        acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(a.xs[tb]), acc[t]);
      }
    }
    for (int t = 0; t < NT; ++t)
      a.y[(t0 + t) * a.rows + r] = a.scales[r] * a.out_scale * (_mm512_reduce_add_ps(acc[t]) - a.offset[t0 + t]);
  }
}

// ------------------------------------------------------------- AVX2: 5- to 8-bit codes
//
// VPSHUFB looks up 32 bytes per instruction in a 16-entry table, so each component's table is
// cut into 2^(c-4) sixteen-entry slices and a tree of VPBLENDVB on code bits 4 .. c-1 picks the
// slice: per 32 codes and component 2/4/8/16 shuffles and 1/3/7/15 blends for 5/6/7/8-bit codes.
// VPMADDUBSW then multiplies the lookups by the activations: it wants one unsigned operand, so the
// activation's sign moves onto the codeword (VPSIGNB) and |x| is the unsigned one; with both
// magnitudes <= 127 a pair sum stays below 2^15, so nothing saturates. VPMADDWD by ones widens
// to int32. On the Zen 3 EPYC (AVX2 only) at 4096², 2 threads, this replaced the fp32 kernel
// that read each codeword as one 64-bit pair by scalar loads (see docs/design-notes.md).
//
// Code bytes: a block's 16 words are two registers of 8. Slots 0..3 of each word go to the
// word's 4 bytes (shift and mask; 8-bit codes are the words as they are), one code register per
// 8 words. The remaining slots, 5 (slot 4) or 6 (slots 4, 5) bits wide, of both registers fill a
// third: byte 0 and 1 of word j's lane hold slots 4 and 5 of word j and bytes 2 and 3 those of
// word 8 + j (5-bit codes); for 6-bit codes byte 0 holds slot 4 of word j, byte 1 that of word
// 8 + j and bytes 2, 3 are spare (activation 0).

constexpr int code_regs_avx2(int c) {
  return c <= 6 ? 3 : 2;
}

int unit_of_code_byte_avx2(int c, int reg, int b) {
  const int j = b / 4, k = b % 4;  // byte k of the 32-bit lane of word j (of 8)
  if (reg < 2) return k * 16 + 8 * reg + j;
  if (c == 5) return (4 + k % 2) * 16 + 8 * (k / 2) + j;
  return k < 2 ? 4 * 16 + 8 * k + j : -1;
}

// Slots 0..3 of each 32-bit lane's c-bit codes to the lane's 4 bytes.
template <int C>
WK_AVX2 WK_INLINE __m256i four_slots_to_bytes(__m256i v) {
  constexpr int m = (1 << C) - 1;
  __m256i r = _mm256_and_si256(v, _mm256_set1_epi32(m));
  r = _mm256_or_si256(r, _mm256_and_si256(_mm256_slli_epi32(v, 8 - C), _mm256_set1_epi32(m << 8)));
  r = _mm256_or_si256(r, _mm256_and_si256(_mm256_slli_epi32(v, 2 * (8 - C)), _mm256_set1_epi32(m << 16)));
  return _mm256_or_si256(r, _mm256_and_si256(_mm256_slli_epi32(v, 3 * (8 - C)), _mm256_set1_epi32(m << 24)));
}

// (v >> shift) & mask: one term of a code-byte register.
WK_AVX2 WK_INLINE __m256i bits_at(__m256i v, int shift, int mask) {
  return _mm256_and_si256(_mm256_srli_epi32(v, shift), _mm256_set1_epi32(mask));
}

template <int C>
WK_AVX2 WK_INLINE void code_bytes_avx2(const int32_t* w, __m256i* idx) {
  const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + 8));
  if constexpr (C == 8) {
    idx[0] = w0, idx[1] = w1;
  } else {
    idx[0] = four_slots_to_bytes<C>(w0), idx[1] = four_slots_to_bytes<C>(w1);
    if constexpr (C == 6) {  // slot 4 (bits 24..29) to byte 0 (word j) and byte 1 (word 8 + j)
      idx[2] = _mm256_or_si256(bits_at(w0, 24, 0x3F), bits_at(w1, 16, 0x3F00));
    } else if constexpr (C == 5) {  // slots 4, 5 (bits 20..24, 25..29) to bytes 0, 1 and 2, 3
      idx[2] = _mm256_or_si256(_mm256_or_si256(bits_at(w0, 20, 0x1F), bits_at(w0, 17, 0x1F00)),
                               _mm256_or_si256(bits_at(w1, 4, 0x1F0000), bits_at(w1, 1, 0x1F000000)));
    }
  }
}

// The s8 table entry of each code byte: t holds 2^(C-4) sixteen-entry slices, each in both lanes.
template <int C>
WK_AVX2 WK_INLINE __m256i byte_lookup_avx2(__m256i idx, const __m256i* t) {
  constexpr int S = 1 << (C - 4);
  // VPSHUFB reads an index's low 4 bits and zeroes bytes whose bit 7 is set. 8-bit codes use that
  // for the tree's top level: slice s (< 8) read with the code zeroes codes >= 128, slice s + 8
  // read with bit 7 flipped zeroes codes < 128, and an OR joins them (any ALU pipe, where a
  // blend would compete with the shuffles).
  __m256i v[S];
  if constexpr (C == 8) {
    const __m256i flip = _mm256_xor_si256(idx, _mm256_set1_epi8(-128));
    for (int s = 0; s < S / 2; ++s)
      v[s] = _mm256_or_si256(_mm256_shuffle_epi8(t[s], idx), _mm256_shuffle_epi8(t[s + S / 2], flip));
  } else {
    for (int s = 0; s < S; ++s) v[s] = _mm256_shuffle_epi8(t[s], idx);
  }
  for (int bit = 4; bit < (C == 8 ? 7 : C); ++bit) {
    // VPBLENDVB selects on each byte's bit 7; a 16-bit shift moves bit `bit` there in both bytes.
    const __m256i sel = _mm256_slli_epi16(idx, 7 - bit);
    const int n = S >> (bit - 3);
    for (int s = 0; s < n; ++s) v[s] = _mm256_blendv_epi8(v[2 * s], v[2 * s + 1], sel);
  }
  return v[0];
}

template <int C, int NT>
WK_AVX2 void gemv_vq_int8_avx2(const Int8GemvArgs& a, int64_t r0, int64_t r1, int64_t t0) {
  constexpr int S = 1 << (C - 4);
  constexpr int NREG = code_regs_avx2(C);
  __m256i tab[2][S];
  for (int q = 0; q < 2; ++q)
    for (int s = 0; s < S; ++s)
      tab[q][s] = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.tab + 256 * q + 16 * s)));
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t r = r0; r < r1; ++r) {
    const int32_t* w = a.packed + r * a.nblk * 16;
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t blk = 0; blk < a.nblk; ++blk) {
      _mm_prefetch(reinterpret_cast<const char*>(w + blk * 16) + kPrefetchBytes, _MM_HINT_T0);
      __m256i idx[NREG];
      code_bytes_avx2<C>(w + blk * 16, idx);
      __m256i dot[NT];
      for (int t = 0; t < NT; ++t) dot[t] = _mm256_setzero_si256();
      // v (32 s8 codeword bytes) times activation register q of each token, into dot.
      const auto multiply = [&](__m256i v, int q) WK_AVX2 {
        for (int t = 0; t < NT; ++t) {
          const int8_t* xb = a.xq + ((t0 + t) * a.nblk + blk) * NREG * 64 + q * 32;
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb));
          const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(x), _mm256_sign_epi8(v, x));
          dot[t] = _mm256_add_epi32(dot[t], _mm256_madd_epi16(p, ones));
        }
      };
      for (int g = 0; g < NREG; ++g)
        for (int comp = 0; comp < 2; ++comp) multiply(byte_lookup_avx2<C>(idx[g], tab[comp]), 2 * g + comp);
      for (int t = 0; t < NT; ++t)
        acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[t]), _mm256_set1_ps(a.xs[(t0 + t) * a.nblk + blk]), acc[t]);
    }
    for (int t = 0; t < NT; ++t) a.y[(t0 + t) * a.rows + r] = a.scales[r] * a.out_scale * hsum256(acc[t]);
  }
}

// ------------------------------------------------------------------------- dispatch

template <int C>
void gemv_vq_int8_rows(CpuIsa isa, const Int8GemvArgs& a, int64_t r0, int64_t r1) {
  for (int64_t t0 = 0; t0 < a.T; t0 += 4) {
    const int nt = static_cast<int>(std::min<int64_t>(4, a.T - t0));
    if constexpr (C >= 6) {
      if (isa == CpuIsa::Avx512) {
        switch (nt) {
          case 1: gemv_vq_int8_avx512<C, 1>(a, r0, r1, t0); break;
          case 2: gemv_vq_int8_avx512<C, 2>(a, r0, r1, t0); break;
          case 3: gemv_vq_int8_avx512<C, 3>(a, r0, r1, t0); break;
          default: gemv_vq_int8_avx512<C, 4>(a, r0, r1, t0); break;
        }
        continue;
      }
    }
    // AVX2, and AVX-512 CPUs for 5-bit codes (were gemv_vq_int8 asked for them there).
    switch (nt) {
      case 1: gemv_vq_int8_avx2<C, 1>(a, r0, r1, t0); break;
      case 2: gemv_vq_int8_avx2<C, 2>(a, r0, r1, t0); break;
      case 3: gemv_vq_int8_avx2<C, 3>(a, r0, r1, t0); break;
      default: gemv_vq_int8_avx2<C, 4>(a, r0, r1, t0); break;
    }
  }
}

// Symmetric int8 rounding on one scale: q = round(v * 127 / amax) (ties to even, as torch.round),
// scale = amax / 127; an all-zero group gets scale 0 and zeros.
struct Int8Scale {
  float inv, scale;
  explicit Int8Scale(float amax) : inv(amax > 0.f ? 127.f / amax : 0.f), scale(amax / 127.f) {}
  int8_t operator()(float v) const {
    return static_cast<int8_t>(std::clamp(std::nearbyint(v * inv), -127.f, 127.f));
  }
};

// True when every value is finite; int8 rounding has no NaN or infinity.
bool all_finite(const float* v, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i])) return false;
  return true;
}

}  // namespace

bool gemv_vq_int8(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t units, int c,
                  const float* codebook, const float* scales, float* y, CpuIsa isa) {
  const int64_t K = int64_t(1) << c;
  if (!all_finite(x, T * units * 2) || !all_finite(codebook, K * 2)) return false;
  const bool wide = isa == CpuIsa::Avx512 && c >= 6;  // the AVX-512 kernel and its layout (gemv_vq_int8_rows)
  const int nreg = wide ? code_regs_avx512(c) : code_regs_avx2(c), reg_bytes = wide ? 64 : 32;
  const int bytes = nreg * 2 * reg_bytes;
  const int64_t nblk = num_blocks(units, c), per_blk = 16 * codes_per_word(c);
  std::vector<int8_t> xq(static_cast<size_t>(T * nblk * bytes), 0);
  std::vector<float> xs(static_cast<size_t>(T * nblk)), offset(static_cast<size_t>(T), 0.f);
  for (int64_t t = 0; t < T; ++t) {
    double off = 0.0;
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const int64_t u0 = blk * per_blk, n = std::min<int64_t>(per_blk, units - u0);
      const float* xb = x + (t * units + u0) * 2;
      float amax = 0.f;
      for (int64_t i = 0; i < 2 * n; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const Int8Scale q(amax);
      int8_t* out = xq.data() + (t * nblk + blk) * bytes;
      int64_t sum = 0;
      for (int g = 0; g < nreg; ++g)
        for (int b = 0; b < reg_bytes; ++b) {
          const int u = wide ? unit_of_code_byte_avx512(c, g, b) : unit_of_code_byte_avx2(c, g, b);
          if (u < 0 || u >= n) continue;
          for (int comp = 0; comp < 2; ++comp) {
            int8_t& v = out[(2 * g + comp) * reg_bytes + b];
            v = q(xb[2 * u + comp]);
            sum += v;
          }
        }
      xs[t * nblk + blk] = q.scale;
      off += 128.0 * q.scale * static_cast<double>(sum);
    }
    offset[t] = static_cast<float>(off);
  }
  float cmax = 0.f;
  for (int64_t i = 0; i < K * 2; ++i) cmax = std::max(cmax, std::fabs(codebook[i]));
  const Int8Scale cq(cmax);
  std::vector<int8_t> tab(2 * 256, 0);
  for (int64_t k = 0; k < K; ++k)
    for (int comp = 0; comp < 2; ++comp) tab[256 * comp + k] = cq(codebook[2 * k + comp]);
  const Int8GemvArgs a{xq.data(), xs.data(), offset.data(), T, nblk, packed, rows, tab.data(), cq.scale, scales, y};
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(nblk * 16, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    switch (c) {
      case 5: gemv_vq_int8_rows<5>(isa, a, r0, r1); break;
      case 6: gemv_vq_int8_rows<6>(isa, a, r0, r1); break;
      case 7: gemv_vq_int8_rows<7>(isa, a, r0, r1); break;
      default: gemv_vq_int8_rows<8>(isa, a, r0, r1); break;
    }
  });
  return true;
}

}  // namespace weightkit::palette_cpu
