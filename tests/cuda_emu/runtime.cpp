// The non-inline part of the CUDA emulator (include/emu.h): fiber stacks and the x86-64 stack
// switch. Compiled once into every emulated family's library.
#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <stdexcept>
#include <unordered_map>

#include "emu.h"

// wk_emu_switch(save_sp, load_sp): push the callee-saved registers and the FP control words, store
// rsp in *save_sp, load load_sp, pop the same from there and return into the other stack (SysV).
asm(R"(
    .text
    .globl wk_emu_switch
    .type wk_emu_switch, @function
wk_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size wk_emu_switch, .-wk_emu_switch
    .section .note.GNU-stack,"",@progbits
    .text
)");

namespace emu {

Stacks::Stacks(int n) {
  const size_t page = 4096;
  total = static_cast<size_t>(n) * kBytes;
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw std::runtime_error("cuda emulator: cannot map the fiber stacks");
  base = static_cast<char*>(p);
  for (int i = 0; i < n; ++i) mprotect(stack(i), page, PROT_NONE);  // overflow faults, not a neighbour
  race_ignore_range(base, total);
}

Stacks::~Stacks() { munmap(base, total); }

// The new stack, top down: a zero return address for entry (at 8 mod 16, as after a call), entry
// itself for wk_emu_switch's ret, six zeroed registers, then the caller's FP control words.
void* prepare_stack(char* top, void (*entry)()) {
  auto* sp = reinterpret_cast<uint64_t*>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t{15});
  *--sp = 0;
  *--sp = reinterpret_cast<uint64_t>(entry);
  for (int i = 0; i < 6; ++i) *--sp = 0;
  --sp;
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  std::memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpcw, 2);
  return sp;
}

}  // namespace emu

// Undefined-behaviour checks the GPU would turn into faults or garbage: the emulated kernels are
// compiled with -fsanitize=alignment,bounds,shift,integer-divide-by-zero in recover mode
// (harness.py) and these handlers, in place of the sanitizer runtime, report the first hit as an
// emulator failure, with the kernel source line. Every check's data begins with its source location.
namespace {

struct SourceLocation {
  const char* file;
  uint32_t line;
  uint32_t column;
};

// Recorded, not thrown (the compiler treats sanitizer calls as nothrow): the kernel runs on to its
// next barrier, which unwinds it.
void report(const char* what, const void* data) {
  const auto* loc = static_cast<const SourceLocation*>(data);
  emu::record_failure(std::string(what) + " at " + (loc->file ? loc->file : "?") + ":" + std::to_string(loc->line) +
                      ":" + std::to_string(loc->column));
}

}  // namespace

#define WK_EMU_UBSAN_HANDLER(name, what) \
  extern "C" void __ubsan_handle_##name(void* data, ...) { report(what, data); }

WK_EMU_UBSAN_HANDLER(type_mismatch_v1, "misaligned or null memory access (the GPU faults)")
WK_EMU_UBSAN_HANDLER(out_of_bounds, "array index out of bounds (shared or local array)")
WK_EMU_UBSAN_HANDLER(shift_out_of_bounds, "shift by a negative amount or by the type's width or more")
WK_EMU_UBSAN_HANDLER(divrem_overflow, "integer division by zero or overflow")
#undef WK_EMU_UBSAN_HANDLER

