// Small SIMD helpers shared by the CPU kernels (inlined into target-attributed callers).
#pragma once

#include <immintrin.h>

#include "common/cpu_target.h"

namespace weightkit {

// The sum of v's 8 lanes.
WK_AVX2 WK_INLINE float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace weightkit
