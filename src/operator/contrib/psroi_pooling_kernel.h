/*!
 * \file psroi_pooling_kernel.h
 * \brief Device-independent description of one (modulated) deformable PS-RoI pooling call, the
 *        per-bin math shared by the CPU loops and CUDA kernels, and the kernel entry points.
 *
 * Output bin (r, ctop, ph, pw) of class cls = ctop / (output_dim / num_classes) averages the
 * S x S samples of its sub-bin grid that lie on the map, read from the input channel of its
 * position-sensitive group, after shifting the bin by the offset of its part cell; the
 * modulated variant multiplies the average by the mask of the same part cell. The kernels take
 * raw pointers and know nothing of MXNet.
 */
#ifndef DCNV2_MX_PSROI_POOLING_KERNEL_H_
#define DCNV2_MX_PSROI_POOLING_KERNEL_H_

#include <cmath>

#include "common/clamped_bilinear.h"

namespace dcnv2_mx {

/*! \brief Sizes and parameters of one call. */
struct PSROIPoolGeometry {
  index_t batch, channels, height, width;  //!< data (N, output_dim * G^2, H, W)
  index_t rois;                            //!< R: rois (R, 5)
  int output_dim, group_size, pooled_size, part_size, sample_per_part;
  int num_classes;  //!< trans (R, 2*num_classes, part, part), mask (R, num_classes, part, part)
  float spatial_scale, trans_std;

