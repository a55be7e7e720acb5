// CUDA kernels of the sparse + low-rank family. Pure CUDA: raw pointers, sizes and a stream.
//
// Like the CPU kernels they work in a feature-major layout (tokens contiguous: XT is (in, T)),
// which the glue produces with ATen transposes: a warp then reads the tokens of one nonzero's
// column as one coalesced run, where the token-major layout would scatter a warp's
// loads over 32 rows. Values are fp32; activations fp32/bf16/fp16; accumulation fp32.
// Launchers only enqueue work on `stream`; the caller checks for launch errors.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"

namespace weightkit::sparse_lowrank_cuda {

using DType = weightkit::DType;

// S (rows x cols) in CSR on the device: row_ptr int32 or int64, col_idx int16 or int32.
struct Csr {
  const void* row_ptr = nullptr;
  const void* col_idx = nullptr;
  bool row_ptr_64 = false;
  bool col_idx_32 = false;
  const float* values = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// Support checks on the device. Writes to *problem (device int64, set to INT64_MAX by the
// caller) the smallest over rows of code * 2^40 + row, taking each row's first violation (row_ptr
// checks before column checks, columns in order, as the CPU validator): code 1 row_ptr[0] != 0, 2 row_ptr[rows] != nnz,
// 3 row_ptr decreasing at row, 4 column out of range in row, 5 columns not strictly increasing.
void validate_support(const Csr& s, int64_t nnz, long long* problem, cudaStream_t stream);

// YT (rows x T, fp32) = S * XT (cols x T, dtype t).
void spmm(const Csr& s, const void* XT, DType t, int64_t T, float* YT, cudaStream_t stream);

// ZT (cols x T, fp32) += S^T * GT (rows x T, dtype t); the caller zeroes ZT. Rows sharing a
// column add with fp32 atomics (one thread per token, so contention is rare).
void spmm_t(const Csr& s, const void* GT, DType t, int64_t T, float* ZT, cudaStream_t stream);

// out[k] (fp32) = sum_t AT[row_k, t] * BT[col_k, t] for k < nnz, with AT (rows x T), BT (cols x T)
// of dtype t; one warp per nonzero finds its row by binary search in row_ptr.
void sddmm(const Csr& s, const void* AT, const void* BT, DType t, int64_t T, int64_t nnz, float* out,
           cudaStream_t stream);

}  // namespace weightkit::sparse_lowrank_cuda
