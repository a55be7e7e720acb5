// Small Hadamard matrices H_m (entries +-1, H H^T = m I) for the orders the Hadamard transform
// combines with a power of two (n = 2^k * m). Built, not stored: Paley I for prime q = 3 mod 4
// (m = q + 1), Paley II for prime powers q = 1 mod 4 (m = 2 (q + 1)), Sylvester doubling for 40,
// and the Goethals-Seidel array for 156 = 4 * 39 and 172 = 4 * 43 (see goethals_seidel below).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace weightkit::palette {

// The multiplicative structure of GF(q), q = p (prime) or q = p^2 = 25 (p = 5, x^2 = 2), enough
// for the quadratic character chi. Elements are indexed a0 + p * a1.
struct SmallField {
  int p = 0, q = 0;
  int add(int a, int b) const { return (a % p + b % p) % p + p * (((a / p) + (b / p)) % p); }
  int neg(int a) const { return ((p - a % p) % p) + p * ((p - (a / p)) % p); }
  int mul(int a, int b) const {
    const int a0 = a % p, a1 = a / p, b0 = b % p, b1 = b / p;
    // (a0 + a1 x)(b0 + b1 x) with x^2 = 2 (only used for q = 25).
    const int c0 = (a0 * b0 + 2 * a1 * b1) % p, c1 = (a0 * b1 + a1 * b0) % p;
    return c0 + p * c1;
  }
  // chi(a) = a^((q - 1) / 2): 0, +1 (square) or -1.
  int chi(int a) const {
    if (a == 0) return 0;
    int r = 1, base = a;
    for (int e = (q - 1) / 2; e > 0; e >>= 1) {
      if (e & 1) r = mul(r, base);
      base = mul(base, base);
    }
    return r == 1 ? 1 : -1;
  }
};

inline SmallField make_field(int q) {
  SmallField f;
  f.q = q;
  f.p = (q == 25) ? 5 : q;
  return f;
}

// Jacobsthal matrix Q[i][j] = chi(j - i), q x q.
inline std::vector<int> jacobsthal(int q) {
  const SmallField f = make_field(q);
  std::vector<int> Q(q * q);
  for (int i = 0; i < q; ++i)
    for (int j = 0; j < q; ++j) Q[i * q + j] = f.chi(f.add(j, f.neg(i)));
  return Q;
}

// Paley I, q = 3 mod 4 prime: H = I + S with S = [[0, 1^T], [-1, Q]] skew.
inline std::vector<int8_t> paley1(int q) {
  const int m = q + 1;
  const std::vector<int> Q = jacobsthal(q);
  std::vector<int8_t> H(m * m);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < m; ++j) {
      int s;
      if (i == 0) s = j == 0 ? 0 : 1;
      else if (j == 0) s = -1;
      else s = Q[(i - 1) * q + (j - 1)];
      H[i * m + j] = static_cast<int8_t>(s + (i == j ? 1 : 0));
    }
  return H;
}

// Paley II, q = 1 mod 4: C = [[0, 1^T], [1, Q]] symmetric conference matrix; each 0 becomes
// [[1, -1], [-1, -1]] and each +-1 becomes +-[[1, 1], [1, -1]]. Order 2 (q + 1), symmetric.
inline std::vector<int8_t> paley2(int q) {
  const int c = q + 1, m = 2 * c;
  const std::vector<int> Q = jacobsthal(q);
  std::vector<int8_t> H(m * m);
  for (int i = 0; i < c; ++i)
    for (int j = 0; j < c; ++j) {
      int s;
      if (i == 0 && j == 0) s = 0;
      else if (i == 0 || j == 0) s = 1;
      else s = Q[(i - 1) * q + (j - 1)];
      const std::array<int, 4> blk = s == 0 ? std::array<int, 4>{1, -1, -1, -1}
                                            : std::array<int, 4>{s, s, s, -s};
      for (int a = 0; a < 2; ++a)
        for (int b = 0; b < 2; ++b) H[(2 * i + a) * m + 2 * j + b] = static_cast<int8_t>(blk[2 * a + b]);
    }
  return H;
}

// [[H, H], [H, -H]].
inline std::vector<int8_t> sylvester_double(const std::vector<int8_t>& H, int m) {
  std::vector<int8_t> D(4 * m * m);
  for (int i = 0; i < 2 * m; ++i)
    for (int j = 0; j < 2 * m; ++j) {
      const int8_t v = H[(i % m) * m + (j % m)];
      D[i * 2 * m + j] = (i >= m && j >= m) ? static_cast<int8_t>(-v) : v;
    }
  return D;
}

