// Device-independent part of the trit-plane glue: argument checks shared by the CPU and CUDA
// registrations (ops.cpp, ops_cuda.cpp), so both refuse the same inputs with the same words.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "trit_plane/layout.h"

namespace weightkit::trit_plane {

// W (out, in) float; group_size >= 1; max_iters >= 1; tol finite and >= 0. Finiteness of W's
// values is checked by the caller (it needs a device reduction).
Layout check_quantize_args(const char* op, const at::Tensor& W, int64_t group_size, int64_t max_iters, double tol);

// packed int32 (row_blocks, words_per_row, 2, 8) and scales float16 (out, n_groups, 2) that agree
// with each other, in_features and group_size, on one device. Returns the layout.
Layout check_packed(const char* op, const at::Tensor& packed, const at::Tensor& scales, int64_t in_features,
                    int64_t group_size);

// packed int32 of the shape layout.h gives for (out, in_features, group_size).
Layout check_packed_shape(const char* op, const at::Tensor& packed, int64_t out, int64_t in_features,
                          int64_t group_size);

// All arguments of trit_plane_matmul / trit_plane_matmul_a8: check_packed, then x (..., in_features)
// float on packed's device.
Layout check_matmul_args(const char* op, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                         int64_t in_features, int64_t group_size);

// trits int8 (2, out, in) with values in {-1, 0, +1} (the value check reads the tensor).
Layout check_trits(const char* op, const at::Tensor& trits, int64_t group_size);

// Rows of x seen as a matrix: the product of all but its last dimension (reshape({-1, 0}) is
// ambiguous when in_features is 0).
int64_t leading_numel(const at::Tensor& x);

// Output shape of trit_plane_matmul: x's shape with the last dim replaced by out.
std::vector<int64_t> matmul_out_shape(const at::Tensor& x, int64_t out);

// Largest batch (rows of x) handled by the direct packed kernel; larger batches dequantize tiles
// of W and use a dense product. WEIGHTKIT_TRIT_PLANE_DIRECT_MAX_BATCH overrides `fallback`.
int64_t direct_max_batch(int64_t fallback);

// The float16 scales (contiguous) as the bit patterns the kernels take.
const uint16_t* scale_bits(const at::Tensor& scales);

}  // namespace weightkit::trit_plane
