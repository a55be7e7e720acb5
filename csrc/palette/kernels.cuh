// CUDA kernels of the palette family. Pure CUDA: raw pointers, sizes and a stream. Launchers only
// enqueue work on `stream`; the caller checks for launch errors.
//
// Layouts are those of the CPU kernels: palette codes in 16-word blocks (csrc/palette/cpu.h),
// trellis streams as in csrc/palette/tcq.h. Activations and results of the GEMVs are fp32 (the
// glue converts), codebooks and scales fp32.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/dtype.h"

namespace weightkit::palette_cuda {

using DType = weightkit::DType;

// Largest n hadamard_rows takes (fp32 row in shared memory, 96 KiB).
constexpr int64_t kHadamardMaxN = 24576;

// y (rows x n, dtype t) = scale * (x * signs) H_n^T per row, H_n = H_m (x) H_{n/m}; Hm is the m x m
// +-1 int8 matrix on the device, signs fp32 (n) or null. One block per row, the row in shared
// memory. Returns false (nothing launched) when n > kHadamardMaxN.
bool hadamard_rows(const void* x, void* y, DType t, int64_t rows, int64_t n, int m, const int8_t* Hm,
                   const float* signs, float scale, cudaStream_t stream);

// y (T x rows) = x (T x units*d) W^T, W decoded in registers from c-bit palette codes; one launch
// per 16 tokens, one warp per output row; the codebook (2^c x d) sits in shared memory.
void palette_gemv(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t units, int c, int d,
                  const float* codebook, const float* scales, float* y, cudaStream_t stream);

// W (rows x steps*V) = scales[r] * code(state_t) (tcq.h), one thread per step.
void tcq_decode(const int32_t* packed, int64_t rows, int64_t steps, int L, int kb, int V, const float* scales,
                float* W, cudaStream_t stream);

// y (T x rows) = x (T x steps*V) W^T with W the trellis code decoded in registers; one launch per
// 16 tokens, one warp per output row, lanes over steps.
void tcq_gemv(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t steps, int L, int kb, int V,
              const float* scales, float* y, cudaStream_t stream);

// Viterbi encoding of normalized rows W (rows x steps*V) into packed streams (zeroed by the
// caller). One block per row; `cost` (rows x 2 x 2^L fp32) and `bp` (rows x steps x 2^(L-kb)
// uint8) are caller-provided scratch in global memory (L2-resident per block at L <= 16).
void tcq_viterbi(const float* W, int64_t rows, int64_t steps, int L, int kb, int V, float* cost, uint8_t* bp,
                 int32_t* packed, cudaStream_t stream);

// The same search over a window whose first state follows prev[r] (-1: free): the first `commit`
// states of each row's cheapest path to states (rows x commit) int32; scratch as tcq_viterbi's.
void tcq_viterbi_window(const float* W, const int32_t* prev, int64_t rows, int64_t steps, int L, int kb, int V,
                        int64_t commit, float* cost, uint8_t* bp, int32_t* states, cudaStream_t stream);

}  // namespace weightkit::palette_cuda
