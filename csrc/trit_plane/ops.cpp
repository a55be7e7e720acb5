#include "trit_plane/ops.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "trit_plane/cpu.h"

namespace weightkit::trit_plane {

Layout check_quantize_args(const char* op, const at::Tensor& W, int64_t group_size, int64_t max_iters, double tol) {
  check_dims(op, W, "W", 2, 2);
  check_float_dtype(op, W, "W");
  WK_CHECK(op, group_size >= 1, "group_size must be >= 1, got ", group_size);
  WK_CHECK(op, max_iters >= 1, "max_iters must be >= 1, got ", max_iters);
  WK_CHECK(op, std::isfinite(tol) && tol >= 0.0, "tol must be finite and >= 0, got ", tol);
  return Layout::make(W.size(0), W.size(1), group_size);
}

Layout check_packed_shape(const char* op, const at::Tensor& packed, int64_t out, int64_t in_features,
                          int64_t group_size) {
  WK_CHECK(op, group_size >= 1, "group_size must be >= 1, got ", group_size);
  WK_CHECK(op, in_features >= 0, "in_features must be >= 0, got ", in_features);
  WK_CHECK(op, packed.scalar_type() == at::kInt, "packed must be int32, got ", packed.scalar_type());
  const Layout l = Layout::make(out, in_features, group_size);
  const std::vector<int64_t> want = {l.row_blocks, l.words_per_row, kPlanes, kRowsPerBlock};
  WK_CHECK(op, packed.sizes() == c10::IntArrayRef(want), "packed must have shape ", c10::IntArrayRef(want),
           " for out = ", out, ", in_features = ", in_features, ", group_size = ", group_size, " (pack version ",
           kPackVersion, "), got shape ", packed.sizes());
  return l;
}

Layout check_packed(const char* op, const at::Tensor& packed, const at::Tensor& scales, int64_t in_features,
                    int64_t group_size) {
  WK_CHECK(op, group_size >= 1, "group_size must be >= 1, got ", group_size);
  WK_CHECK(op, in_features >= 0, "in_features must be >= 0, got ", in_features);
  check_same_device(op, packed, "packed", scales, "scales");
  WK_CHECK(op, scales.scalar_type() == at::kHalf, "scales must be float16, got ", scales.scalar_type());
  const int64_t n_groups = Layout::make(0, in_features, group_size).n_groups;
  WK_CHECK(op, scales.dim() == 3 && scales.size(1) == n_groups && scales.size(2) == 2,
           "scales must have shape (out, n_groups, 2) with n_groups = ceil(in_features / group_size) = ", n_groups,
           ", got shape ", scales.sizes());
  return check_packed_shape(op, packed, scales.size(0), in_features, group_size);
}

Layout check_matmul_args(const char* op, const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                         int64_t in_features, int64_t group_size) {
  const Layout l = check_packed(op, packed, scales, in_features, group_size);
  check_float_dtype(op, x, "x");
  WK_CHECK(op, x.dim() >= 1, "x must have at least 1 dimension, got a scalar");
  WK_CHECK(op, x.size(-1) == in_features, "x's last dimension must equal in_features = ", in_features,
           ", got x of shape ", x.sizes());
  check_same_device(op, x, "x", packed, "packed");
  return l;
}

Layout check_trits(const char* op, const at::Tensor& trits, int64_t group_size) {
  WK_CHECK(op, group_size >= 1, "group_size must be >= 1, got ", group_size);
  WK_CHECK(op, trits.scalar_type() == at::kChar, "trits must be int8, got ", trits.scalar_type());
  WK_CHECK(op, trits.dim() == 3 && trits.size(0) == 2, "trits must have shape (2, out, in), got shape ",
           trits.sizes());
  if (trits.numel() > 0) {
    WK_CHECK(op, at::abs(trits.to(at::kInt)).max().item<int>() <= 1, "trits must hold values in {-1, 0, +1}");
  }
  return Layout::make(trits.size(1), trits.size(2), group_size);
}

int64_t leading_numel(const at::Tensor& x) {
  int64_t n = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) n *= x.size(d);
  return n;
}

