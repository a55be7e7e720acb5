// The non-inline part of the CUDA emulator (include/emu.h): fiber stacks and the x86-64 stack
// switch. Compiled once into every emulated family's library.
#include <sys/mman.h>

#include <stdexcept>

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
  for (int i = 0; i < n; ++i) {
    void* p = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("cuda emulator: cannot map a fiber stack");
    mprotect(p, page, PROT_NONE);  // overflow hits the guard page instead of a neighbour
    mem.push_back(static_cast<char*>(p));
  }
}

Stacks::~Stacks() {
  for (char* p : mem) munmap(p, kBytes);
}

// The new stack, top down: a zero return address for entry (at 8 mod 16, as after a call), entry
// itself for wk_emu_switch's ret, six zeroed registers, then the caller's FP control words.
void* prepare_stack(Fiber& f, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(f.stack + f.stack_bytes) & ~uintptr_t{15};
  auto* sp = reinterpret_cast<uint64_t*>(top);
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
// compiled with -fsanitize=alignment,bounds,shift,integer-divide-by-zero (harness.py) and these
// handlers, in place of the sanitizer runtime, report the first hit as an emulator failure, with
// the kernel source line. Every check's data begins with its source location.
namespace {

struct SourceLocation {
  const char* file;
  uint32_t line;
  uint32_t column;
};

[[noreturn]] void report(const char* what, const void* data) {
  const auto* loc = static_cast<const SourceLocation*>(data);
  emu::fail(std::string(what) + " at " + (loc->file ? loc->file : "?") + ":" + std::to_string(loc->line) + ":" +
            std::to_string(loc->column));
}

}  // namespace

#define WK_EMU_UBSAN_HANDLER(name, what)                                  \
  extern "C" void __ubsan_handle_##name(void* data, ...) { report(what, data); } \
  extern "C" void __ubsan_handle_##name##_abort(void* data, ...) { report(what, data); }

WK_EMU_UBSAN_HANDLER(type_mismatch_v1, "misaligned or null memory access (the GPU faults)")
WK_EMU_UBSAN_HANDLER(out_of_bounds, "array index out of bounds (shared or local array)")
WK_EMU_UBSAN_HANDLER(shift_out_of_bounds, "shift by a negative amount or by the type's width or more")
WK_EMU_UBSAN_HANDLER(divrem_overflow, "integer division by zero or overflow")
#undef WK_EMU_UBSAN_HANDLER
