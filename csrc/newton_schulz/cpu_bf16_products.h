// Newton–Schulz's bf16 matrix products on CPUs with AVX512-BF16 (vdpbf16ps): the symmetric
// product X X^T computed on its upper blocks only (half the flops of a GEMM) and the update
// a X + B X, each with its scaling and addend fused into the store. fp32 accumulation and one
// rounding to bf16 (nearest even) per output, as a bf16 GEMM does; vdpbf16ps and vcvtneps2bf16
// treat denormals as zero, which moves only results below ~1e-38.
//
// All buffers are contiguous, row-major, bf16; the batch is the leading dimension. The callers
// check shapes; these functions only compute.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>

#include "common/cpu_features.h"

namespace weightkit::newton_schulz_cpu {

// True when the kernels below can run: the CPU has AVX512-BF16 and `isa` is AVX-512 (so
// WEIGHTKIT_CPU_ISA=avx2 falls back to ATen's products).
bool bf16_products_available(CpuIsa isa);

// The largest left operand (m * k elements: X of X X^T, B of B X) the kernels below take. They
// stream all of it once per 32-column block of the output, which is cheap while it stays in the
// L3 cache; past 2048 x 2048 (8 MB) it comes from memory and they lose to oneDNN's blocked GEMM
// (5 steps at 2048 x 8192: 1045 vs 859 ms; 2 steps at 4096 x 11008: 5.3 vs 4.6 s), so larger
// products go to ATen.
constexpr int64_t kBf16ProductsMaxLeft = int64_t{2048} * 2048;

// C[b] = alpha * X[b] X[b]^T + beta * D[b] for X (batch, m, k), D and C (batch, m, m); D may be
// null (no addend) and must be symmetric: only its upper triangle is read, and C is always
// exactly symmetric.
void sym_product_bf16(const c10::BFloat16* X, const c10::BFloat16* D, c10::BFloat16* C, int64_t batch, int64_t m,
                      int64_t k, float alpha, float beta);

// Y[b] = a * X[b] + B[b] X[b] for B (batch, m, m) and X, Y (batch, m, n); Y must not alias X.
void left_product_bf16(const c10::BFloat16* B, const c10::BFloat16* X, c10::BFloat16* Y, int64_t batch, int64_t m,
                       int64_t n, float a);

}  // namespace weightkit::newton_schulz_cpu
