/*!
 * \file cublas_v2.h
 * \brief The cuBLAS calls the library makes, emulated on the host: cublasGemmEx computes
 *        column-major C = alpha op(A) op(B) + beta C with plain loops in the compute type,
 *        after checking sizes, leading dimensions and type combinations as cuBLAS documents
 *        them, and the handle's stream. As in cuBLAS, C is not read when beta is 0. A failure
 *        leaves its reason in cuda_emulation::state().problem.
 */
#ifndef DCNV2_MX_EMULATED_CUBLAS_V2_H_
#define DCNV2_MX_EMULATED_CUBLAS_V2_H_

#include <algorithm>
#include <string>

#include "cuda_runtime_api.h"

enum cublasStatus_t {
  CUBLAS_STATUS_SUCCESS = 0,
  CUBLAS_STATUS_NOT_INITIALIZED = 1,
  CUBLAS_STATUS_INVALID_VALUE = 7,
  CUBLAS_STATUS_EXECUTION_FAILED = 13,
  CUBLAS_STATUS_NOT_SUPPORTED = 15,
};
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cudaDataType_t { CUDA_R_32F = 0, CUDA_R_64F = 1, CUDA_R_16F = 2 };
enum cublasComputeType_t { CUBLAS_COMPUTE_32F = 68, CUBLAS_COMPUTE_64F = 70 };
enum cublasGemmAlgo_t { CUBLAS_GEMM_DEFAULT = -1 };

struct cublasContext {
  cudaStream_t stream = nullptr;
};
using cublasHandle_t = cublasContext*;

inline cublasStatus_t cublasCreate(cublasHandle_t* handle) {
  *handle = new cublasContext();
  return CUBLAS_STATUS_SUCCESS;
}

inline cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

namespace cuda_emulation {

/*! \brief Element (i, j) of a column-major matrix of `type` at `p` with leading dimension ld. */
inline double element(const void* p, cudaDataType_t type, long i, long j, long ld) {
  const long at = i + j * ld;
  switch (type) {
    case CUDA_R_32F: return static_cast<const float*>(p)[at];
    case CUDA_R_64F: return static_cast<const double*>(p)[at];
    case CUDA_R_16F: return static_cast<float>(static_cast<const __half*>(p)[at]);
  }
  return 0;
}

inline void store(void* p, cudaDataType_t type, long at, double value) {
  switch (type) {
    case CUDA_R_32F: static_cast<float*>(p)[at] = static_cast<float>(value); break;
    case CUDA_R_64F: static_cast<double*>(p)[at] = value; break;
    case CUDA_R_16F: static_cast<__half*>(p)[at] = __half(static_cast<float>(value)); break;
  }
}

/*! \brief Whether cuBLAS supports the (A/B type, C type, compute type) combination. */
inline bool supported(cudaDataType_t ab, cudaDataType_t c, cublasComputeType_t compute) {
  if (compute == CUBLAS_COMPUTE_64F) return ab == CUDA_R_64F && c == CUDA_R_64F;
  return (ab == CUDA_R_32F && c == CUDA_R_32F) ||
         (ab == CUDA_R_16F && (c == CUDA_R_16F || c == CUDA_R_32F));
}

template <typename Acc>
void gemm(bool trans_a, bool trans_b, int m, int n, int k, Acc alpha, const void* a,
          cudaDataType_t a_type, int lda, const void* b, cudaDataType_t b_type, int ldb,
          Acc beta, void* c, cudaDataType_t c_type, int ldc) {
  for (long j = 0; j < n; ++j)
    for (long i = 0; i < m; ++i) {
      Acc sum = 0;
      for (long l = 0; l < k; ++l)
        sum += static_cast<Acc>(trans_a ? element(a, a_type, l, i, lda)
                                        : element(a, a_type, i, l, lda)) *
               static_cast<Acc>(trans_b ? element(b, b_type, j, l, ldb)
                                        : element(b, b_type, l, j, ldb));
      Acc value = alpha * sum;
      if (beta != Acc(0)) value += beta * static_cast<Acc>(element(c, c_type, i, j, ldc));
      store(c, c_type, i + j * static_cast<long>(ldc), static_cast<double>(value));
    }
}

}  // namespace cuda_emulation

inline cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa,
                                   cublasOperation_t transb, int m, int n, int k,
                                   const void* alpha, const void* A, cudaDataType_t Atype,
                                   int lda, const void* B, cudaDataType_t Btype, int ldb,
                                   const void* beta, void* C, cudaDataType_t Ctype, int ldc,
                                   cublasComputeType_t computeType, cublasGemmAlgo_t) {
  namespace emu = cuda_emulation;
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!emu::stream_ok(handle->stream, "cublasGemmEx")) return CUBLAS_STATUS_EXECUTION_FAILED;
  const bool ta = transa == CUBLAS_OP_T, tb = transb == CUBLAS_OP_T;
  const int a_rows = ta ? k : m, b_rows = tb ? n : k;
  if (m < 0 || n < 0 || k < 0 || lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) ||
      ldc < std::max(1, m)) {
    emu::fail(cudaErrorInvalidValue,
              "cublasGemmEx m=" + std::to_string(m) + " n=" + std::to_string(n) +
                  " k=" + std::to_string(k) + " lda=" + std::to_string(lda) +
                  " ldb=" + std::to_string(ldb) + " ldc=" + std::to_string(ldc));
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (Atype != Btype || !emu::supported(Atype, Ctype, computeType)) {
    emu::fail(cudaErrorInvalidValue, "cublasGemmEx type combination");
    return CUBLAS_STATUS_NOT_SUPPORTED;
  }
  if (computeType == CUBLAS_COMPUTE_64F)
    emu::gemm<double>(ta, tb, m, n, k, *static_cast<const double*>(alpha), A, Atype, lda, B,
                      Btype, ldb, *static_cast<const double*>(beta), C, Ctype, ldc);
  else
    emu::gemm<float>(ta, tb, m, n, k, *static_cast<const float*>(alpha), A, Atype, lda, B,
                     Btype, ldb, *static_cast<const float*>(beta), C, Ctype, ldc);
  return CUBLAS_STATUS_SUCCESS;
}

#endif  // DCNV2_MX_EMULATED_CUBLAS_V2_H_
