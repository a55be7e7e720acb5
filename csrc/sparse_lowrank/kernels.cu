#include "common/cuda_utils.cuh"
#include "sparse_lowrank/kernels.cuh"

#include <algorithm>

namespace weightkit::sparse_lowrank_cuda {
namespace {

using weightkit::cuda::ceil_div;
using weightkit::cuda::kWarpSize;
using weightkit::cuda::to_float;
using weightkit::cuda::warp_sum;

constexpr int kWarpsPerBlock = 4;
// Tokens each lane carries per pass: a warp covers 32 * kTokensPerLane consecutive tokens.
constexpr int kTokensPerLane = 4;
constexpr int64_t kWarpTokens = kWarpSize * kTokensPerLane;
// Tokens per grid row (blockIdx.y) of spmm / spmm_t: long rows split over blocks for balance.
constexpr int64_t kGridTokens = 1024;

template <class R, class C>
struct CsrT {
  const R* rp;
  const C* ci;
  const float* v;
  int64_t rows, cols;
};

// Calls f(CsrT<R, C>{...}, E{}) with the index and element types of the arguments.
template <class F>
void dispatch(const Csr& s, DType t, F&& f) {
  auto with_elem = [&](auto csr) {
    switch (t) {
      case DType::F32: f(csr, float{}); break;
      case DType::BF16: f(csr, __nv_bfloat16{}); break;
      case DType::F16: f(csr, __half{}); break;
    }
  };
  auto with_cols = [&](auto* rp) {
    using R = std::remove_const_t<std::remove_pointer_t<decltype(rp)>>;
    if (s.col_idx_32) {
      with_elem(CsrT<R, int32_t>{rp, static_cast<const int32_t*>(s.col_idx), s.values, s.rows, s.cols});
    } else {
      with_elem(CsrT<R, int16_t>{rp, static_cast<const int16_t*>(s.col_idx), s.values, s.rows, s.cols});
    }
  };
  if (s.row_ptr_64) {
    with_cols(static_cast<const int64_t*>(s.row_ptr));
  } else {
    with_cols(static_cast<const int32_t*>(s.row_ptr));
  }
}

template <class R, class C>
__global__ void validate_kernel(CsrT<R, C> s, int64_t nnz, long long* problem) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  auto report = [&](long long code) { atomicMin(problem, (code << 40) + i); };
  if (i == 0) {  // also for a support of 0 rows (row_ptr = [0])
    if (s.rp[0] != 0) report(1);
    if (int64_t(s.rp[s.rows]) != nnz) report(2);
  }
  if (i >= s.rows) return;
  const int64_t k0 = s.rp[i], k1 = s.rp[i + 1];
  if (k1 < k0) {
    report(3);
    return;
  }
  if (k0 < 0 || k1 > nnz) return;  // reported as code 1-3 by some row
  for (int64_t k = k0; k < k1; ++k) {
    const int64_t c = s.ci[k];
    if (c < 0 || c >= s.cols) {
      report(4);
      return;
    }
    if (k > k0 && c <= int64_t(s.ci[k - 1])) {
      report(5);
      return;
    }
  }
}

// One warp per row of S, lanes over tokens: YT[i, t] = sum_k v_k XT[c_k, t].
template <class R, class C, class E>
__global__ void spmm_kernel(CsrT<R, C> s, const E* __restrict__ XT, int64_t T, float* __restrict__ YT) {
  const int64_t i = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (i >= s.rows) return;
  const int64_t k0 = s.rp[i], k1 = s.rp[i + 1];
  for (int64_t chunk = blockIdx.y; chunk * kGridTokens < T; chunk += gridDim.y) {
    const int64_t t_end = min(T, (chunk + 1) * kGridTokens);
    for (int64_t base = chunk * kGridTokens; base < t_end; base += kWarpTokens) {
      float acc[kTokensPerLane] = {};
      for (int64_t k = k0; k < k1; ++k) {
        const float v = s.v[k];
        const E* x = XT + int64_t(s.ci[k]) * T;
#pragma unroll
        for (int u = 0; u < kTokensPerLane; ++u) {
          const int64_t t = base + u * kWarpSize + lane;
          if (t < t_end) acc[u] += v * to_float(x[t]);
        }
      }
#pragma unroll
      for (int u = 0; u < kTokensPerLane; ++u) {
        const int64_t t = base + u * kWarpSize + lane;
        if (t < t_end) YT[i * T + t] = acc[u];
      }
    }
  }
}

// One warp per row of S, lanes over tokens: ZT[c_k, t] += v_k GT[i, t].
template <class R, class C, class E>
__global__ void spmm_t_kernel(CsrT<R, C> s, const E* __restrict__ GT, int64_t T, float* __restrict__ ZT) {
  const int64_t i = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (i >= s.rows) return;
  const int64_t k0 = s.rp[i], k1 = s.rp[i + 1];
  for (int64_t chunk = blockIdx.y; chunk * kGridTokens < T; chunk += gridDim.y) {
    const int64_t t_end = min(T, (chunk + 1) * kGridTokens);
    for (int64_t base = chunk * kGridTokens; base < t_end; base += kWarpTokens) {
      float g[kTokensPerLane];
#pragma unroll
      for (int u = 0; u < kTokensPerLane; ++u) {
        const int64_t t = base + u * kWarpSize + lane;
        g[u] = t < t_end ? to_float(GT[i * T + t]) : 0.f;
      }
      for (int64_t k = k0; k < k1; ++k) {
        const float v = s.v[k];
        float* z = ZT + int64_t(s.ci[k]) * T;
#pragma unroll
        for (int u = 0; u < kTokensPerLane; ++u) {
          const int64_t t = base + u * kWarpSize + lane;
          if (t < t_end) atomicAdd(z + t, v * g[u]);
        }
      }
    }
  }
}

// One warp per nonzero: its row by binary search in row_ptr, then a warp-wide dot over tokens.
template <class R, class C, class E>
__global__ void sddmm_kernel(CsrT<R, C> s, const E* __restrict__ AT, const E* __restrict__ BT, int64_t T,
                             int64_t nnz, float* __restrict__ out) {
  const int64_t k = blockIdx.x * int64_t(kWarpsPerBlock) + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (k >= nnz) return;
  int64_t lo = 0, hi = s.rows - 1;  // the last row i with rp[i] <= k (rows may be empty)
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (int64_t(s.rp[mid]) <= k) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const E* a = AT + lo * T;
  const E* b = BT + int64_t(s.ci[k]) * T;
  float acc = 0.f;
  for (int64_t t = lane; t < T; t += kWarpSize) acc += to_float(a[t]) * to_float(b[t]);
  acc = warp_sum(acc);
  if (lane == 0) out[k] = acc;
}

// y: chunks of kGridTokens tokens, at most 65535 (the kernels loop over the rest).
dim3 row_grid(int64_t rows, int64_t T) {
  return dim3(static_cast<unsigned>(ceil_div<int64_t>(rows, kWarpsPerBlock)),
              static_cast<unsigned>(std::min<int64_t>(ceil_div<int64_t>(T, kGridTokens), 65535)));
}

}  // namespace

