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
//
// AVX-512 with VNNI and VBMI2: 16 rows a vector, with cheaper states and byte sums (below).
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/cpu_target.h"
#include "palette/tcq.h"

namespace weightkit::tcq {

namespace {

constexpr int kRowsPerGroup = 8;      // AVX2
constexpr int kRowsPerGroup512 = 16;  // AVX-512
constexpr int kMaxChunk = 8;  // tokens per pass over a row group

// The next row group's streams are swept into the cache while this group runs. Its rows follow
// this group's in memory, so they are one contiguous range of rows_per_group * words words, and
// as this group's read position advances by one word, bytes_per_word = rows_per_group * 4 bytes of
// that range are prefetched (a cache line for 16 rows, half of one for 8): by the end of this
// group the next one is in the cache. A group's 8 or 16 row streams, each a few hundred bytes to a
// few kilobytes, are too many and too short for the hardware prefetchers. On the Zen 4 EPYC
// (2 threads, codes beyond the caches as in every decoding step, against the same layer in
// cache) SmolLM2's 576x1536 layer at 2 / 3 bits took 164 / 248 us against 69 / 84 with per-row
// prefetches 32 words ahead plus the next group's first words, and takes 83 / 91 us with this
// sweep; 4096² TCQ-2 / TCQ-4 went from 1.20 / 1.42 to 1.01 / 1.17 ms. With the sweep, the
// per-row prefetches add nothing; prefetching into L2 only (T1) was 5-10% slower than into L1.
struct NextGroup {
  const char* begin;       // the next group's first word
  int64_t bytes;           // its size (0 after the last group)
  int64_t bytes_per_word;  // rows per group * 4
};

inline NextGroup next_group(const int32_t* packed, int64_t words, int64_t r_next, int64_t rows, int rows_per_group) {
  const auto* base = reinterpret_cast<const char*>(packed);
  const int64_t r_begin = std::min(r_next, rows), r_end = std::min<int64_t>(r_next + rows_per_group, rows);
  return {base + r_begin * words * 4, (r_end - r_begin) * words * 4, int64_t{4} * rows_per_group};
}

// Called as the group's read position moves to word w. Forced inline: GCC 12 deems a function
// that only prefetches pure, and drops a call to it from the kernels (their target attributes
// keep it from being inlined early), silently.
WK_INLINE void prefetch_next_group(const NextGroup& n, int64_t w) {
  const int64_t at = w * n.bytes_per_word;  // an offset: no pointer past the range is formed
  if (at < n.bytes) _mm_prefetch(n.begin + at, _MM_HINT_T0);
}

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
  NextGroup next;
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
    prefetch_next_group(c.next, w);
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
                        const NextGroup& next, __m256* out) {
  constexpr int kSets = NT <= 2 ? 2 : 1;
  __m256 acc[kSets][NT];
  for (auto& set : acc)
    for (__m256& a : set) a = _mm256_setzero_ps();
  const GroupCtx c{x, in, row, kb, _mm_cvtsi32_si128(64 - L), _mm_cvtsi32_si128(32 - L), next};
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
                              int kb, const NextGroup& next, __m256* out) {
  switch (nt) {
    case 1: return group_avx2<1, V>(x, in, row, steps, L, kb, next, out);
    case 2: return group_avx2<2, V>(x, in, row, steps, L, kb, next, out);
    case 3: return group_avx2<3, V>(x, in, row, steps, L, kb, next, out);
    case 4: return group_avx2<4, V>(x, in, row, steps, L, kb, next, out);
    case 5: return group_avx2<5, V>(x, in, row, steps, L, kb, next, out);
    case 6: return group_avx2<6, V>(x, in, row, steps, L, kb, next, out);
    case 7: return group_avx2<7, V>(x, in, row, steps, L, kb, next, out);
    default: return group_avx2<8, V>(x, in, row, steps, L, kb, next, out);
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
    const NextGroup next = next_group(packed, words, r0 + kRowsPerGroup, rows, kRowsPerGroup);
    for (int64_t t0 = 0; t0 < T; t0 += kMaxChunk) {
      const int nt = static_cast<int>(std::min<int64_t>(kMaxChunk, T - t0));
      __m256 acc[kMaxChunk];
      if (V == 1)
        group_chunk_avx2<1>(nt, x + t0 * in, in, row, steps, L, kb, next, acc);
      else
        group_chunk_avx2<2>(nt, x + t0 * in, in, row, steps, L, kb, next, acc);
      for (int k = 0; k < nt; ++k) {
        alignas(32) float lanes[8];
        _mm256_store_ps(lanes, acc[k]);
        for (int j = 0; j < kRowsPerGroup && r0 + j < rows; ++j)
          y[(t0 + k) * rows + r0 + j] = lanes[kLane[j]] * kCodeScale * scales[r0 + j];
      }
    }
  }
}

// ------------------------------------------------------ AVX-512 (with VNNI and VBMI2)
//
// 16 rows at once, one per 32-bit lane, and the stream words of all 16 rows at one word index
// in one register (a gather, once per 32 / kb steps). A step's state is one funnel shift
// (vpshldvd) of the current and the next word register by the step's bit offset, then a shift
// down to L bits: two instructions for 16 rows, where the AVX2 kernel spends five for 8 (with
// the OR of two plain shifts instead of vpshldvd it ran ~10% slower). The byte sum minus 510 is
// one vpdpbusd of the hash against ones, accumulating onto -510. CPUs with AVX-512 but without
// VNNI or VBMI2 (Skylake-X, Cascade Lake) take the AVX2 kernel.

struct GroupCtx512 {
  const float* x;
  int64_t in;
  const int32_t* base;  // the group's first row
  __m512i offsets;      // lane j: row j's first word, relative to base
  int L, kb;
  NextGroup next;
};

// Word i of each of the 16 rows.
WK_AVX512_VNNI_VBMI2 WK_INLINE __m512i words_at(const GroupCtx512& c, int64_t i) {
  return _mm512_i32gather_epi32(_mm512_add_epi32(c.offsets, _mm512_set1_epi32(static_cast<int>(i))), c.base, 4);
}

// One step s of 16 rows: set[k] += code_offset(state, v) * x[k][s * V + v] for every v. cur / nxt
// hold every row's words w and w + 1, where w = `loaded`, refreshed as the step's bit moves on.
template <int NT, int V>
WK_AVX512_VNNI_VBMI2 WK_INLINE void step_avx512(const GroupCtx512& c, int64_t s, __m512* set, int64_t& loaded,
                                          __m512i& cur, __m512i& nxt) {
  const int64_t bit = s * c.kb, w = bit >> 5;
  if (w != loaded) {  // kb < 32: w moves by at most one word a step
    cur = w == loaded + 1 ? nxt : words_at(c, w);
    nxt = words_at(c, w + 1);
    loaded = w;
    prefetch_next_group(c.next, w);
  }
  // The top 32 bits of (cur:nxt << bit % 32), shifted down to the L-bit state.
  const __m512i top = _mm512_shldv_epi32(cur, nxt, _mm512_set1_epi32(static_cast<int>(bit & 31)));
  const __m512i state = _mm512_srl_epi32(top, _mm_cvtsi32_si128(32 - c.L));
  const __m512i ones8 = _mm512_set1_epi8(1), m510 = _mm512_set1_epi32(-510);
  for (int v = 0; v < V; ++v) {
    const __m512i h = _mm512_add_epi32(_mm512_mullo_epi32(state, _mm512_set1_epi32(static_cast<int>(code_mul(v)))),
                                       _mm512_set1_epi32(static_cast<int>(code_add(v))));
    const __m512 d = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(m510, h, ones8));
    const float* xs = c.x + s * V + v;
    for (int k = 0; k < NT; ++k) set[k] = _mm512_fmadd_ps(d, _mm512_set1_ps(xs[k * c.in]), set[k]);
  }
}

