// trit_plane_matmul_a8 on the CPU: the packed trit-planes times int8-rounded activations
// (act_quant.h), with integer plane sums.
//
// Why: with fp32 activations the AVX2 kernel needs four 4-entry table lookups (vpermilps, one
// per cycle on Zen 3) per pair of columns and 8 rows; that port alone caps a 4096 x 4096 GEMV at
// ~0.9 ms. With int8 activations one byte shuffle turns 32 pair codes into 32 unsigned trits
// t + 1 in {0, 1, 2}, and vpmaddubsw multiplies them by 32 activation bytes and adds neighbours:
// per plane word (8 rows x 16 columns) 4 shuffles + 4 multiply-adds + 4 adds, against 16
// lookups + 16 adds. The +1 offset is removed once per group: sum (t + 1) q = T q + sum q.
// With AVX-512 VNNI one register holds both planes of a word and vpdpbusd multiplies and adds
// in one instruction (block_a8_avx512 below).
//
// The words of a row block hold, lane j = row j, 8 pair codes (4 bits: pos | neg << 2) of 16
// columns. After splitting each byte into its low and high nibble (pairs 2i and 2i+1 of the word),
// shuffle i (i = 0..3: nibble low/high x column 0/1 of the pair) gives in byte b of every lane the
// trit of pair-slot 4b + i (slot = 2 * pair + column within the word). So activation bytes are
// stored per word in that order, xr[16 w + 4 i + b] = q(slot 16 w + 4 b + i), and each shuffle is
// multiplied by one 4-byte activation pattern broadcast to all 8 lanes.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/cpu_target.h"
#include "common/parallel_units.h"
#include "trit_plane/act_quant.h"
#include "trit_plane/cpu.h"

namespace weightkit::trit_plane_cpu {
namespace {

using trit_plane::kCodeBits;
using trit_plane::kCodesPerWord;
using trit_plane::kPlanes;
using trit_plane::kRowsPerBlock;

constexpr int64_t kSlotsPerWord = 2 * kCodesPerWord;  // 16 columns (pair slots) per word
// int16 accumulators: each vpmaddubsw lane adds two products |(t + 1) q| <= 2 * 127 and a word
// adds four of them, so 16 words (256 columns) stay below 32767; longer groups flush to int32.
constexpr int64_t kWordsPerFlush = 16;

// t + 1 of column 0 / column 1 of a pair, indexed by its 4-bit code (pos | neg << 2): the 16-byte
// shuffle tables of both SIMD kernels.
alignas(16) constexpr int8_t kTritPlusOne[2][16] = {{1, 2, 1, 2, 0, 1, 0, 1, 1, 2, 1, 2, 0, 1, 0, 1},
                                                    {1, 1, 2, 2, 1, 1, 2, 2, 0, 0, 1, 1, 0, 0, 1, 1}};

inline __m128i trit_table(int column) { return _mm_load_si128(reinterpret_cast<const __m128i*>(kTritPlusOne[column])); }

// Rounded activations of a batch: codes in the kernel's order, their per-group sums and steps.
struct Activations {
  int64_t words = 0;         // words_per_row
  std::vector<int8_t> code;  // batch x words * 16, xr order (above); zero in padding slots
  std::vector<int32_t> sum;  // batch x n_groups: sum of q over the group
  std::vector<float> step;   // batch x n_groups: s

