// Trellis (TCQ) GEMV on the CPU: y = x W^T with W decoded in registers from the bit streams of
// tcq.h, never written to memory (decode + GEMM wrote and re-read a dense fp32 W: 98 ms at 4096²
// on the 2-core EPYC, 17x a plain fp32 GEMV).
//
// code(s, v) = code_offset(s, v) / 147.8 (tcq.h), so a row's dot product is
//     y[t][r] = scale_r / 147.8 * sum_step sum_v code_offset(s_step, v) * x[t][step * V + v]
// with code_offset an exact small integer; the division and the scale come once per output.
//
// AVX2: 8 rows at once, one per 32-bit lane. All rows read their state at the same stream bit,
// so the shift amounts are uniform: each row's 64-bit window (words w, w + 1, MSB first) sits in
// a 64-bit lane, rows 0-3 in one vector and 4-7 in another; a step is two shifts per vector and a
// blend that leaves the states in lanes (r0 r4 r1 r5 r2 r6 r3 r7). The byte sum is vpmaddubsw
// against ones (byte pairs) then vpmaddwd against ones (the four bytes). Tokens go in chunks of
// up to 8 accumulators; one or two tokens alternate two accumulator sets so consecutive steps do
// not wait on one FMA chain.
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/cpu_target.h"
#include "palette/tcq.h"

namespace weightkit::tcq {

namespace {

constexpr int kRowsPerGroup = 8;
constexpr int kMaxChunk = 8;  // tokens per pass over a row group

void gemv_rows_scalar(const float* x, int64_t T, const int32_t* packed, int64_t r0, int64_t r1, int64_t steps,
                      int L, int kb, int V, const float* scales, float* y, int64_t rows) {
  const int64_t words = tcq_words(steps, L, kb), in = steps * V;
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(packed + r * words);
    for (int64_t t0 = 0; t0 < T; t0 += kMaxChunk) {
      const int64_t nt = std::min<int64_t>(kMaxChunk, T - t0);
      float acc[kMaxChunk] = {};
      for (int64_t s = 0; s < steps; ++s) {
        const uint32_t state = read_state(row, s * kb, L);
        for (int v = 0; v < V; ++v) {
          const auto d = static_cast<float>(code_offset(state, v));
          for (int64_t k = 0; k < nt; ++k) acc[k] += d * x[(t0 + k) * in + s * V + v];
        }
      }
      for (int64_t k = 0; k < nt; ++k) y[(t0 + k) * rows + r] = acc[k] * kCodeScale * scales[r];
    }
  }
}

// Rows' 64-bit windows at word w, most significant word first (as read_state forms them).
WK_AVX2 inline __m256i windows(const uint32_t* const* row, int64_t w) {
  uint64_t v[4];
  for (int i = 0; i < 4; ++i) {
    uint64_t u;
    std::memcpy(&u, row[i] + w, 8);
    v[i] = (u << 32) | (u >> 32);
  }
  return _mm256_set_epi64x(static_cast<int64_t>(v[3]), static_cast<int64_t>(v[2]), static_cast<int64_t>(v[1]),
                           static_cast<int64_t>(v[0]));
}

// What every step of a row group reads: the rows, the activations and the constants.
struct GroupCtx {
  const float* x;
  int64_t in;
  const uint32_t* const* row;
  int kb;
  __m128i shift_lo, shift_hi;
};

// One step s of 8 rows: set[k] += code_offset(state, v) * x[k][s * V + v] for every v. `lo` / `hi` hold the
// windows of word `loaded`, refreshed when the step's bit moves to the next word.
template <int NT, int V>
WK_AVX2 WK_INLINE void step_avx2(const GroupCtx& c, int64_t s, __m256* set, int64_t& loaded, __m256i& lo, __m256i& hi) {
  const int64_t bit = s * c.kb, w = bit >> 5;
  if (w != loaded) {
    lo = windows(c.row, w);
    hi = windows(c.row + 4, w);
    loaded = w;
  }
  const __m128i at = _mm_cvtsi32_si128(static_cast<int>(bit & 31));
  // Rows 0-3: the state in the low half of each 64-bit lane; rows 4-7: in the high half (the low
  // half is left over bits, which the blend drops).
  const __m256i a = _mm256_srl_epi64(_mm256_sll_epi64(lo, at), c.shift_lo);
  const __m256i b = _mm256_srl_epi64(_mm256_sll_epi64(hi, at), c.shift_hi);
  const __m256i state = _mm256_blend_epi32(a, b, 0xAA);
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1), c510 = _mm256_set1_epi32(510);
  for (int v = 0; v < V; ++v) {
    const __m256i h = _mm256_add_epi32(_mm256_mullo_epi32(state, _mm256_set1_epi32(static_cast<int>(code_mul(v)))),
                                       _mm256_set1_epi32(static_cast<int>(code_add(v))));
    const __m256i bytesum = _mm256_madd_epi16(_mm256_maddubs_epi16(h, ones8), ones16);
    const __m256 d = _mm256_cvtepi32_ps(_mm256_sub_epi32(bytesum, c510));
    const float* xs = c.x + s * V + v;
    for (int k = 0; k < NT; ++k) set[k] = _mm256_fmadd_ps(d, _mm256_broadcast_ss(xs + k * c.in), set[k]);
  }
}

