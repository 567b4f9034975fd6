// dp_fast::sampler_loop: schema, argument checks, and the choice between the AVX-512 and the portable
// copy of the loop. See sampler_cpu.h for the arguments and sampler_cpu_kernels.inc for the loop.

#include "sampler_cpu.h"

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>
#include <vector>

#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "ddpm_step.h"

namespace dp_fast {
namespace sampler {
namespace {

constexpr const char* kOp = "dp_fast::sampler_loop: ";

#define DP_FAST_SAMPLER_NAME(name) #name,
const char* const kLayoutNames[] = {DP_FAST_SAMPLER_LAYOUT_FIELDS(DP_FAST_SAMPLER_NAME)};
const char* const kLayerNames[] = {DP_FAST_SAMPLER_LAYER_FIELDS(DP_FAST_SAMPLER_NAME)};
#undef DP_FAST_SAMPLER_NAME

// "version=1;fields=B,T,...;layer_fields=w_qkv,...;panel=32": the layout contract, so that the
// Python packer builds `layout` by field name instead of repeating the order.
std::string sampler_layout() {
  std::string s = "version=" + std::to_string(kLayoutVersion) + ";fields=";
  for (int i = 0; i < kLayoutFields; ++i) s += std::string(i ? "," : "") + kLayoutNames[i];
  s += ";layer_fields=";
  for (int i = 0; i < kLayerFields; ++i) s += std::string(i ? "," : "") + kLayerNames[i];
  s += ";panel=" + std::to_string(kPanel);
  return s;
}

bool cpu_has_avx512() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#else
  return false;
#endif
}

bool cpu_has_avx512_bf16() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
#else
  return false;
#endif
}

bool cpu_has_avx2() {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// Which copy of the loop runs: the widest the CPU has (avx512, else avx2 + fma, else generic), or the one
// DP_FAST_SAMPLER_ISA names (tests compare the copies; asking for one the CPU lacks is an error).
std::string sampler_isa() {
  const char* env = std::getenv("DP_FAST_SAMPLER_ISA");
  const std::string want = env ? env : "";
  if (want == "generic") return "generic";
  TORCH_CHECK(want.empty() || want == "auto" || want == "avx512" || want == "avx2",
              "DP_FAST_SAMPLER_ISA must be unset, 'auto', 'avx512', 'avx2' or 'generic', got '", want, "'");
  const bool has512 = cpu_has_avx512(), has2 = cpu_has_avx2();
  TORCH_CHECK(want != "avx512" || has512, "DP_FAST_SAMPLER_ISA=avx512 but this CPU lacks avx512f/bw/dq/vl");
  TORCH_CHECK(want != "avx2" || has2, "DP_FAST_SAMPLER_ISA=avx2 but this CPU lacks avx2 / fma");
  if (want == "avx2") return "avx2";
  return has512 ? "avx512" : has2 ? "avx2" : "generic";
}

// AMX-BF16 and AMX-TILE (CPUID leaf 7, EDX bits 22 and 24), and the kernel's permission for this process
// to use the tile state (Linux arch_prctl ARCH_REQ_XCOMP_PERM; asked once; without it a tile instruction
// faults).
bool cpu_has_amx_bf16() {
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
  static const bool ok = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    if (!((edx >> 22) & 1u) || !((edx >> 24) & 1u)) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok && cpu_has_avx512();
#else
  return false;
#endif
}

// The bf16 arithmetic the loop can run here, fastest first: "amx" (kWBf16Tiles), "dot" (vdpbf16ps,
// kWBf16Pairs), both in the AVX-512 copy only, or "widen" (bf16 weights in fp32 arithmetic). Without
// either, precision="bf16" packs plain bf16 weights (dp_fast/sampling/cpu.py).
std::string sampler_bf16_mode() {
  if (sampler_isa() != "avx512") return "widen";
  if (cpu_has_amx_bf16() && cpu_has_avx512_bf16()) return "amx";
  return cpu_has_avx512_bf16() ? "dot" : "widen";
}

// Lanes for this call (see sampler_cpu.h, Threading). Tensor-parallel lanes meet at 2 barriers per
// layer, so each lane's share of a layer must dwarf a barrier (~a few us); batch lanes fork once per
// call. DP_FAST_SAMPLER_PARALLEL=force skips both thresholds, so tests reach every path at small sizes.
int64_t choose_threads(const LoopArgs& a) {
  const int64_t n = at::get_num_threads();
  const char* env = std::getenv("DP_FAST_SAMPLER_PARALLEL");
  if (n <= 1 || (env && std::string(env) == "force")) return n < 1 ? 1 : n;
  const int64_t rows = a.B * (a.P + a.T);
  const int64_t layer_macs = rows * (4 * a.E * a.E + 2 * a.E * a.F);
  if (a.B < n) return layer_macs / n >= (int64_t(1) << 20) ? n : 1;
  return layer_macs * a.L * a.K / n >= (int64_t(1) << 24) ? n : 1;
}

void check_f32(const at::Tensor& t, const char* name, at::IntArrayRef shape) {
  TORCH_CHECK(t.device().is_cpu(), kOp, "`", name, "` must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, kOp, "`", name, "` must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.sizes() == shape, kOp, "`", name, "` must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), kOp, "`", name, "` must be contiguous");
}

at::Tensor sampler_loop_cpu(const at::Tensor& sample, const at::Tensor& noise, const at::Tensor& noise_index,
                            const at::Tensor& table, const at::Tensor& weights, const at::Tensor& params,
                            at::IntArrayRef layout, at::TensorList terms, const std::optional<at::Tensor>& inpaint_data,
                            const std::optional<at::Tensor>& inpaint_mask, double ln_eps) {
  TORCH_CHECK(layout.size() >= size_t(kLayoutFields) && layout[f_version] == kLayoutVersion, kOp,
              "`layout` must start with version ", kLayoutVersion, " (rebuild it with dp_fast.sampling.cpu), got ",
              layout.size() ? layout[0] : -1);
  auto g = [&](int f) { return layout[f]; };
  LoopArgs a{};
  a.B = g(f_B), a.T = g(f_T), a.D = g(f_D), a.E = g(f_E), a.H = g(f_H), a.L = g(f_L), a.F = g(f_F), a.P = g(f_P);
  a.Ss = g(f_Ss), a.So = g(f_So), a.Bs = g(f_Bs), a.K = g(f_K);
  a.has_ca = g(f_has_ca) != 0, a.causal = g(f_causal) != 0, a.mem_mask = g(f_mem_mask) != 0;
  a.wdtype = int(g(f_wdtype));
  a.ln_eps = float(ln_eps);
  TORCH_CHECK(int64_t(layout.size()) == kLayoutFields + a.L * kLayerFields, kOp, "`layout` must have ",
              kLayoutFields, " + L * ", kLayerFields, " entries for L = ", a.L, ", got ", layout.size());
  TORCH_CHECK(a.B >= 1 && a.T >= 1 && a.D >= 1 && a.E >= 1 && a.H >= 1 && a.E % a.H == 0 && a.L >= 0 && a.F >= 1 &&
                  (a.P == 0 || a.P == 1) && a.K >= 1,
              kOp, "bad dims B=", a.B, " T=", a.T, " D=", a.D, " E=", a.E, " H=", a.H, " L=", a.L, " F=", a.F,
              " P=", a.P, " K=", a.K);
  TORCH_CHECK(a.has_ca != (a.P == 1), kOp, "decoder layers (has_ca) take no prefix token and encoder layers one");
  if (a.has_ca) {
    TORCH_CHECK(a.Ss >= 1 && a.So >= 0 && (a.Bs == 1 || a.Bs == a.B), kOp, "bad memory dims Ss=", a.Ss, " So=", a.So,
                " Bs=", a.Bs);
  }

  check_f32(sample, "sample", {a.B, a.T, a.D});
  TORCH_CHECK(noise.dim() == 4, kOp, "`noise` must be (N, B, T, D), got ", noise.sizes());
  a.N = noise.size(0);
  check_f32(noise, "noise", {a.N, a.B, a.T, a.D});
  TORCH_CHECK(noise_index.device().is_cpu() && noise_index.scalar_type() == at::kLong && noise_index.dim() == 1 &&
                  noise_index.size(0) == a.K && noise_index.is_contiguous(),
              kOp, "`noise_index` must be a contiguous CPU int64 tensor of shape (", a.K, "), got ",
              noise_index.scalar_type(), " ", noise_index.sizes());
  const int64_t* ni = noise_index.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < a.K; ++i) {
    TORCH_CHECK(ni[i] < a.N, kOp, "noise_index[", i, "] = ", ni[i], " but noise has ", a.N, " entries");
  }
  check_f32(table, "table", {a.K, kDdpmTableCols});

  const bool pairs = a.wdtype == kWBf16Pairs, tiles = a.wdtype == kWBf16Tiles;
  const at::ScalarType wt =
      a.wdtype == kWBFloat16 || pairs || tiles ? at::kBFloat16 : a.wdtype == kWHalf ? at::kHalf : at::kFloat;
  TORCH_CHECK(a.wdtype >= 0 && a.wdtype <= 4, kOp,
              "layout wdtype must be 0 (fp32), 1 (bf16), 2 (fp16), 3 (bf16 K-pairs) or 4 (bf16 tiles), got ",
              a.wdtype);
  const std::string mode = sampler_bf16_mode();
  TORCH_CHECK(!pairs || mode != "widen", kOp, "wdtype 3 (bf16 dot products) needs the AVX-512 loop on a CPU ",
              "with AVX512_BF16; this one runs the ", sampler_isa(), " copy",
              cpu_has_avx512_bf16() ? "" : " and has no AVX512_BF16");
  TORCH_CHECK(!tiles || mode == "amx", kOp, "wdtype 4 (bf16 AMX tiles) needs the AVX-512 loop on a CPU with ",
              "AMX-BF16 whose kernel grants the tile state; here the best bf16 mode is '", mode, "'");
  TORCH_CHECK(!(pairs || tiles) || (a.E % 2 == 0 && (a.E / a.H) % 2 == 0 && a.F % 2 == 0), kOp,
              "wdtype ", a.wdtype, " (bf16 K-pairs) needs an even width, head size and FFN width, got E=", a.E,
              " H=", a.H, " F=", a.F);
  TORCH_CHECK(weights.device().is_cpu() && weights.scalar_type() == wt && weights.dim() == 1 && weights.is_contiguous(),
              kOp, "`weights` must be a contiguous 1-d CPU ", wt, " tensor, got ", weights.scalar_type(), " ",
              weights.sizes());
  TORCH_CHECK(params.device().is_cpu() && params.scalar_type() == at::kFloat && params.dim() == 1 &&
                  params.is_contiguous(),
              kOp, "`params` must be a contiguous 1-d CPU float32 tensor");
  const size_t welem = weights.element_size();
  const char* wbase = static_cast<const char*>(weights.const_data_ptr());
  const float* pbase = params.const_data_ptr<float>();

  // Every offset is bounds-checked here, so the loop itself never reads outside the blobs.
  auto wmat = [&](int64_t off, int64_t n, int64_t k, const char* name) -> const void* {
    const int64_t kal = tiles ? 32 : pairs ? 2 : 1;
    // AMX tiles of a K-range may read up to 16 pair-rows past the weight (times zero inputs): the packer
    // leaves that much after the last weight
    const int64_t need = (n + kPanel - 1) / kPanel * kPanel * ((k + kal - 1) / kal * kal) + (tiles ? 32 * kPanel : 0);
    TORCH_CHECK(off >= 0 && off + need <= weights.numel(), kOp, "weight '", name, "' at ", off, " (", need,
                " elements) is outside `weights` (", weights.numel(), ")");
    return wbase + off * welem;
  };
  auto pvec = [&](int64_t off, int64_t n, const char* name) -> const float* {
    TORCH_CHECK(off >= 0 && off + n <= params.numel(), kOp, "param '", name, "' at ", off, " (", n,
                " elements) is outside `params` (", params.numel(), ")");
    return pbase + off;
  };
  const int64_t E = a.E;
  a.w_in = wmat(g(f_w_in), E, a.D, "w_in");
  a.w_head = wmat(g(f_w_head), a.D, E, "w_head");
  a.b_in = pvec(g(f_b_in), E, "b_in");
  a.pos = pvec(g(f_pos), a.T * E, "pos");
  a.lnf_w = pvec(g(f_lnf_w), E, "lnf_w");
  a.lnf_b = pvec(g(f_lnf_b), E, "lnf_b");
  a.b_head = pvec(g(f_b_head), a.D, "b_head");
  std::vector<LayerPtrs> layers(a.L);
  for (int64_t l = 0; l < a.L; ++l) {
    const int64_t* f = layout.data() + kLayoutFields + l * kLayerFields;
    LayerPtrs& p = layers[l];
    p.w_qkv = wmat(f[f_w_qkv], 3 * E, E, "w_qkv");
    p.w_o = wmat(f[f_w_o], E, E, "w_o");
    p.w_1 = wmat(f[f_w_1], a.F, E, "w_1");
    p.w_2 = wmat(f[f_w_2], E, a.F, "w_2");
    p.ln_sa_w = pvec(f[f_ln_sa_w], E, "ln_sa_w");
    p.ln_sa_b = pvec(f[f_ln_sa_b], E, "ln_sa_b");
    p.b_qkv = pvec(f[f_b_qkv], 3 * E, "b_qkv");
    p.b_o = pvec(f[f_b_o], E, "b_o");
    if (a.has_ca) {
      p.ln_ca_w = pvec(f[f_ln_ca_w], E, "ln_ca_w");
      p.ln_ca_b = pvec(f[f_ln_ca_b], E, "ln_ca_b");
      p.ca_bo = pvec(f[f_ca_bo], E, "ca_bo");
    }
    p.ln_ff_w = pvec(f[f_ln_ff_w], E, "ln_ff_w");
    p.ln_ff_b = pvec(f[f_ln_ff_b], E, "ln_ff_b");
    p.b_1 = pvec(f[f_b_1], a.F, "b_1");
    p.b_2 = pvec(f[f_b_2], E, "b_2");
  }
  a.layers = layers.data();

  if (a.has_ca) {
    TORCH_CHECK(terms.size() == 6, kOp, "`terms` must be [step_a, step_c, step_u, static_a, static_c, static_u] "
                "in decoder mode, got ", terms.size(), " tensors");
    check_f32(terms[0], "step_a", {a.L, a.K, a.Bs, a.H, a.Ss, E});
    check_f32(terms[1], "step_c", {a.L, a.K, a.Bs, a.H, a.Ss});
    check_f32(terms[2], "step_u", {a.L, a.K, a.Bs, a.H, a.Ss, E});
    check_f32(terms[3], "static_a", {a.L, a.B, a.H, a.So, E});
    check_f32(terms[4], "static_c", {a.L, a.B, a.H, a.So});
    check_f32(terms[5], "static_u", {a.L, a.B, a.H, a.So, E});
    a.step_a = terms[0].const_data_ptr<float>();
    a.step_c = terms[1].const_data_ptr<float>();
    a.step_u = terms[2].const_data_ptr<float>();
    a.static_a = terms[3].const_data_ptr<float>();
    a.static_c = terms[4].const_data_ptr<float>();
    a.static_u = terms[5].const_data_ptr<float>();
  } else {
    TORCH_CHECK(terms.size() == 1, kOp, "`terms` must be [prefix] in encoder-only mode, got ", terms.size(),
                " tensors");
    check_f32(terms[0], "prefix", {a.K, E});
    a.prefix = terms[0].const_data_ptr<float>();
  }
  TORCH_CHECK(inpaint_data.has_value() == inpaint_mask.has_value(), kOp,
              "`inpaint_data` and `inpaint_mask` must be given together");
  if (inpaint_data.has_value()) {
    check_f32(*inpaint_data, "inpaint_data", {a.B, a.T, a.D});
    const at::Tensor& m = *inpaint_mask;
    TORCH_CHECK(m.device().is_cpu() && m.scalar_type() == at::kBool && m.sizes() == sample.sizes() && m.is_contiguous(),
                kOp, "`inpaint_mask` must be a contiguous CPU bool tensor of shape ", sample.sizes());
    a.inpaint_data = inpaint_data->const_data_ptr<float>();
    a.inpaint_mask = m.const_data_ptr<bool>();
  }
  a.noise = noise.const_data_ptr<float>();
  a.noise_index = ni;
  a.table = table.const_data_ptr<float>();

  at::Tensor out = sample.clone();
  a.x = out.mutable_data_ptr<float>();
  a.nthreads = choose_threads(a);
  const WorkspaceLayout ws = workspace_layout(a);
  at::Tensor work = at::empty({ws.total}, sample.options());
  const std::string isa = sampler_isa();
  if (isa == "avx512") {
    avx512::run_loop(a, work.mutable_data_ptr<float>());
  } else if (isa == "avx2") {
    avx2::run_loop(a, work.mutable_data_ptr<float>());
  } else {
    generic::run_loop(a, work.mutable_data_ptr<float>());
  }
  return out;
}

}  // namespace
}  // namespace sampler
}  // namespace dp_fast

TORCH_LIBRARY_FRAGMENT(dp_fast, m) {
  m.def("sampler_layout() -> str", &dp_fast::sampler::sampler_layout);
  m.def("sampler_isa() -> str", &dp_fast::sampler::sampler_isa);
  m.def("sampler_bf16_mode() -> str", &dp_fast::sampler::sampler_bf16_mode);
  m.def(
      "sampler_loop(Tensor sample, Tensor noise, Tensor noise_index, Tensor table, Tensor weights, Tensor params, "
      "int[] layout, Tensor[] terms, Tensor? inpaint_data, Tensor? inpaint_mask, float ln_eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(dp_fast, CPU, m) {
  m.impl("sampler_loop", &dp_fast::sampler::sampler_loop_cpu);
}
