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

#include "../common/scratch.h"
#include "../psroi_pooling_kernel.h"
#include "cuda_common.h"

namespace dcnv2_mx {

/*!
 * \brief Output channels of a class that one thread of the offset and mask gradients sums: with
 *        one thread per part cell and class, a 512-RoI, 7x7-cell call would have 25 000 threads,
 *        each looping over all channels of the class.
 */
constexpr index_t kPartGradChunkChannels = 8;

/*! \brief How a backward call splits its work, and the device scratch it needs. */
struct PsroiGpuPlan {
  index_t chunk_channels;  //!< output channels per partial sum of the offset and mask gradients
  index_t chunks;          //!< partial sums per part cell: 1 writes the gradients directly
  size_t scratch_bytes;    //!< as wanted: a float32 atomic data gradient of float16, the
                           //!< deterministic gradient's bin table and RoI boxes, the partial
                           //!< sums
};

/*!
 * \brief The plan of a backward call that wants the data gradient (`data_grad`) and the offset
 *        or mask gradients (`part_grads`) or not, its scratch within `budget_bytes` (chunks
 *        widen to fit). Host-only: no device access.
 */
template <typename T>
PsroiGpuPlan plan_psroi_pool_backward_gpu(const PSROIPoolGeometry& g, bool data_grad,
                                          bool part_grads, DataGradMode mode,
                                          size_t budget_bytes);

/*! \brief Forward: a.out = pooling of a's inputs; one thread per output element. */
template <typename T>
void psroi_pool_forward_gpu(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a,
                            cudaStream_t stream);

/*!
 * \brief Backward: writes each gradient of `a` whose pointer is not null (overwriting it; the
 *        RoI gradient is zero). Data gradient in DataGradMode::kAtomic: one thread per output
 *        element scatters with atomics; in kDeterministic: one thread per input element gathers
 *        every contribution in a fixed order from a table of the bins (where each samples and
 *        which pixels it reaches), skipping the RoIs and bins that cannot reach it.
 *        Offset and mask gradients: one thread per (RoI, class, part cell, chunk of the class's
 *        channels), then the chunks summed in order; no atomics. `plan` is
 *        plan_psroi_pool_backward_gpu's for the same gradients and mode, `scratch` holds its
 *        scratch_bytes.
 */
template <typename T>
void psroi_pool_backward_gpu(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a,
                             DataGradMode mode, const PsroiGpuPlan& plan, Scratch scratch,
                             cudaStream_t stream);

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CUDA_PSROI_POOLING_CUDA_H_
