#include "rls/cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>

namespace weightkit::rls_cpu {
namespace {

constexpr int64_t kTile = 32;

// (G Fᵀ)[i, j] = sum_r G[i, r] F[j, r].
inline double gf(const double* G, const double* F, int64_t i, int64_t j, int64_t u) {
  double s = 0.0;
  for (int64_t r = 0; r < u; ++r) s += G[i * u + r] * F[j * u + r];
  return s;
}

}  // namespace

void downdate_sym(double* C, const double* G, const double* F, int64_t n, int64_t u) {
  const int64_t tiles = (n + kTile - 1) / kTile;
  const int64_t pairs = tiles * (tiles + 1) / 2;
  // One task per tile pair (I <= J); pairs are disjoint in C, so no two tasks touch one element.
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      // Row-major enumeration of the upper triangle of tiles: find (I, J) with I <= J.
      int64_t I = 0, rest = p;
      while (rest >= tiles - I) {
        rest -= tiles - I;
        ++I;
      }
      const int64_t J = I + rest;
      const int64_t i0 = I * kTile, i1 = std::min(n, i0 + kTile);
      const int64_t j0 = J * kTile, j1 = std::min(n, j0 + kTile);
      for (int64_t i = i0; i < i1; ++i) {
        // On a diagonal tile only j >= i, so each mirrored pair is handled once.
        for (int64_t j = (I == J ? i : j0); j < j1; ++j) {
          double a = C[i * n + j], b = C[j * n + i];
          if (u > 0) {
            a -= gf(G, F, i, j, u);
            b -= gf(G, F, j, i, u);
          }
          const double m = 0.5 * (a + b);
          C[i * n + j] = m;
          C[j * n + i] = m;
        }
      }
    }
  });
}

}  // namespace weightkit::rls_cpu
