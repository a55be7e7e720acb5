// Device-independent part of the sparse + low-rank glue: argument checks, the cost model that
// picks the execution path, and both paths written over ATen products (MKL on CPU, cuBLAS on
// CUDA). ops.cpp and ops_cuda.cpp supply the sparse kernels through SlDevice.
//
// The layer: y = x (B A s + S)^T + bias with x (..., in), A (r, in), B (out, r), s = alpha / r and
// S (out, in) given by `values` on the CSR support (row_ptr, col_idx).
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>
#include <string>
#include <tuple>

namespace weightkit::sparse_lowrank {

// Validated arguments: x flattened to a contiguous (T, in) matrix, everything else contiguous.
struct SlArgs {
  at::Tensor x, A, B, values, row_ptr, col_idx;
  std::optional<at::Tensor> bias;
  int64_t T = 0, in = 0, out = 0, rank = 0, nnz = 0;
};

struct SlDevice {
  // Cost of one multiply-add of the sparse kernels relative to one of a dense ATen product on
  // this device (the cost model's only device constant).
  double sparse_cost = 1.0;
  // Empty when the support is valid, else a description of a problem: the CPU's names the first
  // one (sparse_lowrank_cpu::validate_support); a GPU's may only say that there is one, and
  // check_support then asks the CPU to name it.
  std::function<std::string(const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t out, int64_t in)>
      validate_support;
  // y (T, out) += x (T, in) S^T.
  std::function<void(const SlArgs& a, const at::Tensor& x, at::Tensor& y)> spmm_add;
  // With gx defined: gx (T, in) += g (T, out) S. With gvals defined: gvals (nnz) = (g^T x) at
  // the support. One call so a device can share the layout work of both.
  std::function<void(const SlArgs& a, const at::Tensor& g, const at::Tensor& x, at::Tensor* gx, at::Tensor* gvals)>
      sparse_backward;
};

SlArgs check_args(const char* op, const SlDevice& dev, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& values, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                  const std::optional<at::Tensor>& bias);

enum class SlPath { Factored, Dense };

// The cheaper path by counted multiply-adds, the sparse ones weighted by `sparse_cost`; the
// environment variable WEIGHTKIT_SL_PATH=factored|dense overrides it (tests run both paths).
SlPath choose_path(const char* op, int64_t T, int64_t in, int64_t out, int64_t rank, int64_t nnz, bool backward,
                   double sparse_cost);

at::Tensor sl_linear(const SlDevice& dev, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                     const at::Tensor& values, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                     const std::optional<at::Tensor>& bias, double scale);

// Gradients of sl_linear (without the bias'), each an empty tensor where output_mask is false.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sl_linear_backward(
    const SlDevice& dev, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& values, const at::Tensor& row_ptr, const at::Tensor& col_idx, double scale,
    std::array<bool, 4> output_mask);

// Checks of the sddmm op's arguments: a (T, rows), b (T, cols), a CSR support of (rows, cols).
void check_sddmm_args(const SlDevice& dev, const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_ptr,
                      const at::Tensor& col_idx);

}  // namespace weightkit::sparse_lowrank
