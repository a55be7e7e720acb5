// CUDA glue of the trit-plane family: the same checks as the CPU registration (ops.h), then the
// kernels of kernels.cu on the current stream. Large batches dequantize W and use ATen's (cuBLAS)
// product: bf16 x gets a bf16 W and the tensor cores, as on a CPU with bf16 units; fp32 and fp16
// x an fp32 W and product, rounded once to x's dtype. Packing to and from int8 trits is a CPU
// round trip (offline work).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <tuple>

#include "common/checks.h"
#include "common/cuda_glue.h"
#include "trit_plane/kernels.cuh"
#include "trit_plane/ops.h"

namespace weightkit::trit_plane {
namespace {

namespace kern = weightkit::trit_plane_cuda;

std::tuple<at::Tensor, at::Tensor> ptqtp_quantize_cuda(const at::Tensor& W, int64_t group_size, int64_t max_iters,
                                                       double tol) {
  constexpr const char* op = "ptqtp_quantize";
  const Layout l = check_quantize_args(op, W, group_size, max_iters, tol);
  const c10::cuda::CUDAGuard guard(W.device());
  const at::Tensor Wf = W.to(at::kFloat).contiguous();
  WK_CHECK(op, Wf.numel() == 0 || at::isfinite(Wf).all().item<bool>(),
           "W must be finite (no NaN or Inf), got non-finite values");
  at::Tensor packed = at::empty({l.row_blocks, l.words_per_row, kPlanes, kRowsPerBlock}, W.options().dtype(at::kInt));
  at::Tensor scales = at::empty({l.out, l.n_groups, 2}, W.options().dtype(at::kHalf));
  at::Tensor overflow = at::empty({1}, W.options().dtype(at::kInt));
  kern::quantize(Wf.const_data_ptr<float>(), l, max_iters, tol, packed.mutable_data_ptr<int32_t>(),
                 reinterpret_cast<uint16_t*>(scales.mutable_data_ptr<at::Half>()), overflow.mutable_data_ptr<int>(),
                 c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  WK_CHECK(op, overflow.item<int>() == 0, "scales must fit in float16 (|alpha| <= 65504), got a group whose scale "
                                          "overflows; rescale W before quantizing");
  return {packed, scales};
}

at::Tensor dequantize_as(const at::Tensor& P, const at::Tensor& S, const Layout& l, at::ScalarType dtype) {
  at::Tensor W = at::empty({l.out, l.in}, S.options().dtype(dtype));
  kern::dequantize(P.const_data_ptr<int32_t>(), scale_bits(S), l, W.mutable_data_ptr(), kernel_dtype(dtype),
                   c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return W;
}

at::Tensor trit_plane_unpack_cuda(const at::Tensor& packed, const at::Tensor& scales, int64_t in_features,
                                  int64_t group_size) {
  const Layout l = check_packed("trit_plane_unpack", packed, scales, in_features, group_size);
  const c10::cuda::CUDAGuard guard(packed.device());
  return dequantize_as(packed.contiguous(), scales.contiguous(), l, at::kFloat);
}

// The GEMV kernel reads the planes with 16-byte loads; a view at an odd offset gets a fresh copy.
at::Tensor aligned_planes(const at::Tensor& packed) {
  at::Tensor P = packed.contiguous();
  return reinterpret_cast<uintptr_t>(P.const_data_ptr()) % 16 == 0 ? P : P.clone();
}

// y (batch, out) = x2 (batch, in) W^T in x2's dtype: the direct kernel for small batches. Larger
// ones: bf16 x2 a bf16 W (each alpha1*t1 + alpha2*t2 rounded once, as a bf16 nn.Linear holds it)
// and cuBLAS's bf16 product, which is what a bf16 prefill wants; fp32 and fp16 x2 an fp32 W and
// product rounded once to x2's dtype like the direct kernel (an fp16 W could overflow).
at::Tensor product(const at::Tensor& x2, const at::Tensor& P, const at::Tensor& S, const Layout& l) {
  const int64_t batch = x2.size(0);
  if (batch > direct_max_batch(kern::kDirectMaxBatch)) {
    if (x2.scalar_type() == at::kBFloat16) return at::matmul(x2, dequantize_as(P, S, l, at::kBFloat16).t());
    return at::matmul(x2.to(at::kFloat), dequantize_as(P, S, l, at::kFloat).t()).to(x2.scalar_type());
  }
  at::Tensor y = at::empty({batch, l.out}, x2.options());
  if (l.in == 0) return y.zero_();
  kern::matmul_direct(x2.const_data_ptr(), kernel_dtype(x2.scalar_type()), batch, P.const_data_ptr<int32_t>(),
                      scale_bits(S), l, y.mutable_data_ptr(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return y;
}

at::Tensor trit_plane_matmul_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                                  int64_t in_features, int64_t group_size) {
  constexpr const char* op = "trit_plane_matmul";
  const Layout l = check_matmul_args(op, x, packed, scales, in_features, group_size);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x2 = x.reshape({leading_numel(x), in_features}).contiguous();
  return product(x2, aligned_planes(packed), scales.contiguous(), l).view(matmul_out_shape(x, l.out));
}

// The activations rounded to int8 and scaled back in fp32 (one small kernel), then the fp32
// product: the same y as the CPU's integer plane sums up to fp32 rounding.
at::Tensor trit_plane_matmul_a8_cuda(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                                     int64_t in_features, int64_t group_size) {
  constexpr const char* op = "trit_plane_matmul_a8";
  const Layout l = check_matmul_args(op, x, packed, scales, in_features, group_size);
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor x2 = x.reshape({leading_numel(x), in_features}).to(at::kFloat).contiguous();
  at::Tensor xq = at::empty_like(x2);
  kern::round_activations(x2.const_data_ptr<float>(), x2.size(0), l, xq.mutable_data_ptr<float>(),
                          c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  at::Tensor y = product(xq, aligned_planes(packed), scales.contiguous(), l);
  // A non-finite group leaves s * q all NaN, but the direct kernel adds an activation only where
  // a trit is nonzero: make the whole row NaN as on the CPU (act_quant.h).
  if (xq.numel() > 0 && l.out > 0) y.masked_fill_(xq.isnan().any(1, /*keepdim=*/true), NAN);
  return y.to(x.scalar_type()).view(matmul_out_shape(x, l.out));
}

// Offline format conversions: run the CPU kernels through the dispatcher and copy back.
at::Tensor trit_plane_pack_cuda(const at::Tensor& trits, int64_t group_size) {
  static const auto cpu_op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("weightkit::trit_plane_pack", "")
                                 .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return cpu_op.call(trits.cpu(), group_size).to(trits.device());
}

at::Tensor trit_plane_trits_cuda(const at::Tensor& packed, int64_t out_features, int64_t in_features,
                                 int64_t group_size) {
  static const auto cpu_op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("weightkit::trit_plane_trits", "")
                                 .typed<at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t)>();
  return cpu_op.call(packed.cpu(), out_features, in_features, group_size).to(packed.device());
}

}  // namespace

TORCH_LIBRARY_IMPL(weightkit, CUDA, m) {
  m.impl("ptqtp_quantize", &ptqtp_quantize_cuda);
  m.impl("trit_plane_matmul", &trit_plane_matmul_cuda);
  m.impl("trit_plane_matmul_a8", &trit_plane_matmul_a8_cuda);
  m.impl("trit_plane_unpack", &trit_plane_unpack_cuda);
  m.impl("trit_plane_pack", &trit_plane_pack_cuda);
  m.impl("trit_plane_trits", &trit_plane_trits_cuda);
}

}  // namespace weightkit::trit_plane
