#include "sparse_lowrank/cpu.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <sstream>

namespace weightkit::sparse_lowrank_cpu {
namespace {

#define WK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define WK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

// Tokens handled per register block: 8 AVX2 or 4 AVX-512 accumulators.
constexpr int64_t kTokBlock = 64;
// Token span of one sddmm pass: the BT rows it touches (cols x 2 KB) stay in L2/L3.
constexpr int64_t kDotSpan = 128;

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

// Rows per parallel task, so that a task holds ~16K nonzeros-times-block of work.
int64_t row_grain(int64_t rows, int64_t nnz) {
  const int64_t per_row = std::max<int64_t>(1, nnz / std::max<int64_t>(rows, 1));
  return std::max<int64_t>(1, 2048 / per_row);
}

// ------------------------------------------------------------------------------ spmm

// Tokens [t0, t1) of rows [r0, r1), one token at a time: the tail shorter than a block, and the
// scalar path.
template <typename R, typename C>
void spmm_tokens_scalar(const CsrT<R, C>& s, const float* XT, int64_t T, float* YT, bool acc, int64_t r0,
                        int64_t r1, int64_t t0, int64_t t1) {
  for (int64_t i = r0; i < r1; ++i) {
    for (int64_t t = t0; t < t1; ++t) {
      float sum = acc ? YT[i * T + t] : 0.f;
      for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) sum += s.v[k] * XT[int64_t(s.ci[k]) * T + t];
      YT[i * T + t] = sum;
    }
  }
}

template <typename R, typename C>
WK_AVX2 void spmm_block_avx2(const CsrT<R, C>& s, const float* XT, int64_t T, float* YT, bool acc, int64_t i,
                             int64_t t0) {
  __m256 a[8];
  float* y = YT + i * T + t0;
  for (int j = 0; j < 8; ++j) a[j] = acc ? _mm256_loadu_ps(y + 8 * j) : _mm256_setzero_ps();
  for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
    const __m256 v = _mm256_set1_ps(s.v[k]);
    const float* x = XT + int64_t(s.ci[k]) * T + t0;
    for (int j = 0; j < 8; ++j) a[j] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x + 8 * j), a[j]);
  }
  for (int j = 0; j < 8; ++j) _mm256_storeu_ps(y + 8 * j, a[j]);
}

template <typename R, typename C>
WK_AVX512 void spmm_block_avx512(const CsrT<R, C>& s, const float* XT, int64_t T, float* YT, bool acc, int64_t i,
                                 int64_t t0) {
  __m512 a[4];
  float* y = YT + i * T + t0;
  for (int j = 0; j < 4; ++j) a[j] = acc ? _mm512_loadu_ps(y + 16 * j) : _mm512_setzero_ps();
  for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
    const __m512 v = _mm512_set1_ps(s.v[k]);
    const float* x = XT + int64_t(s.ci[k]) * T + t0;
    for (int j = 0; j < 4; ++j) a[j] = _mm512_fmadd_ps(v, _mm512_loadu_ps(x + 16 * j), a[j]);
  }
  for (int j = 0; j < 4; ++j) _mm512_storeu_ps(y + 16 * j, a[j]);
}

template <typename R, typename C>
void spmm_impl(const CsrT<R, C>& s, const float* XT, int64_t T, float* YT, bool acc, CpuIsa isa) {
  const int64_t T_blocked = isa == CpuIsa::Scalar ? 0 : T / kTokBlock * kTokBlock;
  at::parallel_for(0, s.rows, row_grain(s.rows, s.rp[s.rows]), [&](int64_t r0, int64_t r1) {
    // Token blocks outermost: the XT columns of one block (cols x 256 B) stay in L2 across rows.
    for (int64_t t0 = 0; t0 < T_blocked; t0 += kTokBlock) {
      for (int64_t i = r0; i < r1; ++i) {
        if (isa == CpuIsa::Avx512) {
          spmm_block_avx512(s, XT, T, YT, acc, i, t0);
        } else {
          spmm_block_avx2(s, XT, T, YT, acc, i, t0);
        }
      }
    }
    spmm_tokens_scalar(s, XT, T, YT, acc, r0, r1, T_blocked, T);
  });
}

