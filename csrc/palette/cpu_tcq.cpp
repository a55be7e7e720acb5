// Viterbi encoder and decoder of the bitshift trellis (tcq.h), CPU.
//
// Per step the Viterbi recursion is: for each of the 2^(L-kb) "prefixes" j (a state's upper L-kb
// bits, shared by the 2^kb states that can follow it), m[j] = min over the 2^kb predecessors
// j | h << (L-kb) of their cost; then cost'[s] = m[s >> kb] + |w_t - code(s)|^2. Both loops are
// contiguous over j or s, so they vectorize: the AVX-512 and AVX2 paths use intrinsics for the
// m[s >> kb] expansion and, for kb < 4, do both loops in one pass, two steps at a time where the
// trellis is wide enough; the scalar path is plain loops. The costs live in a padded grid
// (Grid below). Backpointers are one byte per prefix and step (T * 2^(L-kb) bytes per row in
// flight, per thread).
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <mutex>
#include <vector>

#include "common/cpu_target.h"
#include "palette/tcq.h"

namespace weightkit::tcq {

namespace {

// code(s) for all 2^L states, value-major (V arrays of 2^L), built once per (L, V).
const std::vector<float>& code_table(int L, int V) {
  static std::mutex mu;
  static std::vector<float> tables[21][3];
  const std::lock_guard<std::mutex> lock(mu);
  std::vector<float>& t = tables[L][V];
  if (t.empty()) {
    const int64_t S = int64_t(1) << L;
    t.resize(static_cast<size_t>(S * V));
    for (int v = 0; v < V; ++v)
      for (int64_t s = 0; s < S; ++s) t[v * S + s] = code_value(static_cast<uint32_t>(s), v);
  }
  return t;
}

// Where the cost arrays keep state s: the 2^L states as 2^kb rows of J = 2^(L-kb) (row h holds the
// h-th predecessor of every prefix, j | h << (L-kb)), each row padded to P = J + 16 floats. Without
// the pad, the 2^kb predecessor streams a step reads side by side lie a multiple of 4 KiB apart
// once J >= 1024 (L = 16, kb >= 4; L = 15, kb = 5), so their lines all fall in the same L1 sets and
// the hardware prefetcher's lines are evicted before they are used: L = 16 at 2.5 bits (kb = 5,
// pairs) ran at 0.44 ns per state and step against 0.21 at L = 14.
struct Grid {
  int64_t S, J, P;
  int kb, lk;  // lk = L - kb
  Grid(int L, int kb_) : S(int64_t(1) << L), J(int64_t(1) << (L - kb_)), P(J + 16), kb(kb_), lk(L - kb_) {}
  int64_t size() const { return P << kb; }
  int64_t at(int64_t s) const { return (s >> lk) * P + (s & (J - 1)); }
};

struct Work {
  std::vector<float> cost, next, m;
  std::vector<uint8_t> bp;
  std::vector<int32_t> bi;
};

// m[j], bi[j] = min / argmin over h of the cost of state j | h << (L-kb).
WK_INLINE void prefix_min(const float* cost, float* m, int32_t* bi, Grid g) {
  std::memcpy(m, cost, sizeof(float) * g.J);
  std::fill(bi, bi + g.J, 0);
  for (int h = 1; h < (1 << g.kb); ++h) {
    const float* c = cost + h * g.P;
    for (int64_t j = 0; j < g.J; ++j) {
      const bool better = c[j] < m[j];
      m[j] = better ? c[j] : m[j];
      bi[j] = better ? h : bi[j];
    }
  }
}

WK_INLINE void add_dist_generic(const float* m, const float* tab, Grid g, int V, const float* w, float* next) {
  for (int64_t s = 0; s < g.S; ++s) {
    float d = m[s >> g.kb];
    for (int v = 0; v < V; ++v) {
      const float e = w[v] - tab[v * g.S + s];
      d += e * e;
    }
    next[g.at(s)] = d;
  }
}

// Every step writes the argmins of its prefixes to bp (one byte each); m and bi are scratch of J
// entries for the paths that need them. The scalar step (and any ISA's for J < 8) is portable C++.
using Step = void (*)(const float* cost, float* m, int32_t* bi, uint8_t* bp, const float* tab, Grid g, int V,
                      const float* w, float* next);

void step_generic(const float* cost, float* m, int32_t* bi, uint8_t* bp, const float* tab, Grid g, int V,
                  const float* w, float* next) {
  prefix_min(cost, m, bi, g);
  add_dist_generic(m, tab, g, V, w, next);
  for (int64_t j = 0; j < g.J; ++j) bp[j] = static_cast<uint8_t>(bi[j]);
}

// ---------------------------------------------------------------- AVX2 (8 lanes)
//
// The AVX-512 steps below at half the width: the same comparisons in the same order and the same
// fused multiply-adds, so costs, ties and paths are those of the AVX-512 steps, bit for bit.
// The portable loops they replace ran 11-20x slower on the Zen 3 EPYC (3.3-6.1 against 0.24-0.32 ns
// per state and step, L = 12 and 16, 1 thread): the argmin select became a branch and the
// m[s >> kb] expansion did not vectorize.

WK_AVX2 WK_INLINE void predecessor_min_avx2(const float* cost, int64_t j, Grid g, __m256& best, __m256i& arg) {
  best = _mm256_loadu_ps(cost + j);
  arg = _mm256_setzero_si256();
  for (int h = 1; h < (1 << g.kb); ++h) {
    const __m256 c = _mm256_loadu_ps(cost + h * g.P + j);
    const __m256 lt = _mm256_cmp_ps(c, best, _CMP_LT_OQ);
    best = _mm256_min_ps(c, best);
    arg = _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(arg), _mm256_castsi256_ps(_mm256_set1_epi32(h)), lt));
  }
}

