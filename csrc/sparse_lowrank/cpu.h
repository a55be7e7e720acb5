// CPU kernels of the sparse + low-rank family: the sparse pieces of SLTrain's layer, the support
// generator and the layout changes they need. Dense products go to MKL through ATen.
//
// The sparse kernels take token-major activations (T x features, as the layer sees them) and work
// on tiles of 64 tokens: each tile is transposed into a thread-local feature-major buffer (64
// tokens contiguous per feature, in L2), so every nonzero touches one contiguous run of 64 tokens
// with full-width SIMD, and the result is transposed back into the token-major output. No
// full-size transposed copy is ever made.
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

// y (T x rows) += x (T x cols) S^T for token-major activations of element type E (float,
// c10::BFloat16 or c10::Half); sums in fp32.
template <typename E>
void spmm_add(const Csr& s, const E* x, int64_t T, E* y, CpuIsa isa);

// With gx: gx (T x cols) += g (T x rows) S. With gvals: gvals[k] (fp32) = sum_t g[t, row_k] *
// x[t, col_k], i.e. (g^T x) at the support. Either may be null. The token blocks are summed in a
// fixed order, so gvals does not depend on the thread count.
template <typename E>
void sparse_backward(const Csr& s, const E* g, const E* x, int64_t T, E* gx, float* gvals, CpuIsa isa);

// A seeded support, identical on every machine: per row `per_row` distinct sorted columns
// ("row_balanced"), or `nnz` distinct positions over the whole matrix ("uniform"), drawn by
// Floyd's algorithm from a counter-based SplitMix64 stream keyed by (seed, row).
struct Support {
  std::vector<int64_t> row_ptr;
  std::vector<int32_t> col_idx;
};
Support make_support(int64_t rows, int64_t cols, int64_t nnz, bool row_balanced, uint64_t seed);

}  // namespace weightkit::sparse_lowrank_cpu
