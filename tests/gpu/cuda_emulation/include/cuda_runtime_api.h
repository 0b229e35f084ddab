/*!
 * \file cuda_runtime_api.h
 * \brief The CUDA runtime calls the library makes, emulated on the host (cuda_emulation.h).
 */
#ifndef DCNV2_MX_EMULATED_CUDA_RUNTIME_API_H_
#define DCNV2_MX_EMULATED_CUDA_RUNTIME_API_H_

#include <cstring>

#include "../cuda_emulation.h"

inline cudaError_t cudaGetLastError() {
  auto& s = cuda_emulation::state();
  const cudaError_t err = s.last_error;
  s.last_error = cudaSuccess;
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

/*! \brief The emulator's account of the last failure (CUDA's own string would be generic). */
inline const char* cudaGetErrorString(cudaError_t) {
  return cuda_emulation::state().last_problem.c_str();
}

inline cudaError_t cudaGetDevice(int* device) {
  *device = cuda_emulation::state().device;
  return cudaSuccess;
}

/*! \brief One device, 0. */
inline cudaError_t cudaSetDevice(int device) {
  if (device != 0)
    return cuda_emulation::fail(cudaErrorInvalidDevice,
                                "device " + std::to_string(device) + " (only 0 is emulated)");
  cuda_emulation::state().device = device;
  return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = 0) {
  if (!cuda_emulation::stream_ok(stream, "cudaMemsetAsync"))
    return cuda_emulation::state().last_error;
  if (bytes != 0 && ptr == nullptr)
    return cuda_emulation::fail(cudaErrorInvalidValue, "cudaMemsetAsync of a null pointer");
  std::memset(ptr, value, bytes);
  return cudaSuccess;
}

#endif  // DCNV2_MX_EMULATED_CUDA_RUNTIME_API_H_
