// Palette glue: argument checks, dtype handling and the CPU registrations of the Hadamard
// transform and the codebook quantizer ops (see cpu.h for the packed code layout).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstring>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "palette/cpu.h"
#include "palette/hadamard_matrix.h"
#include "palette/ops.h"
#include "palette/tcq.h"

namespace weightkit::palette {

int check_hadamard_args(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& signs) {
  WK_CHECK(op, is_supported_float(x.scalar_type()) || x.scalar_type() == at::kDouble,
           "x must be float32, bfloat16, float16 or float64, got ", x.scalar_type());
  WK_CHECK(op, x.dim() >= 1, "x must have at least 1 dimension, got a 0-d tensor");
  const int64_t n = x.size(-1);
  const int m = hadamard_split(n);
  WK_CHECK(op, m > 0, "the last dimension must be 2^k * m with m in {", supported_orders(), "}, got ", n);
  if (signs.has_value()) {
    WK_CHECK(op, signs->dim() == 1 && signs->size(0) == n, "signs must have shape (", n, "), got ",
             signs->sizes());
    WK_CHECK(op, signs->is_floating_point(), "signs must be a float tensor, got ", signs->scalar_type());
    check_same_device(op, x, "x", *signs, "signs");
  }
  return m;
}

const at::Tensor& small_hadamard_tensor(int m) {
  // One int8 copy per order, built on first use and kept (a few KiB each).
  static std::mutex mu;
  static std::map<int, at::Tensor> cache;
  const std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(m);
  if (it == cache.end()) {
    const std::vector<int8_t> H = small_hadamard(m);
    at::Tensor t = at::empty({m, m}, at::kChar);
    std::memcpy(t.data_ptr<int8_t>(), H.data(), H.size());
    it = cache.emplace(m, t).first;
  }
  return it->second;
}

at::Tensor hadamard_aten(const at::Tensor& x, const std::optional<at::Tensor>& signs, double scale, int m) {
  const int64_t n = x.size(-1), P = n / m, rows = x.numel() / std::max<int64_t>(n, 1);
  at::Tensor v = x.to(at::kFloat);
  if (signs.has_value()) v = v * signs->to(at::kFloat);
  // Column a * P + b of H_n = H_m (x) H_P holds H_m[a, .] and H_P[b, .]: H_P is the butterfly
  // (natural, Sylvester order) over b, then H_m multiplies the a axis.
  v = v.reshape({rows, m, P});
  for (int64_t h = 1; h < P; h *= 2) {
    const at::Tensor pairs = v.view({rows, m, P / (2 * h), 2, h});
    const at::Tensor lo = pairs.select(3, 0), hi = pairs.select(3, 1);
    v = at::stack({lo + hi, lo - hi}, 3).view({rows, m, P});
  }
  if (m > 1) v = at::matmul(small_hadamard_tensor(m).to(v.device(), at::kFloat), v);
  return (v * scale).view(x.sizes()).to(x.scalar_type());
}

bool force_hadamard_aten(const char* op) {
  return env_choice(op, "WEIGHTKIT_HADAMARD_PATH", {"kernel", "aten"}) == 1;
}

int code_bits_of(const char* op, const at::Tensor& codebook) {
  check_dims(op, codebook, "codebook", 2, 2);
  WK_CHECK(op, codebook.scalar_type() == at::kFloat, "codebook must be float32, got ", codebook.scalar_type());
  const int64_t K = codebook.size(0), d = codebook.size(1);
  WK_CHECK(op, d == 1 || d == 2, "codebook must have shape (2^c, d) with d = 1 or 2, got ", codebook.sizes());
  int c = 0;
  while ((int64_t(1) << c) < K) ++c;
  WK_CHECK(op, K >= 2 && K <= 256 && (int64_t(1) << c) == K,
           "codebook must hold 2^c codewords with 1 <= c <= 8, got ", K);
  return c;
}

void check_packed(const char* op, const at::Tensor& packed, const at::Tensor& codebook, const at::Tensor& scales,
                  int64_t in_features, int c) {
  check_dims(op, packed, "packed", 2, 2);
  WK_CHECK(op, packed.scalar_type() == at::kInt, "packed must be int32, got ", packed.scalar_type());
  const int64_t d = codebook.size(1);
  WK_CHECK(op, in_features > 0 && in_features % d == 0, "in_features must be a positive multiple of the codeword "
           "dimension ", d, ", got ", in_features);
  const int64_t units = in_features / d, words = palette_cpu::num_blocks(units, c) * 16;
  WK_CHECK(op, packed.size(1) == words, "packed must have ", words, " columns for ", in_features,
           " inputs with ", c, "-bit codes of dimension ", d, " (codebook ", codebook.sizes(), "), got ",
           packed.sizes());
  WK_CHECK(op, scales.dim() == 1 && scales.size(0) == packed.size(0) && scales.scalar_type() == at::kFloat,
           "scales must be float32 of shape (", packed.size(0), "), got ", scales.scalar_type(), " ",
           scales.sizes());
  check_same_device(op, packed, "packed", codebook, "codebook");
  check_same_device(op, packed, "packed", scales, "scales");
}

void check_tcq_params(const char* op, int64_t L, int64_t kb, int64_t V) {
  WK_CHECK(op, V == 1 || V == 2, "values_per_step must be 1 or 2, got ", V);
  WK_CHECK(op, kb >= 1 && kb <= 8, "bits_per_step must be in [1, 8], got ", kb);
  WK_CHECK(op, L > kb && L <= 20, "L (trellis state bits) must be in [bits_per_step + 1, 20], got ", L);
}

int64_t check_tcq_encode_args(const char* op, const at::Tensor& W, int64_t L, int64_t kb, int64_t V) {
  check_tcq_params(op, L, kb, V);
  check_dims(op, W, "W", 2, 2);
  WK_CHECK(op, W.scalar_type() == at::kFloat, "W must be float32, got ", W.scalar_type());
  WK_CHECK(op, W.size(1) % V == 0 && W.size(1) > 0, "W's columns must be a positive multiple of values_per_step ",
           V, ", got ", W.sizes());
  WK_CHECK(op, at::isfinite(W).all().item<bool>(), "W must be finite (it has NaN or Inf)");
  return W.size(1) / V;
}

int64_t check_tcq_window_args(const char* op, const at::Tensor& W, const at::Tensor& prev, int64_t L, int64_t kb,
                              int64_t V, int64_t commit) {
  const int64_t steps = check_tcq_encode_args(op, W, L, kb, V);
  WK_CHECK(op, prev.dim() == 1 && prev.size(0) == W.size(0) && prev.scalar_type() == at::kInt,
           "prev must be int32 of shape (", W.size(0), "), got ", prev.scalar_type(), " ", prev.sizes());
  check_same_device(op, W, "W", prev, "prev");
  if (prev.numel() > 0) {
    const auto [lo, hi] = at::aminmax(prev);
    WK_CHECK(op, lo.item<int32_t>() >= -1 && hi.item<int64_t>() < (int64_t(1) << L),
             "prev must hold states in [0, 2^L) or -1 (free start), got values in [", lo.item<int32_t>(), ", ",
             hi.item<int32_t>(), "]");
  }
  WK_CHECK(op, commit >= 1 && commit <= steps, "commit must be in [1, ", steps, "] (the window's steps), got ",
           commit);
  return steps;
}

int64_t check_tcq_decode_args(const char* op, const at::Tensor& packed, const at::Tensor& scales,
                              int64_t in_features, int64_t L, int64_t kb, int64_t V) {
  check_tcq_params(op, L, kb, V);
  check_dims(op, packed, "packed", 2, 2);
  WK_CHECK(op, packed.scalar_type() == at::kInt, "packed must be int32, got ", packed.scalar_type());
  WK_CHECK(op, in_features > 0 && in_features % V == 0, "in_features must be a positive multiple of "
           "values_per_step ", V, ", got ", in_features);
  const int64_t steps = in_features / V, words = tcq::tcq_words(steps, L, kb);
  WK_CHECK(op, packed.size(1) == words, "packed must have ", words, " columns for ", in_features, " inputs (L=", L,
           ", bits_per_step=", kb, ", values_per_step=", V, "), got ", packed.sizes());
  WK_CHECK(op, scales.dim() == 1 && scales.size(0) == packed.size(0) && scales.scalar_type() == at::kFloat,
           "scales must be float32 of shape (", packed.size(0), "), got ", scales.scalar_type(), " ", scales.sizes());
  check_same_device(op, packed, "packed", scales, "scales");
  return steps;
}

int64_t check_matmul_x(const char* op, const at::Tensor& x, const at::Tensor& packed, int64_t in_features,
                       std::vector<int64_t>& out_shape) {
  check_float_dtype(op, x, "x");
  WK_CHECK(op, x.dim() >= 1 && x.size(-1) == in_features, "x must have shape (..., ", in_features, "), got ",
           x.sizes());
  check_same_device(op, x, "x", packed, "packed");
  out_shape.assign(x.sizes().begin(), x.sizes().end());
  out_shape.back() = packed.size(0);
  return x.numel() / in_features;  // in_features > 0: checked with packed
}

namespace {

at::Tensor hadamard_transform_cpu(const at::Tensor& x, const std::optional<at::Tensor>& signs, double scale) {
  const char* op = "hadamard_transform";
  const int m = check_hadamard_args(op, x, signs);
  const int64_t n = x.size(-1);
  if (x.numel() == 0) return at::empty_like(x, at::MemoryFormat::Contiguous);
  if (force_hadamard_aten(op)) return hadamard_aten(x, signs, scale, m);
  at::Tensor xf = x.to(at::kFloat).contiguous();
  at::Tensor y = at::empty_like(xf);
  at::Tensor s;
  if (signs.has_value()) s = signs->to(at::kFloat).contiguous();
  palette_cpu::hadamard_rows(xf.data_ptr<float>(), y.data_ptr<float>(), xf.numel() / n, n, m,
                             small_hadamard_tensor(m).data_ptr<int8_t>(), s.defined() ? s.data_ptr<float>() : nullptr,
                             static_cast<float>(scale), selected_cpu_isa(op));
  return y.to(x.scalar_type());
}

at::Tensor palette_encode_cpu(const at::Tensor& W, const at::Tensor& codebook) {
  const char* op = "palette_encode";
  check_dims(op, W, "W", 2, 2);
  WK_CHECK(op, W.scalar_type() == at::kFloat, "W must be float32, got ", W.scalar_type());
  code_bits_of(op, codebook);
  const int64_t d = codebook.size(1);
  WK_CHECK(op, W.size(1) % d == 0, "W's columns must be a multiple of the codeword dimension ", d, ", got ",
           W.sizes());
  WK_CHECK(op, at::isfinite(W).all().item<bool>(), "W must be finite (it has NaN or Inf)");
  // Refused, not skipped: d = 2 would never pick a NaN codeword, and d = 1 sorts the codewords,
  // which a NaN leaves without an order.
  WK_CHECK(op, at::isfinite(codebook).all().item<bool>(), "codebook must be finite (it has NaN or Inf)");
  const at::Tensor Wc = W.contiguous(), cb = codebook.contiguous();
  at::Tensor idx = at::empty({W.size(0), W.size(1) / d}, W.options().dtype(at::kInt));
  palette_cpu::encode_nearest(Wc.data_ptr<float>(), W.size(0), W.size(1) / d, static_cast<int>(d),
                              cb.data_ptr<float>(), static_cast<int>(cb.size(0)), idx.data_ptr<int32_t>());
  return idx;
}

at::Tensor palette_pack_cpu(const at::Tensor& idx, int64_t code_bits) {
  const char* op = "palette_pack";
  check_dims(op, idx, "idx", 2, 2);
  WK_CHECK(op, idx.scalar_type() == at::kInt, "idx must be int32, got ", idx.scalar_type());
  WK_CHECK(op, code_bits >= 1 && code_bits <= 8, "code_bits must be in [1, 8], got ", code_bits);
  const at::Tensor ic = idx.contiguous();
  if (ic.numel() > 0) {
    WK_CHECK(op, ic.min().item<int32_t>() >= 0 && ic.max().item<int32_t>() < (1 << code_bits),
             "idx values must be in [0, 2^code_bits) = [0, ", (1 << code_bits), "), got [", ic.min().item<int32_t>(),
             ", ", ic.max().item<int32_t>(), "]");
  }
  const int c = static_cast<int>(code_bits);
  at::Tensor packed = at::empty({idx.size(0), palette_cpu::num_blocks(idx.size(1), c) * 16}, ic.options());
  palette_cpu::pack_codes(ic.data_ptr<int32_t>(), idx.size(0), idx.size(1), c, packed.data_ptr<int32_t>());
  return packed;
}

at::Tensor dequantize_impl(const at::Tensor& packed, const at::Tensor& codebook, const at::Tensor& scales,
                           int64_t in_features, int c) {
  const int64_t d = codebook.size(1);
  const at::Tensor pc = packed.contiguous(), cb = codebook.contiguous(), sc = scales.contiguous();
  at::Tensor W = at::empty({packed.size(0), in_features}, codebook.options());
  palette_cpu::dequantize(pc.data_ptr<int32_t>(), packed.size(0), in_features / d, c, static_cast<int>(d),
                          cb.data_ptr<float>(), sc.data_ptr<float>(), W.data_ptr<float>());
  return W;
}

at::Tensor palette_dequantize_cpu(const at::Tensor& packed, const at::Tensor& codebook, const at::Tensor& scales,
                                  int64_t in_features) {
  const char* op = "palette_dequantize";
  const int c = code_bits_of(op, codebook);
  check_packed(op, packed, codebook, scales, in_features, c);
  return dequantize_impl(packed, codebook, scales, in_features, c);
}

at::Tensor palette_matmul_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& codebook,
                              const at::Tensor& scales, int64_t in_features) {
  const char* op = "palette_matmul";
  const int c = code_bits_of(op, codebook);
  check_packed(op, packed, codebook, scales, in_features, c);
  std::vector<int64_t> out_shape;
  const int64_t rows = packed.size(0), T = check_matmul_x(op, x, packed, in_features, out_shape);
  if (use_gemv(op, T)) {
    const at::Tensor pc = packed.contiguous(), cb = codebook.contiguous(), sc = scales.contiguous();
    return gemv_matmul(x, T, in_features, rows, out_shape, [&](const at::Tensor& xf, at::Tensor& y) {
      palette_cpu::gemv(xf.data_ptr<float>(), T, pc.data_ptr<int32_t>(), rows, in_features / codebook.size(1), c,
                        static_cast<int>(codebook.size(1)), cb.data_ptr<float>(), sc.data_ptr<float>(),
                        y.data_ptr<float>(), selected_cpu_isa(op), allow_int8_vq(op));
    });
  }
  const at::Tensor W = dequantize_impl(packed, codebook, scales, in_features, c).to(x.scalar_type());
  return at::matmul(x, W.t());
}

at::Tensor tcq_encode_cpu(const at::Tensor& W, int64_t L, int64_t kb, int64_t V) {
  const char* op = "tcq_encode";
  const int64_t steps = check_tcq_encode_args(op, W, L, kb, V);
  const at::Tensor Wc = W.contiguous();
  at::Tensor packed = at::empty({W.size(0), tcq::tcq_words(steps, L, kb)}, W.options().dtype(at::kInt));
  tcq::encode(Wc.data_ptr<float>(), W.size(0), steps, static_cast<int>(L), static_cast<int>(kb), static_cast<int>(V),
              packed.data_ptr<int32_t>(), selected_cpu_isa(op));
  return packed;
}

at::Tensor tcq_encode_window_cpu(const at::Tensor& W, const at::Tensor& prev, int64_t L, int64_t kb, int64_t V,
                                 int64_t commit) {
  const char* op = "tcq_encode_window";
  const int64_t steps = check_tcq_window_args(op, W, prev, L, kb, V, commit);
  const at::Tensor Wc = W.contiguous(), pc = prev.contiguous();
  at::Tensor states = at::empty({W.size(0), commit}, W.options().dtype(at::kInt));
  tcq::encode_window(Wc.data_ptr<float>(), pc.data_ptr<int32_t>(), W.size(0), steps, static_cast<int>(L),
                     static_cast<int>(kb), static_cast<int>(V), commit, states.data_ptr<int32_t>(),
                     selected_cpu_isa(op));
  return states;
}

// W (rows, in_features) float32 from checked arguments.
at::Tensor tcq_decode_impl(const at::Tensor& packed, const at::Tensor& scales, int64_t in_features, int64_t steps,
                           int64_t L, int64_t kb, int64_t V) {
  const at::Tensor pc = packed.contiguous(), sc = scales.contiguous();
  at::Tensor W = at::empty({packed.size(0), in_features}, scales.options());
  tcq::decode(pc.data_ptr<int32_t>(), packed.size(0), steps, static_cast<int>(L), static_cast<int>(kb),
              static_cast<int>(V), sc.data_ptr<float>(), W.data_ptr<float>());
  return W;
}

at::Tensor tcq_decode_cpu(const at::Tensor& packed, const at::Tensor& scales, int64_t in_features, int64_t L,
                          int64_t kb, int64_t V) {
  const int64_t steps = check_tcq_decode_args("tcq_decode", packed, scales, in_features, L, kb, V);
  return tcq_decode_impl(packed, scales, in_features, steps, L, kb, V);
}

// Up to kGemvMaxTokens tokens: the trellis GEMV decodes in registers; more: decode W once, GEMM.
at::Tensor tcq_matmul_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales, int64_t in_features,
                          int64_t L, int64_t kb, int64_t V) {
  const char* op = "tcq_matmul";
  const int64_t steps = check_tcq_decode_args(op, packed, scales, in_features, L, kb, V);
  std::vector<int64_t> out_shape;
  const int64_t rows = packed.size(0), T = check_matmul_x(op, x, packed, in_features, out_shape);
  if (use_gemv(op, T)) {
    const at::Tensor pc = packed.contiguous(), sc = scales.contiguous();
    return gemv_matmul(x, T, in_features, rows, out_shape, [&](const at::Tensor& xf, at::Tensor& y) {
      tcq::gemv(xf.data_ptr<float>(), T, pc.data_ptr<int32_t>(), rows, steps, static_cast<int>(L),
                static_cast<int>(kb), static_cast<int>(V), sc.data_ptr<float>(), y.data_ptr<float>(),
                selected_cpu_isa(op));
    });
  }
  const at::Tensor W = tcq_decode_impl(packed, scales, in_features, steps, L, kb, V).to(x.scalar_type());
  return at::matmul(x, W.t());
}

}  // namespace

