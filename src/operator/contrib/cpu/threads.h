/*!
 * \file threads.h
 * \brief The number of OpenMP threads of the CPU kernels.
 *
 * MXNet runs operators on engine worker threads whose OpenMP default is one thread (unless
 * OMP_NUM_THREADS is set), and sizes its own parallel loops explicitly. The library does the
 * same: the count is read once, on the thread that loads the library (OMP_NUM_THREADS or all
 * processors, capped by MXNET_OMP_MAX_THREADS like MXNet's own operators), and every parallel
 * region asks for it.
 */
#ifndef DCNV2_MX_CPU_THREADS_H_
#define DCNV2_MX_CPU_THREADS_H_

namespace dcnv2_mx {
namespace cpu {

/*! \brief Reads the thread count; called from initialize(). */
void init_threads();

/*! \brief Threads of every parallel region of the CPU kernels. */
int threads();

}  // namespace cpu
}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CPU_THREADS_H_
