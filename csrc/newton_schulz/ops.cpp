#include "newton_schulz/ops.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <tuple>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "newton_schulz/cpu.h"
#include "newton_schulz/cpu_bf16_products.h"

namespace weightkit::newton_schulz {

NsParams check_params(const char* op, int64_t steps, c10::ArrayRef<double> coeffs, double eps, double norm_scale,
                      std::optional<at::ScalarType> compute_dtype) {
  // Newton-Schulz converges in a handful of steps (5 in Muon); the bound turns a mistyped count
  // into an error instead of a 3 * steps coefficient table that cannot be allocated.
  constexpr int64_t kMaxSteps = 10000;
  WK_CHECK(op, steps >= 1 && steps <= kMaxSteps, "steps must be in [1, ", kMaxSteps, "], got ", steps);
  WK_CHECK(op, coeffs.size() == 3 || static_cast<int64_t>(coeffs.size()) == 3 * steps,
           "coeffs must hold 3 values (used every step) or 3 * steps = ", 3 * steps, " values, got ",
           coeffs.size());
  for (double c : coeffs) WK_CHECK(op, std::isfinite(c), "coeffs must be finite, got ", coeffs);
  WK_CHECK(op, std::isfinite(eps) && eps >= 0.0, "eps must be finite and >= 0, got ", eps);
  WK_CHECK(op, std::isfinite(norm_scale) && norm_scale > 0.0, "norm_scale must be finite and > 0, got ", norm_scale);
  if (compute_dtype) {
    WK_CHECK(op, is_supported_float(*compute_dtype), "compute_dtype must be float32, bfloat16 or float16, got ",
             *compute_dtype);
  }
  NsParams p;
  p.steps = steps;
  p.coeffs.reserve(static_cast<size_t>(3 * steps));
  for (int64_t s = 0; s < steps; ++s)
    for (int64_t j = 0; j < 3; ++j) p.coeffs.push_back(coeffs.size() == 3 ? coeffs[j] : coeffs[3 * s + j]);
  p.eps = eps;
  p.norm_scale = norm_scale;
  p.compute_dtype = compute_dtype;
  return p;
}

at::Tensor aten_sym_product(const at::Tensor& X, double alpha, const at::Tensor& D, double beta) {
  // torch 2.13's CPU bf16 baddbmm (oneDNN, on AVX512-BF16 machines) returns NaN for alpha = 0 or
  // beta = 0 instead of dropping that term, so those cases never reach it.
  if (D.defined() && alpha == 0.0) return D.mul(beta);
  if (D.defined() && beta != 0.0) return at::baddbmm(D, X, X.mT(), beta, alpha);
  at::Tensor P = at::bmm(X, X.mT());
  return alpha == 1.0 ? P : P.mul_(alpha);
}

at::Tensor aten_left_product(const at::Tensor& B, const at::Tensor& X, double a) {
  return a == 0.0 ? at::bmm(B, X) : at::baddbmm(X, B, X, /*beta=*/a, /*alpha=*/1.0);  // see aten_sym_product
}

at::Tensor sym_product(const NsDevice& dev, const at::Tensor& X, double alpha, const at::Tensor& D, double beta) {
  return dev.sym_product ? dev.sym_product(X, alpha, D, beta) : aten_sym_product(X, alpha, D, beta);
}

at::Tensor left_product(const NsDevice& dev, const at::Tensor& B, const at::Tensor& X, double a) {
  return dev.left_product ? dev.left_product(B, X, a) : aten_left_product(B, X, a);
}

namespace {

// X X^T in fp32, unrounded, for X (B, m, k) in the working dtype: the Gram form's m x m state.
// Upcast first: a half-precision product would round R and erase its small eigenvalues.
at::Tensor gram_fp32(const at::Tensor& X) {
  const at::Tensor Xf = X.scalar_type() == at::kFloat ? X : X.to(at::kFloat);
  return at::bmm(Xf, Xf.mT());
}

// With fp32 products the Gram-form iteration pays off once the matrix is at least twice as wide
// as tall; below that the plain iteration is as cheap. With native half-precision products
// (`working`, the dtype X is stored in) it needs the device's wider aspect (NsDevice).
// WEIGHTKIT_NS_GRAM=always|never overrides (used by the tests).
bool use_gram_form(int64_t m, int64_t n, int64_t steps, at::ScalarType working, const NsDevice& dev) {
  const char* force = std::getenv("WEIGHTKIT_NS_GRAM");
  if (force && std::strcmp(force, "always") == 0) return true;
  if (force && std::strcmp(force, "never") == 0) return false;
  if (steps < 2) return false;
  if (working == at::kFloat) return n >= 2 * m;
  return dev.half_gram_min_aspect > 0.0 && static_cast<double>(n) >= dev.half_gram_min_aspect * static_cast<double>(m);
}

// Plain form: A = X X^T; B = b A + c A A; X = a X + B X.  4 m^2 n + 2 m^3 flops a step.
at::Tensor iterate_plain(at::Tensor X, const NsParams& p, at::ScalarType compute, const NsDevice& dev) {
  for (int64_t s = 0; s < p.steps; ++s) {
    const double a = p.coeffs[3 * s], b = p.coeffs[3 * s + 1], c = p.coeffs[3 * s + 2];
    at::Tensor A = sym_product(dev, X, 1.0, at::Tensor(), 0.0);
    dev.round(A, compute);
    // A is symmetric, so A A = A A^T: the same symmetric product, with b A fused in.
    at::Tensor B = sym_product(dev, A, c, A, b);
    dev.round(B, compute);
    X = left_product(dev, B, X, a);
    dev.round(X, compute);
  }
  return X;
}

// Gram form (for wide X, m << n): every iterate is X_k = Q_k X_0 with Q_k a polynomial in
// R_0 = X_0 X_0^T, so the steps run on m x m matrices only: Z = a I + b R + c R^2, Q <- Z Q,
// R <- Z R Z; one m x m x n product at the start and one at the end.
// Two measured hazards shape it. (1) Rounding R to bf16 erases the small eigenvalues
// (sigma^2 ~ 1e-6 of the largest): Polar Express then sent a sigma = 1e-3 ||G|| direction to
// 1.44, outside its band; so the m x m state stays in fp32 whatever the compute dtype, and only
// the m x n products run in it. (2) The m x m recursion drifts from the true Gram matrix
// (40-75x the plain form's error in fp32 on ill-conditioned inputs), so it restarts halfway
// (X_0 <- Q X_0, R <- X_0 X_0^T), which brings the error back to the plain form's level.
at::Tensor iterate_gram(at::Tensor X, const NsParams& p, at::ScalarType compute, const NsDevice& dev) {
  const int64_t restart_at = (p.steps + 1) / 2;
  // Q is dead after each use, so rounding it in place is safe.
  auto apply = [&](const at::Tensor& Q, const at::Tensor& X0) {
    at::Tensor Qc = Q.to(X0.scalar_type());
    dev.round(Qc, compute);
    at::Tensor Y = at::bmm(Qc, X0);
    dev.round(Y, compute);
    return Y;
  };
  at::Tensor R = gram_fp32(X);
  at::Tensor Q;
  for (int64_t s = 0; s < p.steps; ++s) {
    const double a = p.coeffs[3 * s], b = p.coeffs[3 * s + 1], c = p.coeffs[3 * s + 2];
    at::Tensor Z = at::baddbmm(R, R, R, /*beta=*/b, /*alpha=*/c);
    Z.diagonal(0, -2, -1).add_(a);
    Q = Q.defined() ? at::bmm(Z, Q) : Z;
    if (s + 1 == p.steps) break;
    if (s + 1 == restart_at) {
      X = apply(Q, X);
      R = gram_fp32(X);
      Q = at::Tensor();
    } else {
      R = at::bmm(Z, at::bmm(R, Z));
    }
  }
  return apply(Q, X);
}

}  // namespace

at::Tensor iterate(at::Tensor X, const NsParams& p, at::ScalarType compute, const NsDevice& dev) {
  const bool gram = use_gram_form(X.size(1), X.size(2), p.steps, X.scalar_type(), dev);
  const auto run = [&](at::Tensor Xs) {
    return gram ? iterate_gram(std::move(Xs), p, compute, dev) : iterate_plain(std::move(Xs), p, compute, dev);
  };
  const int64_t threads = at::get_num_threads(), batch = X.size(0);
  if (threads < 2 || batch % threads != 0 || X.size(1) * X.size(2) > dev.split_batch_max_elements)
    return run(std::move(X));
  // Inside the parallel region ATen and its BLAS run single-threaded.
  at::Tensor out = at::empty_like(X);
  const int64_t per = batch / threads;
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) out.narrow(0, t * per, per).copy_(run(X.narrow(0, t * per, per)));
  });
  return out;
}

