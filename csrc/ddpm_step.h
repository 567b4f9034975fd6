// dp_fast::ddpm_step: one denoising step of a DDPM/DDIM sampler from a precomputed table.
//
// table: float32 (K, 10), row i = [a, b, c, d, e, f, g, sigma, lo, hi]; step: 0-d int64 = i.
// With x = sample, m = model_output, n = noise, elementwise:
//   x0  = clamp(a*x + b*m, lo, hi)
//   eps = c*x + d*m
//   out = e*x0 + f*x + g*eps + sigma*n
// Arithmetic in float32, result in the input dtype (float32, bfloat16 or float16).
#pragma once

#include <ATen/core/Tensor.h>

namespace dp_fast {

constexpr int64_t kDdpmTableCols = 10;

// Validates everything that can be checked without reading device memory; on CPU also the range of
// `step`. Throws c10::Error (RuntimeError in Python) naming the argument.
void check_ddpm_step_inputs(const at::Tensor& sample, const at::Tensor& model_output,
                            const at::Tensor& noise, const at::Tensor& table, const at::Tensor& step);

// The formula for one element, shared by the CPU and CUDA kernels (nvcc may contract into FMAs,
// so the two can differ in the last bit).
// Comparisons rather than fminf/fmaxf so that a NaN propagates like torch.clamp.
#if defined(__CUDACC__)
#define DP_FAST_HD __host__ __device__ __forceinline__
#else
#define DP_FAST_HD inline
#endif

struct DdpmRow {
  float a, b, c, d, e, f, g, sigma, lo, hi;
};

DP_FAST_HD DdpmRow load_ddpm_row(const float* r) {
  return DdpmRow{r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]};
}

DP_FAST_HD float ddpm_step_elem(const DdpmRow& r, float x, float m, float n) {
  float x0 = r.a * x + r.b * m;
  x0 = x0 < r.lo ? r.lo : (x0 > r.hi ? r.hi : x0);
  const float eps = r.c * x + r.d * m;
  return r.e * x0 + r.f * x + r.g * eps + r.sigma * n;
}

}  // namespace dp_fast
