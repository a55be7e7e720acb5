// CUDA kernel of the RLS family: the symmetric downdate of the float64 inverse-Gram matrix C.
// Pure CUDA: raw pointers, sizes and a stream; the launcher only enqueues work.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace weightkit::rls_cuda {

// C (n x n, row-major float64) <- ((C - G Fᵀ) + (C - G Fᵀ)ᵀ) / 2 with G, F (n x u, row-major
// float64), u <= 16; u == 0 (G, F may be null) only symmetrizes. One block per pair of mirrored
// 32 x 32 tiles, staged through shared memory so both tiles are read and written coalesced.
void downdate_sym(double* C, const double* G, const double* F, int64_t n, int64_t u, cudaStream_t stream);

}  // namespace weightkit::rls_cuda
