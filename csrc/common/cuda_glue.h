// Helpers shared by the families' CUDA glue (ops_cuda.cpp): ATen on one side, the pure-CUDA
// kernels' types on the other.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/Exception.h>

#include <optional>

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

// A guard that makes t's device current, for glue that checks its arguments after taking it.
// The dispatcher runs an op's CUDA kernel when any of its tensors is on CUDA, so t may be a CPU
// tensor among CUDA ones: then no device is set and the op's same-device check names the
// mismatch (a CUDAGuard would throw first, "CUDAGuardImpl initialized with non-CUDA DeviceType").
inline c10::cuda::OptionalCUDAGuard device_guard_of(const at::Tensor& t) {
  return c10::cuda::OptionalCUDAGuard(t.is_cuda() ? std::optional<c10::Device>(t.device()) : std::nullopt);
}

}  // namespace weightkit
