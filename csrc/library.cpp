// Every weightkit op schema, in one list. Implementations register per device in
// csrc/<family>/ops.cpp (CPU) and csrc/<family>/ops_cuda.cpp (CUDA); fake (meta) kernels and
// autograd live beside the Python wrappers in python/weightkit/ops/<family>.py.
#include <torch/library.h>

TORCH_LIBRARY(weightkit, m) {
  // ---- newton_schulz: orthogonalization for Muon-style optimizers ---------------------------
  // G: (m, n) or (b, m, n), fp32/bf16/fp16. X0 = G / (||G||_F * norm_scale + eps) per matrix,
  // then `steps` odd quintic steps X <- a X + (b A + c A A) X with A = X X^T, computed in
  // compute_dtype (default: G's dtype) with fp32 accumulation. coeffs: 3 values (every step) or
  // 3 * steps values. Tall matrices are transposed internally. Returns G's shape and dtype.
  m.def("newton_schulz(Tensor G, int steps, float[] coeffs, float eps, float norm_scale=1.0, "
        "ScalarType? compute_dtype=None) -> Tensor");
  // The same over a list of matrices (any mix of shapes and dtypes, one device): same-shape
  // matrices are stacked and iterated as one batch.
  m.def("newton_schulz_grouped(Tensor[] Gs, int steps, float[] coeffs, float eps, "
        "float norm_scale=1.0, ScalarType? compute_dtype=None) -> Tensor[]");
  // AuON: X = G / (||G||_F + eps); r = RMS(cosh X); returns X / (r + 1e-8), per matrix.
  m.def("auon(Tensor G, float eps) -> Tensor");
}