// The low byte of each 32-bit lane of v (argmins < 32) to dst[0..7].
WK_AVX2 WK_INLINE void store_low_bytes_avx2(uint8_t* dst, __m256i v) {
  const __m256i low = _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                                              -1, -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1,
                                                              -1, -1, -1, -1));
  const __m256i both = _mm256_permutevar8x32_epi32(low, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(dst), _mm256_castsi256_si128(both));
}

// The costs of states s .. s + 7: mv + sum_v (w_v - code(s, v))^2, with w0 / w1 broadcast.
WK_AVX2 WK_INLINE __m256 add_dist_avx2(const float* tab, Grid g, int V, int64_t s, __m256 w0, __m256 w1, __m256 mv) {
  __m256 e = _mm256_sub_ps(w0, _mm256_loadu_ps(tab + s));
  __m256 d = _mm256_fmadd_ps(e, e, mv);
  if (V > 1) {
    e = _mm256_sub_ps(w1, _mm256_loadu_ps(tab + g.S + s));
    d = _mm256_fmadd_ps(e, e, d);
  }
  return d;
}

// next at states s .. s + 7 (one row of the grid: J is a multiple of 8), as add_dist_avx2.
WK_AVX2 WK_INLINE void state_costs_avx2(const float* tab, Grid g, int V, int64_t s, __m256 w0, __m256 w1, __m256 mv,
                                        float* next) {
  _mm256_storeu_ps(next + g.at(s), add_dist_avx2(tab, g, V, s, w0, w1, mv));
}

// kb >= 4 (8 consecutive states share a prefix): the prefixes' minima to m and their argmins to
// the backpointer bytes, then the states' costs, as step_two_pass_avx512.
WK_AVX2 void step_two_pass_avx2(const float* cost, float* m, int32_t*, uint8_t* bp, const float* tab, Grid g,
                                int V, const float* w, float* next) {
  for (int64_t j = 0; j < g.J; j += 8) {
    __m256 best;
    __m256i arg;
    predecessor_min_avx2(cost, j, g, best, arg);
    _mm256_storeu_ps(m + j, best);
    store_low_bytes_avx2(bp + j, arg);
  }
  const __m256 w0 = _mm256_set1_ps(w[0]), w1 = _mm256_set1_ps(V > 1 ? w[1] : 0.f);
  for (int64_t s = 0; s < g.S; s += 8) state_costs_avx2(tab, g, V, s, w0, w1, _mm256_set1_ps(m[s >> g.kb]), next);
}

