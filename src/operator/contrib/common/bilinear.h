/*!
 * \file bilinear.h
 * \brief Per-element math of DCNv2 sampling, written once for the CPU loops and the CUDA kernels.
 *
 * Border rule of the original DCNv2 release: a sample at (py, px) is used iff
 * -1 < py < H and -1 < px < W; its four bilinear corners are read from the map, and any corner
 * outside [0, H-1] x [0, W-1] reads as zero ("padding by one row/column of zeros"). The same
 * rule gives the gradients, so they are non-zero in the (-1, 0) and (H-1, H) bands.
 */
#ifndef DCNV2_MX_COMMON_BILINEAR_H_
#define DCNV2_MX_COMMON_BILINEAR_H_

#include "host_device.h"

namespace dcnv2_mx {

/*!
 * \brief The four corners of one bilinear sample, ready to be gathered from any channel plane.
 *
 * Corner i is (y0 + i/2, x0 + i%2). Corners outside the map have weight 0, offset 0 and their
 * valid bit cleared, so they read as 0 without touching memory outside the plane.
 */
template <typename Acc>
struct BilinearSample {
  int32_t offset[4];  //!< y * W + x of each corner inside the plane
  Acc weight[4];      //!< interpolation weight of each corner
  Acc ly, lx;         //!< fractional position inside the cell, for the position gradient
  uint32_t valid;     //!< bit i set iff corner i lies on the map
};

/*! \brief The sample at (py, px) on an H x W map under the DCNv2 border rule. */
template <typename Acc>
DCN_HD BilinearSample<Acc> make_sample(Acc py, Acc px, int height, int width) {
  BilinearSample<Acc> s;
  s.valid = 0;
  s.ly = s.lx = Acc(0);
DCN_UNROLL
  for (int i = 0; i < 4; ++i) {
    s.offset[i] = 0;
    s.weight[i] = Acc(0);
  }
  // Written so that NaN positions fail the test and are treated as outside.
  if (!(py > Acc(-1) && px > Acc(-1) && py < Acc(height) && px < Acc(width))) return s;
  const int y0 = floor_to_int(py);
  const int x0 = floor_to_int(px);
  s.ly = py - Acc(y0);
  s.lx = px - Acc(x0);
  const Acc hy = Acc(1) - s.ly, hx = Acc(1) - s.lx;
  const Acc w[4] = {hy * hx, hy * s.lx, s.ly * hx, s.ly * s.lx};
DCN_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int y = y0 + (i >> 1), x = x0 + (i & 1);
    if (y >= 0 && y < height && x >= 0 && x < width) {
      s.valid |= 1u << i;
      s.offset[i] = y * width + x;
      s.weight[i] = w[i];
    }
  }
  return s;
}

/*!
 * \brief Value of corner i of a sample (0 off the map). The map is read at
 *        `map[offset * stride]`: stride 1 for one channel plane (NCHW), stride C for channel c
 *        of a pixel-major (NHWC) copy at `map = base + c`. The load is always in bounds (offset 0
 *        for corners off the map) and the select keeps a non-finite value there out of the
 *        result, so the function is branch-free and vectorises over channels.
 */
template <typename T, typename Acc>
DCN_HD Acc corner_value(const T* map, const BilinearSample<Acc>& s, int i, index_t stride = 1) {
  const Acc v = static_cast<Acc>(map[s.offset[i] * stride]);
  return ((s.valid >> i) & 1u) ? v : Acc(0);
}

/*! \brief Bilinear value of a sample on one channel (one im2col element before modulation). */
template <typename T, typename Acc>
DCN_HD Acc gather(const T* map, const BilinearSample<Acc>& s, index_t stride = 1) {
  Acc v = Acc(0);
DCN_UNROLL
  for (int i = 0; i < 4; ++i) v += s.weight[i] * corner_value<T, Acc>(map, s, i, stride);
  return v;
}

/*! \brief `*dst += value` in the storage type: the update of a map with a single writer. */
struct PlainAdd {
  template <typename T, typename Acc>
  DCN_HD void operator()(T* dst, Acc value) const {
    *dst += static_cast<T>(value);
  }
};

/*!
 * \brief Adds grad * weight_i to the corners of a sample on one channel (one col2im element)
 *        through `add(element pointer, value)`. With the default PlainAdd the caller guarantees
 *        that no other thread writes the same plane concurrently (the CPU kernels); the CUDA
 *        kernels pass an atomic add.
 */
template <typename T, typename Acc, typename Add = PlainAdd>
DCN_HD void scatter(T* map, const BilinearSample<Acc>& s, Acc grad, index_t stride = 1,
                    Add add = Add()) {
DCN_UNROLL
  for (int i = 0; i < 4; ++i)
    if ((s.valid >> i) & 1u) add(&map[s.offset[i] * stride], s.weight[i] * grad);
}

/*!
 * \brief The bilinear value of a sample on one plane and its derivatives with respect to the
 *        sampling position (y, then x), from one read of the four corners.
 */
template <typename T, typename Acc>
DCN_HD void value_and_position_grad(const T* map, const BilinearSample<Acc>& s, Acc* value,
                                    Acc* dv_dy, Acc* dv_dx, index_t stride = 1) {
  const Acc c00 = corner_value<T, Acc>(map, s, 0, stride);
  const Acc c01 = corner_value<T, Acc>(map, s, 1, stride);
  const Acc c10 = corner_value<T, Acc>(map, s, 2, stride);
  const Acc c11 = corner_value<T, Acc>(map, s, 3, stride);
  *value = s.weight[0] * c00 + s.weight[1] * c01 + s.weight[2] * c10 + s.weight[3] * c11;
  *dv_dy = (Acc(1) - s.lx) * (c10 - c00) + s.lx * (c11 - c01);
  *dv_dx = (Acc(1) - s.ly) * (c01 - c00) + s.ly * (c11 - c10);
}

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_BILINEAR_H_
