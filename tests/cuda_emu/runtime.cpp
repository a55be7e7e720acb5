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
