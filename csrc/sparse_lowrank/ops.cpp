// Sparse + low-rank glue: the device-independent paths (ops.h) and the CPU registration.
#include "sparse_lowrank/ops.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <new>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "sparse_lowrank/cpu.h"

namespace weightkit::sparse_lowrank {

namespace {

void check_support_dtypes(const char* op, const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t rows) {
  check_dims(op, row_ptr, "row_ptr", 1, 1);
  check_dims(op, col_idx, "col_idx", 1, 1);
  WK_CHECK(op, row_ptr.scalar_type() == at::kInt || row_ptr.scalar_type() == at::kLong,
           "row_ptr must be int32 or int64, got ", row_ptr.scalar_type());
  WK_CHECK(op, col_idx.scalar_type() == at::kShort || col_idx.scalar_type() == at::kInt,
           "col_idx must be int16 or int32, got ", col_idx.scalar_type());
  WK_CHECK(op, row_ptr.numel() == rows + 1, "row_ptr must have out_features + 1 = ", rows + 1,
           " entries, got ", row_ptr.numel());
}

std::string validate_support_cpu(const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t rows, int64_t cols);

void check_support(const char* op, const SlDevice& dev, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                   int64_t rows, int64_t cols) {
  const std::string found = dev.validate_support(row_ptr, col_idx, rows, cols);
  if (found.empty()) return;
  // A device's check finds that something is wrong; the CPU names the first problem in row order,
  // so every device gives the same message (a rare path: the cost of the copy does not matter).
  const std::string named = row_ptr.is_cpu() ? found : validate_support_cpu(row_ptr.cpu(), col_idx.cpu(), rows, cols);
  WK_CHECK(op, false, "invalid sparse support: ", named.empty() ? found : named);
}

// Row of every nonzero, int64.
at::Tensor support_rows(const SlArgs& a) {
  const at::Tensor counts = (a.row_ptr.slice(0, 1) - a.row_ptr.slice(0, 0, a.out)).to(at::kLong);
  return at::repeat_interleave(counts, std::optional<int64_t>(a.nnz));
}

// Positions of the nonzeros in the row-major (out, in) matrix, int64, on the support's device.
at::Tensor flat_positions(const SlArgs& a) { return support_rows(a) * a.in + a.col_idx.to(at::kLong); }

// W = s B A + S as a transient dense (out, in) matrix in x's dtype.
at::Tensor dense_weight(const SlArgs& a, double scale, const at::Tensor& flat) {
  at::Tensor W = at::mm(a.B, a.A).mul_(scale);
  W.view(-1).index_add_(0, flat, a.values);
  return W;
}

at::Tensor empty_grad(const at::Tensor& like) { return at::empty({0}, like.options()); }

// float64 (for gradcheck and references) runs its sparse pieces through ATen gathers and
// scatters instead of the fp32 kernels: exact, device-independent, O(T * nnz) memory.
bool use_generic_sparse(const SlArgs& a) { return a.x.scalar_type() == at::kDouble; }

void spmm_add_generic(const SlArgs& a, const at::Tensor& x, at::Tensor& y) {
  y.index_add_(1, support_rows(a), x.index_select(1, a.col_idx.to(at::kLong)) * a.values);
}

void sparse_backward_generic(const SlArgs& a, const at::Tensor& g, const at::Tensor& x, at::Tensor* gx,
                             at::Tensor* gvals) {
  const at::Tensor g_at = g.index_select(1, support_rows(a)), cols = a.col_idx.to(at::kLong);
  if (gx != nullptr) gx->index_add_(1, cols, g_at * a.values);
  if (gvals != nullptr) *gvals = (g_at * x.index_select(1, cols)).sum(0);
}

}  // namespace

SlArgs check_args(const char* op, const SlDevice& dev, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                  const at::Tensor& values, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                  const std::optional<at::Tensor>& bias) {
  WK_CHECK(op, is_supported_float(x.scalar_type()) || x.scalar_type() == at::kDouble,
           "x must be float32, bfloat16, float16 or float64, got ", x.scalar_type());
  WK_CHECK(op, x.dim() >= 1, "x must have at least 1 dimension (..., in_features), got a 0-d tensor");
  check_dims(op, A, "A", 2, 2);
  check_dims(op, B, "B", 2, 2);
  check_dims(op, values, "values", 1, 1);
  const int64_t in = x.size(-1), rank = A.size(0), out = B.size(0);
  WK_CHECK(op, A.size(1) == in, "A must have shape (rank, in_features) with in_features = x.size(-1) = ", in,
           ", got ", A.sizes());
  WK_CHECK(op, B.size(1) == rank, "B must have shape (out_features, rank) with rank = A.size(0) = ", rank, ", got ",
           B.sizes());
  WK_CHECK(op, rank >= 1 && rank <= std::min(in, out), "rank must be in [1, min(in_features, out_features)] = [1, ",
           std::min(in, out), "], got ", rank);
  for (const auto& [t, name] : {std::pair{&A, "A"}, std::pair{&B, "B"}, std::pair{&values, "values"}}) {
    WK_CHECK(op, t->scalar_type() == x.scalar_type(), name, " must have x's dtype ", x.scalar_type(), ", got ",
             t->scalar_type());
    check_same_device(op, x, "x", *t, name);
  }
  check_support_dtypes(op, row_ptr, col_idx, out);
  check_same_device(op, x, "x", row_ptr, "row_ptr");
  check_same_device(op, x, "x", col_idx, "col_idx");
  WK_CHECK(op, col_idx.numel() == values.numel(), "values and col_idx must have one entry per nonzero, got ",
           values.numel(), " values and ", col_idx.numel(), " column indices");
  if (bias) {
    check_dims(op, *bias, "bias", 1, 1);
    WK_CHECK(op, bias->numel() == out, "bias must have out_features = ", out, " entries, got ", bias->numel());
    WK_CHECK(op, bias->scalar_type() == x.scalar_type(), "bias must have x's dtype ", x.scalar_type(), ", got ",
             bias->scalar_type());
    check_same_device(op, x, "x", *bias, "bias");
  }
  check_support(op, dev, row_ptr, col_idx, out, in);

  SlArgs a;
  a.in = in;
  a.out = out;
  a.rank = rank;
  a.nnz = values.numel();
  a.T = x.numel() / std::max<int64_t>(in, 1);
  a.x = x.reshape({a.T, in}).contiguous();
  a.A = A.contiguous();
  a.B = B.contiguous();
  a.values = values.contiguous();
  a.row_ptr = row_ptr.contiguous();
  a.col_idx = col_idx.contiguous();
  if (bias) a.bias = bias->contiguous();
  return a;
}

SlPath choose_path(const char* op, int64_t T, int64_t in, int64_t out, int64_t rank, int64_t nnz, bool backward,
                   double sparse_cost) {
  const int forced = env_choice(op, "WEIGHTKIT_SL_PATH", {"factored", "dense", "auto"});
  if (forced == 0) return SlPath::Factored;
  if (forced == 1) return SlPath::Dense;
  const double t = double(T), i = double(in), o = double(out), r = double(rank), sparse = sparse_cost * double(nnz) * t;
  double factored, dense;
  if (!backward) {
    factored = t * r * (i + o) + sparse;                // x A^T, then B; S x
    dense = o * r * i + t * i * o;                      // B A, then x W^T
  } else {
    factored = t * r * (3 * i + 2 * o) + 2 * sparse;    // g B, (g B) A, x A^T, g^T (x A^T), (g B)^T x; g S, sddmm
    dense = 3 * o * r * i + 2 * t * i * o;              // B A, G_W A^T, B^T G_W; g W, g^T x
  }
  return factored <= dense ? SlPath::Factored : SlPath::Dense;
}

at::Tensor sl_linear(const SlDevice& dev, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
                     const at::Tensor& values, const at::Tensor& row_ptr, const at::Tensor& col_idx,
                     const std::optional<at::Tensor>& bias, double scale) {
  constexpr const char* op = "sl_linear";
  const SlArgs a = check_args(op, dev, x, A, B, values, row_ptr, col_idx, bias);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = a.out;
  at::Tensor y;
  if (choose_path(op, a.T, a.in, a.out, a.rank, a.nnz, false, dev.sparse_cost) == SlPath::Dense) {
    y = at::linear(a.x, dense_weight(a, scale, flat_positions(a)), a.bias);
  } else {
    // Scale the thin (T, r) intermediate, the smallest operand.
    const at::Tensor xa = at::mm(a.x, a.A.t()).mul_(scale);
    y = a.bias ? at::addmm(*a.bias, xa, a.B.t()) : at::mm(xa, a.B.t());
    use_generic_sparse(a) ? spmm_add_generic(a, a.x, y) : dev.spmm_add(a, a.x, y);
  }
  return y.view(out_shape);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sl_linear_backward(
    const SlDevice& dev, const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& values, const at::Tensor& row_ptr, const at::Tensor& col_idx, double scale,
    std::array<bool, 4> output_mask) {
  constexpr const char* op = "sl_linear_backward";
  const SlArgs a = check_args(op, dev, x, A, B, values, row_ptr, col_idx, std::nullopt);
  WK_CHECK(op, grad_out.scalar_type() == x.scalar_type(), "grad_out must have x's dtype ", x.scalar_type(), ", got ",
           grad_out.scalar_type());
  check_same_device(op, x, "x", grad_out, "grad_out");
  std::vector<int64_t> expect(x.sizes().begin(), x.sizes().end());
  expect.back() = a.out;
  WK_CHECK(op, grad_out.sizes() == at::IntArrayRef(expect), "grad_out must have shape ", at::IntArrayRef(expect),
           " (x's shape with out_features last), got ", grad_out.sizes());
  const auto [need_x, need_A, need_B, need_v] = output_mask;
  const at::Tensor g = grad_out.reshape({a.T, a.out}).contiguous();

  at::Tensor gx = empty_grad(x), gA = empty_grad(A), gB = empty_grad(B), gv = empty_grad(values);
  if (choose_path(op, a.T, a.in, a.out, a.rank, a.nnz, true, dev.sparse_cost) == SlPath::Dense) {
    const at::Tensor flat = flat_positions(a);
    if (need_x) gx = at::mm(g, dense_weight(a, scale, flat));
    if (need_A || need_B || need_v) {
      const at::Tensor GW = at::mm(g.t(), a.x);  // (out, in): the dense weight gradient
      if (need_A) gA = at::mm(a.B.t(), GW).mul_(scale);
      if (need_B) gB = at::mm(GW, a.A.t()).mul_(scale);
      if (need_v) gv = GW.view(-1).index_select(0, flat);
    }
  } else {
    if (need_x || need_A) {
      const at::Tensor gb = at::mm(g, a.B).mul_(scale);  // (T, r)
      if (need_x) gx = at::mm(gb, a.A);
      if (need_A) gA = at::mm(gb.t(), a.x);
    }
    if (need_B) gB = at::mm(g.t(), at::mm(a.x, a.A.t())).mul_(scale);
    if (need_v) gv = at::empty_like(a.values);
    if (need_x || need_v) {
      const auto sparse_backward = use_generic_sparse(a) ? sparse_backward_generic : dev.sparse_backward;
      sparse_backward(a, g, a.x, need_x ? &gx : nullptr, need_v ? &gv : nullptr);
    }
  }
  if (need_x) gx = gx.view(x.sizes());
  return {gx, gA, gB, gv};
}

void check_sddmm_args(const SlDevice& dev, const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_ptr,
                      const at::Tensor& col_idx) {
  constexpr const char* op = "sddmm";
  check_dims(op, a, "a", 2, 2);
  check_dims(op, b, "b", 2, 2);
  check_float_dtype(op, a, "a");
  WK_CHECK(op, b.scalar_type() == a.scalar_type(), "b must have a's dtype ", a.scalar_type(), ", got ",
           b.scalar_type());
  WK_CHECK(op, a.size(0) == b.size(0), "a (T, rows) and b (T, cols) must have the same number of rows T, got ",
           a.sizes(), " and ", b.sizes());
  check_same_device(op, a, "a", b, "b");
  check_same_device(op, a, "a", row_ptr, "row_ptr");
  check_same_device(op, a, "a", col_idx, "col_idx");
  check_support_dtypes(op, row_ptr, col_idx, a.size(1));
  check_support(op, dev, row_ptr, col_idx, a.size(1), b.size(1));
}

// ------------------------------------------------------------------------------ CPU

namespace {

namespace cpu = weightkit::sparse_lowrank_cpu;

cpu::Csr cpu_csr(const at::Tensor& row_ptr, const at::Tensor& col_idx, const float* values, int64_t rows,
                 int64_t cols) {
  cpu::Csr s;
  s.row_ptr = row_ptr.data_ptr();
  s.col_idx = col_idx.data_ptr();
  s.row_ptr_64 = row_ptr.scalar_type() == at::kLong;
  s.col_idx_32 = col_idx.scalar_type() == at::kInt;
  s.values = values;
  s.rows = rows;
  s.cols = cols;
  return s;
}

std::string validate_support_cpu(const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t rows, int64_t cols) {
  const at::Tensor rp = row_ptr.contiguous(), ci = col_idx.contiguous();
  return cpu::validate_support(cpu_csr(rp, ci, nullptr, rows, cols), ci.numel());
}

// Calls f(E{}) with the element type of a float32 / bfloat16 / float16 tensor (checked before).
template <typename F>
void with_float_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_INTERNAL_ASSERT(false, "weightkit: no CPU sparse kernel for ", t);
  }
}

void spmm_add_cpu(const SlArgs& a, const at::Tensor& x, at::Tensor& y) {
  const CpuIsa isa = selected_cpu_isa("sl_linear");
  const at::Tensor v = a.values.to(at::kFloat).contiguous();
  const cpu::Csr s = cpu_csr(a.row_ptr, a.col_idx, v.const_data_ptr<float>(), a.out, a.in);
  with_float_type(x.scalar_type(), [&](auto tag) {
    using E = decltype(tag);
    cpu::spmm_add(s, x.const_data_ptr<E>(), a.T, y.mutable_data_ptr<E>(), isa);
  });
}

void sparse_backward_cpu(const SlArgs& a, const at::Tensor& g, const at::Tensor& x, at::Tensor* gx,
                         at::Tensor* gvals) {
  const CpuIsa isa = selected_cpu_isa("sl_linear_backward");
  const at::Tensor v = a.values.to(at::kFloat).contiguous();
  const cpu::Csr s = cpu_csr(a.row_ptr, a.col_idx, v.const_data_ptr<float>(), a.out, a.in);
  at::Tensor gv32 = gvals != nullptr ? at::empty({a.nnz}, g.options().dtype(at::kFloat)) : at::Tensor();
  with_float_type(x.scalar_type(), [&](auto tag) {
    using E = decltype(tag);
    cpu::sparse_backward(s, g.const_data_ptr<E>(), x.const_data_ptr<E>(), a.T,
                         gx != nullptr ? gx->mutable_data_ptr<E>() : nullptr,
                         gvals != nullptr ? gv32.mutable_data_ptr<float>() : nullptr, isa);
  });
  if (gvals != nullptr) *gvals = gv32.to(gvals->scalar_type());
}

const SlDevice& cpu_device() {
  static const SlDevice dev = [] {
    SlDevice d;
    // Measured at d = 1024, T = 2048, delta = 0.03 on an AVX-512 EPYC (one thread): the tiled
    // sparse kernels, tile transposes included, run at ~7.5 G multiply-adds/s against ~44 G for
    // oneDNN's fp32 GEMM, so a sparse multiply-add costs ~6 dense ones.
    d.sparse_cost = 6.0;
    d.validate_support = validate_support_cpu;
    d.spmm_add = spmm_add_cpu;
    d.sparse_backward = sparse_backward_cpu;
    return d;
  }();
  return dev;
}

at::Tensor sl_linear_cpu(const at::Tensor& x, const at::Tensor& A, const at::Tensor& B, const at::Tensor& values,
                         const at::Tensor& row_ptr, const at::Tensor& col_idx, const std::optional<at::Tensor>& bias,
                         double scale) {
  return sl_linear(cpu_device(), x, A, B, values, row_ptr, col_idx, bias, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sl_linear_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& A, const at::Tensor& B,
    const at::Tensor& values, const at::Tensor& row_ptr, const at::Tensor& col_idx, double scale,
    std::array<bool, 4> output_mask) {
  return sl_linear_backward(cpu_device(), grad_out, x, A, B, values, row_ptr, col_idx, scale, output_mask);
}

at::Tensor sddmm_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& row_ptr, const at::Tensor& col_idx) {
  check_sddmm_args(cpu_device(), a, b, row_ptr, col_idx);
  const at::Tensor rp = row_ptr.contiguous(), ci = col_idx.contiguous(), ac = a.contiguous(), bc = b.contiguous();
  at::Tensor out = at::empty({ci.numel()}, a.options().dtype(at::kFloat));
  with_float_type(a.scalar_type(), [&](auto tag) {
    using E = decltype(tag);
    cpu::sparse_backward(cpu_csr(rp, ci, nullptr, a.size(1), b.size(1)), ac.const_data_ptr<E>(),
                         bc.const_data_ptr<E>(), a.size(0), static_cast<E*>(nullptr), out.mutable_data_ptr<float>(),
                         selected_cpu_isa("sddmm"));
  });
  return out.to(a.scalar_type());
}

// The support is generated on the CPU for every device (callers move it), so it is the same
// wherever the layer runs.
std::tuple<at::Tensor, at::Tensor> sl_support(int64_t out_features, int64_t in_features, double density,
                                               int64_t seed, c10::string_view kind) {
  constexpr const char* op = "sl_support";
  WK_CHECK(op, out_features >= 1 && in_features >= 1, "out_features and in_features must be >= 1, got ",
           out_features, " and ", in_features);
  WK_CHECK(op, density > 0.0 && density <= 1.0, "density must be in (0, 1], got ", density);
  const bool row_balanced = kind == "row_balanced";
  WK_CHECK(op, row_balanced || kind == "uniform", "kind must be 'row_balanced' or 'uniform', got '", kind, "'");
  WK_CHECK(op, in_features <= INT32_MAX, "in_features must fit int32 column indices, got ", in_features);
  const double per_row = std::max(1.0, std::round(density * double(in_features)));
  const double nnz_d = row_balanced ? double(out_features) * per_row
                                    : std::max(1.0, std::round(density * double(out_features) * double(in_features)));
  WK_CHECK(op, nnz_d < 0x1p62, "the support would hold ", nnz_d, " nonzeros (", out_features, " x ", in_features,
           " at density ", density, "), more than an int64 index can address");
  const auto nnz = static_cast<int64_t>(nnz_d);
  cpu::Support s;
  try {
    s = cpu::make_support(out_features, in_features, nnz, row_balanced, static_cast<uint64_t>(seed));
  } catch (const std::bad_alloc&) {
    WK_CHECK(op, false, "cannot allocate a support of ", nnz, " nonzeros (", out_features, " x ", in_features,
             " at density ", density, ")");
  }
  // Compact indices: int16 columns when the width allows, int32 row pointers when nnz allows.
  const at::ScalarType col_t = in_features <= INT16_MAX ? at::kShort : at::kInt;
  const at::ScalarType row_t = nnz <= INT32_MAX ? at::kInt : at::kLong;
  const at::Tensor row_ptr = at::tensor(at::ArrayRef<int64_t>(s.row_ptr), at::kLong).to(row_t);
  const at::Tensor col_idx = at::tensor(at::ArrayRef<int32_t>(s.col_idx), at::kInt).to(col_t);
  return {row_ptr, col_idx};
}

}  // namespace
}  // namespace weightkit::sparse_lowrank

TORCH_LIBRARY_IMPL(weightkit, CPU, m) {
  m.impl("sl_linear", &weightkit::sparse_lowrank::sl_linear_cpu);
  m.impl("sl_linear_backward", &weightkit::sparse_lowrank::sl_linear_backward_cpu);
  m.impl("sddmm", &weightkit::sparse_lowrank::sddmm_cpu);
}

// No tensor inputs, so no device to dispatch on: one kernel for every backend.
TORCH_LIBRARY_IMPL(weightkit, CompositeImplicitAutograd, m) {
  m.impl("sl_support", &weightkit::sparse_lowrank::sl_support);
}