// ------------------------------------------------------------------ race detection
// The emulated kernel is compiled with -fsanitize=thread (harness.py), which calls the
// __tsan_* hooks below on every memory access and atomic operation; they replace the TSan runtime
// with a check of the CUDA rules. Per 4-byte granule it keeps the last write and the last read
// (block, thread, barrier epochs, which bytes); keeping only the last of each can miss a race, never
// invent one. Two accesses by different threads, at least one a write and not
// both atomic, race unless they are ordered: same block and a __syncthreads between them, or same
// warp and a warp-level sync (shuffle, __syncwarp) between them. Blocks are never ordered within
// a launch; launches are. Accesses from emulator code (Fiber::internal), by the scheduler, and
// to fiber stacks are not tracked. A race fails the launch, naming both threads and the code
// address (harness.check turns it into file:line).
namespace emu {
namespace {

struct Access {
  int64_t block = -1;  // -1: none recorded
  int thread = 0;
  uint32_t epoch = 0;
  uint32_t warp_epoch = 0;
  bool atomic = false;
  uint8_t bytes = 0;  // which bytes of the 4-byte granule (16-bit and byte stores share granules)
};

struct Shadow {
  Access write, read;
};

std::unordered_map<uintptr_t, Shadow> g_shadow;  // granule (address / 4) -> last accesses
uintptr_t g_ignore_lo = 0, g_ignore_hi = 0;      // the fiber stacks

int64_t block_id() { return (static_cast<int64_t>(blockIdx.z) * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x; }

bool ordered(const Access& before, const Access& now) {
  if (before.block != now.block) return false;
  if (before.thread == now.thread || before.epoch < now.epoch) return true;
  return before.thread / 32 == now.thread / 32 && before.warp_epoch < now.warp_epoch;
}

std::string where(const void* pc) {
  Dl_info info;
  char buf[64];
  if (dladdr(pc, &info) != 0 && info.dli_fbase != nullptr) {
    std::snprintf(buf, sizeof buf, "pc %#lx", static_cast<unsigned long>(reinterpret_cast<uintptr_t>(pc) -
                                                                        reinterpret_cast<uintptr_t>(info.dli_fbase)));
  } else {
    std::snprintf(buf, sizeof buf, "pc %p", pc);
  }
  return buf;
}

std::string who(const Access& a) {
  return "block " + std::to_string(a.block) + " thread " + std::to_string(a.thread);
}

void access(const void* p, size_t bytes, bool write, bool atomic, const void* pc) {
  const Fiber* f = g_current;
  if (f == nullptr || f->internal > 0 || bytes == 0 || state().failed) return;
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a >= g_ignore_lo && a < g_ignore_hi) return;
  Access now{block_id(), f->tid, f->epoch, f->warp_epoch, atomic, 0};
  const uintptr_t end = a + bytes;
  for (uintptr_t g = a >> 2; g <= (end - 1) >> 2; ++g) {
    const uintptr_t lo = std::max(a, g << 2) - (g << 2), hi = std::min(end, (g << 2) + 4) - (g << 2);
    now.bytes = static_cast<uint8_t>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
    Shadow& sh = g_shadow[g];
    const Access* other = nullptr;
    const char* kind = nullptr;
    auto conflicts = [&](const Access& before) {
      return before.block >= 0 && (before.bytes & now.bytes) != 0 && !ordered(before, now) &&
             !(atomic && before.atomic);
    };
    if (conflicts(sh.write)) {
      other = &sh.write;
      kind = "wrote";
    } else if (write && conflicts(sh.read)) {
      other = &sh.read;
      kind = "read";
    }
    if (other != nullptr) {
      char addr[32];
      std::snprintf(addr, sizeof addr, "%#lx", static_cast<unsigned long>(g << 2));
      // Recorded, not thrown: the compiler treats its sanitizer calls as nothrow. The thread runs
      // on to its next barrier, which unwinds it (state().failed).
      record_failure("data race at address " + std::string(addr) + ": " + who(now) + (write ? " writes" : " reads") +
           (atomic ? " (atomic)" : "") + " at " + where(pc) + " after " + who(*other) + " " + kind +
           " it with no barrier between (or atomics on both sides)");
      return;
    }
    (write ? sh.write : sh.read) = now;
  }
}

}  // namespace

void race_reset_all() { g_shadow.clear(); }

void race_reset_range(const void* p, size_t bytes) {
  if (bytes == 0) return;
  const auto a = reinterpret_cast<uintptr_t>(p);
  for (uintptr_t g = a >> 2; g <= (a + bytes - 1) >> 2; ++g) g_shadow.erase(g);
}

void race_ignore_range(const void* p, size_t bytes) {
  g_ignore_lo = reinterpret_cast<uintptr_t>(p);
  g_ignore_hi = g_ignore_lo + bytes;
}

}  // namespace emu

