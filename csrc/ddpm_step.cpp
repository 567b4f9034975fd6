// dp_fast::ddpm_step: schema, argument checks and the CPU kernel. See ddpm_step.h for the math.

#include "ddpm_step.h"
#include "op_util.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

namespace dp_fast {
namespace {

using util::dtype_name;
using util::is_supported_float;

// Elements per task; the op is memory bound and ~10 flops per element, so small inputs (the
// usual (B, 16, 10) action chunk) stay on the calling thread.
constexpr int64_t kGrain = 32768;

template <typename T>
void ddpm_step_cpu_kernel(const T* x, const T* m, const T* n, T* out, DdpmRow row, int64_t numel) {
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      out[k] = static_cast<T>(ddpm_step_elem(row, static_cast<float>(x[k]), static_cast<float>(m[k]),
                                             static_cast<float>(n[k])));
    }
  });
}

at::Tensor ddpm_step_cpu(const at::Tensor& sample, const at::Tensor& model_output, const at::Tensor& noise,
                         const at::Tensor& table, const at::Tensor& step) {
  check_ddpm_step_inputs(sample, model_output, noise, table, step);
  const int64_t i = *step.const_data_ptr<int64_t>();
  const DdpmRow row = load_ddpm_row(table.const_data_ptr<float>() + i * kDdpmTableCols);
  at::Tensor out = at::empty_like(sample);
  const int64_t numel = sample.numel();
  switch (sample.scalar_type()) {
    case at::kFloat:
      ddpm_step_cpu_kernel<float>(sample.const_data_ptr<float>(), model_output.const_data_ptr<float>(),
                                  noise.const_data_ptr<float>(), out.mutable_data_ptr<float>(), row, numel);
      break;
    case at::kBFloat16:
      ddpm_step_cpu_kernel<c10::BFloat16>(
          sample.const_data_ptr<c10::BFloat16>(), model_output.const_data_ptr<c10::BFloat16>(),
          noise.const_data_ptr<c10::BFloat16>(), out.mutable_data_ptr<c10::BFloat16>(), row, numel);
      break;
    case at::kHalf:
      ddpm_step_cpu_kernel<c10::Half>(sample.const_data_ptr<c10::Half>(), model_output.const_data_ptr<c10::Half>(),
                                      noise.const_data_ptr<c10::Half>(), out.mutable_data_ptr<c10::Half>(), row,
                                      numel);
      break;
    default:
      TORCH_CHECK(false, "dp_fast::ddpm_step: unreachable dtype ", dtype_name(sample.scalar_type()));
  }
  return out;
}

}  // namespace

void check_ddpm_step_inputs(const at::Tensor& sample, const at::Tensor& model_output, const at::Tensor& noise,
                            const at::Tensor& table, const at::Tensor& step) {
  constexpr const char* op = "dp_fast::ddpm_step: ";
  TORCH_CHECK(is_supported_float(sample.scalar_type()), op,
              "`sample` must be float32, bfloat16 or float16, got ", dtype_name(sample.scalar_type()));
  TORCH_CHECK(sample.is_contiguous(), op, "`sample` must be contiguous, got sizes ", sample.sizes(),
              " with strides ", sample.strides());
  const std::pair<const char*, const at::Tensor*> same_as_sample[] = {{"model_output", &model_output},
                                                                       {"noise", &noise}};
  for (const auto& [name, t] : same_as_sample) {
    TORCH_CHECK(t->device() == sample.device(), op, "`", name, "` must be on the device of `sample` (",
                sample.device(), "), got ", t->device());
    TORCH_CHECK(t->scalar_type() == sample.scalar_type(), op, "`", name, "` must have the dtype of `sample` (",
                dtype_name(sample.scalar_type()), "), got ", dtype_name(t->scalar_type()));
    TORCH_CHECK(t->sizes() == sample.sizes(), op, "`", name, "` must have the shape of `sample` ",
                sample.sizes(), ", got ", t->sizes());
    TORCH_CHECK(t->is_contiguous(), op, "`", name, "` must be contiguous, got sizes ", t->sizes(),
                " with strides ", t->strides());
  }

  TORCH_CHECK(table.device() == sample.device(), op, "`table` must be on the device of `sample` (",
              sample.device(), "), got ", table.device());
  TORCH_CHECK(table.scalar_type() == at::kFloat, op, "`table` must be float32, got ",
              dtype_name(table.scalar_type()));
  TORCH_CHECK(table.dim() == 2 && table.size(0) >= 1 && table.size(1) == kDdpmTableCols, op,
              "`table` must have shape (K, ", kDdpmTableCols, ") with K >= 1, got ", table.sizes());
  TORCH_CHECK(table.is_contiguous(), op, "`table` must be contiguous, got strides ", table.strides());

  TORCH_CHECK(step.device() == sample.device(), op, "`step` must be on the device of `sample` (",
              sample.device(), "), got ", step.device());
  TORCH_CHECK(step.scalar_type() == at::kLong, op, "`step` must be int64, got ", dtype_name(step.scalar_type()));
  TORCH_CHECK(step.dim() == 0, op, "`step` must be a 0-d tensor, got shape ", step.sizes());
  if (step.device().is_cpu()) {
    // On CUDA the value is read only by the kernel (no host sync); an out-of-range step gives NaN there.
    const int64_t i = *step.const_data_ptr<int64_t>();
    TORCH_CHECK(i >= 0 && i < table.size(0), op, "`step` must be in [0, ", table.size(0),
                ") (the rows of `table`), got ", i);
  }
}

}  // namespace dp_fast

TORCH_LIBRARY_FRAGMENT(dp_fast, m) {
  m.def("ddpm_step(Tensor sample, Tensor model_output, Tensor noise, Tensor table, Tensor step) -> Tensor");
}

TORCH_LIBRARY_IMPL(dp_fast, CPU, m) {
  m.impl("ddpm_step", &dp_fast::ddpm_step_cpu);
}
