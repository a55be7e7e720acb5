#include "trit_plane/kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "trit_plane/act_quant.h"

namespace weightkit::trit_plane_cuda {
namespace {

using trit_plane::kCandidates;
using trit_plane::kCodesPerWord;
using trit_plane::kColsPerCode;
using trit_plane::kCodeBits;
using trit_plane::kPlanes;
using trit_plane::kRowsPerBlock;
using weightkit::cuda::ceil_div;
using weightkit::cuda::from_float;
using weightkit::cuda::kFullMask;
using weightkit::cuda::kWarpSize;
using weightkit::cuda::to_float;
using weightkit::cuda::warp_sum;

// layout.h's constants, as device-visible copies.
__constant__ int c_cand_t1[kCandidates] = {0, 1, -1, 0, 0, 1, -1, 1, -1};
__constant__ int c_cand_t2[kCandidates] = {0, 0, 0, 1, -1, 1, -1, -1, 1};
__constant__ double c_lambdas[trit_plane::kLambdaSteps] = {1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};

struct DevLevels {
  int count;
  int cand[kCandidates];
  double mid[kCandidates - 1];
};

// As make_levels in quantizer.h: distinct values ascending, ties keep the earliest candidate.
__device__ DevLevels make_levels(double a1, double a2) {
  double v[kCandidates];
  int idx[kCandidates];
  for (int c = 0; c < kCandidates; ++c) {
    const double val = a1 * c_cand_t1[c] + a2 * c_cand_t2[c];
    int i = c;
    while (i > 0 && v[i - 1] > val) {
      v[i] = v[i - 1];
      idx[i] = idx[i - 1];
      --i;
    }
    v[i] = val;
    idx[i] = c;
  }
  DevLevels L;
  L.count = 0;
  double last = 0.0;
  for (int i = 0; i < kCandidates; ++i) {
    if (L.count > 0 && v[i] == last) continue;
    if (L.count > 0) L.mid[L.count - 1] = 0.5 * (last + v[i]);
    L.cand[L.count++] = idx[i];
    last = v[i];
  }
  return L;
}

__device__ int level_of(const DevLevels& L, double w) {
  int k = 0;
  while (k + 1 < L.count && w > L.mid[k]) ++k;
  return L.cand[k];
}

__device__ void ridge_solve(double s11, double s12, double s22, double b1, double b2, double& a1, double& a2) {
  double p = s11, q = s22;
  for (int e = 0; e < trit_plane::kLambdaSteps; ++e) {
    p = s11 + c_lambdas[e];
    q = s22 + c_lambdas[e];
    const double half_tr = 0.5 * (p + q);
    const double disc = sqrt(0.25 * (p - q) * (p - q) + s12 * s12);
    const double lmax = half_tr + disc, lmin = half_tr - disc;
    if (lmin > 0.0 && lmax <= trit_plane::kCondMax * lmin) break;
  }
  const double det = p * q - s12 * s12;
  a1 = (q * b1 - s12 * b2) / det;
  a2 = (p * b2 - s12 * b1) / det;
}

__device__ __forceinline__ int64_t word_index(const Layout& l, int64_t r, int64_t w, int k) {
  return ((r / kRowsPerBlock * l.words_per_row + w) * kPlanes + k) * kRowsPerBlock + r % kRowsPerBlock;
}

constexpr int kQuantWarps = 4;

__global__ void quantize_kernel(const float* __restrict__ W, Layout l, int64_t max_iters, double tol,
                                int32_t* __restrict__ packed, __half* __restrict__ scales, int* __restrict__ overflow) {
  const int64_t wid = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (wid >= l.out * l.n_groups) return;  // whole warps leave together
  const int64_t r = wid / l.n_groups, g = wid % l.n_groups;
  const int64_t len = g + 1 == l.n_groups ? l.last_len : l.group;
  const float* w = W + r * l.in + g * l.group;

  double nnz = 0.0, sum_abs = 0.0;
  for (int64_t i = lane; i < len; i += kWarpSize) {
    const float v = w[i];
    if (v != 0.f) {
      nnz += 1.0;
      sum_abs += fabs(static_cast<double>(v));
    }
  }
  nnz = warp_sum(nnz);
  sum_abs = warp_sum(sum_abs);
  double s11 = nnz, s12 = nnz, s22 = nnz, b1 = sum_abs, b2 = sum_abs;
  double a1 = 0.0, a2 = 0.0, p1 = 0.0, p2 = 0.0;
  for (int64_t it = 0; it < max_iters; ++it) {
    ridge_solve(s11, s12, s22, b1, b2, a1, a2);
    const DevLevels L = make_levels(a1, a2);
    double t11 = 0.0, t12 = 0.0, t22 = 0.0, u1 = 0.0, u2 = 0.0;
    for (int64_t i = lane; i < len; i += kWarpSize) {
      const double v = static_cast<double>(w[i]);
      const int c = level_of(L, v);
      const int x1 = c_cand_t1[c], x2 = c_cand_t2[c];
      t11 += x1 * x1;
      t12 += x1 * x2;
      t22 += x2 * x2;
      u1 += x1 * v;
      u2 += x2 * v;
    }
    s11 = warp_sum(t11);
    s12 = warp_sum(t12);
    s22 = warp_sum(t22);
    b1 = warp_sum(u1);
    b2 = warp_sum(u2);
    if (it > 0 && fmax(fabs(a1 - p1), fabs(a2 - p2)) <= tol * fmax(fabs(a1), fabs(a2))) break;
    p1 = a1;
    p2 = a2;
  }
  ridge_solve(s11, s12, s22, b1, b2, a1, a2);
  const __half h1 = __float2half_rn(static_cast<float>(a1)), h2 = __float2half_rn(static_cast<float>(a2));
  const DevLevels L = make_levels(static_cast<double>(__half2float(h1)), static_cast<double>(__half2float(h2)));
  for (int64_t i = lane; i < len; i += kWarpSize) {
    const int c = level_of(L, static_cast<double>(w[i]));
    const int64_t t = g * l.pairs_full + i / kColsPerCode;
    const int64_t word = t / kCodesPerWord;
    const int bit = kCodeBits * static_cast<int>(t % kCodesPerWord) + static_cast<int>(i % kColsPerCode);
    const int x1 = c_cand_t1[c], x2 = c_cand_t2[c];
    if (x1) atomicOr(reinterpret_cast<unsigned*>(packed + word_index(l, r, word, 0)), 1u << (bit + (x1 < 0 ? 2 : 0)));
    if (x2) atomicOr(reinterpret_cast<unsigned*>(packed + word_index(l, r, word, 1)), 1u << (bit + (x2 < 0 ? 2 : 0)));
  }
  if (lane == 0) {
    scales[(r * l.n_groups + g) * 2] = h1;
    scales[(r * l.n_groups + g) * 2 + 1] = h2;
    if (!isfinite(__half2float(h1)) || !isfinite(__half2float(h2))) atomicExch(overflow, 1);
  }
}

// ---------------------------------------------------------------- direct GEMV / small GEMM

constexpr int kGemvThreads = 256;
constexpr int kSlices = kGemvThreads / 2;  // threads per half block (4 rows each)
constexpr int kMaxNB = 8;

__device__ __forceinline__ unsigned lane_word(const int4& v, int r) {
  return static_cast<unsigned>(r == 0 ? v.x : r == 1 ? v.y : r == 2 ? v.z : v.w);
}

// Block = 8 rows; thread (h = tid & 1, slice = tid >> 1) handles rows 4h..4h+3 of words slice,
// slice + 128, ...; a 16-byte load brings one plane word of its 4 rows.
template <class T, int NB>
__global__ void __launch_bounds__(kGemvThreads) gemv_kernel(const T* __restrict__ x, int64_t batch,
                                                            const int32_t* __restrict__ packed,
                                                            const __half* __restrict__ scales, Layout l,
                                                            T* __restrict__ y) {
  const int64_t rb = blockIdx.x;
  const int tid = threadIdx.x, h = tid & 1, slice = tid >> 1;
  float acc[4][NB];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int b = 0; b < NB; ++b) acc[r][b] = 0.f;
  const int64_t row0 = rb * kRowsPerBlock + 4 * h;

