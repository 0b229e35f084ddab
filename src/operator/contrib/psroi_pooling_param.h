/*!
 * \file psroi_pooling_param.h
 * \brief Parameters and shape inference of the (modulated) deformable PS-RoI pooling, apart
 *        from the kernels and from MXNet's extension API.
 */
#ifndef DCNV2_MX_PSROI_POOLING_PARAM_H_
#define DCNV2_MX_PSROI_POOLING_PARAM_H_

#include <string>
#include <vector>

#include "common/attrs.h"
#include "psroi_pooling_kernel.h"

namespace dcnv2_mx {

/*!
 * \brief User-facing parameters: those of MXNet's DeformablePSROIPooling, with the same
 *        defaults, and `no_mask`. The inputs a call takes follow from the parameters alone
 *        (MXNet asks for their number before it sees any input): `no_trans` drops the offsets
 *        and `no_mask` the modulation. The Python layer sets `no_mask` from whether a mask is
 *        given, and it is saved with the symbol like any parameter.
 */
struct PSROIPoolParam {
  static constexpr const char* kOpName = "ModulatedDeformablePSROIPooling";

  float spatial_scale = 0.f;  //!< feature map size / image size, e.g. 1/16
  int output_dim = 0;
  // group_size, pooled_size and part_size are an int (square) or an (h, w) pair, as in Paddle.
  int group_size[2] = {0, 0};
  int pooled_size[2] = {0, 0};
  int part_size[2] = {0, 0};  //!< 0 in the attributes means pooled_size (per dimension)
  int sample_per_part = 1;
  float trans_std = 0.f;
  bool no_trans = false;
  bool no_mask = false;

  /*! \brief Parses and validates attributes; throws std::invalid_argument naming the problem. */
  static PSROIPoolParam parse(const AttrMap& attrs);

  /*! \brief Positions of the inputs: data, rois, [trans], [mask]. */
  int num_inputs() const { return 2 + (no_trans ? 0 : 1) + (no_mask ? 0 : 1); }
  int trans_index() const { return no_trans ? -1 : 2; }
  int mask_index() const { return no_mask ? -1 : (no_trans ? 2 : 3); }
  std::vector<std::string> input_names() const;

  /*!
   * \brief Completes unknown input shapes, checks the known ones and returns the output shape.
   *        The data shape must be known; the number of RoIs comes from rois, trans or mask, the
   *        number of classes from trans or mask (1 when neither is an input). Output
   *        (R, output_dim, pooled_h, pooled_w).
   */
  std::vector<unsigned> infer_shapes(std::vector<std::vector<unsigned>>* in_shapes) const;

  /*! \brief Geometry of one call from the (checked) shapes of its inputs. */
  PSROIPoolGeometry geometry(const std::vector<std::vector<int64_t>>& input_shapes) const;
};

}  // namespace dcnv2_mx

#endif  // DCNV2_MX_PSROI_POOLING_PARAM_H_
