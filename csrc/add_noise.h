// dp_fast::add_noise: the DDPM forward process with per-sample timesteps.
//
// x0, noise: (B, ...) float32 / bfloat16 / float16, same shape and dtype, contiguous;
// timesteps: (B,) int64; alphas_cumprod: (T,) float32. Elementwise, in float32:
//   out[b, ...] = sqrt(abar[t_b]) * x0[b, ...] + sqrt(1 - abar[t_b]) * noise[b, ...]
// stored in x0's dtype. CPU checks the range of the timesteps; CUDA cannot without a host sync and
// writes NaN for the samples whose timestep is outside [0, T).
#pragma once

#include <ATen/core/Tensor.h>

namespace dp_fast {

// Everything that can be checked without reading device memory; on CPU also the timestep range.
void check_add_noise_inputs(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps,
                            const at::Tensor& alphas_cumprod);

}  // namespace dp_fast
