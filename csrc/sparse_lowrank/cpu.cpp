#include "sparse_lowrank/cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <sstream>

#include "common/cpu_target.h"
#include "common/simd.h"

namespace weightkit::sparse_lowrank_cpu {
namespace {

// Tokens per tile: 4 AVX-512 or 8 AVX2 registers of fp32 lanes.
constexpr int64_t kTile = 64;
// The backward pass sums the sparse-value gradient over at most this many groups of tiles, in
// order: the grouping depends on T only, so results do not depend on the thread count.
constexpr int64_t kMaxGroups = 16;
// Below this many multiply-adds (nnz x T) a call runs on one thread: a parallel region's
// fork/join, and on a shared machine the wait for a descheduled thread, costs more than it saves.
constexpr int64_t kParallelWork = int64_t(1) << 22;

template <typename R, typename C>
struct CsrT {
  const R* rp;
  const C* ci;
  const float* v;
  int64_t rows, cols;
};

// Calls f(CsrT<R, C>) with the index types of `s`.
template <typename F>
void with_csr(const Csr& s, F&& f) {
  auto rows = [&](auto* rp) {
    using R = std::remove_const_t<std::remove_pointer_t<decltype(rp)>>;
    if (s.col_idx_32) {
      f(CsrT<R, int32_t>{rp, static_cast<const int32_t*>(s.col_idx), s.values, s.rows, s.cols});
    } else {
      f(CsrT<R, int16_t>{rp, static_cast<const int16_t*>(s.col_idx), s.values, s.rows, s.cols});
    }
  };
  if (s.row_ptr_64) {
    rows(static_cast<const int64_t*>(s.row_ptr));
  } else {
    rows(static_cast<const int32_t*>(s.row_ptr));
  }
}

// Rows per parallel task, so that a task holds ~2K nonzeros.
int64_t row_grain(int64_t rows, int64_t nnz) {
  const int64_t per_row = std::max<int64_t>(1, nnz / std::max<int64_t>(rows, 1));
  return std::max<int64_t>(1, 2048 / per_row);
}

// ------------------------------------------------------------------------------ tiles

// tile (features x kTile, fp32) = src[t0 : t0 + n, :]^T for token-major src (T x features);
// lanes n..kTile are zero, so the kernels always run full-width.
template <typename E>
void load_tile(const E* src, int64_t features, int64_t t0, int64_t n, float* tile) {
  if (n < kTile) {
    for (int64_t c = 0; c < features; ++c) std::fill(tile + c * kTile + n, tile + (c + 1) * kTile, 0.f);
  }
  for (int64_t j = 0; j < n; ++j) {
    const E* row = src + (t0 + j) * features;
    for (int64_t c = 0; c < features; ++c) tile[c * kTile + j] = static_cast<float>(row[c]);
  }
}

// dst[t0 + j, c] += tile[c, j] for j < n and features c in [c0, c1).
template <typename E>
void add_tile(const float* tile, int64_t features, int64_t t0, int64_t n, int64_t c0, int64_t c1, E* dst) {
  for (int64_t j = 0; j < n; ++j) {
    E* row = dst + (t0 + j) * features;
    for (int64_t c = c0; c < c1; ++c) row[c] = static_cast<E>(static_cast<float>(row[c]) + tile[c * kTile + j]);
  }
}

// ------------------------------------------------------------------------------ forward tile

// YT[i] = sum_k v_k XT[c_k] over the kTile lanes, rows [r0, r1).
template <typename R, typename C>
void tile_spmm_scalar(const CsrT<R, C>& s, const float* XT, float* YT, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    float acc[kTile] = {};
    for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
      const float* x = XT + int64_t(s.ci[k]) * kTile;
      for (int64_t j = 0; j < kTile; ++j) acc[j] += s.v[k] * x[j];
    }
    std::copy(acc, acc + kTile, YT + i * kTile);
  }
}