  const int8_t* codes(int64_t b) const { return code.data() + b * words * kSlotsPerWord; }
};

// Position in xr of pair slot z of a row.
inline int64_t xr_index(int64_t z) { return z / kSlotsPerWord * kSlotsPerWord + 4 * (z % 4) + (z % kSlotsPerWord) / 4; }

// Calls f(c, z) for each column c of group g and its pair slot z.
template <class F>
void for_group_columns(const Layout& l, int64_t g, F&& f) {
  const int64_t z0 = 2 * l.group_first_pair(g), c0 = g * l.group;
  for (int64_t j = 0; j < l.group_len(g); ++j) f(c0 + j, z0 + j);
}

// Work items (batch row, group) per thread: rounding costs about a nanosecond per activation or
// less, so a GEMV's few thousand run inline instead of paying for a parallel region.
inline int64_t rounding_grain(const Layout& l) { return std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(l.group, 1)); }

// The rounding of one group of len activations (contiguous columns), scalar.
trit_plane::ActScale group_scale_scalar(const float* xg, int64_t len) {
  float amax = 0.f;
  for (int64_t j = 0; j < len; ++j) amax = trit_plane::act_amax(amax, xg[j]);
  return trit_plane::act_scale(amax);
}

// Rounds group g of one row into its codes (xr order) and returns (sum of q, s), scalar.
std::pair<int32_t, float> round_group_scalar(const float* xb, const Layout& l, int64_t g, int8_t* codes) {
  const trit_plane::ActScale sc = group_scale_scalar(xb + g * l.group, l.group_len(g));
  int32_t sum = 0;
  for_group_columns(l, g, [&](int64_t c, int64_t z) {
    const int q = trit_plane::act_code(xb[c], sc.inv);
    codes[xr_index(z)] = static_cast<int8_t>(q);
    sum += q;
  });
  return {sum, sc.s};
}

// max|x| over len activations (NaN if any is NaN; cvtps2dq below maps NaN to INT_MIN, which the
// clamp makes -127 as act_code does) and the group's rounding.
WK_AVX2 trit_plane::ActScale group_scale_avx2(const float* xg, int64_t len) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256 v = _mm256_loadu_ps(xg + j);
    m = _mm256_max_ps(m, _mm256_and_ps(v, abs_mask));
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float amax = _mm256_movemask_ps(nan) ? NAN : _mm_cvtss_f32(h);
  for (; j < len; ++j) amax = trit_plane::act_amax(amax, xg[j]);
  return trit_plane::act_scale(amax);
}

// act_code of 8 activations (cvtps2dq rounds to nearest even like rintf).
WK_AVX2 WK_INLINE __m256i codes8_avx2(const float* p, __m256 inv) {
  const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p), inv));
  return _mm256_max_epi32(_mm256_min_epi32(q, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
}

// round_group_scalar for a group whose pair slots are its columns (group % 16 == 0): 16 columns
// are one word's codes, put in the kernel's order by one byte shuffle.
WK_AVX2 std::pair<int32_t, float> round_group_avx2(const float* xb, const Layout& l, int64_t g, int8_t* codes) {
  const int64_t len = l.group_len(g), c0 = g * l.group;
  const float* xg = xb + c0;
  const trit_plane::ActScale sc = group_scale_avx2(xg, len);
  const __m256 inv = _mm256_set1_ps(sc.inv);
  // Byte k of a word's codes holds column 4 (k % 4) + k / 4 (xr order, a 4 x 4 transpose).
  const __m128i order = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  __m256i acc = _mm256_setzero_si256();
  int64_t j = 0;
  for (; j + 16 <= len; j += 16) {
    const __m256i q0 = codes8_avx2(xg + j, inv), q1 = codes8_avx2(xg + j + 8, inv);
    acc = _mm256_add_epi32(acc, _mm256_add_epi32(q0, q1));
    const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(q0, q1), 0xD8);  // int16, columns in order
    const __m128i b = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(codes + c0 + j), _mm_shuffle_epi8(b, order));
  }
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
  int32_t sum = _mm_cvtsi128_si32(s4);
  for (; j < len; ++j) {
    const int q = trit_plane::act_code(xg[j], sc.inv);
    codes[xr_index(c0 + j)] = static_cast<int8_t>(q);
    sum += q;
  }
  return {sum, sc.s};
}

// s * q of one group into xq (the dense path's activations).
void round_group_values_scalar(const float* xg, int64_t len, float* xq) {
  const trit_plane::ActScale sc = group_scale_scalar(xg, len);
  for (int64_t j = 0; j < len; ++j) xq[j] = sc.s * static_cast<float>(trit_plane::act_code(xg[j], sc.inv));
}

