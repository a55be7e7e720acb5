// Shared argument checks. Every message reads "weightkit.<op>: <expected>, got <actual>" so a
// user can tell which op refused which input without reading our sources.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

#define WK_CHECK(op, cond, ...) TORCH_CHECK((cond), "weightkit.", op, ": ", __VA_ARGS__)

namespace weightkit {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// fp32 / bf16 / fp16: the dtypes our kernels are written for.
inline void check_float_dtype(const char* op, const at::Tensor& t, const char* name) {
  WK_CHECK(op, is_supported_float(t.scalar_type()), name,
           " must be float32, bfloat16 or float16, got ", t.scalar_type());
}

inline void check_dims(const char* op, const at::Tensor& t, const char* name, int64_t lo, int64_t hi) {
  WK_CHECK(op, t.dim() >= lo && t.dim() <= hi, name, " must have ", lo, lo == hi ? "" : " to ",
           lo == hi ? std::string() : std::to_string(hi), " dimensions, got shape ", t.sizes());
}

inline void check_same_device(const char* op, const at::Tensor& a, const char* an, const at::Tensor& b,
                              const char* bn) {
  WK_CHECK(op, a.device() == b.device(), an, " and ", bn, " must be on the same device, got ", a.device(),
           " and ", b.device());
}

// The index in `choices` of environment variable `var`'s value, or -1 when it is unset or empty;
// any other value is an error naming `op` ("VAR must be a, b or c, got 'x'"). Read on every call,
// so tests and users can switch paths with the environment.
inline int env_choice(const char* op, const char* var, std::initializer_list<const char*> choices) {
  const char* v = std::getenv(var);
  if (v == nullptr || *v == '\0') return -1;
  std::string allowed;
  int i = 0;
  for (const char* c : choices) {
    if (std::strcmp(v, c) == 0) return i;
    allowed += i == 0 ? "" : i + 1 == static_cast<int>(choices.size()) ? " or " : ", ";
    allowed += c;
    ++i;
  }
  WK_CHECK(op, false, var, " must be ", allowed, ", got '", v, "'");
  return -1;  // not reached: WK_CHECK threw
}

}  // namespace weightkit
