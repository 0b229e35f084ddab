/*!
 * \file psroi_pooling_cpu.cc
 * \brief OpenMP (modulated) deformable PS-RoI pooling, forward and backward.
 *
 * Forward: one task per output element. Backward runs two passes that both recompute the bins,
 * each parallel without atomics and with every gradient element written by one thread in a
 * fixed order, so results are bit-identical across runs and thread counts:
 *  - data gradient: one task per input channel c. Channel c is read only by output channel
 *    ctop = c / G^2 and by the bins of one position-sensitive group (gh, gw), for every RoI, so
 *    the task owns plane c of every image and nobody else writes it;
 *  - offset and mask gradients: one task per (RoI, class), which owns that slice of both and
 *    reduces over the class's output channels and the bins that share each part cell.
 */
#include <cstring>
#include <sstream>
#include <stdexcept>

#include "../psroi_pooling_kernel.h"
#include "threads.h"

namespace dcnv2_mx {

namespace {

/*! \brief Throws naming the first RoI whose batch index is not an image of the batch. */
template <typename T>
void check_batch_indices(const PSROIPoolGeometry& g, const T* rois) {
  for (index_t r = 0; r < g.rois; ++r) {
    const double index = static_cast<double>(rois[r * 5]);
    // Written so that NaN fails as well.
    if (!(index >= 0 && index < static_cast<double>(g.batch))) {
      std::ostringstream msg;
      msg << "rois[" << r << ", 0] = " << index << " is not a batch index: 'data' holds "
          << g.batch << " image(s), so it must be in [0, " << g.batch << ")";
      throw std::invalid_argument(msg.str());
    }
  }
}

template <typename T>
void fill_zero(T* ptr, index_t count) {
  if (ptr) std::memset(ptr, 0, sizeof(T) * static_cast<size_t>(count));
}

/*! \brief The modulation of a bin: mask[r, cls, part cell], 1 without a mask. */
template <typename T, typename Acc>
Acc bin_modulation(const PSROIPoolGeometry& g, const T* mask, index_t r, int cls,
                   const PoolBin<Acc>& b) {
  return mask ? static_cast<Acc>(mask[(r * g.num_classes + cls) * g.part_cells() + b.part])
              : Acc(1);
}

/*! \brief The offsets (2*num_classes, part, part) of RoI r, null without offsets. */
template <typename T>
const T* roi_trans(const PSROIPoolGeometry& g, const T* trans, index_t r) {
  return trans ? trans + r * 2 * g.num_classes * g.part_cells() : nullptr;
}

/*! \brief d data: one task per input channel, which owns that channel's plane in every image. */
template <typename T, typename Acc>
void data_grad(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a) {
  const index_t plane = g.in_plane();
  const index_t group_cells = static_cast<index_t>(g.group_size) * g.group_size;
  const int P = g.pooled_size, S = g.sample_per_part, H = g.height, W = g.width;
  const Acc scale = static_cast<Acc>(g.spatial_scale);
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t c = 0; c < g.channels; ++c) {
    for (index_t n = 0; n < g.batch; ++n)
      fill_zero(a.data_grad + (n * g.channels + c) * plane, plane);
    const index_t ctop = c / group_cells;
    const int gh = static_cast<int>(c / g.group_size % g.group_size);
    const int gw = static_cast<int>(c % g.group_size);
    const int cls = static_cast<int>(ctop / g.channels_per_class());
    for (index_t r = 0; r < g.rois; ++r) {
      const T* roi = a.in.rois + r * 5;
      const RoiWindow<Acc> window = roi_window<T, Acc>(roi, scale);
      const T* trans_r = roi_trans(g, a.in.trans, r);
      const T* dout = a.out_grad + (r * g.output_dim + ctop) * g.bins();
      T* plane_grad = a.data_grad + (roi_batch_index(roi) * g.channels + c) * plane;
      for (int ph = 0; ph < P; ++ph) {
        if (g.group_of(ph) != gh) continue;
        for (int pw = 0; pw < P; ++pw) {
          if (g.group_of(pw) != gw) continue;
          const PoolBin<Acc> b = locate_bin<T, Acc>(g, window, trans_r, cls, ph, pw);
          const int count = bin_sample_count(b, S, H, W);
          if (count == 0) continue;
          const Acc m = bin_modulation(g, a.in.mask, r, cls, b);
          bin_scatter<T, Acc>(plane_grad, b, S, H, W,
                              static_cast<Acc>(dout[ph * P + pw]) * m / static_cast<Acc>(count));
        }
      }
    }
  }
}

/*!
 * \brief d trans and d mask: one task per (RoI, class), reducing over the class's output
 *        channels and over the bins of each part cell in a fixed order.
 */
template <typename T, typename Acc>
void trans_and_mask_grads(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a) {
  const index_t plane = g.in_plane(), cells = g.part_cells();
  const int P = g.pooled_size, S = g.sample_per_part, H = g.height, W = g.width;
  const int per_class = g.channels_per_class();
  const Acc scale = static_cast<Acc>(g.spatial_scale), trans_std = static_cast<Acc>(g.trans_std);
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t task = 0; task < g.rois * g.num_classes; ++task) {
    const index_t r = task / g.num_classes;
    const int cls = static_cast<int>(task % g.num_classes);
    T* grad_x = a.trans_grad ? a.trans_grad + (r * g.num_classes + cls) * 2 * cells : nullptr;
    T* grad_y = grad_x ? grad_x + cells : nullptr;
    T* grad_m = a.mask_grad ? a.mask_grad + task * cells : nullptr;
    fill_zero(grad_x, 2 * cells);
    fill_zero(grad_m, cells);
    const T* roi = a.in.rois + r * 5;
    const RoiWindow<Acc> window = roi_window<T, Acc>(roi, scale);
    const T* trans_r = roi_trans(g, a.in.trans, r);
    const T* data_n = a.in.data + roi_batch_index(roi) * g.channels * plane;
    for (index_t ctop = cls * per_class; ctop < (cls + 1) * per_class; ++ctop) {
      const T* dout = a.out_grad + (r * g.output_dim + ctop) * g.bins();
      for (int ph = 0; ph < P; ++ph)
        for (int pw = 0; pw < P; ++pw) {
          const PoolBin<Acc> b = locate_bin<T, Acc>(g, window, trans_r, cls, ph, pw);
          Acc sum, sum_dy, sum_dx;
          const int count = bin_sum_and_position_grad<T, Acc>(
              data_n + g.input_channel(ctop, ph, pw) * plane, b, S, H, W, &sum, &sum_dy, &sum_dx);
          if (count == 0) continue;
          const Acc d_average = static_cast<Acc>(dout[ph * P + pw]) / static_cast<Acc>(count);
          if (grad_m) grad_m[b.part] += static_cast<T>(d_average * sum);
          if (grad_x) {
            // d position / d trans = trans_std * extent; d average / d position = sum / count.
            const Acc d_sample = d_average * bin_modulation(g, a.in.mask, r, cls, b) * trans_std;
            grad_x[b.part] += static_cast<T>(sum_dx * d_sample * window.width);
            grad_y[b.part] += static_cast<T>(sum_dy * d_sample * window.height);
          }
        }
    }
  }
}

}  // namespace