// out[k] (lane j: row j) = sum over steps of code_offset(state, v) x[k][step * V + v].
template <int NT, int V>
WK_AVX512_VNNI_VBMI2 void group_avx512(const GroupCtx512& c, int64_t steps, __m512* out) {
  constexpr int kSets = NT <= 2 ? 2 : 1;
  __m512 acc[kSets][NT];
  for (auto& set : acc)
    for (__m512& a : set) a = _mm512_setzero_ps();
  int64_t loaded = -2;  // no word yet (so the first step cannot take nxt as its current word)
  __m512i cur = _mm512_setzero_si512(), nxt = _mm512_setzero_si512();
  int64_t s = 0;
  for (; s + 1 < steps; s += 2) {
    step_avx512<NT, V>(c, s, acc[0], loaded, cur, nxt);
    step_avx512<NT, V>(c, s + 1, acc[kSets - 1], loaded, cur, nxt);
  }
  if (s < steps) step_avx512<NT, V>(c, s, acc[0], loaded, cur, nxt);
  for (int k = 0; k < NT; ++k) out[k] = kSets == 2 ? _mm512_add_ps(acc[0][k], acc[kSets - 1][k]) : acc[0][k];
}

template <int V>
WK_AVX512_VNNI_VBMI2 void group_chunk_avx512(int nt, const GroupCtx512& c, int64_t steps, __m512* out) {
  switch (nt) {
    case 1: return group_avx512<1, V>(c, steps, out);
    case 2: return group_avx512<2, V>(c, steps, out);
    case 3: return group_avx512<3, V>(c, steps, out);
    case 4: return group_avx512<4, V>(c, steps, out);
    case 5: return group_avx512<5, V>(c, steps, out);
    case 6: return group_avx512<6, V>(c, steps, out);
    case 7: return group_avx512<7, V>(c, steps, out);
    default: return group_avx512<8, V>(c, steps, out);
  }
}

