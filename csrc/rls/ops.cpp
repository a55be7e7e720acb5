// RLS glue: the device-independent Woodbury step (ops.h) and the CPU registration.
#include "rls/ops.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/checks.h"
#include "rls/cpu.h"

namespace weightkit::rls {

namespace {

bool is_float(at::ScalarType t) { return is_supported_float(t) || t == at::kDouble; }

// A NaN would poison C forever. (rls_init is offline: one wait for the device is cheap there.)
void check_finite(const char* op, const at::Tensor& t, const char* name) {
  WK_CHECK(op, at::isfinite(t).all().item<bool>(), name, " must be finite, got NaN or Inf entries");
}

void check_square(const char* op, const at::Tensor& t, const char* name) {
  WK_CHECK(op, t.dim() == 2 && t.size(0) == t.size(1), name, " must be a square 2-D matrix, got shape ",
           t.sizes());
}

}  // namespace

at::Tensor rls_init(const at::Tensor& gram, double lam, double mu) {
  constexpr const char* op = "rls_init";
  check_square(op, gram, "gram");
  WK_CHECK(op, gram.size(0) >= 1, "gram must be at least 1 x 1, got shape ", gram.sizes());
  WK_CHECK(op, is_float(gram.scalar_type()), "gram must be a float tensor, got ", gram.scalar_type());
  WK_CHECK(op, std::isfinite(lam) && std::isfinite(mu) && lam >= 0.0 && mu >= 0.0,
           "lam and mu must be finite and >= 0, got lam=", lam, " and mu=", mu);
  WK_CHECK(op, lam > 0.0 || mu > 0.0, "lam and mu must not both be 0 (the system would have no regularizer), got 0 and 0");
  check_finite(op, gram, "gram");
  const at::Tensor g = gram.to(at::kDouble);
  at::Tensor A = g.mul(mu);
  A.diagonal().add_(lam);
  // Symmetrize first: a Gram accumulated in fp32 pieces can be asymmetric in the last bits.
  A = (A + A.t()).mul_(0.5);
  auto [L, info] = at::linalg_cholesky_ex(A);
  WK_CHECK(op, info.item<int64_t>() == 0,
           "lam * I + mu * gram must be symmetric positive definite (gram a Gram matrix, lam > 0 "
           "or gram nonsingular), got a matrix whose Cholesky factorization fails at column ",
           info.item<int64_t>());
  at::Tensor C = at::cholesky_inverse(L);
  C = ((C + C.t()).mul_(0.5)).contiguous();
  WK_CHECK(op, at::isfinite(C).all().item<bool>(), "the inverse of lam * I + mu * gram overflows float64 (lam=", lam,
           ", mu=", mu, "): the system is too close to singular; raise lam");
  return C;
}

void rls_update(const RlsDevice& dev, at::Tensor& W, at::Tensor& C, const at::Tensor& K, const at::Tensor& V) {
  constexpr const char* op = "rls_update_";
  check_dims(op, W, "W", 2, 2);
  check_dims(op, K, "K", 2, 2);
  check_dims(op, V, "V", 2, 2);
  check_square(op, C, "C");
  WK_CHECK(op, C.scalar_type() == at::kDouble, "C must be float64 (the inverse Gram loses accuracy in lower precision), got ",
           C.scalar_type());
  WK_CHECK(op, C.is_contiguous(), "C must be contiguous, got strides ", C.strides());
  WK_CHECK(op, is_float(W.scalar_type()), "W must be float32, bfloat16, float16 or float64, got ", W.scalar_type());
  WK_CHECK(op, is_float(K.scalar_type()), "K must be a float tensor, got ", K.scalar_type());
  WK_CHECK(op, is_float(V.scalar_type()), "V must be a float tensor, got ", V.scalar_type());
  check_same_device(op, W, "W", C, "C");
  check_same_device(op, W, "W", K, "K");
  check_same_device(op, W, "W", V, "V");
  const int64_t d_v = W.size(0), d_k = W.size(1), u = K.size(0);
  WK_CHECK(op, C.size(0) == d_k, "C must be (d_k, d_k) = (", d_k, ", ", d_k, ") for W of shape ", W.sizes(),
           ", got shape ", C.sizes());
  WK_CHECK(op, K.size(1) == d_k, "K must be (u, d_k) with d_k = W.size(1) = ", d_k, ", got shape ", K.sizes());
  WK_CHECK(op, V.size(1) == d_v, "V must be (u, d_v) with d_v = W.size(0) = ", d_v, ", got shape ", V.sizes());
  WK_CHECK(op, V.size(0) == u, "K and V must hold the same number of rows u, got ", u, " keys and ", V.size(0),
           " values");
  WK_CHECK(op, u >= 1, "K must hold at least one key, got shape ", K.sizes());

  const at::Tensor Kd = K.to(at::kDouble), Vd = V.to(at::kDouble);
  // W in float64 for the residual and the update (W itself when already float64).
  const at::Tensor Wd = W.to(at::kDouble);
  const at::Tensor R = at::addmm(Vd, Kd, Wd.t(), 1.0, -1.0);  // (u, d_v) = V - K Wᵀ
  const at::Tensor F = at::mm(C, Kd.t());                     // (d_k, u)
  at::Tensor S = at::mm(Kd, F);                               // (u, u)
  S.diagonal().add_(1.0);
  S = (S + S.t()).mul_(0.5);
  auto [L, info] = at::linalg_cholesky_ex(S);
  const at::Tensor Ft = F.t().contiguous();
  // (u, d_k) = S⁻¹ Fᵀ = Gᵀ; garbage, and unused, if the factorization failed.
  const at::Tensor Gt = at::cholesky_solve(Ft, L).contiguous();
  // The new W, rounded to W's dtype, before anything is written: an update that overflows a
  // float16 W is refused instead of leaving C downdated and W infinite.
  const at::Tensor W_new = at::addmm(Wd, R.t(), Gt).to(W.scalar_type());
  // Every check that reads values, in one device-to-host copy (one wait for a GPU, not six);
  // reported in this order, so a NaN input is named as such rather than as a Cholesky failure.
  // F has u columns of C: a NaN/Inf in C almost surely reaches it, and checking F costs nothing.
  const at::Tensor ok = at::stack({at::isfinite(K).all(), at::isfinite(V).all(), at::isfinite(R).all(),
                                   at::isfinite(F).all(), info.eq(0), at::isfinite(W_new).all()}).cpu();
  const bool* passed = ok.const_data_ptr<bool>();
  WK_CHECK(op, passed[0], "K must be finite, got NaN or Inf entries");
  WK_CHECK(op, passed[1], "V must be finite, got NaN or Inf entries");
  WK_CHECK(op, passed[2], "W must be finite, got NaN or Inf entries");
  WK_CHECK(op, passed[3], "C must be finite, got NaN or Inf entries");
  WK_CHECK(op, passed[4], "I + K C Kᵀ must be positive definite (C symmetric positive definite, as rls_init makes "
           "it), got a Cholesky failure at column ", info.item<int64_t>());
  WK_CHECK(op, passed[5], "the update overflows W's dtype ", W.scalar_type(), " (its largest entries would not be "
           "finite); keep W in a wider type");
  // Nothing is written above this line: a refused call leaves W and C as they were.
  // C -= G Fᵀ, symmetrized, before W changes (a failed kernel launch then leaves W as it was).
  // G Fᵀ = F S⁻¹ Fᵀ is symmetric in exact arithmetic, so for symmetric C this is
  // C - (G Fᵀ + F Gᵀ) / 2, which the fused kernel forms bitwise symmetric in one
  // streaming pass (C from rls_init is bitwise symmetric and stays so).
  if (u <= kFusedMaxU) {
    dev.downdate_sym(C, Gt, Ft);
  } else {
    C.addmm_(Gt.t(), Ft, 1.0, -1.0);
    dev.symmetrize(C);
  }
  // W += Rᵀ Gᵀ, summed in float64 and rounded once to W's dtype (W_new above).
  W.copy_(W_new);
}

namespace {

void downdate_sym_cpu(at::Tensor& C, const at::Tensor& Gt, const at::Tensor& Ft) {
  rls_cpu::downdate_sym(C.data_ptr<double>(), Gt.const_data_ptr<double>(), Ft.const_data_ptr<double>(), C.size(0),
                        Gt.size(0));
}

void symmetrize_cpu(at::Tensor& C) { rls_cpu::symmetrize(C.data_ptr<double>(), C.size(0)); }

at::Tensor rls_init_cpu(const at::Tensor& gram, double lam, double mu) { return rls_init(gram, lam, mu); }

void rls_update_cpu(at::Tensor W, at::Tensor C, const at::Tensor& K, const at::Tensor& V) {
  static const RlsDevice dev{downdate_sym_cpu, symmetrize_cpu};
  rls_update(dev, W, C, K, V);
}

}  // namespace
}  // namespace weightkit::rls

TORCH_LIBRARY_IMPL(weightkit, CPU, m) {
  m.impl("rls_init", &weightkit::rls::rls_init_cpu);
  m.impl("rls_update_", &weightkit::rls::rls_update_cpu);
}
