// Device-independent part of the RLS glue: argument checks and the Woodbury step over ATen
// linear algebra (MKL/LAPACK on CPU, cuBLAS/cuSOLVER on CUDA). ops.cpp and ops_cuda.cpp supply
// the one custom piece, the fused symmetric downdate of C, through RlsDevice.
//
// Shapes (nn.Linear layout): W (d_v, d_k) any float dtype, C (d_k, d_k) float64, K (u, d_k),
// V (u, d_v) any float dtype. All math runs in float64.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>

namespace weightkit::rls {

// Largest batch u for which the downdate kernel forms the products itself (u multiply-adds per
// element of C in one streaming pass); larger batches go to a GEMM and a symmetrize pass.
constexpr int64_t kFusedMaxU = 16;

struct RlsDevice {
  // C (n, n) float64 contiguous -= (G Fᵀ + F Gᵀ) / 2 with Gt = Gᵀ, Ft = Fᵀ (u, n) float64
  // contiguous, keeping a bitwise-symmetric C bitwise symmetric.
  std::function<void(at::Tensor& C, const at::Tensor& Gt, const at::Tensor& Ft)> downdate_sym;
  // C <- (C + Cᵀ) / 2 in place.
  std::function<void(at::Tensor& C)> symmetrize;
};

// C0 = (lam I + mu gram)^-1, float64 (d_k, d_k), symmetrized.
at::Tensor rls_init(const at::Tensor& gram, double lam, double mu);

// One Woodbury step for u new (key, value) rows; see library.cpp. Everything is validated
// before W or C is written.
void rls_update(const RlsDevice& dev, at::Tensor& W, at::Tensor& C, const at::Tensor& K, const at::Tensor& V);

}  // namespace weightkit::rls
