// dp_fast::random_crop: per-image crop fused with uint8 -> float and the image normalization.
//
// images: (N, C, H, W) uint8 / float32 / bfloat16 / float16, contiguous; offsets: (N, 2) int64
// [top, left]; out: (N, C, crop_h, crop_w) float32 with, in float32,
//   v = images[n, c, top + i, left + j];  v = v / 255 (uint8 only);  v = 2 v - 1 (normalize only)
// (2 v is exact, so FMA contraction cannot change the bits: every backend gives the same result).
// CPU checks 0 <= top <= H - crop_h and 0 <= left <= W - crop_w; CUDA cannot without a host sync and
// writes NaN for the images whose offsets are out of range.
#pragma once

#include <ATen/core/Tensor.h>

namespace dp_fast {

void check_random_crop_inputs(const at::Tensor& images, const at::Tensor& offsets, int64_t crop_h,
                              int64_t crop_w);

}  // namespace dp_fast