std::vector<int64_t> matmul_out_shape(const at::Tensor& x, int64_t out) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out;
  return shape;
}

const uint16_t* scale_bits(const at::Tensor& scales) {
  return reinterpret_cast<const uint16_t*>(scales.const_data_ptr<at::Half>());
}

int64_t direct_max_batch(int64_t fallback) {
  const char* v = std::getenv("WEIGHTKIT_TRIT_PLANE_DIRECT_MAX_BATCH");
  if (v == nullptr || v[0] == '\0') return fallback;
  return std::atoll(v);
}

namespace {

namespace cpu = weightkit::trit_plane_cpu;

// Measured on 2 Zen 4 cores, 4096 x 4096 (ms, direct / dequantize + fp32 product): batch 1
// 0.69 / 5.8, 16 5.2 / 10.3, 64 20 / 20, 128 31 / 31: the direct kernel's cost grows with every
// batch row, the dense product's barely, and they meet between 32 and 64 rows.
constexpr int64_t kCpuDirectMaxBatch = 32;
// With int8 activations the direct kernel stays cheaper than the fp32 dense product up to large
// batches. 4096 x 4096, ms direct / dense, 2-core AVX2 EPYC (session 10): 32 11 / 27, 64 20 / 38,
// 128 36 / 51 (0.28 against 0.2 ms per extra row: they would meet near 300 rows); Zen 4 with the
// VNNI kernel (session 16): 64 9.7 / 21, 128 16 / 32, 256 33 / 56, 512 67 / 96.
constexpr int64_t kCpuA8DirectMaxBatch = 256;
// bf16 activations where the CPU has bf16 units: the dense path's bf16 product moves the
// crossover down (2 Zen 4 cores, 4096 x 4096, ms direct / dense in bf16 / dense in fp32: batch 16
// 5.3 / 7.0 / 10.4, 32 10.4 / 8.4 / 13.7, 64 21 / 11 / 19, 128 43 / 17 / 32).
constexpr int64_t kCpuBf16DirectMaxBatch = 16;
// Weights dequantized at once on the large-batch path: ~8 MB of fp32.
constexpr int64_t kTileFloats = int64_t{1} << 21;

void check_cpu(const char* op, const at::Tensor& t, const char* name) {
  WK_CHECK(op, t.device().is_cpu(), name, " must be a CPU tensor here, got ", t.device());
}

std::tuple<at::Tensor, at::Tensor> ptqtp_quantize_cpu(const at::Tensor& W, int64_t group_size, int64_t max_iters,
                                                      double tol) {
  constexpr const char* op = "ptqtp_quantize";
  const Layout l = check_quantize_args(op, W, group_size, max_iters, tol);
  const at::Tensor Wf = W.to(at::kFloat).contiguous();
  WK_CHECK(op, Wf.numel() == 0 || at::isfinite(Wf).all().item<bool>(),
           "W must be finite (no NaN or Inf), got non-finite values");
  at::Tensor packed = at::empty({l.row_blocks, l.words_per_row, kPlanes, kRowsPerBlock}, W.options().dtype(at::kInt));
  at::Tensor scales = at::empty({l.out, l.n_groups, 2}, W.options().dtype(at::kHalf));
  const bool ok = cpu::quantize(Wf.const_data_ptr<float>(), l, max_iters, tol, packed.mutable_data_ptr<int32_t>(),
                                reinterpret_cast<uint16_t*>(scales.mutable_data_ptr<at::Half>()));
  WK_CHECK(op, ok, "scales must fit in float16 (|alpha| <= 65504), got a group whose scale overflows; "
                   "rescale W before quantizing");
  return {packed, scales};
}

at::Tensor trit_plane_unpack_cpu(const at::Tensor& packed, const at::Tensor& scales, int64_t in_features,
                                 int64_t group_size) {
  constexpr const char* op = "trit_plane_unpack";
  const Layout l = check_packed(op, packed, scales, in_features, group_size);
  check_cpu(op, packed, "packed");
  const CpuIsa isa = selected_cpu_isa(op);
  const at::Tensor P = packed.contiguous(), S = scales.contiguous();
  at::Tensor Wt = at::empty({l.in, l.row_blocks * kRowsPerBlock}, scales.options().dtype(at::kFloat));
  at::Tensor scb = at::empty({l.row_blocks * l.n_groups * 16}, Wt.options());
  cpu::block_scales_all(scale_bits(S), l, scb.mutable_data_ptr<float>(), isa);
  cpu::dequantize_tile_t(P.const_data_ptr<int32_t>(), scb.const_data_ptr<float>(), l, 0, l.row_blocks,
                         Wt.mutable_data_ptr<float>(), isa);
  return Wt.narrow(1, 0, l.out).t().contiguous();
}

// y (batch, out) = x2 (batch, in) W^T through tiles of row blocks: each dequantized (transposed) in
// fp32, then one dense product per tile. With a bf16 x2 each tile is rounded to bf16 and the
// product runs in bf16 (fp32 accumulation), as a bf16 nn.Linear computes: on CPUs with bf16 units
// that product is ~2.3x as fast as fp32 (4096 x 4096, batch 128: 12.5 vs 28 ms on 2 Zen 4 cores).
void dense_product(const at::Tensor& x2, const at::Tensor& P, const at::Tensor& S, const Layout& l, at::Tensor& y,
                   CpuIsa isa) {
  if (l.out == 0) return;
  const int64_t tile_blocks = std::max<int64_t>(1, kTileFloats / std::max<int64_t>(l.in * kRowsPerBlock, 1));
  const at::TensorOptions f32 = y.options().dtype(at::kFloat);
  at::Tensor Wt = at::empty({l.in, std::min(tile_blocks, l.row_blocks) * kRowsPerBlock}, f32);
  at::Tensor Wt_half = x2.scalar_type() == at::kFloat ? at::Tensor() : at::empty(Wt.sizes(), x2.options());
  at::Tensor scb = at::empty({l.row_blocks * l.n_groups * 16}, f32);
  cpu::block_scales_all(scale_bits(S), l, scb.mutable_data_ptr<float>(), isa);
  for (int64_t rb0 = 0; rb0 < l.row_blocks; rb0 += tile_blocks) {
    const int64_t rb1 = std::min(rb0 + tile_blocks, l.row_blocks);
    const int64_t r0 = rb0 * kRowsPerBlock, rows = std::min(rb1 * kRowsPerBlock, l.out) - r0;
    const bool whole = rb1 - rb0 == Wt.size(1) / kRowsPerBlock;
    at::Tensor tile = whole ? Wt : at::empty({l.in, (rb1 - rb0) * kRowsPerBlock}, f32);
    cpu::dequantize_tile_t(P.const_data_ptr<int32_t>(), scb.const_data_ptr<float>(), l, rb0, rb1,
                           tile.mutable_data_ptr<float>(), isa);
    if (Wt_half.defined()) tile = whole ? Wt_half.copy_(tile) : tile.to(x2.scalar_type());
    y.narrow(1, r0, rows).copy_(at::mm(x2, tile.narrow(1, 0, rows)));
  }
}

// Shared by trit_plane_matmul and trit_plane_matmul_a8: checks, then the direct kernel for small
// batches (fp32 or int8 activations) or the dense path.
at::Tensor matmul_cpu(const char* op, bool int8_activations, const at::Tensor& x, const at::Tensor& packed,
                      const at::Tensor& scales, int64_t in_features, int64_t group_size) {
  const Layout l = check_matmul_args(op, x, packed, scales, in_features, group_size);
  check_cpu(op, packed, "packed");
  const CpuIsa isa = selected_cpu_isa(op);
  const at::Tensor P = packed.contiguous(), S = scales.contiguous();
  const at::Tensor x_rows = x.reshape({leading_numel(x), in_features});
  const int64_t batch = x_rows.size(0);
  // bf16 activations on a CPU with bf16 units take the dense path in bf16 above
  // kCpuBf16DirectMaxBatch rows, as they are (no fp32 copy).
  const bool bf16_dense = !int8_activations && x.scalar_type() == at::kBFloat16 && cpu_has_fast_bf16();
  at::Tensor y = at::empty({batch, l.out}, x.options().dtype(at::kFloat));
  const bool direct = batch <= direct_max_batch(int8_activations ? kCpuA8DirectMaxBatch
                                                : bf16_dense       ? kCpuBf16DirectMaxBatch
                                                                   : kCpuDirectMaxBatch);
  at::Tensor x2 = bf16_dense && !direct ? x_rows.contiguous() : x_rows.to(at::kFloat).contiguous();
  if (direct) {
    (int8_activations ? cpu::matmul_a8 : cpu::matmul)(x2.const_data_ptr<float>(), batch, P.const_data_ptr<int32_t>(),
                                                       scale_bits(S), l, y.mutable_data_ptr<float>(), isa);
  } else {
    if (int8_activations) {
      at::Tensor xq = at::empty_like(x2);
      cpu::round_activations(x2.const_data_ptr<float>(), batch, l, xq.mutable_data_ptr<float>(), isa);
      x2 = xq;
    }
    dense_product(x2, P, S, l, y, isa);
  }
  return y.view(matmul_out_shape(x, l.out)).to(x.scalar_type());
}

at::Tensor trit_plane_matmul_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                                 int64_t in_features, int64_t group_size) {
  return matmul_cpu("trit_plane_matmul", false, x, packed, scales, in_features, group_size);
}

