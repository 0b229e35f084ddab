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

#include <climits>
#include <cmath>

#include "common/clamped_bilinear.h"

namespace dcnv2_mx {

/*!
 * \brief Sizes and parameters of one call. The output (Ph x Pw bins), the position-sensitive
 *        groups (Gh x Gw) and the part cells (part_h x part_w) may each be non-square, as in
 *        Paddle's deformable_psroi_pooling.
 */
struct PSROIPoolGeometry {
  index_t batch, channels, height, width;  //!< data (N, output_dim * Gh * Gw, H, W)
  index_t rois;                            //!< R: rois (R, 5)
  int output_dim, sample_per_part;
  int pooled_h, pooled_w;  //!< Ph, Pw: bins of one output channel
  int group_h, group_w;    //!< Gh, Gw: position-sensitive groups
  int part_h, part_w;      //!< part cells, which hold the offsets and masks
  int num_classes;  //!< trans (R, 2*num_classes, part_h, part_w), mask (R, num_classes, ...)
  float spatial_scale, trans_std;

  DCN_HD index_t in_plane() const { return height * width; }
  /*! \brief Bins of one output channel: Ph * Pw. */
  DCN_HD index_t bins() const { return static_cast<index_t>(pooled_h) * pooled_w; }
  /*! \brief Part cells of one class: part_h * part_w. */
  DCN_HD index_t part_cells() const { return static_cast<index_t>(part_h) * part_w; }
  DCN_HD int channels_per_class() const { return output_dim / num_classes; }
  /*!
   * \brief Part cell row of bin row ph: floor(ph * part_h / Ph) (columns alike). Exact in
   *        integers; MXNet's floating-point formula agrees for every P, part <= 14 and is one
   *        short for some larger ones (e.g. P = part = 22, p = 13).
   */
  DCN_HD int part_row(int ph) const { return scaled_index(ph, part_h, pooled_h); }
  DCN_HD int part_col(int pw) const { return scaled_index(pw, part_w, pooled_w); }
  /*! \brief Position-sensitive group row of bin row ph (< Gh as ph < Ph); columns alike. */
  DCN_HD int group_row(int ph) const { return scaled_index(ph, group_h, pooled_h); }
  DCN_HD int group_col(int pw) const { return scaled_index(pw, group_w, pooled_w); }
  /*! \brief The input channel that bin (ph, pw) of output channel ctop reads. */
  DCN_HD index_t input_channel(index_t ctop, int ph, int pw) const {
    return (ctop * group_h + group_row(ph)) * group_w + group_col(pw);
  }
  /*! \brief The bin rows [*begin, *end) whose part cell row is `cell`; columns alike. */
  DCN_HD void rows_of_part(int cell, int* begin, int* end) const {
    scaled_range(cell, part_h, pooled_h, begin, end);
  }
  DCN_HD void cols_of_part(int cell, int* begin, int* end) const {
    scaled_range(cell, part_w, pooled_w, begin, end);
  }
  /*! \brief The bin rows [*begin, *end) of position-sensitive group row gh; columns alike. */
  DCN_HD void rows_of_group(int gh, int* begin, int* end) const {
    scaled_range(gh, group_h, pooled_h, begin, end);
  }
  DCN_HD void cols_of_group(int gw, int* begin, int* end) const {
    scaled_range(gw, group_w, pooled_w, begin, end);
  }