template <typename R, typename C>
WK_AVX2 void tile_spmm_avx2(const CsrT<R, C>& s, const float* XT, float* YT, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    __m256 a[8];
    for (int j = 0; j < 8; ++j) a[j] = _mm256_setzero_ps();
    for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
      const __m256 v = _mm256_set1_ps(s.v[k]);
      const float* x = XT + int64_t(s.ci[k]) * kTile;
      for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 8 * j), a[j]);
    }
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(YT + i * kTile + 8 * j, a[j]);
  }
}

template <typename R, typename C>
WK_AVX512 void tile_spmm_avx512(const CsrT<R, C>& s, const float* XT, float* YT, int64_t r0, int64_t r1) {
  for (int64_t i = r0; i < r1; ++i) {
    __m512 a[4];
    for (int j = 0; j < 4; ++j) a[j] = _mm512_setzero_ps();
    for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
      const __m512 v = _mm512_set1_ps(s.v[k]);
      const float* x = XT + int64_t(s.ci[k]) * kTile;
      for (int j = 0; j < 4; ++j) a[j] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 16 * j), a[j]);
    }
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(YT + i * kTile + 16 * j, a[j]);
  }
}

template <typename R, typename C>
void tile_spmm(const CsrT<R, C>& s, const float* XT, float* YT, int64_t r0, int64_t r1, CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx512: tile_spmm_avx512(s, XT, YT, r0, r1); break;
    case CpuIsa::Avx2: tile_spmm_avx2(s, XT, YT, r0, r1); break;
    default: tile_spmm_scalar(s, XT, YT, r0, r1);
  }
}

// ------------------------------------------------------------------------------ backward tile

// For every nonzero k (row i, column c): with GX, ZT[c] += v_k GT[i]; with GV, acc[k] +=
// <GT[i], XT[c]>. One pass over the rows serves both, with GT[i] held in registers.
template <bool GX, bool GV, typename R, typename C>
void tile_backward_scalar(const CsrT<R, C>& s, const float* GT, const float* XT, float* ZT, float* acc) {
  for (int64_t i = 0; i < s.rows; ++i) {
    const float* g = GT + i * kTile;
    for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
      const int64_t c = s.ci[k];
      if constexpr (GX) {
        for (int64_t j = 0; j < kTile; ++j) ZT[c * kTile + j] += s.v[k] * g[j];
      }
      if constexpr (GV) {
        float d = 0.f;
        for (int64_t j = 0; j < kTile; ++j) d += g[j] * XT[c * kTile + j];
        acc[k] += d;
      }
    }
  }
}

template <bool GX, bool GV, typename R, typename C>
WK_AVX2 void tile_backward_avx2(const CsrT<R, C>& s, const float* GT, const float* XT, float* ZT, float* acc) {
  for (int64_t i = 0; i < s.rows; ++i) {
    __m256 g[8];
    for (int j = 0; j < 8; ++j) g[j] = _mm256_loadu_ps(GT + i * kTile + 8 * j);
    for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
      const int64_t c = s.ci[k];
      if constexpr (GX) {
        const __m256 v = _mm256_set1_ps(s.v[k]);
        float* z = ZT + c * kTile;
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(z + 8 * j, _mm256_fmadd_ps(v, g[j], _mm256_loadu_ps(z + 8 * j)));
      }
      if constexpr (GV) {
        const float* x = XT + c * kTile;
        __m256 d0 = _mm256_mul_ps(g[0], _mm256_loadu_ps(x));
        __m256 d1 = _mm256_mul_ps(g[1], _mm256_loadu_ps(x + 8));
        for (int j = 2; j < 8; j += 2) {
          d0 = _mm256_fmadd_ps(g[j], _mm256_loadu_ps(x + 8 * j), d0);
          d1 = _mm256_fmadd_ps(g[j + 1], _mm256_loadu_ps(x + 8 * j + 8), d1);
        }
        acc[k] += hsum256(_mm256_add_ps(d0, d1));
      }
    }
  }
}

