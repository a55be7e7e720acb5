// CUDA kernels of the Newton–Schulz family. Pure CUDA: raw pointers, sizes and a stream; no torch.
// Every buffer is contiguous and holds `batch` matrices back to back. Launchers only enqueue work
// on `stream` and return; the caller checks for launch errors (cudaGetLastError).
//
// Why each kernel exists. normalize_batched: the iteration starts from G / ||G||_F per matrix;
// in ATen that is a norm, a division and a dtype cast (three passes and two temporaries per
// group), here one reduction pass plus one pass that scales and stores straight into the compute
// dtype, for a whole stacked group at once. auon_batched: AuON's per-matrix Frobenius norm, RMS
// of cosh and final scale would be about six ATen passes with fp32 temporaries; three passes
// suffice, computed in fp32 whatever the storage dtype. sym_product: X X^T and A A (A symmetric)
// are the two products of every plain Newton–Schulz step, and both results are symmetric, which
// cuBLAS's half-precision GEMMs cannot exploit (there is no bf16/fp16 SYRK); computing only the
// upper-triangular tiles and mirroring them does about half the multiply work, makes the result
// exactly symmetric, and fuses the alpha / beta * D epilogue of the second product.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"

namespace weightkit::newton_schulz_cuda {

using DType = weightkit::DType;

// out[b] = in[b] / (||in[b]||_F * norm_scale + eps) for each of the `batch` matrices of
// `per_matrix` elements. Squares are summed in fp32 per thread and in fp64 across blocks; the
// scale is applied in fp32 and the result rounded to nearest in out_t. `in` may equal `out` when
// in_t == out_t. `workspace`: `batch` doubles of device memory, zeroed here (cudaMemsetAsync).
void normalize_batched(const void* in, DType in_t, void* out, DType out_t, int64_t batch, int64_t per_matrix,
                       double norm_scale, double eps, double* workspace, cudaStream_t stream);

// AuON per matrix, in fp32: X = G / (||G||_F + eps); r = sqrt(mean(cosh(X)^2)); out = X / (r + 1e-8),
// stored in t. `out` may equal `in`. `workspace`: 2 * batch doubles of device memory, zeroed here.
void auon_batched(const void* in, DType t, void* out, int64_t batch, int64_t per_matrix, double eps,
                  double* workspace, cudaStream_t stream);

// C[b] = alpha * X[b] X[b]^T + beta * D[b] on tensor cores (fp32 accumulation, one rounding to t),
// t in {BF16, F16} only (F32 is the caller's to route elsewhere; nothing is launched for it).
// X: (batch, m, k); C, D: (batch, m, m); all row-major contiguous. D == nullptr: no addend. D must
// not overlap C. Each element (i, j) takes D[b][i][j]; X X^T is computed once per pair {i, j}, so
// C is exactly symmetric whenever D is.
void sym_product(const void* X, void* C, const void* D, DType t, int64_t batch, int64_t m, int64_t k, float alpha,
                 float beta, cudaStream_t stream);

}  // namespace weightkit::newton_schulz_cuda
