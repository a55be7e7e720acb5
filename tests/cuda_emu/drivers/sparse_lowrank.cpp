// ctypes entry points over csrc/sparse_lowrank/kernels.cuh for the CUDA emulator tests. Arguments
// mirror what ops_cuda.cpp passes: the support as raw row_ptr / col_idx pointers with their width
// flags (row_ptr int32 or int64, col_idx int16 or int32), fp32 values (null where the launcher does
// not read them), feature-major activations (features x T); dtype: 0 fp32, 1 bf16, 2 fp16
// (weightkit::DType).
#include "sparse_lowrank/kernels.cuh"

#include "capi.h"

namespace k = weightkit::sparse_lowrank_cuda;

namespace {

k::Csr make_csr(const void* row_ptr, int row_ptr_64, const void* col_idx, int col_idx_32, const float* values,
                int64_t rows, int64_t cols) {
  k::Csr s;
  s.row_ptr = row_ptr;
  s.col_idx = col_idx;
  s.row_ptr_64 = row_ptr_64 != 0;
  s.col_idx_32 = col_idx_32 != 0;
  s.values = values;
  s.rows = rows;
  s.cols = cols;
  return s;
}

}  // namespace

extern "C" {

void sl_validate_support(const void* row_ptr, int row_ptr_64, const void* col_idx, int col_idx_32, int64_t rows,
                         int64_t cols, int64_t nnz, long long* problem) {
  k::validate_support(make_csr(row_ptr, row_ptr_64, col_idx, col_idx_32, nullptr, rows, cols), nnz, problem, nullptr);
}

void sl_spmm(const void* row_ptr, int row_ptr_64, const void* col_idx, int col_idx_32, const float* values,
             int64_t rows, int64_t cols, const void* XT, int dtype, int64_t T, float* YT) {
  k::spmm(make_csr(row_ptr, row_ptr_64, col_idx, col_idx_32, values, rows, cols), XT,
          static_cast<weightkit::DType>(dtype), T, YT, nullptr);
}

void sl_spmm_t(const void* row_ptr, int row_ptr_64, const void* col_idx, int col_idx_32, const float* values,
               int64_t rows, int64_t cols, const void* GT, int dtype, int64_t T, float* ZT) {
  k::spmm_t(make_csr(row_ptr, row_ptr_64, col_idx, col_idx_32, values, rows, cols), GT,
            static_cast<weightkit::DType>(dtype), T, ZT, nullptr);
}

void sl_sddmm(const void* row_ptr, int row_ptr_64, const void* col_idx, int col_idx_32, int64_t rows, int64_t cols,
              const void* AT, const void* BT, int dtype, int64_t T, int64_t nnz, float* out) {
  k::sddmm(make_csr(row_ptr, row_ptr_64, col_idx, col_idx_32, nullptr, rows, cols), AT, BT,
           static_cast<weightkit::DType>(dtype), T, nnz, out, nullptr);
}

}  // extern "C"
