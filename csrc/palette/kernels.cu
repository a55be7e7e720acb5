// CUDA kernels of the palette family (see kernels.cuh).
#include "palette/kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>

#include "common/cuda_utils.cuh"
#include "palette/tcq.h"

namespace weightkit::palette_cuda {
namespace {

using weightkit::cuda::ceil_div;
using weightkit::cuda::kFullMask;
using weightkit::cuda::warp_sum;

template <class E>
__device__ __forceinline__ float to_f32(E v) {
  if constexpr (std::is_same_v<E, float>) return v;
  else if constexpr (std::is_same_v<E, __nv_bfloat16>) return __bfloat162float(v);
  else return __half2float(v);
}

template <class E>
__device__ __forceinline__ E from_f32(float v) {
  if constexpr (std::is_same_v<E, float>) return v;
  else if constexpr (std::is_same_v<E, __nv_bfloat16>) return __float2bfloat16(v);
  else return __float2half(v);
}

// ------------------------------------------------------------------------------- Hadamard

template <class E>
__global__ void __launch_bounds__(1024)
    hadamard_kernel(const E* __restrict__ x, E* __restrict__ y, int64_t n, int m, const int8_t* __restrict__ Hm,
                    const float* __restrict__ signs, float scale) {
  extern __shared__ float buf[];
  const int64_t row = blockIdx.x;
  const E* xr = x + row * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) buf[i] = to_f32(xr[i]) * (signs ? signs[i] : 1.f);
  __syncthreads();
  const int64_t P = n / m, half = P / 2;
  // Walsh-Hadamard butterflies within each of the m segments of length P.
  for (int64_t h = 1; h < P; h *= 2) {
    for (int64_t q = threadIdx.x; q < m * half; q += blockDim.x) {
      const int64_t a = q / half, r = q % half;
      const int64_t i = a * P + (r / h) * 2 * h + (r % h);
      const float u = buf[i], v = buf[i + h];
      buf[i] = u + v;
      buf[i + h] = u - v;
    }
    __syncthreads();
  }
  E* yr = y + row * n;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    if (m == 1) {
      yr[i] = from_f32<E>(buf[i] * scale);
      continue;
    }
    const int64_t a = i / P, b = i % P;
    float acc = 0.f;
    for (int a2 = 0; a2 < m; ++a2) acc += (Hm[a * m + a2] > 0 ? 1.f : -1.f) * buf[a2 * P + b];
    yr[i] = from_f32<E>(acc * scale);
  }
}

// ------------------------------------------------------------------------------ GEMVs

constexpr int kMaxTokens = 16;
constexpr int kWarpsPerBlock = 8;

__global__ void palette_gemv_kernel(const float* __restrict__ x, int T, const int32_t* __restrict__ packed,
                                    int64_t rows, int64_t units, int c, int d, const float* __restrict__ codebook,
                                    const float* __restrict__ scales, float* __restrict__ y) {
  __shared__ float lut[256 * 2];
  const int ncb = 1 << c;
  for (int i = threadIdx.x; i < ncb * d; i += blockDim.x) lut[i] = codebook[i];
  __syncthreads();
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32, P = 32 / c;
  const int64_t per_block = 16 * static_cast<int64_t>(P), nblk = ceil_div(units, per_block);
  const uint32_t* w = reinterpret_cast<const uint32_t*>(packed) + row * nblk * 16;
  const uint32_t mask = (1u << c) - 1;
  const int64_t in = units * d;
  float acc[kMaxTokens];
#pragma unroll
  for (int t = 0; t < kMaxTokens; ++t) acc[t] = 0.f;
  for (int64_t word = lane; word < nblk * 16; word += 32) {
    uint32_t bits = w[word];
    const int64_t blk = word / 16, l = word % 16;
    for (int p = 0; p < P; ++p, bits >>= c) {
      const int64_t u = (blk * P + p) * 16 + l;
      if (u >= units) break;
      const uint32_t code = bits & mask;
      for (int e = 0; e < d; ++e) {
        const float v = lut[code * d + e];
#pragma unroll
        for (int t = 0; t < kMaxTokens; ++t)
          if (t < T) acc[t] += v * __ldg(x + t * in + u * d + e);
      }
    }
  }
#pragma unroll
  for (int t = 0; t < kMaxTokens; ++t) {
    if (t >= T) break;
    const float s = warp_sum(acc[t]);
    if (lane == 0) y[t * rows + row] = scales[row] * s;
  }
}

__global__ void tcq_decode_kernel(const int32_t* __restrict__ packed, int64_t rows, int64_t steps, int L, int kb,
                                  int V, const float* __restrict__ scales, float* __restrict__ W) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows * steps) return;
  const int64_t r = i / steps, t = i % steps;
  const uint32_t* row = reinterpret_cast<const uint32_t*>(packed) + r * tcq::tcq_words(steps, L, kb);
  const uint32_t s = tcq::read_state(row, t * kb, L);
  for (int v = 0; v < V; ++v) W[i * V + v] = scales[r] * tcq::code_value(s, v);
}