  for (int64_t w = slice; w < l.words_per_row; w += kSlices) {
    int4 m[kPlanes];
#pragma unroll
    for (int k = 0; k < kPlanes; ++k)
      m[k] = __ldg(reinterpret_cast<const int4*>(packed + ((rb * l.words_per_row + w) * kPlanes + k) * kRowsPerBlock +
                                                 4 * h));
    int64_t t = w * kCodesPerWord;
    int64_t g = t / l.pairs_full;
    int64_t gend = (g + 1) * l.pairs_full;
    float part[4][2][NB];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int b = 0; b < NB; ++b) part[r][0][b] = part[r][1][b] = 0.f;

    auto flush = [&](int64_t gg) {
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int64_t row = row0 + r;
        if (row >= l.out) continue;
        const float s1 = __half2float(scales[(row * l.n_groups + gg) * 2]);
        const float s2 = __half2float(scales[(row * l.n_groups + gg) * 2 + 1]);
#pragma unroll
        for (int b = 0; b < NB; ++b) {
          acc[r][b] += s1 * part[r][0][b] + s2 * part[r][1][b];
          part[r][0][b] = part[r][1][b] = 0.f;
        }
      }
    };

    for (int i = 0; i < kCodesPerWord; ++i, ++t) {
      if (t >= l.pairs_per_row) break;
      if (t == gend) {
        flush(g);
        ++g;
        gend += l.pairs_full;
      }
      const int64_t q = t - g * l.pairs_full;
      const int64_t glen = g + 1 == l.n_groups ? l.last_len : l.group;
      const int64_t col = g * l.group + kColsPerCode * q;
      const bool has1 = kColsPerCode * q + 1 < glen;
      float x0[NB], x1[NB];
#pragma unroll
      for (int b = 0; b < NB; ++b) {
        x0[b] = b < batch ? to_float(x[b * l.in + col]) : 0.f;
        x1[b] = b < batch && has1 ? to_float(x[b * l.in + col + 1]) : 0.f;
      }
      const int sh = kCodeBits * i;
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int p = 0; p < kPlanes; ++p) {
          const unsigned code = (lane_word(m[p], r) >> sh) & 15u;
          const unsigned pos = code & 3u, neg = code >> 2;
#pragma unroll
          for (int b = 0; b < NB; ++b) {
            float s = part[r][p][b];
            s = (pos & 1u) ? s + x0[b] : s;
            s = (pos & 2u) ? s + x1[b] : s;
            s = (neg & 1u) ? s - x0[b] : s;
            s = (neg & 2u) ? s - x1[b] : s;
            part[r][p][b] = s;
          }
        }
    }
    flush(g);
  }

  // Sum over the slices: lanes of equal parity within the warp, then across warps.
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int b = 0; b < NB; ++b)
#pragma unroll
      for (int off = 2; off < kWarpSize; off *= 2) acc[r][b] += __shfl_xor_sync(kFullMask, acc[r][b], off);
  __shared__ float red[kGemvThreads / kWarpSize][kRowsPerBlock][kMaxNB];
  const int warp = tid / kWarpSize, lane = tid % kWarpSize;
  if (lane < 2) {
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int b = 0; b < NB; ++b) red[warp][4 * lane + r][b] = acc[r][b];
  }
  __syncthreads();
  if (tid < kRowsPerBlock * NB) {
    const int j = tid % kRowsPerBlock, b = tid / kRowsPerBlock;
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kGemvThreads / kWarpSize; ++k) s += red[k][j][b];
    const int64_t row = rb * kRowsPerBlock + j;
    if (row < l.out && b < batch) y[b * l.out + row] = from_float<T>(s);
  }
}

