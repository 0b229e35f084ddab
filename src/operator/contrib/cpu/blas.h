/*!
 * \file blas.h
 * \brief Row-major GEMM through OpenBLAS (PyPI's scipy-openblas32, whose symbols carry a
 *        `scipy_` prefix so they never clash with the OpenBLAS inside libmxnet.so).
 *
 * OpenBLAS runs single-threaded here and a GEMM is split across the OpenMP threads that run
 * the sampling loops: one pool of threads for everything, so BLAS threads never spin on cores
 * that OpenMP needs (measured: a separate BLAS pool cost about 7% of a forward pass in spinning).
 */
#ifndef DCNV2_MX_CPU_BLAS_H_
#define DCNV2_MX_CPU_BLAS_H_

#include <cblas.h>
#include <omp.h>

#include <algorithm>

#include "threads.h"

namespace dcnv2_mx {
namespace cpu {

inline void gemm_serial(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                        const float* a, int lda, const float* b, int ldb, float beta, float* c,
                        int ldc) {
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                    ldc);
}

inline void gemm_serial(bool trans_a, bool trans_b, int m, int n, int k, double alpha,
                        const double* a, int lda, const double* b, int ldb, double beta,
                        double* c, int ldc) {
  scipy_cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                    ldc);
}

/*!
 * \brief C = alpha * op(A) * op(B) + beta * C, all row-major, split across OpenMP threads in
 *        blocks of columns of C (of rows when C is narrow). Each element of C is computed by one
 *        thread with a fixed summation order, so results do not depend on timing.
 */
template <typename T>
void gemm(bool trans_a, bool trans_b, int m, int n, int k, T alpha, const T* a, int lda,
          const T* b, int ldb, T beta, T* c, int ldc) {
  constexpr int kAlign = 16;  // keep blocks a multiple of the kernels' vector width
#pragma omp parallel num_threads(threads())
  {
    const int threads = omp_get_num_threads(), thread = omp_get_thread_num();
    const bool split_rows = n < m && n < threads * 4 * kAlign;
    const int extent = split_rows ? m : n;
    const int blocks = (extent + kAlign - 1) / kAlign;
    const int begin = std::min(extent, blocks * thread / threads * kAlign);
    const int end = std::min(extent, blocks * (thread + 1) / threads * kAlign);
    if (begin < end) {
      if (split_rows)
        gemm_serial(trans_a, trans_b, end - begin, n, k, alpha,
                    a + (trans_a ? begin : static_cast<long>(begin) * lda), lda, b, ldb, beta,
                    c + static_cast<long>(begin) * ldc, ldc);
      else
        gemm_serial(trans_a, trans_b, m, end - begin, k, alpha, a, lda,
                    b + (trans_b ? static_cast<long>(begin) * ldb : begin), ldb, beta, c + begin,
                    ldc);
    }
  }
}

/*! \brief Makes OpenBLAS single-threaded: the OpenMP threads split the GEMMs instead. */
inline void init_blas() { scipy_openblas_set_num_threads(1); }

}  // namespace cpu
}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CPU_BLAS_H_
