// The AVX2 + FMA copy of the sampler loop (sampler_cpu_kernels.inc with DP_SAMPLER_AVX2=1): the matmul
// register blocks in AVX2 / FMA intrinsics, the rest the portable code compiled for AVX2 / FMA / F16C.
// sampler_cpu.cpp calls it on CPUs that have avx2 and fma but not AVX-512; the generic copy stays for
// the rest. Only the .inc's code is compiled for AVX2 (the target pragma comes after every include).

#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <new>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "ddpm_step.h"
#include "sampler_cpu.h"

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define DP_SAMPLER_AVX512 0
#define DP_SAMPLER_AVX2 1
#define DP_SAMPLER_NS avx2
#include "sampler_cpu_kernels.inc"
#undef DP_SAMPLER_NS
#undef DP_SAMPLER_AVX2
#undef DP_SAMPLER_AVX512
#pragma GCC pop_options
#else
namespace dp_fast::sampler::avx2 {
void run_loop(const LoopArgs& a, float* work) { generic::run_loop(a, work); }
}  // namespace dp_fast::sampler::avx2
#endif
