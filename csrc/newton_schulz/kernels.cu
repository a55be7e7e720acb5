#include "newton_schulz/kernels.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_utils.cuh"

namespace weightkit::newton_schulz_cuda {
namespace {

using weightkit::cuda::block_sum;
using weightkit::cuda::ceil_div;
using weightkit::cuda::from_float;
using weightkit::cuda::to_float;

constexpr int kThreads = 256;
// gridDim.y limit; kernels loop over the batch when it is larger.
constexpr int64_t kMaxGridY = 65535;

template <class T>
struct Tag {
  using type = T;
};

template <class F>
void dispatch(DType t, F&& f) {
  switch (t) {
    case DType::F32: f(Tag<float>{}); break;
    case DType::BF16: f(Tag<__nv_bfloat16>{}); break;
    case DType::F16: f(Tag<__half>{}); break;
  }
}

// Reductions: enough blocks per matrix that each thread sums ~16 elements, at most 1024, so a
// large matrix fills the GPU and a small one does not launch idle blocks.
dim3 reduction_grid(int64_t batch, int64_t per_matrix) {
  const int64_t x = std::clamp<int64_t>(ceil_div<int64_t>(per_matrix, kThreads * 16), 1, 1024);
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(std::min(batch, kMaxGridY)));
}

dim3 elementwise_grid(int64_t batch, int64_t per_matrix) {
  const int64_t x = std::clamp<int64_t>(ceil_div<int64_t>(per_matrix, kThreads * 4), 1, 4096);
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(std::min(batch, kMaxGridY)));
}

// sums[b] += sum of in[b][i]^2, in fp64: an fp32 square overflows above |x| ~ 1.8e19 and
// underflows below ~1e-19, which would zero the output or blow it up (the kernel is memory-bound,
// so fp64 costs nothing).
template <class T>
__global__ void sum_squares_kernel(const T* __restrict__ in, int64_t batch, int64_t per, double* __restrict__ sums) {
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const T* x = in + b * per;
    double acc = 0.0;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const double v = to_float(x[i]);
      acc = fma(v, v, acc);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) atomicAdd(sums + b, acc);
  }
}

// sums[b] += sum of cosh(s_b * in[b][i])^2 with s_b = 1 / (sqrt(sumsq[b]) + eps).
template <class T>
__global__ void sum_cosh_squares_kernel(const T* __restrict__ in, int64_t batch, int64_t per, double eps,
                                        const double* __restrict__ sumsq, double* __restrict__ sums) {
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const T* x = in + b * per;
    const float s = static_cast<float>(1.0 / (sqrt(sumsq[b]) + eps));
    float acc = 0.f;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const float c = coshf(s * to_float(x[i]));
      acc = fmaf(c, c, acc);
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) atomicAdd(sums + b, static_cast<double>(acc));
  }
}

// No __restrict__ on in/out: they may be the same buffer (each element is read, then written, by
// one thread).
template <class Tin, class Tout>
__global__ void normalize_scale_kernel(const Tin* in, Tout* out, int64_t batch, int64_t per, double norm_scale,
                                       double eps, const double* __restrict__ sumsq) {
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const float s = static_cast<float>(1.0 / (sqrt(sumsq[b]) * norm_scale + eps));
    const Tin* x = in + b * per;
    Tout* y = out + b * per;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
      y[i] = from_float<Tout>(s * to_float(x[i]));
  }
}

// ws[b]: sum of squares; ws[batch + b]: sum of cosh^2. Same arithmetic as the CPU path.
template <class T>
__global__ void auon_scale_kernel(const T* in, T* out, int64_t batch, int64_t per, double eps,
                                  const double* __restrict__ ws) {
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const double s = 1.0 / (sqrt(ws[b]) + eps);
    const double rms_cosh = sqrt(ws[batch + b] / static_cast<double>(per));
    const float f = static_cast<float>(s / (rms_cosh + 1e-8));
    const T* x = in + b * per;
    T* y = out + b * per;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x)
      y[i] = from_float<T>(f * to_float(x[i]));
  }
}

// ---------------------------------------------------------------- symmetric product

