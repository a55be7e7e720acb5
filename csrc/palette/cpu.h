// CPU kernels of the palette family: the Hadamard transform, nearest-codeword encoding, code
// packing, dequantization and the decode-in-register GEMV, plus the trellis (TCQ) Viterbi.
//
// Packed codes ("palette layout"): a row of `units` codes of c bits (a unit is one weight for the
// scalar quantizer, one pair for the 2-D VQ) is stored in blocks of 16 int32 words, each word
// holding P = floor(32 / c) codes: unit blk*16*P + p*16 + l sits in word blk*16 + l at bits
// [c*p, c*p + c). A SIMD lane l then decodes slot p of 16 words with one shift and one mask, and
// the 16 decoded units are contiguous, so the matching activations load as one vector. The last
// block is padded with code 0 (its activations are zero-padded by the GEMV).
#pragma once

#include <cstdint>

#include "common/cpu_features.h"

namespace weightkit::palette_cpu {

// Codes per 32-bit word for c-bit codes.
inline int codes_per_word(int c) { return 32 / c; }
// 16-word blocks needed for `units` codes of c bits.
inline int64_t num_blocks(int64_t units, int c) {
  const int64_t per_block = 16 * static_cast<int64_t>(codes_per_word(c));
  return (units + per_block - 1) / per_block;
}

// y (rows x n) = scale * (x * signs) H_n^T over each row, H_n = H_m (x) H_{n/m} (Sylvester), Hm the
// m x m +-1 matrix row-major; signs may be null. x and y may alias.
void hadamard_rows(const float* x, float* y, int64_t rows, int64_t n, int m, const int8_t* Hm, const float* signs,
                   float scale, CpuIsa isa);

// idx (rows x units) = index of the nearest codeword (squared distance) of W (rows x units*d)
// among the ncb codewords of dimension d (codebook ncb x d, row-major).
void encode_nearest(const float* W, int64_t rows, int64_t units, int d, const float* codebook, int ncb,
                    int32_t* idx);

// packed (rows x num_blocks*16) from idx (rows x units) of c-bit codes.
void pack_codes(const int32_t* idx, int64_t rows, int64_t units, int c, int32_t* packed);

// W (rows x units*d) = scales[r] * codebook[code].
void dequantize(const int32_t* packed, int64_t rows, int64_t units, int c, int d, const float* codebook,
                const float* scales, float* W);

// The GEMVs stream their codes from memory at a few bytes per cycle, and one core alone does not
// keep enough DRAM reads in flight for that stream; a software prefetch this far ahead (measured
// best of 2/4/8 KiB at 4096², 2 threads, on the Xeon of bench/results/cpu-xeon-avx512-2t) does.
constexpr int kPrefetchBytes = 4096;

// True where gemv rounds finite codewords and activations to int8 (gemv_vq_int8): the 2-D VQ with
// 6- to 8-bit codes on CPUs with AVX512-VBMI and VNNI (isa avx512), and with 5- to 8-bit codes on
// isa avx2. (AVX-512 decodes 5-bit codes exactly with fp32 register permutes, fast enough there.)
inline bool uses_int8_vq(int c, int d, CpuIsa isa) {
  if (d != 2) return false;
  if (isa == CpuIsa::Avx2) return c >= 5;
  return c >= 6 && isa == CpuIsa::Avx512 && cpu_features().avx512_vbmi && cpu_features().avx512_vnni;
}

// The int8 2-D VQ GEMV (cpu_vq_int8.cpp) where uses_int8_vq(c, 2, isa): y as gemv's. Returns false
// without writing y when x or the codebook has a non-finite value (the fp32 path propagates them).
bool gemv_vq_int8(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t units, int c,
                  const float* codebook, const float* scales, float* y, CpuIsa isa);

// y (T x rows) = x (T x units*d) W^T with W the packed codes as above; fp32 throughout, except
// where allow_int8 && uses_int8_vq: codewords (one scale) and activations (one scale per token
// and block) are rounded to int8, products are exact in int32 and accumulate in fp32.
void gemv(const float* x, int64_t T, const int32_t* packed, int64_t rows, int64_t units, int c, int d,
          const float* codebook, const float* scales, float* y, CpuIsa isa, bool allow_int8);

}  // namespace weightkit::palette_cpu
