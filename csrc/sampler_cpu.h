// dp_fast::sampler_loop: the whole K-step denoising loop of TransformerForDiffusion on the CPU.
//
// Why a single op: at B=1 the reference spends ~60% of its time in 6100 small matmuls per call
// (M = 10 rows) and the rest in per-op dispatch. Running the loop in C++ removes the dispatch, fuses
// bias + GELU / bias + residual into the matmul epilogues and the scheduler step into the loop, and
// reads weights that were packed once, in the order they are used, so that the ~25 MB of fp32
// decoder weights per step stay in L3.
//
// Inputs (all CPU, contiguous):
//   sample       (B, T, D) fp32     initial sample (noise[0] of the original's draw order)
//   noise        (N, B, T, D) fp32  step noise; iteration i adds noise[noise_index[i]] (none if < 0)
//   noise_index  (K,) int64
//   table        (K, 10) fp32       NoiseScheduler.step_table(K): row i drives iteration i
//   weights      1-d, fp32 / bf16 / fp16: every matmul weight, packed as panels (see below; bf16 also in
//                K-pairs for vdpbf16ps or AMX tiles, kWBf16Pairs / kWBf16Tiles)
//   params       1-d fp32: biases, LayerNorm weights, position embeddings
//   layout       int[]: the fields of kLayoutFields then kLayerFields per layer (offsets into the
//                two blobs); dp_fast/sampling/cpu.py builds it from sampler_layout()
//   terms        Tensor[]: decoder mode: [step_a, step_c, step_u, static_a, static_c, static_u]
//                  step_a/u (L, K, Bs, H, Ss, E), step_c (L, K, Bs, H, Ss), Bs in {1, B}
//                  static_a/u (L, B, H, So, E), static_c (L, B, H, So)       (So may be 0)
//                  = cross-attention with Wq folded into the keys (a, c) and Wo into the values (u),
//                  memory tokens [step part, static part] = [time, obs_0 ..] of the reference.
//                encoder-only mode (P = 1): [prefix (K, E)] = time token + pos_emb[0] per iteration.
//   inpaint_data (B, T, D) fp32 / inpaint_mask (B, T, D) bool, optional: x = where(mask, data, x)
//                before every model call and after the loop (obs_as_cond=False).
// Returns the final sample (B, T, D) fp32.
//
// Weight panels: a Linear weight W (N, K) is stored as ceil(N / 32) panels of K x 32 (row k holds
// W[p*32 .. p*32+31, k], zero padded), so the matmul kernel streams one panel with unit stride and
// keeps a 10..12-row x 32-column accumulator block in registers.
#pragma once

#include <atomic>
#include <cstdint>
#include <thread>