// kb < 4 in one pass, as step_fused_avx512: per 8 prefixes, their min / argmin in registers, then
// the 8 << kb states that follow them from a permute of the minima.
WK_AVX2 void step_fused_avx2(const float* cost, float*, int32_t*, uint8_t* bp, const float* tab, Grid g, int V,
                             const float* w, float* next) {
  const __m256 w0 = _mm256_set1_ps(w[0]), w1 = _mm256_set1_ps(V > 1 ? w[1] : 0.f);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t j = 0; j < g.J; j += 8) {
    __m256 best;
    __m256i arg;
    predecessor_min_avx2(cost, j, g, best, arg);
    store_low_bytes_avx2(bp + j, arg);
    for (int q = 0; q < (1 << g.kb); ++q) {
      const __m256i prefix = _mm256_srli_epi32(_mm256_add_epi32(lane, _mm256_set1_epi32(8 * q)), g.kb);
      state_costs_avx2(tab, g, V, (j << g.kb) + 8 * q, w0, w1, _mm256_permutevar8x32_ps(best, prefix), next);
    }
  }
}

// Two steps at once, as step_pair_avx512 (which explains the indexing) at 8 lanes: blocks of 8 << KB
// prefixes, J >= 8 << KB.
template <int KB>
WK_AVX2 void step_pair_avx2(const float* cost, uint8_t* bp0, uint8_t* bp1, const float* tab, Grid g, int V,
                            const float* w, float* next) {
  constexpr int N = 1 << KB, ahead = 4;  // prefetch distance in blocks
  const __m256 w0 = _mm256_set1_ps(w[0]), w1 = _mm256_set1_ps(V > 1 ? w[1] : 0.f);
  const __m256 u0 = _mm256_set1_ps(w[V]), u1 = _mm256_set1_ps(V > 1 ? w[V + 1] : 0.f);
  __m256i spread[N];
  for (int q = 0; q < N; ++q)
    spread[q] = _mm256_srli_epi32(_mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(8 * q)),
                                  KB);
  for (int64_t j = 0; j < g.J; j += 8 * N) {
    __m256 best[N], arg[N];  // arg: the argmins' int32 bits, for vblendvps
    for (int h = 0; h < N; ++h) {
      const int64_t run = h * g.J + j, j1 = run >> KB;
      if (j + ahead * 8 * N < g.J)
        for (int r = 0; r < N; ++r)
          _mm_prefetch(reinterpret_cast<const char*>(cost + r * g.P + j1 + ahead * 8), _MM_HINT_T0);
      __m256 m1;
      __m256i a1;
      predecessor_min_avx2(cost, j1, g, m1, a1);
      store_low_bytes_avx2(bp0 + j1, a1);
      const __m256 hv = _mm256_castsi256_ps(_mm256_set1_epi32(h));
      for (int q = 0; q < N; ++q) {
        const __m256 c = add_dist_avx2(tab, g, V, run + 8 * q, w0, w1, _mm256_permutevar8x32_ps(m1, spread[q]));
        if (h == 0) {
          best[q] = c;
          arg[q] = _mm256_setzero_ps();
        } else {
          const __m256 lt = _mm256_cmp_ps(c, best[q], _CMP_LT_OQ);
          best[q] = _mm256_min_ps(c, best[q]);
          arg[q] = _mm256_blendv_ps(arg[q], hv, lt);
        }
      }
    }
    for (int q = 0; q < N; ++q) {
      store_low_bytes_avx2(bp1 + j + 8 * q, _mm256_castps_si256(arg[q]));
      for (int r = 0; r < N; ++r)
        state_costs_avx2(tab, g, V, ((j + 8 * q) << KB) + 8 * r, u0, u1, _mm256_permutevar8x32_ps(best[q], spread[r]),
                         next);
    }
  }
}

// ------------------------------------------------------------------------- AVX-512

// The min and argmin over the predecessors h of prefixes j .. j + 15, with explicit masks: compilers
// turn the select into a branch on "any lane better", which mispredicts half the time on Viterbi
// costs.
WK_AVX512 WK_INLINE void predecessor_min(const float* cost, int64_t j, Grid g, __m512& best, __m512i& arg) {
  best = _mm512_loadu_ps(cost + j);
  arg = _mm512_setzero_si512();
  for (int h = 1; h < (1 << g.kb); ++h) {
    const __m512 c = _mm512_loadu_ps(cost + h * g.P + j);
    const __mmask16 lt = _mm512_cmp_ps_mask(c, best, _CMP_LT_OQ);
    best = _mm512_min_ps(c, best);
    arg = _mm512_mask_mov_epi32(arg, lt, _mm512_set1_epi32(h));
  }
}

