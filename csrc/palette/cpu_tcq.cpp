// Viterbi encoder and decoder of the bitshift trellis (tcq.h), CPU.
//
// Per step the Viterbi recursion is: for each of the 2^(L-kb) "prefixes" j (a state's upper L-kb
// bits, shared by the 2^kb states that can follow it), m[j] = min over the 2^kb predecessors
// j | h << (L-kb) of their cost; then cost'[s] = m[s >> kb] + |w_t - code(s)|^2. Both loops are
// contiguous over j or s, so they vectorize: the AVX-512 path uses intrinsics for the
// m[s >> kb] expansion (and, for kb < 4, does both loops in one pass), the others
// compiler-vectorized loops. Backpointers are one byte per prefix and step (T * 2^(L-kb) bytes
// per row in flight, per thread).
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

struct Work {
  std::vector<float> cost, next, m;
  std::vector<uint8_t> bp;
  std::vector<int32_t> bi;
};

// m[j], bi[j] = min / argmin over h of cost[j + h * J].
WK_INLINE void prefix_min(const float* cost, float* m, int32_t* bi, int64_t J, int H) {
  std::memcpy(m, cost, sizeof(float) * J);
  std::fill(bi, bi + J, 0);
  for (int h = 1; h < H; ++h) {
    const float* c = cost + h * J;
    for (int64_t j = 0; j < J; ++j) {
      const bool better = c[j] < m[j];
      m[j] = better ? c[j] : m[j];
      bi[j] = better ? h : bi[j];
    }
  }
}

WK_INLINE void add_dist_generic(const float* m, const float* tab, int64_t S, int kb, int V, const float* w,
                                float* next) {
  const int64_t U = int64_t(1) << kb;
  for (int64_t j = 0; j < (S >> kb); ++j)
    for (int64_t u = 0; u < U; ++u) {
      const int64_t s = (j << kb) | u;
      float d = m[j];
      for (int v = 0; v < V; ++v) {
        const float e = w[v] - tab[v * S + s];
        d += e * e;
      }
      next[s] = d;
    }
}

void step_generic(const float* cost, float* m, int32_t* bi, const float* tab, int64_t S, int kb, int V,
                  const float* w, float* next) {
  prefix_min(cost, m, bi, S >> kb, 1 << kb);
  add_dist_generic(m, tab, S, kb, V, w, next);
}

WK_AVX2 void step_avx2(const float* cost, float* m, int32_t* bi, const float* tab, int64_t S, int kb, int V,
                       const float* w, float* next) {
  prefix_min(cost, m, bi, S >> kb, 1 << kb);
  add_dist_generic(m, tab, S, kb, V, w, next);
}

// The min and argmin over h < H of cost[j + h * J .. + 16], with explicit masks: compilers turn
// the select into a branch on "any lane better", which mispredicts half the time on Viterbi costs.
WK_AVX512 WK_INLINE void predecessor_min(const float* cost, int64_t j, int64_t J, int H, __m512& best, __m512i& arg) {
  best = _mm512_loadu_ps(cost + j);
  arg = _mm512_setzero_si512();
  for (int h = 1; h < H; ++h) {
    const __m512 c = _mm512_loadu_ps(cost + h * J + j);
    const __mmask16 lt = _mm512_cmp_ps_mask(c, best, _CMP_LT_OQ);
    best = _mm512_min_ps(c, best);
    arg = _mm512_mask_mov_epi32(arg, lt, _mm512_set1_epi32(h));
  }
}

// next[s .. s + 16] = mv + sum_v (w_v - code(s, v))^2, with w0 / w1 broadcast.
WK_AVX512 WK_INLINE void state_costs(const float* tab, int64_t S, int V, int64_t s, __m512 w0, __m512 w1, __m512 mv,
                                     float* next) {
  __m512 e = _mm512_sub_ps(w0, _mm512_loadu_ps(tab + s));
  __m512 d = _mm512_fmadd_ps(e, e, mv);
  if (V > 1) {
    e = _mm512_sub_ps(w1, _mm512_loadu_ps(tab + S + s));
    d = _mm512_fmadd_ps(e, e, d);
  }
  _mm512_storeu_ps(next + s, d);
}