std::vector<at::Tensor> run_grouped(const char* op, at::TensorList Gs, const NsParams& p, const NsDevice& dev) {
  std::vector<at::Tensor> out(Gs.size());
  if (Gs.empty()) return out;
  // Group key: oriented (m <= n) shape, input dtype. Same-shape matrices become one batch.
  using Key = std::tuple<int64_t, int64_t, int>;
  std::map<Key, std::vector<size_t>> groups;
  for (size_t i = 0; i < Gs.size(); ++i) {
    const at::Tensor& G = Gs[i];
    const std::string name = "Gs[" + std::to_string(i) + "]";
    check_dims(op, G, name.c_str(), 2, 3);
    check_float_dtype(op, G, name.c_str());
    check_same_device(op, G, name.c_str(), Gs[0], "Gs[0]");
    if (G.numel() == 0) {
      out[i] = at::empty_like(G, at::MemoryFormat::Contiguous);
      continue;
    }
    const int64_t r = G.size(-2), c = G.size(-1);
    groups[Key{std::min(r, c), std::max(r, c), static_cast<int>(G.scalar_type())}].push_back(i);
  }
  for (const auto& [key, members] : groups) {
    const at::ScalarType in_dtype = Gs[members[0]].scalar_type();
    const at::ScalarType compute = p.compute_dtype.value_or(in_dtype);
    std::vector<at::Tensor> mats;
    mats.reserve(members.size());
    for (size_t i : members) {
      const at::Tensor& G = Gs[i];
      mats.push_back(G.size(-2) > G.size(-1) ? G.mT() : G);
    }
    const at::Tensor X = iterate(dev.stack_normalized(mats, compute, p), p, compute, dev);
    int64_t offset = 0;
    for (size_t i : members) {
      const at::Tensor& G = Gs[i];
      const int64_t count = G.dim() == 3 ? G.size(0) : 1;
      at::Tensor Y = X.narrow(0, offset, count);
      offset += count;
      if (G.dim() == 2) Y = Y.squeeze(0);
      if (G.size(-2) > G.size(-1)) Y = Y.mT();
      // One pass per matrix converts to the input dtype and makes it contiguous. Outputs of a
      // custom op must not alias one another, so with several matrices it is always a copy. A
      // transposed (tall) result needs the copy too: where no dtype changes (fp32 working dtype,
      // e.g. bf16 compute on a CPU without bf16 units) `to` would return the strided view as it is.
      const bool copy = members.size() > 1 || !Y.is_contiguous();
      out[i] = Y.to(in_dtype, /*non_blocking=*/false, copy, at::MemoryFormat::Contiguous);
    }
  }
  return out;
}