WK_AVX2 void round_group_values_avx2(const float* xg, int64_t len, float* xq) {
  const trit_plane::ActScale sc = group_scale_avx2(xg, len);
  const __m256 inv = _mm256_set1_ps(sc.inv), step = _mm256_set1_ps(sc.s);
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) _mm256_storeu_ps(xq + j, _mm256_mul_ps(step, _mm256_cvtepi32_ps(codes8_avx2(xg + j, inv))));
  for (; j < len; ++j) xq[j] = sc.s * static_cast<float>(trit_plane::act_code(xg[j], sc.inv));
}

// simd: round with AVX2 where a group's pair slots are its columns (group % 16 == 0).
Activations round_to_codes(const float* x, int64_t batch, const Layout& l, bool simd) {
  Activations a;
  a.words = l.words_per_row;
  a.code.assign(static_cast<size_t>(batch * a.words * kSlotsPerWord), 0);
  a.sum.resize(static_cast<size_t>(batch * l.n_groups));
  a.step.resize(static_cast<size_t>(batch * l.n_groups));
  const bool vector_groups = simd && l.group % kSlotsPerWord == 0;
  at::parallel_for(0, batch * l.n_groups, rounding_grain(l), [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / l.n_groups, g = bg % l.n_groups;
      const float* xb = x + b * l.in;
      int8_t* codes = a.code.data() + b * a.words * kSlotsPerWord;
      std::tie(a.sum[bg], a.step[bg]) =
          vector_groups ? round_group_avx2(xb, l, g, codes) : round_group_scalar(xb, l, g, codes);
    }
  });
  return a;
}

// ---------------------------------------------------------------- scalar path

void block_a8_scalar(const Activations& a, int64_t batch, const int32_t* P, const float* sc, const Layout& l,
                     float* out /* batch x 8 */) {
  for (int64_t b = 0; b < batch; ++b) {
    const int8_t* q = a.codes(b);
    for (int j = 0; j < kRowsPerBlock; ++j) {
      float y = 0.f;
      for (int64_t g = 0; g < l.n_groups; ++g) {
        int32_t s[kPlanes] = {0, 0};
        const int64_t p0 = l.group_first_pair(g);
        for (int64_t p = p0; p < p0 + l.group_pairs(g); ++p) {
          const int64_t w = p / kCodesPerWord;
          const int shift = static_cast<int>(kCodeBits * (p % kCodesPerWord));
          for (int k = 0; k < kPlanes; ++k) {
            const uint32_t code = (static_cast<uint32_t>(P[(w * kPlanes + k) * kRowsPerBlock + j]) >> shift) & 15u;
            for (int bit = 0; bit < 2; ++bit) {
              const int t = static_cast<int>((code >> bit) & 1u) - static_cast<int>((code >> (bit + 2)) & 1u);
              s[k] += t * q[xr_index(2 * p + bit)];
            }
          }
        }
        const float step = a.step[b * l.n_groups + g];
        y += sc[(g * 2) * kRowsPerBlock + j] * step * static_cast<float>(s[0]) +
             sc[(g * 2 + 1) * kRowsPerBlock + j] * step * static_cast<float>(s[1]);
      }
      out[b * kRowsPerBlock + j] = y;
    }
  }
}

// ---------------------------------------------------------------- AVX2 path

// The AVX2 kernel sums whole words per group, so every group but the last must fill whole words.
bool groups_fill_words(const Layout& l) { return l.n_groups <= 1 || l.pairs_full % kCodesPerWord == 0; }

// Adds one plane word's products with NB batch rows' activation patterns to acc[b].
template <int NB>
WK_AVX2 WK_INLINE void word_a8(__m256i v, const __m256i (&x)[NB][4], __m256i (&acc)[NB]) {
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m256i lut0 = _mm256_broadcastsi128_si256(trit_table(0)), lut1 = _mm256_broadcastsi128_si256(trit_table(1));
  const __m256i lo = _mm256_and_si256(v, nibble), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
  const __m256i t0 = _mm256_shuffle_epi8(lut0, lo), t1 = _mm256_shuffle_epi8(lut1, lo);
  const __m256i t2 = _mm256_shuffle_epi8(lut0, hi), t3 = _mm256_shuffle_epi8(lut1, hi);
  for (int b = 0; b < NB; ++b) {
    const __m256i s01 = _mm256_add_epi16(_mm256_maddubs_epi16(t0, x[b][0]), _mm256_maddubs_epi16(t1, x[b][1]));
    const __m256i s23 = _mm256_add_epi16(_mm256_maddubs_epi16(t2, x[b][2]), _mm256_maddubs_epi16(t3, x[b][3]));
    acc[b] = _mm256_add_epi16(acc[b], _mm256_add_epi16(s01, s23));
  }
}

