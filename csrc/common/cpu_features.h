// Run-time CPU feature detection and the choice of SIMD path.
//
// Kernels are compiled for every ISA (per-function target attributes) and picked at run time, so
// one wheel runs on any x86-64. WEIGHTKIT_CPU_ISA=scalar|avx2|avx512 forces a path, which lets the
// tests exercise every path the machine can execute.
#pragma once

#include <string>

namespace weightkit {

enum class CpuIsa { Scalar = 0, Avx2 = 1, Avx512 = 2 };

struct CpuFeatures {
  bool avx2 = false;       // with FMA and F16C, which every AVX2 part we target has
  bool avx512 = false;     // F + BW + VL + DQ, with OS support for the ZMM state
  bool avx512_bf16 = false;
  bool avx512_vbmi = false;  // byte permutes (vpermi2b, vpmultishiftqb)
  bool avx512_vnni = false;  // u8 x s8 dot products (vpdpbusd)
  bool avx512_vbmi2 = false;  // funnel shifts (vpshldvd)
  bool amx_bf16 = false;
};

const CpuFeatures& cpu_features();

// The widest path this CPU runs.
CpuIsa best_cpu_isa();

// The path to use now: WEIGHTKIT_CPU_ISA if set (checked against the CPU; errors name `op`),
// else best_cpu_isa(). Read on every call so tests can switch paths with the environment.
CpuIsa selected_cpu_isa(const char* op);

const char* isa_name(CpuIsa isa);

// True when bf16 matrix products run natively (AVX512-BF16 or AMX), so computing in bf16 is
// faster than fp32; otherwise bf16 compute is emulated with fp32 products and bf16 rounding.
bool cpu_has_fast_bf16();

}  // namespace weightkit
