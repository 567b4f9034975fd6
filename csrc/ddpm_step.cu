// dp_fast::ddpm_step, CUDA kernel. See ddpm_step.h for the math; the schema and the argument checks
// live in ddpm_step.cpp.
//
// The step index is read by the kernel from device memory, so the op never synchronises with the
// host and a CUDA graph captured once replays correctly after `step` is updated in place.

#include "ddpm_step.h"

#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace dp_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxDevices = 64;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// VEC elements per 16-byte load when every pointer is 16-byte aligned, else VEC == 1.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    ddpm_step_kernel(const T* __restrict__ x, const T* __restrict__ m, const T* __restrict__ n,
                     T* __restrict__ out, const float* __restrict__ table, const int64_t* __restrict__ step,
                     int64_t rows, int64_t numel) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t i = *step;
  if (i < 0 || i >= rows) {
    // An error cannot be raised without a host sync; a NaN result makes the bad step visible.
    const T nan = static_cast<T>(__int_as_float(0x7fc00000));
    for (int64_t k = tid; k < numel; k += stride) out[k] = nan;
    return;
  }
  const DdpmRow row = load_ddpm_row(table + i * kDdpmTableCols);

  using P = Pack<T, VEC>;
  const int64_t packs = numel / VEC;
  for (int64_t p = tid; p < packs; p += stride) {
    const P xv = reinterpret_cast<const P*>(x)[p];
    const P mv = reinterpret_cast<const P*>(m)[p];
    const P nv = reinterpret_cast<const P*>(n)[p];
    P ov;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      ov.v[j] = static_cast<T>(ddpm_step_elem(row, static_cast<float>(xv.v[j]), static_cast<float>(mv.v[j]),
                                              static_cast<float>(nv.v[j])));
    }
    reinterpret_cast<P*>(out)[p] = ov;
  }
  for (int64_t k = packs * VEC + tid; k < numel; k += stride) {
    out[k] = static_cast<T>(
        ddpm_step_elem(row, static_cast<float>(x[k]), static_cast<float>(m[k]), static_cast<float>(n[k])));
  }
}

int multiprocessor_count(int device) {
  static std::atomic<int> cache[kMaxDevices];
  if (device < 0 || device >= kMaxDevices) device = 0;
  int count = cache[device].load(std::memory_order_relaxed);
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

bool aligned16(const void* p) {
  return reinterpret_cast<std::uintptr_t>(p) % 16 == 0;
}

template <typename T>
void launch(const at::Tensor& sample, const at::Tensor& model_output, const at::Tensor& noise,
            const at::Tensor& table, const at::Tensor& step, at::Tensor& out) {
  constexpr int kVec = 16 / sizeof(T);
  const T* x = sample.const_data_ptr<T>();
  const T* m = model_output.const_data_ptr<T>();
  const T* n = noise.const_data_ptr<T>();
  T* o = out.mutable_data_ptr<T>();
  const int64_t numel = sample.numel();
  const bool vec = aligned16(x) && aligned16(m) && aligned16(n) && aligned16(o);
  const int64_t work = vec ? (numel + kVec - 1) / kVec : numel;
  const int64_t max_blocks = static_cast<int64_t>(multiprocessor_count(sample.get_device())) * 4;
  const int blocks = static_cast<int>(std::max<int64_t>(1, std::min((work + kThreads - 1) / kThreads, max_blocks)));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(sample.get_device()).stream();
  const float* tab = table.const_data_ptr<float>();
  const int64_t* st = step.const_data_ptr<int64_t>();
  if (vec) {
    ddpm_step_kernel<T, kVec><<<blocks, kThreads, 0, stream>>>(x, m, n, o, tab, st, table.size(0), numel);
  } else {
    ddpm_step_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(x, m, n, o, tab, st, table.size(0), numel);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor ddpm_step_cuda(const at::Tensor& sample, const at::Tensor& model_output, const at::Tensor& noise,
                          const at::Tensor& table, const at::Tensor& step) {
  check_ddpm_step_inputs(sample, model_output, noise, table, step);
  const c10::cuda::CUDAGuard guard(sample.device());
  at::Tensor out = at::empty_like(sample);
  if (sample.numel() == 0) return out;
  switch (sample.scalar_type()) {
    case at::kFloat: launch<float>(sample, model_output, noise, table, step, out); break;
    case at::kBFloat16: launch<c10::BFloat16>(sample, model_output, noise, table, step, out); break;
    case at::kHalf: launch<c10::Half>(sample, model_output, noise, table, step, out); break;
    default: TORCH_CHECK(false, "dp_fast::ddpm_step: unreachable dtype ", sample.scalar_type());
  }
  return out;
}

}  // namespace
}  // namespace dp_fast

TORCH_LIBRARY_IMPL(dp_fast, CUDA, m) {
  m.impl("ddpm_step", &dp_fast::ddpm_step_cuda);
}
