// CUDA kernels of the RLS family: the symmetric downdate of the float64 inverse-Gram matrix C.
// Pure CUDA: raw pointers, sizes and a stream; launchers only enqueue work.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace weightkit::rls_cuda {

// C (n x n, row-major float64) -= (G Fᵀ + F Gᵀ) / 2 with G, F (n x u) given transposed, Gt and
// Ft (u x n, row-major float64). Products and sums are rounded explicitly (no FMA), in the same
// order at (i, j) and (j, i), so a bitwise-symmetric C stays bitwise symmetric; one thread per
// element, coalesced along rows.
void downdate_sym(double* C, const double* Gt, const double* Ft, int64_t n, int64_t u, cudaStream_t stream);

// C <- (C + Cᵀ) / 2 in place: one block per pair of mirrored 32 x 32 tiles, staged through
// shared memory so both tiles are read and written coalesced.
void symmetrize(double* C, int64_t n, cudaStream_t stream);

}  // namespace weightkit::rls_cuda
