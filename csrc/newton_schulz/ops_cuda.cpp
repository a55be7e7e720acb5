// CUDA glue of the Newton–Schulz family: the NsDevice pieces for CUDA tensors and the CUDA
// registrations. The iteration itself (ops.h) runs its products through ATen, i.e. cuBLAS.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/checks.h"
#include "common/cuda_glue.h"
#include "newton_schulz/kernels.cuh"
#include "newton_schulz/ops.h"

namespace weightkit::newton_schulz {
namespace {

namespace kern = weightkit::newton_schulz_cuda;

// Our symmetric-product kernel has not yet been measured against cuBLAS, so it is opt-in:
// WEIGHTKIT_NS_SYRK=1.
bool syrk_enabled() {
  const char* v = std::getenv("WEIGHTKIT_NS_SYRK");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

at::Tensor stack_normalized_cuda(const std::vector<at::Tensor>& mats, at::ScalarType compute, const NsParams& p) {
  const at::ScalarType in_dtype = mats.front().scalar_type();
  at::Tensor src;
  if (mats.size() == 1 && mats.front().is_contiguous() && in_dtype != compute) {
    // Read the caller's matrix directly: the result goes to a new buffer of the compute dtype.
    src = mats.front().dim() == 2 ? mats.front().unsqueeze(0) : mats.front();
  } else {
    std::vector<at::Tensor> parts;
    parts.reserve(mats.size());
    for (const auto& M : mats) parts.push_back(M.dim() == 2 ? M.unsqueeze(0) : M);
    // A fresh contiguous buffer (at::cat never aliases its inputs), so normalizing in place is safe.
    src = at::cat(parts, 0).contiguous();
  }
  const int64_t batch = src.size(0);
  const int64_t per = src.size(1) * src.size(2);
  at::Tensor out = in_dtype == compute ? src : at::empty(src.sizes(), src.options().dtype(compute));
  // Left uninitialized: normalize_batched zeroes it on the stream.
  at::Tensor workspace = at::empty({batch}, src.options().dtype(at::kDouble));
  kern::normalize_batched(src.const_data_ptr(), kernel_dtype(in_dtype), out.mutable_data_ptr(), kernel_dtype(compute),
                          batch, per, p.norm_scale, p.eps, workspace.mutable_data_ptr<double>(),
                          c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor sym_product_cuda(const at::Tensor& X, double alpha, const at::Tensor& D, double beta) {
  const at::ScalarType t = X.scalar_type();
  if (t != at::kBFloat16 && t != at::kHalf) return aten_sym_product(X, alpha, D, beta);
  TORCH_INTERNAL_ASSERT(X.dim() == 3);
  const at::Tensor Xc = X.contiguous();
  const int64_t batch = Xc.size(0), m = Xc.size(1), k = Xc.size(2);
  at::Tensor Dc;
  if (D.defined()) {
    TORCH_INTERNAL_ASSERT(D.scalar_type() == t && D.dim() == 3 && D.size(0) == batch && D.size(1) == m &&
                          D.size(2) == m);
    Dc = D.contiguous();
  }
  at::Tensor C = at::empty({batch, m, m}, Xc.options());
  kern::sym_product(Xc.const_data_ptr(), C.mutable_data_ptr(), Dc.defined() ? Dc.const_data_ptr() : nullptr,
                    kernel_dtype(t), batch, m, k, static_cast<float>(alpha), static_cast<float>(beta),
                    c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return C;
}

NsDevice cuda_device() {
  NsDevice dev;
  dev.stack_normalized = stack_normalized_cuda;
  // Buffers are stored in the compute dtype and cuBLAS accumulates in fp32: nothing to round.
  dev.round = [](at::Tensor&, at::ScalarType) {};
  if (syrk_enabled()) dev.sym_product = sym_product_cuda;
  // half_gram_min_aspect stays 0 (never): the Gram form's fp32 m x m products would run off the
  // tensor cores that the plain form's half-precision products use.
  return dev;
}

at::Tensor newton_schulz_cuda_impl(const at::Tensor& G, int64_t steps, at::ArrayRef<double> coeffs, double eps,
                                   double norm_scale, std::optional<at::ScalarType> compute_dtype) {
  const NsParams p = check_params("newton_schulz", steps, coeffs, eps, norm_scale, compute_dtype);
  check_dims("newton_schulz", G, "G", 2, 3);
  check_float_dtype("newton_schulz", G, "G");
  const c10::cuda::CUDAGuard guard(G.device());
  return run_grouped("newton_schulz", {G}, p, cuda_device())[0];
}

std::vector<at::Tensor> newton_schulz_grouped_cuda_impl(at::TensorList Gs, int64_t steps,
                                                        at::ArrayRef<double> coeffs, double eps, double norm_scale,
                                                        std::optional<at::ScalarType> compute_dtype) {
  const char* op = "newton_schulz_grouped";
  const NsParams p = check_params(op, steps, coeffs, eps, norm_scale, compute_dtype);
  if (Gs.empty()) return {};
  // Same-device first, so a CPU tensor among CUDA ones gets run_grouped's message.
  for (size_t i = 0; i < Gs.size(); ++i) {
    const std::string name = "Gs[" + std::to_string(i) + "]";
    check_same_device(op, Gs[i], name.c_str(), Gs[0], "Gs[0]");
  }
  WK_CHECK(op, Gs[0].is_cuda(), "Gs must be CUDA tensors, got device ", Gs[0].device());
  const c10::cuda::CUDAGuard guard(Gs[0].device());
  return run_grouped(op, Gs, p, cuda_device());
}

at::Tensor auon_cuda_impl(const at::Tensor& G, double eps) {
  check_auon_input(G, eps);
  if (G.numel() == 0) return at::empty_like(G, at::MemoryFormat::Contiguous);
  const c10::cuda::CUDAGuard guard(G.device());
  const at::Tensor X = G.contiguous();
  at::Tensor out = at::empty_like(X, at::MemoryFormat::Contiguous);
  const int64_t per = X.size(-2) * X.size(-1);
  const int64_t batch = X.numel() / per;
  // Left uninitialized: auon_batched zeroes it on the stream.
  at::Tensor workspace = at::empty({2 * batch}, X.options().dtype(at::kDouble));
  kern::auon_batched(X.const_data_ptr(), kernel_dtype(X.scalar_type()), out.mutable_data_ptr(), batch, per, eps,
                     workspace.mutable_data_ptr<double>(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(weightkit, CUDA, m) {
  m.impl("newton_schulz", &newton_schulz_cuda_impl);
  m.impl("newton_schulz_grouped", &newton_schulz_grouped_cuda_impl);
  m.impl("auon", &auon_cuda_impl);
}

}  // namespace weightkit::newton_schulz
