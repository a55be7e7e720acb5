// A CPU emulator for the subset of CUDA that weightkit's kernels.cu files use, so their logic
// (index math, bounds, reductions, barriers, edge cases) is tested on machines without a GPU.
//
// How it runs a launch: blocks one after another; the threads of a block as fibers on one OS
// thread (runtime.cpp switches stacks), each running until it waits at a barrier, resumed in a
// reshuffled order every round so a missing barrier shows whichever thread would run first.
// __syncthreads is a barrier of the block's live threads; warp shuffles exchange values through
// per-warp slots behind a warp barrier. __shared__ becomes `static` (one block runs at a time, so
// a static is exactly the block's shared memory), filled with 0xff (NaN) at the start of every
// block (harness.py inserts the poison_shared calls), and dynamic shared memory is a per-block
// buffer filled the same way, so reads before writes show.
//
// It reports what the hardware would reject or leave undefined: launch limits (grid, block,
// dynamic shared memory without the opt-in attribute), shuffles with a partial mask or a lane
// that has exited, barriers that can never complete (a deadlock, found by the scheduler instead of
// hanging), misaligned wmma tiles; with harness.py's sanitizer flags also data races (accesses
// by two threads with no barrier or atomics between), misaligned vector loads, shared/local array
// overruns and bad shifts (runtime.cpp's hooks). A failure aborts the launch and is returned by
// emu::last_failure(); cudaGetLastError() reports invalid launch configurations as CUDA does.
//
// What it does not model: timing, coalescing, FMA contraction (x86-64 without -mfma never fuses).
// wmma fragments hold the whole tile in every lane (the real per-lane layout is
// unspecified; the kernels only use fill/load/mma/store, which do not depend on it).
#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

// ------------------------------------------------------------------ keywords
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __constant__ static
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

using std::isfinite;
using std::isinf;
using std::isnan;

// CUDA's global min / max overloads for arithmetic types (mixed types convert as the usual
// arithmetic conversions do, like CUDA's mixed signed/unsigned overloads; floats as fminf / fmaxf).
template <class A, class B, std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, int> = 0>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
  else return C(b) < C(a) ? C(b) : C(a);
}
template <class A, class B, std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, int> = 0>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));
  else return C(a) < C(b) ? C(b) : C(a);
}

// ------------------------------------------------------------------ built-in types
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

#define WK_EMU_VEC4(name, T)                                  \
  struct alignas(4 * sizeof(T)) name {                        \
    T x, y, z, w;                                             \
  };                                                          \
  inline name make_##name(T a, T b, T c, T d) { return {a, b, c, d}; }
#define WK_EMU_VEC2(name, T)                \
  struct alignas(2 * sizeof(T)) name {      \
    T x, y;                                 \
  };                                        \
  inline name make_##name(T a, T b) { return {a, b}; }
WK_EMU_VEC4(int4, int)
WK_EMU_VEC4(uint4, unsigned)
WK_EMU_VEC4(float4, float)
WK_EMU_VEC2(int2, int)
WK_EMU_VEC2(uint2, unsigned)
WK_EMU_VEC2(float2, float)
#undef WK_EMU_VEC4
#undef WK_EMU_VEC2

inline uint3 threadIdx{0, 0, 0};  // set by the scheduler before it resumes a thread
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