 private:
  /*! \brief floor(p * cells / pooled) in integers. */
  DCN_HD static int scaled_index(int p, int cells, int pooled) {
    return static_cast<int>(static_cast<index_t>(p) * cells / pooled);
  }
  /*!
   * \brief The p with scaled_index(p, cells, pooled) == cell: cell * pooled / cells <= p <
   *        (cell + 1) * pooled / cells, so [ceil(cell * pooled / cells), ceil((cell + 1) *
   *        pooled / cells)). Looping over it instead of testing every p keeps the threads of a
   *        GPU warp, which handle different cells, on the same path.
   */
  DCN_HD static void scaled_range(int cell, int cells, int pooled, int* begin, int* end) {
    *begin = static_cast<int>((static_cast<index_t>(cell) * pooled + cells - 1) / cells);
    *end = static_cast<int>((static_cast<index_t>(cell + 1) * pooled + cells - 1) / cells);
  }
};

/*! \brief Whether a RoI's batch index rois[r, 0] names an image: it is in (-1, batch). */
template <typename Acc>
DCN_HD bool is_batch_index(Acc index, index_t batch) {
  return index > Acc(-1) && index < static_cast<Acc>(batch);  // false for NaN
}

/*!
 * \brief Image of a RoI: rois[r, 0] truncated toward zero as MXNet's DeformablePSROIPooling
 *        does (so an index in (-1, 0), e.g. 0 nudged by a numerical gradient check, is image 0),
 *        or -1 when it is not a batch index. The CPU kernels reject such RoIs before reading any
 *        data; the CUDA kernels cannot see the device-side rois without synchronising with the
 *        host, so they skip them: such a RoI pools to 0 and passes no gradient.
 */
template <typename T, typename Acc>
DCN_HD index_t roi_image(const T* roi, index_t batch) {
  const Acc index = static_cast<Acc>(roi[0]);
  return is_batch_index(index, batch) ? static_cast<index_t>(index) : -1;
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
 *        (2*num_classes, part_h, part_w), x then y per class; null without offsets.
 */
template <typename T, typename Acc>
DCN_HD PoolBin<Acc> locate_bin(const PSROIPoolGeometry& g, const RoiWindow<Acc>& roi,
                               const T* trans_r, int cls, int ph, int pw) {
  PoolBin<Acc> b;
  const Acc bin_h = roi.height / static_cast<Acc>(g.pooled_h);
  const Acc bin_w = roi.width / static_cast<Acc>(g.pooled_w);
  b.sub_h = bin_h / static_cast<Acc>(g.sample_per_part);
  b.sub_w = bin_w / static_cast<Acc>(g.sample_per_part);
  b.part = static_cast<index_t>(g.part_row(ph)) * g.part_w + g.part_col(pw);
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
 *        one gradient plane through `add`: with the default PlainAdd the caller guarantees that
 *        no other thread writes the plane; the CUDA atomic path passes an atomic add.
 */
template <typename T, typename Acc, typename Add = PlainAdd>
DCN_HD void bin_scatter(T* plane_grad, const PoolBin<Acc>& b, int samples, int height, int width,
                        Acc grad, Add add = Add()) {
  for (int ih = 0; ih < samples; ++ih)
    for (int iw = 0; iw < samples; ++iw)
      scatter<T, Acc, Add>(plane_grad, bin_sample(b, ih, iw, height, width), grad, add);
}

/*! \brief Inputs and output of one forward call (pointers on the call's device). */
template <typename T>
struct PSROIPoolForwardArgs {
  const T* data;   //!< (N, output_dim * Gh * Gw, H, W)
  const T* rois;   //!< (R, 5): [batch_index, x1, y1, x2, y2] in image pixels, index in (-1, N)
  const T* trans;  //!< (R, 2*num_classes, part_h, part_w), null without offsets
  const T* mask;   //!< (R, num_classes, part_h, part_w), null without modulation
  T* out;          //!< (R, output_dim, Ph, Pw)
};

/*! \brief Gradients to produce in one backward call; a null pointer skips that gradient. */
template <typename T>
struct PSROIPoolBackwardArgs {
  const T* out_grad;              //!< (R, output_dim, Ph, Pw)
  PSROIPoolForwardArgs<T> in;     //!< the forward inputs (out unused)
  T* data_grad;
  T* rois_grad;  //!< always zero: the RoI corners are rounded
  T* trans_grad;
  T* mask_grad;
};

/*! \brief The offsets (2*num_classes, part_h, part_w) of RoI r, null without offsets. */
template <typename T>
DCN_HD const T* roi_trans(const PSROIPoolGeometry& g, const T* trans, index_t r) {
  return trans ? trans + r * 2 * g.num_classes * g.part_cells() : nullptr;
}

/*! \brief The modulation of a bin of RoI r and class cls: mask[r, cls, part cell], 1 without. */
template <typename T, typename Acc>
DCN_HD Acc bin_modulation(const PSROIPoolGeometry& g, const T* mask, index_t r, int cls,
                          const PoolBin<Acc>& b) {
  return mask ? static_cast<Acc>(mask[(r * g.num_classes + cls) * g.part_cells() + b.part])
              : Acc(1);
}

/*! \brief One output element (r, ctop, ph, pw) and its class. */
struct OutputBin {
  index_t r, ctop;
  int ph, pw, cls;
};

/*! \brief Output element i of (R, output_dim, Ph, Pw). */
DCN_HD OutputBin output_bin(const PSROIPoolGeometry& g, index_t i) {
  OutputBin o;
  const index_t bin = i % g.bins();
  o.ctop = i / g.bins() % g.output_dim;
  o.r = i / g.bins() / g.output_dim;
  o.ph = static_cast<int>(bin / g.pooled_w);
  o.pw = static_cast<int>(bin % g.pooled_w);
  o.cls = static_cast<int>(o.ctop / g.channels_per_class());
  return o;
}

/*! \brief Output element i: the modulated average of its bin (0 when no sample is used). */
template <typename T, typename Acc>
DCN_HD Acc pooled_value(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a,
                        index_t i) {
  const OutputBin o = output_bin(g, i);
  const T* roi = a.rois + o.r * 5;
  const index_t n = roi_image<T, Acc>(roi, g.batch);
  if (n < 0) return Acc(0);
  const PoolBin<Acc> b =
      locate_bin<T, Acc>(g, roi_window<T, Acc>(roi, static_cast<Acc>(g.spatial_scale)),
                         roi_trans(g, a.trans, o.r), o.cls, o.ph, o.pw);
  const T* in_plane = a.data + (n * g.channels + g.input_channel(o.ctop, o.ph, o.pw)) *
                                   g.in_plane();
  int count;
  const Acc sum = bin_sum<T, Acc>(in_plane, b, g.sample_per_part, static_cast<int>(g.height),
                                  static_cast<int>(g.width), &count);
  return count == 0 ? Acc(0)
                    : bin_modulation(g, a.mask, o.r, o.cls, b) * (sum / static_cast<Acc>(count));
}

/*!
 * \brief Scatters the data gradient of output element i (d out * mask / count per used sample)
 *        into `grad` (N, C, H, W) through `add`.
 */
template <typename T, typename Acc, typename G, typename Add = PlainAdd>
DCN_HD void scatter_bin_grad(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a,
                             index_t i, G* grad, Add add = Add()) {
  const OutputBin o = output_bin(g, i);
  const T* roi = a.in.rois + o.r * 5;
  const index_t n = roi_image<T, Acc>(roi, g.batch);
  if (n < 0) return;
  const int S = g.sample_per_part, H = static_cast<int>(g.height),
            W = static_cast<int>(g.width);
  const PoolBin<Acc> b =
      locate_bin<T, Acc>(g, roi_window<T, Acc>(roi, static_cast<Acc>(g.spatial_scale)),
                         roi_trans(g, a.in.trans, o.r), o.cls, o.ph, o.pw);
  const int count = bin_sample_count(b, S, H, W);
  if (count == 0) return;
  const Acc m = bin_modulation(g, a.in.mask, o.r, o.cls, b);
  G* plane_grad = grad + (n * g.channels + g.input_channel(o.ctop, o.ph, o.pw)) * g.in_plane();
  bin_scatter<G, Acc, Add>(plane_grad, b, S, H, W,
                           static_cast<Acc>(a.out_grad[i]) * m / static_cast<Acc>(count), add);
}

/*!
 * \brief Adds the data gradient of every bin that reads input channel c, RoI by RoI in order,
 *        to plane c of `grad` (N, C, H, W). Channel c is read only by output channel
 *        ctop = c / (Gh * Gw) and by the bins of one position-sensitive group (gh, gw), so the
 *        caller that runs one c per thread needs no atomics and gets a fixed summation order.
 */
template <typename T, typename Acc, typename G>
DCN_HD void channel_data_grad(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a,
                              index_t c, G* grad) {
  const index_t group_cells = static_cast<index_t>(g.group_h) * g.group_w;
  const index_t ctop = c / group_cells;
  const int gh = static_cast<int>(c / g.group_w % g.group_h);
  const int gw = static_cast<int>(c % g.group_w);
  int ph0, ph1, pw0, pw1;
  g.rows_of_group(gh, &ph0, &ph1);
  g.cols_of_group(gw, &pw0, &pw1);
  for (index_t r = 0; r < g.rois; ++r)
    for (int ph = ph0; ph < ph1; ++ph)
      for (int pw = pw0; pw < pw1; ++pw)
        scatter_bin_grad<T, Acc, G>(
            g, a, ((r * g.output_dim + ctop) * g.pooled_h + ph) * g.pooled_w + pw, grad);
}

/*! \brief Sums of a part cell's offset (x, y) and mask gradients. */
template <typename Acc>
struct PartCellGrad {
  Acc x, y, m;
};

/*!
 * \brief The offset and mask gradient sums of part cell i of (R, num_classes, part_h, part_w)
 *        over output channels [c0, c1) of its class (0 <= c0 <= c1 <= channels_per_class())
 *        and the cell's bins, in a fixed order. Zero for a RoI outside the batch.
 */
template <typename T, typename Acc>
DCN_HD PartCellGrad<Acc> part_cell_grad_sum(const PSROIPoolGeometry& g,
                                            const PSROIPoolBackwardArgs<T>& a, index_t i,
                                            index_t c0, index_t c1) {
  const index_t cells = g.part_cells();
  const index_t cell = i % cells, r = i / cells / g.num_classes;
  const int cls = static_cast<int>(i / cells % g.num_classes);
  PartCellGrad<Acc> grad{Acc(0), Acc(0), Acc(0)};
  const T* roi = a.in.rois + r * 5;
  const index_t n = roi_image<T, Acc>(roi, g.batch);
  if (n < 0) return grad;
  const int S = g.sample_per_part, H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  const int cell_h = static_cast<int>(cell / g.part_w);
  const int cell_w = static_cast<int>(cell % g.part_w);
  const index_t class_begin = static_cast<index_t>(cls) * g.channels_per_class();
  const Acc trans_std = static_cast<Acc>(g.trans_std);
  const RoiWindow<Acc> window = roi_window<T, Acc>(roi, static_cast<Acc>(g.spatial_scale));
  const T* trans_r = roi_trans(g, a.in.trans, r);
  const T* data_n = a.in.data + n * g.channels * g.in_plane();
  int ph0, ph1, pw0, pw1;
  g.rows_of_part(cell_h, &ph0, &ph1);
  g.cols_of_part(cell_w, &pw0, &pw1);
  for (index_t ctop = class_begin + c0; ctop < class_begin + c1; ++ctop) {
    const T* dout = a.out_grad + (r * g.output_dim + ctop) * g.bins();
    for (int ph = ph0; ph < ph1; ++ph) {
      for (int pw = pw0; pw < pw1; ++pw) {
        const PoolBin<Acc> b = locate_bin<T, Acc>(g, window, trans_r, cls, ph, pw);
        Acc sum, sum_dy, sum_dx;
        const int count = bin_sum_and_position_grad<T, Acc>(
            data_n + g.input_channel(ctop, ph, pw) * g.in_plane(), b, S, H, W, &sum, &sum_dy,
            &sum_dx);
        if (count == 0) continue;
        const Acc d_average =
            static_cast<Acc>(dout[ph * g.pooled_w + pw]) / static_cast<Acc>(count);
        grad.m += d_average * sum;
        // d position / d trans = trans_std * extent; d average / d position = sum / count.
        const Acc d_sample = d_average * bin_modulation(g, a.in.mask, r, cls, b) * trans_std;
        grad.x += sum_dx * d_sample * window.width;
        grad.y += sum_dy * d_sample * window.height;
      }
    }
  }
  return grad;
}

/*! \brief Writes the offset (x, y) and mask gradients, where wanted, of part cell i. */
template <typename T, typename Acc>
DCN_HD void store_part_cell_grads(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a,
                                  index_t i, const PartCellGrad<Acc>& grad) {
  const index_t cells = g.part_cells();
  if (a.trans_grad) {
    // trans (R, 2*num_classes, part_h, part_w): x then y of each class.
    T* grad_x = a.trans_grad + (i - i % cells) * 2 + i % cells;
    grad_x[0] = static_cast<T>(grad.x);
    grad_x[cells] = static_cast<T>(grad.y);
  }
  if (a.mask_grad) a.mask_grad[i] = static_cast<T>(grad.m);
}

/*!
 * \brief Writes the offset and mask gradients of part cell i, summed over all output channels
 *        of its class: the caller that runs one cell per thread needs no atomics.
 */
template <typename T, typename Acc>
DCN_HD void part_cell_grads(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a,
                            index_t i) {
  store_part_cell_grads<T, Acc>(
      g, a, i, part_cell_grad_sum<T, Acc>(g, a, i, 0, g.channels_per_class()));
}

/*! \brief Inclusive rows and columns of the map; empty when y0 > y1. */
struct PixelBox {
  int y0, x0, y1, x1;
  DCN_HD static PixelBox empty() { return PixelBox{INT_MAX, INT_MAX, INT_MIN, INT_MIN}; }
  DCN_HD bool contains(int y, int x) const { return y >= y0 && y <= y1 && x >= x0 && x <= x1; }
  DCN_HD void extend(const PixelBox& o) {
    y0 = o.y0 < y0 ? o.y0 : y0;
    x0 = o.x0 < x0 ? o.x0 : x0;
    y1 = o.y1 > y1 ? o.y1 : y1;
    x1 = o.x1 > x1 ? o.x1 : x1;
  }
};

/*!
 * \brief What the gathered data gradient needs of one bin of one class of a RoI, computed once
 *        per bin instead of once per input element that might receive from it.
 */
template <typename Acc>
struct BinReach {
  PoolBin<Acc> bin;  //!< where it samples
  Acc modulation;    //!< its mask value (1 without)
  int count;         //!< its used samples: 0 passes no gradient
  PixelBox box;      //!< the pixels the corners of its used samples reach; empty if none
};

/*!
 * \brief BinReach of item i = ((r * num_classes + cls) * Ph + ph) * Pw + pw; a RoI outside the
 *        batch has no used samples.
 */
template <typename T, typename Acc>
DCN_HD BinReach<Acc> bin_reach(const PSROIPoolGeometry& g, const PSROIPoolForwardArgs<T>& a,
                               index_t i) {
  const int pw = static_cast<int>(i % g.pooled_w);
  const int ph = static_cast<int>(i / g.pooled_w % g.pooled_h);
  const index_t r = i / g.bins() / g.num_classes;
  const int cls = static_cast<int>(i / g.bins() % g.num_classes);
  const int H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  BinReach<Acc> e{};
  e.box = PixelBox::empty();
  const T* roi = a.rois + r * 5;
  if (roi_image<T, Acc>(roi, g.batch) < 0) return e;
  e.bin = locate_bin<T, Acc>(g, roi_window<T, Acc>(roi, static_cast<Acc>(g.spatial_scale)),
                             roi_trans(g, a.trans, r), cls, ph, pw);
  e.modulation = bin_modulation(g, a.mask, r, cls, e.bin);
  for (int ih = 0; ih < g.sample_per_part; ++ih)
    for (int iw = 0; iw < g.sample_per_part; ++iw) {
      const BilinearSample<Acc> s = bin_sample(e.bin, ih, iw, H, W);
      if (!s.valid) continue;
      ++e.count;
      // A used sample has all four corners on the map, [0] top-left, [3] bottom-right.
      e.box.extend(PixelBox{s.offset[0] / W, s.offset[0] % W, s.offset[3] / W, s.offset[3] % W});
    }
  return e;
}

/*! \brief The union of the boxes of the bins of item i = r * num_classes + cls in `reach`. */
template <typename Acc>
DCN_HD PixelBox class_box(const PSROIPoolGeometry& g, const BinReach<Acc>* reach, index_t i) {
  PixelBox box = PixelBox::empty();
  for (index_t bin = 0; bin < g.bins(); ++bin) box.extend(reach[i * g.bins() + bin].box);
  return box;
}

/*!
 * \brief The data gradient of element i of (N, C, H, W): every contribution to it, gathered in
 *        channel_data_grad's order (RoI, bin, sample, corner) and computed as scatter_bin_grad
 *        computes it, so the result is the same whatever the thread timing. `reach` holds
 *        bin_reach of every (RoI, class, bin), `boxes` class_box of every (RoI, class): the RoIs
 *        and bins that cannot reach the element are skipped.
 */
template <typename T, typename Acc>
DCN_HD Acc pixel_data_grad(const PSROIPoolGeometry& g, const PSROIPoolBackwardArgs<T>& a,
                           const BinReach<Acc>* reach, const PixelBox* boxes, index_t i) {
  const int S = g.sample_per_part, H = static_cast<int>(g.height), W = static_cast<int>(g.width);
  const index_t HW = g.in_plane();
  const int pixel = static_cast<int>(i % HW);
  const index_t c = i / HW % g.channels, n = i / HW / g.channels;
  const int y = pixel / W, x = pixel % W;
  const index_t ctop = c / (static_cast<index_t>(g.group_h) * g.group_w);
  const int cls = static_cast<int>(ctop / g.channels_per_class());
  int ph0, ph1, pw0, pw1;
  g.rows_of_group(static_cast<int>(c / g.group_w % g.group_h), &ph0, &ph1);
  g.cols_of_group(static_cast<int>(c % g.group_w), &pw0, &pw1);
  Acc sum = Acc(0);
  for (index_t r = 0; r < g.rois; ++r) {
    const index_t item = r * g.num_classes + cls;
    if (!boxes[item].contains(y, x) || roi_image<T, Acc>(a.in.rois + r * 5, g.batch) != n)
      continue;
    for (int ph = ph0; ph < ph1; ++ph)
      for (int pw = pw0; pw < pw1; ++pw) {
        const BinReach<Acc>& e = reach[item * g.bins() + ph * g.pooled_w + pw];
        if (!e.box.contains(y, x)) continue;
        const index_t out = (r * g.output_dim + ctop) * g.bins() + ph * g.pooled_w + pw;
        const Acc grad =
            static_cast<Acc>(a.out_grad[out]) * e.modulation / static_cast<Acc>(e.count);
        for (int ih = 0; ih < S; ++ih)
          for (int iw = 0; iw < S; ++iw) {
            const BilinearSample<Acc> s = bin_sample(e.bin, ih, iw, H, W);
DCN_UNROLL
            for (int q = 0; q < 4; ++q)
              if (((s.valid >> q) & 1u) && s.offset[q] == pixel) sum += s.weight[q] * grad;
          }
      }
  }
  return sum;
}

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
