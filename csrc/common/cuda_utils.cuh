// Small device helpers shared by the CUDA kernels: reductions, sizes, dtype conversions. Pure
// CUDA (no torch headers) so that every kernels.cu compiles with nvcc alone.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace weightkit::cuda {

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarpSize = 32;

template <class T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Butterfly sum: every lane ends with the sum over the warp.
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32 (at most 1024)
// and every thread of the block must call it. The leading barrier makes back-to-back calls safe.
template <class T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T partial[kWarpSize];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  __syncthreads();
  v = warp_sum(v);
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    T w = lane < warps ? partial[lane] : T(0);
    w = warp_sum(w);
    if (lane == 0) partial[0] = w;
  }
  __syncthreads();
  return partial[0];
}

// Loads promote to fp32; stores round to nearest even (NaN stays NaN).
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}

// Linear index L -> (i, j) with 0 <= i <= j, enumerating the upper triangle column by column:
// L = j (j + 1) / 2 + i. Launching one block per L covers each upper pair exactly once.
__host__ __device__ inline void upper_pair_from_linear(int64_t L, int64_t& i, int64_t& j) {
  j = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(L) + 1.0) - 1.0) * 0.5);
  // The floating-point guess can be one off for large L; settle it exactly in integers.
  while (j > 0 && j * (j + 1) / 2 > L) --j;
  while ((j + 1) * (j + 2) / 2 <= L) ++j;
  i = L - j * (j + 1) / 2;
}

}  // namespace weightkit::cuda
