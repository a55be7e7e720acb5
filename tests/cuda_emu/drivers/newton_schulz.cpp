// ctypes entry points over csrc/newton_schulz/kernels.cuh for the CUDA emulator tests; dtype
// codes as weightkit::DType (0 fp32, 1 bf16, 2 fp16).
#include "newton_schulz/kernels.cuh"

#include "capi.h"

namespace k = weightkit::newton_schulz_cuda;
using weightkit::DType;

extern "C" {
void ns_normalize_batched(const void* in, int in_t, void* out, int out_t, int64_t batch, int64_t per_matrix,
                          double norm_scale, double eps, double* workspace) {
  k::normalize_batched(in, static_cast<DType>(in_t), out, static_cast<DType>(out_t), batch, per_matrix, norm_scale,
                       eps, workspace, nullptr);
}
void ns_auon_batched(const void* in, int t, void* out, int64_t batch, int64_t per_matrix, double eps,
                     double* workspace) {
  k::auon_batched(in, static_cast<DType>(t), out, batch, per_matrix, eps, workspace, nullptr);
}
void ns_sym_product(const void* X, void* C, const void* D, int t, int64_t batch, int64_t m, int64_t k_, float alpha,
                    float beta) {
  k::sym_product(X, C, D, static_cast<DType>(t), batch, m, k_, alpha, beta, nullptr);
}
}