void check_auon_input(const at::Tensor& G, double eps) {
  check_dims("auon", G, "G", 2, 3);
  check_float_dtype("auon", G, "G");
  WK_CHECK("auon", std::isfinite(eps) && eps >= 0.0, "eps must be finite and >= 0, got ", eps);
}

namespace {

using newton_schulz_cpu::Rounding;

Rounding rounding_for(at::ScalarType compute) {
  if (compute == at::kBFloat16) return Rounding::BFloat16;
  if (compute == at::kHalf) return Rounding::Half;
  return Rounding::None;
}

// Native bf16 products only where the CPU has bf16 units; elsewhere fp32 products on values
// rounded to the compute dtype give the same arithmetic, much faster.
at::ScalarType cpu_working_dtype(at::ScalarType compute) {
  return compute == at::kBFloat16 && cpu_has_fast_bf16() ? at::kBFloat16 : at::kFloat;
}

NsDevice cpu_device(const char* op) {
  const CpuIsa isa = selected_cpu_isa(op);
  NsDevice dev;
  dev.stack_normalized = [isa](const std::vector<at::Tensor>& mats, at::ScalarType compute, const NsParams& p) {
    std::vector<at::Tensor> parts;
    parts.reserve(mats.size());
    for (const auto& M : mats) parts.push_back(M.dim() == 2 ? M.unsqueeze(0) : M);
    at::Tensor X = at::cat(parts, 0).to(at::kFloat).contiguous();
    const int64_t per = X.size(1) * X.size(2);
    float* data = X.data_ptr<float>();
    for (int64_t i = 0; i < X.size(0); ++i) {
      const double norm = std::sqrt(newton_schulz_cpu::sum_squares(data + i * per, per, isa));
      const float s = static_cast<float>(1.0 / (norm * p.norm_scale + p.eps));
      newton_schulz_cpu::scale_round(data + i * per, per, s, rounding_for(compute), isa);
    }
    const at::ScalarType working = cpu_working_dtype(compute);
    return working == at::kFloat ? X : X.to(working);
  };
  // Native bf16 products run ~2.4x as fast as fp32 ones on the AVX512-BF16 EPYC (1024 x 4096,
  // X X^T: 22 vs 53 ms), so the cost model (NsDevice) puts the crossover at n ~ 10 m; measured
  // there, 5 steps in bf16 through ATen: Gram / plain time 1.23 at n = 4 m, 1.01-1.07 at 8 m,
  // 0.79 at 16 m. Our own bf16 products (below) halve X X^T, which moves it out again: Gram /
  // plain 1.26-1.49 at n = 8 m, 1.03-1.40 at 16 m, 0.78 at 32 m (256 x 8192), 2 threads.
  const bool own_bf16_products = newton_schulz_cpu::bf16_products_available(isa);
  dev.half_gram_min_aspect = own_bf16_products ? 32.0 : 10.0;
  // The small model's parameter set (16 matrices of 256 x 256..1024, batches of 4 and 8) on the
  // AVX512-BF16 EPYC, 2 threads: a (4, 256, 256) bf16 product took 0.61 ms multi-threaded and
  // 0.33 ms as two single-threaded halves side by side. Only small matrices: at GPT-2 124M's
  // (12..24, 768, 768..3072) each thread's slices outgrow the caches and the set ran 0.83x.
  dev.split_batch_max_elements = int64_t{1} << 18;  // 256 x 1024
  if (own_bf16_products) {
    dev.sym_product = [](const at::Tensor& X, double alpha, const at::Tensor& D, double beta) {
      TORCH_INTERNAL_ASSERT(X.dim() == 3);
      if (X.scalar_type() != at::kBFloat16 || X.size(1) * X.size(2) > newton_schulz_cpu::kBf16ProductsMaxLeft)
        return aten_sym_product(X, alpha, D, beta);
      // D is A itself (symmetric: only its upper triangle is read).
      TORCH_INTERNAL_ASSERT(X.is_contiguous());
      TORCH_INTERNAL_ASSERT(!D.defined() || (D.is_contiguous() && D.scalar_type() == at::kBFloat16));
      const int64_t batch = X.size(0), m = X.size(1), k = X.size(2);
      at::Tensor C = at::empty({batch, m, m}, X.options());
      newton_schulz_cpu::sym_product_bf16(X.const_data_ptr<at::BFloat16>(),
                                          D.defined() ? D.const_data_ptr<at::BFloat16>() : nullptr,
                                          C.mutable_data_ptr<at::BFloat16>(), batch, m, k, static_cast<float>(alpha),
                                          static_cast<float>(beta));
      return C;
    };
    dev.left_product = [](const at::Tensor& B, const at::Tensor& X, double a) {
      TORCH_INTERNAL_ASSERT(X.dim() == 3 && B.dim() == 3);
      if (X.scalar_type() != at::kBFloat16 || B.size(1) * B.size(2) > newton_schulz_cpu::kBf16ProductsMaxLeft)
        return aten_left_product(B, X, a);
      TORCH_INTERNAL_ASSERT(X.is_contiguous() && B.is_contiguous() && B.scalar_type() == at::kBFloat16);
      at::Tensor Y = at::empty_like(X);
      newton_schulz_cpu::left_product_bf16(B.const_data_ptr<at::BFloat16>(), X.const_data_ptr<at::BFloat16>(),
                                           Y.mutable_data_ptr<at::BFloat16>(), X.size(0), X.size(1), X.size(2),
                                           static_cast<float>(a));
      return Y;
    };
  }
  dev.round = [isa](at::Tensor& T, at::ScalarType compute) {
    if (T.scalar_type() != at::kFloat) return;
    const Rounding r = rounding_for(compute);
    if (r == Rounding::None) return;
    TORCH_INTERNAL_ASSERT(T.is_contiguous());
    newton_schulz_cpu::scale_round(T.data_ptr<float>(), T.numel(), 1.f, r, isa);
  };
  return dev;
}

at::Tensor newton_schulz_cpu_impl(const at::Tensor& G, int64_t steps, at::ArrayRef<double> coeffs, double eps,
                                  double norm_scale, std::optional<at::ScalarType> compute_dtype) {
  const NsParams p = check_params("newton_schulz", steps, coeffs, eps, norm_scale, compute_dtype);
  check_dims("newton_schulz", G, "G", 2, 3);
  check_float_dtype("newton_schulz", G, "G");
  return run_grouped("newton_schulz", {G}, p, cpu_device("newton_schulz"))[0];
}

std::vector<at::Tensor> newton_schulz_grouped_cpu_impl(at::TensorList Gs, int64_t steps, at::ArrayRef<double> coeffs,
                                                       double eps, double norm_scale,
                                                       std::optional<at::ScalarType> compute_dtype) {
  const NsParams p = check_params("newton_schulz_grouped", steps, coeffs, eps, norm_scale, compute_dtype);
  return run_grouped("newton_schulz_grouped", Gs, p, cpu_device("newton_schulz_grouped"));
}

at::Tensor auon_cpu_impl(const at::Tensor& G, double eps) {
  check_auon_input(G, eps);
  const CpuIsa isa = selected_cpu_isa("auon");
  if (G.numel() == 0) return at::empty_like(G, at::MemoryFormat::Contiguous);
  at::Tensor X = G.to(G.options().dtype(at::kFloat), /*non_blocking=*/false, /*copy=*/true,
                      at::MemoryFormat::Contiguous);
  const int64_t per = X.size(-2) * X.size(-1);
  const int64_t count = X.numel() / per;
  float* data = X.data_ptr<float>();
  for (int64_t i = 0; i < count; ++i) {
    float* x = data + i * per;
    const double s = 1.0 / (std::sqrt(newton_schulz_cpu::sum_squares(x, per, isa)) + eps);
    const double rms_cosh = std::sqrt(newton_schulz_cpu::sum_cosh_squares(x, per, static_cast<float>(s), isa) /
                                      static_cast<double>(per));
    newton_schulz_cpu::scale_round(x, per, static_cast<float>(s / (rms_cosh + 1e-8)), Rounding::None, isa);
  }
  return X.scalar_type() == G.scalar_type() ? X : X.to(G.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(weightkit, CPU, m) {
  m.impl("newton_schulz", &newton_schulz_cpu_impl);
  m.impl("newton_schulz_grouped", &newton_schulz_grouped_cpu_impl);
  m.impl("auon", &auon_cpu_impl);
}

}  // namespace weightkit::newton_schulz
