/*!
 * \file psroi_pooling_cuda.cu
 * \brief CUDA (modulated) deformable PS-RoI pooling, forward and backward.
 *
 * The per-element work is the CPU path's (psroi_pooling_kernel.h): pooled_value for an output
 * element, scatter_bin_grad and channel_data_grad for the data gradient, part_cell_grads for the
 * offset and mask gradients. float16 is sampled, interpolated and accumulated in float32,
 * including its data gradient (float32 scratch, converted at the end). Everything runs on the
 * caller's stream, without host synchronisation.
 */
#include "launch.h"
#include "psroi_pooling_cuda.h"

namespace dcnv2_mx {

namespace {

using cuda::grid_stride;
using cuda::launch;

/*! \brief Forward, one thread per output element. */
template <typename T, typename Acc>
__global__ void forward_kernel(index_t count, PSROIPoolGeometry g, PSROIPoolForwardArgs<T> a) {
  grid_stride(count,
              [&](index_t i) { a.out[i] = static_cast<T>(pooled_value<T, Acc>(g, a, i)); });
}

/*! \brief Data gradient, one thread per output element, scattered into `grad` with atomics. */
template <typename T, typename Acc>
__global__ void data_grad_atomic_kernel(index_t count, PSROIPoolGeometry g,
                                        PSROIPoolBackwardArgs<T> a, Acc* grad) {
  grid_stride(count, [&](index_t i) {
    scatter_bin_grad<T, Acc, Acc>(g, a, i, grad, cuda::AtomicAdd());
  });
}

/*! \brief Data gradient, one thread per input channel, which alone writes its planes. */
template <typename T, typename Acc>
__global__ void data_grad_by_channel_kernel(index_t count, PSROIPoolGeometry g,
                                            PSROIPoolBackwardArgs<T> a, Acc* grad) {
  grid_stride(count, [&](index_t c) { channel_data_grad<T, Acc, Acc>(g, a, c, grad); });
}

/*! \brief Offset and mask gradients, one thread per (RoI, class, part cell), no atomics. */
template <typename T, typename Acc>
__global__ void trans_mask_grad_kernel(index_t count, PSROIPoolGeometry g,
                                       PSROIPoolBackwardArgs<T> a) {
  grid_stride(count, [&](index_t i) { part_cell_grads<T, Acc>(g, a, i); });
}

}  // namespace

template <typename T>
void psroi_pool_forward_gpu(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a,
                            cudaStream_t stream) {
  using Acc = typename AccType<T>::type;
  launch(forward_kernel<T, Acc>, g.rois * g.output_dim * g.bins(), stream, g, a);
}

template <typename T>
void psroi_pool_backward_gpu(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a,
                             DataGradMode mode, void* scratch, cudaStream_t stream) {
  using Acc = typename AccType<T>::type;
  if (a.rois_grad)
    cuda::check(cudaMemsetAsync(a.rois_grad, 0, sizeof(T) * g.rois * 5, stream),
                "cudaMemsetAsync");
  if (a.data_grad) {
    const index_t elements = g.batch * g.channels * g.in_plane();
    Acc* grad = cuda::accumulator(a.data_grad, static_cast<Acc*>(scratch));
    cuda::check(cudaMemsetAsync(grad, 0, sizeof(Acc) * elements, stream), "cudaMemsetAsync");
    if (mode == DataGradMode::kAtomic)
      launch(data_grad_atomic_kernel<T, Acc>, g.rois * g.output_dim * g.bins(), stream, g, a,
             grad);
    else
      launch(data_grad_by_channel_kernel<T, Acc>, g.channels, stream, g, a, grad);
    if constexpr (cuda::kAccumulatesApart<T>)
      launch(cuda::convert_kernel<T, Acc>, elements, stream, grad, a.data_grad);
  }
  if (a.trans_grad || a.mask_grad)
    launch(trans_mask_grad_kernel<T, Acc>, g.rois * g.num_classes * g.part_cells(), stream, g,
           a);
}

#define DCNV2_MX_INSTANTIATE_GPU(T)                                                        \
  template void psroi_pool_forward_gpu<T>(const PSROIPoolGeometry&,                        \
                                          const PSROIPoolForwardArgs<T>&, cudaStream_t);   \
  template void psroi_pool_backward_gpu<T>(const PSROIPoolGeometry&,                       \
                                           const PSROIPoolBackwardArgs<T>&, DataGradMode,  \
                                           void*, cudaStream_t);
DCNV2_MX_INSTANTIATE_GPU(float)
DCNV2_MX_INSTANTIATE_GPU(double)
DCNV2_MX_INSTANTIATE_GPU(__half)

}  // namespace dcnv2_mx
