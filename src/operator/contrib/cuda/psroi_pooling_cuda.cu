/*!
 * \file psroi_pooling_cuda.cu
 * \brief CUDA (modulated) deformable PS-RoI pooling, forward and backward.
 *
 * The per-element work is the CPU path's (psroi_pooling_kernel.h): pooled_value for an output
 * element; for the data gradient scatter_bin_grad (atomic) or pixel_data_grad (deterministic: a
 * gather per input element in the CPU's summation order); part_cell_grad_sum for the offset and
 * mask gradients, over chunks of a class's channels so that there are threads enough, the
 * chunks' sums then added in order. float16 is sampled, interpolated and accumulated in float32,
 * including its atomic data gradient (float32 scratch, converted at the end). Everything runs on
 * the caller's stream, without host synchronisation.
 */
#include <stdexcept>
#include <string>

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

/*! \brief The BinReach of every (RoI, class, bin), for the gathered data gradient. */
template <typename T, typename Acc>
__global__ void bin_reach_kernel(index_t count, PSROIPoolGeometry g, PSROIPoolForwardArgs<T> in,
                                 BinReach<Acc>* reach) {
  grid_stride(count, [&](index_t i) { reach[i] = bin_reach<T, Acc>(g, in, i); });
}

/*! \brief The class_box of every (RoI, class). */
template <typename Acc>
__global__ void class_boxes_kernel(index_t count, PSROIPoolGeometry g, const BinReach<Acc>* reach,
                                   PixelBox* boxes) {
  grid_stride(count, [&](index_t i) { boxes[i] = class_box(g, reach, i); });
}

/*!
 * \brief Data gradient, one thread per input element, which gathers its contributions in a
 *        fixed order: reproducible, and it overwrites the gradient (no zeroing, no float32
 *        accumulator for float16).
 */
template <typename T, typename Acc>
__global__ void data_grad_gather_kernel(index_t count, PSROIPoolGeometry g,
                                        PSROIPoolBackwardArgs<T> a, const BinReach<Acc>* reach,
                                        const PixelBox* boxes) {
  grid_stride(count, [&](index_t i) {
    a.data_grad[i] = static_cast<T>(pixel_data_grad<T, Acc>(g, a, reach, boxes, i));
  });
}

/*! \brief Offset and mask gradients, one thread per (RoI, class, part cell), no atomics. */
template <typename T, typename Acc>
__global__ void part_grads_kernel(index_t count, PSROIPoolGeometry g, PSROIPoolBackwardArgs<T> a) {
  grid_stride(count, [&](index_t i) { part_cell_grads<T, Acc>(g, a, i); });
}

/*!
 * \brief Offset and mask gradient sums of (RoI, class, chunk, part cell) items, cell fastest,
 *        over the chunk's `chunk_channels` output channels of the class; partial[k * count + i]
 *        holds sum k (x, y, mask) of item i.
 */
template <typename T, typename Acc>
__global__ void part_grad_chunks_kernel(index_t count, PSROIPoolGeometry g,
                                        PSROIPoolBackwardArgs<T> a, index_t chunk_channels,
                                        Acc* partial) {
  const index_t cells = g.part_cells(), per_class = g.channels_per_class();
  const index_t chunks = (per_class + chunk_channels - 1) / chunk_channels;  // of a class
  grid_stride(count, [&](index_t i) {
    const index_t chunk = i / cells % chunks;
    const index_t cell = i / cells / chunks * cells + i % cells;  // (RoI, class, part cell)
    const index_t c0 = chunk * chunk_channels;
    const index_t c1 = c0 + chunk_channels < per_class ? c0 + chunk_channels : per_class;
    const PartCellGrad<Acc> sum = part_cell_grad_sum<T, Acc>(g, a, cell, c0, c1);
    partial[i] = sum.x;
    partial[count + i] = sum.y;
    partial[2 * count + i] = sum.m;
  });
}

/*! \brief Offset and mask gradients of each (RoI, class, part cell): its chunks' sums, in order. */
template <typename T, typename Acc>
__global__ void part_grad_sum_kernel(index_t count, PSROIPoolGeometry g,
                                     PSROIPoolBackwardArgs<T> a, index_t chunks,
                                     const Acc* partial) {
  const index_t cells = g.part_cells(), items = count * chunks;
  grid_stride(count, [&](index_t i) {
    PartCellGrad<Acc> sum{Acc(0), Acc(0), Acc(0)};
    for (index_t chunk = 0; chunk < chunks; ++chunk) {
      const index_t j = (i / cells * chunks + chunk) * cells + i % cells;
      sum.x += partial[j];
      sum.y += partial[items + j];
      sum.m += partial[2 * items + j];
    }
    store_part_cell_grads<T, Acc>(g, a, i, sum);
  });
}

/*! \brief Sub-buffers of a backward call's scratch; on a null block, only its size. */
template <typename T>
struct PsroiBuffers {
  using Acc = typename AccType<T>::type;
  Acc* accumulator = nullptr;  //!< (N, C, H, W) float32 data gradient: atomic float16
  BinReach<Acc>* reach = nullptr;  //!< (R, num_classes, Ph, Pw): deterministic
  PixelBox* boxes = nullptr;  //!< (R, num_classes): deterministic
  Acc* partial = nullptr;     //!< (3, R, num_classes, chunks, part cells): chunked part grads
  size_t bytes;

