// CPU kernels of the Newton–Schulz family: the elementwise and reduction passes around the
// matrix products (which go to MKL through ATen). All work on contiguous fp32 buffers; half
// precision compute is emulated by rounding stored values to bf16/fp16 (see Rounding).
#pragma once

#include <cstdint>

#include "common/cpu_features.h"

namespace weightkit::newton_schulz_cpu {

// Where a computation "in bf16/fp16 with fp32 accumulation" stores a value, we round the fp32
// value to the nearest bf16/fp16 (ties to even, NaN kept) and keep it in fp32 storage: the
// arithmetic of a native half-precision GEMM on a CPU without half-precision units.
enum class Rounding { None, BFloat16, Half };

// sum_i x[i]^2 over n floats; SIMD fp32 lanes (scalar path: double) inside fixed 16K chunks,
// double across chunks, so the result does not depend on the thread count.
double sum_squares(const float* x, int64_t n, CpuIsa isa);

// sum_i cosh(s * x[i])^2 (AuON's brake), accumulated like sum_squares.
double sum_cosh_squares(const float* x, int64_t n, float s, CpuIsa isa);

// x[i] = round(s * x[i]) in place.
void scale_round(float* x, int64_t n, float s, Rounding rounding, CpuIsa isa);

}  // namespace weightkit::newton_schulz_cpu