// NB batch rows (b0 ..) for one block of 8 rows (lanes = rows).
template <int NB>
WK_AVX2 void block_a8_avx2(const Activations& a, int64_t b0, const int32_t* P, const float* sc, const Layout& l,
                           float* out) {
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t words_per_group = l.pairs_full / kCodesPerWord;
  const __m256i* Pv = reinterpret_cast<const __m256i*>(P);
  __m256 y[NB];
  for (int b = 0; b < NB; ++b) y[b] = _mm256_setzero_ps();
  for (int64_t g = 0; g < l.n_groups; ++g) {
    const int64_t w_begin = g * words_per_group, w_end = g + 1 == l.n_groups ? l.words_per_row : w_begin + words_per_group;
    __m256i sum32[NB][kPlanes];
    for (int b = 0; b < NB; ++b) sum32[b][0] = sum32[b][1] = _mm256_setzero_si256();
    for (int64_t w0 = w_begin; w0 < w_end; w0 += kWordsPerFlush) {
      __m256i acc0[NB], acc1[NB];
      for (int b = 0; b < NB; ++b) acc0[b] = acc1[b] = _mm256_setzero_si256();
      for (int64_t w = w0; w < std::min(w0 + kWordsPerFlush, w_end); ++w) {
        _mm_prefetch(reinterpret_cast<const char*>(Pv + 2 * w) + kPrefetchBytes, _MM_HINT_T0);
        __m256i x[NB][4];
        for (int b = 0; b < NB; ++b) {
          int32_t pattern[4];  // the word's 16 activation bytes as 4 broadcast patterns
          std::memcpy(pattern, a.codes(b0 + b) + w * kSlotsPerWord, sizeof(pattern));
          for (int i = 0; i < 4; ++i) x[b][i] = _mm256_set1_epi32(pattern[i]);
        }
        word_a8<NB>(_mm256_loadu_si256(Pv + 2 * w), x, acc0);
        word_a8<NB>(_mm256_loadu_si256(Pv + 2 * w + 1), x, acc1);
      }
      for (int b = 0; b < NB; ++b) {
        sum32[b][0] = _mm256_add_epi32(sum32[b][0], _mm256_madd_epi16(acc0[b], ones));
        sum32[b][1] = _mm256_add_epi32(sum32[b][1], _mm256_madd_epi16(acc1[b], ones));
      }
    }
    const __m256 s1 = _mm256_loadu_ps(sc + g * 16), s2 = _mm256_loadu_ps(sc + g * 16 + 8);
    for (int b = 0; b < NB; ++b) {
      const int64_t bg = (b0 + b) * l.n_groups + g;
      const __m256i offset = _mm256_set1_epi32(a.sum[bg]);  // the +1 of every unsigned trit
      const __m256 step = _mm256_set1_ps(a.step[bg]);
      const __m256 p1 = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum32[b][0], offset));
      const __m256 p2 = _mm256_cvtepi32_ps(_mm256_sub_epi32(sum32[b][1], offset));
      y[b] = _mm256_fmadd_ps(_mm256_mul_ps(s1, step), p1, y[b]);
      y[b] = _mm256_fmadd_ps(_mm256_mul_ps(s2, step), p2, y[b]);
    }
  }
  for (int b = 0; b < NB; ++b) _mm256_storeu_ps(out + b * kRowsPerBlock, y[b]);
}

