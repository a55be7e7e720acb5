// Device-independent part of the Newton–Schulz glue: argument checks, grouping by shape and the
// iteration itself, written over ATen products (MKL on CPU, cuBLAS on CUDA). ops.cpp and
// ops_cuda.cpp supply the device-specific pieces through NsDevice.
#pragma once

#include <ATen/core/Tensor.h>

#include <functional>
#include <optional>
#include <vector>

namespace weightkit::newton_schulz {

struct NsParams {
  int64_t steps = 0;
  std::vector<double> coeffs;  // 3 * steps values: (a, b, c) of each step
  double eps = 0.0;
  double norm_scale = 1.0;
  std::optional<at::ScalarType> compute_dtype;  // nullopt: each input's own dtype
};

NsParams check_params(const char* op, int64_t steps, c10::ArrayRef<double> coeffs, double eps, double norm_scale,
                      std::optional<at::ScalarType> compute_dtype);

struct NsDevice {
  // Copies `mats` (views of shape (m, n) or (b, m, n), m <= n, one dtype) into one contiguous
  // (B, m, n) buffer, each matrix divided by (||X||_F * norm_scale + eps) and stored in the
  // working dtype at compute precision.
  std::function<at::Tensor(const std::vector<at::Tensor>& mats, at::ScalarType compute, const NsParams& p)>
      stack_normalized;
  // Rounds a buffer to compute precision in place (a no-op when it is stored in that dtype).
  std::function<void(at::Tensor&, at::ScalarType compute)> round;
  // alpha * X X^T + beta * D for X (B, m, k) and D (B, m, m) (undefined D: no addend). The
  // result is symmetric, which a device may exploit (upper tiles only); unset: ATen products.
  std::function<at::Tensor(const at::Tensor& X, double alpha, const at::Tensor& D, double beta)> sym_product;
  // a X + B X for B (B, m, m) and X (B, m, n); unset: ATen products.
  std::function<at::Tensor(const at::Tensor& B, const at::Tensor& X, double a)> left_product;
  // The aspect ratio n / m from which AUTO picks the Gram form when the products run natively in
  // half precision (0: never). Its m x m state stays in fp32, so it trades the plain form's half-
  // precision m x n products for fp32 m x m ones: with r = (fp32 time) / (half time) of the same
  // product, 5 steps cost r (2 + 14 m / n) + 2 units of m^2 n against 10 + 5 m / n for the plain
  // form. Where the products run in fp32 (CPUs without fast bf16) r = 1 and the Gram form wins
  // from n = 2 m.
  double half_gram_min_aspect = 0.0;
  // The largest matrix (m * n elements; 0: none) whose batches, when they divide evenly among the
  // intra-op threads, are iterated as that many independent slices, one per thread (each product
  // single-threaded), instead of running every product multi-threaded: on a CPU, small products
  // split across cores waste much of their time in synchronization.
  int64_t split_batch_max_elements = 0;
};

// The products through ATen (bmm / baddbmm), for what a device's own kernels do not cover.
at::Tensor aten_sym_product(const at::Tensor& X, double alpha, const at::Tensor& D, double beta);
at::Tensor aten_left_product(const at::Tensor& B, const at::Tensor& X, double a);

// dev.sym_product / dev.left_product if set, else the ATen products.
at::Tensor sym_product(const NsDevice& dev, const at::Tensor& X, double alpha, const at::Tensor& D, double beta);
at::Tensor left_product(const NsDevice& dev, const at::Tensor& B, const at::Tensor& X, double a);

// The whole op over a list; newton_schulz is the one-element case.
std::vector<at::Tensor> run_grouped(const char* op, at::TensorList Gs, const NsParams& p, const NsDevice& dev);

// The quintic iteration on a normalized (B, m, n) buffer with m <= n.
at::Tensor iterate(at::Tensor X, const NsParams& p, at::ScalarType compute, const NsDevice& dev);

void check_auon_input(const at::Tensor& G, double eps);

}  // namespace weightkit::newton_schulz
