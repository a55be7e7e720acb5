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

// Largest batch u for which the downdate kernel forms G·Fᵀ itself (u multiply-adds per element
// of C, one pass over C); larger batches go to a GEMM first and the kernel only symmetrizes.
constexpr int64_t kFusedMaxU = 16;

struct RlsDevice {
  // C (n, n) float64 contiguous <- ((C - G Fᵀ) + (C - G Fᵀ)ᵀ) / 2 with G, F (n, u) float64
  // contiguous; u == 0 only symmetrizes.
  std::function<void(at::Tensor& C, const at::Tensor& G, const at::Tensor& F, int64_t u)> downdate_sym;
};

// C0 = (lam I + mu gram)^-1, float64 (d_k, d_k), symmetrized.
at::Tensor rls_init(const at::Tensor& gram, double lam, double mu);

// One Woodbury step for u new (key, value) rows; see library.cpp. Everything is validated
// before W or C is written.
void rls_update(const RlsDevice& dev, at::Tensor& W, at::Tensor& C, const at::Tensor& K, const at::Tensor& V);

}  // namespace weightkit::rls
