// dp_fast::group_norm_act: GroupNorm + optional residual add + optional ReLU in one CPU op, for the
// `cpu` backend's oneDNN encoder (dp_fast/models/vision_onednn.py), whose activations are channels_last.
//
//   y = GroupNorm(x; groups, weight, bias, eps)  [+ residual]  [then max(y, 0)]
//
// x: (N, C, H, W) float32 in channels_last memory (each pixel's C channels contiguous); residual (same
// shape and layout) or None. Statistics per (sample, group) in double, two passes (mean, then the
// centred sum of squares: torch's biased variance), then one pass that writes y. The result is in
// channels_last too. Reference: F.relu(F.group_norm(x, groups, weight, bias, eps) + residual).

#include <ATen/Parallel.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "op_util.h"

namespace dp_fast {
namespace {

void check(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t groups,
           const c10::optional<at::Tensor>& res) {
  constexpr const char* op = "dp_fast::group_norm_act: ";
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() == 4, op,
              "`x` must be a float32 (N, C, H, W) CPU tensor, got ", util::dtype_name(x.scalar_type()), " ",
              x.sizes(), " on ", x.device());
  TORCH_CHECK(x.is_contiguous(at::MemoryFormat::ChannelsLast), op, "`x` must be channels_last, got strides ",
              x.strides());
  const int64_t c = x.size(1);
  TORCH_CHECK(groups >= 1 && c % groups == 0, op, "`groups` must divide the ", c, " channels, got ", groups);
  for (const at::Tensor* t : {&w, &b}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->dim() == 1 && t->size(0) == c && t->is_contiguous() &&
                    t->device().is_cpu(),
                op, "`weight` and `bias` must be contiguous float32 (", c, ",) CPU tensors, got ",
                util::dtype_name(t->scalar_type()), " ", t->sizes());
  }
  if (res.has_value()) {
    TORCH_CHECK(res->sizes() == x.sizes() && res->scalar_type() == at::kFloat &&
                    res->is_contiguous(at::MemoryFormat::ChannelsLast) && res->device().is_cpu(),
                op, "`residual` must be a float32 channels_last CPU tensor of shape ", x.sizes(), ", got ",
                util::dtype_name(res->scalar_type()), " ", res->sizes(), " with strides ", res->strides());
  }
}

at::Tensor group_norm_act_cpu(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, int64_t groups,
                              double eps, const c10::optional<at::Tensor>& residual, bool relu) {
  check(x, weight, bias, groups, residual);
  const int64_t n = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3), cg = c / groups;
  at::Tensor out = at::empty_like(x, at::MemoryFormat::ChannelsLast);
  const float* px = x.const_data_ptr<float>();
  const float* pw = weight.const_data_ptr<float>();
  const float* pb = bias.const_data_ptr<float>();
  const float* pr = residual.has_value() ? residual->const_data_ptr<float>() : nullptr;
  float* py = out.mutable_data_ptr<float>();
  // per (sample, channel): y = x * scale + shift, from the group's mean and rstd
  std::vector<float> scale(n * c), shift(n * c);
  at::parallel_for(0, n * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ng = begin; ng < end; ++ng) {
      const int64_t s = ng / groups, g = ng % groups;
      const float* base = px + s * hw * c + g * cg;
      double sum = 0.0;
      for (int64_t p = 0; p < hw; ++p)
        for (int64_t j = 0; j < cg; ++j) sum += base[p * c + j];
      const double count = double(hw * cg), mean = sum / count;
      double ss = 0.0;
      for (int64_t p = 0; p < hw; ++p)
        for (int64_t j = 0; j < cg; ++j) {
          const double d = base[p * c + j] - mean;
          ss += d * d;
        }
      const double rstd = 1.0 / std::sqrt(ss / count + eps);
      for (int64_t j = 0; j < cg; ++j) {
        const int64_t ch = g * cg + j;
        const double sc = rstd * pw[ch];
        scale[s * c + ch] = float(sc);
        shift[s * c + ch] = float(pb[ch] - mean * sc);
      }
    }
  });
  at::parallel_for(0, n * hw, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = i / hw;
      const float* sc = scale.data() + s * c;
      const float* sh = shift.data() + s * c;
      const float* xi = px + i * c;
      const float* ri = pr ? pr + i * c : nullptr;
      float* yi = py + i * c;
      for (int64_t ch = 0; ch < c; ++ch) {
        float v = xi[ch] * sc[ch] + sh[ch];
        if (ri) v += ri[ch];
        yi[ch] = relu && v < 0.0f ? 0.0f : v;
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace dp_fast

TORCH_LIBRARY_FRAGMENT(dp_fast, m) {
  m.def("group_norm_act(Tensor x, Tensor weight, Tensor bias, int groups, float eps, Tensor? residual, bool relu) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(dp_fast, CPU, m) {
  m.impl("group_norm_act", &dp_fast::group_norm_act_cpu);
}
