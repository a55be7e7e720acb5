// CUDA kernels of the trit-plane family (PTQTP). Pure CUDA: raw pointers, sizes and a stream; no
// torch. The packed format is layout.h's (version 1); scales are float16 bit patterns
// (out, n_groups, 2). Launchers only enqueue work on `stream`; the caller checks launch errors.
//
// quantize: one warp per (row, group). Each round every lane classifies its share of the group's
// weights against the (at most 9) level midpoints and the warp reduces the 2x2 normal equations;
// the 2x2 ridge solve and the stopping test run in fp64 on every lane (they are scalars).
// Same algorithm, candidate order and stopping rule as the CPU (quantizer.h); statistics are
// summed in fp64 in a different order, so a group whose weight sits exactly on a midpoint may
// take a different branch.
//
// matmul_direct (batch <= 16): one block of 256 threads per block of 8 rows. Each thread streams
// 128-bit loads (4 rows of one plane word), decodes the 4-bit pair codes in registers and adds or
// subtracts activations (no multiplication by weights; two scalings per group), then the block
// reduces with warp shuffles and shared memory. Larger batches: `dequantize` into x's dtype and a
// cuBLAS product (the caller's ATen matmul).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "trit_plane/layout.h"

#include "common/dtype.h"

namespace weightkit::trit_plane_cuda {

using trit_plane::Layout;

using DType = weightkit::DType;

// W: (out, in) fp32 contiguous, finite. packed is zeroed here (cudaMemsetAsync) and filled;
// scales written. *overflow (device int, zeroed here) becomes 1 when a scale overflows float16.
void quantize(const float* W, const Layout& l, int64_t max_iters, double tol, int32_t* packed, uint16_t* scales,
              int* overflow, cudaStream_t stream);

// y (batch, out) = x (batch, in) W^T, x and y of dtype t, fp32 accumulation; batch <= 16.
void matmul_direct(const void* x, DType t, int64_t batch, const int32_t* packed, const uint16_t* scales,
                   const Layout& l, void* y, cudaStream_t stream);

// xq (batch, in) fp32 = x rounded to int8 per row and group and scaled back (act_quant.h): the
// activations trit_plane_matmul_a8 multiplies.
void round_activations(const float* x, int64_t batch, const Layout& l, float* xq, cudaStream_t stream);

// W (out, in) of dtype t = alpha1 T1 + alpha2 T2 (computed in fp32, rounded once).
void dequantize(const int32_t* packed, const uint16_t* scales, const Layout& l, void* W, DType t,
                cudaStream_t stream);

constexpr int64_t kDirectMaxBatch = 16;

}  // namespace weightkit::trit_plane_cuda
