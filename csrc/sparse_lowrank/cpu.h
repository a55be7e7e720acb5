// CPU kernels of the sparse + low-rank family: the sparse pieces of SLTrain's layer, the support
// generator and the layout changes they need. Dense products go to MKL through ATen.
//
// The sparse kernels work in a feature-major layout (a token count T is the contiguous
// dimension), so every nonzero touches a contiguous run of tokens with full-width SIMD; the glue
// transposes activations into that layout with `transpose_to_f32` and back with
// `transpose_add_from_f32`.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/cpu_features.h"

namespace weightkit::sparse_lowrank_cpu {

// S (rows x cols) in CSR: row_ptr (rows + 1) int32 or int64, col_idx (nnz) int16 or int32,
// sorted and unique within each row; values fp32.
struct Csr {
  const void* row_ptr = nullptr;
  const void* col_idx = nullptr;
  bool row_ptr_64 = false;
  bool col_idx_32 = false;
  const float* values = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
};

// The first problem found in a CSR support (empty string: valid). Checks row_ptr[0] == 0,
// non-decreasing row_ptr, row_ptr[rows] == nnz, columns in [0, cols) and strictly increasing
// within each row.
std::string validate_support(const Csr& s, int64_t nnz);

// YT (rows x T) = S * XT (cols x T), or += with `accumulate`.
void spmm(const Csr& s, const float* XT, int64_t T, float* YT, bool accumulate, CpuIsa isa);

// ZT (cols x T) = S^T * GT (rows x T), or += with `accumulate`.
void spmm_t(const Csr& s, const float* GT, int64_t T, float* ZT, bool accumulate, CpuIsa isa);

// out[k] = sum_t AT[row_k, t] * BT[col_k, t] for every nonzero k: (A^T B) sampled at the support,
// with AT (rows x T) and BT (cols x T).
void sddmm(const Csr& s, const float* AT, const float* BT, int64_t T, float* out, CpuIsa isa);

// dst (cols x rows, fp32) = src^T for src (rows x cols) row-major of element type E
// (float, c10::BFloat16 or c10::Half).
template <typename E>
void transpose_to_f32(const E* src, int64_t rows, int64_t cols, float* dst);

// dst (cols x rows, element type E) += src^T for src (rows x cols, fp32); sums in fp32.
template <typename E>
void transpose_add_from_f32(const float* src, int64_t rows, int64_t cols, E* dst);

// A seeded support, identical on every machine: per row `per_row` distinct sorted columns
// ("row_balanced"), or `nnz` distinct positions over the whole matrix ("uniform"), drawn by
// Floyd's algorithm from a counter-based SplitMix64 stream keyed by (seed, row).
struct Support {
  std::vector<int64_t> row_ptr;
  std::vector<int32_t> col_idx;
};
Support make_support(int64_t rows, int64_t cols, int64_t nnz, bool row_balanced, uint64_t seed);

}  // namespace weightkit::sparse_lowrank_cpu
