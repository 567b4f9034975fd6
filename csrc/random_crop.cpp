// dp_fast::random_crop: schema, argument checks and the CPU kernel. See random_crop.h for the math.

#include "random_crop.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>

#include "op_util.h"

namespace dp_fast {
namespace {

using util::dtype_name;

constexpr int64_t kGrain = 32768;  // output elements per task

// The value of one pixel: the formula of random_crop.h, shared by the table and the float path.
template <typename T>
inline float pixel_value(T x, bool normalize) {
  float v = static_cast<float>(x);
  if constexpr (std::is_same_v<T, uint8_t>) v = v / 255.0f;  // IEEE division, as in the reference
  if (normalize) v = v * 2.0f - 1.0f;
  return v;
}

template <typename T>
void random_crop_cpu_kernel(const T* img, const int64_t* off, float* out, int64_t n, int64_t c, int64_t H,
                            int64_t W, int64_t h, int64_t w, bool normalize) {
  // uint8 has 256 possible values: a table of their results (same formula, so the same bits) replaces a
  // division per pixel with an L1 load.
  float lut[256];
  if constexpr (std::is_same_v<T, uint8_t>) {
    for (int v = 0; v < 256; ++v) lut[v] = pixel_value<uint8_t>(static_cast<uint8_t>(v), normalize);
  }
  const int64_t rows = n * c * h;  // one task unit = one output row
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(w, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t nc = r / h, i = r % h, b = nc / c;
      const T* src = img + (nc * H + off[2 * b] + i) * W + off[2 * b + 1];
      float* dst = out + r * w;
      if constexpr (std::is_same_v<T, uint8_t>) {
        for (int64_t j = 0; j < w; ++j) dst[j] = lut[src[j]];
      } else {
        for (int64_t j = 0; j < w; ++j) dst[j] = pixel_value<T>(src[j], normalize);
      }
    }
  });
}

template <typename T>
void run(const at::Tensor& images, const at::Tensor& offsets, at::Tensor& out, bool normalize) {
  random_crop_cpu_kernel<T>(images.const_data_ptr<T>(), offsets.const_data_ptr<int64_t>(),
                            out.mutable_data_ptr<float>(), images.size(0), images.size(1), images.size(2),
                            images.size(3), out.size(2), out.size(3), normalize);
}

at::Tensor random_crop_cpu(const at::Tensor& images, const at::Tensor& offsets, int64_t crop_h, int64_t crop_w,
                           bool normalize) {
  check_random_crop_inputs(images, offsets, crop_h, crop_w);
  at::Tensor out = at::empty({images.size(0), images.size(1), crop_h, crop_w}, images.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  switch (images.scalar_type()) {
    case at::kByte: run<uint8_t>(images, offsets, out, normalize); break;
    case at::kFloat: run<float>(images, offsets, out, normalize); break;
    case at::kBFloat16: run<c10::BFloat16>(images, offsets, out, normalize); break;
    case at::kHalf: run<c10::Half>(images, offsets, out, normalize); break;
    default: TORCH_CHECK(false, "dp_fast::random_crop: unreachable dtype ", dtype_name(images.scalar_type()));
  }
  return out;
}

}  // namespace

void check_random_crop_inputs(const at::Tensor& images, const at::Tensor& offsets, int64_t crop_h,
                              int64_t crop_w) {
  constexpr const char* op = "dp_fast::random_crop: ";
  const auto dt = images.scalar_type();
  TORCH_CHECK(dt == at::kByte || util::is_supported_float(dt), op,
              "`images` must be uint8, float32, bfloat16 or float16, got ", dtype_name(dt));
  TORCH_CHECK(images.dim() == 4, op, "`images` must have shape (N, C, H, W), got ", images.sizes());
  TORCH_CHECK(images.is_contiguous(), op, "`images` must be contiguous (N, C, H, W), got sizes ", images.sizes(),
              " with strides ", images.strides());
  const int64_t H = images.size(2), W = images.size(3);
  TORCH_CHECK(crop_h >= 1 && crop_h <= H && crop_w >= 1 && crop_w <= W, op, "crop size (", crop_h, ", ", crop_w,
              ") must be at least 1 and at most the image size (", H, ", ", W, ")");
  TORCH_CHECK(offsets.device() == images.device(), op, "`offsets` must be on the device of `images` (",
              images.device(), "), got ", offsets.device());
  TORCH_CHECK(offsets.scalar_type() == at::kLong, op, "`offsets` must be int64, got ",
              dtype_name(offsets.scalar_type()));
  TORCH_CHECK(offsets.dim() == 2 && offsets.size(0) == images.size(0) && offsets.size(1) == 2, op,
              "`offsets` must have shape (N, 2) = (", images.size(0), ", 2), got ", offsets.sizes());
  TORCH_CHECK(offsets.is_contiguous(), op, "`offsets` must be contiguous, got strides ", offsets.strides());
  if (offsets.device().is_cpu()) {
    // On CUDA only the kernel reads the offsets (no host sync); out-of-range ones give NaN there.
    const int64_t* off = offsets.const_data_ptr<int64_t>();
    for (int64_t b = 0; b < offsets.size(0); ++b) {
      TORCH_CHECK(off[2 * b] >= 0 && off[2 * b] <= H - crop_h && off[2 * b + 1] >= 0 && off[2 * b + 1] <= W - crop_w,
                  op, "`offsets` [top, left] must lie in [0, ", H - crop_h, "] x [0, ", W - crop_w,
                  "] for a (", crop_h, ", ", crop_w, ") crop of (", H, ", ", W, ") images, got [", off[2 * b],
                  ", ", off[2 * b + 1], "] at index ", b);
    }
  }
}

}  // namespace dp_fast

TORCH_LIBRARY_FRAGMENT(dp_fast, m) {
  m.def("random_crop(Tensor images, Tensor offsets, int crop_h, int crop_w, bool normalize) -> Tensor");
}

TORCH_LIBRARY_IMPL(dp_fast, CPU, m) {
  m.impl("random_crop", &dp_fast::random_crop_cpu);
}
