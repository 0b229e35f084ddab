/*!
 * \file launch.h
 * \brief What the CUDA kernel files share: grid-stride loops, capped launches on the caller's
 *        stream, conversion and fill kernels, atomic adds. Only files compiled as CUDA include
 *        it; it uses nothing but CUDA's runtime API, so a host emulation of that API can run
 *        the kernels too (tests/gpu/cuda_emulation).
 */
#ifndef DCNV2_MX_CUDA_LAUNCH_H_
#define DCNV2_MX_CUDA_LAUNCH_H_

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <tuple>
#include <utility>

#include "cuda_common.h"

namespace dcnv2_mx {
namespace cuda {

/*! \brief Threads per block of the elementwise kernels. */
constexpr int kBlockThreads = 256;

/*!
 * \brief Most blocks of one launch: enough to fill the largest GPUs several times over; the
 *        kernels' grid-stride loops cover any larger count.
 */
constexpr index_t kMaxBlocks = 4096;

/*! \brief Blocks of a launch over `count` work items. */
inline unsigned blocks_for(index_t count) {
  return static_cast<unsigned>(
      std::min<index_t>(kMaxBlocks, (count + kBlockThreads - 1) / kBlockThreads));
}

/*! \brief Calls body(i) for every i in [0, count) that falls to this thread (64-bit indices). */
template <typename Body>
__device__ __forceinline__ void grid_stride(index_t count, Body&& body) {
  const index_t step = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += step)
    body(i);
}

/*! \brief cudaLaunchKernel with the arguments in `values`, one per kernel parameter. */
template <typename Kernel, typename Values, size_t... I>
void launch_values(Kernel kernel, unsigned blocks, cudaStream_t stream, Values& values,
                   std::index_sequence<I...>) {
  void* arguments[] = {&std::get<I>(values)...};
  check(cudaLaunchKernel(kernel, dim3(blocks), dim3(kBlockThreads), arguments, 0, stream),
        "kernel launch");
}

/*!
 * \brief Launches kernel(count, args...) on `stream` with a capped grid; the kernel covers
 *        [0, count) with grid_stride. Never on the default stream unless the caller's stream is.
 *        Through cudaLaunchKernel, the runtime call that <<<...>>> stands for, with every
 *        argument converted to its parameter's type first, as <<<...>>> converts it.
 */
template <typename... Params, typename... Args>
void launch(void (*kernel)(index_t, Params...), index_t count, cudaStream_t stream,
            Args&&... args) {
  if (count <= 0) return;
  std::tuple<index_t, Params...> values(count, std::forward<Args>(args)...);
  launch_values(kernel, blocks_for(count), stream, values,
                std::index_sequence_for<index_t, Params...>());
}

/*! \brief dst = src, converted (float32 accumulators to float16 results). */
template <typename T, typename Acc>
__global__ void convert_kernel(index_t count, const Acc* src, T* dst) {
  grid_stride(count, [&](index_t i) { dst[i] = static_cast<T>(src[i]); });
}

/*! \brief dst[i] = value for i in [0, count). */
template <typename T>
__global__ void fill_kernel(index_t count, T value, T* dst) {
  grid_stride(count, [&](index_t i) { dst[i] = value; });
}

/*! \brief atomicAdd as a scatter() update (the data gradient's atomic path). */
struct AtomicAdd {
  template <typename T>
  __device__ __forceinline__ void operator()(T* dst, T value) const {
    atomicAdd(dst, value);
  }
};

}  // namespace cuda
}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CUDA_LAUNCH_H_