__global__ void tcq_gemv_kernel(const float* __restrict__ x, int T, const int32_t* __restrict__ packed,
                                int64_t rows, int64_t steps, int L, int kb, int V, const float* __restrict__ scales,
                                float* __restrict__ y) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = threadIdx.x % 32;
  const uint32_t* stream = reinterpret_cast<const uint32_t*>(packed) + row * tcq::tcq_words(steps, L, kb);
  const int64_t in = steps * V;
  float acc[kMaxTokens];
#pragma unroll
  for (int t = 0; t < kMaxTokens; ++t) acc[t] = 0.f;
  for (int64_t st = lane; st < steps; st += 32) {
    const uint32_t s = tcq::read_state(stream, st * kb, L);
    for (int v = 0; v < V; ++v) {
      const float val = tcq::code_value(s, v);
#pragma unroll
      for (int t = 0; t < kMaxTokens; ++t)
        if (t < T) acc[t] += val * __ldg(x + t * in + st * V + v);
    }
  }
#pragma unroll
  for (int t = 0; t < kMaxTokens; ++t) {
    if (t >= T) break;
    const float s = warp_sum(acc[t]);
    if (lane == 0) y[t * rows + row] = scales[row] * s;
  }
}

// ----------------------------------------------------------------------------- Viterbi

constexpr int kViterbiThreads = 1024;

__device__ __forceinline__ float step_dist(const float* w, uint32_t s, int V) {
  float d = 0.f;
  for (int v = 0; v < V; ++v) {
    const float e = w[v] - tcq::code_value(s, v);
    d += e * e;
  }
  return d;
}

// One block per row. prev (nullable): the state before the window each row's first state must
// follow (-1: free). The cheapest path goes to `packed` (a zeroed stream) when states is null,
// else its first `commit` states to states (rows x commit).
__global__ void __launch_bounds__(kViterbiThreads)
    tcq_viterbi_kernel(const float* __restrict__ W, const int32_t* __restrict__ prev, int64_t steps, int L, int kb,
                       int V, float* __restrict__ cost_all, uint8_t* __restrict__ bp_all, int32_t* __restrict__ packed,
                       int32_t* __restrict__ states, int64_t commit) {
  const int64_t row = blockIdx.x;
  const int64_t S = int64_t(1) << L, J = S >> kb, H = int64_t(1) << kb;
  const float* w = W + row * steps * V;
  float* cost = cost_all + row * 2 * S;
  float* next = cost + S;
  uint8_t* bp = bp_all + row * steps * J;
  // With a previous state only its 2^kb successors may start the path; the others start at +inf.
  const int64_t p = prev == nullptr ? -1 : prev[row];
  const int64_t first_j = p < 0 ? -1 : p & (J - 1);
  for (int64_t s = threadIdx.x; s < S; s += blockDim.x)
    cost[s] = first_j < 0 || (s >> kb) == first_j ? step_dist(w, static_cast<uint32_t>(s), V) : INFINITY;
  __syncthreads();
  for (int64_t t = 1; t < steps; ++t) {
    const float* wt = w + t * V;
    // Each thread owns prefixes j: the min over the 2^kb predecessors, then the 2^kb successors.
    for (int64_t j = threadIdx.x; j < J; j += blockDim.x) {
      float best = cost[j];
      int arg = 0;
      for (int64_t h = 1; h < H; ++h) {
        const float c = cost[j + h * J];
        if (c < best) best = c, arg = static_cast<int>(h);
      }
      bp[t * J + j] = static_cast<uint8_t>(arg);
      for (int64_t u = 0; u < H; ++u) {
        const int64_t s = (j << kb) | u;
        next[s] = best + step_dist(wt, static_cast<uint32_t>(s), V);
      }
    }
    __syncthreads();
    float* tmp = cost;
    cost = next;
    next = tmp;
  }
  // Argmin over the final costs, then one thread walks back and writes the path.
  __shared__ float best_v[kViterbiThreads];
  __shared__ uint32_t best_s[kViterbiThreads];
  float bv = INFINITY;
  uint32_t bs = 0;
  for (int64_t s = threadIdx.x; s < S; s += blockDim.x)
    if (cost[s] < bv) bv = cost[s], bs = static_cast<uint32_t>(s);
  best_v[threadIdx.x] = bv;
  best_s[threadIdx.x] = bs;
  __syncthreads();
  if (threadIdx.x != 0) return;
  for (int i = 1; i < static_cast<int>(blockDim.x); ++i)
    if (best_v[i] < bv || (best_v[i] == bv && best_s[i] < bs)) bv = best_v[i], bs = best_s[i];
  uint32_t* out = reinterpret_cast<uint32_t*>(packed) + row * tcq::tcq_words(steps, L, kb);
  auto put = [&](int64_t bit, uint32_t value, int nbits) {
    for (int b = 0; b < nbits; ++b)
      if ((value >> (nbits - 1 - b)) & 1u) out[(bit + b) >> 5] |= 1u << (31 - ((bit + b) & 31));
  };
  uint32_t s = bs;
  for (int64_t t = steps - 1; t >= 1; --t) {
    if (states == nullptr)
      put(L + kb * (t - 1), s & ((1u << kb) - 1), kb);
    else if (t < commit)
      states[row * commit + t] = static_cast<int32_t>(s);
    const uint32_t j = s >> kb;
    s = j | (static_cast<uint32_t>(bp[t * J + j]) << (L - kb));
  }
  if (states == nullptr)
    put(0, s, L);
  else
    states[row * commit] = static_cast<int32_t>(s);
}

}  // namespace

