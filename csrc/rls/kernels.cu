#include "common/cuda_utils.cuh"
#include "rls/kernels.cuh"

namespace weightkit::rls_cuda {
namespace {

using weightkit::cuda::ceil_div;

constexpr int kTile = 32;
constexpr int kRows = 8;  // symmetrize: kTile x kRows threads, each covering kTile / kRows rows

__global__ void downdate_sym_kernel(double* __restrict__ C, const double* __restrict__ Gt,
                                    const double* __restrict__ Ft, int64_t n, int64_t u) {
  // Rows on x (up to 2^31 - 1 blocks), column tiles on y (65535 tiles of 256 cover n < 16.7M).
  const int64_t i = blockIdx.x;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  double s = 0.0;
  for (int64_t k = 0; k < u; ++k) {
    // (0.5 g_i) f_j + (0.5 f_i) g_j: at (j, i) the same two products come in swapped order.
    const double a = __dmul_rn(__dmul_rn(0.5, Gt[k * n + i]), Ft[k * n + j]);
    const double b = __dmul_rn(__dmul_rn(0.5, Ft[k * n + i]), Gt[k * n + j]);
    s = __dadd_rn(s, __dadd_rn(a, b));
  }
  C[i * n + j] = __dsub_rn(C[i * n + j], s);
}

// Tile (I, J) with I <= J from the block's linear index (upper_pair_from_linear enumerates the
// upper triangle column by column: L = J (J + 1) / 2 + I).
__global__ void symmetrize_kernel(double* __restrict__ C, int64_t n) {
  // +1 column: the transposed reads hit 32 different banks.
  __shared__ double a[kTile][kTile + 1];
  __shared__ double b[kTile][kTile + 1];
  int64_t I, J;
  weightkit::cuda::upper_pair_from_linear(blockIdx.x, I, J);
  const int64_t i0 = I * kTile, j0 = J * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;
  for (int r = ty; r < kTile; r += kRows) {  // a = C[I, J] block, b = C[J, I] block
    if (i0 + r < n && j0 + tx < n) a[r][tx] = C[(i0 + r) * n + j0 + tx];
    if (j0 + r < n && i0 + tx < n) b[r][tx] = C[(j0 + r) * n + i0 + tx];
  }
  __syncthreads();
  for (int r = ty; r < kTile; r += kRows) {
    // C[i0 + r, j0 + tx] and its mirror (b[tx][r]) get the same average.
    if (i0 + r < n && j0 + tx < n) C[(i0 + r) * n + j0 + tx] = 0.5 * (a[r][tx] + b[tx][r]);
    if (I != J && j0 + r < n && i0 + tx < n) C[(j0 + r) * n + i0 + tx] = 0.5 * (b[r][tx] + a[tx][r]);
  }
}

}  // namespace

void downdate_sym(double* C, const double* Gt, const double* Ft, int64_t n, int64_t u, cudaStream_t stream) {
  if (n == 0 || u == 0) return;
  constexpr int kThreads = 256;
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(ceil_div<int64_t>(n, kThreads)));
  downdate_sym_kernel<<<grid, kThreads, 0, stream>>>(C, Gt, Ft, n, u);
}

void symmetrize(double* C, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t tiles = ceil_div<int64_t>(n, kTile);
  const int64_t pairs = tiles * (tiles + 1) / 2;
  symmetrize_kernel<<<static_cast<unsigned>(pairs), dim3(kTile, kRows), 0, stream>>>(C, n);
}

}  // namespace weightkit::rls_cuda
