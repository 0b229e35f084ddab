/*!
 * \file library.cc
 * \brief Entry point called by mx.library.load.
 */
#include <omp.h>

#include <iostream>

#include "cpu/blas.h"
#include "mxnet/lib_api.h"

/*! \brief The MXNet version whose lib_api.h this library was compiled against. */
extern "C" const char* dcnv2_mx_built_for_mxnet() { return DCNV2_MX_MXNET_VERSION; }

mxnet::ext::MXReturnValue initialize(int version) {
  // lib_api.h's version check covers the ABI; MXNet 1.9 reports 10900.
  if (version < 10900) {
    MX_ERROR_MSG << "dcnv2_mx needs MXNet >= 1.9.0, this is MXNet " << version;
    return mxnet::ext::MX_FAIL;
  }
  // GEMMs run between the OpenMP loops, never inside them: give BLAS the same thread count so
  // that the two never oversubscribe the cores.
  dcnv2_mx::cpu::set_blas_threads(omp_get_max_threads());
  return mxnet::ext::MX_SUCCESS;
}
