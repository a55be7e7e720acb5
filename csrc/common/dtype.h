// The element types the CUDA kernels are written for, shared by every family's kernels.cuh (pure
// C++: no torch, no CUDA headers) so the glue maps an at::ScalarType to it in one place
// (common/cuda_glue.h).
#pragma once

namespace weightkit {

enum class DType { F32, BF16, F16 };

}  // namespace weightkit
