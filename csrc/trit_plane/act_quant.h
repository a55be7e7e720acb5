// int8 rounding of activations for trit_plane_matmul_a8, shared by the CPU and CUDA code so both
// devices compute the same codes. Plain C++ (kernels.cu includes it).
//
// Per batch row and weight column group g (the groups of the scales; the last may be shorter):
//     amax = max_c |x_c|,   s = amax / 127,   q_c = rint(x_c * (127 / amax)) in [-127, 127]
// (fp32 arithmetic, ties to even), and the op computes y = sum_g s_g * (alpha1 * T1 q + alpha2 * T2 q)
// with exact integer sums. Since |x_c - s q_c| <= s / 2, the change against the fp32-activation
// product is bounded per output row r by
//     |dy_r| <= sum_g (s_g / 2) * (|alpha1_rg| * nnz(T1_rg) + |alpha2_rg| * nnz(T2_rg)).
// Edge cases: amax == 0, or amax so small that 127 / amax overflows (< ~3.7e-37), gives s = 0 and
// q = 0: the group is flushed to zero, and its term of the bound is amax instead of s / 2. A NaN
// or +-Inf in the group gives s = NaN, so every output of that batch row is NaN.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define WK_TP_HD __host__ __device__ __forceinline__
#else
#define WK_TP_HD inline
#endif

namespace weightkit::trit_plane {

constexpr float kActQMax = 127.f;

// Running max of |x| that keeps a NaN once it has seen one (fmaxf would drop it).
WK_TP_HD float act_amax(float amax, float x) {
  const float a = fabsf(x);
  return (a > amax || a != a) ? a : amax;
}

struct ActScale {
  float s;    // dequantization step
  float inv;  // 127 / amax: codes are rint(x * inv)
};

WK_TP_HD ActScale act_scale(float amax) {
  if (!(amax <= FLT_MAX)) return {NAN, 0.f};  // a NaN or Inf in the group
  const float inv = kActQMax / amax;
  if (!(inv <= FLT_MAX)) return {0.f, 0.f};   // amax == 0 or tiny: flush to zero
  return {amax / kActQMax, inv};
}

// Comparisons rather than fminf/fmaxf, which GCC calls out of line; a NaN (only in a group whose
// s is NaN anyway) becomes -127 instead of an undefined conversion.
WK_TP_HD int act_code(float x, float inv) {
  float v = rintf(x * inv);
  v = v >= -kActQMax ? v : -kActQMax;
  v = v <= kActQMax ? v : kActQMax;
  return static_cast<int>(v);
}

}  // namespace weightkit::trit_plane