// One thread per (row, word): 16 columns.
template <class T>
__global__ void dequantize_kernel(const int32_t* __restrict__ packed, const __half* __restrict__ scales, Layout l,
                                  T* __restrict__ W) {
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= l.out * l.words_per_row) return;
  const int64_t r = id / l.words_per_row, w = id % l.words_per_row;
  unsigned m[kPlanes];
  for (int k = 0; k < kPlanes; ++k) m[k] = static_cast<unsigned>(packed[word_index(l, r, w, k)]);
  for (int i = 0; i < kCodesPerWord; ++i) {
    const int64_t t = w * kCodesPerWord + i;
    if (t >= l.pairs_per_row) break;
    const int64_t g = t / l.pairs_full, q = t - g * l.pairs_full;
    const int64_t glen = g + 1 == l.n_groups ? l.last_len : l.group;
    const float s1 = __half2float(scales[(r * l.n_groups + g) * 2]);
    const float s2 = __half2float(scales[(r * l.n_groups + g) * 2 + 1]);
    for (int b = 0; b < kColsPerCode; ++b) {
      if (kColsPerCode * q + b >= glen) break;
      const int sh = kCodeBits * i + b;
      float v = 0.f;
      if ((m[0] >> sh) & 1u) v += s1;
      if ((m[0] >> (sh + 2)) & 1u) v -= s1;
      if ((m[1] >> sh) & 1u) v += s2;
      if ((m[1] >> (sh + 2)) & 1u) v -= s2;
      W[r * l.in + g * l.group + kColsPerCode * q + b] = from_float<T>(v);
    }
  }
}

// One warp per (batch row, group): the group's max |x| (NaN-sticky), then x_hat = s * q.
constexpr int kRoundWarps = 8;

