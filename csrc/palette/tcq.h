// Trellis-coded quantization with QTIP's bitshift trellis (CPU; the code function is shared with
// the CUDA decoder, so it is written for both compilers).
//
// A row of T steps (V weights a step) is one bit stream: state_0 is the first L bits, and each
// later step shifts in kb new bits, state_t = ((state_{t-1} << kb) | u_t) mod 2^L, so state_t is
// the L-bit window starting at bit t * kb (most significant bit first). Step t decodes to the V
// values code(state_t). Stream bit j sits in word j / 32 at bit 31 - j % 32; a row holds
// tcq_words(T) int32 words (one spare word so a 64-bit window read never leaves the row).
#pragma once

#include <cstdint>

#include "common/cpu_features.h"

#if defined(__CUDACC__)
#define WK_HD __host__ __device__ __forceinline__
#else
#define WK_HD inline
#endif

namespace weightkit::tcq {

// QTIP's "1MAD" computed Gaussian: one multiply-add on the state, then the sum of the four bytes
// (mean 510, standard deviation 147.8 for uniform bytes). Value v of a step uses its own
// multiplier, so pairs (V = 2) get two nearly independent values.
WK_HD uint32_t code_mul(int v) { return v == 0 ? 34038481u : 2654435761u; }
WK_HD uint32_t code_add(int v) { return v == 0 ? 76625530u : 2246822519u; }
constexpr float kCodeScale = 1.0f / 147.8f;

// The byte sum minus its mean: code_value before the scaling, an exact integer in [-510, 510].
WK_HD int code_offset(uint32_t state, int v) {
  const uint32_t x = state * code_mul(v) + code_add(v);
  return static_cast<int>((x & 255u) + ((x >> 8) & 255u) + ((x >> 16) & 255u) + (x >> 24)) - 510;
}

WK_HD float code_value(uint32_t state, int v) { return static_cast<float>(code_offset(state, v)) * kCodeScale; }

WK_HD int64_t stream_bits(int64_t steps, int L, int kb) { return steps > 0 ? L + kb * (steps - 1) : 0; }
WK_HD int64_t tcq_words(int64_t steps, int L, int kb) { return (stream_bits(steps, L, kb) + 31) / 32 + 1; }

// The L-bit window starting at stream bit `bit` of a row.
WK_HD uint32_t read_state(const uint32_t* row, int64_t bit, int L) {
  const int64_t w = bit >> 5;
  const uint64_t two = (static_cast<uint64_t>(row[w]) << 32) | row[w + 1];
  return static_cast<uint32_t>((two << (bit & 31)) >> (64 - L));
}

// Viterbi encoding: packed (rows x tcq_words) int32 streams minimizing the squared error to W
// (rows x steps*V, fp32, already normalized), rows in parallel. Needs L in [kb + 1, 20].
void encode(const float* W, int64_t rows, int64_t steps, int L, int kb, int V, int32_t* packed, CpuIsa isa);

// Windowed Viterbi (Hessian-aware encoding commits a row's stream a block at a time): for each row
// of W (rows x steps*V), the cheapest path over its `steps` whose first state follows prev[r] (the
// state of the step before the window; -1: free, the row's first step); writes the first `commit`
// states of each path to states (rows x commit).
void encode_window(const float* W, const int32_t* prev, int64_t rows, int64_t steps, int L, int kb, int V,
                   int64_t commit, int32_t* states, CpuIsa isa);

// W (rows x steps*V) = scales[r] * code(state_t) from the streams.
void decode(const int32_t* packed, int64_t rows, int64_t steps, int L, int kb, int V, const float* scales,
            float* W);

// y (T x rows) = x (T x steps*V, fp32) W^T with W decoded in registers (cpu_tcq_gemv.cpp); any T,
// meant for few tokens (each chunk of 8 tokens decodes the streams again).
void gemv(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t steps, int L, int kb, int V,
          const float* scales, float* y, CpuIsa isa);

}  // namespace weightkit::tcq
