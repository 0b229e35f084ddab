/*!
 * \file library.cc
 * \brief Entry point called by mx.library.load.
 */
#include <string>

#include "cpu/blas.h"
#include "cpu/isa_dispatch.h"
#include "cpu/threads.h"
#include "mxnet/lib_api.h"

/*! \brief The MXNet version whose lib_api.h this library was compiled against. */
extern "C" const char* dcnv2_mx_built_for_mxnet() { return DCNV2_MX_MXNET_VERSION; }

/*! \brief The instruction set whose build of the CPU kernels runs (after initialize()). */
extern "C" const char* dcnv2_mx_cpu_isa() { return dcnv2_mx::cpu::isa_name(); }

mxnet::ext::MXReturnValue initialize(int version) {
  // lib_api.h's version check covers the ABI; MXNet 1.9 reports 10900.
  if (version < 10900) {
    MX_ERROR_MSG << "dcnv2_mx needs MXNet >= 1.9.0, this is MXNet " << version;
    return mxnet::ext::MX_FAIL;
  }
  const std::string isa_error = dcnv2_mx::cpu::init_isa();
  if (!isa_error.empty()) {
    MX_ERROR_MSG << isa_error;
    return mxnet::ext::MX_FAIL;
  }
  dcnv2_mx::cpu::init_threads();
  dcnv2_mx::cpu::init_blas();
  return mxnet::ext::MX_SUCCESS;
}