// The costs of states s .. s + 15: mv + sum_v (w_v - code(s, v))^2, with w0 / w1 broadcast.
WK_AVX512 WK_INLINE __m512 add_dist(const float* tab, Grid g, int V, int64_t s, __m512 w0, __m512 w1, __m512 mv) {
  __m512 e = _mm512_sub_ps(w0, _mm512_loadu_ps(tab + s));
  __m512 d = _mm512_fmadd_ps(e, e, mv);
  if (V > 1) {
    e = _mm512_sub_ps(w1, _mm512_loadu_ps(tab + g.S + s));
    d = _mm512_fmadd_ps(e, e, d);
  }
  return d;
}

// next at states s .. s + 15 (one row of the grid: J is a multiple of 16), as add_dist.
WK_AVX512 WK_INLINE void state_costs(const float* tab, Grid g, int V, int64_t s, __m512 w0, __m512 w1,
                                     __m512 mv, float* next) {
  _mm512_storeu_ps(next + g.at(s), add_dist(tab, g, V, s, w0, w1, mv));
}

// Two passes, for kb >= 4 (where 16 consecutive states share one prefix; kb < 4 takes
// step_fused_avx512): the prefixes' minima to m and their argmins straight to the step's
// backpointer bytes, then the states' costs.
WK_AVX512 void step_two_pass_avx512(const float* cost, float* m, int32_t*, uint8_t* bp, const float* tab,
                                    Grid g, int V, const float* w, float* next) {
  for (int64_t j = 0; j < g.J; j += 16) {
    __m512 best;
    __m512i arg;
    predecessor_min(cost, j, g, best, arg);
    _mm512_storeu_ps(m + j, best);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bp + j), _mm512_cvtepi32_epi8(arg));
  }
  const __m512 w0 = _mm512_set1_ps(w[0]), w1 = _mm512_set1_ps(V > 1 ? w[1] : 0.f);
  for (int64_t s = 0; s < g.S; s += 16) state_costs(tab, g, V, s, w0, w1, _mm512_set1_ps(m[s >> g.kb]), next);
}

// One whole step in a single pass over the prefixes (AVX-512, kb < 4, J >= 16): per 16 prefixes,
// the min and argmin over their predecessors stay in registers, the argmins go straight to the
// step's backpointer bytes, and the 16 << kb states that follow those prefixes get their costs
// from a permute of the minima (a vector of 16 states spans 16 >> kb prefixes). The two-pass step
// stores m and reads it back.
WK_AVX512 void step_fused_avx512(const float* cost, float*, int32_t*, uint8_t* bp, const float* tab, Grid g,
                                 int V, const float* w, float* next) {
  const __m512 w0 = _mm512_set1_ps(w[0]), w1 = _mm512_set1_ps(V > 1 ? w[1] : 0.f);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t j = 0; j < g.J; j += 16) {
    __m512 best;
    __m512i arg;
    predecessor_min(cost, j, g, best, arg);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bp + j), _mm512_cvtepi32_epi8(arg));
    for (int q = 0; q < (1 << g.kb); ++q) {
      const __m512i prefix = _mm512_srli_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(16 * q)), g.kb);
      state_costs(tab, g, V, (j << g.kb) + 16 * q, w0, w1, _mm512_permutexvar_ps(prefix, best), next);
    }
  }
}