template <typename T>
void psroi_pool_forward_cpu(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a) {
  using Acc = typename AccType<T>::type;
  check_batch_indices(g, a.rois);
  const index_t plane = g.in_plane(), bins = g.bins();
  const int P = g.pooled_size, S = g.sample_per_part, H = g.height, W = g.width;
  const Acc scale = static_cast<Acc>(g.spatial_scale);
#pragma omp parallel for schedule(static) num_threads(cpu::threads())
  for (index_t i = 0; i < g.rois * g.output_dim * bins; ++i) {
    const index_t bin = i % bins, ctop = i / bins % g.output_dim, r = i / bins / g.output_dim;
    const int ph = static_cast<int>(bin / P), pw = static_cast<int>(bin % P);
    const int cls = static_cast<int>(ctop / g.channels_per_class());
    const T* roi = a.rois + r * 5;
    const PoolBin<Acc> b = locate_bin<T, Acc>(g, roi_window<T, Acc>(roi, scale),
                                              roi_trans(g, a.trans, r), cls, ph, pw);
    const T* in_plane =
        a.data + (roi_batch_index(roi) * g.channels + g.input_channel(ctop, ph, pw)) * plane;
    int count;
    const Acc sum = bin_sum<T, Acc>(in_plane, b, S, H, W, &count);
    a.out[i] = count == 0 ? T(0)
                          : static_cast<T>(bin_modulation(g, a.mask, r, cls, b) *
                                           (sum / static_cast<Acc>(count)));
  }
}

template <typename T>
void psroi_pool_backward_cpu(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a) {
  using Acc = typename AccType<T>::type;
  check_batch_indices(g, a.in.rois);
  fill_zero(a.rois_grad, g.rois * 5);
  if (a.data_grad) data_grad<T, Acc>(g, a);
  if (a.trans_grad || a.mask_grad) trans_and_mask_grads<T, Acc>(g, a);
}

template void psroi_pool_forward_cpu<float>(const PSROIPoolGeometry&,
                                            const PSROIPoolForwardArgs<float>&);
template void psroi_pool_forward_cpu<double>(const PSROIPoolGeometry&,
                                             const PSROIPoolForwardArgs<double>&);
template void psroi_pool_backward_cpu<float>(const PSROIPoolGeometry&,
                                             const PSROIPoolBackwardArgs<float>&);
template void psroi_pool_backward_cpu<double>(const PSROIPoolGeometry&,
                                              const PSROIPoolBackwardArgs<double>&);

}  // namespace dcnv2_mx
