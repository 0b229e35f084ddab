/*!
 * \file blas.h
 * \brief Row-major GEMMs of the CPU kernels, each run on the calling thread.
 *
 * float: oneDNN's sgemm (PyPI's onednn-cpu-gomp), the GEMM behind MXNet's own CPU kernels; on
 * the column shapes of this operator it is about 25% faster than OpenBLAS. Called inside an
 * OpenMP parallel region it runs on the calling thread only. PyPI has oneDNN for x86-64 Linux
 * only; builds without it (DCNV2_MX_WITH_ONEDNN unset) use OpenBLAS for float as well. oneDNN
 * has no double GEMM, so double always goes to OpenBLAS (PyPI's scipy-openblas32, whose
 * `scipy_` symbol prefix never clashes with the OpenBLAS inside libmxnet.so), made
 * single-threaded by init_blas().
 *
 * The kernels split their GEMMs across the OpenMP threads that run the sampling loops, one pool
 * of threads for everything, so BLAS threads never spin on cores that OpenMP needs.
 */
#ifndef DCNV2_MX_CPU_BLAS_H_
#define DCNV2_MX_CPU_BLAS_H_

#include <cblas.h>
#if DCNV2_MX_WITH_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

namespace dcnv2_mx {
namespace cpu {

/*!
 * \brief C = alpha * op(A) * op(B) + beta * C, all row-major, on the calling thread. Returns
 *        false if the library refused the arguments (an internal error: callers check it after
 *        their parallel region, where exceptions cannot cross).
 */
inline bool gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc) {
#if DCNV2_MX_WITH_ONEDNN
  return dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb,
                    beta, c, ldc) == dnnl_success;
#else
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                    ldc);
  return true;
#endif
}

inline bool gemm(bool trans_a, bool trans_b, int m, int n, int k, double alpha, const double* a,
                 int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  scipy_cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                    ldc);
  return true;
}

/*! \brief Makes OpenBLAS single-threaded: the OpenMP threads split the GEMMs instead. */
inline void init_blas() { scipy_openblas_set_num_threads(1); }

}  // namespace cpu
}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CPU_BLAS_H_