  DCN_HD index_t in_plane() const { return height * width; }
  /*! \brief Bins of one output channel: P * P. */
  DCN_HD index_t bins() const { return static_cast<index_t>(pooled_size) * pooled_size; }
  /*! \brief Part cells of one class: part * part. */
  DCN_HD index_t part_cells() const { return static_cast<index_t>(part_size) * part_size; }
  DCN_HD int channels_per_class() const { return output_dim / num_classes; }
  /*!
   * \brief Part cell row (or column) of bin row (or column) p: floor(p * part / P). Exact in
   *        integers; MXNet's floating-point formula agrees for every P, part <= 14 and is one
   *        short for some larger ones (e.g. P = part = 22, p = 13).
   */
  DCN_HD int part_of(int p) const {
    return static_cast<int>(static_cast<index_t>(p) * part_size / pooled_size);
  }
  /*! \brief Position-sensitive group row (or column) of bin row (or column) p: < G as p < P. */
  DCN_HD int group_of(int p) const {
    return static_cast<int>(static_cast<index_t>(p) * group_size / pooled_size);
  }
  /*! \brief The input channel that bin (ph, pw) of output channel ctop reads. */
  DCN_HD index_t input_channel(index_t ctop, int ph, int pw) const {
    return (ctop * group_size + group_of(ph)) * group_size + group_of(pw);
  }
};

/*! \brief Image of a RoI: rois[r, 0] truncated (the kernels check it first). */
template <typename T>
DCN_HD index_t roi_batch_index(const T* roi) {
  return static_cast<index_t>(roi[0]);
}

/*! \brief A RoI on the feature map, where the pooling bins are laid out. */
template <typename Acc>
struct RoiWindow {
  Acc start_h, start_w;  //!< top-left corner
  Acc height, width;     //!< extent, at least 0.1
};

/*!
 * \brief The window of roi = [batch, x1, y1, x2, y2]: corners rounded to whole image pixels,
 *        x2 and y2 inclusive, scaled, and shifted by half a pixel so that feature pixel centres
 *        sit on integer coordinates. Too small (or inverted) RoIs become 0.1 wide.
 */
template <typename T, typename Acc>
DCN_HD RoiWindow<Acc> roi_window(const T* roi, Acc spatial_scale) {
  RoiWindow<Acc> w;
  w.start_w = static_cast<Acc>(round(static_cast<Acc>(roi[1]))) * spatial_scale - Acc(0.5);
  w.start_h = static_cast<Acc>(round(static_cast<Acc>(roi[2]))) * spatial_scale - Acc(0.5);
  const Acc end_w = (static_cast<Acc>(round(static_cast<Acc>(roi[3]))) + Acc(1)) * spatial_scale -
                    Acc(0.5);
  const Acc end_h = (static_cast<Acc>(round(static_cast<Acc>(roi[4]))) + Acc(1)) * spatial_scale -
                    Acc(0.5);
  w.width = end_w - w.start_w > Acc(0.1) ? end_w - w.start_w : Acc(0.1);
  w.height = end_h - w.start_h > Acc(0.1) ? end_h - w.start_h : Acc(0.1);
  return w;
}

/*! \brief Where one pooling bin of one class samples. */
template <typename Acc>
struct PoolBin {
  Acc hstart, wstart;  //!< the first sample (top-left sub-bin start), offset included
  Acc sub_h, sub_w;    //!< distance between samples
  index_t part;        //!< its part cell part_h * part + part_w, which holds its offset and mask
};

/*!
 * \brief Bin (ph, pw) of class cls of a RoI. `trans_r` points at the RoI's offsets
 *        (2*num_classes, part, part), x then y per class; null without offsets.
 */
template <typename T, typename Acc>
DCN_HD PoolBin<Acc> locate_bin(const PSROIPoolGeometry& g, const RoiWindow<Acc>& roi,
                               const T* trans_r, int cls, int ph, int pw) {
  PoolBin<Acc> b;
  const Acc bin_h = roi.height / static_cast<Acc>(g.pooled_size);
  const Acc bin_w = roi.width / static_cast<Acc>(g.pooled_size);
  b.sub_h = bin_h / static_cast<Acc>(g.sample_per_part);
  b.sub_w = bin_w / static_cast<Acc>(g.sample_per_part);
  b.part = static_cast<index_t>(g.part_of(ph)) * g.part_size + g.part_of(pw);
  b.hstart = static_cast<Acc>(ph) * bin_h + roi.start_h;
  b.wstart = static_cast<Acc>(pw) * bin_w + roi.start_w;
  if (trans_r) {
    const Acc trans_std = static_cast<Acc>(g.trans_std);
    const T* trans_x = trans_r + 2 * cls * g.part_cells() + b.part;
    // The offsets are fractions of the RoI's extent.
    b.wstart += static_cast<Acc>(trans_x[0]) * trans_std * roi.width;
    b.hstart += static_cast<Acc>(trans_x[g.part_cells()]) * trans_std * roi.height;
  }
  return b;
}

/*! \brief Sample (ih, iw) of a bin; no corner valid when it is not used. */
template <typename Acc>
DCN_HD BilinearSample<Acc> bin_sample(const PoolBin<Acc>& b, int ih, int iw, int height,
                                      int width) {
  return make_clamped_sample<Acc>(b.hstart + static_cast<Acc>(ih) * b.sub_h,
                                  b.wstart + static_cast<Acc>(iw) * b.sub_w, height, width);
}

/*! \brief Number of a bin's S x S samples that are used (the divisor of its average). */
template <typename Acc>
DCN_HD int bin_sample_count(const PoolBin<Acc>& b, int samples, int height, int width) {
  int count = 0;
  for (int ih = 0; ih < samples; ++ih)
    for (int iw = 0; iw < samples; ++iw)
      count += clamped_sample_used(b.hstart + static_cast<Acc>(ih) * b.sub_h,
                                   b.wstart + static_cast<Acc>(iw) * b.sub_w, height, width);
  return count;
}

/*! \brief Sum of a bin's used samples on one channel plane; their number goes to *count. */
template <typename T, typename Acc>
DCN_HD Acc bin_sum(const T* plane, const PoolBin<Acc>& b, int samples, int height, int width,
                   int* count) {
  Acc sum = Acc(0);
  int used = 0;
  for (int ih = 0; ih < samples; ++ih)
    for (int iw = 0; iw < samples; ++iw) {
      const BilinearSample<Acc> s = bin_sample(b, ih, iw, height, width);
      if (!s.valid) continue;
      sum += gather<T, Acc>(plane, s);
      ++used;
    }
  *count = used;
  return sum;
}

/*!
 * \brief Sums over a bin's used samples on one plane of the value and of its derivatives with
 *        respect to the sampling position (y, then x); returns the number of used samples.
 */
template <typename T, typename Acc>
DCN_HD int bin_sum_and_position_grad(const T* plane, const PoolBin<Acc>& b, int samples,
                                     int height, int width, Acc* sum, Acc* sum_dy, Acc* sum_dx) {
  Acc v = Acc(0), dy = Acc(0), dx = Acc(0);
  int used = 0;
  for (int ih = 0; ih < samples; ++ih)
    for (int iw = 0; iw < samples; ++iw) {
      const BilinearSample<Acc> s = bin_sample(b, ih, iw, height, width);
      if (!s.valid) continue;
      Acc value, dv_dy, dv_dx;
      value_and_position_grad<T, Acc>(plane, s, &value, &dv_dy, &dv_dx);
      v += value;
      dy += dv_dy;
      dx += dv_dx;
      ++used;
    }
  *sum = v;
  *sum_dy = dy;
  *sum_dx = dx;
  return used;
}

/*!
 * \brief Adds `grad` (the gradient of each used sample) to the corners of a bin's samples on
 *        one gradient plane. The caller guarantees that no other thread writes the plane.
 */
template <typename T, typename Acc>
DCN_HD void bin_scatter(T* plane_grad, const PoolBin<Acc>& b, int samples, int height, int width,
                        Acc grad) {
  for (int ih = 0; ih < samples; ++ih)
    for (int iw = 0; iw < samples; ++iw)
      scatter<T, Acc>(plane_grad, bin_sample(b, ih, iw, height, width), grad);
}

/*! \brief Inputs and output of one forward call (pointers on the call's device). */
template <typename T>
struct PSROIPoolForwardArgs {
  const T* data;   //!< (N, output_dim * G^2, H, W)
  const T* rois;   //!< (R, 5): [batch_index, x1, y1, x2, y2] in image pixels
  const T* trans;  //!< (R, 2*num_classes, part, part), null without offsets
  const T* mask;   //!< (R, num_classes, part, part), null without modulation
  T* out;          //!< (R, output_dim, P, P)
};

/*! \brief Gradients to produce in one backward call; a null pointer skips that gradient. */
template <typename T>
struct PSROIPoolBackwardArgs {
  const T* out_grad;              //!< (R, output_dim, P, P)
  PSROIPoolForwardArgs<T> in;     //!< the forward inputs (out unused)
  T* data_grad;
  T* rois_grad;  //!< always zero: the RoI corners are rounded
  T* trans_grad;
  T* mask_grad;
};

/*!
 * \brief CPU kernels. Both first check every RoI's batch index against N and throw
 *        std::invalid_argument naming the first bad one, before reading any data.
 */
template <typename T>
void psroi_pool_forward_cpu(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a);
template <typename T>
void psroi_pool_backward_cpu(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a);

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_PSROI_POOLING_KERNEL_H_
