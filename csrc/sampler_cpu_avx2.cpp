// The AVX2 + FMA copy of the sampler loop: the portable code of sampler_cpu_kernels.inc compiled for
// AVX2 / FMA / F16C (GCC vectorizes its 32-column register blocks into 256-bit FMAs). sampler_cpu.cpp
// calls it on CPUs that have avx2 and fma but not AVX-512; the plain generic copy stays for the rest.

#include <ATen/Parallel.h>
#include <c10/util/Half.h>

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
#define DP_SAMPLER_AVX512 0
#define DP_SAMPLER_NS avx2
#include "sampler_cpu_kernels.inc"
#undef DP_SAMPLER_NS
#undef DP_SAMPLER_AVX512
#pragma GCC pop_options
#else
namespace dp_fast::sampler::avx2 {
void run_loop(const LoopArgs& a, float* work) { generic::run_loop(a, work); }
}  // namespace dp_fast::sampler::avx2
#endif