bool use_gemv(const char* op, int64_t tokens) {
  const int forced = env_choice(op, "WEIGHTKIT_PALETTE_PATH", {"gemv", "dense"});
  return forced < 0 ? tokens <= kGemvMaxTokens : forced == 0;
}

bool allow_int8_vq(const char* op) {
  return env_choice(op, "WEIGHTKIT_PALETTE_VQ_INT8", {"0", "1"}) != 0;
}

}  // namespace weightkit::palette

TORCH_LIBRARY_IMPL(weightkit, CPU, m) {
  m.impl("hadamard_transform", &weightkit::palette::hadamard_transform_cpu);
  m.impl("palette_encode", &weightkit::palette::palette_encode_cpu);
  m.impl("palette_pack", &weightkit::palette::palette_pack_cpu);
  m.impl("palette_dequantize", &weightkit::palette::palette_dequantize_cpu);
  m.impl("palette_matmul", &weightkit::palette::palette_matmul_cpu);
  m.impl("tcq_encode", &weightkit::palette::tcq_encode_cpu);
  m.impl("tcq_encode_window", &weightkit::palette::tcq_encode_window_cpu);
  m.impl("tcq_decode", &weightkit::palette::tcq_decode_cpu);
  m.impl("tcq_matmul", &weightkit::palette::tcq_matmul_cpu);
}