template <bool GX, bool GV, typename R, typename C>
WK_AVX512 void tile_backward_avx512(const CsrT<R, C>& s, const float* GT, const float* XT, float* ZT, float* acc) {
  for (int64_t i = 0; i < s.rows; ++i) {
    __m512 g[4];
    for (int j = 0; j < 4; ++j) g[j] = _mm512_loadu_ps(GT + i * kTile + 16 * j);
    for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
      const int64_t c = s.ci[k];
      if constexpr (GX) {
        const __m512 v = _mm512_set1_ps(s.v[k]);
        float* z = ZT + c * kTile;
        for (int j = 0; j < 4; ++j) _mm512_storeu_ps(z + 16 * j, _mm512_fmadd_ps(v, g[j], _mm512_loadu_ps(z + 16 * j)));
      }
      if constexpr (GV) {
        const float* x = XT + c * kTile;
        __m512 d0 = _mm512_mul_ps(g[0], _mm512_loadu_ps(x));
        __m512 d1 = _mm512_mul_ps(g[1], _mm512_loadu_ps(x + 16));
        d0 = _mm512_fmadd_ps(g[2], _mm512_loadu_ps(x + 32), d0);
        d1 = _mm512_fmadd_ps(g[3], _mm512_loadu_ps(x + 48), d1);
        acc[k] += _mm512_reduce_add_ps(_mm512_add_ps(d0, d1));
      }
    }
  }
}

template <bool GX, bool GV, typename R, typename C>
void tile_backward(const CsrT<R, C>& s, const float* GT, const float* XT, float* ZT, float* acc, CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx512: tile_backward_avx512<GX, GV>(s, GT, XT, ZT, acc); break;
    case CpuIsa::Avx2: tile_backward_avx2<GX, GV>(s, GT, XT, ZT, acc); break;
    default: tile_backward_scalar<GX, GV>(s, GT, XT, ZT, acc);
  }
}

// ------------------------------------------------------------------------------ drivers

template <typename E, typename R, typename C>
void spmm_add_impl(const CsrT<R, C>& s, const E* x, int64_t T, E* y, CpuIsa isa) {
  const int64_t tiles = (T + kTile - 1) / kTile;
  const bool small = int64_t(s.rp[s.rows]) * T < kParallelWork;
  if (small || tiles >= at::get_num_threads()) {
    // Enough tiles to keep every thread busy: each task owns whole tiles.
    at::parallel_for(0, tiles, small ? tiles : 1, [&](int64_t b0, int64_t b1) {
      std::vector<float> XT(s.cols * kTile), YT(s.rows * kTile);
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t t0 = b * kTile, n = std::min(kTile, T - t0);
        load_tile(x, s.cols, t0, n, XT.data());
        tile_spmm(s, XT.data(), YT.data(), 0, s.rows, isa);
        add_tile(YT.data(), s.rows, t0, n, 0, s.rows, y);
      }
    });
    return;
  }
  // Few tokens (decoding, small batches): split each tile's rows over the threads instead.
  std::vector<float> XT(s.cols * kTile), YT(s.rows * kTile);
  for (int64_t b = 0; b < tiles; ++b) {
    const int64_t t0 = b * kTile, n = std::min(kTile, T - t0);
    load_tile(x, s.cols, t0, n, XT.data());
    at::parallel_for(0, s.rows, row_grain(s.rows, s.rp[s.rows]), [&](int64_t r0, int64_t r1) {
      tile_spmm(s, XT.data(), YT.data(), r0, r1, isa);
      add_tile(YT.data(), s.rows, t0, n, r0, r1, y);
    });
  }
}

