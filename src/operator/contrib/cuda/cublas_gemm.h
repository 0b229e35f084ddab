/*!
 * \file cublas_gemm.h
 * \brief Row-major GEMM through cuBLAS on the caller's stream, for float32, float64 and float16
 *        (float16 products summed in float32).
 */
#ifndef DCNV2_MX_CUDA_CUBLAS_GEMM_H_
#define DCNV2_MX_CUDA_CUBLAS_GEMM_H_

#include <cublas_v2.h>

#include <string>
#include <unordered_map>

#include "cuda_common.h"

namespace dcnv2_mx {
namespace cuda {

/*! \brief Throws std::runtime_error naming `what` unless `status` is success. */
inline void check_cublas(cublasStatus_t status, const char* what) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(what) + " failed: cuBLAS status " +
                             std::to_string(static_cast<int>(status)));
}

/*!
 * \brief The calling thread's cuBLAS handle for the current device, bound to `stream`.
 *
 * A handle belongs to the device that was current when it was created and must not be used by
 * two threads at once, hence one per (thread, device). Creating one allocates device memory, so
 * it happens once, on the first call. Handles live until the process exits: destroying them from
 * thread-exit destructors may run after the CUDA runtime has shut down.
 */
inline cublasHandle_t cublas_handle(cudaStream_t stream) {
  thread_local std::unordered_map<int, cublasHandle_t> handles;
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  cublasHandle_t& handle = handles[device];
  if (handle == nullptr) check_cublas(cublasCreate(&handle), "cublasCreate");
  check_cublas(cublasSetStream(handle, stream), "cublasSetStream");
  return handle;
}

/*! \brief cuBLAS's name of a storage type. */
template <typename T>
struct BlasType;
template <>
struct BlasType<float> {
  static constexpr cudaDataType_t value = CUDA_R_32F;
};
template <>
struct BlasType<double> {
  static constexpr cudaDataType_t value = CUDA_R_64F;
};
template <>
struct BlasType<__half> {
  static constexpr cudaDataType_t value = CUDA_R_16F;
};

/*! \brief cuBLAS's compute type for an accumulation type. */
template <typename Acc>
struct BlasCompute;
template <>
struct BlasCompute<float> {
  static constexpr cublasComputeType_t value = CUBLAS_COMPUTE_32F;
};
template <>
struct BlasCompute<double> {
  static constexpr cublasComputeType_t value = CUBLAS_COMPUTE_64F;
};

/*!
 * \brief Row-major C (m x n) = op(A) op(B) + beta * C, op(A) m x k and op(B) k x n, on the
 *        handle's stream. A and B have the storage type T; C has type CT, which is T or, to
 *        accumulate float16 products over several calls without rounding, float32. Products
 *        are summed in AccType<T> (float32 for float16).
 */
template <typename T, typename CT>
void gemm(cublasHandle_t handle, bool trans_a, bool trans_b, int m, int n, int k, const T* a,
          int lda, const T* b, int ldb, typename AccType<T>::type beta, CT* c, int ldc) {
  using Acc = typename AccType<T>::type;
  const Acc alpha = Acc(1);
  // cuBLAS is column-major, where a row-major matrix reads as its transpose: the row-major
  // C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T.
  check_cublas(cublasGemmEx(handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                            trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, n, m, k, &alpha, b,
                            BlasType<T>::value, ldb, a, BlasType<T>::value, lda, &beta, c,
                            BlasType<CT>::value, ldc, BlasCompute<Acc>::value,
                            CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx");
}

}  // namespace cuda
}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CUDA_CUBLAS_GEMM_H_
