/*!
 * \file cuda_emulation.cc
 * \brief The C ABI through which tests/gpu/standalone.py steers the emulator in an emulated
 *        harness build (standalone.build_harness(emulated=True)).
 */
#include <cstdint>

#include "include/cuda_runtime_api.h"

extern "C" {

/*! \brief Nonzero: the library runs its CUDA code on the host (this emulator). */
int dcnv2_emulation_active(void) { return 1; }

/*!
 * \brief The stream every following launch, memset, GEMM and sort must use (a handle that the
 *        caller also passes to the library); clears the sticky error.
 */
void dcnv2_emulation_expect_stream(void* stream) {
  cuda_emulation::state().expected_stream = static_cast<cudaStream_t>(stream);
  cuda_emulation::state().launch_error = cudaSuccess;
}

/*! \brief Kernel launches so far. */
uint64_t dcnv2_emulation_launches(void) { return cuda_emulation::state().launches; }

}  // extern "C"
