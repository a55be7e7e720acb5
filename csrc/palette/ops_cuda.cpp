// CUDA glue of the palette family: the Hadamard transform, the decode-in-register GEMVs (palette
// codes and trellis streams) and the Viterbi encoder run as our kernels; nearest-codeword
// encoding, packing and palette dequantization are a few ATen ops on the device (their cost is
// one pass over the weights, paid once per model or per large batch).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <map>
#include <mutex>
#include <utility>

#include "common/checks.h"
#include "common/cuda_glue.h"
#include "palette/kernels.cuh"
#include "palette/ops.h"
#include "palette/tcq.h"

namespace weightkit::palette {
namespace {

namespace kern = weightkit::palette_cuda;

// H_m on each device, copied once.
const at::Tensor& device_hadamard(int m, const at::Device& device) {
  static std::mutex mu;
  static std::map<std::pair<int, int>, at::Tensor> cache;
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(m, static_cast<int>(device.index()));
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, small_hadamard_tensor(m).to(device)).first;
  return it->second;
}

int64_t packed_blocks(int64_t units, int c) {
  const int64_t per = 16 * (32 / c);
  return (units + per - 1) / per;
}

at::Tensor hadamard_transform_cuda(const at::Tensor& x, const std::optional<at::Tensor>& signs, double scale) {
  const char* op = "hadamard_transform";
  const int m = check_hadamard_args(op, x, signs);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(-1);
  // Rows longer than the kernel's shared-memory row (e.g. Llama-70B's MLP width 28672 = 2^10 * 28),
  // or more rows than a grid holds (one block per row), take the ATen composition: log2(n / m)
  // passes over memory instead of one.
  const int64_t rows = x.numel() / std::max<int64_t>(n, 1);
  if (n > kern::kHadamardMaxN || rows > INT32_MAX || force_hadamard_aten(op)) {
    return hadamard_aten(x, signs, scale, m);
  }
  const at::Tensor xc = (x.scalar_type() == at::kDouble ? x.to(at::kFloat) : x).contiguous();
  at::Tensor y = at::empty_like(xc);
  at::Tensor s;
  if (signs.has_value()) s = signs->to(at::kFloat).contiguous();
  kern::hadamard_rows(xc.data_ptr(), y.data_ptr(), kernel_dtype(xc.scalar_type()), rows, n, m,
                      device_hadamard(m, x.device()).data_ptr<int8_t>(), s.defined() ? s.data_ptr<float>() : nullptr,
                      static_cast<float>(scale), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y.to(x.scalar_type());
}

at::Tensor palette_encode_cuda(const at::Tensor& W, const at::Tensor& codebook) {
  const char* op = "palette_encode";
  check_dims(op, W, "W", 2, 2);
  WK_CHECK(op, W.scalar_type() == at::kFloat, "W must be float32, got ", W.scalar_type());
  code_bits_of(op, codebook);
  check_same_device(op, W, "W", codebook, "codebook");
  const int64_t d = codebook.size(1);
  WK_CHECK(op, W.size(1) % d == 0, "W's columns must be a multiple of the codeword dimension ", d, ", got ",
           W.sizes());
  WK_CHECK(op, at::isfinite(W).all().item<bool>(), "W must be finite (it has NaN or Inf)");
  // Refused, as on the CPU: the argmin over distances below would pick a NaN codeword.
  WK_CHECK(op, at::isfinite(codebook).all().item<bool>(), "codebook must be finite (it has NaN or Inf)");
  const c10::cuda::CUDAGuard guard(W.device());
  const at::Tensor pts = W.reshape({-1, d});
  at::Tensor idx = at::empty({pts.size(0)}, W.options().dtype(at::kLong));
  // Chunks keep the (points x codewords) distance matrix near 256 MiB.
  const int64_t chunk = std::max<int64_t>(1, (int64_t(1) << 26) / codebook.size(0));
  for (int64_t p0 = 0; p0 < pts.size(0); p0 += chunk) {
    const at::Tensor part = pts.slice(0, p0, std::min(pts.size(0), p0 + chunk));
    // compute_mode 2: exact differences; the matmul form (|x|² + |c|² - 2 x·c) cancels, and under
    // TF32 matmuls it would pick a farther codeword near ties.
    idx.slice(0, p0, p0 + part.size(0)).copy_(at::cdist(part, codebook, 2.0, /*compute_mode=*/2).argmin(1));
  }
  return idx.to(at::kInt).reshape({W.size(0), W.size(1) / d});
}

at::Tensor palette_pack_cuda(const at::Tensor& idx, int64_t code_bits) {
  const char* op = "palette_pack";
  check_dims(op, idx, "idx", 2, 2);
  WK_CHECK(op, idx.scalar_type() == at::kInt, "idx must be int32, got ", idx.scalar_type());
  WK_CHECK(op, code_bits >= 1 && code_bits <= 8, "code_bits must be in [1, 8], got ", code_bits);
  const c10::cuda::CUDAGuard guard(idx.device());
  if (idx.numel() > 0) {
    WK_CHECK(op, idx.min().item<int32_t>() >= 0 && idx.max().item<int32_t>() < (1 << code_bits),
             "idx values must be in [0, 2^code_bits) = [0, ", (1 << code_bits), ")");
  }
  const int c = static_cast<int>(code_bits), P = 32 / c;
  const int64_t rows = idx.size(0), units = idx.size(1), nblk = packed_blocks(units, c);
  const at::Tensor padded = at::constant_pad_nd(idx.to(at::kLong), {0, nblk * 16 * P - units});
  const at::Tensor shifts = at::arange(P, idx.options().dtype(at::kLong)).mul_(c).view({1, 1, P, 1});
  const at::Tensor words = padded.view({rows, nblk, P, 16}).bitwise_left_shift(shifts).sum(2);
  // Words above 2^31 wrap to negative int32: the bit pattern is what matters.
  return at::where(words >= (int64_t(1) << 31), words - (int64_t(1) << 32), words).to(at::kInt).view({rows, nblk * 16});
}

at::Tensor dequantize_aten(const at::Tensor& packed, const at::Tensor& codebook, const at::Tensor& scales,
                           int64_t in_features, int c) {
  const int64_t d = codebook.size(1), units = in_features / d, rows = packed.size(0), P = 32 / c;
  const int64_t nblk = packed_blocks(units, c);
  const at::Tensor w64 = packed.to(at::kLong).bitwise_and(0xFFFFFFFFLL).view({rows, nblk, 1, 16});
  const at::Tensor shifts = at::arange(P, w64.options()).mul_(c).view({1, 1, P, 1});
  const at::Tensor codes =
      w64.bitwise_right_shift(shifts).bitwise_and((1 << c) - 1).reshape({rows, nblk * P * 16}).slice(1, 0, units);
  return codebook.index_select(0, codes.reshape({-1})).view({rows, in_features}).mul(scales.unsqueeze(1));
}

at::Tensor palette_dequantize_cuda(const at::Tensor& packed, const at::Tensor& codebook, const at::Tensor& scales,
                                   int64_t in_features) {
  const char* op = "palette_dequantize";
  const int c = code_bits_of(op, codebook);
  check_packed(op, packed, codebook, scales, in_features, c);
  const c10::cuda::CUDAGuard guard(packed.device());
  return dequantize_aten(packed, codebook, scales, in_features, c);
}

at::Tensor palette_matmul_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& codebook,
                               const at::Tensor& scales, int64_t in_features) {
  const char* op = "palette_matmul";
  const int c = code_bits_of(op, codebook);
  check_packed(op, packed, codebook, scales, in_features, c);
  std::vector<int64_t> out_shape;
  const int64_t rows = packed.size(0), T = check_matmul_x(op, x, packed, in_features, out_shape);
  const c10::cuda::CUDAGuard guard(x.device());
  if (use_gemv(op, T)) {
    const at::Tensor pc = packed.contiguous(), cb = codebook.contiguous(), sc = scales.contiguous();
    return gemv_matmul(x, T, in_features, rows, out_shape, [&](const at::Tensor& xf, at::Tensor& y) {
      kern::palette_gemv(xf.data_ptr<float>(), T, pc.data_ptr<int32_t>(), rows, in_features / codebook.size(1), c,
                         static_cast<int>(codebook.size(1)), cb.data_ptr<float>(), sc.data_ptr<float>(),
                         y.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::Tensor W = dequantize_aten(packed, codebook, scales, in_features, c).to(x.scalar_type());
  return at::matmul(x, W.t());
}

// Runs launch(r0, n, cost, bp) over chunks of W's rows with Viterbi scratch for each chunk.
template <class Launch>
void viterbi_chunks(const at::Tensor& W, int64_t steps, int64_t L, int64_t kb, Launch&& launch) {
  const int64_t rows = W.size(0), S = int64_t(1) << L;
  if (rows == 0) return;
  // The scratch (back pointers: steps * 2^(L-kb) bytes a row) is reused over chunks of rows that
  // fit a quarter of the free memory (at least 2 GiB): a 4096 x 4096 matrix at L = 16 would
  // otherwise ask for 256 GiB, while too small a chunk leaves SMs idle (one block per row).
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const int64_t budget = std::max<int64_t>(int64_t(1) << 31, static_cast<int64_t>(free_bytes / 4));
  const int64_t per_row = steps * (S >> kb) + 2 * S * int64_t(sizeof(float));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(rows, budget / per_row));
  at::Tensor cost = at::empty({chunk, 2, S}, W.options());
  at::Tensor bp = at::empty({chunk, steps, S >> kb}, W.options().dtype(at::kByte));
  for (int64_t r0 = 0; r0 < rows; r0 += chunk) {  // one stream: chunks run in order
    launch(r0, std::min(chunk, rows - r0), cost.data_ptr<float>(), bp.data_ptr<uint8_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

at::Tensor tcq_encode_cuda(const at::Tensor& W, int64_t L, int64_t kb, int64_t V) {
  const char* op = "tcq_encode";
  const int64_t steps = check_tcq_encode_args(op, W, L, kb, V);
  const c10::cuda::CUDAGuard guard(W.device());
  const at::Tensor Wc = W.contiguous();
  const int64_t words = tcq::tcq_words(steps, L, kb);
  at::Tensor packed = at::zeros({W.size(0), words}, W.options().dtype(at::kInt));
  viterbi_chunks(Wc, steps, L, kb, [&](int64_t r0, int64_t n, float* cost, uint8_t* bp) {
    kern::tcq_viterbi(Wc.data_ptr<float>() + r0 * steps * V, n, steps, static_cast<int>(L), static_cast<int>(kb),
                      static_cast<int>(V), cost, bp, packed.data_ptr<int32_t>() + r0 * words,
                      c10::cuda::getCurrentCUDAStream());
  });
  return packed;
}

at::Tensor tcq_encode_window_cuda(const at::Tensor& W, const at::Tensor& prev, int64_t L, int64_t kb, int64_t V,
                                  int64_t commit) {
  const char* op = "tcq_encode_window";
  const int64_t steps = check_tcq_window_args(op, W, prev, L, kb, V, commit);
  const c10::cuda::CUDAGuard guard(W.device());
  const at::Tensor Wc = W.contiguous(), pc = prev.contiguous();
  at::Tensor states = at::empty({W.size(0), commit}, W.options().dtype(at::kInt));
  viterbi_chunks(Wc, steps, L, kb, [&](int64_t r0, int64_t n, float* cost, uint8_t* bp) {
    kern::tcq_viterbi_window(Wc.data_ptr<float>() + r0 * steps * V, pc.data_ptr<int32_t>() + r0, n, steps,
                             static_cast<int>(L), static_cast<int>(kb), static_cast<int>(V), commit, cost, bp,
                             states.data_ptr<int32_t>() + r0 * commit, c10::cuda::getCurrentCUDAStream());
  });
  return states;
}

// W (rows, in_features) float32 from checked arguments (the caller holds the device guard).
at::Tensor tcq_decode_impl(const at::Tensor& packed, const at::Tensor& scales, int64_t in_features, int64_t steps,
                           int64_t L, int64_t kb, int64_t V) {
  const at::Tensor pc = packed.contiguous(), sc = scales.contiguous();
  at::Tensor W = at::empty({packed.size(0), in_features}, scales.options());
  kern::tcq_decode(pc.data_ptr<int32_t>(), packed.size(0), steps, static_cast<int>(L), static_cast<int>(kb),
                   static_cast<int>(V), sc.data_ptr<float>(), W.data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return W;
}

at::Tensor tcq_decode_cuda(const at::Tensor& packed, const at::Tensor& scales, int64_t in_features, int64_t L,
                           int64_t kb, int64_t V) {
  const int64_t steps = check_tcq_decode_args("tcq_decode", packed, scales, in_features, L, kb, V);
  const c10::cuda::CUDAGuard guard(packed.device());
  return tcq_decode_impl(packed, scales, in_features, steps, L, kb, V);
}

at::Tensor tcq_matmul_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                           int64_t in_features, int64_t L, int64_t kb, int64_t V) {
  const char* op = "tcq_matmul";
  const int64_t steps = check_tcq_decode_args(op, packed, scales, in_features, L, kb, V);
  std::vector<int64_t> out_shape;
  const int64_t rows = packed.size(0), T = check_matmul_x(op, x, packed, in_features, out_shape);
  const c10::cuda::CUDAGuard guard(x.device());
  if (use_gemv(op, T)) {
    const at::Tensor pc = packed.contiguous(), sc = scales.contiguous();
    return gemv_matmul(x, T, in_features, rows, out_shape, [&](const at::Tensor& xf, at::Tensor& y) {
      kern::tcq_gemv(xf.data_ptr<float>(), T, pc.data_ptr<int32_t>(), rows, steps, static_cast<int>(L),
                     static_cast<int>(kb), static_cast<int>(V), sc.data_ptr<float>(), y.data_ptr<float>(),
                     c10::cuda::getCurrentCUDAStream());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::Tensor W = tcq_decode_impl(packed, scales, in_features, steps, L, kb, V).to(x.scalar_type());
  return at::matmul(x, W.t());
}

}  // namespace
}  // namespace weightkit::palette

TORCH_LIBRARY_IMPL(weightkit, CUDA, m) {
  m.impl("hadamard_transform", &weightkit::palette::hadamard_transform_cuda);
  m.impl("palette_encode", &weightkit::palette::palette_encode_cuda);
  m.impl("palette_pack", &weightkit::palette::palette_pack_cuda);
  m.impl("palette_dequantize", &weightkit::palette::palette_dequantize_cuda);
  m.impl("palette_matmul", &weightkit::palette::palette_matmul_cuda);
  m.impl("tcq_encode", &weightkit::palette::tcq_encode_cuda);
  m.impl("tcq_encode_window", &weightkit::palette::tcq_encode_window_cuda);
  m.impl("tcq_decode", &weightkit::palette::tcq_decode_cuda);
  m.impl("tcq_matmul", &weightkit::palette::tcq_matmul_cuda);
}