#define WK_PC __builtin_return_address(0)
extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_read_range(void* p, unsigned long n) { emu::access(p, n, false, false, WK_PC); }
void __tsan_write_range(void* p, unsigned long n) { emu::access(p, n, true, false, WK_PC); }
#define WK_EMU_PLAIN(n)                                                                               \
  void __tsan_read##n(void* p) { emu::access(p, n, false, false, WK_PC); }                            \
  void __tsan_write##n(void* p) { emu::access(p, n, true, false, WK_PC); }                            \
  void __tsan_unaligned_read##n(void* p) { emu::access(p, n, false, false, WK_PC); }                  \
  void __tsan_unaligned_write##n(void* p) { emu::access(p, n, true, false, WK_PC); }                  \
  void __tsan_volatile_read##n(void* p) { emu::access(p, n, false, false, WK_PC); }                   \
  void __tsan_volatile_write##n(void* p) { emu::access(p, n, true, false, WK_PC); }
WK_EMU_PLAIN(1)
WK_EMU_PLAIN(2)
WK_EMU_PLAIN(4)
WK_EMU_PLAIN(8)
WK_EMU_PLAIN(16)
#undef WK_EMU_PLAIN

// Atomics: record, then do the operation (one OS thread runs all fibers, so plain builtins do).
#define WK_EMU_FETCH(bits, T, op)                                          \
  T __tsan_atomic##bits##_fetch_##op(volatile T* a, T v, int) {            \
    emu::access(const_cast<T*>(a), sizeof(T), true, true, WK_PC);         \
    return __atomic_fetch_##op(a, v, __ATOMIC_SEQ_CST);                    \
  }
#define WK_EMU_ATOMIC(bits, T)                                                                         \
  T __tsan_atomic##bits##_load(const volatile T* a, int) {                                           \
    emu::access(const_cast<const T*>(a), sizeof(T), false, true, WK_PC);                             \
    return __atomic_load_n(a, __ATOMIC_SEQ_CST);                                                     \
  }                                                                                                  \
  void __tsan_atomic##bits##_store(volatile T* a, T v, int) {                                        \
    emu::access(const_cast<T*>(a), sizeof(T), true, true, WK_PC);                                   \
    __atomic_store_n(a, v, __ATOMIC_SEQ_CST);                                                        \
  }                                                                                                  \
  T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                                        \
    emu::access(const_cast<T*>(a), sizeof(T), true, true, WK_PC);                                   \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                              \
  }                                                                                                  \
  WK_EMU_FETCH(bits, T, add)                                                                         \
  WK_EMU_FETCH(bits, T, sub)                                                                         \
  WK_EMU_FETCH(bits, T, and)                                                                         \
  WK_EMU_FETCH(bits, T, or)                                                                          \
  WK_EMU_FETCH(bits, T, xor)                                                                         \
  int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {            \
    emu::access(const_cast<T*>(a), sizeof(T), true, true, WK_PC);                                   \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);          \
  }                                                                                                  \
  int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {              \
    emu::access(const_cast<T*>(a), sizeof(T), true, true, WK_PC);                                   \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);          \
  }                                                                                                  \
  T __tsan_atomic##bits##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                  \
    emu::access(const_cast<T*>(a), sizeof(T), true, true, WK_PC);                                   \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
    return c;                                                                                        \
  }
WK_EMU_ATOMIC(8, char)
WK_EMU_ATOMIC(16, short)
WK_EMU_ATOMIC(32, int)
WK_EMU_ATOMIC(64, long)
#undef WK_EMU_ATOMIC
#undef WK_EMU_FETCH
void __tsan_atomic_thread_fence(int) {}
void __tsan_atomic_signal_fence(int) {}
}  // extern "C"
#undef WK_PC
