// CPU kernels of the RLS family: the symmetric downdate of the float64 inverse-Gram matrix C.
#pragma once

#include <cstdint>

namespace weightkit::rls_cpu {

// C (n x n, row-major float64) -= (G Fᵀ + F Gᵀ) / 2 for G, F (n x u) given transposed, Gt and Ft
// (u x n, row-major float64). Element (i, j) and (j, i) are computed from the same products
// summed in the same order, so a bitwise-symmetric C stays bitwise symmetric while the kernel
// streams C row by row (no transposed access). For symmetric C this equals
// ((C - G Fᵀ) + (C - G Fᵀ)ᵀ) / 2, the symmetrized downdate.
void downdate_sym(double* C, const double* Gt, const double* Ft, int64_t n, int64_t u);

// C <- (C + Cᵀ) / 2 in place, over pairs of mirrored 32 x 32 tiles.
void symmetrize(double* C, int64_t n);

}  // namespace weightkit::rls_cpu
