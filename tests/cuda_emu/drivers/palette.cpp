// ctypes entry points over csrc/palette/kernels.cuh for the CUDA emulator tests. Arguments
// mirror what ops_cuda.cpp passes; dtype: 0 fp32, 1 bf16, 2 fp16 (weightkit::DType).
#include "palette/kernels.cuh"

#include "capi.h"

namespace k = weightkit::palette_cuda;

extern "C" {

// 1 when launched, 0 when n > kHadamardMaxN (nothing launched).
int pal_hadamard_rows(const void* x, void* y, int dtype, int64_t rows, int64_t n, int m, const int8_t* Hm,
                      const float* signs, float scale) {
  return k::hadamard_rows(x, y, static_cast<weightkit::DType>(dtype), rows, n, m, Hm, signs, scale, nullptr) ? 1 : 0;
}

void pal_palette_gemv(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t units, int c, int d,
                      const float* codebook, const float* scales, float* y) {
  k::palette_gemv(x, T, packed, rows, units, c, d, codebook, scales, y, nullptr);
}

void pal_tcq_decode(const int32_t* packed, int64_t rows, int64_t steps, int L, int kb, int V, const float* scales,
                    float* W) {
  k::tcq_decode(packed, rows, steps, L, kb, V, scales, W, nullptr);
}

void pal_tcq_gemv(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t steps, int L, int kb, int V,
                  const float* scales, float* y) {
  k::tcq_gemv(x, T, packed, rows, steps, L, kb, V, scales, y, nullptr);
}

void pal_tcq_viterbi(const float* W, int64_t rows, int64_t steps, int L, int kb, int V, float* cost, uint8_t* bp,
                     int32_t* packed) {
  k::tcq_viterbi(W, rows, steps, L, kb, V, cost, bp, packed, nullptr);
}

void pal_tcq_viterbi_window(const float* W, const int32_t* prev, int64_t rows, int64_t steps, int L, int kb, int V,
                            int64_t commit, float* cost, uint8_t* bp, int32_t* states) {
  k::tcq_viterbi_window(W, prev, rows, steps, L, kb, V, commit, cost, bp, states, nullptr);
}

int64_t pal_hadamard_max_n() { return k::kHadamardMaxN; }

}  // extern "C"