// Two passes, for kb >= 4 (where 16 consecutive states share one prefix; kb < 4 with 16+
// prefixes takes step_fused_avx512, and fewer prefixes the generic loops).
WK_AVX512 void step_avx512(const float* cost, float* m, int32_t* bi, const float* tab, int64_t S, int kb, int V,
                           const float* w, float* next) {
  const int64_t J = S >> kb;
  if (J < 16 || kb < 4) {
    step_generic(cost, m, bi, tab, S, kb, V, w, next);
    return;
  }
  for (int64_t j = 0; j < J; j += 16) {
    __m512 best;
    __m512i arg;
    predecessor_min(cost, j, J, 1 << kb, best, arg);
    _mm512_storeu_ps(m + j, best);
    _mm512_storeu_si512(bi + j, arg);
  }
  const __m512 w0 = _mm512_set1_ps(w[0]), w1 = _mm512_set1_ps(V > 1 ? w[1] : 0.f);
  for (int64_t s = 0; s < S; s += 16) state_costs(tab, S, V, s, w0, w1, _mm512_set1_ps(m[s >> kb]), next);
}

// One whole step in a single pass over the prefixes (AVX-512, kb < 4, J >= 16): per 16 prefixes,
// the min and argmin over their predecessors stay in registers, the argmins go straight to the
// step's backpointer bytes, and the 16 << kb states that follow those prefixes get their costs
// from a permute of the minima (a vector of 16 states spans 16 >> kb prefixes). The two-pass step
// stores m and bi, reads them back and narrows bi to bytes.
WK_AVX512 void step_fused_avx512(const float* cost, uint8_t* bp, const float* tab, int64_t S, int kb, int V,
                                 const float* w, float* next) {
  const int64_t J = S >> kb;
  const int H = 1 << kb;
  const __m512 w0 = _mm512_set1_ps(w[0]), w1 = _mm512_set1_ps(V > 1 ? w[1] : 0.f);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t j = 0; j < J; j += 16) {
    __m512 best;
    __m512i arg;
    predecessor_min(cost, j, J, H, best, arg);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bp + j), _mm512_cvtepi32_epi8(arg));
    for (int q = 0; q < H; ++q) {
      const __m512i prefix = _mm512_srli_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(16 * q)), kb);
      state_costs(tab, S, V, (j << kb) + 16 * q, w0, w1, _mm512_permutexvar_ps(prefix, best), next);
    }
  }
}

// The cheapest path of a row's window of T steps: states[t] for t < T. prev >= 0 is the state of the
// step before the window, so the first state must follow it (its upper L - kb bits are prev's lower
// ones); prev < 0 leaves the first state free (the row's first step).
void viterbi_row(const float* w, int64_t T, int L, int kb, int V, const float* tab, int64_t prev, Work& k,
                 uint32_t* states, CpuIsa isa) {
  const int64_t S = int64_t(1) << L, J = S >> kb;
  k.cost.resize(S);
  k.next.resize(S);
  k.m.resize(J);
  k.bi.resize(J);
  k.bp.resize(static_cast<size_t>(std::max<int64_t>(T, 1) * J));
  auto step = isa == CpuIsa::Avx512 ? &step_avx512 : isa == CpuIsa::Avx2 ? &step_avx2 : &step_generic;
  const int64_t first = prev < 0 ? 0 : (prev & (J - 1)) << kb, last = prev < 0 ? S : first + (int64_t(1) << kb);
  std::fill(k.cost.begin(), k.cost.end(), std::numeric_limits<float>::infinity());
  for (int64_t s = first; s < last; ++s) {
    float d = 0.f;
    for (int v = 0; v < V; ++v) {
      const float e = w[v] - tab[v * S + s];
      d += e * e;
    }
    k.cost[s] = d;
  }
  // kb >= 4 stays two-pass: the fused loop's 16+ predecessor streams, 2^(L-kb) floats apart, ran
  // at 0.74-1.0x the two-pass speed there (kb < 4: 1.5-2.2x faster).
  const bool fused = isa == CpuIsa::Avx512 && J >= 16 && kb < 4;
  for (int64_t t = 1; t < T; ++t) {
    uint8_t* bp = k.bp.data() + t * J;
    if (fused) {
      step_fused_avx512(k.cost.data(), bp, tab, S, kb, V, w + t * V, k.next.data());
    } else {
      step(k.cost.data(), k.m.data(), k.bi.data(), tab, S, kb, V, w + t * V, k.next.data());
      for (int64_t j = 0; j < J; ++j) bp[j] = static_cast<uint8_t>(k.bi[j]);
    }
    std::swap(k.cost, k.next);
  }
  // Backtrack from the cheapest final state.
  uint32_t s = static_cast<uint32_t>(std::min_element(k.cost.begin(), k.cost.end()) - k.cost.begin());
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