at::Tensor trit_plane_matmul_a8_cpu(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                                    int64_t in_features, int64_t group_size) {
  return matmul_cpu("trit_plane_matmul_a8", true, x, packed, scales, in_features, group_size);
}

at::Tensor trit_plane_pack_cpu(const at::Tensor& trits, int64_t group_size) {
  constexpr const char* op = "trit_plane_pack";
  const Layout l = check_trits(op, trits, group_size);
  check_cpu(op, trits, "trits");
  const at::Tensor T = trits.contiguous();
  at::Tensor packed = at::empty({l.row_blocks, l.words_per_row, kPlanes, kRowsPerBlock}, trits.options().dtype(at::kInt));
  cpu::pack(T.const_data_ptr<int8_t>(), l, packed.mutable_data_ptr<int32_t>());
  return packed;
}

at::Tensor trit_plane_trits_cpu(const at::Tensor& packed, int64_t out_features, int64_t in_features,
                                int64_t group_size) {
  constexpr const char* op = "trit_plane_trits";
  WK_CHECK(op, out_features >= 0, "out_features must be >= 0, got ", out_features);
  const Layout l = check_packed_shape(op, packed, out_features, in_features, group_size);
  check_cpu(op, packed, "packed");
  const at::Tensor P = packed.contiguous();
  at::Tensor trits = at::empty({2, l.out, l.in}, packed.options().dtype(at::kChar));
  cpu::unpack_trits(P.const_data_ptr<int32_t>(), l, trits.mutable_data_ptr<int8_t>());
  return trits;
}

}  // namespace

TORCH_LIBRARY_IMPL(weightkit, CPU, m) {
  m.impl("ptqtp_quantize", &ptqtp_quantize_cpu);
  m.impl("trit_plane_matmul", &trit_plane_matmul_cpu);
  m.impl("trit_plane_matmul_a8", &trit_plane_matmul_a8_cpu);
  m.impl("trit_plane_unpack", &trit_plane_unpack_cpu);
  m.impl("trit_plane_pack", &trit_plane_pack_cpu);
  m.impl("trit_plane_trits", &trit_plane_trits_cpu);
}

}  // namespace weightkit::trit_plane