template <bool GX, bool GV, typename E, typename R, typename C>
void sparse_backward_impl(const CsrT<R, C>& s, const E* g, const E* x, int64_t T, E* gx, float* gvals, CpuIsa isa) {
  const int64_t nnz = s.rp[s.rows];
  const int64_t tiles = (T + kTile - 1) / kTile;
  const int64_t per_group = std::max<int64_t>(1, (tiles + kMaxGroups - 1) / kMaxGroups);
  const int64_t groups = (tiles + per_group - 1) / per_group;
  std::vector<float> partial(GV ? groups * nnz : 0, 0.f);
  // Groups own disjoint token ranges: their gx rows and their partial sums never collide.
  const bool small = nnz * T < kParallelWork;
  at::parallel_for(0, groups, small ? groups : 1, [&](int64_t g0, int64_t g1) {
    std::vector<float> GT(s.rows * kTile), XT(GV ? s.cols * kTile : 0), ZT(GX ? s.cols * kTile : 0);
    for (int64_t grp = g0; grp < g1; ++grp) {
      for (int64_t b = grp * per_group; b < std::min(tiles, (grp + 1) * per_group); ++b) {
        const int64_t t0 = b * kTile, n = std::min(kTile, T - t0);
        load_tile(g, s.rows, t0, n, GT.data());
        if constexpr (GV) load_tile(x, s.cols, t0, n, XT.data());
        if constexpr (GX) std::fill(ZT.begin(), ZT.end(), 0.f);
        tile_backward<GX, GV>(s, GT.data(), XT.data(), ZT.data(), partial.data() + grp * nnz, isa);
        if constexpr (GX) add_tile(ZT.data(), s.cols, t0, n, 0, s.cols, gx);
      }
    }
  });
  if constexpr (GV) {
    at::parallel_for(0, nnz, 4096, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        float sum = 0.f;
        for (int64_t grp = 0; grp < groups; ++grp) sum += partial[grp * nnz + k];
        gvals[k] = sum;
      }
    });
  }
}

// ------------------------------------------------------------------------------ support

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Draw n of the stream keyed by `key`, mapped to [0, bound) by a 128-bit multiply (Lemire).
uint64_t draw_below(uint64_t key, uint64_t n, uint64_t bound) {
  const unsigned __int128 wide = static_cast<unsigned __int128>(splitmix64(key + n)) * bound;
  return static_cast<uint64_t>(wide >> 64);
}

uint64_t stream_key(uint64_t seed, uint64_t stream) {
  return splitmix64(seed ^ splitmix64(stream + 0x5EED5EED5EEDull));
}

}  // namespace

std::string validate_support(const Csr& s, int64_t nnz) {
  std::ostringstream err;
  with_csr(s, [&](const auto& c) {
    if (c.rp[0] != 0) {
      err << "row_ptr[0] must be 0, got " << int64_t(c.rp[0]);
      return;
    }
    if (int64_t(c.rp[c.rows]) != nnz) {
      err << "row_ptr[-1] must equal the number of values (" << nnz << "), got " << int64_t(c.rp[c.rows]);
      return;
    }
    for (int64_t i = 0; i < c.rows; ++i) {
      if (c.rp[i + 1] < c.rp[i]) {
        err << "row_ptr must be non-decreasing, got row_ptr[" << i << "] = " << int64_t(c.rp[i]) << " > row_ptr["
            << i + 1 << "] = " << int64_t(c.rp[i + 1]);
        return;
      }
    }
    for (int64_t i = 0; i < c.rows; ++i) {
      for (int64_t k = c.rp[i]; k < c.rp[i + 1]; ++k) {
        const int64_t col = c.ci[k];
        if (col < 0 || col >= c.cols) {
          err << "col_idx[" << k << "] = " << col << " is out of range [0, " << c.cols << ") (row " << i << ")";
          return;
        }
        if (k > c.rp[i] && col <= int64_t(c.ci[k - 1])) {
          err << "col_idx must be sorted and unique within each row, got " << int64_t(c.ci[k - 1]) << " then "
              << col << " in row " << i;
          return;
        }
      }
    }
  });
  return err.str();
}

template <typename E>
void spmm_add(const Csr& s, const E* x, int64_t T, E* y, CpuIsa isa) {
  with_csr(s, [&](const auto& c) { spmm_add_impl(c, x, T, y, isa); });
}