__global__ void __launch_bounds__(kRoundWarps * kWarpSize)
    round_activations_kernel(const float* __restrict__ x, int64_t batch, Layout l, float* __restrict__ xq) {
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kRoundWarps + threadIdx.x / kWarpSize;
  if (unit >= batch * l.n_groups) return;  // the whole warp leaves together
  const int lane = threadIdx.x % kWarpSize;
  const int64_t b = unit / l.n_groups, g = unit % l.n_groups;
  const int64_t len = g + 1 == l.n_groups ? l.last_len : l.group;
  const float* xg = x + b * l.in + g * l.group;
  float amax = 0.f;
  for (int64_t j = lane; j < len; j += kWarpSize) amax = trit_plane::act_amax(amax, xg[j]);
  for (int off = kWarpSize / 2; off > 0; off /= 2) amax = trit_plane::act_amax(amax, __shfl_xor_sync(kFullMask, amax, off));
  const trit_plane::ActScale sc = trit_plane::act_scale(amax);
  float* out = xq + b * l.in + g * l.group;
  for (int64_t j = lane; j < len; j += kWarpSize) out[j] = sc.s * static_cast<float>(trit_plane::act_code(xg[j], sc.inv));
}

template <class F>
void dispatch(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(static_cast<float*>(nullptr)); break;
    case DType::BF16: f(static_cast<__nv_bfloat16*>(nullptr)); break;
    case DType::F16: f(static_cast<__half*>(nullptr)); break;
  }
}

template <class T, int NB>
void launch_gemv(const T* x, int64_t batch, const int32_t* packed, const __half* scales, const Layout& l, T* y,
                 cudaStream_t stream) {
  gemv_kernel<T, NB><<<static_cast<unsigned>(l.row_blocks), kGemvThreads, 0, stream>>>(x, batch, packed, scales, l, y);
}

}  // namespace

void quantize(const float* W, const Layout& l, int64_t max_iters, double tol, int32_t* packed, uint16_t* scales,
              int* overflow, cudaStream_t stream) {
  cudaMemsetAsync(packed, 0, static_cast<size_t>(l.packed_numel()) * sizeof(int32_t), stream);
  cudaMemsetAsync(overflow, 0, sizeof(int), stream);
  const int64_t warps = l.out * l.n_groups;
  if (warps == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div<int64_t>(warps, kQuantWarps));
  quantize_kernel<<<blocks, kQuantWarps * kWarpSize, 0, stream>>>(W, l, max_iters, tol, packed,
                                                                 reinterpret_cast<__half*>(scales), overflow);
}

void matmul_direct(const void* x, DType t, int64_t batch, const int32_t* packed, const uint16_t* scales,
                   const Layout& l, void* y, cudaStream_t stream) {
  if (l.row_blocks == 0 || batch == 0) return;
  const __half* sc = reinterpret_cast<const __half*>(scales);
  dispatch(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    const T* xs = static_cast<const T*>(x);
    T* ys = static_cast<T*>(y);
    for (int64_t b0 = 0; b0 < batch; b0 += kMaxNB) {
      const int64_t nb = std::min<int64_t>(kMaxNB, batch - b0);
      const T* xb = xs + b0 * l.in;
      T* yb = ys + b0 * l.out;
      if (nb == 1) {
        launch_gemv<T, 1>(xb, nb, packed, sc, l, yb, stream);
      } else if (nb == 2) {
        launch_gemv<T, 2>(xb, nb, packed, sc, l, yb, stream);
      } else if (nb <= 4) {
        launch_gemv<T, 4>(xb, nb, packed, sc, l, yb, stream);
      } else {
        launch_gemv<T, 8>(xb, nb, packed, sc, l, yb, stream);
      }
    }
  });
}

void round_activations(const float* x, int64_t batch, const Layout& l, float* xq, cudaStream_t stream) {
  const int64_t warps = batch * l.n_groups;
  if (warps == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div<int64_t>(warps, kRoundWarps));
  round_activations_kernel<<<blocks, kRoundWarps * kWarpSize, 0, stream>>>(x, batch, l, xq);
}

void dequantize(const int32_t* packed, const uint16_t* scales, const Layout& l, void* W, DType t,
                cudaStream_t stream) {
  const int64_t threads = l.out * l.words_per_row;
  if (threads == 0) return;
  const unsigned blocks = static_cast<unsigned>(ceil_div<int64_t>(threads, 256));
  dispatch(t, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    dequantize_kernel<T><<<blocks, 256, 0, stream>>>(packed, reinterpret_cast<const __half*>(scales), l,
                                                     static_cast<T*>(W));
  });
}

}  // namespace weightkit::trit_plane_cuda
