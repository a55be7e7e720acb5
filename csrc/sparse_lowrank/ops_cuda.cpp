// CUDA glue of the sparse + low-rank family: the SlDevice pieces for CUDA tensors and the CUDA
// registrations. The dense products of both paths (ops.h) run through ATen, i.e. cuBLAS.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>
#include <string>

#include "common/checks.h"
#include "common/cuda_glue.h"
#include "sparse_lowrank/kernels.cuh"
#include "sparse_lowrank/ops.h"

namespace weightkit::sparse_lowrank {
namespace {

namespace kern = weightkit::sparse_lowrank_cuda;

kern::Csr cuda_csr(const at::Tensor& row_ptr, const at::Tensor& col_idx, const float* values, int64_t rows,
                   int64_t cols) {
  kern::Csr s;
  s.row_ptr = row_ptr.data_ptr();
  s.col_idx = col_idx.data_ptr();
  s.row_ptr_64 = row_ptr.scalar_type() == at::kLong;
  s.col_idx_32 = col_idx.scalar_type() == at::kInt;
  s.values = values;
  s.rows = rows;
  s.cols = cols;
  return s;
}

// One small kernel and a 8-byte read back (a sync): an invalid index would otherwise make the
// sparse kernels read out of bounds. It only says whether there is a problem; check_support then
// names it with the CPU validator.
std::string validate_support_cuda(const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t rows, int64_t cols) {
  const c10::cuda::CUDAGuard guard(row_ptr.device());
  const at::Tensor rp = row_ptr.contiguous(), ci = col_idx.contiguous();
  at::Tensor problem = at::full({1}, std::numeric_limits<int64_t>::max(), rp.options().dtype(at::kLong));
  kern::validate_support(cuda_csr(rp, ci, nullptr, rows, cols), ci.numel(),
                         reinterpret_cast<long long*>(problem.data_ptr<int64_t>()), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return problem.item<int64_t>() == std::numeric_limits<int64_t>::max()
             ? std::string()
             : std::string("the device check found a problem (row_ptr or col_idx)");
}

void spmm_add_cuda(const SlArgs& a, const at::Tensor& x, at::Tensor& y) {
  const at::Tensor v = a.values.to(at::kFloat).contiguous();
  const at::Tensor XT = x.t().contiguous();
  at::Tensor YT = at::empty({a.out, a.T}, x.options().dtype(at::kFloat));
  kern::spmm(cuda_csr(a.row_ptr, a.col_idx, v.const_data_ptr<float>(), a.out, a.in), XT.const_data_ptr(),
             kernel_dtype(x.scalar_type()), a.T, YT.mutable_data_ptr<float>(), c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  y.add_(YT.t());
}

void sparse_backward_cuda(const SlArgs& a, const at::Tensor& g, const at::Tensor& x, at::Tensor* gx,
                          at::Tensor* gvals) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor v = a.values.to(at::kFloat).contiguous();
  const kern::Csr s = cuda_csr(a.row_ptr, a.col_idx, v.const_data_ptr<float>(), a.out, a.in);
  const at::Tensor GT = g.t().contiguous();
  if (gx != nullptr) {
    // fp32 atomics: the order of the sums, and so the last bits of grad_x, vary between runs.
    at::globalContext().alertNotDeterministic("weightkit.sl_linear_backward: grad_x of the CUDA sparse kernel");
    at::Tensor ZT = at::zeros({a.in, a.T}, g.options().dtype(at::kFloat));
    kern::spmm_t(s, GT.const_data_ptr(), kernel_dtype(g.scalar_type()), a.T, ZT.mutable_data_ptr<float>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gx->add_(ZT.t());
  }
  if (gvals != nullptr) {
    const at::Tensor XT = x.t().contiguous();
    at::Tensor out = at::empty({a.nnz}, g.options().dtype(at::kFloat));
    kern::sddmm(s, GT.const_data_ptr(), XT.const_data_ptr(), kernel_dtype(g.scalar_type()), a.T, a.nnz,
                out.mutable_data_ptr<float>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    *gvals = out.to(gvals->scalar_type());
  }
}

const SlDevice& cuda_device() {
  static const SlDevice dev = [] {
    SlDevice d;
    // An estimate, not yet calibrated on a GPU: the sparse kernels gather bf16 activations at
    // L2 bandwidth (~4 TMAC/s on an H100) against ~400 TMAC/s for cuBLAS's tensor-core GEMMs.
    d.sparse_cost = 100.0;
    d.validate_support = validate_support_cuda;
    d.spmm_add = spmm_add_cuda;
    d.sparse_backward = sparse_backward_cuda;
    return d;
  }();
  return dev;
}

at::Tensor sl_linear_cuda(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B, const at::Tensor& values,
                          const at::Tensor& row_ptr, const at::Tensor& col_idx,
                          const std::optional<at::Tensor>& bias, double scale) {
  const auto guard = device_guard_of(x);  // before the checks: x may be the CPU tensor
  return sl_linear(cuda_device(), x, A, B, values, row_ptr, col_idx, bias, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sl_linear_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& values, const at::Tensor& row_ptr, const at::Tensor& col_idx, double scale,
    std::array<bool, 4> output_mask) {
  const auto guard = device_guard_of(x);  // before the checks: x may be the CPU tensor
  return sl_linear_backward(cuda_device(), grad_out, x, A, B, values, row_ptr, col_idx, scale, output_mask);
}

at::Tensor sddmm_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_ptr,
                      const at::Tensor& col_idx) {
  const auto guard = device_guard_of(a);  // before the checks: a may be the CPU tensor
  check_sddmm_args(cuda_device(), a, b, row_ptr, col_idx);
  const at::Tensor rp = row_ptr.contiguous(), ci = col_idx.contiguous();
  const at::Tensor AT = a.t().contiguous(), BT = b.t().contiguous();
  at::Tensor out = at::empty({ci.numel()}, a.options().dtype(at::kFloat));
  kern::sddmm(cuda_csr(rp, ci, nullptr, a.size(1), b.size(1)), AT.const_data_ptr(), BT.const_data_ptr(),
              kernel_dtype(a.scalar_type()), a.size(0), ci.numel(), out.mutable_data_ptr<float>(),
              c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out.to(a.scalar_type());
}

}  // namespace
}  // namespace weightkit::sparse_lowrank

TORCH_LIBRARY_IMPL(weightkit, CUDA, m) {
  m.impl("sl_linear", &weightkit::sparse_lowrank::sl_linear_cuda);
  m.impl("sl_linear_backward", &weightkit::sparse_lowrank::sl_linear_backward_cuda);
  m.impl("sddmm", &weightkit::sparse_lowrank::sddmm_cuda);
}