// ------------------------------------------------------------------------------ spmm_t

template <typename R, typename C>
void spmm_t_tokens_scalar(const CsrT<R, C>& s, const float* GT, int64_t T, float* ZT, int64_t t0, int64_t t1) {
  for (int64_t i = 0; i < s.rows; ++i) {
    for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
      float* z = ZT + int64_t(s.ci[k]) * T;
      for (int64_t t = t0; t < t1; ++t) z[t] += s.v[k] * GT[i * T + t];
    }
  }
}

template <typename R, typename C>
WK_AVX2 void spmm_t_block_avx2(const CsrT<R, C>& s, const float* GT, int64_t T, float* ZT, int64_t t0) {
  for (int64_t i = 0; i < s.rows; ++i) {
    __m256 g[8];
    for (int j = 0; j < 8; ++j) g[j] = _mm256_loadu_ps(GT + i * T + t0 + 8 * j);
    for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
      const __m256 v = _mm256_set1_ps(s.v[k]);
      float* z = ZT + int64_t(s.ci[k]) * T + t0;
      for (int j = 0; j < 8; ++j) _mm256_storeu_ps(z + 8 * j, _mm256_fmadd_ps(v, g[j], _mm256_loadu_ps(z + 8 * j)));
    }
  }
}

template <typename R, typename C>
WK_AVX512 void spmm_t_block_avx512(const CsrT<R, C>& s, const float* GT, int64_t T, float* ZT, int64_t t0) {
  for (int64_t i = 0; i < s.rows; ++i) {
    __m512 g[4];
    for (int j = 0; j < 4; ++j) g[j] = _mm512_loadu_ps(GT + i * T + t0 + 16 * j);
    for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
      const __m512 v = _mm512_set1_ps(s.v[k]);
      float* z = ZT + int64_t(s.ci[k]) * T + t0;
      for (int j = 0; j < 4; ++j) _mm512_storeu_ps(z + 16 * j, _mm512_fmadd_ps(v, g[j], _mm512_loadu_ps(z + 16 * j)));
    }
  }
}

template <typename R, typename C>
void spmm_t_impl(const CsrT<R, C>& s, const float* GT, int64_t T, float* ZT, bool acc, CpuIsa isa) {
  // Nonzeros of different rows share columns, so work is split by tokens: each task owns a
  // token block of every ZT row and no two tasks write the same element.
  const int64_t n_blocks = isa == CpuIsa::Scalar ? 0 : T / kTokBlock;
  const int64_t T_blocked = n_blocks * kTokBlock;
  at::parallel_for(0, n_blocks + 1, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t t0 = b * kTokBlock;
      const int64_t t1 = b < n_blocks ? t0 + kTokBlock : T;
      if (t1 <= t0) continue;
      if (!acc) {
        for (int64_t c = 0; c < s.cols; ++c) std::fill(ZT + c * T + t0, ZT + c * T + t1, 0.f);
      }
      if (b == n_blocks) {
        spmm_t_tokens_scalar(s, GT, T, ZT, T_blocked, T);
      } else if (isa == CpuIsa::Avx512) {
        spmm_t_block_avx512(s, GT, T, ZT, t0);
      } else {
        spmm_t_block_avx2(s, GT, T, ZT, t0);
      }
    }
  });
}

// ------------------------------------------------------------------------------ sddmm

float dot_scalar(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
  for (int64_t t = 0; t < n; ++t) acc += a[t] * b[t];
  return acc;
}

WK_AVX2 float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  int64_t t = 0;
  for (; t + 32 <= n; t += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + t + 8), _mm256_loadu_ps(b + t + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + t + 16), _mm256_loadu_ps(b + t + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + t + 24), _mm256_loadu_ps(b + t + 24), s3);
  }
  for (; t + 8 <= n; t += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + t), _mm256_loadu_ps(b + t), s0);
  const __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float acc = _mm_cvtss_f32(h);
  for (; t < n; ++t) acc += a[t] * b[t];
  return acc;
}

