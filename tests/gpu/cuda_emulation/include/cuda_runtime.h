/*!
 * \file cuda_runtime.h
 * \brief The CUDA runtime's C++ API that the library uses, emulated on the host
 *        (cuda_emulation.h): cudaLaunchKernel, the call behind <<<...>>>, which the host
 *        compiler cannot parse.
 */
#ifndef DCNV2_MX_EMULATED_CUDA_RUNTIME_H_
#define DCNV2_MX_EMULATED_CUDA_RUNTIME_H_

#include <cstddef>
#include <utility>

#include "cuda_runtime_api.h"

namespace cuda_emulation {

template <typename... Params, size_t... I>
void call_with(void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<Params*>(args[I])...);  // by value, as a launch copies its arguments
}

}  // namespace cuda_emulation

/*!
 * \brief kernel<<<grid, block, shared, stream>>>(*args...) on the emulator (one-dimensional
 *        grids and blocks, no shared memory; grids capped at cuda_emulation::kMaxBlocks).
 *        Returns the launch's error, which also stays for cudaGetLastError.
 */
template <typename... Params>
cudaError_t cudaLaunchKernel(void (*kernel)(Params...), dim3 grid, dim3 block, void** args,
                             size_t shared = 0, cudaStream_t stream = nullptr) {
  namespace emu = cuda_emulation;
  if (grid.y != 1 || grid.z != 1 || block.y != 1 || block.z != 1 || shared != 0)
    return emu::state().launch_error =
               emu::fail(cudaErrorInvalidConfiguration,
                         "launch with a 2-D or 3-D grid or block, or shared memory");
  // Only a valid grid is capped: an invalid one fails as it would on a GPU.
  const bool valid = grid.x >= 1 && grid.x <= 0x7fffffffu;
  const unsigned blocks = valid && grid.x > emu::kMaxBlocks ? emu::kMaxBlocks : grid.x;
  return emu::launch(blocks, block.x, stream, [&] {
    emu::call_with(kernel, args, std::index_sequence_for<Params...>());
  });
}

#endif  // DCNV2_MX_EMULATED_CUDA_RUNTIME_H_