void validate_support(const Csr& s, int64_t nnz, long long* problem, cudaStream_t stream) {
  dispatch(s, DType::F32, [&](auto csr, auto) {
    const int threads = 256;  // at least one block: thread 0 checks row_ptr's ends
    const int64_t blocks = ceil_div<int64_t>(std::max<int64_t>(s.rows, 1), threads);
    validate_kernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(csr, nnz, problem);
  });
}

void spmm(const Csr& s, const void* XT, DType t, int64_t T, float* YT, cudaStream_t stream) {
  if (s.rows == 0 || T == 0) return;
  dispatch(s, t, [&](auto csr, auto elem) {
    using E = decltype(elem);
    spmm_kernel<<<row_grid(s.rows, T), kWarpsPerBlock * kWarpSize, 0, stream>>>(csr, static_cast<const E*>(XT), T, YT);
  });
}

void spmm_t(const Csr& s, const void* GT, DType t, int64_t T, float* ZT, cudaStream_t stream) {
  if (s.rows == 0 || T == 0) return;
  dispatch(s, t, [&](auto csr, auto elem) {
    using E = decltype(elem);
    spmm_t_kernel<<<row_grid(s.rows, T), kWarpsPerBlock * kWarpSize, 0, stream>>>(csr, static_cast<const E*>(GT), T,
                                                                                  ZT);
  });
}

void sddmm(const Csr& s, const void* AT, const void* BT, DType t, int64_t T, int64_t nnz, float* out,
           cudaStream_t stream) {
  if (nnz == 0) return;
  dispatch(s, t, [&](auto csr, auto elem) {
    using E = decltype(elem);
    sddmm_kernel<<<static_cast<unsigned>(ceil_div<int64_t>(nnz, kWarpsPerBlock)), kWarpsPerBlock * kWarpSize, 0,
                   stream>>>(csr, static_cast<const E*>(AT), static_cast<const E*>(BT), T, nnz, out);
  });
}

}  // namespace weightkit::sparse_lowrank_cuda
