// The packed trit-plane format (PACK_VERSION 1), shared by the CPU and CUDA code. Plain C++
// (no torch, no CUDA headers) so kernels.cu can include it.
//
// A weight matrix W (out x in) is approximated per row r and column group g (columns
// [g*G, min((g+1)*G, in)); the last group of a row may be shorter) as
//     W[r, c] ~= alpha1[r, g] * t1[r, c] + alpha2[r, g] * t2[r, c],   t1, t2 in {-1, 0, +1}.
// Scales: float16 tensor (out, n_groups, 2), [..., 0] = alpha1, [..., 1] = alpha2.
//
// Planes. Each group is cut into pairs of consecutive columns (2q, 2q+1 within the group; the
// last pair of an odd-length group is zero-padded), and the pairs of a row are numbered
// p = 0 .. pairs_per_row-1 group after group. Per plane, a pair is a 4-bit code: bit b (b = 0, 1)
// is set when the trit of column 2q+b is +1, bit 2+b when it is -1 (so 0 = both zero, and the
// code is pos | neg << 2). A 32-bit word holds the codes of 8 consecutive pairs of one row and one
// plane (pair p in bits 4*(p%8) .. 4*(p%8)+3 of word p/8). Rows come in blocks of 8 (out is padded
// to a multiple of 8 with zero rows), and the int32 tensor `packed` has shape
// (row_blocks, words_per_row, 2, 8):
//     packed[rb, w, k, j] = word w of plane k (0: T1, 1: T2) of row 8*rb + j.
// Why this shape: the CPU kernels keep the rows of a block in the lanes of a vector register and,
// for each pair of activations, look up a table indexed by the code: with AVX-512 the 16-entry
// table of signed sums (x0, x1 combined with the code's signs) in one vpermps over 16 rows; with
// AVX2 the 4 subset sums {0, x0, x1, x0+x1} by the positive and the negative half (vpermilps).
// A plane's sum over a group thus costs one lookup per 2 weights (AVX-512) with no
// multiplication by weights. Storage: exactly 4 bits per weight for even group lengths (a
// 128-column group is 8 words per plane), plus 0.25 bits of scales at group 128.
#pragma once

#include <cstdint>

namespace weightkit::trit_plane {

constexpr int kPackVersion = 1;
constexpr int kRowsPerBlock = 8;
constexpr int kColsPerCode = 2;    // columns per lookup (a pair)
constexpr int kCodesPerWord = 8;   // pairs per 32-bit word
constexpr int kCodeBits = 4;       // bits per pair code
constexpr int kPlanes = 2;

// PTQTP constants (PAPERS.md), shared by the CPU and CUDA quantizers and the float64 reference.
// The (t1, t2) candidates in tie-break order: when two pairs give the same value (always at the
// start, where alpha1 == alpha2) the earlier one wins, so fewer nonzeros are preferred and the
// planes split deterministically.
constexpr int kCandidates = 9;
constexpr int kCandT1[kCandidates] = {0, 1, -1, 0, 0, 1, -1, 1, -1};
constexpr int kCandT2[kCandidates] = {0, 0, 0, 1, -1, 1, -1, -1, 1};
// Ridge: lambda = 1e-8, 1e-7, ..., 1, the first whose (S^T S + lambda I) has condition <= 1e6.
constexpr int kLambdaSteps = 9;
constexpr double kLambdas[kLambdaSteps] = {1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0};
constexpr double kCondMax = 1e6;

struct Layout {
  int64_t out = 0;
  int64_t in = 0;
  int64_t group = 0;
  int64_t n_groups = 0;
  int64_t last_len = 0;         // columns in the last group (== group unless ragged)
  int64_t pairs_full = 0;       // pairs in a full group
  int64_t pairs_last = 0;       // pairs in the last group
  int64_t pairs_per_row = 0;
  int64_t words_per_row = 0;
  int64_t row_blocks = 0;

  static Layout make(int64_t out, int64_t in, int64_t group) {
    // A group wider than the row is the whole row: the same layout, no buffer sized by a
    // group_size of 2^40 (the quantizer keeps one group's trits per thread) and no overflow in
    // the arithmetic below for group_size near INT64_MAX.
    if (in > 0 && group > in) group = in;
    Layout l;
    l.out = out;
    l.in = in;
    l.group = group;
    l.n_groups = in == 0 ? 0 : (in + group - 1) / group;
    l.last_len = in == 0 ? 0 : in - (l.n_groups - 1) * group;
    l.pairs_full = (group + 1) / 2;
    l.pairs_last = (l.last_len + 1) / 2;
    l.pairs_per_row = l.n_groups == 0 ? 0 : (l.n_groups - 1) * l.pairs_full + l.pairs_last;
    l.words_per_row = (l.pairs_per_row + kCodesPerWord - 1) / kCodesPerWord;
    l.row_blocks = (out + kRowsPerBlock - 1) / kRowsPerBlock;
    return l;
  }
  int64_t group_len(int64_t g) const { return g + 1 == n_groups ? last_len : group; }
  int64_t group_pairs(int64_t g) const { return g + 1 == n_groups ? pairs_last : pairs_full; }
  int64_t group_first_pair(int64_t g) const { return g * pairs_full; }
  // int32 elements of the packed tensor.
  int64_t packed_numel() const { return row_blocks * words_per_row * kPlanes * kRowsPerBlock; }
  // Index of word w of plane k of row r in the flat packed tensor.
  int64_t word_index(int64_t r, int64_t w, int k) const {
    return ((r / kRowsPerBlock * words_per_row + w) * kPlanes + k) * kRowsPerBlock + r % kRowsPerBlock;
  }
};

}  // namespace weightkit::trit_plane
