// dp_fast::random_crop, CUDA kernel. See random_crop.h for the math; the schema and the argument
// checks live in random_crop.cpp.
//
// The offsets are read by the kernel from device memory (no host sync, CUDA-graph safe). One thread
// per output pixel: consecutive threads write consecutive pixels of a plane, so stores coalesce and
// loads are contiguous runs of the source rows.

#include "random_crop.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace dp_fast {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocksX = 64;     // per plane: 64 * 256 pixels before striding
constexpr int64_t kMaxBlocksY = 65535;  // the grid's y limit; planes beyond it are strided

// blockIdx.y walks the image-channel planes (n, c), blockIdx.x / threadIdx.x the pixels of one output
// plane: the offsets are read once per plane and per-pixel index math stays 32-bit (h * w < 2^31 is
// checked on the host), instead of four 64-bit divisions per element.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    random_crop_kernel(const T* __restrict__ img, const int64_t* __restrict__ off, float* __restrict__ out,
                       int64_t planes, int64_t C, int64_t H, int64_t W, int h, int w, bool normalize) {
  const int hw = h * w;
  for (int64_t nc = blockIdx.y; nc < planes; nc += gridDim.y) {
    const int64_t b = nc / C;
    const int64_t top = off[2 * b];
    const int64_t left = off[2 * b + 1];
    const bool valid = top >= 0 && top <= H - h && left >= 0 && left <= W - w;
    const T* src = img + (nc * H + top) * W + left;  // only dereferenced when valid
    float* dst = out + nc * hw;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < hw; p += gridDim.x * blockDim.x) {
      float v;
      if (!valid) {
        v = __int_as_float(0x7fc00000);  // no exception without a host sync: NaN marks the bad offset
      } else {
        const int i = p / w;
        v = static_cast<float>(src[static_cast<int64_t>(i) * W + (p - i * w)]);
        if constexpr (std::is_same_v<T, uint8_t>) v = __fdiv_rn(v, 255.0f);  // IEEE, as on the CPU
        if (normalize) v = v * 2.0f - 1.0f;  // 2 v is exact: contraction to FMA cannot change the bits
      }
      dst[p] = v;
    }
  }
}

template <typename T>
void launch(const at::Tensor& images, const at::Tensor& offsets, at::Tensor& out, bool normalize) {
  const int64_t planes = out.size(0) * out.size(1);
  const int64_t hw = out.size(2) * out.size(3);
  const int blocks_x = static_cast<int>(std::min<int64_t>((hw + kThreads - 1) / kThreads, kMaxBlocksX));
  const int blocks_y = static_cast<int>(std::min<int64_t>(planes, kMaxBlocksY));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream(images.get_device()).stream();
  random_crop_kernel<T><<<dim3(blocks_x, blocks_y), kThreads, 0, stream>>>(
      images.const_data_ptr<T>(), offsets.const_data_ptr<int64_t>(), out.mutable_data_ptr<float>(), planes,
      images.size(1), images.size(2), images.size(3), static_cast<int>(out.size(2)), static_cast<int>(out.size(3)),
      normalize);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor random_crop_cuda(const at::Tensor& images, const at::Tensor& offsets, int64_t crop_h, int64_t crop_w,
                            bool normalize) {
  check_random_crop_inputs(images, offsets, crop_h, crop_w);
  TORCH_CHECK(crop_h * crop_w < (int64_t{1} << 31), "dp_fast::random_crop: the CUDA kernel needs crop_h * crop_w "
              "< 2^31, got (", crop_h, ", ", crop_w, ")");
  const c10::cuda::CUDAGuard guard(images.device());
  at::Tensor out = at::empty({images.size(0), images.size(1), crop_h, crop_w}, images.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  switch (images.scalar_type()) {
    case at::kByte: launch<uint8_t>(images, offsets, out, normalize); break;
    case at::kFloat: launch<float>(images, offsets, out, normalize); break;
    case at::kBFloat16: launch<c10::BFloat16>(images, offsets, out, normalize); break;
    case at::kHalf: launch<c10::Half>(images, offsets, out, normalize); break;
    default: TORCH_CHECK(false, "dp_fast::random_crop: unreachable dtype ", images.scalar_type());
  }
  return out;
}

}  // namespace
}  // namespace dp_fast

TORCH_LIBRARY_IMPL(dp_fast, CUDA, m) {
  m.impl("random_crop", &dp_fast::random_crop_cuda);
}
