/*!
 * \file cuda_common.h
 * \brief What every CUDA kernel file of the library needs: error checks, the current-device
 *        guard, float16 accumulation in float32 and (under nvcc) grid-stride launches.
 *
 * The host part compiles with the host compiler too (the operator registration includes it);
 * launches are compiled only by nvcc, or by a host compiler with DCNV2_MX_CUDA_EMULATION
 * (tests/gpu/cuda_emulation: the kernels run on the CPU in CI).
 */
#ifndef DCNV2_MX_CUDA_CUDA_COMMON_H_
#define DCNV2_MX_CUDA_CUDA_COMMON_H_

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "../common/host_device.h"

namespace dcnv2_mx {

/*! \brief float16 is sampled, interpolated and accumulated in float32. */
template <>
struct AccType<__half> {
  using type = float;
};

/*!
 * \brief How a backward pass sums a gradient that many threads contribute to. kAtomic adds
 *        the contributions with atomics: fastest, but the order of the additions, and so the
 *        rounding, varies from run to run. kDeterministic lets every gradient element sum its own
 *        contributions in a fixed order: bit-identical results for the same inputs, at some cost
 *        in time (and, for the convolution, scratch memory).
 */
enum class DataGradMode { kAtomic, kDeterministic };

namespace cuda {

/*! \brief Whether a gradient of type T is accumulated in a wider type (float16 in float32). */
template <typename T>
constexpr bool kAccumulatesApart = !std::is_same<T, typename AccType<T>::type>::value;

/*! \brief The accumulator of a gradient: the result itself, or float32 scratch for float16. */
template <typename T, typename Acc>
Acc* accumulator(T* result, Acc* scratch) {
  if constexpr (std::is_same<T, Acc>::value)
    return result;
  else
    return scratch;
}

/*! \brief Throws std::runtime_error naming `what` unless `err` is cudaSuccess. */
inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
}

/*!
 * \brief Makes `device` current for the guard's lifetime and restores the previous one, so a
 *        call on gpu(1) runs there whatever device the calling thread had selected.
 */
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

/*! \brief Threads per block of the elementwise kernels. */
constexpr int kBlockThreads = 256;

/*!
 * \brief Most blocks of one launch: enough to fill the largest GPUs several times over; the
 *        kernels' grid-stride loops cover any larger count. The CUDA emulation's test build
 *        lowers it, so that small test problems take several strides too.
 */
#if defined(DCNV2_MX_CUDA_MAX_BLOCKS)
constexpr index_t kMaxBlocks = DCNV2_MX_CUDA_MAX_BLOCKS;
#else
constexpr index_t kMaxBlocks = 4096;
#endif

/*! \brief Blocks of a launch over `count` work items. */
inline unsigned blocks_for(index_t count) {
  return static_cast<unsigned>(
      std::min<index_t>(kMaxBlocks, (count + kBlockThreads - 1) / kBlockThreads));
}

#if defined(__CUDACC__) || defined(DCNV2_MX_CUDA_EMULATION)

/*! \brief Calls body(i) for every i in [0, count) that falls to this thread (64-bit indices). */
template <typename Body>
__device__ __forceinline__ void grid_stride(index_t count, Body&& body) {
  const index_t step = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += step)
    body(i);
}

/*!
 * \brief Launches kernel(count, args...) on `stream` with a capped grid; the kernel covers
 *        [0, count) with grid_stride. Never on the default stream unless the caller's stream is.
 */
template <typename... Params, typename... Args>
void launch(void (*kernel)(index_t, Params...), index_t count, cudaStream_t stream,
            Args&&... args) {
  if (count <= 0) return;
#if defined(DCNV2_MX_CUDA_EMULATION)
  cuda_emulation::launch(blocks_for(count), kBlockThreads, stream, kernel, count,
                         std::forward<Args>(args)...);
#else
  kernel<<<blocks_for(count), kBlockThreads, 0, stream>>>(count, std::forward<Args>(args)...);
#endif
  check(cudaGetLastError(), "kernel launch");
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

#endif  // __CUDACC__ || DCNV2_MX_CUDA_EMULATION

}  // namespace cuda
}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CUDA_CUDA_COMMON_H_