// ------------------------------------------------------------------ half and bfloat16
struct __half {
  uint16_t x;
  __half() = default;
  __half(float f) { _Float16 h = static_cast<_Float16>(f); std::memcpy(&x, &h, 2); }
  operator float() const { _Float16 h; std::memcpy(&h, &x, 2); return static_cast<float>(h); }
};
struct __nv_bfloat16 {
  uint16_t x;
  __nv_bfloat16() = default;
  __nv_bfloat16(float f) {  // round to nearest even, NaN stays NaN
    uint32_t u;
    std::memcpy(&u, &f, 4);
    x = std::isnan(f) ? static_cast<uint16_t>((u >> 16) | 0x40u) : static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  operator float() const { uint32_t u = static_cast<uint32_t>(x) << 16; float f; std::memcpy(&f, &u, 4); return f; }
};
inline float __half2float(__half h) { return static_cast<float>(h); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }

// ------------------------------------------------------------------ math intrinsics
inline double __dmul_rn(double a, double b) { volatile double r = a * b; return r; }  // never fused
inline double __dadd_rn(double a, double b) { volatile double r = a + b; return r; }
inline double __dsub_rn(double a, double b) { volatile double r = a - b; return r; }
inline float __fmul_rn(float a, float b) { volatile float r = a * b; return r; }
inline float __fadd_rn(float a, float b) { volatile float r = a + b; return r; }
template <class T>
inline T __ldg(const T* p) { return *p; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int __ffs(int v) { return __builtin_ffs(v); }

// ------------------------------------------------------------------ runtime API
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9, cudaErrorLaunchFailure = 719 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaMemcpyKind { cudaMemcpyHostToHost = 0, cudaMemcpyHostToDevice = 1, cudaMemcpyDeviceToHost = 2, cudaMemcpyDeviceToDevice = 3, cudaMemcpyDefault = 4 };

namespace emu {

// Thrown inside an emulated thread to unwind it once the launch has failed.
struct Abort {};

struct State {
  std::string failure;  // first failure since the last reset
  bool failed = false;
  cudaError_t last_error = cudaSuccess;
  std::map<const void*, int> max_dynamic_smem;  // cudaFuncSetAttribute opt-ins
  uint64_t seed = 0x9e3779b97f4a7c15ull;         // thread schedule order (see run_block)
};
inline State& state() {
  static State s;
  return s;
}

inline void record_failure(const std::string& msg) {
  State& s = state();
  if (!s.failed) s.failure = msg;
  s.failed = true;
}
[[noreturn]] inline void fail(const std::string& msg) {
  record_failure(msg);
  throw Abort{};
}

// The first failure since the last reset ("" when none), and a reset for the next test.
inline std::string last_failure() { return state().failure; }
inline void reset() {
  State& s = state();
  s.failure.clear();
  s.failed = false;
  s.last_error = cudaSuccess;
}

// ------------------------------------------------------------------ fibers
// The threads of a block are fibers on one OS thread (runtime.cpp's wk_emu_switch swaps stacks in
// a few nanoseconds); a fiber runs until it waits at a barrier or exits.
extern "C" void wk_emu_switch(void** save_sp, void* load_sp);

struct Barrier;

struct Fiber {
  void* sp = nullptr;
  int tid = 0;
  bool done = false;
  const Barrier* waiting = nullptr;
  uint64_t wait_gen = 0;
  // Race detection (runtime.cpp): barriers this thread has passed, block-wide and warp-wide, and
  // how deep it is in emulator code (whose accesses are not the kernel's).
  uint32_t epoch = 0;
  uint32_t warp_epoch = 0;
  int internal = 0;
};

struct Warp;
struct Block;

inline Fiber* g_current = nullptr;
inline void* g_scheduler_sp = nullptr;
inline Block* g_block = nullptr;

inline void yield_to_scheduler() { wk_emu_switch(&g_current->sp, g_scheduler_sp); }

// Marks emulator code run inside a thread (barrier bookkeeping, shuffle slots): the race detector
// ignores its memory accesses.
#define WK_EMU_UNTRACKED __attribute__((no_sanitize_thread))  // the counter itself is emulator state
struct Internal {
  WK_EMU_UNTRACKED Internal() { ++g_current->internal; }
  WK_EMU_UNTRACKED ~Internal() { --g_current->internal; }
  Internal(const Internal&) = delete;
  Internal& operator=(const Internal&) = delete;
};

// The race detector (runtime.cpp): forget every access (a new launch) or those to one range (a
// block's shared memory, fresh on a GPU); the fiber stacks, which it never tracks.
void race_reset_all();
void race_reset_range(const void* p, size_t bytes);
void race_ignore_range(const void* p, size_t bytes);

// A barrier of the live threads of a block or warp: exited threads leave it (as on Volta+).
struct Barrier {
  int n;
  int arrived = 0;
  uint64_t gen = 0;
  explicit Barrier(int n_) : n(n_) {}
  void arrive_and_wait() {
    const Internal scope;
    if (++arrived == n) {
      arrived = 0;
      ++gen;
      return;
    }
    g_current->waiting = this;
    g_current->wait_gen = gen;
    yield_to_scheduler();
    if (state().failed) throw Abort{};
  }
  void leave() {
    --n;
    if (n > 0 && arrived == n) {
      arrived = 0;
      ++gen;
    }
  }
};

struct Warp {
  explicit Warp(int size_) : bar(size_) {
    for (int i = 0; i < 32; ++i) exited[i] = i >= size_;
    for (auto& g : slot_gen)
      for (uint64_t& v : g) v = ~uint64_t{0};
  }
  Barrier bar;
  uint64_t slot[2][32] = {};  // shuffle values, double-buffered so one barrier per exchange suffices
  uint64_t slot_gen[2][32];   // the barrier generation each slot was written in
  int phase = 0;
  bool exited[32];
};

struct Block {
  explicit Block(int threads) : bar(threads) {
    for (int w = 0; w * 32 < threads; ++w) warps.push_back(std::make_unique<Warp>(std::min(32, threads - 32 * w)));
  }
  Barrier bar;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> dynamic_smem;
  std::vector<const void*> poisoned;  // static shared arrays already filled with 0xff in this block
};

inline Warp& my_warp() { return *g_block->warps[g_current->tid / 32]; }
inline int my_lane() { return g_current->tid % 32; }
inline void* dynamic_shared() { return g_block->dynamic_smem.data(); }

// A static __shared__ array is undefined at the start of every block on a GPU; here it would keep
// the previous block's values. The first thread of a block to reach its declaration fills it
// with 0xff (NaN for floats), before any thread of the block can have written it.
inline void poison_shared(void* p, size_t bytes) {
  const Internal scope;
  auto& seen = g_block->poisoned;
  if (std::find(seen.begin(), seen.end(), p) != seen.end()) return;
  seen.push_back(p);
  std::memset(p, 0xff, bytes);
  race_reset_range(p, bytes);
}

inline std::string hex(unsigned v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%x", v);
  return b;
}

// Every lane the mask names must be alive and every live lane named: the emulated warp barrier
// waits for all live lanes, so a partial mask would deadlock or mix unrelated exchanges.
inline void check_mask(const char* fn, unsigned mask) {
  const Internal scope;
  const Warp& w = my_warp();
  for (int i = 0; i < 32; ++i) {
    const bool named = (mask >> i) & 1u, live = !w.exited[i];
    if (named && !live) fail(std::string(fn) + ": mask " + hex(mask) + " names lane " + std::to_string(i) + ", which has exited or does not exist");
    if (!named && live) fail(std::string(fn) + ": partial mask " + hex(mask) + " (not emulated; the kernels use whole warps)");
  }
}

template <class T>
T exchange(const char* fn, unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of a type wider than 8 bytes");
  const Internal scope;
  check_mask(fn, mask);
  Warp& w = my_warp();
  const int ph = w.phase, lane = my_lane();
  const uint64_t gen = w.bar.gen;
  std::memcpy(&w.slot[ph][lane], &v, sizeof(T));
  w.slot_gen[ph][lane] = gen;
  w.bar.arrive_and_wait();
  if (w.phase == ph) w.phase ^= 1;  // the first lane past the barrier flips it for the next exchange
  T r = v;
  if (src >= 0 && src < 32) {
    // The source must have written in this exchange (not exited before it, or run elsewhere).
    if (w.slot_gen[ph][src] != gen) fail(std::string(fn) + ": reads lane " + std::to_string(src) + ", which did not take part");
    std::memcpy(&r, &w.slot[ph][src], sizeof(T));
  }
  ++g_current->warp_epoch;
  return r;
}

// Runs the fibers of one block to completion, in an order reshuffled on every pass so that a
// missing barrier shows up whichever thread would have run first.
inline void run_block(Block& blk, std::vector<Fiber>& fibers) {
  State& s = state();
  std::vector<int> order(fibers.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  uint64_t rng = s.seed;
  for (;;) {
    for (size_t i = order.size(); i > 1; --i) {  // Fisher-Yates with xorshift64
      rng ^= rng << 13;
      rng ^= rng >> 7;
      rng ^= rng << 17;
      std::swap(order[i - 1], order[rng % i]);
    }
    bool ran = false, live = false;
    for (int i : order) {
      Fiber& f = fibers[i];
      if (f.done) continue;
      live = true;
      if (f.waiting != nullptr && f.waiting->gen == f.wait_gen) continue;
      f.waiting = nullptr;
      const unsigned t = static_cast<unsigned>(f.tid);
      threadIdx = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
      // g_current names a thread only while that thread runs: the scheduler's own accesses (its
      // Fiber and order vectors, whose heap addresses the next block reuses) are no thread's.
      void* const sp = f.sp;
      g_current = &f;
      wk_emu_switch(&g_scheduler_sp, sp);
      g_current = nullptr;
      ran = true;
      if (s.failed) return;
    }
    if (!live) return;
    if (!ran) {
      int at_block = 0;
      for (const Fiber& f : fibers) at_block += !f.done && f.waiting == &blk.bar;
      record_failure("deadlock: every live thread waits at a barrier that cannot complete (" + std::to_string(at_block) +
                     " at __syncthreads, the rest at warp-level exchanges)");
      return;
    }
  }
}

// One mapping of n stacks (each with a guard page at its low end), untracked by the race detector.
struct Stacks {
  static constexpr size_t kBytes = 256 * 1024;
  char* base = nullptr;
  size_t total = 0;
  explicit Stacks(int n);
  ~Stacks();
  char* stack(int i) const { return base + static_cast<size_t>(i) * kBytes; }
};

// The initial stack pointer of a fiber whose stack ends at `top`: it starts in `entry`.
void* prepare_stack(char* top, void (*entry)());

// --------------------------------------------------------------- launch
inline std::function<void()>* g_body = nullptr;

WK_EMU_UNTRACKED inline void fiber_entry() {
  Fiber* f = g_current;
  try {
    (*g_body)();
  } catch (const Abort&) {
  } catch (...) {
    record_failure("an exception escaped an emulated thread");
  }
  ++f->internal;
  f->done = true;
  Warp& w = my_warp();
  w.exited[my_lane()] = true;
  w.bar.leave();
  g_block->bar.leave();
  wk_emu_switch(&f->sp, g_scheduler_sp);
  __builtin_trap();  // a finished fiber is never resumed
}

template <class... P, class... A>
void launch_kernel(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A&&... args) {
  State& s = state();
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  auto bad = [&](const std::string& why) {
    s.last_error = cudaErrorInvalidConfiguration;
    record_failure("invalid launch configuration: " + why);
  };
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    return bad("grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " + std::to_string(grid.z) + ")");
  if (threads == 0 || threads > 1024 || block.z > 64) return bad("block of " + std::to_string(threads) + " threads");
  auto it = s.max_dynamic_smem.find(reinterpret_cast<const void*>(kernel));
  const size_t smem_limit = it == s.max_dynamic_smem.end() ? 48 * 1024 : static_cast<size_t>(it->second);
  if (smem > smem_limit)
    return bad(std::to_string(smem) + " bytes of dynamic shared memory (limit " + std::to_string(smem_limit) + ")");
  if (s.failed) return;  // an earlier launch failed: later work on the stream does not run

  // Arguments are converted to the parameter types once and passed by value, as CUDA does.
  const std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  race_reset_all();  // launches on one stream are ordered
  std::function<void()> body = [&] { std::apply(kernel, params); };
  g_body = &body;
  const int n = static_cast<int>(threads);
  Stacks stacks(n);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block blk(n);
        blk.dynamic_smem.assign(smem, 0xff);
        race_reset_range(blk.dynamic_smem.data(), smem);
        std::vector<Fiber> fibers(n);
        for (int t = 0; t < n; ++t) {
          fibers[t].tid = t;
          fibers[t].sp = prepare_stack(stacks.stack(t) + Stacks::kBytes, &fiber_entry);
        }
        g_block = &blk;
        blockIdx = {bx, by, bz};
        blockDim = block;
        gridDim = grid;
        run_block(blk, fibers);
        g_block = nullptr;
        if (s.failed) {
          s.last_error = cudaErrorLaunchFailure;
          g_body = nullptr;
          return;
        }
      }
  g_body = nullptr;
}

struct Launch {
  dim3 grid, block;
  size_t smem;
  template <class K, class... A>
  void operator()(K kernel, A&&... args) const {
    launch_kernel(kernel, grid, block, smem, std::forward<A>(args)...);
  }
  // A kernel template launched without explicit template arguments (`kern<<<g, b>>>(args)`, which
  // nvcc deduces from the arguments): its name is an overload set, so K above cannot be deduced.
  // Here the kernel's type is taken from the decayed argument types and the template arguments are
  // deduced from that type, which covers arguments of the exact parameter types (not arguments that
  // would need a conversion, such as T* for a const T* parameter).
  template <class... A>
  void operator()(void (*kernel)(std::decay_t<A>...), A&&... args) const {
    launch_kernel(kernel, grid, block, smem, std::forward<A>(args)...);
  }
};
inline Launch launch(dim3 grid, dim3 block, size_t smem = 0, cudaStream_t = nullptr) { return {grid, block, smem}; }

}  // namespace emu

// ------------------------------------------------------------------ device intrinsics
inline void __syncthreads() {
  emu::g_block->bar.arrive_and_wait();
  const emu::Internal scope;
  ++emu::g_current->epoch;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  emu::check_mask("__syncwarp", mask);
  emu::my_warp().bar.arrive_and_wait();
  const emu::Internal scope;
  ++emu::g_current->warp_epoch;
}
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
[[noreturn]] inline void __trap() { emu::fail("__trap() executed"); }

template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = emu::my_lane();
  return emu::exchange("__shfl_xor_sync", mask, v, (lane & ~(width - 1)) + ((lane ^ lane_mask) & (width - 1)));
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = emu::my_lane();
  return emu::exchange("__shfl_sync", mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = emu::my_lane(), in_seg = lane % width;
  return emu::exchange("__shfl_down_sync", mask, v, in_seg + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = emu::my_lane(), in_seg = lane % width;
  return emu::exchange("__shfl_up_sync", mask, v, in_seg >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane);
}

template <class T, class F>
T emu_atomic_rmw(T* p, F f) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (!a.compare_exchange_weak(old, f(old))) {
  }
  return old;
}
template <class T>
T atomicAdd(T* p, T v) { return emu_atomic_rmw(p, [v](T o) { return static_cast<T>(o + v); }); }
template <class T>
T atomicOr(T* p, T v) { return emu_atomic_rmw(p, [v](T o) { return static_cast<T>(o | v); }); }
template <class T>
T atomicMin(T* p, T v) { return emu_atomic_rmw(p, [v](T o) { return std::min(o, v); }); }
template <class T>
T atomicMax(T* p, T v) { return emu_atomic_rmw(p, [v](T o) { return std::max(o, v); }); }
template <class T>
T atomicExch(T* p, T v) { return std::atomic_ref<T>(*p).exchange(v); }
template <class T>
T atomicCAS(T* p, T expected, T desired) {
  std::atomic_ref<T>(*p).compare_exchange_strong(expected, desired);
  return expected;
}

// ------------------------------------------------------------------ host API (synchronous)
inline cudaError_t cudaGetLastError() {
  cudaError_t e = emu::state().last_error;
  emu::state().last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return emu::state().last_error; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated launch error"; }
inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  std::memset(p, v, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t = nullptr) {
  std::memmove(d, s, n);
  return cudaSuccess;
}
template <class K>
cudaError_t cudaFuncSetAttribute(K* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value > 227 * 1024) return cudaErrorInvalidValue;  // the sm_90 opt-in limit
    emu::state().max_dynamic_smem[reinterpret_cast<const void*>(kernel)] = value;
  }
  return cudaSuccess;
}

// ------------------------------------------------------------------ wmma (tensor-core tiles)
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int rows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int cols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = rows * cols;
  T x[rows * cols];  // row-major tile, the same in every lane
};

