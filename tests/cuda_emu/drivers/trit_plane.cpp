// ctypes entry points over csrc/trit_plane/kernels.cuh for the CUDA emulator tests. Arguments
// mirror what ops_cuda.cpp passes; dtype: 0 fp32, 1 bf16, 2 fp16 (weightkit::DType).
#include "trit_plane/kernels.cuh"

#include "capi.h"

namespace k = weightkit::trit_plane_cuda;
using weightkit::trit_plane::Layout;

extern "C" {

void tp_quantize(const float* W, int64_t out, int64_t in, int64_t group, int64_t max_iters, double tol,
                 int32_t* packed, uint16_t* scales, int* overflow) {
  k::quantize(W, Layout::make(out, in, group), max_iters, tol, packed, scales, overflow, nullptr);
}

void tp_matmul_direct(const void* x, int dtype, int64_t batch, const int32_t* packed, const uint16_t* scales,
                      int64_t out, int64_t in, int64_t group, void* y) {
  k::matmul_direct(x, static_cast<weightkit::DType>(dtype), batch, packed, scales, Layout::make(out, in, group), y,
                   nullptr);
}

void tp_round_activations(const float* x, int64_t batch, int64_t out, int64_t in, int64_t group, float* xq) {
  k::round_activations(x, batch, Layout::make(out, in, group), xq, nullptr);
}

void tp_dequantize(const int32_t* packed, const uint16_t* scales, int64_t out, int64_t in, int64_t group, void* W,
                   int dtype) {
  k::dequantize(packed, scales, Layout::make(out, in, group), W, static_cast<weightkit::DType>(dtype), nullptr);
}

int64_t tp_direct_max_batch() { return k::kDirectMaxBatch; }

}  // extern "C"
