// CPU kernels of the trit-plane family: the PTQTP quantizer, packing, dequantization and the
// packed matrix product. Buffers are contiguous; the quantizer writes scales as float16 bit
// patterns (uint16), and the kernels that read them take them converted to fp32, in the same
// (out, n_groups, 2) layout (one vectorized conversion instead of one per use).
#pragma once

#include <cstdint>

#include "common/cpu_features.h"
#include "trit_plane/layout.h"

namespace weightkit::trit_plane_cpu {

using trit_plane::Layout;

// Software prefetch distance of the GEMV kernels along the planes. 4096 x 4096, batch 1, weights
// beyond the cache, 2-core EPYC, interleaved A/B: int8 activations 0.93-1.02 ms without,
// 0.74-0.88 ms with 2 KiB; fp32 activations 1.23-1.58 ms without, 1.10-1.35 ms with.
constexpr int64_t kPrefetchBytes = 2048;

// PTQTP on W (out x in, fp32): writes `packed` (all of it, padding zeroed) and `scales`.
// Returns false when a scale does not fit in float16 (|W| too large); outputs are then partial.
bool quantize(const float* W, const Layout& l, int64_t max_iters, double tol, int32_t* packed, uint16_t* scales);

// Trits (2, out, in) int8 in {-1, 0, +1} (checked by the caller) -> packed.
void pack(const int8_t* trits, const Layout& l, int32_t* packed);

// packed -> trits (2, out, in) int8.
void unpack_trits(const int32_t* packed, const Layout& l, int8_t* trits);

// The scales of row block rb in fp32: sc[(g * 2 + k) * 8 + j] = alpha_{k+1} of row 8 rb + j (0 past
// out); n_groups * 16 floats.
void block_scales(const uint16_t* scales, const Layout& l, int64_t rb, float* sc, CpuIsa isa);

// block_scales of every row block: scb[(rb * n_groups + g) * 16 + k * 8 + j]; row_blocks * n_groups
// * 16 floats.
void block_scales_all(const uint16_t* scales, const Layout& l, float* scb, CpuIsa isa);

// Row blocks [rb0, rb1) of W dequantized into the transposed tile Wt (in x 8 (rb1 - rb0)),
// fp32, row-major: Wt[c, 8 (rb - rb0) + j] = W[8 rb + j, c]; rows past out are 0.
void dequantize_tile_t(const int32_t* packed, const float* scb, const Layout& l, int64_t rb0, int64_t rb1, float* Wt,
                       CpuIsa isa);

// y (batch x out) = x (batch x in) * W^T for the packed W, fp32, multiplication-free except for
// the two scalings per group: per row and group, the plane sums of +-x over the nonzeros, then
// alpha1 * s1 + alpha2 * s2.
void matmul(const float* x, int64_t batch, const int32_t* packed, const uint16_t* scales, const Layout& l, float* y,
            CpuIsa isa);

// y (batch x out) ~= x W^T with x rounded to int8 per batch row and group (act_quant.h):
// y[b, r] = sum_g s[b, g] * (alpha1 * (T1 q) + alpha2 * (T2 q)), the plane sums in exact integer
// arithmetic (cpu_a8.cpp).
void matmul_a8(const float* x, int64_t batch, const int32_t* packed, const uint16_t* scales, const Layout& l, float* y,
               CpuIsa isa);

// x (batch x in) -> s * q, the activations as matmul_a8 rounds them (fp32): what the large-batch
// path multiplies with the dequantized W.
void round_activations(const float* x, int64_t batch, const Layout& l, float* xq, CpuIsa isa);

}  // namespace weightkit::trit_plane_cpu