namespace dp_fast {
namespace sampler {

constexpr int64_t kLayoutVersion = 1;
constexpr int kPanel = 32;
constexpr int kMaxRows = 12;  // rows of one register block (2 x 12 zmm accumulators)

// Global fields of `layout`, in order. Dims first, then offsets (in elements) into the blobs.
#define DP_FAST_SAMPLER_LAYOUT_FIELDS(X)                                                              \
  X(version) X(B) X(T) X(D) X(E) X(H) X(L) X(F) X(P) X(has_ca) X(Ss) X(So) X(Bs) X(causal)        \
  X(mem_mask) X(wdtype) X(K) X(w_in) X(w_head) X(b_in) X(pos) X(lnf_w) X(lnf_b) X(b_head)
// Per-layer fields (repeated L times after the global ones). Weight offsets index `weights`,
// the others index `params`; the ln_ca / ca_bo entries are -1 in encoder-only mode.
#define DP_FAST_SAMPLER_LAYER_FIELDS(X)                                                               \
  X(w_qkv) X(w_o) X(w_1) X(w_2) X(ln_sa_w) X(ln_sa_b) X(b_qkv) X(b_o) X(ln_ca_w) X(ln_ca_b) X(ca_bo) \
  X(ln_ff_w) X(ln_ff_b) X(b_1) X(b_2)

#define DP_FAST_SAMPLER_ENUM(name) f_##name,
enum LayoutField : int { DP_FAST_SAMPLER_LAYOUT_FIELDS(DP_FAST_SAMPLER_ENUM) kLayoutFields };
enum LayerField : int { DP_FAST_SAMPLER_LAYER_FIELDS(DP_FAST_SAMPLER_ENUM) kLayerFields };
#undef DP_FAST_SAMPLER_ENUM

// kWBf16Pairs: bf16 weights packed in K-pairs (panel row kk holds, for each of its 32 columns j,
// W[j, 2kk] then W[j, 2kk + 1]; odd K zero padded), for bf16 dot products: the loop rounds each matmul's
// input rows to bf16 as well and accumulates in fp32 with vdpbf16ps. AVX-512 copy on AVX512_BF16 CPUs only.
// kWBf16Tiles: the same K-pair panels with K padded to a multiple of 32 (zero rows), for AMX: the loop
// rounds the input rows to bf16 and multiplies 16-row x 32-K tiles with tdpbf16ps (fp32 accumulation).
// AVX-512 copy on CPUs with AMX-BF16 whose kernel grants the tile state.
enum WeightDtype : int { kWFloat = 0, kWBFloat16 = 1, kWHalf = 2, kWBf16Pairs = 3, kWBf16Tiles = 4 };

// Everything the loop reads, resolved to pointers (built and validated by sampler_cpu.cpp).
struct LayerPtrs {
  const void* w_qkv;
  const void* w_o;
  const void* w_1;
  const void* w_2;
  const float *ln_sa_w, *ln_sa_b, *b_qkv, *b_o, *ln_ca_w, *ln_ca_b, *ca_bo, *ln_ff_w, *ln_ff_b, *b_1, *b_2;
};

struct LoopArgs {
  int64_t B, T, D, E, H, L, F, P, Ss, So, Bs, K, N;
  bool has_ca, causal, mem_mask;
  int wdtype;
  float ln_eps;
  const void* w_in;
  const void* w_head;
  const float *b_in, *pos, *lnf_w, *lnf_b, *b_head;
  const LayerPtrs* layers;
  const float *step_a, *step_c, *step_u, *static_a, *static_c, *static_u, *prefix;
  const float* noise;
  const int64_t* noise_index;
  const float* table;
  const float* inpaint_data;
  const bool* inpaint_mask;
  float* x;              // (B, T, D): in = initial sample, out = result
  int64_t nthreads;      // lanes the workspace is sized for (at::get_num_threads(), or 1 for small problems)
  bool force_parallel;   // DP_FAST_SAMPLER_PARALLEL=force: use all lanes even for tiny problems (tests)
};

// Threading. The loop runs in one OpenMP region per call, in "lanes" (one per thread):
//   * batch lanes (B >= threads): lane j owns batch elements [j*B/n, (j+1)*B/n) and runs the whole loop
//     for them alone; no synchronisation at all, and every element is computed exactly as on one thread.
//   * tensor-parallel lanes (B < threads, e.g. B = 1): all lanes hold the whole batch; lane j computes
//     the attention heads and FFN hidden units of its share, and the two partial sums per layer (attention
//     out-projection, FFN down-projection) meet in shared buffers behind a barrier (2 barriers per layer).
//     LayerNorms, cross-attention (~1% of the FLOPs) and the head are computed redundantly per lane.
// Small problems stay on one thread: a fork or a barrier would cost more than it saves.
struct WorkspaceLayout {
  // offsets within one lane (floats, each 64-byte aligned)
  int64_t x, hs, y, qkv, att, f1, out, emb, apack, scratch, scores, lane;
  int64_t partial;  // offset of the shared partial-sum buffers (2 * lanes * B * ntok * E)
  int64_t total;
};

inline WorkspaceLayout workspace_layout(const LoopArgs& a) {
  auto up = [](int64_t n) { return (n + 15) / 16 * 16; };
  const int64_t R = a.B * (a.P + a.T), S = a.Ss + a.So;
  const int64_t widest = a.F > a.E ? (a.F > a.D ? a.F : a.D) : (a.E > a.D ? a.E : a.D);
  WorkspaceLayout w{};
  int64_t at = 0;
  auto take = [&](int64_t n) { const int64_t o = at; at += up(n); return o; };
  w.x = take(a.B * a.T * a.D);
  w.hs = take(R * a.E);
  w.y = take(R * a.E);
  w.qkv = take(R * 3 * a.E);
  w.att = take(R * a.E);
  w.f1 = take(R * a.F);
  w.out = take(R * a.D);
  w.emb = take(a.B * a.T * a.E);
  // A packed for the register blocks (R x widest fp32), or as bf16 for AMX: rows padded to 16, K to 32,
  // then 2 x 16 x 16 fp32 for the C tiles
  const int64_t tiles = ((R + 15) / 16 * 16) * ((widest + 31) / 32 * 32) / 2 + 16 + 512;
  w.apack = take(R * widest > tiles ? R * widest : tiles);
  // attention scores (self: P + T, cross: S), then E cross-attention accumulators
  w.scores = up((a.P + a.T) > S ? (a.P + a.T) : S);
  w.scratch = take(w.scores + up(a.E));
  w.lane = at;
  w.partial = w.lane * a.nthreads;
  w.total = w.partial + 2 * a.nthreads * up(R * a.E);
  return w;
}

// A barrier for the tensor-parallel lanes. Spins briefly (a wait is usually a few microseconds of
// imbalance), then yields the core: on a loaded machine the lane being waited for may be descheduled,
// and a spinning waiter would keep it off the CPU.
class SpinBarrier {
 public:
  // Only while no thread waits on it.
  void reset(int n) {
    n_ = n;
    count_.store(0, std::memory_order_relaxed);
  }
  void wait() {
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) + 1 == n_) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spin = 0; gen_.load(std::memory_order_acquire) == gen; ++spin) {
      if (spin < 4000) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
  int n_ = 1;
};

// The two compiled copies of the loop: AVX-512 (chosen at run time when the CPU has it) and
// portable C++. `work` holds workspace_layout(a).total floats.
namespace avx512 {
void run_loop(const LoopArgs& a, float* work);
}
namespace avx2 {
void run_loop(const LoopArgs& a, float* work);
}
namespace generic {
void run_loop(const LoopArgs& a, float* work);
}

}  // namespace sampler
}  // namespace dp_fast
