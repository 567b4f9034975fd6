// dp_fast::add_noise: schema, argument checks and the CPU kernel. See add_noise.h for the math.

#include "add_noise.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "op_util.h"

namespace dp_fast {
namespace {

using util::dtype_name;

// Elements per task: memory bound, a few flops per element, so small batches stay on one thread.
constexpr int64_t kGrain = 32768;

template <typename T>
void add_noise_cpu_kernel(const T* x, const T* n, const int64_t* t, const float* abar, T* out, int64_t batch,
                          int64_t inner) {
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(inner, 1));
  at::parallel_for(0, batch, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const float a = abar[t[b]];
      const float sa = std::sqrt(a), sb = std::sqrt(1.0f - a);
      const int64_t base = b * inner;
      for (int64_t k = base; k < base + inner; ++k) {
        out[k] = static_cast<T>(sa * static_cast<float>(x[k]) + sb * static_cast<float>(n[k]));
      }
    }
  });
}

template <typename T>
void run(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps, const at::Tensor& abar,
         at::Tensor& out) {
  const int64_t batch = x0.size(0);
  add_noise_cpu_kernel<T>(x0.const_data_ptr<T>(), noise.const_data_ptr<T>(), timesteps.const_data_ptr<int64_t>(),
                          abar.const_data_ptr<float>(), out.mutable_data_ptr<T>(), batch,
                          batch ? x0.numel() / batch : 0);
}

at::Tensor add_noise_cpu(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps,
                         const at::Tensor& alphas_cumprod) {
  check_add_noise_inputs(x0, noise, timesteps, alphas_cumprod);
  at::Tensor out = at::empty_like(x0);
  if (x0.numel() == 0) return out;
  switch (x0.scalar_type()) {
    case at::kFloat: run<float>(x0, noise, timesteps, alphas_cumprod, out); break;
    case at::kBFloat16: run<c10::BFloat16>(x0, noise, timesteps, alphas_cumprod, out); break;
    case at::kHalf: run<c10::Half>(x0, noise, timesteps, alphas_cumprod, out); break;
    default: TORCH_CHECK(false, "dp_fast::add_noise: unreachable dtype ", dtype_name(x0.scalar_type()));
  }
  return out;
}

}  // namespace

void check_add_noise_inputs(const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& timesteps,
                            const at::Tensor& alphas_cumprod) {
  constexpr const char* op = "dp_fast::add_noise: ";
  TORCH_CHECK(util::is_supported_float(x0.scalar_type()), op, "`x0` must be float32, bfloat16 or float16, got ",
              dtype_name(x0.scalar_type()));
  TORCH_CHECK(x0.dim() >= 1, op, "`x0` must have shape (B, ...), got a 0-d tensor");
  TORCH_CHECK(x0.is_contiguous(), op, "`x0` must be contiguous, got sizes ", x0.sizes(), " with strides ",
              x0.strides());
  TORCH_CHECK(noise.device() == x0.device(), op, "`noise` must be on the device of `x0` (", x0.device(), "), got ",
              noise.device());
  TORCH_CHECK(noise.scalar_type() == x0.scalar_type(), op, "`noise` must have the dtype of `x0` (",
              dtype_name(x0.scalar_type()), "), got ", dtype_name(noise.scalar_type()));
  TORCH_CHECK(noise.sizes() == x0.sizes(), op, "`noise` must have the shape of `x0` ", x0.sizes(), ", got ",
              noise.sizes());
  TORCH_CHECK(noise.is_contiguous(), op, "`noise` must be contiguous, got sizes ", noise.sizes(), " with strides ",
              noise.strides());
  TORCH_CHECK(timesteps.device() == x0.device(), op, "`timesteps` must be on the device of `x0` (", x0.device(),
              "), got ", timesteps.device());
  TORCH_CHECK(timesteps.scalar_type() == at::kLong, op, "`timesteps` must be int64, got ",
              dtype_name(timesteps.scalar_type()));
  TORCH_CHECK(timesteps.dim() == 1 && timesteps.size(0) == x0.size(0), op, "`timesteps` must have shape (B,) = (",
              x0.size(0), ",), got ", timesteps.sizes());
  TORCH_CHECK(timesteps.is_contiguous(), op, "`timesteps` must be contiguous, got strides ", timesteps.strides());
  TORCH_CHECK(alphas_cumprod.device() == x0.device(), op, "`alphas_cumprod` must be on the device of `x0` (",
              x0.device(), "), got ", alphas_cumprod.device());
  TORCH_CHECK(alphas_cumprod.scalar_type() == at::kFloat, op, "`alphas_cumprod` must be float32, got ",
              dtype_name(alphas_cumprod.scalar_type()));
  TORCH_CHECK(alphas_cumprod.dim() == 1 && alphas_cumprod.size(0) >= 1, op,
              "`alphas_cumprod` must have shape (T,) with T >= 1, got ", alphas_cumprod.sizes());
  TORCH_CHECK(alphas_cumprod.is_contiguous(), op, "`alphas_cumprod` must be contiguous, got strides ",
              alphas_cumprod.strides());
  if (timesteps.device().is_cpu()) {
    // On CUDA only the kernel reads the timesteps (no host sync); out-of-range ones give NaN there.
    const int64_t* t = timesteps.const_data_ptr<int64_t>();
    const int64_t num_t = alphas_cumprod.size(0);
    for (int64_t b = 0; b < timesteps.size(0); ++b) {
      TORCH_CHECK(t[b] >= 0 && t[b] < num_t, op, "`timesteps` must be in [0, ", num_t,
                  ") (the entries of `alphas_cumprod`), got ", t[b], " at index ", b);
    }
  }
}

}  // namespace dp_fast

TORCH_LIBRARY_FRAGMENT(dp_fast, m) {
  m.def("add_noise(Tensor x0, Tensor noise, Tensor timesteps, Tensor alphas_cumprod) -> Tensor");
}

TORCH_LIBRARY_IMPL(dp_fast, CPU, m) {
  m.impl("add_noise", &dp_fast::add_noise_cpu);
}