template <class Use, int M, int N, int K, class T, class L, class U>
void fill_fragment(fragment<Use, M, N, K, T, L>& f, U v) {
  std::fill(f.x, f.x + f.num_elements, static_cast<T>(v));
}

// The documented requirements: a 256-bit aligned pointer, ldm a multiple of 16 bytes.
template <class T>
void check_tile_address(const char* fn, const T* p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) emu::fail(std::string(fn) + ": pointer not 32-byte aligned");
  if (ldm * sizeof(T) % 16 != 0) emu::fail(std::string(fn) + ": ldm " + std::to_string(ldm) + " is not a multiple of 16 bytes");
}

template <class Use, int M, int N, int K, class T, class L>
void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const T* p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, L>;
  check_tile_address("wmma::load_matrix_sync", p, ldm);
  __syncwarp();
  for (int r = 0; r < F::rows; ++r)
    for (int c = 0; c < F::cols; ++c) f.x[r * F::cols + c] = std::is_same_v<L, col_major> ? p[c * ldm + r] : p[r * ldm + c];
  __syncwarp();
}

template <int M, int N, int K, class TA, class LA, class TB, class LB, class TC>
void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
              const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC>& c) {
  TC out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      float s = static_cast<float>(c.x[i * N + j]);
      for (int k = 0; k < K; ++k) s += static_cast<float>(a.x[i * K + k]) * static_cast<float>(b.x[k * N + j]);
      out[i * N + j] = static_cast<TC>(s);
    }
  std::memcpy(d.x, out, sizeof(out));
}

template <int M, int N, int K, class T>
void store_matrix_sync(T* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout) {
  check_tile_address("wmma::store_matrix_sync", p, ldm);
  __syncwarp();
  if (emu::my_lane() == 0)
    for (int r = 0; r < M; ++r)
      for (int c = 0; c < N; ++c) (layout == mem_col_major ? p[c * ldm + r] : p[r * ldm + c]) = f.x[r * N + c];
  __syncwarp();
}
}  // namespace nvcuda::wmma
