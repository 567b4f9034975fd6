// The AVX-512 copy of the sampler loop (sampler_cpu_kernels.inc). Only the code of the .inc file is
// compiled for AVX-512 (the target pragma comes after every include); sampler_cpu.cpp calls it only
// when the CPU reports avx512f/bw/dq/vl.

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
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma,f16c")
// GCC 12 reports the undefined-vector placeholders inside its own intrinsic wrappers as uninitialized.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#define DP_SAMPLER_AVX512 1
#define DP_SAMPLER_AVX2 0
#define DP_SAMPLER_NS avx512
#include "sampler_cpu_kernels.inc"
#undef DP_SAMPLER_NS
#undef DP_SAMPLER_AVX2
#undef DP_SAMPLER_AVX512
#pragma GCC pop_options
#else
// No AVX-512 on this compiler / architecture: the "avx512" entry point is the portable loop, and
// sampler_cpu.cpp never selects it anyway.
namespace dp_fast::sampler::avx512 {
void run_loop(const LoopArgs& a, float* work) { generic::run_loop(a, work); }
}  // namespace dp_fast::sampler::avx512
#endif
