// CUDA glue of the RLS family: the Woodbury step of ops.h runs its products and the u x u
// Cholesky through ATen (cuBLAS / cuSOLVER); the symmetric downdate of C is our kernel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "common/cuda_glue.h"
#include "rls/kernels.cuh"
#include "rls/ops.h"

namespace weightkit::rls {
namespace {

void downdate_sym_cuda(at::Tensor& C, const at::Tensor& Gt, const at::Tensor& Ft) {
  rls_cuda::downdate_sym(C.data_ptr<double>(), Gt.const_data_ptr<double>(), Ft.const_data_ptr<double>(), C.size(0),
                         Gt.size(0), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void symmetrize_cuda(at::Tensor& C) {
  rls_cuda::symmetrize(C.data_ptr<double>(), C.size(0), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor rls_init_cuda(const at::Tensor& gram, double lam, double mu) {
  const c10::cuda::CUDAGuard guard(gram.device());
  return rls_init(gram, lam, mu);
}

void rls_update_cuda(at::Tensor W, at::Tensor C, const at::Tensor& K, const at::Tensor& V) {
  const auto guard = device_guard_of(W);  // rls_update checks the devices: W may be the CPU tensor
  static const RlsDevice dev{downdate_sym_cuda, symmetrize_cuda};
  rls_update(dev, W, C, K, V);
}

}  // namespace
}  // namespace weightkit::rls

TORCH_LIBRARY_IMPL(weightkit, CUDA, m) {
  m.impl("rls_init", &weightkit::rls::rls_init_cuda);
  m.impl("rls_update_", &weightkit::rls::rls_update_cuda);
}