// Goethals-Seidel: four +-1 sequences a, b, c, d of length n whose periodic autocorrelations sum
// to 0 at every nonzero shift give, with circulants A..D and the back-diagonal R, the order-4n
// Hadamard matrix
//   [[  A,    BR,    CR,    DR ],
//    [ -BR,    A,   DtR,  -CtR ],
//    [ -CR,  -DtR,    A,   BtR ],
//    [ -DR,   CtR,  -BtR,    A ]].
// Our sequences are constant on the orbits of Z_n under multiplication by the subgroup <g> of the
// units, so each is a sign per orbit: bit j of minus[k] set = sequence k is -1 on orbit j (orbits
// numbered by their smallest element). Such a quadruple was found by tools/hadamard_gs_search.py
// (a meet-in-the-middle search over orbit sign patterns, under a second).
inline std::vector<int8_t> goethals_seidel(int n, int g, const std::array<uint32_t, 4>& minus) {
  std::vector<int> orbit(n, -1);
  int n_orbits = 0;
  for (int x = 0; x < n; ++x) {
    if (orbit[x] >= 0) continue;
    int y = x;
    do {
      orbit[y] = n_orbits;
      y = (y * g) % n;
    } while (y != x);
    ++n_orbits;
  }
  std::array<std::vector<int>, 4> seq;
  for (int k = 0; k < 4; ++k) {
    seq[k].resize(n);
    for (int x = 0; x < n; ++x) seq[k][x] = (minus[k] >> orbit[x]) & 1 ? -1 : 1;
  }
  // Block (p, q): which sequence, its sign, and its form: 0 circulant X[i][j] = x[j - i],
  // 1 XR[i][j] = x[-1 - i - j], 2 XtR[i][j] = x[i + j + 1] (indices mod n).
  struct Block { int seq, sign, form; };
  static constexpr Block kArray[4][4] = {
      {{0, 1, 0}, {1, 1, 1}, {2, 1, 1}, {3, 1, 1}},
      {{1, -1, 1}, {0, 1, 0}, {3, 1, 2}, {2, -1, 2}},
      {{2, -1, 1}, {3, -1, 2}, {0, 1, 0}, {1, 1, 2}},
      {{3, -1, 1}, {2, 1, 2}, {1, -1, 2}, {0, 1, 0}}};
  const int m = 4 * n;
  std::vector<int8_t> H(m * m);
  for (int p = 0; p < 4; ++p)
    for (int q = 0; q < 4; ++q) {
      const Block b = kArray[p][q];
      for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) {
          const int idx = b.form == 0 ? j - i : b.form == 1 ? -1 - i - j : i + j + 1;
          H[(p * n + i) * m + q * n + j] = static_cast<int8_t>(b.sign * seq[b.seq][((idx % n) + n) % n]);
        }
    }
  return H;
}

// H_m row-major (m * m entries of +-1), or empty when m is not a supported order.
inline std::vector<int8_t> small_hadamard(int m) {
  switch (m) {
    case 1: return {1};
    case 12: return paley1(11);
    case 20: return paley1(19);
    case 28: return paley2(13);
    case 36: return paley2(17);
    case 40: return sylvester_double(paley1(19), 20);
    case 52: return paley2(25);
    case 60: return paley1(59);
    case 108: return paley1(107);
    case 140: return paley1(139);
    case 156: return goethals_seidel(39, 29, {167, 333, 488, 360});
    case 172: return goethals_seidel(43, 4, {38, 52, 26, 25});
    default: return {};
  }
}

// The orders small_hadamard builds, for error messages.
inline const char* supported_orders() { return "1, 12, 20, 28, 36, 40, 52, 60, 108, 140, 156, 172"; }

// Splits n = 2^k * m with m a supported order (the largest such m dividing n); returns m, or 0.
inline int hadamard_split(int64_t n) {
  if (n <= 0) return 0;
  int64_t m = n;
  while (m % 2 == 0 && small_hadamard(static_cast<int>(m > 200 ? 0 : m)).empty()) m /= 2;
  if (m > 200) return 0;
  return small_hadamard(static_cast<int>(m)).empty() ? 0 : static_cast<int>(m);
}

}  // namespace weightkit::palette
