/*!
 * \file psroi_pooling_cuda.h
 * \brief CUDA entry points of the (modulated) deformable PS-RoI pooling. Like the CPU ones they
 *        take raw device pointers, a geometry and a stream, and know nothing of MXNet.
 *
 * Instantiated for float, double and __half (sampled and accumulated in float32). Every call
 * runs on the given stream without synchronising with the host; the caller makes the tensors'
 * device current. Unlike the CPU kernels they cannot check the RoIs' batch indices, which live
 * on the device, without a synchronisation: a RoI whose rois[r, 0] is not in (-1, N) pools to 0
 * and passes no gradient (see roi_image).
 */
#ifndef DCNV2_MX_CUDA_PSROI_POOLING_CUDA_H_
#define DCNV2_MX_CUDA_PSROI_POOLING_CUDA_H_

#include <cuda_runtime_api.h>

#include <cstddef>

#include "../psroi_pooling_kernel.h"
#include "cuda_common.h"

namespace dcnv2_mx {

/*!
 * \brief Device scratch bytes of a backward call: a float32 accumulator of the data gradient
 *        for float16 when that gradient is wanted, otherwise none.
 */
template <typename T>
size_t psroi_pool_backward_gpu_scratch_bytes(const PSROIPoolGeometry& g, bool data_grad) {
  using Acc = typename AccType<T>::type;
  return data_grad && cuda::kAccumulatesApart<T>
             ? sizeof(Acc) * static_cast<size_t>(g.batch * g.channels * g.in_plane())
             : 0;
}

/*! \brief Forward: a.out = pooling of a's inputs; one thread per output element. */
template <typename T>
void psroi_pool_forward_gpu(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a,
                            cudaStream_t stream);

/*!
 * \brief Backward: writes each gradient of `a` whose pointer is not null (overwriting it; the
 *        RoI gradient is zero). Data gradient in DataGradMode::kAtomic: one thread per output
 *        element scatters with atomics; in kDeterministic: one thread per input channel sums
 *        every contribution to its planes in a fixed order. Offset and mask gradients: one
 *        thread per (RoI, class, part cell), no atomics. `scratch` holds at least
 *        psroi_pool_backward_gpu_scratch_bytes<T>(g, a.data_grad != nullptr) bytes.
 */
template <typename T>
void psroi_pool_backward_gpu(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a,
                             DataGradMode mode, void* scratch, cudaStream_t stream);

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CUDA_PSROI_POOLING_CUDA_H_