// Two steps at once (t with w, t + 1 with w + V), for kb = KB < 4 and J >= 16 << KB: the
// intermediate states' costs never leave registers, so per two steps the cost grid is read and
// written once instead of twice. Per block of 16 << KB prefixes j of step t + 1: their predecessors
// are the intermediate states j | h << (L-kb), for each h a run of 16 << KB states whose own
// prefixes are 16 consecutive ones of step t; those get their min / argmin (predecessor_min), the
// run its costs, and the run folds into the block's running min / argmin over h (in the order
// predecessor_min uses, so paths and ties are those of two single steps, bit for bit).
template <int KB>
WK_AVX512 void step_pair_avx512(const float* cost, uint8_t* bp0, uint8_t* bp1, const float* tab, Grid g, int V,
                                const float* w, float* next) {
  constexpr int N = 1 << KB, ahead = 4;  // prefetch distance in blocks
  const __m512 w0 = _mm512_set1_ps(w[0]), w1 = _mm512_set1_ps(V > 1 ? w[1] : 0.f);
  const __m512 u0 = _mm512_set1_ps(w[V]), u1 = _mm512_set1_ps(V > 1 ? w[V + 1] : 0.f);
  // spread[q], lane i: which of 16 consecutive prefixes state 16 q + i of their 16 N successors follows.
  __m512i spread[N];
  for (int q = 0; q < N; ++q)
    spread[q] = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                         _mm512_set1_epi32(16 * q)),
        KB);
  for (int64_t j = 0; j < g.J; j += 16 * N) {
    __m512 best[N];
    __m512i arg[N];
    for (int h = 0; h < N; ++h) {
      const int64_t run = h * g.J + j, j1 = run >> KB;
      // The block reads N * N lines of the grid 16 floats apart, more streams than the hardware
      // prefetcher follows at L = 16 (without this the pair ran at 0.8-1.0x two single steps there).
      if (j + ahead * 16 * N < g.J)
        for (int r = 0; r < N; ++r)
          _mm_prefetch(reinterpret_cast<const char*>(cost + r * g.P + j1 + ahead * 16), _MM_HINT_T0);
      __m512 m1;
      __m512i a1;
      predecessor_min(cost, j1, g, m1, a1);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(bp0 + j1), _mm512_cvtepi32_epi8(a1));
      for (int q = 0; q < N; ++q) {
        const __m512 c = add_dist(tab, g, V, run + 16 * q, w0, w1, _mm512_permutexvar_ps(spread[q], m1));
        if (h == 0) {
          best[q] = c;
          arg[q] = _mm512_setzero_si512();
        } else {
          const __mmask16 lt = _mm512_cmp_ps_mask(c, best[q], _CMP_LT_OQ);
          best[q] = _mm512_min_ps(c, best[q]);
          arg[q] = _mm512_mask_mov_epi32(arg[q], lt, _mm512_set1_epi32(h));
        }
      }
    }
    for (int q = 0; q < N; ++q) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(bp1 + j + 16 * q), _mm512_cvtepi32_epi8(arg[q]));
      for (int r = 0; r < N; ++r)
        state_costs(tab, g, V, ((j + 16 * q) << KB) + 16 * r, u0, u1, _mm512_permutexvar_ps(spread[r], best[q]),
                    next);
    }
  }
}

using StepPair = void (*)(const float* cost, uint8_t* bp0, uint8_t* bp1, const float* tab, Grid g, int V,
                          const float* w, float* next);

// The two-step kernel for (isa, L, kb), or null where single steps run.
StepPair choose_step_pair(CpuIsa isa, Grid g) {
  if (g.kb >= 4) return nullptr;
  if (isa == CpuIsa::Avx512 && g.J >= (int64_t(16) << g.kb))
    return g.kb == 1 ? &step_pair_avx512<1> : g.kb == 2 ? &step_pair_avx512<2> : &step_pair_avx512<3>;
  if (isa == CpuIsa::Avx2 && g.J >= (int64_t(8) << g.kb))
    return g.kb == 1 ? &step_pair_avx2<1> : g.kb == 2 ? &step_pair_avx2<2> : &step_pair_avx2<3>;
  return nullptr;
}

// The step for (isa, L, kb). AVX-512 with 16+ prefixes: kb < 4 in one pass, kb >= 4 in two (there
// the one-pass loop's 16+ predecessor streams ran at 0.74-1.0x the two-pass speed; kb < 4:
// 1.5-2.2x faster).
Step choose_step(CpuIsa isa, Grid g) {
  if (isa == CpuIsa::Avx512 && g.J >= 16) return g.kb < 4 ? &step_fused_avx512 : &step_two_pass_avx512;
  if ((isa == CpuIsa::Avx512 || isa == CpuIsa::Avx2) && g.J >= 8)
    return g.kb < 4 ? &step_fused_avx2 : &step_two_pass_avx2;
  return &step_generic;
}

