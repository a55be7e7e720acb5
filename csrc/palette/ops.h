// Device-independent pieces of the palette glue, shared by ops.cpp (CPU) and ops_cuda.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <mutex>
#include <optional>
#include <vector>

namespace weightkit::palette {

// Token counts up to this use the decode-in-register GEMV; more dequantize once and call GEMM.
constexpr int64_t kGemvMaxTokens = 16;

// Checks x and signs of hadamard_transform; returns the small order m of n = 2^k * m.
int check_hadamard_args(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& signs);

// H_m as an int8 (m, m) CPU tensor of +-1.
const at::Tensor& small_hadamard_tensor(int m);

// hadamard_transform with ATen ops on x's device: log2(n / m) butterfly passes over the
// power-of-two factor of n, then one product with H_m; fp32 arithmetic, y in x's dtype. The CUDA
// glue takes it for rows too long for its kernel's shared memory; WEIGHTKIT_HADAMARD_PATH=aten
// forces it on any device (=kernel or unset: the kernels where they apply).
at::Tensor hadamard_aten(const at::Tensor& x, const std::optional<at::Tensor>& signs, double scale, int m);
bool force_hadamard_aten(const char* op);

// c for a (2^c, d) float32 codebook, after checking it.
int code_bits_of(const char* op, const at::Tensor& codebook);

// Shapes and dtypes of packed codes (out, words) int32, scales (out,) float32 against in_features.
void check_packed(const char* op, const at::Tensor& packed, const at::Tensor& codebook, const at::Tensor& scales,
                  int64_t in_features, int c);

// Checks of the trellis ops; return the number of steps per row.
void check_tcq_params(const char* op, int64_t L, int64_t kb, int64_t V);
int64_t check_tcq_encode_args(const char* op, const at::Tensor& W, int64_t L, int64_t kb, int64_t V);
// tcq_encode_window: W as tcq_encode, prev (rows,) int32 in [-1, 2^L) on W's device, commit in
// [1, steps].
int64_t check_tcq_window_args(const char* op, const at::Tensor& W, const at::Tensor& prev, int64_t L, int64_t kb,
                              int64_t V, int64_t commit);
int64_t check_tcq_decode_args(const char* op, const at::Tensor& packed, const at::Tensor& scales,
                              int64_t in_features, int64_t L, int64_t kb, int64_t V);

// Checks x (..., in_features) float on packed's device for palette_matmul / tcq_matmul (after
// in_features > 0 was checked with packed); returns the number of tokens (rows of x seen as a
// matrix) and sets out_shape to x's shape with its last dim replaced by packed.size(0).
int64_t check_matmul_x(const char* op, const at::Tensor& x, const at::Tensor& packed, int64_t in_features,
                       std::vector<int64_t>& out_shape);

// y (..., rows) in x's dtype (shape out_shape) through a GEMV: `launch(xf, y)` fills y (T, rows)
// fp32 from xf = x as (T, in_features) fp32; not called for T = 0.
template <class Launch>
at::Tensor gemv_matmul(const at::Tensor& x, int64_t T, int64_t in_features, int64_t rows,
                       const std::vector<int64_t>& out_shape, Launch&& launch) {
  const at::Tensor xf = x.reshape({T, in_features}).to(at::kFloat).contiguous();
  at::Tensor y = xf.new_empty({T, rows});
  if (T > 0) launch(xf, y);
  return y.to(x.scalar_type()).reshape(out_shape);
}

// GEMV or dequantize + GEMM for this many tokens (WEIGHTKIT_PALETTE_PATH=gemv|dense forces one).
bool use_gemv(const char* op, int64_t tokens);
// False when WEIGHTKIT_PALETTE_VQ_INT8=0 asks the CPU GEMV to keep 2-D VQ in fp32 (see
// palette_cpu::uses_int8_vq); errors name `op` for other values.
bool allow_int8_vq(const char* op);

}  // namespace weightkit::palette