WK_AVX2 void blocks_a8_avx2(const Activations& a, int64_t batch, const int32_t* P, const float* sc, const Layout& l,
                            float* out) {
  int64_t b = 0;
  for (; b + 2 <= batch; b += 2) block_a8_avx2<2>(a, b, P, sc, l, out + b * kRowsPerBlock);
  if (b < batch) block_a8_avx2<1>(a, b, P, sc, l, out + b * kRowsPerBlock);
}

// ---------------------------------------------------------------- AVX-512 VNNI path
//
// The same codes and activation order as the AVX2 kernel, with both planes of a word in one
// register: packed[rb, w] is 64 bytes, plane 0's 8 rows then plane 1's, so one load fills the 16
// lanes and the four shuffles decode both planes at once (the 16-byte tables repeat per 128-bit
// lane). VPDPBUSD multiplies the unsigned trits t + 1 by the activation bytes and adds four
// products into each int32 lane, so there are no int16 sums to flush.

// Decodes one word (both planes): t[i] = t + 1 of the trits that activation pattern i multiplies.
WK_AVX512_VNNI WK_INLINE void decode_word_avx512(const int32_t* pw, __m512i (&t)[4]) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const __m512i lut0 = _mm512_broadcast_i32x4(trit_table(0)), lut1 = _mm512_broadcast_i32x4(trit_table(1));
  const __m512i v = _mm512_loadu_si512(pw);
  const __m512i lo = _mm512_and_si512(v, nibble), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
  t[0] = _mm512_shuffle_epi8(lut0, lo), t[1] = _mm512_shuffle_epi8(lut1, lo);
  t[2] = _mm512_shuffle_epi8(lut0, hi), t[3] = _mm512_shuffle_epi8(lut1, hi);
}

// acc += t . (the 4-byte activation pattern at x, broadcast from memory to every lane).
WK_AVX512_VNNI WK_INLINE void dot_pattern(__m512i& acc, __m512i t, const int8_t* x) {
  acc = _mm512_dpbusd_epi32(acc, t, _mm512_broadcastd_epi32(_mm_loadu_si32(x)));
}

// NB batch rows (b0 ..) for one block of 8 rows: lanes 0..7 are plane 1's rows, 8..15 plane 2's.
// Each batch row has four accumulators per word in flight (one per activation pattern); with one
// batch row, two words are in flight, since one word's four multiply-add chains left the
// kernel waiting on VPDPBUSD's latency (~1.3x slower with the weights in cache).
template <int NB>
WK_AVX512_VNNI void block_a8_avx512(const Activations& a, int64_t b0, const int32_t* P, const float* sc,
                                    const Layout& l, float* out) {
  constexpr int H = NB == 1 ? 2 : 1;                      // words in flight
  constexpr int64_t kWordInts = kPlanes * kRowsPerBlock;  // int32 per word of a row block
  const int64_t words_per_group = l.pairs_full / kCodesPerWord;
  const int8_t* x[NB];
  for (int b = 0; b < NB; ++b) x[b] = a.codes(b0 + b);
  __m512 y[NB];
  for (int b = 0; b < NB; ++b) y[b] = _mm512_setzero_ps();
  for (int64_t g = 0; g < l.n_groups; ++g) {
    const int64_t w_begin = g * words_per_group, w_end = g + 1 == l.n_groups ? l.words_per_row : w_begin + words_per_group;
    __m512i acc[NB][H][4];
    for (int b = 0; b < NB; ++b)
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < 4; ++i) acc[b][h][i] = _mm512_setzero_si512();
    const auto words = [&](int64_t w, auto n_words) WK_AVX512_VNNI {  // words w .. w + n_words - 1
      for (int h = 0; h < n_words(); ++h) {
        const int32_t* pw = P + (w + h) * kWordInts;
        _mm_prefetch(reinterpret_cast<const char*>(pw) + kPrefetchBytes, _MM_HINT_T0);
        __m512i t[4];
        decode_word_avx512(pw, t);
        for (int b = 0; b < NB; ++b)
          for (int i = 0; i < 4; ++i) dot_pattern(acc[b][h][i], t[i], x[b] + (w + h) * kSlotsPerWord + 4 * i);
      }
    };
    int64_t w = w_begin;
    for (; w + H <= w_end; w += H) words(w, std::integral_constant<int, H>());
    for (; w < w_end; ++w) words(w, std::integral_constant<int, 1>());
    const __m512 s = _mm512_loadu_ps(sc + g * 16);  // alpha1 of the 8 rows, then alpha2
    for (int b = 0; b < NB; ++b) {
      const int64_t bg = (b0 + b) * l.n_groups + g;
      __m512i sum = _mm512_set1_epi32(-a.sum[bg]);  // the +1 of every trit
      for (int h = 0; h < H; ++h)
        for (int i = 0; i < 4; ++i) sum = _mm512_add_epi32(sum, acc[b][h][i]);
      y[b] = _mm512_fmadd_ps(_mm512_mul_ps(s, _mm512_set1_ps(a.step[bg])), _mm512_cvtepi32_ps(sum), y[b]);
    }
  }
  for (int b = 0; b < NB; ++b)  // plane 1 + plane 2 per row
    _mm256_storeu_ps(out + b * kRowsPerBlock, _mm256_add_ps(_mm512_castps512_ps256(y[b]), _mm512_extractf32x8_ps(y[b], 1)));
}