// The cheapest path of a row's window of T steps: states[t] for t < T. prev >= 0 is the state of the
// step before the window, so the first state must follow it (its upper L - kb bits are prev's lower
// ones); prev < 0 leaves the first state free (the row's first step).
void viterbi_row(const float* w, int64_t T, int L, int kb, int V, const float* tab, int64_t prev, Work& k,
                 uint32_t* states, CpuIsa isa) {
  const Grid g(L, kb);
  const int64_t J = g.J;
  k.cost.resize(g.size());
  k.next.resize(g.size());
  k.m.resize(J);
  k.bi.resize(J);
  k.bp.resize(static_cast<size_t>(std::max<int64_t>(T, 1) * J));
  const Step step = choose_step(isa, g);
  const int64_t first = prev < 0 ? 0 : (prev & (J - 1)) << kb, last = prev < 0 ? g.S : first + (int64_t(1) << kb);
  // The pads stay infinite, so no step's minimum ever picks one (the steps write every state).
  constexpr float inf = std::numeric_limits<float>::infinity();
  std::fill(k.cost.begin(), k.cost.end(), inf);
  for (int64_t h = 0; h < (int64_t(1) << kb); ++h) std::fill_n(k.next.begin() + h * g.P + J, g.P - J, inf);
  for (int64_t s = first; s < last; ++s) {
    float d = 0.f;
    for (int v = 0; v < V; ++v) {
      const float e = w[v] - tab[v * g.S + s];
      d += e * e;
    }
    k.cost[g.at(s)] = d;
  }
  const StepPair pair = choose_step_pair(isa, g);
  for (int64_t t = 1; t < T;) {
    if (pair != nullptr && t + 1 < T) {
      pair(k.cost.data(), k.bp.data() + t * J, k.bp.data() + (t + 1) * J, tab, g, V, w + t * V, k.next.data());
      t += 2;
    } else {
      step(k.cost.data(), k.m.data(), k.bi.data(), k.bp.data() + t * J, tab, g, V, w + t * V, k.next.data());
      t += 1;
    }
    std::swap(k.cost, k.next);
  }
  // Backtrack from the cheapest final state (the first of equals, in state order).
  uint32_t s = 0;
  float best = inf;
  for (int64_t h = 0; h < (int64_t(1) << kb); ++h)
    for (int64_t j = 0; j < J; ++j)
      if (k.cost[h * g.P + j] < best) {
        best = k.cost[h * g.P + j];
        s = static_cast<uint32_t>((h << g.lk) | j);
      }
  for (int64_t t = T - 1; t >= 1; --t) {
    states[t] = s;
    const uint32_t j = s >> kb;
    s = j | (static_cast<uint32_t>(k.bp[t * J + j]) << (L - kb));
  }
  states[0] = s;
}

// A row's stream (tcq_words(T) words) from its T states.
void pack_row(const uint32_t* states, int64_t T, int L, int kb, uint32_t* out) {
  std::memset(out, 0, sizeof(uint32_t) * tcq_words(T, L, kb));
  auto put = [&](int64_t bit, uint32_t value, int nbits) {
    for (int b = 0; b < nbits; ++b)
      if ((value >> (nbits - 1 - b)) & 1u) out[(bit + b) >> 5] |= 1u << (31 - ((bit + b) & 31));
  };
  if (T > 0) put(0, states[0], L);
  for (int64_t t = 1; t < T; ++t) put(L + kb * (t - 1), states[t] & ((1u << kb) - 1), kb);
}

}  // namespace

void encode(const float* W, int64_t rows, int64_t steps, int L, int kb, int V, int32_t* packed, CpuIsa isa) {
  const float* tab = code_table(L, V).data();
  const int64_t words = tcq_words(steps, L, kb);
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    Work k;
    std::vector<uint32_t> states(static_cast<size_t>(steps));
    for (int64_t r = r0; r < r1; ++r) {
      viterbi_row(W + r * steps * V, steps, L, kb, V, tab, -1, k, states.data(), isa);
      pack_row(states.data(), steps, L, kb, reinterpret_cast<uint32_t*>(packed + r * words));
    }
  });
}

void encode_window(const float* W, const int32_t* prev, int64_t rows, int64_t steps, int L, int kb, int V,
                   int64_t commit, int32_t* states, CpuIsa isa) {
  const float* tab = code_table(L, V).data();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    Work k;
    std::vector<uint32_t> path(static_cast<size_t>(steps));
    for (int64_t r = r0; r < r1; ++r) {
      viterbi_row(W + r * steps * V, steps, L, kb, V, tab, prev[r], k, path.data(), isa);
      for (int64_t t = 0; t < commit; ++t) states[r * commit + t] = static_cast<int32_t>(path[t]);
    }
  });
}

void decode(const int32_t* packed, int64_t rows, int64_t steps, int L, int kb, int V, const float* scales,
            float* W) {
  const int64_t words = tcq_words(steps, L, kb);
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint32_t* row = reinterpret_cast<const uint32_t*>(packed + r * words);
      for (int64_t t = 0; t < steps; ++t) {
        const uint32_t s = read_state(row, t * kb, L);
        for (int v = 0; v < V; ++v) W[(r * steps + t) * V + v] = scales[r] * code_value(s, v);
      }
    }
  });
}

}  // namespace weightkit::tcq