WK_AVX512 float dot_avx512(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 32 <= n; t += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + t), _mm512_loadu_ps(b + t), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + t + 16), _mm512_loadu_ps(b + t + 16), s1);
  }
  for (; t + 16 <= n; t += 16) s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + t), _mm512_loadu_ps(b + t), s0);
  float acc = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
  for (; t < n; ++t) acc += a[t] * b[t];
  return acc;
}

template <typename R, typename C>
void sddmm_impl(const CsrT<R, C>& s, const float* AT, const float* BT, int64_t T, float* out, CpuIsa isa) {
  auto dot = isa == CpuIsa::Avx512 ? dot_avx512 : isa == CpuIsa::Avx2 ? dot_avx2 : dot_scalar;
  at::parallel_for(0, s.rows, row_grain(s.rows, s.rp[s.rows]), [&](int64_t r0, int64_t r1) {
    for (int64_t k = s.rp[r0]; k < s.rp[r1]; ++k) out[k] = 0.f;
    for (int64_t t0 = 0; t0 < T; t0 += kDotSpan) {
      const int64_t n = std::min(kDotSpan, T - t0);
      for (int64_t i = r0; i < r1; ++i) {
        for (int64_t k = s.rp[i]; k < s.rp[i + 1]; ++k) {
          out[k] += dot(AT + i * T + t0, BT + int64_t(s.ci[k]) * T + t0, n);
        }
      }
    }
  });
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

void spmm(const Csr& s, const float* XT, int64_t T, float* YT, bool accumulate, CpuIsa isa) {
  with_csr(s, [&](const auto& c) { spmm_impl(c, XT, T, YT, accumulate, isa); });
}

void spmm_t(const Csr& s, const float* GT, int64_t T, float* ZT, bool accumulate, CpuIsa isa) {
  with_csr(s, [&](const auto& c) { spmm_t_impl(c, GT, T, ZT, accumulate, isa); });
}

void sddmm(const Csr& s, const float* AT, const float* BT, int64_t T, float* out, CpuIsa isa) {
  with_csr(s, [&](const auto& c) { sddmm_impl(c, AT, BT, T, out, isa); });
}

// 32 x 32 tiles: both the reads and the writes of a tile stay within a few cache lines per row.
template <typename E>
void transpose_to_f32(const E* src, int64_t rows, int64_t cols, float* dst) {
  constexpr int64_t kTile = 32;
  at::parallel_for(0, (cols + kTile - 1) / kTile, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t c0 = b0 * kTile; c0 < std::min(cols, b1 * kTile); c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
        const int64_t r1 = std::min(rows, r0 + kTile);
        for (int64_t c = c0; c < c1; ++c) {
          for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = static_cast<float>(src[r * cols + c]);
        }
      }
    }
  });
}

template <typename E>
void transpose_add_from_f32(const float* src, int64_t rows, int64_t cols, E* dst) {
  constexpr int64_t kTile = 32;
  at::parallel_for(0, (cols + kTile - 1) / kTile, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t c0 = b0 * kTile; c0 < std::min(cols, b1 * kTile); c0 += kTile) {
      const int64_t c1 = std::min(cols, c0 + kTile);
      for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
        const int64_t r1 = std::min(rows, r0 + kTile);
        for (int64_t c = c0; c < c1; ++c) {
          for (int64_t r = r0; r < r1; ++r) {
            dst[c * rows + r] = static_cast<E>(static_cast<float>(dst[c * rows + r]) + src[r * cols + c]);
          }
        }
      }
    }
  });
}

template void transpose_to_f32<float>(const float*, int64_t, int64_t, float*);
template void transpose_to_f32<c10::BFloat16>(const c10::BFloat16*, int64_t, int64_t, float*);
template void transpose_to_f32<c10::Half>(const c10::Half*, int64_t, int64_t, float*);
template void transpose_add_from_f32<float>(const float*, int64_t, int64_t, float*);
template void transpose_add_from_f32<c10::BFloat16>(const float*, int64_t, int64_t, c10::BFloat16*);
template void transpose_add_from_f32<c10::Half>(const float*, int64_t, int64_t, c10::Half*);

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
