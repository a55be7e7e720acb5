// ctypes entry points over csrc/rls/kernels.cuh for the CUDA emulator tests.
#include "rls/kernels.cuh"

#include "capi.h"

namespace k = weightkit::rls_cuda;

extern "C" {
void rls_downdate_sym(double* C, const double* Gt, const double* Ft, int64_t n, int64_t u) {
  k::downdate_sym(C, Gt, Ft, n, u, nullptr);
}
void rls_symmetrize(double* C, int64_t n) { k::symmetrize(C, n, nullptr); }
}