bool hadamard_rows(const void* x, void* y, DType t, int64_t rows, int64_t n, int m, const int8_t* Hm,
                   const float* signs, float scale, cudaStream_t stream) {
  if (n > kHadamardMaxN) return false;
  if (rows == 0) return true;
  const size_t smem = sizeof(float) * n;
  const int threads = static_cast<int>(n >= 1024 ? 1024 : ((n + 31) / 32) * 32);
  // The attribute is always the largest row's size: a constant, so calls from several host threads
  // with different n cannot undo each other between the set and the launch.
  constexpr int kMaxSmem = static_cast<int>(sizeof(float) * kHadamardMaxN);
  switch (t) {
    case DType::F32:
      cudaFuncSetAttribute(hadamard_kernel<float>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
      hadamard_kernel<float><<<rows, threads, smem, stream>>>(static_cast<const float*>(x), static_cast<float*>(y), n,
                                                              m, Hm, signs, scale);
      break;
    case DType::BF16:
      cudaFuncSetAttribute(hadamard_kernel<__nv_bfloat16>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
      hadamard_kernel<__nv_bfloat16><<<rows, threads, smem, stream>>>(
          static_cast<const __nv_bfloat16*>(x), static_cast<__nv_bfloat16*>(y), n, m, Hm, signs, scale);
      break;
    case DType::F16:
      cudaFuncSetAttribute(hadamard_kernel<__half>, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem);
      hadamard_kernel<__half><<<rows, threads, smem, stream>>>(static_cast<const __half*>(x), static_cast<__half*>(y),
                                                               n, m, Hm, signs, scale);
      break;
  }
  return true;
}

void palette_gemv(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t units, int c, int d,
                  const float* codebook, const float* scales, float* y, cudaStream_t stream) {
  if (rows == 0 || T == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div<int64_t>(rows, kWarpsPerBlock));
  const int64_t in = units * d;
  for (int64_t t0 = 0; t0 < T; t0 += kMaxTokens) {  // the kernel holds kMaxTokens accumulators
    const int nt = static_cast<int>(std::min<int64_t>(T - t0, kMaxTokens));
    palette_gemv_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(x + t0 * in, nt, packed, rows, units, c, d,
                                                                     codebook, scales, y + t0 * rows);
  }
}

void tcq_decode(const int32_t* packed, int64_t rows, int64_t steps, int L, int kb, int V, const float* scales,
                float* W, cudaStream_t stream) {
  const int64_t total = rows * steps;
  if (total == 0) return;
  tcq_decode_kernel<<<static_cast<unsigned>(ceil_div<int64_t>(total, 256)), 256, 0, stream>>>(packed, rows, steps, L,
                                                                                             kb, V, scales, W);
}

void tcq_gemv(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t steps, int L, int kb, int V,
              const float* scales, float* y, cudaStream_t stream) {
  if (rows == 0 || T == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div<int64_t>(rows, kWarpsPerBlock));
  const int64_t in = steps * V;
  for (int64_t t0 = 0; t0 < T; t0 += kMaxTokens) {  // the kernel holds kMaxTokens accumulators
    const int nt = static_cast<int>(std::min<int64_t>(T - t0, kMaxTokens));
    tcq_gemv_kernel<<<blocks, kWarpsPerBlock * 32, 0, stream>>>(x + t0 * in, nt, packed, rows, steps, L, kb, V,
                                                                 scales, y + t0 * rows);
  }
}

void tcq_viterbi(const float* W, int64_t rows, int64_t steps, int L, int kb, int V, float* cost, uint8_t* bp,
                 int32_t* packed, cudaStream_t stream) {
  if (rows == 0 || steps == 0) return;
  tcq_viterbi_kernel<<<static_cast<unsigned>(rows), kViterbiThreads, 0, stream>>>(W, nullptr, steps, L, kb, V, cost,
                                                                                 bp, packed, nullptr, 0);
}

void tcq_viterbi_window(const float* W, const int32_t* prev, int64_t rows, int64_t steps, int L, int kb, int V,
                        int64_t commit, float* cost, uint8_t* bp, int32_t* states, cudaStream_t stream) {
  if (rows == 0 || steps == 0) return;
  tcq_viterbi_kernel<<<static_cast<unsigned>(rows), kViterbiThreads, 0, stream>>>(W, prev, steps, L, kb, V, cost, bp,
                                                                                 nullptr, states, commit);
}

}  // namespace weightkit::palette_cuda
