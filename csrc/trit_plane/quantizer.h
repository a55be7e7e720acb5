// PTQTP on one weight group, on the CPU (host C++; the CUDA quantizer is in kernels.cu).
//
// The algorithm (PAPERS.md): start t1 = t2 = sign(w); repeat (a) alpha = ridge solution of
// min ||w - alpha1 t1 - alpha2 t2||^2, (b) each weight takes the best of the 9 (t1, t2) pairs for
// those scales; stop when max|alpha - alpha_prev| <= tol * max|alpha| (relative, so scaling W
// scales alpha and changes nothing else) or after max_iters rounds. Then the scales are refitted
// to the final trits, rounded to float16, and the trits re-chosen for the rounded scales: the
// stored pair (t, fp16 alpha) is what inference uses.
//
// Speed: step (b) is nearest-level quantization to the (at most 9) values alpha1 t1 + alpha2 t2,
// whose cells are intervals between midpoints. With the group sorted once and prefix sums of it,
// the statistics step (a) needs (the counts and sums of w per level) cost a binary search per
// midpoint, so a round is O(9 log n) rather than O(9 n).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "trit_plane/layout.h"

namespace weightkit::trit_plane {

struct Levels {
  int count = 0;
  int cand[kCandidates];        // candidate index of each level, ascending by value
  double mid[kCandidates - 1];  // mid[k]: boundary between level k and k+1; w > mid -> upper
};

// The distinct values alpha1 t1 + alpha2 t2 in ascending order; equal values keep the earliest
// candidate (a stable insertion sort over the candidate order, then dropping repeats).
inline Levels make_levels(double a1, double a2) {
  double v[kCandidates];
  int idx[kCandidates];
  int n = 0;
  for (int c = 0; c < kCandidates; ++c) {
    const double val = a1 * kCandT1[c] + a2 * kCandT2[c];
    int i = n;
    while (i > 0 && v[i - 1] > val) {
      v[i] = v[i - 1];
      idx[i] = idx[i - 1];
      --i;
    }
    v[i] = val;
    idx[i] = c;
    ++n;
  }
  Levels L;
  double last = 0.0;
  for (int i = 0; i < n; ++i) {
    if (L.count > 0 && v[i] == last) continue;
    if (L.count > 0) L.mid[L.count - 1] = 0.5 * (last + v[i]);
    L.cand[L.count++] = idx[i];
    last = v[i];
  }
  return L;
}

// alpha = (S^T S + lambda I)^-1 S^T w for the 2x2 system [[s11, s12], [s12, s22]], b.
inline void ridge_solve(double s11, double s12, double s22, double b1, double b2, double* alpha) {
  double p = s11, q = s22;
  for (int e = 0; e < kLambdaSteps; ++e) {
    p = s11 + kLambdas[e];
    q = s22 + kLambdas[e];
    const double half_tr = 0.5 * (p + q);
    const double disc = std::sqrt(0.25 * (p - q) * (p - q) + s12 * s12);
    const double lmax = half_tr + disc, lmin = half_tr - disc;
    if (lmin > 0.0 && lmax <= kCondMax * lmin) break;
  }
  const double det = p * q - s12 * s12;
  alpha[0] = (q * b1 - s12 * b2) / det;
  alpha[1] = (p * b2 - s12 * b1) / det;
}

class GroupQuantizer {
 public:
  explicit GroupQuantizer(int64_t max_len)
      : sorted_(static_cast<size_t>(max_len)), prefix_(static_cast<size_t>(max_len) + 1) {}

  // w: n finite floats. Writes alpha[2] = round_half(refitted scales) (the float16 values the
  // trits were chosen for) and the trits t1, t2 (n each).
  template <class RoundHalf>
  void run(const float* w, int64_t n, int64_t max_iters, double tol, double* alpha, int8_t* t1, int8_t* t2,
           RoundHalf round_half) {
    std::copy(w, w + n, sorted_.begin());
    std::sort(sorted_.begin(), sorted_.begin() + n);
    prefix_[0] = 0.0;
    for (int64_t i = 0; i < n; ++i) prefix_[i + 1] = prefix_[i] + static_cast<double>(sorted_[i]);
    // t1 = t2 = sign(w).
    const int64_t neg = std::lower_bound(sorted_.begin(), sorted_.begin() + n, 0.0f) - sorted_.begin();
    const int64_t pos = std::upper_bound(sorted_.begin(), sorted_.begin() + n, 0.0f) - sorted_.begin();
    const double nnz = static_cast<double>(neg + (n - pos));
    const double sum_abs = (prefix_[n] - prefix_[pos]) - prefix_[neg];
    double s11 = nnz, s12 = nnz, s22 = nnz, b1 = sum_abs, b2 = sum_abs;
    double a[2], prev[2] = {0.0, 0.0};
    for (int64_t it = 0; it < max_iters; ++it) {
      ridge_solve(s11, s12, s22, b1, b2, a);
      stats(make_levels(a[0], a[1]), n, &s11, &s12, &s22, &b1, &b2);
      if (it > 0 && std::max(std::fabs(a[0] - prev[0]), std::fabs(a[1] - prev[1])) <=
                        tol * std::max(std::fabs(a[0]), std::fabs(a[1])))
        break;
      prev[0] = a[0];
      prev[1] = a[1];
    }
    ridge_solve(s11, s12, s22, b1, b2, a);
    alpha[0] = round_half(a[0]);
    alpha[1] = round_half(a[1]);
    const Levels L = make_levels(alpha[0], alpha[1]);
    for (int64_t i = 0; i < n; ++i) {
      const double v = static_cast<double>(w[i]);
      int k = 0;
      while (k + 1 < L.count && v > L.mid[k]) ++k;
      t1[i] = static_cast<int8_t>(kCandT1[L.cand[k]]);
      t2[i] = static_cast<int8_t>(kCandT2[L.cand[k]]);
    }
  }

 private:
  // S^T S and S^T w for the trits that levels L assign to the sorted group.
  void stats(const Levels& L, int64_t n, double* s11, double* s12, double* s22, double* b1, double* b2) const {
    *s11 = *s12 = *s22 = *b1 = *b2 = 0.0;
    int64_t lo = 0;
    for (int k = 0; k < L.count; ++k) {
      const int64_t hi =
          k + 1 < L.count
              ? std::upper_bound(sorted_.begin() + lo, sorted_.begin() + n, L.mid[k],
                                 [](double m, float x) { return m < static_cast<double>(x); }) -
                    sorted_.begin()
              : n;
      const double c = static_cast<double>(hi - lo), s = prefix_[hi] - prefix_[lo];
      const int u = kCandT1[L.cand[k]], v = kCandT2[L.cand[k]];
      *s11 += c * u * u;
      *s12 += c * u * v;
      *s22 += c * v * v;
      *b1 += s * u;
      *b2 += s * v;
      lo = hi;
    }
  }

  std::vector<float> sorted_;
  std::vector<double> prefix_;
};

}  // namespace weightkit::trit_plane
