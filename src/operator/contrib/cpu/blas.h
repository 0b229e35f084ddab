/*!
 * \file blas.h
 * \brief Row-major GEMM through OpenBLAS (PyPI's scipy-openblas32, whose symbols carry a
 *        `scipy_` prefix so they never clash with the OpenBLAS inside libmxnet.so).
 *
 * OpenBLAS runs single-threaded here: the kernels split their GEMMs across the OpenMP threads
 * that run the sampling loops, one pool of threads for everything, so BLAS threads never spin on
 * cores that OpenMP needs (measured: a separate BLAS pool cost about 7% of a forward pass).
 */
#ifndef DCNV2_MX_CPU_BLAS_H_
#define DCNV2_MX_CPU_BLAS_H_

#include <cblas.h>

namespace dcnv2_mx {
namespace cpu {

/*! \brief C = alpha * op(A) * op(B) + beta * C, all row-major, on the calling thread. */
inline void gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                        const float* a, int lda, const float* b, int ldb, float beta, float* c,
                        int ldc) {
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                    ldc);
}

inline void gemm(bool trans_a, bool trans_b, int m, int n, int k, double alpha,
                        const double* a, int lda, const double* b, int ldb, double beta,
                        double* c, int ldc) {
  scipy_cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                    ldc);
}

/*! \brief Makes OpenBLAS single-threaded: the OpenMP threads split the GEMMs instead. */
inline void init_blas() { scipy_openblas_set_num_threads(1); }

}  // namespace cpu
}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CPU_BLAS_H_
