/*!
 * \file cuda_common.h
 * \brief The host side of the CUDA code: error checks, the current-device guard, float16
 *        accumulation in float32. Compiles with the host compiler too (the operators' glue
 *        includes it); what only kernel files need is in launch.h.
 */
#ifndef DCNV2_MX_CUDA_CUDA_COMMON_H_
#define DCNV2_MX_CUDA_CUDA_COMMON_H_

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>
#include <type_traits>

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
 *        call on gpu(1) runs there whatever device the calling thread had selected. A negative
 *        `device` leaves the current one.
 */
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (device < 0) return;
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;  //!< the device to restore; -1: none
};

}  // namespace cuda

/*! \brief The GPU as a device of run() (common/op_adapter.h). */
struct Gpu {
  using Half = __half;
  static constexpr const char* kName = "GPU";
  using Guard = cuda::DeviceGuard;
  /*! \brief Clears `bytes` at `ptr` on the call's stream. */
  template <typename Host>
  static void zero(void* ptr, size_t bytes, const Host& host) {
    cuda::check(cudaMemsetAsync(ptr, 0, bytes, static_cast<cudaStream_t>(host.stream)),
                "cudaMemsetAsync");
  }
};

/*! \brief The way a GPU call of `host` sums gradients that many threads contribute to. */
template <typename Host>
DataGradMode data_grad_mode(const Host& host) {
  return host.deterministic ? DataGradMode::kDeterministic : DataGradMode::kAtomic;
}

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CUDA_CUDA_COMMON_H_
