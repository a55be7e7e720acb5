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

  // ---- sparse_lowrank: SLTrain's layer y = x (s B A + S)^T + bias --------------------------
  // x (..., in), A (r, in), B (out, r), S (out, in) as `values` (nnz) on a CSR support: row_ptr
  // int32/int64 (out + 1), col_idx int16/int32 (nnz) sorted and unique within rows; scale = s =
  // alpha / r. x, A, B, values, bias share one float dtype. The factored path (x A^T B^T + x S^T)
  // or a transient dense W is picked by a cost model per call; W is never kept.
  m.def("sl_linear(Tensor x, Tensor A, Tensor B, Tensor values, Tensor row_ptr, Tensor col_idx, "
        "Tensor? bias, float scale) -> Tensor");
  // Gradients of sl_linear for x, A, B and values (not the bias: grad_out summed over tokens).
  // output_mask says which to compute; the others come back as empty tensors.
  m.def("sl_linear_backward(Tensor grad_out, Tensor x, Tensor A, Tensor B, Tensor values, "
        "Tensor row_ptr, Tensor col_idx, float scale, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // Sampled dense-dense product: out[k] = sum_t a[t, row_k] * b[t, col_k] for a (T, rows),
  // b (T, cols), i.e. (a^T b) at the support: the gradient of the sparse values.
  m.def("sddmm(Tensor a, Tensor b, Tensor row_ptr, Tensor col_idx) -> Tensor");
  // A seeded random support of an (out, in) matrix, identical on every machine and torch
  // version: kind "row_balanced" (round(density * in) columns per row, at least 1) or "uniform"
  // (round(density * out * in) positions over the whole matrix). Returns (row_ptr, col_idx) on
  // the CPU, int32 or int64 row pointers and int16 columns where in_features allows, else int32.
  m.def("sl_support(int out_features, int in_features, float density, int seed, str kind) -> (Tensor, Tensor)");

  // ---- trit_plane: PTQTP post-training quantization to two ternary planes ----------------------
  // W ~= alpha1 * T1 + alpha2 * T2 per row and column group (the last group of a row may be
  // shorter). Packing format version 1 (csrc/trit_plane/layout.h): packed int32
  // (ceil(out/8), words_per_row, 2, 8), scales float16 (out, n_groups, 2).
  // W (out, in) fp32/bf16/fp16, finite. tol is relative: stop when max|d alpha| <= tol * max|alpha|.
  m.def("ptqtp_quantize(Tensor W, int group_size, int max_iters, float tol) -> (Tensor packed, Tensor scales)");
  // y = x W^T for the packed W: x (..., in_features) fp32/bf16/fp16 -> (..., out) in x's dtype,
  // fp32 accumulation, no multiplications by weights on the direct (small-batch) path.
  m.def("trit_plane_matmul(Tensor x, Tensor packed, Tensor scales, int in_features, int group_size) -> Tensor");
  // The same product with x rounded to int8 per row and weight group (W-ternary A8): s = max|x_g| / 127,
  // q = rint(x / s); y = sum_g s_g (alpha1 T1 q + alpha2 T2 q), integer plane sums. Error bound
  // against trit_plane_matmul and edge cases: csrc/trit_plane/act_quant.h.
  m.def("trit_plane_matmul_a8(Tensor x, Tensor packed, Tensor scales, int in_features, int group_size) -> Tensor");
  // The dequantized weight, fp32 (out, in_features).
  m.def("trit_plane_unpack(Tensor packed, Tensor scales, int in_features, int group_size) -> Tensor");
  // trits int8 (2, out, in) in {-1, 0, +1} -> packed; and back (out is not recoverable from the
  // padded packed shape, so it is an argument).
  m.def("trit_plane_pack(Tensor trits, int group_size) -> Tensor");
  m.def("trit_plane_trits(Tensor packed, int out_features, int in_features, int group_size) -> Tensor");

  // ---- rls: sequential model editing by recursive least squares (RLSEdit) -------------------
  // C0 = (lam I + mu gram)^-1 in float64 (d_k, d_k), symmetrized; gram (d_k, d_k) any float dtype,
  // finite; lam, mu >= 0 and lam I + mu gram positive definite (else an error).
  m.def("rls_init(Tensor gram, float lam, float mu) -> Tensor");
  // One Woodbury step for u new rows, in place, all math in float64: W (d_v, d_k) in nn.Linear
  // layout, any float dtype; C (d_k, d_k) float64 contiguous; K (u, d_k), V (u, d_v) finite.
  // R = V - K Wᵀ; F = C Kᵀ; S = I_u + K F; G = F S^-1 (Cholesky of S); W += Rᵀ Gᵀ;
  // C -= G Fᵀ, symmetrized (for u <= 16 as C -= (G Fᵀ + F Gᵀ) / 2 in one pass, which keeps the
  // bitwise-symmetric C of rls_init bitwise symmetric; C must be symmetric).
  // Cost O(d_k² u + d_k d_v u + u³), independent of earlier edits.
  // Inputs are validated before W or C is written, so a refused call changes nothing.
  m.def("rls_update_(Tensor(a!) W, Tensor(b!) C, Tensor K, Tensor V) -> ()");

  // ---- palette: Hadamard rotation and fractional-bit codebook quantizers (Q-Palette / QTIP) -----
  // y = scale * (x * signs) H_n^T over the last dim, H_n = H_m (x) H_{2^k} with +-1 entries
  // (n = 2^k * m, m in {1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172}); scale = n^-1/2
  // makes it orthogonal. x fp32/bf16/fp16/fp64 (computed in fp32), signs (n,) float or None.
  m.def("hadamard_transform(Tensor x, Tensor? signs, float scale) -> Tensor");
  // Index (int32, (rows, in / d)) of the nearest codeword of a (2^c, d) float32 codebook (d = 1:
  // scalar, d = 2: pairs) for each unit of W (rows, in) float32.
  m.def("palette_encode(Tensor W, Tensor codebook) -> Tensor");
  // Packs c-bit codes idx (rows, units) int32 into (rows, 16 * blocks) int32 words, 32 // c codes
  // a word (layout in csrc/palette/cpu.h).
  m.def("palette_pack(Tensor idx, int code_bits) -> Tensor");
  // W (out, in_features) float32 = scales[:, None] * codebook[codes] from packed codes.
  m.def("palette_dequantize(Tensor packed, Tensor codebook, Tensor scales, int in_features) -> Tensor");
  // y (..., out) = x (..., in_features) W^T with W as palette_dequantize gives it, x's dtype;
  // decodes in registers for <= 16 tokens, dequantizes and calls GEMM for more.
  m.def("palette_matmul(Tensor x, Tensor packed, Tensor codebook, Tensor scales, int in_features) -> Tensor");
  // Trellis-coded quantization (QTIP bitshift trellis, L-bit states, bits_per_step new bits per
  // step of values_per_step weights, 1MAD computed code; layout in csrc/palette/tcq.h).
  // tcq_encode: Viterbi over each row of W (rows, in) float32 -> (rows, words) int32 streams.
  m.def("tcq_encode(Tensor W, int L, int bits_per_step, int values_per_step) -> Tensor");
  // tcq_encode_window: Viterbi over each row of a window W (rows, steps * values_per_step) float32
  // whose first state follows prev (rows,) int32 (-1: free) -> the first `commit` states (rows,
  // commit) int32 of each row's cheapest path (Hessian-aware encoding commits a block at a time).
  m.def("tcq_encode_window(Tensor W, Tensor prev, int L, int bits_per_step, int values_per_step, int commit) "
        "-> Tensor");
  // tcq_decode: W (rows, in_features) float32 = scales[:, None] * code(states).
  m.def("tcq_decode(Tensor packed, Tensor scales, int in_features, int L, int bits_per_step, "
        "int values_per_step) -> Tensor");
  // y (..., rows) = x (..., in_features) W^T with W as tcq_decode gives it, x's dtype; on CUDA
  // decodes the trellis in registers for <= 16 tokens; otherwise decodes W once and calls GEMM.
  m.def("tcq_matmul(Tensor x, Tensor packed, Tensor scales, int in_features, int L, int bits_per_step, "
        "int values_per_step) -> Tensor");
}
