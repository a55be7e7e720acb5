#include "common/cuda_utils.cuh"
#include "rls/kernels.cuh"

namespace weightkit::rls_cuda {
namespace {

using weightkit::cuda::ceil_div;

constexpr int kTile = 32;
constexpr int kRows = 8;  // threads per block: kTile x kRows, each thread covers kTile / kRows rows
constexpr int kMaxU = 16;

// Tile (I, J) with I <= J from the block's linear index (upper_pair_from_linear enumerates the
// upper triangle column by column: L = J (J + 1) / 2 + I).
__global__ void downdate_sym_kernel(double* __restrict__ C, const double* __restrict__ G,
                                    const double* __restrict__ F, int64_t n, int u) {
  // +1 column: the transposed reads hit 32 different banks.
  __shared__ double a[kTile][kTile + 1];
  __shared__ double b[kTile][kTile + 1];
  int64_t I, J;
  weightkit::cuda::upper_pair_from_linear(blockIdx.x, I, J);
  const int64_t i0 = I * kTile, j0 = J * kTile;
  const int tx = threadIdx.x, ty = threadIdx.y;

  // a[r][c] = (C - G Fᵀ)[i0 + r, j0 + c]; b[r][c] = (C - G Fᵀ)[j0 + r, i0 + c].
  for (int r = ty; r < kTile; r += kRows) {
    const int64_t ia = i0 + r, ja = j0 + tx, ib = j0 + r, jb = i0 + tx;
    if (ia < n && ja < n) {
      double v = C[ia * n + ja];
      for (int k = 0; k < u; ++k) v -= G[ia * u + k] * F[ja * u + k];
      a[r][tx] = v;
    }
    if (ib < n && jb < n) {
      double v = C[ib * n + jb];
      for (int k = 0; k < u; ++k) v -= G[ib * u + k] * F[jb * u + k];
      b[r][tx] = v;
    }
  }
  __syncthreads();
  for (int r = ty; r < kTile; r += kRows) {
    const int64_t ia = i0 + r, ja = j0 + tx, ib = j0 + r, jb = i0 + tx;
    // C[ia, ja] and its mirror C[ja, ia] = b[tx][r] get the same average.
    if (ia < n && ja < n) C[ia * n + ja] = 0.5 * (a[r][tx] + b[tx][r]);
    if (I != J && ib < n && jb < n) C[ib * n + jb] = 0.5 * (b[r][tx] + a[tx][r]);
  }
}

}  // namespace

void downdate_sym(double* C, const double* G, const double* F, int64_t n, int64_t u, cudaStream_t stream) {
  if (n == 0) return;
  const int64_t tiles = ceil_div<int64_t>(n, kTile);
  const int64_t pairs = tiles * (tiles + 1) / 2;
  const int uu = u > kMaxU ? kMaxU : static_cast<int>(u);
  downdate_sym_kernel<<<static_cast<unsigned>(pairs), dim3(kTile, kRows), 0, stream>>>(C, G, F, n, uu);
}

}  // namespace weightkit::rls_cuda
