// Small helpers shared by the argument checks of the ops (ddpm_step, add_noise, random_crop).
#pragma once

#include <ATen/core/Tensor.h>

namespace dp_fast {
namespace util {

// Python-side dtype names, so that messages read like the Python errors of dp_fast.ops.
inline const char* dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kDouble: return "float64";
    case at::kLong: return "int64";
    case at::kInt: return "int32";
    case at::kByte: return "uint8";
    default: return c10::toString(t);
  }
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

}  // namespace util
}  // namespace dp_fast