  PsroiBuffers(const PSROIPoolGeometry& g, const PsroiGpuPlan& plan, bool data_grad,
               bool part_grads, DataGradMode mode, Scratch scratch) {
    ScratchCarver carver(scratch);
    const bool accumulates =
        data_grad && mode == DataGradMode::kAtomic && cuda::kAccumulatesApart<T>;
    const bool gathered = data_grad && mode == DataGradMode::kDeterministic;
    const bool chunked = part_grads && plan.chunks > 1;
    if (accumulates)
      accumulator = carver.take<Acc>(static_cast<size_t>(g.batch * g.channels * g.in_plane()));
    if (gathered) {
      reach = carver.take<BinReach<Acc>>(static_cast<size_t>(g.rois * g.num_classes * g.bins()));
      boxes = carver.take<PixelBox>(static_cast<size_t>(g.rois * g.num_classes));
    }
    if (chunked)
      partial = carver.take<Acc>(static_cast<size_t>(3 * g.rois * g.num_classes * plan.chunks *
                                                      g.part_cells()));
    bytes = accumulates || gathered || chunked ? carver.bytes_needed() : 0;
  }
};

}  // namespace

template <typename T>
PsroiGpuPlan plan_psroi_pool_backward_gpu(const PSROIPoolGeometry& g, bool data_grad,
                                          bool part_grads, DataGradMode mode,
                                          size_t budget_bytes) {
  const index_t per_class = g.channels_per_class();
  const size_t budget = scratch_budget(budget_bytes);
  PsroiGpuPlan plan;
  // Chunks of kPartGradChunkChannels output channels give a large GPU enough threads; where
  // their partial sums do not fit, chunks twice as wide, down to one per class (no partials).
  for (index_t width = kPartGradChunkChannels;; width *= 2) {
    plan.chunk_channels = part_grads && width < per_class ? width : per_class;
    plan.chunks = (per_class + plan.chunk_channels - 1) / plan.chunk_channels;
    plan.scratch_bytes =
        PsroiBuffers<T>(g, plan, data_grad, part_grads, mode, Scratch{nullptr, 0}).bytes;
    if (plan.chunks == 1 || plan.scratch_bytes <= budget) break;
  }
  if (plan.scratch_bytes > budget)
    throw std::invalid_argument(
        "the PS-RoI pooling backward needs " + std::to_string(plan.scratch_bytes) +
        " bytes of GPU temporary memory, more than one block of MXNet's (" +
        std::to_string(budget) + " bytes): use fewer images or channels per call");
  return plan;
}

template <typename T>
void psroi_pool_forward_gpu(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a,
                            cudaStream_t stream) {
  using Acc = typename AccType<T>::type;
  launch(forward_kernel<T, Acc>, g.rois * g.output_dim * g.bins(), stream, g, a);
}

template <typename T>
void psroi_pool_backward_gpu(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a,
                             DataGradMode mode, const PsroiGpuPlan& plan, Scratch scratch,
                             cudaStream_t stream) {
  using Acc = typename AccType<T>::type;
  const bool part_grads = a.trans_grad || a.mask_grad;
  const PsroiBuffers<T> buf(g, plan, a.data_grad != nullptr, part_grads, mode, scratch);
  if (a.rois_grad)
    cuda::check(cudaMemsetAsync(a.rois_grad, 0, sizeof(T) * g.rois * 5, stream),
                "cudaMemsetAsync");
  if (a.data_grad) {
    const index_t elements = g.batch * g.channels * g.in_plane();
    if (mode == DataGradMode::kAtomic) {
      Acc* grad = cuda::accumulator(a.data_grad, buf.accumulator);
      cuda::check(cudaMemsetAsync(grad, 0, sizeof(Acc) * elements, stream), "cudaMemsetAsync");
      launch(data_grad_atomic_kernel<T, Acc>, g.rois * g.output_dim * g.bins(), stream, g, a,
             grad);
      if constexpr (cuda::kAccumulatesApart<T>)
        launch(cuda::convert_kernel<T, Acc>, elements, stream, grad, a.data_grad);
    } else {
      launch(bin_reach_kernel<T, Acc>, g.rois * g.num_classes * g.bins(), stream, g, a.in,
             buf.reach);
      launch(class_boxes_kernel<Acc>, g.rois * g.num_classes, stream, g, buf.reach, buf.boxes);
      launch(data_grad_gather_kernel<T, Acc>, elements, stream, g, a, buf.reach, buf.boxes);
    }
  }
  if (!part_grads) return;
  const index_t cells = g.rois * g.num_classes * g.part_cells();
  if (plan.chunks == 1) {
    launch(part_grads_kernel<T, Acc>, cells, stream, g, a);
  } else {
    launch(part_grad_chunks_kernel<T, Acc>, cells * plan.chunks, stream, g, a,
           plan.chunk_channels, buf.partial);
    launch(part_grad_sum_kernel<T, Acc>, cells, stream, g, a, plan.chunks, buf.partial);
  }
}

#define DCNV2_MX_INSTANTIATE_GPU(T)                                                        \
  template void psroi_pool_forward_gpu<T>(const PSROIPoolGeometry&,                        \
                                          const PSROIPoolForwardArgs<T>&, cudaStream_t);   \
  template PsroiGpuPlan plan_psroi_pool_backward_gpu<T>(const PSROIPoolGeometry&, bool,    \
                                                        bool, DataGradMode, size_t);      \
  template void psroi_pool_backward_gpu<T>(const PSROIPoolGeometry&,                       \
                                           const PSROIPoolBackwardArgs<T>&, DataGradMode,  \
                                           const PsroiGpuPlan&, Scratch, cudaStream_t);
DCNV2_MX_INSTANTIATE_GPU(float)
DCNV2_MX_INSTANTIATE_GPU(double)
DCNV2_MX_INSTANTIATE_GPU(__half)

}  // namespace dcnv2_mx
