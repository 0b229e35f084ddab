/*!
 * \file cuda_runtime_api.h
 * \brief The CUDA runtime calls the library makes, emulated on the host (cuda_emulation.h).
 */
#ifndef DCNV2_MX_EMULATED_CUDA_RUNTIME_API_H_
#define DCNV2_MX_EMULATED_CUDA_RUNTIME_API_H_

#include <cstring>

#include "../cuda_emulation.h"

/*! \brief The sticky launch error, which it clears. */
inline cudaError_t cudaGetLastError() {
  auto& s = cuda_emulation::state();
  const cudaError_t err = s.launch_error;
  s.launch_error = cudaSuccess;
  return err;
}

inline const char* cudaGetErrorName(cudaError_t err) {
  switch (err) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
  }
  return "cudaErrorUnknown";
}

/*! \brief The emulator's account of the last failure with error `err` (more specific than
 *         CUDA's strings), or the error's name. */
inline const char* cudaGetErrorString(cudaError_t err) {
  const auto& s = cuda_emulation::state();
  return err == s.problem_code ? s.problem.c_str() : cudaGetErrorName(err);
}

/*! \brief One device, 0. */
inline cudaError_t cudaGetDevice(int* device) {
  *device = 0;
  return cudaSuccess;
}

inline cudaError_t cudaSetDevice(int device) {
  if (device != 0)
    return cuda_emulation::fail(cudaErrorInvalidDevice,
                                "device " + std::to_string(device) + " (only 0 is emulated)");
  return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = 0) {
  if (!cuda_emulation::stream_ok(stream, "cudaMemsetAsync"))
    return cudaErrorInvalidResourceHandle;
  if (bytes != 0 && ptr == nullptr)
    return cuda_emulation::fail(cudaErrorInvalidValue, "cudaMemsetAsync of a null pointer");
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

#endif  // DCNV2_MX_EMULATED_CUDA_RUNTIME_API_H_