// One block computes a kTile x kTile tile of X X^T: 4 warps in a 2 x 2 layout, each owning 32 x 32
// (2 x 2 WMMA fragments). K advances in chunks of kKChunk staged through shared memory.
constexpr int kTile = 64;
constexpr int kKChunk = 32;
constexpr int kSymThreads = 128;
// Row pitches in shared memory: 40 halves (80 B) keeps every fragment pointer 32-byte aligned
// (as WMMA requires) and shifts consecutive rows across banks; 68 floats likewise for the tile.
constexpr int kLdIn = kKChunk + 8;
constexpr int kLdAcc = kTile + 4;

// Rows [row0, row0 + kTile) x columns [k0, k0 + kKChunk) of x (m x k) into dst, zeros outside x.
// kVec: 16-byte loads, valid when k % 8 == 0 and x is 16-byte aligned, so that an 8-element
// chunk is either wholly inside x or wholly outside.
template <class T, bool kVec>
__device__ __forceinline__ void load_rows(const T* __restrict__ x, int64_t m, int64_t k, int64_t row0, int64_t k0,
                                          T* __restrict__ dst) {
  if constexpr (kVec) {
    constexpr int kPerRow = kKChunk / 8;
    for (int v = threadIdx.x; v < kTile * kPerRow; v += blockDim.x) {
      const int r = v / kPerRow, c = (v % kPerRow) * 8;
      const int64_t gr = row0 + r, gc = k0 + c;
      uint4 val = make_uint4(0u, 0u, 0u, 0u);
      if (gr < m && gc < k) val = *reinterpret_cast<const uint4*>(x + gr * k + gc);
      *reinterpret_cast<uint4*>(dst + r * kLdIn + c) = val;
    }
  } else {
    for (int e = threadIdx.x; e < kTile * kKChunk; e += blockDim.x) {
      const int r = e / kKChunk, c = e % kKChunk;
      const int64_t gr = row0 + r, gc = k0 + c;
      dst[r * kLdIn + c] = (gr < m && gc < k) ? x[gr * k + gc] : from_float<T>(0.f);
    }
  }
}

// blockIdx.x enumerates the upper-triangular tile pairs (ti <= tj), blockIdx.y (strided) the batch.
// Tile (ti, tj) writes C[i][j] for i <= j in its rows/columns, and C[j][i] for i < j from the
// same accumulator, so every element of C is written exactly once.
template <class T, bool kVec>
__global__ void __launch_bounds__(kSymThreads)
    sym_product_kernel(const T* __restrict__ X, T* __restrict__ C, const T* __restrict__ D, int64_t batch, int64_t m,
                       int64_t k, float alpha, float beta) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // bf16 WMMA needs sm_80; the launcher is only built for sm_80+ by default.
  __trap();
#else
  using namespace nvcuda;
  __shared__ __align__(128) T xs[2][kTile * kLdIn];
  __shared__ __align__(128) float acc_s[kTile * kLdAcc];

  int64_t ti, tj;
  weightkit::cuda::upper_pair_from_linear(blockIdx.x, ti, tj);
  const int64_t row0 = ti * kTile, col0 = tj * kTile;
  const int warp = threadIdx.x / 32;
  const int wr = warp / 2, wc = warp % 2;
  // A diagonal tile multiplies its row block by itself: stage it once.
  const T* bs = ti == tj ? xs[0] : xs[1];

  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const T* x = X + b * m * k;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

    for (int64_t k0 = 0; k0 < k; k0 += kKChunk) {
      load_rows<T, kVec>(x, m, k, row0, k0, xs[0]);
      if (ti != tj) load_rows<T, kVec>(x, m, k, col0, k0, xs[1]);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kKChunk; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[2];
        // Column block rows stored row-major (n, k) are X^T's (k, n) block in column-major.
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], xs[0] + (wr * 32 + i * 16) * kLdIn + kk, kLdIn);
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], bs + (wc * 32 + j * 16) * kLdIn + kk, kLdIn);
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(acc_s + (wr * 32 + i * 16) * kLdAcc + wc * 32 + j * 16, acc[i][j], kLdAcc,
                                wmma::mem_row_major);
    __syncthreads();

    T* c = C + b * m * m;
    const T* d = D == nullptr ? nullptr : D + b * m * m;
    // The tile itself: (row0 + r, col0 + q), on or above the diagonal.
    for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
      const int r = e / kTile, q = e % kTile;
      const int64_t gi = row0 + r, gj = col0 + q;
      if (gi < m && gj < m && gi <= gj) {
        float v = alpha * acc_s[r * kLdAcc + q];
        if (d != nullptr) v += beta * to_float(d[gi * m + gj]);
        c[gi * m + gj] = from_float<T>(v);
      }
    }
    // Its mirror: (col0 + r, row0 + q) = tile element (q, r), strictly below the diagonal; rows of
    // C are written contiguously, the transposition happens in shared memory.
    for (int e = threadIdx.x; e < kTile * kTile; e += blockDim.x) {
      const int r = e / kTile, q = e % kTile;
      const int64_t gi = col0 + r, gj = row0 + q;
      if (gi < m && gj < m && gj < gi) {
        float v = alpha * acc_s[q * kLdAcc + r];
        if (d != nullptr) v += beta * to_float(d[gi * m + gj]);
        c[gi * m + gj] = from_float<T>(v);
      }
    }
    // acc_s and xs are rewritten by the next batch iteration.
    __syncthreads();
  }