// out[k] (lane order r0 r4 r1 r5 r2 r6 r3 r7) = sum over steps of code_offset(state, v) x[k][step * V + v].
template <int NT, int V>
WK_AVX2 void group_avx2(const float* x, int64_t in, const uint32_t* const* row, int64_t steps, int L, int kb,
                        __m256* out) {
  constexpr int kSets = NT <= 2 ? 2 : 1;
  __m256 acc[kSets][NT];
  for (auto& set : acc)
    for (__m256& a : set) a = _mm256_setzero_ps();
  const GroupCtx c{x, in, row, kb, _mm_cvtsi32_si128(64 - L), _mm_cvtsi32_si128(32 - L)};
  int64_t loaded = -1;
  __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
  // Two steps per iteration, each into its own set when there are two (constant indices keep the
  // accumulators in registers).
  int64_t s = 0;
  for (; s + 1 < steps; s += 2) {
    step_avx2<NT, V>(c, s, acc[0], loaded, lo, hi);
    step_avx2<NT, V>(c, s + 1, acc[kSets - 1], loaded, lo, hi);
  }
  if (s < steps) step_avx2<NT, V>(c, s, acc[0], loaded, lo, hi);
  for (int k = 0; k < NT; ++k) out[k] = kSets == 2 ? _mm256_add_ps(acc[0][k], acc[kSets - 1][k]) : acc[0][k];
}

template <int V>
WK_AVX2 void group_chunk_avx2(int nt, const float* x, int64_t in, const uint32_t* const* row, int64_t steps, int L,
                              int kb, __m256* out) {
  switch (nt) {
    case 1: return group_avx2<1, V>(x, in, row, steps, L, kb, out);
    case 2: return group_avx2<2, V>(x, in, row, steps, L, kb, out);
    case 3: return group_avx2<3, V>(x, in, row, steps, L, kb, out);
    case 4: return group_avx2<4, V>(x, in, row, steps, L, kb, out);
    case 5: return group_avx2<5, V>(x, in, row, steps, L, kb, out);
    case 6: return group_avx2<6, V>(x, in, row, steps, L, kb, out);
    case 7: return group_avx2<7, V>(x, in, row, steps, L, kb, out);
    default: return group_avx2<8, V>(x, in, row, steps, L, kb, out);
  }
}

WK_AVX2 void gemv_rows_avx2(const float* x, int64_t T, const int32_t* packed, int64_t g0, int64_t g1, int64_t steps,
                            int L, int kb, int V, const float* scales, float* y, int64_t rows) {
  const int64_t words = tcq_words(steps, L, kb), in = steps * V;
  // Lane of row j in the accumulators (the blend interleaves rows 0-3 with 4-7).
  constexpr int kLane[kRowsPerGroup] = {0, 2, 4, 6, 1, 3, 5, 7};
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t r0 = g * kRowsPerGroup;
    const uint32_t* row[kRowsPerGroup];
    for (int j = 0; j < kRowsPerGroup; ++j)  // a short last group repeats its last row
      row[j] = reinterpret_cast<const uint32_t*>(packed + std::min(r0 + j, rows - 1) * words);
    for (int64_t t0 = 0; t0 < T; t0 += kMaxChunk) {
      const int nt = static_cast<int>(std::min<int64_t>(kMaxChunk, T - t0));
      __m256 acc[kMaxChunk];
      if (V == 1)
        group_chunk_avx2<1>(nt, x + t0 * in, in, row, steps, L, kb, acc);
      else
        group_chunk_avx2<2>(nt, x + t0 * in, in, row, steps, L, kb, acc);
      for (int k = 0; k < nt; ++k) {
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, acc[k]);
        for (int j = 0; j < kRowsPerGroup && r0 + j < rows; ++j)
          y[(t0 + k) * rows + r0 + j] = lanes[kLane[j]] * kCodeScale * scales[r0 + j];
      }
    }
  }
}

}  // namespace

void gemv(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t steps, int L, int kb, int V,
          const float* scales, float* y, CpuIsa isa) {
  if (isa == CpuIsa::Scalar) {
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      gemv_rows_scalar(x, T, packed, r0, r1, steps, L, kb, V, scales, y, rows);
    });
    return;
  }
  const int64_t groups = (rows + kRowsPerGroup - 1) / kRowsPerGroup;
  at::parallel_for(0, groups, 4, [&](int64_t g0, int64_t g1) {
    gemv_rows_avx2(x, T, packed, g0, g1, steps, L, kb, V, scales, y, rows);
  });
}

}  // namespace weightkit::tcq
