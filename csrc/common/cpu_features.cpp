#include "common/cpu_features.h"

#include <c10/util/Exception.h>
#include <cpuid.h>

#include <cstdlib>
#include <cstring>

namespace weightkit {
namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  bool f16c = false;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx)) f16c = (ecx >> 29) & 1u;
  f.avx2 = f.avx2 && f16c;
  // __builtin_cpu_supports also checks that the OS saves the ZMM registers.
  f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  if (f.avx512 && __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) f.avx512_bf16 = (eax >> 5) & 1u;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
    f.amx_bf16 = (edx >> 22) & 1u;
    f.avx512_vbmi = f.avx512 && ((ecx >> 1) & 1u);
    f.avx512_vnni = f.avx512 && ((ecx >> 11) & 1u);
    f.avx512_vbmi2 = f.avx512 && ((ecx >> 6) & 1u);
  }
#endif
  return f;
}

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

CpuIsa best_cpu_isa() {
  const auto& f = cpu_features();
  if (f.avx512) return CpuIsa::Avx512;
  if (f.avx2) return CpuIsa::Avx2;
  return CpuIsa::Scalar;
}

CpuIsa selected_cpu_isa(const char* op) {
  const char* forced = std::getenv("WEIGHTKIT_CPU_ISA");
  if (forced == nullptr || forced[0] == '\0') return best_cpu_isa();
  CpuIsa want;
  if (std::strcmp(forced, "scalar") == 0) {
    want = CpuIsa::Scalar;
  } else if (std::strcmp(forced, "avx2") == 0) {
    want = CpuIsa::Avx2;
  } else if (std::strcmp(forced, "avx512") == 0) {
    want = CpuIsa::Avx512;
  } else {
    TORCH_CHECK(false, "weightkit.", op, ": WEIGHTKIT_CPU_ISA must be one of scalar, avx2, avx512, got '",
                forced, "'");
  }
  TORCH_CHECK(static_cast<int>(want) <= static_cast<int>(best_cpu_isa()), "weightkit.", op,
              ": WEIGHTKIT_CPU_ISA=", forced, " but this CPU supports at most ", isa_name(best_cpu_isa()));
  return want;
}

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx512: return "avx512";
    case CpuIsa::Avx2: return "avx2";
    default: return "scalar";
  }
}

bool cpu_has_fast_bf16() {
  const auto& f = cpu_features();
  return f.avx512_bf16 || f.amx_bf16;
}

}  // namespace weightkit