#endif
}

}  // namespace

void normalize_batched(const void* in, DType in_t, void* out, DType out_t, int64_t batch, int64_t per_matrix,
                       double norm_scale, double eps, double* workspace, cudaStream_t stream) {
  if (batch <= 0 || per_matrix <= 0) return;
  cudaMemsetAsync(workspace, 0, static_cast<size_t>(batch) * sizeof(double), stream);
  dispatch(in_t, [&](auto in_tag) {
    using Tin = typename decltype(in_tag)::type;
    const Tin* x = static_cast<const Tin*>(in);
    sum_squares_kernel<Tin><<<reduction_grid(batch, per_matrix), kThreads, 0, stream>>>(x, batch, per_matrix,
                                                                                         workspace);
    dispatch(out_t, [&](auto out_tag) {
      using Tout = typename decltype(out_tag)::type;
      normalize_scale_kernel<Tin, Tout><<<elementwise_grid(batch, per_matrix), kThreads, 0, stream>>>(
          x, static_cast<Tout*>(out), batch, per_matrix, norm_scale, eps, workspace);
    });
  });
}

void auon_batched(const void* in, DType t, void* out, int64_t batch, int64_t per_matrix, double eps,
                  double* workspace, cudaStream_t stream) {
  if (batch <= 0 || per_matrix <= 0) return;
  cudaMemsetAsync(workspace, 0, 2 * static_cast<size_t>(batch) * sizeof(double), stream);
  dispatch(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(in);
    const dim3 rgrid = reduction_grid(batch, per_matrix);
    sum_squares_kernel<T><<<rgrid, kThreads, 0, stream>>>(x, batch, per_matrix, workspace);
    sum_cosh_squares_kernel<T><<<rgrid, kThreads, 0, stream>>>(x, batch, per_matrix, eps, workspace,
                                                                workspace + batch);
    auon_scale_kernel<T><<<elementwise_grid(batch, per_matrix), kThreads, 0, stream>>>(
        x, static_cast<T*>(out), batch, per_matrix, eps, workspace);
  });
}

void sym_product(const void* X, void* C, const void* D, DType t, int64_t batch, int64_t m, int64_t k, float alpha,
                 float beta, cudaStream_t stream) {
  if (batch <= 0 || m <= 0 || t == DType::F32) return;
  // As in cuBLAS / at::baddbmm: beta == 0 ignores D, NaN and Inf included.
  if (beta == 0.f) D = nullptr;
  const int64_t tiles = ceil_div<int64_t>(m, kTile);
  const dim3 grid(static_cast<unsigned>(tiles * (tiles + 1) / 2), static_cast<unsigned>(std::min(batch, kMaxGridY)));
  const bool vec = k % 8 == 0 && reinterpret_cast<uintptr_t>(X) % 16 == 0;
  dispatch(t, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same_v<T, float>) {
      const T* x = static_cast<const T*>(X);
      const T* d = static_cast<const T*>(D);
      T* c = static_cast<T*>(C);
      if (vec)
        sym_product_kernel<T, true><<<grid, kSymThreads, 0, stream>>>(x, c, d, batch, m, k, alpha, beta);
      else
        sym_product_kernel<T, false><<<grid, kSymThreads, 0, stream>>>(x, c, d, batch, m, k, alpha, beta);
    }
  });
}

}  // namespace weightkit::newton_schulz_cuda
