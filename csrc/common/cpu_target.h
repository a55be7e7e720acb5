// Function attributes that compile one function for one SIMD level. Every CPU kernel is built for
// each level and cpu_features.h picks one at run time, so one build runs on any x86-64.
#pragma once

// AVX2 with FMA and F16C: what CpuFeatures::avx2 checks.
#define WK_AVX2 __attribute__((target("avx2,fma,f16c")))
// AVX-512 F + BW + VL + DQ (CpuFeatures::avx512); implies AVX2.
#define WK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
// AVX-512 with VBMI and VNNI, checked separately (CpuFeatures::avx512_vbmi / avx512_vnni): the
// palette GEMV's int8 byte-table path.
#define WK_VBMI_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,fma")))
// AVX-512 with VNNI but not VBMI (CpuFeatures::avx512_vnni; Cascade Lake has VNNI without VBMI):
// trit_plane_matmul_a8's u8 x s8 dot products.
#define WK_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
// AVX-512 with VNNI and VBMI2 (CpuFeatures::avx512_vnni / avx512_vbmi2; Ice Lake, Zen 4): the
// trellis GEMV's funnel shifts (vpshldvd) and byte sums (vpdpbusd).
#define WK_AVX512_VNNI_VBMI2 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi2,fma,f16c")))
// AVX-512 with BF16 dot products (CpuFeatures::avx512_bf16; Zen 4, Cooper Lake, Sapphire Rapids):
// Newton-Schulz's bf16 matrix products (vdpbf16ps).
#define WK_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,f16c")))
// For generic helpers that must be inlined into a target-attributed caller, whose ISA they then
// compile for.
#define WK_INLINE inline __attribute__((always_inline))
