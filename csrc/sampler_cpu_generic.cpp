// The portable copy of the sampler loop (sampler_cpu_kernels.inc): CPUs without AVX-512, and the
// reference the AVX-512 copy is tested against (DP_FAST_SAMPLER_ISA=generic).

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

#define DP_SAMPLER_AVX512 0
#define DP_SAMPLER_AVX2 0
#define DP_SAMPLER_NS generic
#include "sampler_cpu_kernels.inc"
#undef DP_SAMPLER_NS
#undef DP_SAMPLER_AVX2
#undef DP_SAMPLER_AVX512
