// CPU kernel of the RLS family: the symmetric downdate of the float64 inverse-Gram matrix C.
#pragma once

#include <cstdint>

namespace weightkit::rls_cpu {

// C (n x n, row-major float64) <- ((C - G Fᵀ) + (C - G Fᵀ)ᵀ) / 2 for G, F (n x u, row-major
// float64), in one pass over C: each pair of mirrored 32 x 32 tiles is read once, downdated and
// averaged, and written back to both places. u == 0 (G, F unused) only symmetrizes.
void downdate_sym(double* C, const double* G, const double* F, int64_t n, int64_t u);

}  // namespace weightkit::rls_cpu