WK_AVX512_VNNI void blocks_a8_avx512(const Activations& a, int64_t batch, const int32_t* P, const float* sc,
                                   const Layout& l, float* out) {
  int64_t b = 0;
  for (; b + 4 <= batch; b += 4) block_a8_avx512<4>(a, b, P, sc, l, out + b * kRowsPerBlock);
  if (b + 2 <= batch) {
    block_a8_avx512<2>(a, b, P, sc, l, out + b * kRowsPerBlock);
    b += 2;
  }
  if (b < batch) block_a8_avx512<1>(a, b, P, sc, l, out + b * kRowsPerBlock);
}

}  // namespace

void round_activations(const float* x, int64_t batch, const Layout& l, float* xq, CpuIsa isa) {
  at::parallel_for(0, batch * l.n_groups, rounding_grain(l), [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / l.n_groups, g = bg % l.n_groups;
      const int64_t offset = b * l.in + g * l.group;
      if (isa == CpuIsa::Scalar) {
        round_group_values_scalar(x + offset, l.group_len(g), xq + offset);
      } else {
        round_group_values_avx2(x + offset, l.group_len(g), xq + offset);
      }
    }
  });
}

void matmul_a8(const float* x, int64_t batch, const int32_t* packed, const uint16_t* scales, const Layout& l, float* y,
               CpuIsa isa) {
  if (batch == 0 || l.out == 0) return;
  if (l.in == 0) {
    std::fill(y, y + batch * l.out, 0.f);
    return;
  }
  const bool simd_kernel = isa != CpuIsa::Scalar && groups_fill_words(l);
  const bool vnni = isa == CpuIsa::Avx512 && cpu_features().avx512_vnni;
  const Activations a = round_to_codes(x, batch, l, isa != CpuIsa::Scalar);
  const int64_t block_elems = l.words_per_row * kPlanes * kRowsPerBlock;
  parallel_units(l.row_blocks, [&](int64_t rb) {
    thread_local std::vector<float> sc, out;
    sc.resize(static_cast<size_t>(l.n_groups * 2 * kRowsPerBlock));
    out.resize(static_cast<size_t>(batch * kRowsPerBlock));
    block_scales(scales, l, rb, sc.data(), isa);
    const int32_t* P = packed + rb * block_elems;
    if (simd_kernel && vnni) {
      blocks_a8_avx512(a, batch, P, sc.data(), l, out.data());
    } else if (simd_kernel) {
      blocks_a8_avx2(a, batch, P, sc.data(), l, out.data());
    } else {
      block_a8_scalar(a, batch, P, sc.data(), l, out.data());
    }
    const int64_t rows = std::min<int64_t>(kRowsPerBlock, l.out - rb * kRowsPerBlock);
    for (int64_t b = 0; b < batch; ++b)
      std::memcpy(y + b * l.out + rb * kRowsPerBlock, out.data() + b * kRowsPerBlock, rows * sizeof(float));
  });
}

}  // namespace weightkit::trit_plane_cpu
