// dp_fast::add_noise, CUDA kernel. See add_noise.h for the math; the schema and the argument checks
// live in add_noise.cpp.
//
// The timesteps are read by the kernel from device memory, so the op never synchronises with the host
// and can be captured in a CUDA graph.

#include "add_noise.h"

#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

namespace dp_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;  // grid-stride beyond this: enough blocks to fill any current GPU

template <typename T>
__global__ void __launch_bounds__(kThreads)
    add_noise_kernel(const T* __restrict__ x, const T* __restrict__ n, const int64_t* __restrict__ t,
                     const float* __restrict__ abar, T* __restrict__ out, int64_t num_t, int64_t inner,
                     int64_t numel) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < numel; k += stride) {
    const int64_t ti = t[k / inner];
    float r;
    if (ti < 0 || ti >= num_t) {
      r = __int_as_float(0x7fc00000);  // no exception without a host sync: NaN marks the bad timestep
    } else {
      const float a = abar[ti];
      r = sqrtf(a) * static_cast<float>(x[k]) + sqrtf(1.0f - a) * static_cast<float>(n[k]);
    }
    out[k] = static_cast<T>(r);
  }
}

template <typename T>
void launch(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps, const at::Tensor& abar,
            at::Tensor& out) {
  const int64_t numel = x0.numel();
  const int64_t inner = numel / x0.size(0);
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min((numel + kThreads - 1) / kThreads, kMaxBlocks)));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x0.get_device()).stream();
  add_noise_kernel<T><<<blocks, kThreads, 0, stream>>>(
      x0.const_data_ptr<T>(), noise.const_data_ptr<T>(), timesteps.const_data_ptr<int64_t>(),
      abar.const_data_ptr<float>(), out.mutable_data_ptr<T>(), abar.size(0), inner, numel);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor add_noise_cuda(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps,
                          const at::Tensor& alphas_cumprod) {
  check_add_noise_inputs(x0, noise, timesteps, alphas_cumprod);
  const c10::cuda::CUDAGuard guard(x0.device());
  at::Tensor out = at::empty_like(x0);
  if (x0.numel() == 0) return out;
  switch (x0.scalar_type()) {
    case at::kFloat: launch<float>(x0, noise, timesteps, alphas_cumprod, out); break;
    case at::kBFloat16: launch<c10::BFloat16>(x0, noise, timesteps, alphas_cumprod, out); break;
    case at::kHalf: launch<c10::Half>(x0, noise, timesteps, alphas_cumprod, out); break;
    default: TORCH_CHECK(false, "dp_fast::add_noise: unreachable dtype ", x0.scalar_type());
  }
  return out;
}

}  // namespace
}  // namespace dp_fast

TORCH_LIBRARY_IMPL(dp_fast, CUDA, m) {
  m.impl("add_noise", &dp_fast::add_noise_cuda);
}