template <typename E>
void sparse_backward(const Csr& s, const E* g, const E* x, int64_t T, E* gx, float* gvals, CpuIsa isa) {
  with_csr(s, [&](const auto& c) {
    if (gx != nullptr && gvals != nullptr) {
      sparse_backward_impl<true, true>(c, g, x, T, gx, gvals, isa);
    } else if (gx != nullptr) {
      sparse_backward_impl<true, false>(c, g, x, T, gx, gvals, isa);
    } else if (gvals != nullptr) {
      sparse_backward_impl<false, true>(c, g, x, T, gx, gvals, isa);
    }
  });
}

template void spmm_add<float>(const Csr&, const float*, int64_t, float*, CpuIsa);
template void spmm_add<c10::BFloat16>(const Csr&, const c10::BFloat16*, int64_t, c10::BFloat16*, CpuIsa);
template void spmm_add<c10::Half>(const Csr&, const c10::Half*, int64_t, c10::Half*, CpuIsa);
template void sparse_backward<float>(const Csr&, const float*, const float*, int64_t, float*, float*, CpuIsa);
template void sparse_backward<c10::BFloat16>(const Csr&, const c10::BFloat16*, const c10::BFloat16*, int64_t,
                                             c10::BFloat16*, float*, CpuIsa);
template void sparse_backward<c10::Half>(const Csr&, const c10::Half*, const c10::Half*, int64_t, c10::Half*,
                                         float*, CpuIsa);

Support make_support(int64_t rows, int64_t cols, int64_t nnz, bool row_balanced, uint64_t seed) {
  Support out;
  out.row_ptr.assign(rows + 1, 0);
  if (row_balanced) {
    const int64_t per_row = nnz / rows;
    out.col_idx.resize(nnz);
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      std::vector<char> taken(cols);
      for (int64_t i = r0; i < r1; ++i) {
        // Floyd's algorithm: per_row distinct columns with per_row draws, any per_row <= cols.
        std::fill(taken.begin(), taken.end(), 0);
        const uint64_t key = stream_key(seed, static_cast<uint64_t>(i));
        for (int64_t j = cols - per_row, n = 0; j < cols; ++j, ++n) {
          const int64_t t = static_cast<int64_t>(draw_below(key, n, static_cast<uint64_t>(j + 1)));
          taken[taken[t] ? j : t] = 1;
        }
        int32_t* dst = out.col_idx.data() + i * per_row;
        for (int64_t c = 0; c < cols; ++c) {
          if (taken[c]) *dst++ = static_cast<int32_t>(c);
        }
      }
    });
    for (int64_t i = 0; i <= rows; ++i) out.row_ptr[i] = i * per_row;
    return out;
  }
  // Uniform: nnz distinct positions of the whole matrix, so rows differ in their counts (the
  // SLTrain reference's sampling), marked in a bitmap and read back in row-major order.
  const int64_t total = rows * cols;
  std::vector<uint64_t> bits((total + 63) / 64, 0);
  auto test = [&](int64_t p) { return (bits[p >> 6] >> (p & 63)) & 1u; };
  auto set = [&](int64_t p) { bits[p >> 6] |= uint64_t(1) << (p & 63); };
  const uint64_t key = stream_key(seed, ~uint64_t(0));
  for (int64_t j = total - nnz, n = 0; j < total; ++j, ++n) {
    const int64_t t = static_cast<int64_t>(draw_below(key, n, static_cast<uint64_t>(j + 1)));
    set(test(t) ? j : t);
  }
  out.col_idx.reserve(nnz);
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < cols; ++c) {
      if (test(i * cols + c)) out.col_idx.push_back(static_cast<int32_t>(c));
    }
    out.row_ptr[i + 1] = static_cast<int64_t>(out.col_idx.size());
  }
  return out;
}

}  // namespace weightkit::sparse_lowrank_cpu
