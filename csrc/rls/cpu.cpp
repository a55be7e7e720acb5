#include "rls/cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace weightkit::rls_cpu {

// Built with -ffp-contract=off (CMakeLists.txt): a fused a*b + c rounds differently at (i, j) and
// (j, i) and would break the bitwise symmetry argued below.
void downdate_sym(double* C, const double* Gt, const double* Ft, int64_t n, int64_t u) {
  // Rows are independent; 16 rows (>= 64 KB of C at n = 512) per task amortize the scheduling.
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      double* crow = C + i * n;
      for (int64_t k = 0; k < u; ++k) {
        const double gi = 0.5 * Gt[k * n + i], fi = 0.5 * Ft[k * n + i];
        const double* g = Gt + k * n;
        const double* f = Ft + k * n;
        // gi * f[j] + fi * g[j] at (i, j) is fi' * g + gi' * f at (j, i) with the operands of
        // the addition swapped: IEEE addition commutes, so both round to the same value.
        for (int64_t j = 0; j < n; ++j) crow[j] -= gi * f[j] + fi * g[j];
      }
    }
  });
}

void symmetrize(double* C, int64_t n) {
  constexpr int64_t kTile = 32;
  const int64_t tiles = (n + kTile - 1) / kTile;
  // One task per tile row I, covering the pairs (I, J >= I): disjoint parts of C.
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t I = begin; I < end; ++I) {
      const int64_t i0 = I * kTile, i1 = std::min(n, i0 + kTile);
      for (int64_t J = I; J < tiles; ++J) {
        const int64_t j0 = J * kTile, j1 = std::min(n, j0 + kTile);
        for (int64_t i = i0; i < i1; ++i) {
          for (int64_t j = (I == J ? i + 1 : j0); j < j1; ++j) {
            const double m = 0.5 * (C[i * n + j] + C[j * n + i]);
            C[i * n + j] = m;
            C[j * n + i] = m;
          }
        }
      }
    }
  });
}

}  // namespace weightkit::rls_cpu
