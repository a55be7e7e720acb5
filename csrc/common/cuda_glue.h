// Helpers shared by the families' CUDA glue (ops_cuda.cpp): ATen on one side, the pure-CUDA
// kernels' types on the other.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common/dtype.h"

namespace weightkit {

// The kernels' element type of an fp32 / bf16 / fp16 tensor; callers have checked the dtype.
inline DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::F32;
    case at::kBFloat16: return DType::BF16;
    case at::kHalf: return DType::F16;
    default: TORCH_INTERNAL_ASSERT(false, "weightkit: no CUDA kernel dtype for ", t);
  }
}

}  // namespace weightkit
