/*!
 * \file clamped_bilinear.h
 * \brief Bilinear sampling under the border rule of (deformable) PS-RoI pooling, as a
 *        BilinearSample so that gather, scatter and value_and_position_grad serve it unchanged.
 *
 * Border rule of MXNet's DeformablePSROIPooling: pixels are unit squares around integer
 * centres, so a sample at (py, px) is used iff it lies in [-0.5, H-0.5] x [-0.5, W-0.5]; it is
 * then clamped to [0, H-1] x [0, W-1], which puts all four corners on the map. This differs from
 * the DCNv2 convolution rule of bilinear.h (used in (-1, H) x (-1, W), corners off the map read
 * zero).
 */
#ifndef DCNV2_MX_COMMON_CLAMPED_BILINEAR_H_
#define DCNV2_MX_COMMON_CLAMPED_BILINEAR_H_

#include "bilinear.h"

namespace dcnv2_mx {

/*! \brief Whether a sample at (py, px) is used. Written so that NaN positions are not. */
template <typename Acc>
DCN_HD bool clamped_sample_used(Acc py, Acc px, int height, int width) {
  return py >= Acc(-0.5) && py <= Acc(height) - Acc(0.5) && px >= Acc(-0.5) &&
         px <= Acc(width) - Acc(0.5);
}

template <typename Acc>
DCN_HD Acc clamp_to(Acc v, Acc lo, Acc hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

/*!
 * \brief The sample at (py, px) on an H x W map under the PS-RoI border rule: all four corners
 *        valid, or none when the sample is not used.
 *
 * The far corners are the ceilings of the position, not floor + 1: on a grid line, and so in the
 * clamped bands, they coincide with the near ones and the position gradient along that axis is
 * 0, which is both the derivative of the clamp and what MXNet computes.
 */
template <typename Acc>
DCN_HD BilinearSample<Acc> make_clamped_sample(Acc py, Acc px, int height, int width) {
  BilinearSample<Acc> s{};  // no corner valid
  if (!clamped_sample_used(py, px, height, width)) return s;
  py = clamp_to(py, Acc(0), Acc(height - 1));
  px = clamp_to(px, Acc(0), Acc(width - 1));
  const int y0 = floor_to_int(py), x0 = floor_to_int(px);
  const int y1 = y0 + (py > Acc(y0) ? 1 : 0), x1 = x0 + (px > Acc(x0) ? 1 : 0);
  s.ly = py - Acc(y0);
  s.lx = px - Acc(x0);
  bilinear_weights(s.ly, s.lx, s.weight);
  s.offset[0] = y0 * width + x0;
  s.offset[1] = y0 * width + x1;
  s.offset[2] = y1 * width + x0;
  s.offset[3] = y1 * width + x1;
  s.valid = 0xFu;
  return s;
}

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_COMMON_CLAMPED_BILINEAR_H_
