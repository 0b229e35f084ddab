/*!
 * \file deformable_conv_cuda.h
 * \brief CUDA entry points of the deformable convolutions (DCNv2 and DCNv1). Like the CPU ones
 *        they take raw device pointers, a geometry, a scratch block and a stream, and know
 *        nothing of MXNet: the operator registration and the standalone test harness
 *        (tests/gpu/standalone_capi.cu) both drive them, through run() (common/op_adapter.h).
 *
 * Instantiated for float, double and __half (sampled and accumulated in float32). Every call
 * runs on the given stream without synchronising with the host; the caller makes the tensors'
 * device current.
 */
#ifndef DCNV2_MX_CUDA_DEFORMABLE_CONV_CUDA_H_
#define DCNV2_MX_CUDA_DEFORMABLE_CONV_CUDA_H_

#include <cuda_runtime_api.h>

#include "../deformable_conv_kernel.h"
#include "cuda_common.h"

namespace dcnv2_mx {

/*!
 * \brief Tiling of a GPU call: tiles of `tile` output pixels of one image, or (when `tile`
 *        covers an image) of `images` whole images.
 */
struct GpuTilePlan {
  index_t tile;          //!< output pixels of one image per tile
  index_t images;        //!< images per tile: more than one only when `tile` covers an image
  size_t scratch_bytes;  //!< scratch memory the call needs
};

/*!
 * \brief Tiling and scratch size of a call within `budget_bytes`: the largest tile up to a
 *        target of column memory whose scratch, measured as the call carves it, fits. The mode
 *        matters for backward only. Throws std::invalid_argument when the budget cannot hold a
 *        single pixel.
 */
template <typename T>
GpuTilePlan plan_deform_conv_gpu(const DeformConvGeometry& g, bool backward, DataGradMode mode,
                              size_t budget_bytes);

/*! \brief Forward: a.out = deformable convolution of a's inputs. */
template <typename T>
void deform_conv_forward_gpu(const DeformConvGeometry& g, const DeformConvForwardArgs<T>& a,
                             const GpuTilePlan& plan, Scratch scratch, cudaStream_t stream);

/*!
 * \brief Backward: writes each gradient of `a` whose pointer is not null (overwriting it). In
 *        DataGradMode::kDeterministic each tile's data gradient contributions are sorted by input
 *        pixel (bit-identical results for the same inputs and workspace).
 *        `plan` must come from plan_deform_conv_gpu with backward = true and the same mode.
 */
template <typename T>
void deform_conv_backward_gpu(const DeformConvGeometry& g, const DeformConvBackwardArgs<T>& a,
                              DataGradMode mode, const GpuTilePlan& plan, Scratch scratch,
                              cudaStream_t stream);

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_CUDA_DEFORMABLE_CONV_CUDA_H_
