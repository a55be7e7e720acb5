#include "newton_schulz/cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <vector>

#include "common/cpu_target.h"
#include "common/simd.h"

namespace weightkit::newton_schulz_cpu {
namespace {

// Reductions split the input into chunks of this many floats; partial sums are combined in
// chunk order, so the answer is the same for any number of threads.
constexpr int64_t kChunk = 16384;
// These passes are memory-bound and short: below ~256K floats a parallel region's fork/join
// (and, on a shared machine, waiting for a descheduled thread) costs more than it saves.
constexpr int64_t kParallelGrain = 16 * kChunk;

// ---------------------------------------------------------------- scalar (reference) path

inline float round_bf16_scalar(float v) {
  if (std::isnan(v)) return v;
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  bits &= 0xffff0000u;
  std::memcpy(&v, &bits, 4);
  return v;
}

inline float round_scalar(float v, Rounding r) {
  switch (r) {
    case Rounding::BFloat16: return round_bf16_scalar(v);
    case Rounding::Half: return static_cast<float>(c10::Half(v));
    default: return v;
  }
}

// Squares are summed in fp64 in every path (scalar, AVX2, AVX-512): an fp32 square overflows
// above |x| ~ 1.8e19 and underflows below ~1e-19 (this pass is memory-bound next to the matrix
// products, so fp64 costs nothing).
double sumsq_scalar(const float* x, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(x[i]) * x[i];
  return acc;
}

double sum_cosh2_scalar(const float* x, int64_t n, float s) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double c = std::cosh(static_cast<double>(s * x[i]));
    acc += c * c;
  }
  return acc;
}

void scale_round_scalar(float* x, int64_t n, float s, Rounding r) {
  for (int64_t i = 0; i < n; ++i) x[i] = round_scalar(s * x[i], r);
}

// ---------------------------------------------------------------- AVX2 + FMA + F16C path

// expf after Cephes: 2^k * p(r) with r = x - k ln2, |r| <= ln2 / 2; ~1 ulp on [-87, 88].
WK_AVX2 inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

WK_AVX2 inline __m256 round256(__m256 v, Rounding r) {
  if (r == Rounding::BFloat16) {
    const __m256i b = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), _mm256_set1_epi32(1));
    __m256i q = _mm256_add_epi32(b, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
    q = _mm256_and_si256(q, _mm256_set1_epi32(static_cast<int>(0xffff0000u)));
    return _mm256_blendv_ps(_mm256_castsi256_ps(q), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  if (r == Rounding::Half) return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  return v;
}

WK_AVX2 double sumsq_avx2(const float* x, int64_t n) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256d v0 = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), v1 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
    a0 = _mm256_fmadd_pd(v0, v0, a0);
    a1 = _mm256_fmadd_pd(v1, v1, a1);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_add_pd(a0, a1));
  return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]) + sumsq_scalar(x + i, n - i);
}

WK_AVX2 double sum_cosh2_avx2(const float* x, int64_t n, float s) {
  const __m256 vs = _mm256_set1_ps(s), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = exp256(_mm256_mul_ps(vs, _mm256_loadu_ps(x + i)));
    const __m256 c = _mm256_mul_ps(half, _mm256_add_ps(e, _mm256_div_ps(one, e)));
    acc = _mm256_fmadd_ps(c, c, acc);
  }
  return static_cast<double>(hsum256(acc)) + sum_cosh2_scalar(x + i, n - i, s);
}

WK_AVX2 void scale_round_avx2(float* x, int64_t n, float s, Rounding r) {
  const __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, round256(_mm256_mul_ps(vs, _mm256_loadu_ps(x + i)), r));
  scale_round_scalar(x + i, n - i, s, r);
}

// ---------------------------------------------------------------- AVX-512 path

WK_AVX512 inline __m512 exp512(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, k);
}

WK_AVX512 inline __m512 round512(__m512 v, Rounding r) {
  if (r == Rounding::BFloat16) {
    const __m512i b = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    __m512i q = _mm512_add_epi32(b, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
    q = _mm512_and_si512(q, _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), _mm512_castsi512_ps(q), v);
  }
  if (r == Rounding::Half) return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  return v;
}

WK_AVX512 double sumsq_avx512(const float* x, int64_t n) {
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512d v0 = _mm512_cvtps_pd(_mm256_loadu_ps(x + i)), v1 = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8));
    a0 = _mm512_fmadd_pd(v0, v0, a0);
    a1 = _mm512_fmadd_pd(v1, v1, a1);
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1)) + sumsq_scalar(x + i, n - i);
}

WK_AVX512 double sum_cosh2_avx512(const float* x, int64_t n, float s) {
  const __m512 vs = _mm512_set1_ps(s), half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f);
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 e = exp512(_mm512_mul_ps(vs, _mm512_loadu_ps(x + i)));
    const __m512 c = _mm512_mul_ps(half, _mm512_add_ps(e, _mm512_div_ps(one, e)));
    acc = _mm512_fmadd_ps(c, c, acc);
  }
  return static_cast<double>(_mm512_reduce_add_ps(acc)) + sum_cosh2_scalar(x + i, n - i, s);
}

WK_AVX512 void scale_round_avx512(float* x, int64_t n, float s, Rounding r) {
  const __m512 vs = _mm512_set1_ps(s);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, round512(_mm512_mul_ps(vs, _mm512_loadu_ps(x + i)), r));
  scale_round_scalar(x + i, n - i, s, r);
}

// ---------------------------------------------------------------- chunked, threaded drivers

template <typename ChunkSum>
double chunked_sum(int64_t n, ChunkSum chunk_sum) {
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<double> partial(static_cast<size_t>(chunks), 0.0);
  at::parallel_for(0, chunks, kParallelGrain / kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t lo = c * kChunk;
      partial[static_cast<size_t>(c)] = chunk_sum(lo, std::min(n, lo + kChunk) - lo);
    }
  });
  double total = 0.0;
  for (double p : partial) total += p;
  return total;
}

}  // namespace

double sum_squares(const float* x, int64_t n, CpuIsa isa) {
  return chunked_sum(n, [&](int64_t lo, int64_t len) {
    switch (isa) {
      case CpuIsa::Avx512: return sumsq_avx512(x + lo, len);
      case CpuIsa::Avx2: return sumsq_avx2(x + lo, len);
      default: return sumsq_scalar(x + lo, len);
    }
  });
}

double sum_cosh_squares(const float* x, int64_t n, float s, CpuIsa isa) {
  return chunked_sum(n, [&](int64_t lo, int64_t len) {
    switch (isa) {
      case CpuIsa::Avx512: return sum_cosh2_avx512(x + lo, len, s);
      case CpuIsa::Avx2: return sum_cosh2_avx2(x + lo, len, s);
      default: return sum_cosh2_scalar(x + lo, len, s);
    }
  });
}

void scale_round(float* x, int64_t n, float s, Rounding rounding, CpuIsa isa) {
  if (s == 1.f && rounding == Rounding::None) return;
  at::parallel_for(0, n, kParallelGrain, [&](int64_t begin, int64_t end) {
    switch (isa) {
      case CpuIsa::Avx512: scale_round_avx512(x + begin, end - begin, s, rounding); break;
      case CpuIsa::Avx2: scale_round_avx2(x + begin, end - begin, s, rounding); break;
      default: scale_round_scalar(x + begin, end - begin, s, rounding);
    }
  });
}

}  // namespace weightkit::newton_schulz_cpu