WK_AVX512_VNNI_VBMI2 void gemv_rows_avx512(const float* x, int64_t T, const int32_t* packed, int64_t g0, int64_t g1,
                                     int64_t steps, int L, int kb, int V, const float* scales, float* y, int64_t rows) {
  const int64_t words = tcq_words(steps, L, kb), in = steps * V;
  for (int64_t g = g0; g < g1; ++g) {
    const int64_t r0 = g * kRowsPerGroup512;
    alignas(64) int32_t offsets[kRowsPerGroup512];
    for (int j = 0; j < kRowsPerGroup512; ++j)  // a short last group repeats its last row
      offsets[j] = static_cast<int32_t>((std::min(r0 + j, rows - 1) - r0) * words);
    GroupCtx512 c{nullptr, in, packed + r0 * words, _mm512_load_si512(offsets), L, kb,
                  next_group(packed, words, r0 + kRowsPerGroup512, rows, kRowsPerGroup512)};
    for (int64_t t0 = 0; t0 < T; t0 += kMaxChunk) {
      const int nt = static_cast<int>(std::min<int64_t>(kMaxChunk, T - t0));
      c.x = x + t0 * in;
      __m512 acc[kMaxChunk];
      if (V == 1)
        group_chunk_avx512<1>(nt, c, steps, acc);
      else
        group_chunk_avx512<2>(nt, c, steps, acc);
      for (int k = 0; k < nt; ++k) {
        alignas(64) float lanes[kRowsPerGroup512];
        _mm512_store_ps(lanes, acc[k]);
        for (int j = 0; j < kRowsPerGroup512 && r0 + j < rows; ++j)
          y[(t0 + k) * rows + r0 + j] = lanes[j] * kCodeScale * scales[r0 + j];
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
  if (isa == CpuIsa::Avx512 && cpu_features().avx512_vnni && cpu_features().avx512_vbmi2) {
    const int64_t groups = (rows + kRowsPerGroup512 - 1) / kRowsPerGroup512;
    at::parallel_for(0, groups, 2, [&](int64_t g0, int64_t g1) {
      gemv_rows_avx512(x, T, packed, g0, g1, steps, L, kb, V, scales, y, rows);
    });
    return;
  }
  const int64_t groups = (rows + kRowsPerGroup - 1) / kRowsPerGroup;
  at::parallel_for(0, groups, 4, [&](int64_t g0, int64_t g1) {
    gemv_rows_avx2(x, T, packed, g0, g1, steps, L, kb, V, scales, y, rows);
  });
}

}  // namespace weightkit::tcq
