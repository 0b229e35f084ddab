/*!
 * \file host_device.h
 * \brief Portability macros so that one inline function serves the OpenMP loops and the CUDA
 *        kernels alike.
 */
#ifndef DCNV2_MX_COMMON_HOST_DEVICE_H_
#define DCNV2_MX_COMMON_HOST_DEVICE_H_

#include <cstdint>

#if defined(__CUDACC__)
#define DCN_HD __host__ __device__ __forceinline__
#else
#define DCN_HD inline
#endif

// Only the device pass knows the pragma; host compilers would warn about it.
#if defined(__CUDA_ARCH__)
#define DCN_UNROLL _Pragma("unroll")
#else
#define DCN_UNROLL
#endif

namespace dcnv2_mx {

/*! \brief Index type for whole tensors: products of shapes can exceed 2^31. */
using index_t = int64_t;

/*!
 * \brief Floor that is exact for the range in which samples are used (|v| < 2^31). Branch-free
 *        (a subtraction, not a select), so that loops over samples vectorise.
 */
template <typename Acc>
DCN_HD int floor_to_int(Acc v) {
  const int i = static_cast<int>(v);
  return i - static_cast<int>(static_cast<Acc>(i) > v);
}

/*!
 * \brief Accumulation type of a storage type: the type itself here. The CUDA code specialises
 *        it for __half (cuda/cuda_common.h), so that float16 is sampled, interpolated and
 *        accumulated in float32; the CPU computes float16 calls in float32 throughout.
 */
template <typename T>
struct AccType {
  using type = T;
};

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_HOST_DEVICE_H_
