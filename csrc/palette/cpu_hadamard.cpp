// The palette family's Hadamard transform on the CPU (see hadamard_rows in cpu.h): per row, an
// FWHT of each power-of-two segment, then the small m x m factor that mixes the segments.
#include "palette/cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/cpu_target.h"

namespace weightkit::palette_cpu {
namespace {

// The scalar path (and the vector paths' fallback for segments shorter than a vector): plain
// loops. In-place unnormalized Walsh-Hadamard transform of m consecutive segments of length P
// (a power of two).
WK_INLINE void fwht_segments(float* buf, int64_t m, int64_t P) {
  for (int64_t a = 0; a < m; ++a) {
    float* s = buf + a * P;
    for (int64_t h = 1; h < P; h *= 2)
      for (int64_t i = 0; i < P; i += 2 * h)
        for (int64_t j = i; j < i + h; ++j) {
          const float u = s[j], v = s[j + h];
          s[j] = u + v;
          s[j + h] = u - v;
        }
  }
}

WK_INLINE void hadamard_row(const float* x, float* y, float* buf, int64_t n, int m, const float* Hf,
                            const float* signs, float scale) {
  if (signs != nullptr)
    for (int64_t i = 0; i < n; ++i) buf[i] = x[i] * signs[i];
  else
    std::memcpy(buf, x, sizeof(float) * n);
  const int64_t P = n / m;
  fwht_segments(buf, m, P);
  if (m == 1) {
    for (int64_t i = 0; i < n; ++i) y[i] = buf[i] * scale;
    return;
  }
  // y[a, :] = scale * sum_a' H[a, a'] buf[a', :]: the small factor of the Kronecker product.
  for (int a = 0; a < m; ++a) {
    float* out = y + a * P;
    for (int64_t b = 0; b < P; ++b) out[b] = 0.f;
    for (int a2 = 0; a2 < m; ++a2) {
      const float h = Hf[a * m + a2] * scale;
      const float* in = buf + a2 * P;
      for (int64_t b = 0; b < P; ++b) out[b] += h * in[b];
    }
  }
}

// The vector paths, written once with GCC vector types (V: W floats, VI: W int32) and compiled
// for AVX2 (W = 8) and AVX-512 (W = 16) by the target-attributed wrappers below. Every helper is
// always inlined into those wrappers, so no vector crosses a call boundary and GCC's note that
// the vector-passing ABI differs without AVX (-Wpsabi) does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

template <class V>
WK_INLINE V vload(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <class V>
WK_INLINE void vstore(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// One butterfly stage of distance H < W inside a vector: lane l pairs with lane l ^ H; the lower
// lane keeps u + v, the upper u - v (= partner - own).
template <class V, class VI, int W, int H>
WK_INLINE V butterfly_in_vector(V v) {
  VI partner;
  V sign;
  for (int l = 0; l < W; ++l) {
    partner[l] = l ^ H;
    sign[l] = (l & H) ? -1.f : 1.f;
  }
  return v * sign + __builtin_shuffle(v, partner);
}

// In-place unnormalized FWHT of one segment of P floats, P a power of two >= W: the stages of
// distance < W inside each vector in one pass, then two stages per pass (radix 4) vector by vector,
// so a 4096-float row takes 6 passes over L1 instead of 12.
template <class V, class VI, int W>
WK_INLINE void fwht_segment_vec(float* s, int64_t P) {
  for (int64_t i = 0; i < P; i += W) {
    V v = vload<V>(s + i);
    v = butterfly_in_vector<V, VI, W, 1>(v);
    v = butterfly_in_vector<V, VI, W, 2>(v);
    v = butterfly_in_vector<V, VI, W, 4>(v);
    if constexpr (W == 16) v = butterfly_in_vector<V, VI, W, 8>(v);
    vstore(s + i, v);
  }
  int64_t h = W;
  for (; 2 * h < P; h *= 4)
    for (int64_t i = 0; i < P; i += 4 * h)
      for (int64_t j = i; j < i + h; j += W) {
        const V a = vload<V>(s + j), b = vload<V>(s + j + h), c = vload<V>(s + j + 2 * h),
                d = vload<V>(s + j + 3 * h);
        const V ab = a + b, a_b = a - b, cd = c + d, c_d = c - d;
        vstore(s + j, ab + cd);
        vstore(s + j + h, a_b + c_d);
        vstore(s + j + 2 * h, ab - cd);
        vstore(s + j + 3 * h, a_b - c_d);
      }
  if (h < P)
    for (int64_t j = 0; j < h; j += W) {
      const V a = vload<V>(s + j), b = vload<V>(s + j + h);
      vstore(s + j, a + b);
      vstore(s + j + h, a - b);
    }
}

// y[a, b0:b0+NV*W] = sum_a' Hf[a, a'] buf[a', b0:...] for the RA rows a0..a0+RA-1 of the small
// factor: RA x NV accumulators, one broadcast per (a, a') and NV vector loads per a'.
template <class V, int W, int RA, int NV>
WK_INLINE void small_factor_tile(const float* buf, float* y, const float* Hf, int m, int64_t P, int a0, int64_t b0) {
  V acc[RA][NV] = {};
  for (int a2 = 0; a2 < m; ++a2) {
    V in[NV];
    for (int k = 0; k < NV; ++k) in[k] = vload<V>(buf + a2 * P + b0 + k * W);
    for (int r = 0; r < RA; ++r) {
      const float h = Hf[(a0 + r) * m + a2];
      for (int k = 0; k < NV; ++k) acc[r][k] += h * in[k];
    }
  }
  for (int r = 0; r < RA; ++r)
    for (int k = 0; k < NV; ++k) vstore(y + (a0 + r) * P + b0 + k * W, acc[r][k]);
}

template <class V, int W, int NV>
WK_INLINE void small_factor(const float* buf, float* y, const float* Hf, int m, int64_t P) {
  // Tiles of 6 rows keep 12 accumulator chains in flight (4 rows, 8 chains, leave the FMA units
  // waiting on latency); m is a multiple of 4, so one or two 4-row tiles make up the rest.
  const int four_row_tiles = (m % 6) == 0 ? 0 : (m % 6) == 4 ? 1 : 2;
  const int a_six = m - 4 * four_row_tiles;
  for (int64_t b0 = 0; b0 < P; b0 += NV * W)
    for (int a0 = 0; a0 < m; a0 += a0 < a_six ? 6 : 4) {
      if (a0 < a_six)
        small_factor_tile<V, W, 6, NV>(buf, y, Hf, m, P, a0, b0);
      else
        small_factor_tile<V, W, 4, NV>(buf, y, Hf, m, P, a0, b0);
    }
}

// One row for P = n / m >= W. Hf: the small factor as floats (+-1), m a multiple of 4 when > 1
// (every supported order is). The scale goes in with the signs, so it costs no extra pass.
template <class V, class VI, int W>
WK_INLINE void hadamard_row_vec(const float* x, float* y, float* buf, int64_t n, int m, const float* Hf,
                                const float* signs, float scale) {
  float* work = m == 1 ? y : buf;  // x and y may alias: x is read before anything is written
  if (signs != nullptr)
    for (int64_t i = 0; i < n; i += W) vstore(work + i, vload<V>(x + i) * vload<V>(signs + i) * scale);
  else
    for (int64_t i = 0; i < n; i += W) vstore(work + i, vload<V>(x + i) * scale);
  const int64_t P = n / m;
  for (int a = 0; a < m; ++a) fwht_segment_vec<V, VI, W>(work + a * P, P);
  if (m == 1) return;
  if (P >= 2 * W)
    small_factor<V, W, 2>(buf, y, Hf, m, P);
  else
    small_factor<V, W, 1>(buf, y, Hf, m, P);
}

struct HadamardArgs {
  int64_t n;
  int m;
  const float* Hf;  // the small factor, +-1 as floats
  const float* signs;
  float scale;
};

void hadamard_row_scalar(const float* x, float* y, float* buf, const HadamardArgs& a) {
  hadamard_row(x, y, buf, a.n, a.m, a.Hf, a.signs, a.scale);
}
// The vector paths need whole vectors per segment; narrower segments (n / m < W, small widths
// only) take the plain loops, compiled for the same ISA.
WK_AVX2 void hadamard_row_avx2(const float* x, float* y, float* buf, const HadamardArgs& a) {
  if (a.n / a.m >= 8)
    hadamard_row_vec<f32x8, i32x8, 8>(x, y, buf, a.n, a.m, a.Hf, a.signs, a.scale);
  else
    hadamard_row(x, y, buf, a.n, a.m, a.Hf, a.signs, a.scale);
}
WK_AVX512 void hadamard_row_avx512(const float* x, float* y, float* buf, const HadamardArgs& a) {
  if (a.n / a.m >= 16)
    hadamard_row_vec<f32x16, i32x16, 16>(x, y, buf, a.n, a.m, a.Hf, a.signs, a.scale);
  else
    hadamard_row(x, y, buf, a.n, a.m, a.Hf, a.signs, a.scale);
}

}  // namespace

void hadamard_rows(const float* x, float* y, int64_t rows, int64_t n, int m, const int8_t* Hm, const float* signs,
                   float scale, CpuIsa isa) {
  auto row_fn = isa == CpuIsa::Avx512 ? &hadamard_row_avx512 : isa == CpuIsa::Avx2 ? &hadamard_row_avx2
                                                                                   : &hadamard_row_scalar;
  const std::vector<float> Hf(Hm, Hm + static_cast<int64_t>(m) * m);
  const HadamardArgs args{n, m, Hf.data(), signs, scale};
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> buf(n);
    for (int64_t r = r0; r < r1; ++r) row_fn(x + r * n, y + r * n, buf.data(), args);
  });
}

}  // namespace weightkit::palette_cpu
