/*!
 * \file psroi_pooling_cpu.cc
 * \brief OpenMP (modulated) deformable PS-RoI pooling, forward and backward.
 *
 * Forward: one task per output element. Backward runs two passes that both recompute the bins,
 * each parallel without atomics and with every gradient element written by one thread in a
 * fixed order, so results are bit-identical across runs and thread counts:
 *  - data gradient: one task per input channel c. Channel c is read only by output channel
 *    ctop = c / (Gh * Gw) and by the bins of one position-sensitive group (gh, gw), for every
 *    RoI, so the task owns plane c of every image and nobody else writes it;
 *  - offset and mask gradients: one task per (RoI, class, part cell), which owns those elements
 *    and reduces over the class's output channels and the cell's bins.
 * The per-element work is the CUDA kernels' (psroi_pooling_kernel.h).
 */
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "../psroi_pooling_kernel.h"
#include "isa_dispatch.h"
#include "threads.h"

namespace dcnv2_mx {
// Compiled once per instruction set, each into its own namespace (see isa_dispatch.h).
namespace DCNV2_MX_ISA_NAMESPACE {

namespace {

/*! \brief Throws naming the first RoI whose batch index is not an image of the batch. */
template <typename T>
void check_batch_indices(const PSROIPoolGeometry& g, const T* rois) {
  for (index_t r = 0; r < g.rois; ++r) {
    const double index = static_cast<double>(rois[r * 5]);
    if (!is_batch_index(index, g.batch)) {
      std::ostringstream msg;
      msg << "rois[" << r << ", 0] = " << index << " is not a batch index: 'data' holds "
          << g.batch << " image(s), so it must be in (-1, " << g.batch
          << ") (it is truncated toward zero)";
      throw std::invalid_argument(msg.str());
    }
  }
}

template <typename T>
void fill_zero(T* ptr, index_t count) {
  if (ptr) std::memset(ptr, 0, sizeof(T) * static_cast<size_t>(count));
}

/*! \brief d data: one task per input channel, which owns that channel's plane in every image. */
template <typename T, typename Acc>
void data_grad(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a) {
  const index_t plane = g.in_plane();
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t c = 0; c < g.channels; ++c) {
    for (index_t n = 0; n < g.batch; ++n)
      fill_zero(a.data_grad + (n * g.channels + c) * plane, plane);
    channel_data_grad<T, Acc, T>(g, a, c, a.data_grad);
  }
}

/*! \brief d trans and d mask: one task per (RoI, class, part cell), which owns its elements. */
template <typename T, typename Acc>
void trans_and_mask_grads(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a) {
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t i = 0; i < g.rois * g.num_classes * g.part_cells(); ++i)
    part_cell_grads<T, Acc>(g, a, i);
}

}  // namespace

template <typename T>
void psroi_pool_forward_cpu(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a) {
  using Acc = typename AccType<T>::type;
  check_batch_indices(g, a.rois);
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t i = 0; i < g.rois * g.output_dim * g.bins(); ++i)
    a.out[i] = static_cast<T>(pooled_value<T, Acc>(g, a, i));
}

template <typename T>
void psroi_pool_backward_cpu(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a) {
  using Acc = typename AccType<T>::type;
  check_batch_indices(g, a.in.rois);
  fill_zero(a.rois_grad, g.rois * 5);
  if (a.data_grad) data_grad<T, Acc>(g, a);
  if (a.trans_grad || a.mask_grad) trans_and_mask_grads<T, Acc>(g, a);
}

DCNV2_MX_INSTANTIATE_POOL_KERNELS(float)
DCNV2_MX_INSTANTIATE_POOL_KERNELS(double)

}  // namespace DCNV2_MX_ISA_NAMESPACE
}  // namespace dcnv2_mx
