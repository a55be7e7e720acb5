// Kernels with known defects, for testing that the CUDA emulator catches them (test_emulator.py).
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kThreads = 64;

// out[i] = in[n - 1 - i] through shared memory; `sync` false drops the barrier (a race).
__global__ void reverse_kernel(const float* in, float* out, bool sync) {
  __shared__ float buf[kThreads];
  const int i = threadIdx.x;
  buf[i] = in[blockIdx.x * kThreads + i];
  if (sync) __syncthreads();
  out[blockIdx.x * kThreads + i] = buf[kThreads - 1 - i];
}

// Warp sum by butterfly; lanes >= active return first (exit before the shuffle when active < 32).
__global__ void warp_sum_kernel(const float* in, float* out, int active) {
  const int lane = threadIdx.x;
  if (lane >= active) return;
  float v = in[lane];
  for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
  if (lane == 0) out[0] = v;
}

// Lanes 0-15 wait at the block barrier while lanes 16-31 wait for them in a shuffle.
__global__ void deadlock_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[threadIdx.x] = v;
}

// Reads shared slot threadIdx.x + offset: out of bounds for offset > 0.
__global__ void shared_overrun_kernel(float* out, int offset) {
  __shared__ float buf[32];
  buf[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x + offset];
}

// A 16-byte vector load from in + offset floats: misaligned unless offset % 4 == 0.
__global__ void vector_load_kernel(const float* in, float* out, int offset) {
  const float4 v = *reinterpret_cast<const float4*>(in + offset);
  out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// Only block 0 fills the shared table; the other blocks read whatever shared memory holds.
__global__ void first_block_fills_kernel(float* out) {
  __shared__ float table[32];
  if (blockIdx.x == 0) table[threadIdx.x] = 2.f;
  __syncthreads();
  out[blockIdx.x * 32 + threadIdx.x] = table[threadIdx.x];
}

// out[0] += 1 from every thread of two blocks, atomically or not.
__global__ void sum_all_kernel(float* out, bool atomic) {
  if (atomic) {
    atomicAdd(out, 1.f);
  } else {
    out[0] += 1.f;
  }
}

}  // namespace

void launch_sum_all(float* out, bool atomic) { sum_all_kernel<<<2, 32>>>(out, atomic); }
void launch_first_block_fills(float* out, int blocks) { first_block_fills_kernel<<<blocks, 32>>>(out); }
void launch_shared_overrun(float* out, int offset) { shared_overrun_kernel<<<1, 32>>>(out, offset); }
void launch_vector_load(const float* in, float* out, int offset) { vector_load_kernel<<<1, 32>>>(in, out, offset); }

void launch_reverse(const float* in, float* out, int blocks, bool sync) {
  reverse_kernel<<<blocks, kThreads>>>(in, out, sync);
}
void launch_warp_sum(const float* in, float* out, int active) { warp_sum_kernel<<<1, 32>>>(in, out, active); }
void launch_deadlock(float* out) { deadlock_kernel<<<1, 32>>>(out); }
void launch_too_many_threads(float* out) { deadlock_kernel<<<1, 2048>>>(out); }
