// The portable prelude of the CUDA engine's kernels.
//
// Every kernel here is written in the subset of C++ that both NVRTC and a host compiler accept,
// and in one shape: each thread computes whole outputs with plain sequential loops (no shared
// memory, no __syncthreads, no atomics). On the device `DSM_FOR` is a grid-stride loop; compiled for
// the host with -DDSM_HOST (the tests do this) it is a plain loop over the same indices, so the
// host library runs the very arithmetic the GPU runs and is checked against the CPU fused engine.
// The shape also makes every result independent of the launch configuration: no output depends on
// which thread, block or grid size computed it.
//
// The generated header (`cuda::source`) comes first and defines the model's constants
// (DSM_EMBED, DSM_SLOPE, …) and its two kernels, `inner_kernel` and `outer_kernel`.

#ifdef DSM_HOST
#include <math.h>
#include <string.h>
#include <stdint.h>
#define DSM_KERNEL(name) extern "C" void name
#define DSM_DEV static inline
#define DSM_FOR(idx, n) for (uint32_t idx = 0; idx < (n); ++idx)
#define DSM_RESTRICT __restrict__
#else
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
#define DSM_KERNEL(name) extern "C" __global__ void name
#define DSM_DEV static __device__ __forceinline__
#define DSM_FOR(idx, n) \
    for (uint32_t idx = blockIdx.x * blockDim.x + threadIdx.x; idx < (n); idx += blockDim.x * gridDim.x)
#define DSM_RESTRICT __restrict__
#endif

// The leaky ReLU multiplies by a selected factor, as the CPU engine does (x·1 = x, NaN included).
DSM_DEV float dsm_lrelu(float y) { return y * (y < 0.0f ? DSM_SLOPE : 1.0f); }
DSM_DEV float dsm_lrelu_factor(float y) { return y < 0.0f ? DSM_SLOPE : 1.0f; }
