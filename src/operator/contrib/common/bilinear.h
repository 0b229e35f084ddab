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

/*!
 * \brief Weights of the four corners of a cell at fractional position (ly, lx) inside it, corner
 *        i at (i/2, i%2).
 */
template <typename Acc>
DCN_HD void bilinear_weights(Acc ly, Acc lx, Acc w[4]) {
  const Acc hy = Acc(1) - ly, hx = Acc(1) - lx;
  w[0] = hy * hx;
  w[1] = hy * lx;
  w[2] = ly * hx;
  w[3] = ly * lx;
}

/*!
 * \brief The sample at (py, px) on an H x W map under the DCNv2 border rule. Branch-free, so that
 *        the CPU's loops over output pixels vectorise.
 */
template <typename Acc>
DCN_HD BilinearSample<Acc> make_sample(Acc py, Acc px, int height, int width) {
  // Written so that NaN positions fail the test and are treated as outside. Every comparison
  // is evaluated (& not &&): that way the compiler may turn the tests into selects.
  const bool used = (py > Acc(-1)) & (px > Acc(-1)) & (py < Acc(height)) & (px < Acc(width));
  // An unused position becomes (0, 0), whose conversion to int is defined; its corners are all
  // marked off the map below, and ly = lx = 0.
  const Acc y = used ? py : Acc(0), x = used ? px : Acc(0);
  const int y0 = floor_to_int(y), x0 = floor_to_int(x);
  BilinearSample<Acc> s;
  s.ly = y - Acc(y0);
  s.lx = x - Acc(x0);
  Acc w[4];
  bilinear_weights(s.ly, s.lx, w);
  s.valid = 0;
DCN_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int cy = y0 + (i >> 1), cx = x0 + (i & 1);
    const bool on_map = used & (cy >= 0) & (cy < height) & (cx >= 0) & (cx < width);
    s.valid |= static_cast<uint32_t>(on_map) << i;
    s.offset[i] = on_map ? cy * width + cx : 0;
    s.weight[i] = on_map ? w[i] : Acc(0);
  }
  return s;
}

/*!
 * \brief Value of corner i of a sample on one channel plane (0 off the map). The load is always
 *        in bounds (offset 0 for corners off the map) and the select keeps a non-finite value
 *        there out of the result, so the function is branch-free.
 */
template <typename T, typename Acc>
DCN_HD Acc corner_value(const T* map, const BilinearSample<Acc>& s, int i) {
  const Acc v = static_cast<Acc>(map[s.offset[i]]);
  return ((s.valid >> i) & 1u) ? v : Acc(0);
}

/*! \brief Bilinear value of a sample on one channel (one im2col element before modulation). */
template <typename T, typename Acc>
DCN_HD Acc gather(const T* map, const BilinearSample<Acc>& s) {
  Acc v = Acc(0);
DCN_UNROLL
  for (int i = 0; i < 4; ++i) v += s.weight[i] * corner_value<T, Acc>(map, s, i);
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
DCN_HD void scatter(T* map, const BilinearSample<Acc>& s, Acc grad, Add add = Add()) {
DCN_UNROLL
  for (int i = 0; i < 4; ++i)
    if ((s.valid >> i) & 1u) add(&map[s.offset[i]], s.weight[i] * grad);
}

/*!
 * \brief The bilinear value of corner values c (corner i at (y0 + i/2, x0 + i%2)) under weights w
 *        and its derivatives with respect to the sampling position (y, then x) at fractional
 *        position (ly, lx) inside the cell.
 */
template <typename Acc>
DCN_HD void blend_and_slopes(const Acc c[4], const Acc w[4], Acc ly, Acc lx, Acc* value,
                             Acc* dv_dy, Acc* dv_dx) {
  *value = w[0] * c[0] + w[1] * c[1] + w[2] * c[2] + w[3] * c[3];
  *dv_dy = (Acc(1) - lx) * (c[2] - c[0]) + lx * (c[3] - c[1]);
  *dv_dx = (Acc(1) - ly) * (c[1] - c[0]) + ly * (c[3] - c[2]);
}

/*!
 * \brief The terms of a cell's bilinear function of corner values c: v(ly, lx) = t0 + lx t1 +
 *        ly t2 + lx ly t3, so t0 = c0, t1 and t2 the differences along x and y from corner 0, t3
 *        the mixed difference. Value and slopes are linear in them (blend_cell_terms), so a sum
 *        over channels can be taken of the terms and blended once; unlike sums of the corners
 *        themselves, whose differences cancel where neighbouring values are close compared with
 *        their size (float: 1e-3 relative error at 100 +- 0.01), each difference is taken per
 *        channel, as blend_and_slopes takes it.
 */
template <typename Acc>
DCN_HD void cell_terms(const Acc c[4], Acc t[4]) {
  t[0] = c[0];
  t[1] = c[1] - c[0];
  t[2] = c[2] - c[0];
  t[3] = (c[3] - c[1]) - t[2];
}

/*! \brief Value and slopes (y, then x) at (ly, lx) of the cell with terms t (see cell_terms). */
template <typename Acc>
DCN_HD void blend_cell_terms(const Acc t[4], Acc ly, Acc lx, Acc* value, Acc* dv_dy,
                             Acc* dv_dx) {
  *dv_dy = t[2] + lx * t[3];
  *dv_dx = t[1] + ly * t[3];
  *value = t[0] + lx * t[1] + ly * *dv_dy;
}

/*!
 * \brief The bilinear value of a sample on one plane and its derivatives with respect to the
 *        sampling position (y, then x), from one read of the four corners.
 */
template <typename T, typename Acc>
DCN_HD void value_and_position_grad(const T* map, const BilinearSample<Acc>& s, Acc* value,
                                    Acc* dv_dy, Acc* dv_dx) {
  Acc c[4];
DCN_UNROLL
  for (int i = 0; i < 4; ++i) c[i] = corner_value<T, Acc>(map, s, i);
  blend_and_slopes(c, s.weight, s.ly, s.lx, value, dv_dy, dv_dx);
}

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_BILINEAR_H_
